"""geoloc_pose_graph: the reference SLAM back end for geoloc_vpr's loop closures (a thin ROS shell around
geoloc_ros.slam.graph.PoseGraph).

Subscribes `odom` (nav_msgs/Odometry), `loop_closures` (geoloc_msgs/PlaceRecognition) and optionally `fix`
(sensor_msgs/NavSatFix) and `geopose` (geographic_msgs/GeoPoseWithCovarianceStamped) -- relative names, remap
them. Publishes ~/path (nav_msgs/Path), map -> odom on /tf, /diagnostics; serves ~/save_graph (g2o file).
docs/slam.md describes the factors, the parameters and the output. No message kills it: every callback refuses
what is not a valid measurement and counts what it refused or what GTSAM failed on, and the graph stays as it
was before a refused message.
"""

from __future__ import annotations

from collections import Counter
import math
import time

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
from geoloc_ros.slam.g2o import G2oError, check_path, write_g2o
from geoloc_ros.slam.graph import GraphError, PoseGraph
from geoloc_ros.slam.noise import checked_covariance, checked_position, is_unset, pose_from_msg
from geoloc_ros.stamps import NS_PER_S, set_stamp, stamp_ns

NODE_NAME = "geoloc_pose_graph"
# Loop closures are results that must not be lost (geoloc_vpr publishes them reliable, depth 10).
CLOSURE_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
# The path is a state: reliable, and kept for late joiners such as RViz.
PATH_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
# Odometry best effort (it matches reliable and best-effort publishers alike, and poses are absolute, so a lost
# message costs nothing) with a deep queue, so a burst at 50-100 Hz is not dropped while iSAM2 runs a closure.
ODOM_QOS = QoSProfile(depth=200, reliability=ReliabilityPolicy.BEST_EFFORT)
# ~/path is rebuilt no more often than keeps it under a tenth of the node's time (a 50,000-pose path costs
# seconds to build and serialise in Python; the factor makes the next one wait 10x the last one's cost).
PATH_COST_FACTOR = 10.0
# A fix altitude beyond this (m) is taken as unknown, like NaN: 0 (GPS receivers write such values when unsure).
MAX_ALTITUDE_M = 1e5


class Refused(ValueError):
    """A message that is not a valid measurement (the reason is the text)."""


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
        self.team = None  # the team side, when `robots` names several robots (docs/multi_robot.md)
        robots = params.team_topics(self.p)
        if robots:
            from geoloc_ros.slam.team_node import TeamTopics

            self.team = TeamTopics(self, robots)
        else:
            self.create_subscription(Odometry, "odom", self._on_odom, ODOM_QOS)
            self.create_subscription(PlaceRecognition, "loop_closures", self._on_closures, CLOSURE_QOS)
        if self.team is not None and (self.p["use_fix"] or self.p["use_geopose"]):
            self.get_logger().warning("use_fix and use_geopose are ignored with robots set: the team graph holds "
                                      "odometry and loop closures only")
        elif self.p["use_fix"]:
            self.create_subscription(NavSatFix, "fix", self._on_fix, qos_profile_sensor_data)
        if self.p["use_geopose"] and self.team is None:
            self.create_subscription(GeoPoseWithCovarianceStamped, "geopose", self._on_geopose, CLOSURE_QOS)
        self.create_service(Trigger, "~/save_graph", self._on_save_graph)
        self.create_timer(self.p["publish_period_s"], lambda: self._guarded("publish", self.publish))
        self.create_timer(self.p["diagnostics_period_s"],
                          lambda: self._guarded("diagnostics", self.publish_diagnostics))
        self._path_due = 0.0  # steady time before which ~/path is not rebuilt (PATH_COST_FACTOR)
        self._path_cache = (np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 4)), [])
        self._odom_ms = []  # odometry callback times since the last /diagnostics
        self.last_error = ""
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

    def _origin_parameter(self) -> MapFrame | None:
        o = [float(v) for v in self.p["map_origin"]]
        if len(o) < 2:
            return None
        return MapFrame.at(o[0], o[1], o[2] if len(o) > 2 else 0.0)

    # -- parameters -------------------------------------------------------------------------------------------
    def _on_set_parameters(self, changed):
        """A change is accepted only for the parameters the running node applies (params.LIVE), with a valid
        value; every other one is refused with the reason, so `ros2 param set` never says "successful" for a
        value that is then ignored."""
        from rcl_interfaces.msg import SetParametersResult

        for p in changed:
            if p.name not in params.LIVE:
                return SetParametersResult(successful=False, reason=(
                    f"{p.name} is read when the node starts; restart it to change this (changeable while running: "
                    f"{', '.join(params.LIVE)})"))
            if p.name == "g2o_path":
                try:
                    check_path(p.value)
                except G2oError as e:
                    return SetParametersResult(successful=False, reason=f"g2o_path: {e}")
        return SetParametersResult(successful=True)

    def _apply_parameters(self, changed):
        for p in changed:
            self.p[p.name] = p.value
            if p.name in params.LIVE_GRAPH_SETTINGS:
                setattr(self.graph.settings, p.name, p.value)

    # -- inputs -----------------------------------------------------------------------------------------------
    def _guarded(self, what: str, callback, *args):
        """Run a callback; a refusal (ValueError: not a valid measurement) or a failure (anything GTSAM or numpy
        raise) is counted and logged, never raised into the executor, which would end the process."""
        try:
            return callback(*args)
        except ValueError as e:
            self.counts[f"{what}_refused"] += 1
            self._note(f"{what} refused: {e}")
        except Exception as e:  # noqa: BLE001 - a message must not kill the node; the graph commits nothing on failure
            self.counts[f"{what}_failed"] += 1
            self._note(f"{what} failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
        return None

    def _note(self, text: str):
        self.last_error = text
        self.get_logger().warning(text, throttle_duration_sec=5.0)

    def _checked_stamp(self, stamp, what: str) -> int:
        """The stamp in nanoseconds, unless it lies more than max_stamp_ahead_s ahead of the node's clock (a clock
        at zero -- sim time before /clock -- checks nothing) or is not a valid time."""
        if not 0 <= stamp.nanosec < NS_PER_S:
            raise Refused(f"{what} stamp nanosec {stamp.nanosec} is not below 1e9")
        ns = stamp_ns(stamp)
        now = self.get_clock().now().nanoseconds
        ahead = (ns - now) / NS_PER_S
        if now > 0 and ahead > self.p["max_stamp_ahead_s"]:
            self.counts[f"{what}_future_stamp"] += 1
            raise Refused(f"{what} stamp is {ahead:.3g} s ahead of this node's clock "
                          f"(max_stamp_ahead_s {self.p['max_stamp_ahead_s']:g})")
        return ns

    def _on_odom(self, msg: Odometry):
        start = time.perf_counter()
        self.counts["odometry_received"] += 1
        self._guarded("odometry", self._odometry, msg)
        self._odom_ms.append((time.perf_counter() - start) * 1e3)

    def _odometry(self, msg: Odometry):
        stamp = self._checked_stamp(msg.header.stamp, "odometry")
        made = self.graph.add_odometry(stamp, pose_from_msg(msg.pose.pose), msg.pose.covariance)
        if not self._odom_frame:
            self._odom_frame = msg.header.frame_id or "odom"
        self._changed = self._changed or made is not None

    def _on_closures(self, msg: PlaceRecognition):
        self._guarded("closures", self._closures, msg)

    def _closures(self, msg: PlaceRecognition):
        query = self._checked_stamp(msg.header.stamp, "closure")
        for c in msg.candidates[: self.p["closures_per_message"]]:
            if not c.confidence >= self.p["min_confidence"]:  # NaN is below every threshold
                self.counts["below_confidence"] += 1
                continue
            try:
                verdict = self._closure(query, c)
            except ValueError as e:
                verdict = "refused"
                self._note(f"candidate {c.map_id}/{c.keyframe_id} refused: {e}")
            except GraphError as e:
                verdict = "failed"
                self._note(f"candidate {c.map_id}/{c.keyframe_id} failed: {e}")
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
        checked_position([p.x, p.y, p.z], "keyframe position")
        geotagged = _is_wgs84(c.latitude, c.longitude)
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
        if not _is_wgs84(lat, lon):
            raise Refused(f"({lat}, {lon}) is not a WGS84 latitude and longitude")
        alt = alt if math.isfinite(alt) and abs(alt) < MAX_ALTITUDE_M else 0.0
        stamp = self._checked_stamp(stamp, "gps")
        if cov3 is None or is_unset(cov3):
            cov3 = np.diag([self.p["gps_sigma_m"] ** 2] * 3)
        checked_covariance(cov3, 3, "position")
        if self._origin is None:
            self._origin = MapFrame.at(lat, lon, alt)
        position = self._origin.to_local(lat, lon, alt)
        self.counts[f"gps_{self.graph.add_absolute(stamp, position, cov3)}"] += 1
        self._changed = True

    def _on_fix(self, msg: NavSatFix):
        self._guarded("gps", self._fix, msg)

    def _fix(self, msg: NavSatFix):
        if msg.status.status == NavSatStatus.STATUS_NO_FIX:
            self.counts["gps_no_fix"] += 1
            return
        cov = None if msg.position_covariance_type == NavSatFix.COVARIANCE_TYPE_UNKNOWN \
            else np.asarray(msg.position_covariance, float).reshape(3, 3)
        self._gps(msg.header.stamp, msg.latitude, msg.longitude, msg.altitude, cov)

    def _on_geopose(self, msg: GeoPoseWithCovarianceStamped):
        self._guarded("gps", self._geopose, msg)

    def _geopose(self, msg: GeoPoseWithCovarianceStamped):
        pos = msg.pose.pose.position
        cov = np.asarray(msg.pose.covariance, float).reshape(6, 6)[:3, :3]
        self._gps(msg.header.stamp, pos.latitude, pos.longitude, pos.altitude, cov)

    # -- outputs ----------------------------------------------------------------------------------------------
    def path_message(self) -> Path:
        """Every pose node as nav_msgs/Path. The PoseStamped of the last path are reused where stamp and pose are
        unchanged (odometry alone only adds poses at the end), since building them is the costly part."""
        stamps, xyz, quat = self.graph.pose_arrays()
        old_stamps, old_xyz, old_quat, messages = self._path_cache
        keep = min(len(messages), len(stamps))
        changed = np.flatnonzero((stamps[:keep] != old_stamps[:keep]) | np.any(xyz[:keep] != old_xyz[:keep], axis=1)
                                 | np.any(quat[:keep] != old_quat[:keep], axis=1))
        messages = messages[:keep]
        for i in changed:
            _fill_pose(messages[i], int(stamps[i]), xyz[i], quat[i])
        for i in range(keep, len(stamps)):
            ps = PoseStamped()
            ps.header.frame_id = self.p["map_frame"]
            messages.append(_fill_pose(ps, int(stamps[i]), xyz[i], quat[i]))
        self._path_cache = (stamps, xyz, quat, messages)
        path = Path()
        path.header.frame_id = self.p["map_frame"]
        if len(stamps):
            path.header.stamp = _time(int(stamps[-1]))
        path.poses = list(messages)
        return path

    def publish(self):
        if self.team is not None:
            return self.team.publish()
        if not len(self.graph):
            return
        if self._changed and time.monotonic() >= self._path_due:
            start = time.perf_counter()
            self._changed = False
            self._path_pub.publish(self.path_message())
            cost = time.perf_counter() - start
            self.counts["path_build_ms"] = round(cost * 1e3, 1)
            self._path_due = time.monotonic() + PATH_COST_FACTOR * cost
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
            response.message = write_g2o(self.team.graph if self.team else self.graph, self.p["g2o_path"])
            response.success = True
        except Exception as e:  # noqa: BLE001 - G2oError, OSError, GTSAM's RuntimeError: an answer, never an exit
            response.success, response.message = False, f"not saved: {e}"
        return response

    def publish_diagnostics(self):
        g = self.team.graph if self.team else self.graph
        st = DiagnosticStatus(name=f"{self.get_name()}: pose graph", hardware_id="gtsam")
        if self.team is not None:  # named with its namespace: a team's back end is told apart from robots' own
            st.name = f"{self.get_fully_qualified_name()}: pose graph"
            st.level, st.message = (DiagnosticStatus.OK, f"{len(g)} poses of {len(g.robots)} robots") if len(g) \
                else (DiagnosticStatus.WARN, "no odometry received yet")
            self._publish_status(st, {**self.team.diagnostic_values(), **dict(self.counts),
                                      "last_error": self.last_error or g.last_error})
            return
        if not len(g):
            st.level, st.message = DiagnosticStatus.WARN, "no odometry received yet"
        else:
            st.level, st.message = DiagnosticStatus.OK, f"{len(g)} poses, {g.closures} loop closures"
        timings, self._odom_ms = self._odom_ms, []
        values = {"poses": len(g), "closures_accepted": g.closures_accepted, "closures_rejected": g.closures_rejected,
                  "loop_closure_factors": g.closures, "absolute_factors": g.absolute_factors,
                  "absolute_rejected": g.absolute_rejected, "pose_prior_factors": g.pose_priors,
                  "aligned_to_map": g.aligned, "last_optimise_ms": g.last_optimise_ms, "pending": g.pending,
                  "odometry_ms_mean": float(np.mean(timings)) if timings else 0.0,
                  "odometry_ms_max": float(np.max(timings)) if timings else 0.0,
                  **dict(g.counts), **dict(self.counts),
                  "last_error": self.last_error or g.last_error}
        self._publish_status(st, values)

    def _publish_status(self, st: DiagnosticStatus, values: dict):
        st.values = [KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(arr)


def _is_wgs84(lat: float, lon: float) -> bool:
    return math.isfinite(lat) and math.isfinite(lon) and -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0


def _time(ns: int):
    from builtin_interfaces.msg import Time

    return set_stamp(Time(), ns)


def _fill_pose(ps: PoseStamped, stamp: int, xyz, quat_xyzw) -> PoseStamped:
    set_stamp(ps.header.stamp, stamp)
    p, o = ps.pose.position, ps.pose.orientation
    p.x, p.y, p.z = float(xyz[0]), float(xyz[1]), float(xyz[2])
    o.x, o.y, o.z, o.w = (float(v) for v in quat_xyzw)
    return ps


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
