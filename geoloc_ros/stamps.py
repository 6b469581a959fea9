"""The one conversion between ROS time stamps (builtin_interfaces/Time: sec + nanosec) and integer nanoseconds.
Duck-typed: works on rclpy messages and rosbags message objects alike (same field names)."""

from __future__ import annotations

NS_PER_S = 1_000_000_000


def stamp_ns(stamp) -> int:
    """builtin_interfaces/Time -> nanoseconds since the epoch (0 for an unset stamp)."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def set_stamp(stamp, ns: int):
    """Write nanoseconds `ns` into a builtin_interfaces/Time in place; returns it."""
    stamp.sec, stamp.nanosec = divmod(int(ns), NS_PER_S)
    return stamp
