"""Issue 16, the node's camera side on a real DDS graph: camera-sized frames from another process reach the
node over `image_qos` (auto by default); /diagnostics warns when a camera topic has publishers but no frames,
and when a publisher's QoS is incompatible; max_image_pixels and mono16_max reach the decoder (the 30000x30000
PNG through the node's topic); stamp-0 frames accumulate session keyframes. The map: six real street photos
(conftest.street_map)."""

import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from geoloc_ros.datasets import read_image  # noqa: E402
from geoloc_ros.replay import Harness, InProcessNode, image_message  # noqa: E402

T0 = 1_700_000_000 * 10**9
FAST = {"diagnostics_period_s": 0.2, "device": "cpu"}

# A camera in its own process: reliable 640x480 rgb8 frames of a real photo, 5 Hz, stamps T0 + i, until killed.
PUBLISHER = """
import sys, time
import cv2, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from geoloc_ros.datasets import read_image
from geoloc_ros.replay import image_message
rgb = cv2.resize(read_image(sys.argv[1]), (640, 480))
rclpy.init()
node = rclpy.create_node("camera_process")
pub = node.create_publisher(Image, "/camera/image_raw", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
for i in range(600):
    pub.publish(image_message(rgb, int(sys.argv[2]) + i))
    time.sleep(0.2)
"""


@pytest.fixture
def graph(rclpy_context):
    """(start_node(params) -> InProcessNode, harness); everything closed afterwards."""
    made = []
    harness = Harness(rclpy_context)

    def start(parameters):
        n = InProcessNode(rclpy_context, {**FAST, **parameters})
        made.append(n)
        assert n.active, n.node.last_error
        return n

    yield start, harness
    harness.close()
    for n in made:
        n.close()


def warns(h, text: str, timeout: float = 15.0) -> bool:
    return h.wait_for(lambda: h.diag_values().get("level") == b"\x01" and text in h.diag_values()["message"],
                      timeout=timeout)


def test_camera_sized_reliable_frames_from_another_process_reach_the_node(street_map, graph):
    folder, recs, map_dir = street_map
    start, h = graph
    n = start({"map_path": [str(map_dir)]})
    assert n.node.settings.image_qos == "auto"
    cmd = [sys.executable, "-c", PUBLISHER, str(recs[2].path), str(T0)]
    camera = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert h.wait_for(lambda: len(h.data.received) >= 3, timeout=60), (h.diag_values(), camera.poll())
    finally:
        camera.kill()
        out, _ = camera.communicate(timeout=10)
    results = h.data.results["place_recognition"].values()
    assert all(r.candidates[0].keyframe_label == recs[2].label for r in results), out
    assert int(h.diag_values()["frames_rejected"]) == 0


def test_best_effort_camera_against_a_reliable_subscription_is_named_in_diagnostics(street_map, graph):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    start, h = graph
    start({"map_path": [str(street_map[2])], "image_qos": "reliable"})
    h.node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)  # a best-effort driver
    assert warns(h, "set image_qos:=auto or sensor_data"), h.diag_values()
    assert "RELIABILITY" in h.diag_values()["message"]


def test_publishers_but_no_frames_warn_and_a_frame_clears_it(street_map, graph):
    start, h = graph
    n = start({"map_path": [str(street_map[2])], "no_frames_warn_s": 1.0, "subscribe_compressed": False,
               "image_topics": ["/camera/image_raw", "/other/image_raw"]})
    assert h.wait_for_subscriber()  # the harness's reliable publisher is there, and publishes nothing yet
    assert warns(h, "/camera/image_raw: 1 publisher(s) but no frame for"), h.diag_values()
    assert "/other/image_raw" not in h.diag_values()["message"]  # no publisher there: nothing is wrong with it
    h.publish(image_message(read_image(street_map[1][0].path), T0))
    assert h.wait_for(lambda: h.diag_values().get("level") == b"\x00", timeout=10), h.diag_values()
    assert n.node.lifecycle_state == "active"


def test_frame_size_and_mono16_settings_reach_the_decoder(street_map, png_bomb, graph):
    """The issue's 30000x30000 PNG on the node's topic is refused from its header, counted, and the node goes on;
    max_image_pixels and mono16_max are the node's parameters, not the decoder's defaults."""
    from sensor_msgs.msg import CompressedImage

    start, h = graph
    photo = read_image(street_map[1][0].path)
    n = start({"map_path": [str(street_map[2])], "max_image_pixels": photo.shape[0] * photo.shape[1],
               "mono16_max": 65535})
    assert h.wait_for_subscriber()
    bomb = CompressedImage(format="png", data=png_bomb)
    bomb.header.stamp.sec = 1
    too_large = image_message(cv2.resize(photo, (photo.shape[1] + 1, photo.shape[0])), T0 + 1)
    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(np.uint16)  # 8-bit data in 16 bits: with mono16_max
    mono16 = image_message(photo, T0 + 2)  # 65535 it scales to nearly 0, refused as blank
    mono16.encoding, mono16.step, mono16.data = "mono16", grey.shape[1] * 2, grey.tobytes()
    for msg in (bomb, too_large, mono16, image_message(photo, T0 + 3)):
        h.publish(msg)
        time.sleep(0.3)
    assert h.wait_for(lambda: T0 + 3 in h.data.received, timeout=20)
    assert h.wait_for(lambda: h.diag_values().get("frames_rejected") == "3", timeout=5), h.diag_values()
    d = h.diag_values()
    assert (d["rejected_too_large"], d["rejected_blank"]) == ("2", "1"), d
    assert n.node.lifecycle_state == "active" and n.node._worker.is_alive()


def test_stamp_zero_frames_accumulate_session_keyframes(street_map, graph):
    start, h = graph
    n = start({"map_path": [str(street_map[2])], "session_map": True, "session_min_interval_s": 0.2,
               "session_min_spacing_m": 0.0})
    assert h.wait_for_subscriber()
    for r in street_map[1][:3]:
        h.publish(image_message(read_image(r.path), 0))  # a driver that never stamps its frames
        time.sleep(0.6)
    assert h.wait_for(lambda: len(n.node.session) == 3, timeout=20), len(n.node.session)


def trigger(h, service: str):
    from std_srvs.srv import Trigger

    client = h.node.create_client(Trigger, service)
    assert client.wait_for_service(timeout_sec=10)
    fut = client.call_async(Trigger.Request())
    assert h.wait_for(fut.done, timeout=20)
    return fut.result()


def test_save_session_map_to_a_home_directory_is_refused_and_keeps_every_file(street_map, graph, tmp_path,
                                                                                monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("key")
    (home / ".profile").write_text("profile")
    monkeypatch.setenv("HOME", str(home))  # the in-process node expands '~' with it
    start, h = graph
    n = start({"map_path": [str(street_map[2])], "session_map": True, "session_map_path": "~"})
    assert h.wait_for_subscriber()
    h.publish(image_message(read_image(street_map[1][0].path), T0))
    assert h.wait_for(lambda: len(n.node.session) == 1, timeout=20)
    r = trigger(h, "/geoloc_vpr/save_session_map")
    assert not r.success and "not a geoloc_ros map" in r.message and str(home) in r.message, r.message
    assert (home / ".ssh" / "id_ed25519").read_text() == "key" and (home / ".profile").read_text() == "profile"
    assert sorted(p.name for p in home.iterdir()) == [".profile", ".ssh"]


def test_map_files_overwritten_under_the_running_node(street_map, graph, tmp_path):
    """`cp` over the map's files while the node runs (here: every file truncated and rewritten shorter, what
    killed a node holding memory-mapped descriptors with SIGBUS): the node goes on answering from the map it
    loaded."""
    import shutil

    folder, recs, map_dir = street_map
    live = tmp_path / "live_map"
    shutil.copytree(map_dir, live)
    start, h = graph
    n = start({"map_path": [str(live)]})
    assert h.wait_for_subscriber()
    for f in live.iterdir():
        if f.is_file():
            f.write_bytes(b"overwritten")
    for i, r in enumerate(recs[:2]):
        h.publish(image_message(read_image(r.path), T0 + i))
        time.sleep(0.3)
    assert h.wait_for(lambda: T0 + 1 in h.data.received, timeout=20)
    assert h.data.results["place_recognition"][T0 + 1].candidates[0].keyframe_label == recs[1].label
    assert n.node.lifecycle_state == "active"
