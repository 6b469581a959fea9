"""geoloc_pose_graph with `robots: [a, b, c]` as a process, fed over DDS by another process (test/team_fixtures.py):
three robots with their own drifting odometry from their own origins and the same-place candidates of their
overlapping stretches. The trajectories come back in one frame on ~/<robot>/path with map -> <robot>/odom on /tf; a
false inter-robot closure is rejected; a robot that restarts halfway leaves the others' graphs intact; hostile
candidates are refused and counted. The ROS-free TeamGraph is checked on the same team directly."""

import json
import os
from pathlib import Path
import subprocess
import sys
import threading
import time

import gtsam
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from geoloc_ros.slam.evaluate import aligned  # noqa: E402
from geoloc_ros.slam.team import TeamGraph  # noqa: E402
from geoloc_ros.stamps import stamp_ns  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import team_fixtures as tf  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROBOTS = ("a", "b", "c")


def team_ate(robots, estimates: dict) -> dict:
    """Per robot, the RMSE of its positions after ONE rigid alignment of the whole team to the truth (stamps the
    estimate holds)."""
    rows = [(r, k) for r in ROBOTS for k, s in enumerate(robots[r].stamps) if s in estimates[r]]
    truth = np.array([robots[r].truth[k] for r, k in rows])
    est = aligned(truth, np.array([estimates[r][robots[r].stamps[k]] for r, k in rows]))
    err = np.linalg.norm(est - truth, axis=1)
    names = np.array([r for r, _ in rows])
    return {r: float(np.sqrt(np.mean(err[names == r] ** 2))) for r in ROBOTS}


def odometry_estimates(robots) -> dict:
    return {r: {s: p.translation() for s, p in zip(robots[r].stamps, robots[r].odometry)} for r in ROBOTS}


# -- the ROS-free graph -----------------------------------------------------------------------------------------------
def run_graph(robots, extra=(), settings=None) -> TeamGraph:
    g = TeamGraph(list(ROBOTS), settings)
    by_query = {}
    for c in [*tf.candidates(robots), *extra]:
        by_query.setdefault(c[1], []).append(c)
    for stamp, r, k in sorted((s, r, k) for r in ROBOTS for k, s in enumerate(robots[r].stamps)):
        g.add_odometry(r, stamp, robots[r].odometry[k])
        for q, q_ns, owner, k_ns in by_query.get(stamp, []):
            if q == r:
                g.add_closure(q, q_ns, owner, k_ns, gtsam.Pose3(), [0.0] * 36, 0)
    return g


def graph_estimates(g: TeamGraph) -> dict:
    return {r: {s: p.translation() for s, p, anchored in g.poses(r) if anchored} for r in ROBOTS}


def test_team_graph_joins_three_robots_and_a_false_closure_changes_nothing():
    robots = tf.team()
    clean = run_graph(robots)
    with_false = run_graph(robots, [tf.false_candidate(robots)])
    assert all(clean.anchored(r) for r in ROBOTS)
    assert with_false.inter_robot_rejected == 1 and with_false.inter_robot_accepted == clean.inter_robot_accepted
    est, odo = team_ate(robots, graph_estimates(with_false)), team_ate(robots, odometry_estimates(robots))
    assert all(est[r] < 0.1 * odo[r] for r in ROBOTS), (est, odo)
    for r in ROBOTS:  # the false closure left no trace
        a, b = graph_estimates(clean)[r], graph_estimates(with_false)[r]
        assert max(np.linalg.norm(a[s] - b[s]) for s in a) < 1e-6


def test_with_the_gate_off_the_robust_kernel_alone_bounds_a_false_inter_robot_closure():
    """The false closure (150 m off) taken as a factor: Huber keeps every trajectory within 2 m of the graph
    without it; the plain Gaussian moves them by tens of metres."""
    from geoloc_ros.slam.graph import GraphSettings

    robots = tf.team()
    clean = graph_estimates(run_graph(robots))
    moved = {}
    for kernel in ("huber", "none"):
        g = run_graph(robots, [tf.false_candidate(robots)], GraphSettings(gate_probability=1.0, robust_kernel=kernel))
        assert g.inter_robot_rejected == 0  # nothing but the kernel stands in its way
        est = graph_estimates(g)
        moved[kernel] = max(np.linalg.norm(clean[r][s] - est[r][s]) for r in ROBOTS for s in clean[r])
    assert moved["huber"] < 2.0 and moved["none"] > 10.0, moved


def test_wrong_closures_before_anchoring_neither_anchor_a_robot_nor_bend_it():
    """Three wrong links (100-200 m off) among b's first ones: the consensus fit leaves them out."""
    robots = tf.team()
    b, a = robots["b"], robots["a"]
    wrong = [("b", b.stamps[k], "a", a.stamps[j]) for k, j in ((0, 70), (1, 10), (2, 75))]
    clean, g = run_graph(robots), run_graph(robots, wrong)
    assert g.anchored("b") and g.anchored("c") and g.inter_robot_rejected == 3
    for r in ROBOTS:
        a_est, b_est = graph_estimates(clean)[r], graph_estimates(g)[r]
        assert max(np.linalg.norm(a_est[s] - b_est[s]) for s in a_est) < 0.5


def test_team_graph_before_anchoring_keeps_a_robot_in_its_own_frame():
    robots = tf.team()
    g = TeamGraph(list(ROBOTS))
    for k in range(5):
        for r in ROBOTS:
            g.add_odometry(r, robots[r].stamps[k], robots[r].odometry[k])
    assert g.anchored("a") and not g.anchored("b") and g.map_to_odom("b") is None
    assert g.poses("b")[0][1].equals(gtsam.Pose3(), 1e-6)  # its own odom frame, not the map's
    with pytest.raises(ValueError, match="unknown robot"):
        g.add_odometry("d", robots["a"].stamps[6], gtsam.Pose3())
    with pytest.raises(ValueError, match="not after"):  # an old stamp away from the origin is no restart
        g.add_odometry("a", robots["a"].stamps[1], robots["a"].odometry[4])
    assert len(g.segments["a"]) == 1


def test_odometry_starting_again_at_the_origin_with_older_stamps_is_a_restart():
    """A replayed or sim-time robot restarts with its clock: its stamps go back and its odometry is at the origin
    again. A new floating segment; a's poses and the gauge are untouched."""
    robots = tf.team()
    g = TeamGraph(list(ROBOTS))
    for k in range(20):
        for r in ("a", "b"):
            g.add_odometry(r, robots[r].stamps[k], robots[r].odometry[k])
    a_before = [p.translation() for _, p, _ in g.poses("a")]
    assert g.add_odometry("b", robots["b"].stamps[0], gtsam.Pose3()) == 0
    assert len(g.segments["b"]) == 2 and not g.anchored("b") and g.counts["robot_restarts"] == 1
    g.add_odometry("b", robots["b"].stamps[1], robots["b"].odometry[1])
    assert np.allclose([p.translation() for _, p, _ in g.poses("a")], a_before)
    # a closure at a restarted stamp falls on b's newest segment
    seg, node, _ = g.locate("b", robots["b"].stamps[1])
    assert seg is g.segments["b"][-1] and node == 1


# -- over DDS, back end and publisher in their own processes -----------------------------------------------------
class Listener:
    """~/<robot>/path, /tf and the back end's /diagnostics, spun on a thread."""

    def __init__(self, context, namespace: str):
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import Path as PathMsg
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from tf2_msgs.msg import TFMessage

        self.node = rclpy.create_node("team_listener", context=context)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.paths, self.tf, self.diag, self.lock = {}, {}, {}, threading.Lock()
        for r in ROBOTS:
            self.node.create_subscription(PathMsg, f"{namespace}/geoloc_pose_graph/{r}/path",
                                          lambda m, r=r: self._on_path(r, m), latched)
        self.node.create_subscription(TFMessage, "/tf", self._on_tf, QoSProfile(depth=100,
                                                                                 reliability=ReliabilityPolicy.RELIABLE))
        name = f"{namespace}/geoloc_pose_graph: pose graph"
        self.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self._on_diag(m, name), 10)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_path(self, robot, msg):
        with self.lock:
            self.paths[robot] = {stamp_ns(p.header.stamp): np.array([p.pose.position.x, p.pose.position.y,
                                                                      p.pose.position.z]) for p in msg.poses}

    def _on_tf(self, msg):
        with self.lock:
            for t in msg.transforms:
                if t.header.frame_id == "map" and t.child_frame_id in {f"{r}/odom" for r in ROBOTS}:
                    self.tf[t.child_frame_id] = t

    def _on_diag(self, msg, name):
        with self.lock:
            for st in msg.status:
                if st.name == name:
                    self.diag = {kv.key: kv.value for kv in st.values}

    def close(self):
        self.executor.shutdown()
        self.thread.join(timeout=5)
        self.node.destroy_node()


def run_team(context, tmp_path, *publisher_args, robots="[a, b, c]") -> tuple[Listener, dict]:
    """A team pose_graph_node process and the publisher process; returns the listener once the back end has
    settled (its diagnostics stopped changing) and what the publisher printed."""
    ns = f"/team_test_{os.getpid()}_{len(list(tmp_path.iterdir()))}"
    log_path = tmp_path / f"backend{ns.rsplit('_', 1)[1]}.log"
    log = open(log_path, "w")
    backend = subprocess.Popen([sys.executable, "-m", "geoloc_ros.slam.pose_graph_node", "--ros-args", "-r",
                                f"__ns:={ns}", "-p", f"robots:={robots}", "-p", "publish_period_s:=0.2",
                                "-p", "diagnostics_period_s:=0.2"], stdout=log, stderr=subprocess.STDOUT)
    listener = Listener(context, ns)
    try:
        out = subprocess.run([sys.executable, str(REPO / "test" / "team_fixtures.py"), ns, *publisher_args],
                             capture_output=True, text=True, timeout=120, check=True)
        sent = json.loads(out.stdout.strip().splitlines()[-1])
        last, since, deadline = None, time.monotonic(), time.monotonic() + 60
        while time.monotonic() < deadline:
            with listener.lock:
                now = (dict(listener.diag), {r: len(p) for r, p in listener.paths.items()})
            if now != last:
                last, since = now, time.monotonic()
            elif now[0] and time.monotonic() - since > 2.0:
                break
            time.sleep(0.1)
        assert backend.poll() is None, log_path.read_text()[-3000:]
        return listener, sent
    except BaseException:
        listener.close()
        raise
    finally:
        backend.terminate()
        backend.wait(timeout=30)
        log.close()


def test_three_robots_over_dds_join_in_one_frame_and_refuse_hostile_candidates(rclpy_context, tmp_path):
    listener, sent = run_team(rclpy_context, tmp_path, "--false-closure", "--hostile", robots="[a, b, c, d]")
    try:
        robots = tf.team()
        d = listener.diag
        assert d["d.poses"] == "0" and d["d.anchored"] == "False", d  # a robot that never speaks breaks nothing
        assert all(d[f"{r}.anchored"] == "True" for r in ROBOTS), d
        assert int(d["inter_robot_rejected"]) >= 1, d  # the false closure
        assert int(d["inter_robot_accepted"]) >= 0.8 * sent["closures"], d
        est, odo = team_ate(robots, listener.paths), team_ate(robots, odometry_estimates(robots))
        assert all(est[r] < 0.1 * odo[r] for r in ROBOTS), (est, odo)
        # odometry is best effort (a lost message costs nothing; a loaded machine loses some): most stamps have a pose
        kept = {r: (len(listener.paths[r]), len(robots[r].stamps)) for r in ROBOTS}
        assert all(n >= 0.75 * total for n, total in kept.values()), kept
        assert set(listener.tf) == {"a/odom", "b/odom", "c/odom"}
        # hostile: NaN pose and covariance refused, an unknown robot, a stamp years ahead, a robot naming itself
        assert int(d["peer_refused"]) == 5 and int(d["peer_unknown_robot"]) == 1, str(sorted(d.items()))
        assert int(d["keyframe_future_stamp"]) == 1 and int(d["peer_names_itself"]) == 1, d
    finally:
        listener.close()


def test_a_robot_restarting_midway_leaves_the_others_intact(rclpy_context, tmp_path):
    listener, _ = run_team(rclpy_context, tmp_path, "--restart", "b")
    try:
        robots = tf.team()
        robots["b"] = tf.restarted(robots["b"], len(robots["b"].stamps) // 4)
        d = listener.diag
        assert d["b.segments"] == "2" and d["a.segments"] == d["c.segments"] == "1", d
        assert all(d[f"{r}.anchored"] == "True" for r in ROBOTS), d  # b's new segment anchored by its closures
        est, odo = team_ate(robots, listener.paths), team_ate(robots, odometry_estimates(robots))
        assert all(est[r] < 0.1 * odo[r] for r in ROBOTS), (est, odo)
        clean = team_ate(tf.team(), graph_estimates(run_graph(tf.team())))
        for r in ("a", "c"):  # the others' errors as without the restart
            assert est[r] < 1.5 * clean[r] + 1.0, (est, clean)
    finally:
        listener.close()


# -- launch/multi_robot.launch.py ------------------------------------------------------------------------------------
def test_multi_robot_launch_builds_a_vpr_node_per_robot_and_one_team_back_end():
    """The launch file's description, built and its robot actions made as `ros2 launch` makes them (no process)."""
    import importlib.util

    launch = pytest.importorskip("launch")
    pytest.importorskip("launch_ros")
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    spec = importlib.util.spec_from_file_location("multi_robot_launch", REPO / "launch" / "multi_robot.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    context = launch.LaunchContext()
    for e in description.entities:
        if isinstance(e, DeclareLaunchArgument):
            context.launch_configurations[e.name] = launch.utilities.perform_substitutions(context, e.default_value)
    context.launch_configurations["robots"] = "r1, r2,r3,r4"
    actions = next(e for e in description.entities if isinstance(e, OpaqueFunction)).execute(context)
    assert [a.node_executable for a in actions] == ["vpr_node"] * 4 + ["pose_graph_node"]
    assert [a._Node__node_namespace for a in actions[:4]] == ["/r1", "/r2", "/r3", "/r4"]  # noqa: SLF001
    layout = module.team_layout(module.robot_names("r1, r2,r3,r4"))
    assert layout[1] == {"namespace": "/r2", "robot_id": "r2", "peer_keyframe_topics": [
        "/r1/geoloc_vpr/keyframes", "/r3/geoloc_vpr/keyframes", "/r4/geoloc_vpr/keyframes"]}
    for bad in ("a", "a,a", "a,b-c", "a,1b"):
        with pytest.raises(ValueError):
            module.robot_names(bad)
    out = subprocess.run(["ros2", "launch", "--print-description", str(REPO / "launch" / "multi_robot.launch.py")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "OpaqueFunction" in out.stdout, out.stderr[-2000:]


# -- property-based: any message on any robot's topics ----------------------------------------------------------------
def test_team_callbacks_take_any_message_and_stay_consistent(rclpy_context):
    """The fuzz strategies of test_pose_graph_fuzz.py routed to the team node's per-robot callbacks, candidates
    naming any robot (known, unknown, itself, none) with any source: nothing raises, nothing fails, what is kept
    stays bounded and what is published finite, and plain odometry still makes poses afterwards."""
    from hypothesis import given
    from hypothesis import strategies as st
    from rclpy.parameter import Parameter
    import test_pose_graph_fuzz as fuzz

    from geoloc_ros.slam.pose_graph_node import PoseGraphNode

    node = PoseGraphNode(context=rclpy_context, parameter_overrides=[Parameter("robots", value=["a", "b"]),
                                                                     Parameter("max_pending", value=5)])
    team, graph = node.team, node.team.graph
    feeders = {r: fuzz.Feeder(lambda: node.get_clock().now().nanoseconds,
                              lambda r=r: graph.segments[r][-1].last[0] if graph.segments[r] else None) for r in "ab"}
    routed = st.tuples(st.sampled_from("ab"), st.one_of(fuzz.odometry(), fuzz.odometry(), fuzz.closures(),
                                                         fuzz.plausible_closure()),
                       st.lists(st.sampled_from(["a", "b", "zz", ""]), min_size=3, max_size=3),
                       st.lists(st.sampled_from([0, 1, 2, 2, 7]), min_size=3, max_size=3))

    @fuzz.FUZZ
    @given(batch=st.lists(routed, min_size=1, max_size=12))
    def check(batch):
        for robot, (kind, fields), owners, sources in batch:
            try:
                msg = feeders[robot].build(kind, fields)
            except (AssertionError, ValueError, TypeError):
                continue  # a value rclpy's own setters refuse never reaches the node
            if kind == "odom":
                team._on_odom(robot, msg)
                continue
            for c, owner, source in zip(msg.candidates, owners, sources):
                c.robot_id, c.source = owner, source
            team._on_closures(robot, msg)
        assert graph.pending <= 2 * 5 and graph.waiting_links <= 1000
        assert len(node.counts) < 60 and len(graph.counts) < 30
        assert not node.counts["odometry_failed"] and not node.counts["closures_failed"], node.last_error
        node.publish()
        node.publish_diagnostics()
        for r in "ab":
            assert all(np.all(np.isfinite(p.matrix())) for _, p, _ in graph.poses(r))
            for ps in team.path_message(r).poses:
                assert np.isfinite([ps.pose.position.x, ps.pose.position.y, ps.pose.orientation.w]).all()

    try:
        check()
        before = len(graph)
        for _ in range(3):
            team._on_odom("a", feeders["a"].build("odom", {"step": 2.0, "cov": [0.0] * 36}))
        assert len(graph) == before + 3
    finally:
        node.destroy_node()
