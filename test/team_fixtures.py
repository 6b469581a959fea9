"""A synthetic team for the multi-robot back-end tests: three robots on one curving road, each driving its own
stretch with its own drifting odometry from its own origin, and the same-place candidates a place recognizer would
publish where two stretches overlap (a: 0-400 m, b: 200-600 m, c: 450-850 m; c overlaps b only).

Runnable as the "other process" of test_pose_graph_team.py:

    python test/team_fixtures.py NAMESPACE [--restart b] [--false-closure] [--hostile]

publishes every robot's odometry (<ns>/<robot>/odom) and loop closures (<ns>/<robot>/geoloc_vpr/loop_closures) to a
team pose_graph_node, then prints one JSON line with what it sent.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
import json
import math
import time

import gtsam
import numpy as np

from geoloc_ros.slam.simulate import OdometryDrift, simulate_odometry, truth_poses

T0 = 1_700_000_000 * 10**9
STEP_M, STEP_S = 5.0, 0.5  # a pose every 5 m, 10 m/s
STRETCHES = {"a": (0.0, 400.0), "b": (200.0, 600.0), "c": (450.0, 850.0)}
DRIFT = {"a": OdometryDrift(0.03, 0.01, seed=1), "b": OdometryDrift(-0.02, 0.01, seed=2),
         "c": OdometryDrift(0.025, 0.01, seed=3)}
CLOSURE_EVERY_M = 10.0
START_S = {"a": 0.0, "b": 25.0, "c": 60.0}  # a later robot reaches the shared stretch after the earlier one


def road(s: float) -> np.ndarray:
    """The road's point at arc length ~s (a gentle S-curve)."""
    return np.array([s, 60.0 * math.sin(s / 150.0), 0.0])


@dataclass
class Robot:
    name: str
    stamps: list  # ns
    truth: np.ndarray  # N x 3
    odometry: list  # gtsam.Pose3, odom frame starting at the identity
    arc: np.ndarray  # arc length of each step


def team() -> dict[str, Robot]:
    out = {}
    for name, (start, end) in STRETCHES.items():
        arc = np.arange(start, end + 1e-9, STEP_M)
        truth = np.array([road(s) for s in arc])
        odom = simulate_odometry(truth_poses(truth), DRIFT[name])
        stamps = [T0 + int((START_S[name] + k * STEP_S) * 1e9) for k in range(len(arc))]
        out[name] = Robot(name, stamps, truth, odom, arc)
    return out


def candidates(robots: dict[str, Robot]) -> list[tuple[str, int, str, int]]:
    """(querying robot, query stamp, owning robot, keyframe stamp) of the same place, every CLOSURE_EVERY_M where
    b sees a's stretch and c sees b's: the later robot queries the earlier one's keyframes."""
    out = []
    for query, owner in (("b", "a"), ("c", "b")):
        q, o = robots[query], robots[owner]
        for k, s in enumerate(q.arc):
            if s % CLOSURE_EVERY_M or not o.arc[0] <= s <= o.arc[-1]:
                continue
            j = int(np.argmin(np.abs(o.arc - s)))
            out.append((query, q.stamps[k], owner, o.stamps[j]))
    return out


def closure_message(query_ns: int, keyframe_ns: int, robot_id: str = "", source=None):
    """geoloc_msgs/PlaceRecognition with one candidate, no relative pose (same place), as geoloc_vpr publishes."""
    from geoloc_msgs.msg import PlaceCandidate, PlaceRecognition

    msg = PlaceRecognition(camera_topic="camera/image_raw", camera_frame_id="camera")
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(query_ns), 10**9)
    msg.header.frame_id = "camera"
    c = PlaceCandidate(map_name="peer" if robot_id else "session", map_id=f"peer:{robot_id}" if robot_id else "session",
                       source=PlaceCandidate.SOURCE_PEER if source is None and robot_id else
                       (source if source is not None else PlaceCandidate.SOURCE_SESSION),
                       robot_id=robot_id, keyframe_id=1, similarity=0.9,
                       relative_pose_kind=PlaceCandidate.RELATIVE_POSE_NONE, confidence=1.0)
    c.keyframe_stamp.sec, c.keyframe_stamp.nanosec = divmod(int(keyframe_ns), 10**9)
    msg.candidates = [c]
    return msg


def false_candidate(robots) -> tuple[str, int, str, int]:
    """b, 150 m beyond a's place: b at arc 380 m "sees" a at arc 230 m."""
    b, a = robots["b"], robots["a"]
    return "b", b.stamps[int(np.argmin(np.abs(b.arc - 380.0)))], "a", a.stamps[int(np.argmin(np.abs(a.arc - 230.0)))]


def restarted(robot: Robot, at: int) -> Robot:
    """The robot's odometry as a restart at step `at` shows it: from there it starts again at the identity (its
    new odom frame is wherever it stood), stamps going on."""
    odom = list(robot.odometry[:at])
    base = robot.odometry[at]
    odom += [base.between(p) for p in robot.odometry[at:]]
    return Robot(robot.name, robot.stamps, robot.truth, odom, robot.arc)


def odometry_message(stamp: int, pose: gtsam.Pose3, frame: str = "odom"):
    from geoloc_ros.slam.drive import odometry_message as make

    m = make(stamp, pose)
    m.header.frame_id = frame
    return m


def publish(namespace: str, restart: str = "", false_closure: bool = False, hostile: bool = False) -> dict:
    """Odometry of the three robots interleaved in stamp order, each robot's candidates right after its query
    stamp's odometry; `restart`: that robot's odometry restarts a quarter of the way."""
    from nav_msgs.msg import Odometry
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from geoloc_msgs.msg import PlaceRecognition

    robots = team()
    if restart:
        robots[restart] = restarted(robots[restart], len(robots[restart].stamps) // 4)
    rclpy.init()
    node = rclpy.create_node("team_publisher")
    reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    odom_pub = {r: node.create_publisher(Odometry, f"{namespace}/{r}/odom", reliable) for r in robots}
    lc_pub = {r: node.create_publisher(PlaceRecognition, f"{namespace}/{r}/geoloc_vpr/loop_closures", reliable)
              for r in robots}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(p.get_subscription_count() for p in [*odom_pub.values(),
                                                                                          *lc_pub.values()]):
        time.sleep(0.05)
    by_query = {}
    for cand in candidates(robots):
        by_query.setdefault(cand[1], []).append(cand)
    if false_closure:
        f = false_candidate(robots)
        by_query.setdefault(f[1], []).append(f)
    events = sorted((stamp, r, k) for r in robots for k, stamp in enumerate(robots[r].stamps))
    sent = 0
    for stamp, r, k in events:
        odom_pub[r].publish(odometry_message(stamp, robots[r].odometry[k]))
        for q, q_ns, owner, k_ns in by_query.get(stamp, []):
            if q == r:
                lc_pub[q].publish(closure_message(q_ns, k_ns, robot_id=owner))
                sent += 1
        time.sleep(0.004)  # paced: the back end takes odometry best effort
    if hostile:
        for msg in hostile_messages(robots):
            lc_pub["b"].publish(msg)
            time.sleep(0.002)
    time.sleep(1.0)
    node.destroy_node()
    rclpy.shutdown()
    return {"closures": sent, "odometry": len(events)}


def hostile_messages(robots) -> list:
    """Inter-robot candidates a broken or hostile peer could cause: NaN relative pose, an unknown robot, a
    keyframe stamp years ahead, a robot naming itself, a NaN covariance."""
    from geoloc_msgs.msg import PlaceCandidate

    b, a = robots["b"], robots["a"]
    q, k = b.stamps[-1], a.stamps[-1]
    nan = closure_message(q, k, robot_id="a")
    nan.candidates[0].relative_pose_kind = PlaceCandidate.RELATIVE_POSE_METRIC
    nan.candidates[0].relative_pose.pose.position.x = float("nan")
    unknown = closure_message(q, k, robot_id="zz")
    ahead = closure_message(q, int((time.time() + 365 * 86400) * 1e9), robot_id="a")  # a year ahead of the clock
    itself = closure_message(q, b.stamps[0], robot_id="b")
    bad_cov = closure_message(q, k, robot_id="a")
    bad_cov.candidates[0].relative_pose.covariance[0] = float("nan")
    return [nan, unknown, ahead, itself, bad_cov]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("namespace")
    ap.add_argument("--restart", default="")
    ap.add_argument("--false-closure", action="store_true")
    ap.add_argument("--hostile", action="store_true")
    a = ap.parse_args(argv)
    print(json.dumps(publish(a.namespace, a.restart, a.false_closure, a.hostile)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
