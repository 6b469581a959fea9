"""The back end where the outside world touches it: long drives without closures stay solvable, every input that
used to end the process or corrupt the graph is refused (counted) or absorbed, and the graph is left as it was.

Part 1 drives the ROS-free PoseGraph on real GTSAM; part 2 calls the callbacks of a real rclpy PoseGraphNode
in-process; part 3 talks to a pose_graph_node process over DDS (and with the `ros2 param` command line)."""

import math
import os
from pathlib import Path
import threading
import time

import gtsam
import numpy as np
import pytest

from geoloc_ros.slam import GraphSettings, PoseGraph, Verdict
from geoloc_ros.slam.g2o import G2oError, write_g2o
from geoloc_ros.slam.graph import KIND_METRIC, KIND_NONE

T0 = 1_700_000_000 * 10**9
NO_COV = [0.0] * 36


def ns(k: int) -> int:
    return T0 + k * 100_000_000


def line(k: int) -> gtsam.Pose3:
    return gtsam.Pose3(gtsam.Rot3(), [float(k), 0.0, 0.0])


def circle(k: int, radius: float = 500.0) -> gtsam.Pose3:
    a = k / radius
    return gtsam.Pose3(gtsam.Rot3.Yaw(a + math.pi / 2), [radius * math.cos(a), radius * math.sin(a), 0.0])


def drive(g: PoseGraph, poses, cov=NO_COV, start=0):
    for k, p in enumerate(poses, start):
        g.add_odometry(ns(k), p, cov)


def all_finite(g: PoseGraph) -> bool:
    return all(np.all(np.isfinite(p.matrix())) for _, p in g.poses()) and np.all(np.isfinite(g.map_to_odom().matrix()))


# -- part 1: the graph --------------------------------------------------------------------------------------------
def test_straight_odometry_with_zero_covariance_runs_past_where_cholesky_failed():
    """1 m steps, covariance zero (the default model): iSAM2 with Cholesky raised IndeterminateLinearSystem at
    the 1,081st pose."""
    g = PoseGraph()
    drive(g, [line(k) for k in range(1500)])
    assert len(g) == 1500 and all_finite(g)
    assert g.poses()[-1][1].translation() == pytest.approx([1499.0, 0.0, 0.0])
    assert not g.counts["update_failures"]


def test_constant_message_covariance_runs_past_400_m():
    """A constant per-message covariance of 1e-3 on every axis (a typical driver's): Cholesky failed at ~370."""
    g = PoseGraph()
    drive(g, [line(k) for k in range(800)], cov=list(np.eye(6).ravel() * 1e-3))
    assert len(g) == 800 and all_finite(g) and not g.counts["update_failures"]


def test_a_500_m_circle_runs_past_2322_poses():
    g = PoseGraph()
    drive(g, [circle(k) for k in range(5400)])  # 2 m between nodes: the 1 m chord is a hair under 1 m
    assert len(g) > 2400 and all_finite(g) and not g.counts["update_failures"]


def test_a_failed_isam2_update_is_recovered_in_batch_and_records_nothing_before():
    """With Cholesky, the straight line's update fails at ~1,081 poses: iSAM2 is rebuilt from the committed
    factors (batch, QR), the update is retried, and every pose is kept."""
    g = PoseGraph(GraphSettings(factorization="CHOLESKY"))
    drive(g, [line(k) for k in range(1300)])
    assert g.counts["update_failures"] >= 1 and g.counts["recoveries"] >= 1
    assert len(g) == 1300 and len(g.history) == 1300 and all_finite(g)
    assert [s for s, _ in g.poses()] == [ns(k) for k in range(1300)]


def test_refused_odometry_records_nothing():
    g = PoseGraph()
    nan = gtsam.Pose3(gtsam.Rot3(), [float("nan"), 0.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        g.add_odometry(ns(0), nan, NO_COV)  # NaN as the very first message
    assert len(g) == 0 and len(g.history) == 0
    not_pd = np.diag([1.0, 1.0, 1.0, 1.0, 1.0, -1.0]).ravel()
    drive(g, [line(k) for k in range(3)])
    for bad in (not_pd, np.full(36, np.nan), np.arange(36.0)):  # negative, NaN, asymmetric
        with pytest.raises(ValueError, match="covariance"):
            g.add_odometry(ns(3), line(3), bad)
    assert len(g) == 3 and len(g.history) == 3
    g.add_odometry(ns(3), line(3), np.diag([1e-3, 1e-3, 0.0, 0.0, 0.0, 1e-3]).ravel())  # 2D driver: floored
    assert len(g) == 4 and all_finite(g)


def test_a_10_km_odometry_jump_is_taken_as_no_motion():
    g = PoseGraph()
    poses = [line(k) for k in range(100)] + [gtsam.Pose3(gtsam.Rot3(), [10_000.0 + k, 0.0, 0.0]) for k in range(100)]
    drive(g, poses)
    assert g.counts["odometry_jumps"] == 1 and all_finite(g)
    last = g.poses()[-1][1].translation()
    assert last == pytest.approx([198.0, 0.0, 0.0])  # the step across the jump counts as standing still
    # map -> odom maps the received (jumped) odometry frame onto the graph's
    assert g.map_to_odom().compose(poses[-1]).translation() == pytest.approx(last)


def test_a_wrong_closure_with_a_negative_covariance_is_refused():
    """-1e6 I made the gate's statistic negative, so a closure 200 m off passed and moved the path."""
    g = PoseGraph(GraphSettings(keyframe_distance_m=0.0, keyframe_angle_deg=0.0))
    drive(g, [line(k) for k in range(300)])
    with pytest.raises(ValueError, match="positive semi-definite"):
        g.add_session_closure(ns(250), ns(50), gtsam.Pose3(), (-1e6 * np.eye(6)).ravel(), KIND_METRIC)
    assert g.closures == 0 and g.poses()[250][1].translation() == pytest.approx([250.0, 0.0, 0.0])
    # and the same wrong closure with a tiny (legal) covariance fails the gate
    assert g.add_session_closure(ns(250), ns(50), gtsam.Pose3(), (1e-6 * np.eye(6)).ravel(), KIND_METRIC) \
        == Verdict.REJECTED


def test_closures_from_the_future_are_bounded_and_expire_on_the_steady_clock():
    g = PoseGraph(GraphSettings(pending_timeout_s=0.3, max_pending=50))
    drive(g, [line(k) for k in range(10)])
    future = ns(10) + 3 * 365 * 86400 * 10**9
    for k in range(2000):  # a flood
        assert g.add_session_closure(future + k, ns(0), gtsam.Pose3(), NO_COV, KIND_NONE) == Verdict.PENDING
    assert g.pending == 50 and g.counts["pending_dropped"] == 1950
    time.sleep(0.4)
    g.add_odometry(ns(10), line(10), NO_COV)
    assert g.pending == 0 and g.counts["pending_expired"] == 50


def test_g2o_path_must_be_a_regular_file_or_absent(tmp_path):
    g = PoseGraph()
    drive(g, [line(k) for k in range(5)])
    fifo = tmp_path / "graph.fifo"
    os.mkfifo(fifo)
    result = {}

    def save(path):
        try:
            write_g2o(g, path)
        except G2oError as e:
            result[str(path)] = str(e)

    for path in (fifo, Path("/dev/zero"), tmp_path):
        t = threading.Thread(target=save, args=(path,), daemon=True)  # a blocked open must not hang the test
        t.start()
        t.join(timeout=20)
        assert not t.is_alive(), f"saving to {path} blocked"
        assert str(path) in result
    assert "not a regular file" in result[str(fifo)] and "not a regular file" in result["/dev/zero"]
    assert "directory" in result[str(tmp_path)]
    link = tmp_path / "zero.g2o"
    link.symlink_to("/dev/zero")
    with pytest.raises(G2oError, match="not a regular file"):
        write_g2o(g, link)


# -- part 2: the node's callbacks on a real rclpy node -------------------------------------------------------------
rclpy = pytest.importorskip("rclpy")

from nav_msgs.msg import Odometry  # noqa: E402
from sensor_msgs.msg import NavSatFix  # noqa: E402

from geoloc_msgs.msg import PlaceCandidate, PlaceRecognition  # noqa: E402
from geoloc_ros.slam.pose_graph_node import PoseGraphNode  # noqa: E402
from geoloc_ros.stamps import set_stamp  # noqa: E402


def odometry(stamp: int, pose: gtsam.Pose3, cov=None) -> Odometry:
    m = Odometry()
    set_stamp(m.header.stamp, stamp)
    m.header.frame_id = "odom"
    p, q = pose.translation(), pose.rotation().toQuaternion()
    m.pose.pose.position.x, m.pose.pose.position.y, m.pose.pose.position.z = (float(v) for v in p)
    o = m.pose.pose.orientation
    o.x, o.y, o.z, o.w = q.x(), q.y(), q.z(), q.w()
    if cov is not None:
        m.pose.covariance = [float(v) for v in np.asarray(cov).ravel()]
    return m


def closure(query: int, keyframe: int, confidence=1.0, cov=None, kind=PlaceCandidate.RELATIVE_POSE_NONE):
    msg = PlaceRecognition()
    set_stamp(msg.header.stamp, query)
    c = PlaceCandidate(map_name="session", source=PlaceCandidate.SOURCE_SESSION, keyframe_id=1,
                       confidence=confidence, relative_pose_kind=kind)
    set_stamp(c.keyframe_stamp, keyframe)
    c.relative_pose.pose.orientation.w = 1.0
    if cov is not None:
        c.relative_pose.covariance = [float(v) for v in np.asarray(cov).ravel()]
    msg.candidates = [c]
    return msg


@pytest.fixture
def make_node(rclpy_context):
    made = []

    def make(**parameters):
        from rclpy.parameter import Parameter

        node = PoseGraphNode(context=rclpy_context,
                             parameter_overrides=[Parameter(k, value=v) for k, v in parameters.items()])
        made.append(node)
        return node

    yield make
    for n in made:
        n.destroy_node()


def now_ns(node) -> int:
    return node.get_clock().now().nanoseconds


def test_node_survives_what_used_to_end_it(make_node):
    node = make_node(use_fix=True)
    t = now_ns(node) - 10**12
    nan = odometry(t, line(0))
    nan.pose.pose.position.x = float("nan")
    node._on_odom(nan)  # NaN first
    assert node.counts["odometry_refused"] == 1 and len(node.graph) == 0
    bad_q = odometry(t, line(0))
    bad_q.pose.pose.orientation.w = 7.0  # not a unit quaternion
    node._on_odom(bad_q)
    assert node.counts["odometry_refused"] == 2 and len(node.graph) == 0
    for k in range(20):
        node._on_odom(odometry(t + k * 10**8, line(k)))
    node._on_odom(odometry(t + 20 * 10**8, line(20), cov=np.diag([1.0] * 5 + [-1.0])))  # not PSD
    node._on_odom(odometry(t + 21 * 10**8, line(10_021)))  # a 10 km jump
    assert node.graph.counts["odometry_jumps"] == 1 and len(node.graph) == 20
    fix = NavSatFix()
    set_stamp(fix.header.stamp, t + 21 * 10**8)
    fix.latitude, fix.longitude = 95.0, 14.0  # the first fix, beyond the pole
    node._on_fix(fix)
    assert node.counts["gps_refused"] == 1 and node._origin is None
    node._on_closures(closure(t + 15 * 10**8, t, cov=-1e6 * np.eye(6), kind=PlaceCandidate.RELATIVE_POSE_METRIC))
    assert node.counts["closure_refused"] == 1 and node.graph.closures == 0
    node.publish()
    node.publish_diagnostics()
    assert node.path_message().poses and all(math.isfinite(p.pose.position.x) for p in node.path_message().poses)


def test_a_stamp_years_ahead_is_refused_not_adopted(make_node):
    node = make_node()
    t = now_ns(node)
    node._on_odom(odometry(t, line(0)))
    node._on_odom(odometry(t + 3 * 365 * 86400 * 10**9, line(1)))  # one message 3 years ahead
    assert node.counts["odometry_future_stamp"] == 1 and node.counts["odometry_refused"] == 1
    for k in range(1, 10):  # and the ones after it still count
        node._on_odom(odometry(t + k * 10**8, line(k)))
    assert len(node.graph) == 10
    node._on_closures(closure(t + 3 * 365 * 86400 * 10**9, t))  # closures too
    assert node.counts["closure_future_stamp"] == 1 and node.graph.pending == 0


def test_nan_confidence_is_below_every_threshold(make_node):
    node = make_node(min_confidence=0.5)
    t = now_ns(node) - 10**12
    for k in range(30):
        node._on_odom(odometry(t + k * 10**8, line(k)))
    node._on_closures(closure(t + 25 * 10**8, t, confidence=float("nan")))
    assert node.counts["below_confidence"] == 1 and node.graph.closures_accepted + node.graph.closures_rejected == 0


def test_runtime_parameter_changes_are_applied_or_refused(make_node, tmp_path):
    from rclpy.parameter import Parameter

    node = make_node()
    fifo = tmp_path / "graph.fifo"
    os.mkfifo(fifo)
    r = node.set_parameters([Parameter("g2o_path", value=str(fifo))])[0]
    assert not r.successful and "not a regular file" in r.reason and node.p["g2o_path"] != str(fifo)
    r = node.set_parameters([Parameter("g2o_path", value=str(tmp_path / "g.g2o"))])[0]
    assert r.successful and node.p["g2o_path"] == str(tmp_path / "g.g2o")
    r = node.set_parameters([Parameter("gate_probability", value=0.9)])[0]
    assert r.successful and node.graph.settings.gate_probability == 0.9
    r = node.set_parameters([Parameter("map_frame", value="world")])[0]
    assert not r.successful and ("restart" in r.reason or "read-only" in r.reason) and node.p["map_frame"] == "map"


# -- part 3: over DDS -----------------------------------------------------------------------------------------------
def test_ros2_param_set_says_what_happened(rclpy_context, tmp_path):
    """`ros2 param set` from another process: an applied change succeeds and is in force, a FIFO g2o_path and
    a start-only parameter are refused with the reason."""
    from rclpy.executors import SingleThreadedExecutor
    from ros2_cli import NO_DAEMON, launch_tools_missing, ros2

    if launch_tools_missing():
        pytest.skip(launch_tools_missing())
    node = PoseGraphNode(context=rclpy_context, namespace=f"/param_test_{os.getpid()}")
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    fifo = tmp_path / "graph.fifo"
    os.mkfifo(fifo)
    name = node.get_fully_qualified_name()
    try:
        out = ros2("param", "set", *NO_DAEMON, name, "gate_probability", "0.95")
        assert "Set parameter successful" in out and node.graph.settings.gate_probability == 0.95
        out = ros2("param", "set", *NO_DAEMON, name, "g2o_path", str(fifo), check=False)
        assert "not a regular file" in out and node.p["g2o_path"] != str(fifo)
        out = ros2("param", "set", *NO_DAEMON, name, "keyframe_distance_m", "2.0", check=False)
        assert ("restart" in out or "read-only" in out) and node.graph.settings.keyframe_distance_m == 1.0
    finally:
        executor.shutdown()
        node.destroy_node()


def test_hostile_messages_over_dds_leave_the_process_alive(rclpy_context, tmp_path):
    """A pose_graph_node process, fed from this process: NaN odometry first, a non-PSD covariance, a 10 km jump,
    a stamp years ahead, a first fix at latitude 95, a negative-covariance closure, a flood of future closures;
    it lives, counts each in /diagnostics, and the later odometry still makes poses."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from geoloc_ros.bench.long_drive import pose_graph_process
    from geoloc_ros.replay import wait_for

    ns_ = f"/hostile_{os.getpid()}"
    with pose_graph_process(ns_, tmp_path / "node.log", {"use_fix": True}) as process:
        test = rclpy.create_node("hostile", context=rclpy_context)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        odom = test.create_publisher(Odometry, f"{ns_}/odom", reliable)
        closures = test.create_publisher(PlaceRecognition, f"{ns_}/loop_closures", reliable)
        fixes = test.create_publisher(NavSatFix, f"{ns_}/fix", reliable)
        diag = {}
        test.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diag.update(
            {kv.key: kv.value for st in m.status if st.name.startswith("geoloc_pose_graph") for kv in st.values}), 10)
        from rclpy.executors import SingleThreadedExecutor

        executor = SingleThreadedExecutor(context=rclpy_context)
        executor.add_node(test)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        try:
            assert wait_for(lambda: odom.get_subscription_count() and closures.get_subscription_count()
                            and fixes.get_subscription_count() and diag, 60), (tmp_path / "node.log").read_text()
            t = test.get_clock().now().nanoseconds - 10**12

            def send(pub, msg):
                pub.publish(msg)
                time.sleep(0.01)

            nan = odometry(t, line(0))
            nan.pose.pose.position.x = float("nan")
            send(odom, nan)
            for k in range(30):
                send(odom, odometry(t + k * 10**8, line(k)))
            send(odom, odometry(t + 30 * 10**8, line(30), cov=np.diag([1.0] * 5 + [-1.0])))
            send(odom, odometry(t + 31 * 10**8, line(10_031)))
            send(odom, odometry(t + 3 * 365 * 86400 * 10**9, line(10_032)))
            fix = NavSatFix()
            set_stamp(fix.header.stamp, t + 31 * 10**8)
            fix.latitude, fix.longitude = 95.0, 14.0
            send(fixes, fix)
            send(closures, closure(t + 20 * 10**8, t, cov=-1e6 * np.eye(6), kind=PlaceCandidate.RELATIVE_POSE_METRIC))
            for k in range(200):
                closures.publish(closure(t + 10**12 + k, t))
            for k in range(32, 60):
                send(odom, odometry(t + k * 10**8, line(10_000 + k)))
            want = {"odometry_refused": 3, "odometry_future_stamp": 1, "odometry_jumps": 1, "gps_refused": 1,
                    "closure_refused": 1, "poses": 58}
            assert wait_for(lambda: all(diag.get(k) == str(v) for k, v in want.items()), 30), (diag, want)
            assert int(diag["pending"]) <= 200 and process.poll() is None
        finally:
            executor.shutdown()
            test.destroy_node()
    assert process.returncode == 0, (tmp_path / "node.log").read_text()[-2000:]
