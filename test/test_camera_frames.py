"""Camera-sized frames across processes: 640x480 and 1280x720 rgb8 Image and JPEG CompressedImage frames from a
separate publisher process (test/camera_publisher.py, a real photo resized) reach a vpr_node process and are
processed, as /diagnostics shows.

The transport fact these tests pin down (docs/node.md, "Camera QoS"): with the Fast DDS of the ROS 2 Kilted
wheels, best-effort Image samples of 640x480 and more sent from another process never arrive, while reliable
ones do; so the node is run with `image_qos:=reliable` and the publisher is reliable. With
config/fastdds_large_frames.xml in both processes best-effort raw frames arrive too (test_large_frames.py).
"""

import json
import os
from pathlib import Path
import subprocess
import sys
import threading
import time

import pytest

REPO = Path(__file__).resolve().parents[1]
PUBLISHER = Path(__file__).with_name("camera_publisher.py")
BUNDLED_MAP = REPO / "maps" / "nordland_demo"
COUNT = 5


@pytest.fixture(scope="module")
def photo(shared_data):
    return shared_data / "geometry" / "lund_street" / "01.jpg"


def publish(topic, photo, size, fmt, qos, count=COUNT) -> dict:
    """Run the publisher process to its end; its JSON summary."""
    r = subprocess.run([sys.executable, str(PUBLISHER), topic, "--image", str(photo), "--size", size, "--format", fmt,
                        "--qos", qos, "--count", str(count)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"publisher failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """vpr_node as a process on the bundled map with reliable camera subscriptions; a Harness reading its
    /diagnostics."""
    from geoloc_ros.replay import node_process

    log = tmp_path_factory.mktemp("camera") / "vpr_node.log"
    with node_process([f"map_path:=['{BUNDLED_MAP}']", "image_qos:=reliable"], log, name="camera_frames") as h:
        assert h.wait_for(lambda: h.diag_values().get("state") == "active", timeout=90), log.read_text()[-3000:]
        h.camera = f"/camera_frames_{os.getpid()}/camera/image_raw"  # node_process's namespace and camera topic
        yield h


def counters(h) -> tuple[int, int]:
    d = h.diag_values()
    return int(d.get("frames_received", 0)), int(d.get("frames_processed", 0))


@pytest.mark.parametrize("size, fmt", [("640x480", "raw"), ("1280x720", "raw"), ("640x480", "jpeg"),
                                       ("1280x720", "jpeg")])
def test_reliable_camera_frames_from_another_process_are_processed(node, photo, size, fmt):
    received0, processed0 = counters(node)
    sent = publish(node.camera, photo, size, fmt, "reliable")
    assert sent["published"] == COUNT and sent["matched"] >= 1, sent
    # newest frame wins in the node, so some may be dropped unprocessed; every one must be received
    arrived = node.wait_for(lambda: counters(node)[0] >= received0 + COUNT and counters(node)[1] > processed0,
                            timeout=15)
    received, processed = counters(node)
    print(f"{size} {fmt} reliable: {sent['bytes']} bytes/frame, received {received - received0}/{COUNT}, "
          f"processed {processed - processed0}")
    assert arrived, f"{size} {fmt}: received {received - received0} of {COUNT}, processed {processed - processed0}"


def count_arrivals(photo, size, fmt, qos="best_effort") -> tuple[int, dict]:
    """Frames a subscriber in this process gets from a publisher process, both with `qos` (best_effort: the
    sensor-data profile)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    topic = f"/probe_{qos}_{os.getpid()}/image_raw"
    profile = (QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE) if qos == "reliable"
               else qos_profile_sensor_data)
    context = Context()
    rclpy.init(context=context)
    sub_node = rclpy.create_node("camera_probe", context=context)
    got = []
    kind, sub_topic = (CompressedImage, topic + "/compressed") if fmt == "jpeg" else (Image, topic)
    sub_node.create_subscription(kind, sub_topic, got.append, profile)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(sub_node)
    result, done = {}, threading.Event()
    publisher = threading.Thread(target=lambda: (result.update(publish(topic, photo, size, fmt, qos)),
                                                 done.set()), daemon=True)
    publisher.start()
    try:
        deadline = time.monotonic() + 120
        while not done.is_set() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
    finally:
        publisher.join(timeout=10)
        executor.shutdown()
        sub_node.destroy_node()
        context.try_shutdown()
    return len(got), result


def test_best_effort_camera_sized_raw_frames_vanish_between_processes(photo):
    """Documents the fact behind `image_qos: reliable`: 320x240 best-effort frames arrive, 640x480 ones are lost
    (Fast DDS of these wheels; if this starts failing because they arrive, update docs/node.md's QoS section)."""
    small, sent = count_arrivals(photo, "320x240", "raw")
    assert sent["matched"] >= 1 and small >= 1, (small, sent)  # the path itself works
    large, sent = count_arrivals(photo, "640x480", "raw")
    assert sent["published"] == COUNT
    print(f"best effort, another process: 320x240 raw {small}/{COUNT}, 640x480 raw {large}/{COUNT} "
          f"({sent['bytes']} bytes/frame)")
    # Measured here: 0 or 1 of 5 (the first sample can slip through); never all of them.
    assert large < COUNT, f"all {COUNT} best-effort 640x480 frames arrived: the QoS advice in docs/node.md is stale"


def test_best_effort_jpeg_1280x720_is_measured(photo):
    """Whether JPEG CompressedImage at 1280x720 arrives best-effort: printed, not asserted (it depends on the size
    the JPEG compresses to)."""
    n, sent = count_arrivals(photo, "1280x720", "jpeg")
    print(f"best effort, another process: 1280x720 JPEG {n}/{COUNT} arrived ({sent['bytes']} bytes/frame)")
    assert sent["published"] == COUNT


@pytest.mark.parametrize("size", ["640x480", "1280x720"])
def test_reliable_camera_sized_raw_frames_arrive_between_processes(photo, size):
    """The other half of the fact: the same raw frames with reliable QoS on both ends all arrive."""
    n, sent = count_arrivals(photo, size, "raw", "reliable")
    print(f"reliable, another process: {size} raw {n}/{COUNT} ({sent['bytes']} bytes/frame)")
    assert sent["published"] == COUNT and n == COUNT, (n, sent)
