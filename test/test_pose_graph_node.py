"""geoloc_pose_graph on a real DDS graph: drifting odometry and loop closures published by a test node come
back corrected on ~/path (stamps = odometry stamps, frame map) with map -> odom on /tf; ~/save_graph writes a
g2o file; and fed by a real geoloc_vpr (session map, real Nordland frames, `loop_closures` remapped to its
output), the back end places each closure at the image stamp and keyframe stamp geoloc_vpr published."""

import math
import threading
import time

import gtsam
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import Odometry, Path  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from geoloc_msgs.msg import PlaceCandidate, PlaceRecognition  # noqa: E402
from geoloc_ros.datasets import read_image  # noqa: E402
from geoloc_ros.model import nordland, save_encoder  # noqa: E402
from geoloc_ros.model.testing import tiny_encoder  # noqa: E402
from geoloc_ros.replay import Harness, InProcessNode, image_message, stamp_ns, wait_for  # noqa: E402
from geoloc_ros.slam.pose_graph_node import PoseGraphNode  # noqa: E402

T0 = 1_700_000_000 * 10**9
SPEED, RATE = 2.0, 10  # m/s and odometry messages per second
LAP_S = 100  # one lap of a circle of 200 m


def truth_pose(t: float) -> gtsam.Pose3:
    r = SPEED * LAP_S / (2 * math.pi)
    a = SPEED * t / r
    return gtsam.Pose3(gtsam.Rot3.Yaw(a + math.pi / 2), [r * math.sin(a), r - r * math.cos(a), 0.0])


def drifting_odometry(t_end: float, bias=0.001, scale=1.02):
    """(stamp_ns, pose) at RATE Hz: truth with a 2 % scale error and a heading bias of `bias` rad per metre."""
    out, pose, prev = [], truth_pose(0.0), truth_pose(0.0)
    for k in range(int(t_end * RATE) + 1):
        t = k / RATE
        step = prev.between(truth_pose(t))
        prev = truth_pose(t)
        d = np.linalg.norm(step.translation())
        pose = pose.compose(gtsam.Pose3(gtsam.Rot3.Yaw(bias * d).compose(step.rotation()), step.translation() * scale))
        out.append((T0 + k * 10**9 // RATE, pose))
    return out


def odometry_message(stamp, pose):
    m = Odometry()
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp, 10**9)
    m.header.frame_id, m.child_frame_id = "odom", "base_link"
    p, q = m.pose.pose.position, m.pose.pose.orientation
    p.x, p.y, p.z = (float(v) for v in pose.translation())
    quat = pose.rotation().toQuaternion()
    q.x, q.y, q.z, q.w = quat.x(), quat.y(), quat.z(), quat.w()
    return m


class Backend:
    """A PoseGraphNode and a test node (publishers of odom/loop_closures, collectors of ~/path and /tf) in one
    context, spun by one executor thread."""

    def __init__(self, context, remap=(), parameters=None):
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter

        args = ["--ros-args"] + [a for r in remap for a in ("-r", r)] if remap else None
        overrides = [Parameter(k, value=v) for k, v in {"publish_period_s": 0.1, "diagnostics_period_s": 0.2,
                                                        **(parameters or {})}.items()]
        self.node = PoseGraphNode(context=context, cli_args=args, parameter_overrides=overrides)
        self.test = rclpy.create_node("pose_graph_test", context=context)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.odom_pub = self.test.create_publisher(Odometry, "/odom", reliable)
        self.lc_pub = self.test.create_publisher(PlaceRecognition, "/loop_closures", reliable)
        self.paths, self.tfs = [], []
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.test.create_subscription(Path, "/geoloc_pose_graph/path", self.paths.append, latched)
        self.test.create_subscription(TFMessage, "/tf", self.tfs.append, reliable)
        self.diagnostics = []
        self.test.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.diagnostics.extend(
            {kv.key: kv.value for kv in st.values} for st in m.status if st.name.startswith("geoloc_pose_graph")), 10)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.test)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def publish_odometry(self, odom, wait=True):
        for stamp, pose in odom:
            self.odom_pub.publish(odometry_message(stamp, pose))
            time.sleep(0.0005)
        if wait:  # until the back end has taken the last one
            assert wait_for(lambda: self.node.graph.history.last_stamp == odom[-1][0], 30)

    def close(self):
        self.executor.shutdown()
        self._thread.join(timeout=5)
        self.node.destroy_node()
        self.test.destroy_node()


def closure_message(query_ns, keyframe_ns, frame="camera"):
    """A session loop closure as geoloc_vpr publishes it: header = the query image's, keyframe_stamp = the
    session keyframe's image stamp, no relative pose (verification off)."""
    msg = PlaceRecognition(camera_topic="/camera/image_raw", camera_frame_id=frame)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(query_ns, 10**9)
    msg.header.frame_id = frame
    c = PlaceCandidate(map_name="session", map_id="session", source=PlaceCandidate.SOURCE_SESSION, keyframe_id=1,
                       similarity=0.9, relative_pose_kind=PlaceCandidate.RELATIVE_POSE_NONE, confidence=1.0)
    c.keyframe_stamp.sec, c.keyframe_stamp.nanosec = divmod(keyframe_ns, 10**9)
    msg.candidates = [c]
    return msg


def lap_gaps(stamps, estimated, odometry, seconds):
    """Mean distance between the lap-2 and the lap-1 pose node nearest each of `seconds` (+ LAP_S on lap 2),
    in the estimate and in raw odometry at the same nodes."""
    stamps = np.asarray(stamps)

    def nearest(t_s):
        return int(stamps[np.argmin(np.abs(stamps - (T0 + t_s * 10**9)))])

    pairs = [(nearest(t), nearest(t + LAP_S)) for t in seconds]
    return [float(np.mean([np.linalg.norm(poses[b] - poses[a]) for a, b in pairs])) for poses in (estimated, odometry)]


def test_closures_over_dds_correct_the_path_and_tf(rclpy_context, tmp_path):
    from std_srvs.srv import Trigger

    b = Backend(rclpy_context, parameters={"g2o_path": str(tmp_path / "graph.g2o")})
    try:
        assert wait_for(lambda: b.odom_pub.get_subscription_count() and b.lc_pub.get_subscription_count(), 20)
        odom = drifting_odometry(LAP_S + 60)
        b.publish_odometry(odom[: (LAP_S - 10) * RATE])
        b.publish_odometry(odom[(LAP_S - 10) * RATE:])
        for t in range(0, 60, 4):  # lap 2 sees lap 1's places
            b.lc_pub.publish(closure_message(T0 + (LAP_S + t) * 10**9, T0 + t * 10**9))
        b.lc_pub.publish(closure_message(T0 + (LAP_S + 30) * 10**9, T0 + 80 * 10**9))  # a wrong one, ~95 m off
        assert wait_for(lambda: b.node.graph.closures_accepted + b.node.graph.closures_rejected == 16, 30)
        assert b.node.graph.closures_rejected == 1, dict(b.node.counts)
        n = len(b.node.graph)
        assert wait_for(lambda: b.paths and len(b.paths[-1].poses) == n and b.node._changed is False, 10)
        path = b.paths[-1]
        assert path.header.frame_id == "map" and {p.header.frame_id for p in path.poses} == {"map"}
        odom_stamps = {s for s, _ in odom}
        stamps = [stamp_ns(p.header.stamp) for p in path.poses]
        assert set(stamps) <= odom_stamps and stamps == sorted(stamps) and stamps[0] == T0
        est = {s: np.array([p.pose.position.x, p.pose.position.y, p.pose.position.z])
               for s, p in zip(stamps, path.poses)}
        raw = {s: p.translation() for s, p in odom}
        est_gap, odom_gap = lap_gaps(stamps, est, raw, range(0, 60, 4))
        assert est_gap < 0.25 * odom_gap

        def diagnosed():
            d = b.diagnostics[-1] if b.diagnostics else {}
            return d.get("closures_accepted") == "15" and d.get("closures_rejected") == "1" and d
        assert wait_for(diagnosed, 10)
        d = diagnosed()
        assert d["poses"] == str(n) and float(d["last_optimise_ms"]) > 0 and d["closure_rejected"] == "1"

        assert wait_for(lambda: b.tfs, 10)
        t = b.tfs[-1].transforms[0]
        assert (t.header.frame_id, t.child_frame_id) == ("map", "odom")
        correction = b.node.graph.map_to_odom()
        assert t.transform.translation.x == pytest.approx(correction.translation()[0])
        assert np.linalg.norm(correction.translation()) > 1.0  # the closures moved map away from odom

        client = b.test.create_client(Trigger, "/geoloc_pose_graph/save_graph")
        assert client.wait_for_service(timeout_sec=10)
        fut = client.call_async(Trigger.Request())
        assert wait_for(fut.done, 20) and fut.result().success, fut.result().message
        _, values = gtsam.readG2o(str(tmp_path / "graph.g2o"), True)
        assert values.size() == n
        (tmp_path / "other.g2o").write_text("mine\n")
        b.node.p["g2o_path"] = str(tmp_path / "other.g2o")
        fut = client.call_async(Trigger.Request())
        assert wait_for(fut.done, 20) and not fut.result().success and "refusing" in fut.result().message
        assert (tmp_path / "other.g2o").read_text() == "mine\n"
    finally:
        b.close()


@pytest.fixture(scope="module")
def frames(shared_data, tmp_path_factory):
    enc = tiny_encoder()
    recs = nordland.split(shared_data / "nordland64", frames=(19210, 19800), seasons=("summer",))
    images = [read_image(r.path) for r in recs]
    images = [im for im in images if not nordland.is_blank(im)][:12]
    return images, str(save_encoder(enc, tmp_path_factory.mktemp("enc") / "encoder"))


def test_vpr_node_closures_reach_the_pose_graph_at_their_stamps(frames, rclpy_context):
    """geoloc_vpr (session map, odometry) -> loop_closures -> geoloc_pose_graph, all over DDS."""
    images, encoder = frames
    vpr = InProcessNode(rclpy_context, {"map_path": [""], "encoder_path": encoder, "session_map": True,
                                        "odom_topic": "/odom", "session_min_spacing_m": 1.0,
                                        "session_min_interval_s": 0.5, "consistency_k": 1, "device": "cpu",
                                        "diagnostics_period_s": 0.2,
                                        # a random encoder's margins are tiny: publish every closure (the
                                        # operating point is test_loop_closures.py's)
                                        "loop_closure_min_confidence": 0.0})
    h = Harness(rclpy_context)
    b = Backend(rclpy_context, remap=["loop_closures:=/geoloc_vpr/loop_closures"])
    try:
        assert vpr.active, vpr.node.last_error
        assert h.wait_for_subscriber() and wait_for(lambda: b.odom_pub.get_subscription_count() >= 2, 20)
        odom = drifting_odometry(LAP_S + len(images) + 1)
        image_at = {T0 + (lap * LAP_S + i) * 10**9: im for lap in (0, 1) for i, im in enumerate(images)}
        sent = 0
        for stamp, pose in odom:
            b.odom_pub.publish(odometry_message(stamp, pose))
            time.sleep(0.0005)
            if stamp in image_at:
                time.sleep(0.05)  # geoloc_vpr tags the session keyframe with the odometry it holds
                h.publish(image_message(image_at[stamp], stamp, frame_id="front_camera_optical"))
                sent += 1
                h.wait_quiet(expect=sent, timeout=20)
        closures = h.data.results["loop_closures"]
        lap2 = {s: m for s, m in closures.items() if s >= T0 + LAP_S * 10**9}
        assert len(lap2) >= len(images) // 2
        graph = b.node.graph
        assert wait_for(lambda: graph.closures_accepted + graph.closures_rejected >= len(lap2), 30)
        assert graph.closures_accepted >= len(lap2) // 2
        node_of = {s: i for i, s in enumerate(graph.node_stamps)}
        for s, m in lap2.items():
            assert m.header.frame_id == "front_camera_optical"  # the image's frame, copied
            assert m.camera_frame_id in ("", "front_camera_optical")  # "": a geoloc_vpr before issue 18 item 4
            kf = m.candidates[0]
            assert kf.map_name == "session" and stamp_ns(kf.keyframe_stamp) == s - LAP_S * 10**9
        for e in (e for e in graph.edges if e.kind == "closure"):  # keyframe end -> query end, nodes at image stamps
            kf_stamp, q_stamp = graph.node_stamps[gtsam.Symbol(e.key_from).index()], \
                graph.node_stamps[gtsam.Symbol(e.key_to).index()]
            assert q_stamp - kf_stamp == pytest.approx(LAP_S * 10**9, abs=10**9 // RATE * 5)
            assert node_of[q_stamp] > node_of[kf_stamp]
    finally:
        b.close()
        h.close()
        vpr.close()


def test_gps_fixes_and_prior_map_candidates_share_the_map_frame(rclpy_context):
    """The node's conversions, called directly on a real rclpy node: fixes are projected into the map frame
    whose origin a geotagged prior-map candidate defines, and place the trajectory there."""
    from sensor_msgs.msg import NavSatFix

    from geoloc_ros.geodesy import MapFrame

    node = PoseGraphNode(context=rclpy_context, parameter_overrides=[rclpy.parameter.Parameter("use_fix", value=True)])
    try:
        frame = MapFrame.at(66.0, 14.0)  # the prior map's frame, unknown to the node
        odom = drifting_odometry(40.0)
        for stamp, pose in odom[:5]:
            node._on_odom(odometry_message(stamp, pose))
        c = PlaceCandidate(map_name="nordland_summer", map_id="/maps/nordland_summer", keyframe_id=7,
                           source=PlaceCandidate.SOURCE_PRIOR_MAP, has_position=True)
        c.latitude, c.longitude, c.altitude = frame.to_wgs84(1000.0, 2000.0, 0.0)
        c.pose.position.x, c.pose.position.y = 1000.0, 2000.0
        msg = closure_message(odom[4][0], 0)
        msg.candidates = [c]
        node._on_closures(msg)
        assert node._origin.to_local(c.latitude, c.longitude)[:2] == pytest.approx((1000.0, 2000.0), abs=1e-3)
        for stamp, pose in odom[5:]:
            node._on_odom(odometry_message(stamp, pose))
            if (stamp - T0) % (2 * 10**9) == 0:  # a fix every 2 s where the robot really is, 1000 m / 2000 m off
                x, y, _ = truth_pose((stamp - T0) / 1e9).translation()
                fix = NavSatFix(status=NavSatFix().status)
                fix.header.stamp.sec, fix.header.stamp.nanosec = divmod(stamp, 10**9)
                fix.latitude, fix.longitude, fix.altitude = frame.to_wgs84(1000.0 + x, 2000.0 + y, 0.0)
                node._on_fix(fix)
        assert node.graph.aligned and node.counts["gps_accepted"] >= 10
        last = node.graph.poses()[-1][1].translation()
        want = truth_pose(40.0).translation() + [1000.0, 2000.0, 0.0]
        assert np.linalg.norm(last[:2] - want[:2]) < 5.0
    finally:
        node.destroy_node()
