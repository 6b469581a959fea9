"""geoloc_pose_graph: the reference SLAM back end for geoloc_vpr's loop closures (a thin ROS shell around
geoloc_ros.slam.graph.PoseGraph).

Subscribes `odom` (nav_msgs/Odometry), `loop_closures` (geoloc_msgs/PlaceRecognition) and optionally `fix`
(sensor_msgs/NavSatFix) and `geopose` (geographic_msgs/GeoPoseWithCovarianceStamped) -- relative names, remap
them. Publishes ~/path (nav_msgs/Path), map -> odom on /tf, /diagnostics; serves ~/save_graph (g2o file).
docs/slam.md describes the factors, the parameters and the output.
"""

from __future__ import annotations

from collections import Counter
import math

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geographic_msgs.msg import GeoPoseWithCovarianceStamped
from geometry_msgs.msg import PoseStamped, TransformStamped
import gtsam
from nav_msgs.msg import Odometry, Path
import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import NavSatFix, NavSatStatus
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

from geoloc_msgs.msg import PlaceCandidate, PlaceRecognition
from geoloc_ros.geodesy import MapFrame, to_utm
from geoloc_ros.slam import params
from geoloc_ros.slam.g2o import G2oError, write_g2o
from geoloc_ros.slam.graph import PoseGraph
from geoloc_ros.slam.noise import is_unset, pose_from_msg
from geoloc_ros.stamps import set_stamp, stamp_ns

NODE_NAME = "geoloc_pose_graph"
# Loop closures are results that must not be lost (geoloc_vpr publishes them reliable, depth 10).
CLOSURE_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
# The path is a state: reliable, and kept for late joiners such as RViz.
PATH_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
# Odometry best effort (it matches reliable and best-effort publishers alike, and poses are absolute, so a lost
# message costs nothing) with a deep queue, so a burst at 50-100 Hz is not dropped while iSAM2 runs a closure.
ODOM_QOS = QoSProfile(depth=200, reliability=ReliabilityPolicy.BEST_EFFORT)


class PoseGraphNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        params.declare(self)
        self.p = params.read(self)
        self.graph = PoseGraph(params.graph_settings(self.p))
        self.counts = Counter()  # verdicts and refusals, for /diagnostics
        self._origin = self._origin_parameter()
        self._odom_frame = self.p["odom_frame"]
        self._changed = False
        self._path_pub = self.create_publisher(Path, "~/path", PATH_QOS)
        self._tf_pub = self.create_publisher(TFMessage, "/tf", TF_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(Odometry, "odom", self._on_odom, ODOM_QOS)
        self.create_subscription(PlaceRecognition, "loop_closures", self._on_closures, CLOSURE_QOS)
        if self.p["use_fix"]:
            self.create_subscription(NavSatFix, "fix", self._on_fix, qos_profile_sensor_data)
        if self.p["use_geopose"]:
            self.create_subscription(GeoPoseWithCovarianceStamped, "geopose", self._on_geopose, CLOSURE_QOS)
        self.create_service(Trigger, "~/save_graph", self._on_save_graph)
        self.create_timer(self.p["publish_period_s"], self.publish)
        self.create_timer(self.p["diagnostics_period_s"], self.publish_diagnostics)

    def _origin_parameter(self) -> MapFrame | None:
        o = [float(v) for v in self.p["map_origin"]]
        if len(o) < 2:
            return None
        return MapFrame.at(o[0], o[1], o[2] if len(o) > 2 else 0.0)

    # -- inputs -----------------------------------------------------------------------------------------------
    def _on_odom(self, msg: Odometry):
        try:
            pose = pose_from_msg(msg.pose.pose)
            made = self.graph.add_odometry(stamp_ns(msg.header.stamp), pose, msg.pose.covariance)
        except ValueError as e:
            self.counts["odometry_refused"] += 1
            self.get_logger().warning(f"odometry refused: {e}", throttle_duration_sec=5.0)
            return
        if not self._odom_frame:
            self._odom_frame = msg.header.frame_id or "odom"
        self._changed = self._changed or made is not None

    def _on_closures(self, msg: PlaceRecognition):
        query = stamp_ns(msg.header.stamp)
        for c in msg.candidates[: self.p["closures_per_message"]]:
            if c.confidence < self.p["min_confidence"]:
                self.counts["below_confidence"] += 1
                continue
            try:
                verdict = self._closure(query, c)
            except ValueError as e:
                verdict = "refused"
                self.get_logger().warning(f"candidate {c.map_id}/{c.keyframe_id} refused: {e}",
                                       throttle_duration_sec=5.0)
            self.counts[f"closure_{verdict}"] += 1
            self._changed = True

    def _closure(self, query_ns: int, c: PlaceCandidate) -> str:
        if c.source == PlaceCandidate.SOURCE_SESSION:
            kind = int(c.relative_pose_kind)
            rel = gtsam.Pose3() if kind == PlaceCandidate.RELATIVE_POSE_NONE else pose_from_msg(c.relative_pose.pose)
            return self.graph.add_session_closure(query_ns, stamp_ns(c.keyframe_stamp), rel,
                                                  c.relative_pose.covariance, kind)
        if c.source != PlaceCandidate.SOURCE_PRIOR_MAP:
            return "unsupported_source"  # a peer robot's keyframe: this back end keeps one robot's graph
        if not c.has_position:
            return "no_position"
        p = c.pose.position
        geotagged = math.isfinite(c.latitude) and math.isfinite(c.longitude)
        if self._origin is None and geotagged:  # geoloc_vpr's map frame: its origin is lat/lon minus x/y
            east, north, zone = to_utm(c.latitude, c.longitude)
            alt = c.altitude if math.isfinite(c.altitude) else p.z
            self._origin = MapFrame(zone, float(east - p.x), float(north - p.y), float(alt - p.z))
        if int(c.relative_pose_kind) == PlaceCandidate.RELATIVE_POSE_METRIC:  # a full 6-DoF prior
            self.counts["prior_map_metric"] += 1
            return self.graph.add_prior_map_pose(query_ns, pose_from_msg(c.pose), pose_from_msg(c.relative_pose.pose),
                                                 c.relative_pose.covariance)
        return self.graph.add_absolute(query_ns, [p.x, p.y, p.z], self.graph.prior_map_covariance())

    def _gps(self, stamp, lat, lon, alt, cov3):
        if not (math.isfinite(lat) and math.isfinite(lon)):
            self.counts["gps_refused"] += 1
            return
        alt = alt if math.isfinite(alt) else 0.0
        if self._origin is None:
            self._origin = MapFrame.at(lat, lon, alt)
        if cov3 is None or is_unset(cov3):
            cov3 = np.diag([self.p["gps_sigma_m"] ** 2] * 3)
        position = self._origin.to_local(lat, lon, alt)
        self.counts[f"gps_{self.graph.add_absolute(stamp_ns(stamp), position, cov3)}"] += 1
        self._changed = True

    def _on_fix(self, msg: NavSatFix):
        if msg.status.status == NavSatStatus.STATUS_NO_FIX:
            self.counts["gps_no_fix"] += 1
            return
        cov = None if msg.position_covariance_type == NavSatFix.COVARIANCE_TYPE_UNKNOWN \
            else np.asarray(msg.position_covariance, float).reshape(3, 3)
        self._gps(msg.header.stamp, msg.latitude, msg.longitude, msg.altitude, cov)

    def _on_geopose(self, msg: GeoPoseWithCovarianceStamped):
        pos = msg.pose.pose.position
        cov = np.asarray(msg.pose.covariance, float).reshape(6, 6)[:3, :3]
        self._gps(msg.header.stamp, pos.latitude, pos.longitude, pos.altitude, cov)

    # -- outputs ----------------------------------------------------------------------------------------------
    def path_message(self) -> Path:
        path = Path()
        path.header.frame_id = self.p["map_frame"]
        poses = self.graph.poses()
        if poses:
            path.header.stamp = _time(poses[-1][0])
        for stamp, pose in poses:
            ps = PoseStamped()
            ps.header.stamp, ps.header.frame_id = _time(stamp), self.p["map_frame"]
            _fill_pose(ps.pose, pose)
            path.poses.append(ps)
        return path

    def publish(self):
        if not len(self.graph):
            return
        if self._changed:
            self._path_pub.publish(self.path_message())
            self._changed = False
        if self.p["publish_tf"]:
            t = TransformStamped()
            t.header.stamp, t.header.frame_id = _time(self.graph.node_stamps[-1]), self.p["map_frame"]
            t.child_frame_id = self._odom_frame or "odom"
            m = self.graph.map_to_odom()
            t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = \
                (float(v) for v in m.translation())
            q = m.rotation().toQuaternion()
            r = t.transform.rotation
            r.x, r.y, r.z, r.w = q.x(), q.y(), q.z(), q.w()
            self._tf_pub.publish(TFMessage(transforms=[t]))

    def _on_save_graph(self, request, response):
        try:
            response.message = write_g2o(self.graph, self.p["g2o_path"])
            response.success = True
        except (G2oError, OSError, RuntimeError) as e:
            response.success, response.message = False, f"not saved: {e}"
        return response

    def publish_diagnostics(self):
        g = self.graph
        st = DiagnosticStatus(name=f"{self.get_name()}: pose graph", hardware_id="gtsam")
        if not len(g):
            st.level, st.message = DiagnosticStatus.WARN, "no odometry received yet"
        else:
            st.level, st.message = DiagnosticStatus.OK, f"{len(g)} poses, {g.closures} loop closures"
        values = {"poses": len(g), "closures_accepted": g.closures_accepted, "closures_rejected": g.closures_rejected,
                  "loop_closure_factors": g.closures, "absolute_factors": g.absolute_factors,
                  "absolute_rejected": g.absolute_rejected, "pose_prior_factors": g.pose_priors,
                  "aligned_to_map": g.aligned, "last_optimise_ms": g.last_optimise_ms, **dict(self.counts)}
        st.values = [KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(arr)


def _time(ns: int):
    from builtin_interfaces.msg import Time

    return set_stamp(Time(), ns)


def _fill_pose(msg, pose: gtsam.Pose3):
    msg.position.x, msg.position.y, msg.position.z = (float(v) for v in pose.translation())
    q = pose.rotation().toQuaternion()
    msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w = q.x(), q.y(), q.z(), q.w()


def main(args=None):
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = PoseGraphNode()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
