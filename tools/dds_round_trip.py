"""What the node benchmark's echo floor is made of: the round trip of one rgb8 sensor_msgs/Image between two
processes through rclpy and Fast DDS, with no work at the far end (docs/node.md, "Where the time goes", part 5).

This process publishes frames at 10 Hz, reliable, either as Python messages (what geoloc_ros.replay.Harness and
the node benchmark do) or pre-serialised CDR bytes (what a C++ camera driver's publish costs on top of the wire is
closer to); a child process answers each frame with its std_msgs/Header, subscribing either normally (rclpy
converts the frame into a Python message, as vpr_node's intake does) or with `raw=True` (the CDR bytes, unparsed).
Prints the round trip p50/p95 and the publish call's own p50 for each size and variant.

    tools/venv.sh python tools/dds_round_trip.py                       # the bundled Fast DDS profile
    tools/venv.sh python tools/dds_round_trip.py --dds-profile none    # Fast DDS's defaults
"""

import argparse
from array import array
import itertools
import os
from pathlib import Path
import struct
import subprocess
import sys
import threading
import time

import numpy as np

TOPIC, ANSWER = "/dds_round_trip/image", "/dds_round_trip/answer"
PROFILE = Path(__file__).resolve().parents[1] / "config" / "fastdds_large_frames.xml"


def qos():
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


def answer(raw: bool):
    """The far end: answer every frame with its header."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    rclpy.init()
    node = rclpy.create_node("dds_round_trip_echo")
    pub = node.create_publisher(Header, ANSWER, qos())
    if raw:  # CDR: 4-byte encapsulation, then header.stamp (int32 sec, uint32 nanosec)
        def on_frame(data):
            h = Header()
            h.stamp.sec, h.stamp.nanosec = struct.unpack_from("<iI", data, 4)
            pub.publish(h)
        node.create_subscription(Image, TOPIC, on_frame, qos(), raw=True)
    else:
        node.create_subscription(Image, TOPIC, lambda m: pub.publish(m.header), qos())
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except BaseException:  # noqa: BLE001 - terminated by the parent
        pass


def round_trip(pub, got, stamps, width, height, serialised: bool, frames: int) -> tuple:
    """Publish `frames` frames at 10 Hz; (answered, round trip p50, p95, publish call p50) in ms."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    rgb = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    sent, publish_ms = {}, []
    for _ in range(frames):
        msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
        msg.data = array("B", rgb.tobytes())
        stamp = next(stamps)
        msg.header.stamp.sec = stamp
        payload = serialize_message(msg) if serialised else msg
        t = time.perf_counter()
        sent[stamp] = t
        pub.publish(payload)
        publish_ms.append((time.perf_counter() - t) * 1e3)
        time.sleep(0.1)
    time.sleep(1.0)
    lat = np.array([(got[s] - t) * 1e3 for s, t in sent.items() if s in got])
    return len(lat), np.percentile(lat, 50), np.percentile(lat, 95), np.percentile(publish_ms, 50)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["64x32", "640x480", "1280x720"], help="WIDTHxHEIGHT")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--dds-profile", default=str(PROFILE), help="Fast DDS XML for both processes, or none")
    a = ap.parse_args(argv)
    if a.dds_profile != "none":
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = a.dds_profile
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    rclpy.init()
    node = rclpy.create_node("dds_round_trip")
    pub = node.create_publisher(Image, TOPIC, qos())
    got, stamps = {}, itertools.count(1)
    node.create_subscription(Header, ANSWER, lambda m: got.setdefault(m.stamp.sec, time.perf_counter()), qos())
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    print(f"DDS profile: {a.dds_profile}; {a.frames} frames at 10 Hz per line, reliable")
    print("| frame | publish | far end subscribes | answered | round trip p50 ms | p95 ms | publish call p50 ms |")
    print("|---|---|---|---|---:|---:|---:|")
    for raw in (False, True):
        child = subprocess.Popen([sys.executable, __file__, "--answer", str(int(raw))])
        try:
            while pub.get_subscription_count() == 0 or node.count_publishers(ANSWER) == 0:
                time.sleep(0.05)
            time.sleep(1.0)  # both ends matched
            for size in a.sizes:
                w, h = (int(v) for v in size.split("x"))
                for serialised in (False, True):
                    n, p50, p95, pub_ms = round_trip(pub, got, stamps, w, h, serialised, a.frames)
                    print(f"| {size} rgb8 | {'CDR bytes' if serialised else 'Python message'} | "
                          f"{'raw=True (bytes)' if raw else 'Python message'} | {n}/{a.frames} | {p50:.2f} | "
                          f"{p95:.2f} | {pub_ms:.2f} |", flush=True)
        finally:
            child.terminate()
            child.wait(timeout=10)
    executor.shutdown()
    spinner.join(timeout=5)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--answer":
        answer(bool(int(sys.argv[2])))
    else:
        sys.exit(main())
