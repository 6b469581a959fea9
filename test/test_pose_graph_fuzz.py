"""Property-based tests of pose_graph_node's message callbacks (Odometry, NavSatFix, PlaceRecognition): any field
values -- NaN, infinities, huge, negative, covariances that are not covariances, odd stamps -- mixed with valid
odometry, fed to a real rclpy node in-process and to a pose_graph_node process over DDS. The node lives, what it
keeps stays bounded, and what it publishes stays finite. Budgets are small and fixed (CI runs them)."""

import math
import os
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from nav_msgs.msg import Odometry  # noqa: E402
from sensor_msgs.msg import NavSatFix  # noqa: E402

from geoloc_msgs.msg import PlaceCandidate, PlaceRecognition  # noqa: E402
from geoloc_ros.slam.graph import MAX_UNALIGNED  # noqa: E402
from geoloc_ros.slam.pose_graph_node import PoseGraphNode  # noqa: E402
from geoloc_ros.stamps import NS_PER_S  # noqa: E402

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

odd = st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-300, 5e-324, 1e300, -1e300, 1e8, -1e8, 1e12, float("nan"),
                       float("inf"), float("-inf")])
number = st.one_of(odd, st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e4, 1e4))
small = st.floats(-50.0, 50.0)


@st.composite
def covariance(draw, n: int):
    kind = draw(st.sampled_from(["zero", "diag", "psd", "any", "negative", "nan"]))
    if kind == "zero":
        return [0.0] * (n * n)
    if kind == "diag":
        return list(np.diag(draw(st.lists(number, min_size=n, max_size=n))).ravel())
    if kind == "psd":
        a = np.array(draw(st.lists(st.floats(-10, 10), min_size=n * n, max_size=n * n))).reshape(n, n)
        return list((a @ a.T).ravel())
    if kind == "negative":
        return list((-1e6 * np.eye(n)).ravel())
    if kind == "nan":
        return [float("nan")] * (n * n)
    return draw(st.lists(number, min_size=n * n, max_size=n * n))


# a stamp: near the node's clock (offset in seconds), or any valid builtin_interfaces/Time
stamp_offset = st.one_of(st.floats(-100.0, 5.0), st.sampled_from([-1e9, 1e8, 3 * 365 * 86400.0]))
raw_stamp = st.tuples(st.integers(-2**31, 2**31 - 1), st.integers(0, 2**32 - 1))


def set_time(stamp, now_ns: int, offset, raw):
    if raw is not None:
        stamp.sec, stamp.nanosec = raw
    else:
        stamp.sec, stamp.nanosec = divmod(max(0, int(now_ns + offset * NS_PER_S)), NS_PER_S)


@st.composite
def odometry(draw):
    """(fields) of an Odometry: mostly a plausible step along x, else arbitrary values."""
    if draw(st.booleans()):
        return ("odom", {"step": draw(st.floats(0.0, 3.0)), "cov": [0.0] * 36})
    return ("odom", {"xyz": draw(st.lists(number, min_size=3, max_size=3)),
                     "q": draw(st.lists(number, min_size=4, max_size=4)), "cov": draw(covariance(6)),
                     "offset": draw(stamp_offset), "raw": draw(st.none() | raw_stamp)})


@st.composite
def fix(draw):
    return ("fix", {"lat": draw(number | st.floats(-90, 90)), "lon": draw(number | st.floats(-180, 180)),
                    "alt": draw(number), "cov": draw(covariance(3)), "cov_type": draw(st.integers(0, 255)),
                    "status": draw(st.integers(-128, 127)), "offset": draw(stamp_offset),
                    "raw": draw(st.none() | raw_stamp)})


@st.composite
def closures(draw):
    candidates = []
    for _ in range(draw(st.integers(0, 3))):
        candidates.append({"map": draw(st.sampled_from(["session", "summer", ""])),
                           "source": draw(st.integers(0, 255)), "has_position": draw(st.booleans()),
                           "kind": draw(st.integers(0, 255)), "confidence": draw(number),
                           "kf_offset": draw(stamp_offset), "kf_raw": draw(st.none() | raw_stamp),
                           "xyz": draw(st.lists(number | small, min_size=3, max_size=3)),
                           "q": draw(st.lists(number, min_size=4, max_size=4)), "cov": draw(covariance(6)),
                           "lat": draw(number | st.floats(-90, 90)), "lon": draw(number | st.floats(-180, 180)),
                           "alt": draw(number), "pos": draw(st.lists(number | small, min_size=3, max_size=3))})
    return ("closures", {"offset": draw(stamp_offset), "raw": draw(st.none() | raw_stamp), "candidates": candidates})


@st.composite
def plausible_closure(draw):
    """A session closure between two stamps of the valid odometry so far, with any relative pose and covariance."""
    return ("closures", {"query_back_s": draw(st.floats(0.0, 3.0)), "keyframe_back_s": draw(st.floats(0.0, 30.0)),
                         "kind": draw(st.integers(0, 3)), "cov": draw(covariance(6)),
                         "xyz": draw(st.lists(small, min_size=3, max_size=3)),
                         "q": draw(st.just([0, 0, 0, 1]) | st.lists(number | st.floats(-1, 1), min_size=4,
                                                                    max_size=4))})


messages = st.lists(st.one_of(odometry(), odometry(), fix(), closures(), plausible_closure()), min_size=1,
                    max_size=12)


class Feeder:
    """Turns drawn fields into messages; valid odometry continues from where the last one left off (after the
    node's newest odometry stamp, when `last_stamp` tells it: a fuzzed stamp a little ahead of the clock is
    accepted, and stamps must increase)."""

    def __init__(self, now_ns, last_stamp=lambda: None):
        self.now_ns, self.last_stamp = now_ns, last_stamp
        self.x, self.t = 0.0, now_ns() - 200 * NS_PER_S

    def build(self, kind, f):
        now = self.now_ns()
        if kind == "odom":
            m = Odometry()
            m.header.frame_id = "odom"
            if "step" in f:
                self.x += f["step"]
                self.t = max(self.t, self.last_stamp() or 0) + NS_PER_S // 10
                m.header.stamp.sec, m.header.stamp.nanosec = divmod(self.t, NS_PER_S)
                m.pose.pose.position.x, m.pose.pose.orientation.w = self.x, 1.0
            else:
                set_time(m.header.stamp, now, f["offset"], f["raw"])
                p, o = m.pose.pose.position, m.pose.pose.orientation
                p.x, p.y, p.z = f["xyz"]
                o.x, o.y, o.z, o.w = f["q"]
            m.pose.covariance = f["cov"]
            return m
        if kind == "fix":
            m = NavSatFix()
            set_time(m.header.stamp, now, f["offset"], f["raw"])
            m.latitude, m.longitude, m.altitude = f["lat"], f["lon"], f["alt"]
            m.position_covariance = f["cov"]
            m.position_covariance_type, m.status.status = f["cov_type"], f["status"]
            return m
        m = PlaceRecognition()
        if "query_back_s" in f:
            m.header.stamp.sec, m.header.stamp.nanosec = divmod(self.t - int(f["query_back_s"] * NS_PER_S), NS_PER_S)
            pc = PlaceCandidate(map_name="session", source=PlaceCandidate.SOURCE_SESSION, keyframe_id=1,
                                relative_pose_kind=f["kind"], confidence=1.0)
            pc.keyframe_stamp.sec, pc.keyframe_stamp.nanosec = divmod(
                self.t - int(f["keyframe_back_s"] * NS_PER_S), NS_PER_S)
            pose = pc.relative_pose.pose
            pose.position.x, pose.position.y, pose.position.z = f["xyz"]
            pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = f["q"]
            pc.relative_pose.covariance = f["cov"]
            m.candidates = [pc]
            return m
        set_time(m.header.stamp, now, f["offset"], f["raw"])
        for c in f["candidates"]:
            pc = PlaceCandidate(map_name=c["map"], source=c["source"], has_position=c["has_position"],
                                keyframe_id=3, relative_pose_kind=c["kind"],
                                confidence=c["confidence"], latitude=c["lat"], longitude=c["lon"], altitude=c["alt"])
            set_time(pc.keyframe_stamp, now, c["kf_offset"], c["kf_raw"])
            pose = pc.relative_pose.pose
            pose.position.x, pose.position.y, pose.position.z = c["xyz"]
            pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = c["q"]
            pc.relative_pose.covariance = c["cov"]
            pc.pose.position.x, pc.pose.position.y, pc.pose.position.z = c["pos"]
            m.candidates.append(pc)
        return m


@pytest.fixture(scope="module")
def node():
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    context = Context()
    rclpy.init(context=context)
    n = PoseGraphNode(context=context, parameter_overrides=[Parameter("use_fix", value=True)])
    yield n
    n.destroy_node()
    context.try_shutdown()


def finite_outputs(node) -> bool:
    path = node.path_message()
    values = [v for p in path.poses for v in (p.pose.position.x, p.pose.position.y, p.pose.position.z,
                                             p.pose.orientation.x, p.pose.orientation.y, p.pose.orientation.z,
                                             p.pose.orientation.w)]
    return all(math.isfinite(v) for v in values) and np.all(np.isfinite(node.graph.map_to_odom().matrix()))


@FUZZ
@given(batch=messages)
def test_any_message_leaves_the_node_consistent_bounded_and_finite(node, batch):
    feeder = getattr(node, "_fuzz_feeder", None) or Feeder(lambda: node.get_clock().now().nanoseconds,
                                                           lambda: node.graph.history.last_stamp)
    node._fuzz_feeder = feeder
    callbacks = {"odom": node._on_odom, "fix": node._on_fix, "closures": node._on_closures}
    for kind, fields in batch:
        try:
            msg = feeder.build(kind, fields)
        except (AssertionError, ValueError, TypeError):
            continue  # a value rclpy's own setters refuse (e.g. a float out of a field's range) never reaches us
        callbacks[kind](msg)  # never raises
    g = node.graph
    assert len(g.node_stamps) == len(g.node_odom) and g.node_stamps == sorted(g.node_stamps)
    assert g.pending <= g.settings.max_pending and len(g._unaligned) <= MAX_UNALIGNED
    assert len(node.counts) < 60 and len(g.counts) < 20  # a fixed vocabulary, not one key per input
    node.publish()
    node.publish_diagnostics()
    assert finite_outputs(node)
    assert not node.counts["odometry_failed"] and not node.counts["closures_failed"], node.last_error


def test_the_fuzzed_node_still_works(node):
    """After the fuzzing above, plain odometry still makes poses (nothing was left half-done)."""
    feeder = getattr(node, "_fuzz_feeder", None) or Feeder(lambda: node.get_clock().now().nanoseconds,
                                                           lambda: node.graph.history.last_stamp)
    before = len(node.graph)
    for _ in range(5):
        node._on_odom(feeder.build("odom", {"step": 2.0, "cov": [0.0] * 36}))
    assert len(node.graph) == before + 5


# -- over DDS: the same strategies published to a pose_graph_node process -------------------------------------------
@pytest.fixture(scope="module")
def process_node(tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from geoloc_ros.bench.long_drive import pose_graph_process
    from geoloc_ros.replay import wait_for

    ns = f"/fuzz_{os.getpid()}"
    log = tmp_path_factory.mktemp("fuzz") / "node.log"
    with pose_graph_process(ns, log, {"use_fix": True}) as process:
        context = Context()
        rclpy.init(context=context)
        test = rclpy.create_node("fuzz", context=context)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        pubs = {"odom": test.create_publisher(Odometry, f"{ns}/odom", reliable),
                "fix": test.create_publisher(NavSatFix, f"{ns}/fix", reliable),
                "closures": test.create_publisher(PlaceRecognition, f"{ns}/loop_closures", reliable)}
        diag = {}
        test.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diag.update(
            {kv.key: kv.value for st_ in m.status if st_.name.startswith("geoloc_pose_graph") for kv in st_.values}),
            10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(test)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        try:
            assert wait_for(lambda: all(p.get_subscription_count() for p in pubs.values()) and diag, 60), \
                log.read_text()
            yield process, pubs, diag, Feeder(lambda: test.get_clock().now().nanoseconds), log
        finally:
            executor.shutdown()
            test.destroy_node()
            context.try_shutdown()
    assert process.returncode == 0, log.read_text()[-3000:]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(batch=messages)
def test_any_message_over_dds_leaves_the_process_alive(process_node, batch):
    process, pubs, _, feeder, log = process_node
    for kind, fields in batch:
        try:
            msg = feeder.build(kind, fields)
        except (AssertionError, ValueError, TypeError):
            continue
        pubs[kind].publish(msg)
    time.sleep(0.2)
    assert process.poll() is None, log.read_text()[-3000:]


def test_the_fuzzed_process_still_answers(process_node):
    from geoloc_ros.replay import wait_for

    process, pubs, diag, feeder, log = process_node
    received = int(diag.get("odometry_received", "0"))
    for _ in range(5):
        pubs["odom"].publish(feeder.build("odom", {"step": 2.0, "cov": [0.0] * 36}))
        time.sleep(0.02)
    assert wait_for(lambda: int(diag.get("odometry_received", "0")) >= received + 5, 30), diag
    assert process.poll() is None and not diag.get("odometry_failed"), log.read_text()[-3000:]
