"""A stand-alone camera: publishes one photo, resized to WIDTHxHEIGHT, as rgb8 sensor_msgs/Image or JPEG
sensor_msgs/CompressedImage from a process of its own, the way a camera driver does. test_camera_frames.py runs
it with subprocess so frames cross a process boundary (inside one process DDS takes shortcuts a camera never sees).

    python test/camera_publisher.py TOPIC --image PHOTO --size 640x480 --format raw|jpeg --qos reliable|best_effort

Waits for a subscriber, publishes --count frames at --rate Hz, and prints one JSON line: frames published, bytes
per frame, subscribers matched.
"""

import argparse
from array import array
import json
import sys
import time

import cv2
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image


def frame_message(bgr, fmt: str, index: int):
    """The photo as a message whose stamp is unique per frame."""
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok, "JPEG encoding failed"
        msg = CompressedImage(format="rgb8; jpeg compressed bgr8")
        msg.data = array("B", buf.tobytes())
    else:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        msg = Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3)
        msg.data = array("B", rgb.tobytes())
    msg.header.frame_id = "camera"
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_000 + index, 0
    return msg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("topic", help="Image topic; JPEG frames go to TOPIC/compressed")
    ap.add_argument("--image", required=True, help="photo to publish (any size; resized)")
    ap.add_argument("--size", default="640x480", help="WIDTHxHEIGHT")
    ap.add_argument("--format", choices=("raw", "jpeg"), default="raw")
    ap.add_argument("--qos", choices=("reliable", "best_effort"), default="reliable")
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--wait", type=float, default=30.0, help="seconds to wait for a subscriber")
    a = ap.parse_args(argv)
    width, height = (int(v) for v in a.size.lower().split("x"))
    bgr = cv2.resize(cv2.imread(a.image, cv2.IMREAD_COLOR), (width, height), interpolation=cv2.INTER_AREA)

    qos = (QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE) if a.qos == "reliable"
           else qos_profile_sensor_data)
    rclpy.init()
    node = rclpy.create_node("camera_publisher")
    kind, topic = (CompressedImage, a.topic.rstrip("/") + "/compressed") if a.format == "jpeg" else (Image, a.topic)
    pub = node.create_publisher(kind, topic, qos)
    deadline = time.monotonic() + a.wait
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    matched = pub.get_subscription_count()
    time.sleep(0.5)  # let both ends finish matching, or the first frames go to nobody
    sizes = []
    for i in range(a.count if matched else 0):
        msg = frame_message(bgr, a.format, i)
        pub.publish(msg)
        sizes.append(len(msg.data))
        time.sleep(1.0 / a.rate)
    if a.qos == "reliable" and matched:
        pub.wait_for_all_acked(rclpy.duration.Duration(seconds=10))
    else:
        time.sleep(1.0)  # best effort: nothing to wait for but the last samples on the wire
    print(json.dumps({"topic": topic, "published": len(sizes), "bytes": max(sizes, default=0), "matched": matched}))
    node.destroy_node()
    rclpy.shutdown()
    return 0 if matched else 1


if __name__ == "__main__":
    sys.exit(main())
