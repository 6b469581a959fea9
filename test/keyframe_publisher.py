"""A stand-in peer robot in a process of its own: publishes geoloc_msgs/Keyframe messages from a JSON spec on
their topics (reliable, transient local, as vpr_node's ~/keyframes), and serves a KeyframeFeatures service that
never answers beside each topic named in "silent". test_node_peers.py runs it to play broken and hostile peers.

    python test/keyframe_publisher.py SPEC.json

SPEC: {"messages": [{"topic": ..., "robot_id": ..., "session_id": ..., "keyframe_id": ..., "stamp_ns": ...,
"fingerprint": ..., "encoding": 0|1|2, "dim": ..., "descriptor_hex": ...}, ...], "silent": [topic, ...]}.
Prints "ready" once everything is published, then spins until killed."""

import json
import math
import sys
import time

import rclpy
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor

from geoloc_msgs.msg import Keyframe
from geoloc_msgs.srv import KeyframeFeatures
from geoloc_ros.node.peer_exchange import KEYFRAME_QOS, features_service_of


def keyframe(m: dict) -> Keyframe:
    msg = Keyframe(robot_id=m["robot_id"], session_id=m["session_id"], keyframe_id=m["keyframe_id"],
                   encoder_fingerprint=m["fingerprint"], descriptor_encoding=m["encoding"], descriptor_dim=m["dim"],
                   descriptor=bytes.fromhex(m["descriptor_hex"]), latitude=math.nan, longitude=math.nan,
                   altitude=math.nan)
    msg.stamp.sec, msg.stamp.nanosec = divmod(int(m["stamp_ns"]), 10**9)
    return msg


def never_answer(request, response):
    time.sleep(3600)  # a peer that never answers: the asking robot must time out on its own
    return response


def main() -> int:
    spec = json.loads(open(sys.argv[1]).read())
    rclpy.init()
    node = rclpy.create_node("hostile_peer")
    pubs = {}
    for m in spec["messages"]:
        if m["topic"] not in pubs:
            pubs[m["topic"]] = node.create_publisher(Keyframe, m["topic"], KEYFRAME_QOS)
    group = ReentrantCallbackGroup()
    services = [node.create_service(KeyframeFeatures, features_service_of(t), never_answer, callback_group=group)
                for t in spec.get("silent", [])]
    for m in spec["messages"]:
        pubs[m["topic"]].publish(keyframe(m))
    print("ready", len(services), flush=True)
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
