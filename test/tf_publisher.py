"""A stand-alone robot's TF tree from a process of its own: map -> odom on /tf_static (latched) and odom ->
base_link on /tf at 20 Hz, placing base_link at (X, Y) in map, the way a back end and an odometry driver do.
test_search_prior.py runs it with subprocess, so the transforms cross a process boundary.

    python test/tf_publisher.py --x X --y Y [--age SECONDS]

--age stamps every odom -> base_link that many seconds in the past (a stalled odometry driver). map -> odom is
turned 90 degrees about z, so that the position is only right when the chain is composed properly. Prints
"publishing" once its publishers exist, and runs until it is terminated.
"""

import argparse
import math
import time

from geometry_msgs.msg import TransformStamped
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from tf2_msgs.msg import TFMessage

ODOM_TO_BASE = (5.0, 0.0)  # base_link in odom; map -> odom (yaw 90 degrees) carries it to (0, 5) in map


def transform(parent, child, stamp_ns, xy, yaw):
    t = TransformStamped()
    t.header.frame_id, t.child_frame_id = parent, child
    t.header.stamp.sec, t.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
    t.transform.translation.x, t.transform.translation.y = xy
    t.transform.rotation.z, t.transform.rotation.w = math.sin(yaw / 2), math.cos(yaw / 2)
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--x", type=float, required=True)
    ap.add_argument("--y", type=float, required=True)
    ap.add_argument("--age", type=float, default=0.0)
    args = ap.parse_args()
    rclpy.init()
    node = rclpy.create_node("tf_publisher")
    static = node.create_publisher(TFMessage, "/tf_static", QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    dynamic = node.create_publisher(TFMessage, "/tf", QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    now = time.time_ns()
    static.publish(TFMessage(transforms=[transform("map", "odom", now, (args.x, args.y - ODOM_TO_BASE[0]),
                                                   math.pi / 2)]))
    print("publishing", flush=True)
    try:
        while True:
            stamp = time.time_ns() - int(args.age * 1e9)
            dynamic.publish(TFMessage(transforms=[transform("odom", "base_link", stamp, ODOM_TO_BASE, 0.0)]))
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
