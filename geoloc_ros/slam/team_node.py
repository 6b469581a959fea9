"""The team side of geoloc_pose_graph (parameter `robots` set): per robot an odometry and a loop-closure subscription
into one geoloc_ros.slam.team.TeamGraph, `~/<robot>/path` and map -> <robot>/odom out. The node's guards apply:
every callback runs in PoseGraphNode._guarded, stamps pass _checked_stamp. docs/multi_robot.md."""

from __future__ import annotations

from functools import partial

from geometry_msgs.msg import PoseStamped, TransformStamped
import gtsam
from nav_msgs.msg import Odometry, Path

from geoloc_msgs.msg import PlaceCandidate, PlaceRecognition
from geoloc_ros.slam.graph import GraphError
from geoloc_ros.slam.noise import pose_from_msg
from geoloc_ros.slam.team import TeamGraph
from geoloc_ros.stamps import set_stamp


class TeamTopics:
    def __init__(self, node, robots: list[tuple[str, str, str]]):
        from geoloc_ros.slam.pose_graph_node import CLOSURE_QOS, ODOM_QOS, PATH_QOS

        self.node = node
        # the node's settings object, so `ros2 param set` of a live graph setting reaches the team graph too
        self.graph = TeamGraph([r for r, _, _ in robots], node.graph.settings)
        self.frames: dict[str, str] = {}  # robot -> its odometry frame on /tf
        self.changed: set[str] = set()
        self._paths = {}
        for robot, odom_topic, closure_topic in robots:
            node.create_subscription(Odometry, odom_topic, partial(self._on_odom, robot), ODOM_QOS)
            node.create_subscription(PlaceRecognition, closure_topic, partial(self._on_closures, robot), CLOSURE_QOS)
            self._paths[robot] = node.create_publisher(Path, f"~/{robot}/path", PATH_QOS)

    # -- inputs -----------------------------------------------------------------------------------------------
    def _on_odom(self, robot: str, msg: Odometry):
        self.node.counts["odometry_received"] += 1
        self.node._guarded("odometry", self._odometry, robot, msg)

    def _odometry(self, robot: str, msg: Odometry):
        stamp = self.node._checked_stamp(msg.header.stamp, "odometry")
        made = self.graph.add_odometry(robot, stamp, pose_from_msg(msg.pose.pose), msg.pose.covariance)
        frame = msg.header.frame_id or "odom"
        self.frames[robot] = frame if frame.startswith(f"{robot}/") else f"{robot}/{frame.lstrip('/')}"
        if made is not None:
            self.changed.add(robot)

    def _on_closures(self, robot: str, msg: PlaceRecognition):
        self.node._guarded("closures", self._closures, robot, msg)

    def _closures(self, robot: str, msg: PlaceRecognition):
        node = self.node
        query = node._checked_stamp(msg.header.stamp, "closure")
        for c in msg.candidates[: node.p["closures_per_message"]]:
            if not c.confidence >= node.p["min_confidence"]:  # NaN is below every threshold
                node.counts["below_confidence"] += 1
                continue
            what = "peer" if c.source == PlaceCandidate.SOURCE_PEER else "closure"
            try:
                verdict = self._closure(robot, query, c)
            except ValueError as e:
                verdict = "refused"
                node._note(f"{robot}: candidate {c.robot_id or c.map_id}/{c.keyframe_id} refused: {e}")
            except GraphError as e:
                verdict = "failed"
                node._note(f"{robot}: candidate {c.robot_id or c.map_id}/{c.keyframe_id} failed: {e}")
            node.counts[f"{what}_{verdict}"] += 1
            self.changed.update(self.graph.robots)  # a closure (or an anchoring) may move every robot

    def _closure(self, robot: str, query_ns: int, c: PlaceCandidate) -> str:
        if c.source == PlaceCandidate.SOURCE_SESSION:
            owner = robot
        elif c.source == PlaceCandidate.SOURCE_PEER:
            owner = c.robot_id
            if owner == robot:
                self.node.counts["peer_names_itself"] += 1
                raise ValueError(f"a peer keyframe of robot {owner!r} in its own results")
            if owner not in self.graph.segments:
                self.node.counts["peer_unknown_robot"] += 1
                raise ValueError(f"peer robot {owner!r} is not one of robots ({', '.join(self.graph.robots)})")
        else:
            return "unsupported_source"  # prior-map positions: the team graph holds relative factors only
        keyframe_ns = self.node._checked_stamp(c.keyframe_stamp, "keyframe")
        kind = int(c.relative_pose_kind)
        rel = gtsam.Pose3() if kind == PlaceCandidate.RELATIVE_POSE_NONE else pose_from_msg(c.relative_pose.pose)
        return self.graph.add_closure(robot, query_ns, owner, keyframe_ns, rel, c.relative_pose.covariance, kind)

    # -- outputs ----------------------------------------------------------------------------------------------
    def path_message(self, robot: str) -> Path:
        """The robot's pose nodes in the map frame (a floating segment's are not: they join once anchored)."""
        map_frame = self.node.p["map_frame"]
        path = Path()
        path.header.frame_id = map_frame
        for stamp, pose, anchored in self.graph.poses(robot):
            if not anchored:
                continue
            ps = PoseStamped()
            ps.header.frame_id = map_frame
            set_stamp(ps.header.stamp, stamp)
            _fill(ps.pose.position, ps.pose.orientation, pose)
            path.poses.append(ps)
        if path.poses:
            path.header.stamp = path.poses[-1].header.stamp
        return path

    def publish(self):
        changed, self.changed = self.changed, set()
        for robot in changed:
            self._paths[robot].publish(self.path_message(robot))
        if not self.node.p["publish_tf"]:
            return
        transforms = []
        for robot in self.graph.robots:
            m = self.graph.map_to_odom(robot)
            if m is None:  # no odometry yet, or floating: its odom frame is not in the map frame
                continue
            seg = self.graph.segments[robot][-1]
            t = TransformStamped()
            set_stamp(t.header.stamp, seg.node_stamps[-1])
            t.header.frame_id, t.child_frame_id = self.node.p["map_frame"], self.frames.get(robot, f"{robot}/odom")
            _fill(t.transform.translation, t.transform.rotation, m)
            transforms.append(t)
        if transforms:
            from tf2_msgs.msg import TFMessage

            self.node._tf_pub.publish(TFMessage(transforms=transforms))

    def diagnostic_values(self) -> dict:
        g = self.graph
        values = {"poses": len(g), "closures_accepted": g.closures_accepted, "closures_rejected": g.closures_rejected,
                  "inter_robot_accepted": g.inter_robot_accepted, "inter_robot_rejected": g.inter_robot_rejected,
                  "loop_closure_factors": g.closures, "pending": g.pending, "unanchored_links": g.waiting_links,
                  "last_optimise_ms": g.last_optimise_ms}
        for robot in g.robots:
            segs = g.segments[robot]
            values[f"{robot}.poses"] = sum(len(s.node_stamps) for s in segs)
            values[f"{robot}.segments"] = len(segs)
            values[f"{robot}.anchored"] = g.anchored(robot)
        return {**values, **dict(g.counts)}


def _fill(position, orientation, pose: gtsam.Pose3):
    """Set a geometry_msgs position/translation and quaternion from a gtsam.Pose3."""
    position.x, position.y, position.z = (float(v) for v in pose.translation())
    q = pose.rotation().toQuaternion()
    orientation.x, orientation.y, orientation.z, orientation.w = q.x(), q.y(), q.z(), q.w()

