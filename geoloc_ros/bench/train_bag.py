"""`geoloc train --bag` on a recording made from real frames: a rosbag2 of nordland64 frames driven round an
elliptical route twice (summer lap, then winter lap: the same places, 10 m apart, as the VG tooling's straight-line
convention spaces them), camera at 2 Hz with header stamps and nav_msgs/Odometry at 20 Hz, then a training run
whose held-out part is chosen by position. Prints and saves the held-out Recall@N of the untrained and the trained
encoder, the split and the time taken.

    python -m geoloc_ros.bench.train_bag --out docs/benchmarks/train_bag.json [--places 400] [--epochs 8] ...
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
import re
import subprocess
import sys
import time

import numpy as np

SPACING_M = 10.0
SPEED_MPS = 20.0  # one place every 0.5 s
T0_NS = 1_700_000_000 * 10**9


def ellipse_route(n: int, ratio: float = 3.0):
    """(x, y, compass heading) of n points 10 m apart (by arc length) round an ellipse with axes a = ratio * b, driven
    anticlockwise from (a, 0)."""
    theta = np.linspace(0.0, 2.0 * math.pi, 20001)
    dx, dy = -ratio * np.sin(theta), np.cos(theta)  # b = 1
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(dx[1:], dy[1:]) * np.diff(theta))])
    b = n * SPACING_M / arc[-1]
    at = np.interp(np.arange(n) * SPACING_M / b, arc, theta)
    x, y = ratio * b * np.cos(at), b * np.sin(at)
    heading = (90.0 - np.degrees(np.arctan2(np.cos(at), -ratio * np.sin(at)))) % 360.0
    return x, y, heading


def write_route_bag(path, laps, image_topic="/camera/image_raw", odom_topic="/odom", storage="mcap",
                    odom=True, corrupt=()):
    """A rosbag2 of `laps` (lists of HxWx3 RGB images, one per place, the same places in every lap) driven round
    the ellipse of `ellipse_route` lap after lap, with Odometry (x east, y north, yaw along the route) at 20 Hz
    unless `odom` is false. Frames whose (lap, place) is in `corrupt` are written as undecodable PNG data
    (sensor_msgs/CompressedImage topics) or as an Image whose data is shorter than its header says. Returns the
    (x, y) of every place."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    Image, Odometry = T["sensor_msgs/msg/Image"], T["nav_msgs/msg/Odometry"]
    Pose, PoseWithCovariance = T["geometry_msgs/msg/Pose"], T["geometry_msgs/msg/PoseWithCovariance"]
    Point, Quaternion = T["geometry_msgs/msg/Point"], T["geometry_msgs/msg/Quaternion"]
    Twist, TwistWithCovariance = T["geometry_msgs/msg/Twist"], T["geometry_msgs/msg/TwistWithCovariance"]
    Vector3 = T["geometry_msgs/msg/Vector3"]
    n = len(laps[0])
    x, y, heading = ellipse_route(n)
    period = int(SPACING_M / SPEED_MPS * 1e9)

    def header(t, frame_id):
        return Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id=frame_id)

    def pose_at(t):  # linear between places, continuous from one lap into the next
        u = (t - T0_NS) / period
        i = int(math.floor(u)) % n
        j, f = (i + 1) % n, u - math.floor(u)
        yaw = math.radians(90.0 - heading[i])
        return x[i] + f * (x[j] - x[i]), y[i] + f * (y[j] - y[i]), yaw

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    total = len(laps) * n
    with Writer(path, version=9, storage_plugin=plugin) as w:
        cam = w.add_connection(image_topic, Image.__msgtype__, typestore=ts)
        od = w.add_connection(odom_topic, Odometry.__msgtype__, typestore=ts) if odom else None
        events = [(T0_NS + k * period, 1, k) for k in range(total)]
        if odom:
            events += [(T0_NS + k * period // 10, 0, k) for k in range(total * 10)]
        for t, kind, k in sorted(events):
            if kind == 1:
                lap, place = divmod(k, n)
                rgb = np.ascontiguousarray(laps[lap][place], dtype=np.uint8)
                h, wd = rgb.shape[:2]
                data = rgb.reshape(-1)[: (h * wd * 3) // 2] if (lap, place) in corrupt else rgb.reshape(-1)
                msg = Image(header=header(t, "camera"), height=h, width=wd, encoding="rgb8", is_bigendian=0,
                            step=wd * 3, data=data)
                w.write(cam, t, ts.serialize_cdr(msg, Image.__msgtype__))
            else:
                px, py, yaw = pose_at(t)
                q = Quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2))
                msg = Odometry(header=header(t, "odom"), child_frame_id="base_link",
                               pose=PoseWithCovariance(pose=Pose(position=Point(x=px, y=py, z=0.0), orientation=q),
                                                       covariance=np.zeros(36)),
                               twist=TwistWithCovariance(twist=Twist(linear=Vector3(x=SPEED_MPS, y=0.0, z=0.0),
                                                                     angular=Vector3(x=0.0, y=0.0, z=0.0)),
                                                         covariance=np.zeros(36)))
                w.write(od, t, ts.serialize_cdr(msg, Odometry.__msgtype__))
    return np.stack([x, y], axis=1)


def nordland_laps(root, first: int, places: int, seasons=("summer", "winter")):
    """The images of `places` consecutive nordland64 frames from frame number `first`, one list per season."""
    from geoloc_ros.datasets import read_image

    return [[read_image(Path(root) / s / f"images-{first + 10 * i:05d}.png") for i in range(places)]
            for s in seasons]


def main(argv=None):
    from geoloc_ros.bench.machine import machine_info
    from geoloc_ros.model.testing import nordland_root

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON of the figures")
    p.add_argument("--work", default=None, help="folder for the bag and the run (default: beside --out)")
    p.add_argument("--first-frame", type=int, default=2010)
    p.add_argument("--places", type=int, default=400)
    p.add_argument("train_args", nargs="*", help="extra `geoloc train` flags (after --)")
    a = p.parse_args(argv)
    work = Path(a.work or Path(a.out).with_suffix(""))
    work.mkdir(parents=True, exist_ok=True)
    bag = work / "route.mcap"
    if not bag.exists():
        write_route_bag(bag, nordland_laps(nordland_root(), a.first_frame, a.places))
    cmd = ["geoloc", "train", "--bag", str(bag), "--image-topic", "/camera/image_raw", "--odom-topic", "/odom",
           "--run-dir", str(work / "run"), "--no-progress", *a.train_args]
    t0 = time.time()
    run = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.time() - t0
    sys.stdout.write(run.stdout)
    if run.returncode:
        sys.stderr.write(run.stderr[-4000:])
        raise SystemExit(run.returncode)
    recalls = {}
    for when in ("before", "after"):
        m = re.search(rf"recall {when} training:\s+R@1 ([\d.]+)\s+R@5 ([\d.]+)\s+R@10 ([\d.]+)", run.stdout)
        recalls[when] = {"R@1": float(m.group(1)), "R@5": float(m.group(2)), "R@10": float(m.group(3))}
    figures = {"command": " ".join(cmd), "places": a.places, "first_frame": a.first_frame, "laps": 2,
               "recall_untrained": recalls["before"], "recall_trained": recalls["after"],
               "split": re.search(r"split by position.*", run.stdout).group(0),
               "frames": re.search(r"frames: .*", run.stdout).group(0), "seconds": round(seconds, 1),
               "machine": machine_info()}
    Path(a.out).write_text(json.dumps(figures, indent=2))
    print(json.dumps({k: figures[k] for k in ("recall_untrained", "recall_trained", "seconds")}))


if __name__ == "__main__":
    main()
