"""geoloc_msgs and geographic_msgs travel over real DDS between a real rclpy publisher and subscriber."""

import json
import math
from pathlib import Path
import time

import pytest

rclpy = pytest.importorskip("rclpy")
from geographic_msgs.msg import GeoPoseWithCovarianceStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy  # noqa: E402

from geoloc_msgs.msg import PlaceCandidate, PlaceRecognition  # noqa: E402

RELIABLE_LATCHED = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE,
                              durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)


def exchange(context, msg_type, topic, message, timeout=15.0):
    """Publish `message` from one node and return what a second node receives."""
    talker = rclpy.create_node("talker", context=context)
    listener = rclpy.create_node("listener", context=context)
    received = []
    listener.create_subscription(msg_type, topic, received.append, RELIABLE_LATCHED)
    publisher = talker.create_publisher(msg_type, topic, RELIABLE_LATCHED)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(talker)
    executor.add_node(listener)
    deadline = time.monotonic() + timeout
    try:
        publisher.publish(message)
        while not received and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()
        talker.destroy_node()
        listener.destroy_node()
    assert received, f"nothing arrived on {topic} within {timeout} s"
    return received[0]


def test_place_recognition_round_trip(rclpy_context):
    msg = PlaceRecognition(camera_topic="/camera/image_raw", encode_ms=12.5, search_ms=0.25)
    msg.header.frame_id = "camera_optical"
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1700000000, 42
    for rank in range(3):
        c = PlaceCandidate(map_name="nordland_demo", map_id="/maps/nordland_demo", source=rank,
                           robot_id="robot_b" if rank == PlaceCandidate.SOURCE_PEER else "", has_position=rank > 0,
                           keyframe_id=1000 + rank, keyframe_label=f"images-{rank}.png", rank=rank,
                           similarity=0.9 - 0.1 * rank, latitude=66.3, longitude=14.1, altitude=float("nan"),
                           verified=rank == 0, inliers=57 if rank == 0 else 0)
        c.pose.position.x, c.pose.position.y = 10.0 * rank, -3.0
        c.keyframe_stamp.sec = 1699999000 + rank
        msg.candidates.append(c)

    got = exchange(rclpy_context, PlaceRecognition, "/test/place_recognition", msg)

    assert got.header.frame_id == "camera_optical" and got.header.stamp.nanosec == 42
    assert got.camera_topic == "/camera/image_raw"
    assert [c.keyframe_id for c in got.candidates] == [1000, 1001, 1002]
    assert [c.source for c in got.candidates] == [PlaceCandidate.SOURCE_PRIOR_MAP, PlaceCandidate.SOURCE_SESSION,
                                                  PlaceCandidate.SOURCE_PEER]
    assert [c.has_position for c in got.candidates] == [False, True, True]
    assert got.candidates[2].robot_id == "robot_b" and got.candidates[0].map_id == "/maps/nordland_demo"
    assert got.candidates[0].verified and got.candidates[0].inliers == 57
    assert got.candidates[2].pose.position.x == 20.0 and got.candidates[1].keyframe_stamp.sec == 1699999001
    assert math.isnan(got.candidates[0].altitude) and got.candidates[1].latitude == 66.3
    assert got.encode_ms == pytest.approx(12.5) and got.search_ms == pytest.approx(0.25)


def test_geopose_with_covariance_round_trip(rclpy_context):
    msg = GeoPoseWithCovarianceStamped()
    msg.header.frame_id = "map"
    msg.pose.pose.position.latitude, msg.pose.pose.position.longitude = 66.30125, 14.09875
    msg.pose.pose.position.altitude = float("nan")
    msg.pose.pose.orientation.z, msg.pose.pose.orientation.w = 0.7071068, 0.7071068
    msg.pose.covariance = [float(i) for i in range(36)]

    got = exchange(rclpy_context, GeoPoseWithCovarianceStamped, "/test/geopose", msg)

    assert got.header.frame_id == "map"
    assert got.pose.pose.position.latitude == 66.30125 and got.pose.pose.position.longitude == 14.09875
    assert math.isnan(got.pose.pose.position.altitude)
    assert got.pose.pose.orientation.w == pytest.approx(0.7071068)
    assert list(got.pose.covariance) == [float(i) for i in range(36)]


def test_the_message_type_hashes_change_only_on_purpose():
    """Nodes built against another version of a message do not match it over DDS: these hashes change only
    together with the .msg files (and their documentation)."""
    from ament_index_python.packages import get_package_share_directory

    share = Path(get_package_share_directory("geoloc_msgs"))
    hashes = {}
    for name in ("PlaceCandidate", "PlaceRecognition"):
        for entry in json.loads((share / "msg" / f"{name}.json").read_text())["type_hashes"]:
            hashes[entry["type_name"]] = entry["hash_string"]
    assert hashes["geoloc_msgs/msg/PlaceCandidate"] == PLACE_CANDIDATE_HASH
    assert hashes["geoloc_msgs/msg/PlaceRecognition"] == PLACE_RECOGNITION_HASH


PLACE_CANDIDATE_HASH = "RIHS01_57223896ed9b12f00143ae7e5b0b194ba144024d200ce5392d601ba52954427e"
PLACE_RECOGNITION_HASH = "RIHS01_65c78e2445da830a1a9e072258943890f65898479d2086fc0f49e4b1ce539aef"
