"""A stand-alone RGB-D camera: publishes frames of an RGB-D folder (color/N.png, depth/N.pgm in millimetres) as
rgb8 and 16UC1 sensor_msgs/Image with their sensor_msgs/CameraInfo from a process of its own, with a driver's
default QoS (reliable, the system defaults), the way an RGB-D camera driver does. test_metric_node.py runs it with
subprocess so camera-sized frames cross a process boundary.

    python test/rgbd_publisher.py NAMESPACE --folder DIR --frames 2,4 --camera fx,fy,cx,cy --repeat 2

Publishes NAMESPACE/image_raw, NAMESPACE/depth/image_raw and NAMESPACE/camera_info. Waits for a subscriber on
each, publishes every frame --repeat times (one stamp each, colour and depth alike) every --period seconds, and
prints one JSON line: the stamps published (nanoseconds) with their frame, subscribers matched.
"""

import argparse
import json
import sys
import time

import cv2
import numpy as np
import rclpy
from rclpy.duration import Duration
from rclpy.qos import qos_profile_system_default
from sensor_msgs.msg import CameraInfo, Image

T0 = 1_700_000_000 * 10**9


def image_message(array: np.ndarray, encoding: str, stamp_ns: int) -> Image:
    h, w = array.shape[:2]
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=0, step=array.strides[0],
                data=np.ascontiguousarray(array).tobytes())
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    msg.header.frame_id = "camera_optical"
    return msg


def camera_info(fx, fy, cx, cy, width, height, stamp_ns: int) -> CameraInfo:
    msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob", d=[0.0] * 5,
                     k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0], r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
                     p=[fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    msg.header.frame_id = "camera_optical"
    return msg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("namespace", help="the camera's namespace, e.g. /camera")
    ap.add_argument("--folder", required=True, help="RGB-D folder with color/N.png and depth/N.pgm")
    ap.add_argument("--frames", required=True, help="comma-separated frame numbers")
    ap.add_argument("--camera", required=True, help="fx,fy,cx,cy")
    ap.add_argument("--repeat", type=int, default=1, help="times each frame is published, one stamp each")
    ap.add_argument("--period", type=float, default=2.0, help="seconds between frames")
    ap.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the subscribers")
    a = ap.parse_args(argv)
    fx, fy, cx, cy = (float(v) for v in a.camera.split(","))
    frames = [int(v) for v in a.frames.split(",")]

    rclpy.init()
    node = rclpy.create_node("rgbd_publisher")
    ns = a.namespace.rstrip("/")
    qos = qos_profile_system_default  # reliable: what a driver gets without choosing
    pubs = {"color": node.create_publisher(Image, f"{ns}/image_raw", qos),
            "depth": node.create_publisher(Image, f"{ns}/depth/image_raw", qos),
            "info": node.create_publisher(CameraInfo, f"{ns}/camera_info", qos)}
    deadline = time.monotonic() + a.wait
    while min(p.get_subscription_count() for p in pubs.values()) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    matched = min(p.get_subscription_count() for p in pubs.values())
    time.sleep(0.5)  # let both ends finish matching, or the first frames go to nobody
    stamps = {}
    for q in frames if matched else []:
        rgb = cv2.cvtColor(cv2.imread(f"{a.folder}/color/{q}.png", cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        depth = cv2.imread(f"{a.folder}/depth/{q}.pgm", cv2.IMREAD_UNCHANGED)
        for _ in range(a.repeat):
            stamp = T0 + len(stamps) * 10**9
            h, w = rgb.shape[:2]
            pubs["info"].publish(camera_info(fx, fy, cx, cy, w, h, stamp))
            pubs["depth"].publish(image_message(depth, "16UC1", stamp))
            pubs["color"].publish(image_message(rgb, "rgb8", stamp))
            stamps[stamp] = q
            time.sleep(a.period)
    for p in pubs.values():
        p.wait_for_all_acked(Duration(seconds=10))
    print(json.dumps({"stamps": {str(s): q for s, q in stamps.items()}, "matched": matched}))
    node.destroy_node()
    rclpy.shutdown()
    return 0 if matched else 1


if __name__ == "__main__":
    sys.exit(main())
