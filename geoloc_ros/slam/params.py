"""Every parameter of geoloc_pose_graph in one spec, SPEC: from it come the declarations (description, range,
read-only: the node reads them once, at start), the validation, config/pose_graph.yaml and the table in
docs/slam.md (`python tools/gen_params.py` writes the last two; test_params.py fails when they are stale).

Adding a parameter: one `P(name, default, description, range)` row in its section below, then
`python tools/gen_params.py`; `graph_settings` maps the values onto the ROS-free GraphSettings.
"""

from __future__ import annotations

from functools import partial
import re

import gtsam

from geoloc_ros import ros_params
from geoloc_ros.ros_params import Param, ParameterError, Section
from geoloc_ros.slam import noise
from geoloc_ros.slam.graph import GraphSettings
from geoloc_ros.slam.team import KEY_CHARS

MAX_ROBOTS = len(KEY_CHARS)

NODE_NAME = "geoloc_pose_graph"
# A robot name is one ROS name token: it becomes part of topic and frame names.
ROBOT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _robot_names(name: str, value: list) -> list:
    names = [v for v in value if v]
    bad = [v for v in names if not ROBOT_NAME.fullmatch(v)]
    if bad:
        raise ParameterError(f"{name}: {bad[0]!r} is not a robot name (a letter, then letters, digits or _)")
    if len(set(names)) != len(names):
        raise ParameterError(f"{name}: names a robot twice")
    if len(names) > MAX_ROBOTS:
        raise ParameterError(f"{name}: at most {MAX_ROBOTS} robots")
    return value


def _one_per_robot(name: str, value: list) -> list:
    return value  # checked against `robots` by team_topics, which sees both
P = partial(Param, read_only=True)  # read once, when the node starts
LIVE_P = Param  # applied by the running node when set (LIVE below)

SPEC = (
    Section("inputs", (
        P("use_fix", False, "Subscribe to `fix` (sensor_msgs/NavSatFix) and add GPS factors."),
        P("use_geopose", False, "Subscribe to `geopose` (geographic_msgs/GeoPoseWithCovarianceStamped, e.g. "
          "geoloc_vpr's ~/geopose) and add GPS factors. It is derived from the same matches as loop_closures: use "
          "one or the other, not both."),
        LIVE_P("closures_per_message", 1, "Candidates of each loop_closures message turned into factors, best first "
          "(the others agree with the best one; adding them would count one match several times).", (1, 100)),
        LIVE_P("min_confidence", 0.0, "Candidates whose confidence is below this are ignored.", (0.0, 1.0)),
        P("map_origin", [0.0], "WGS84 origin (lat, lon[, alt]) of the map frame for GPS factors. [0.0]: taken "
          "from the first geotagged prior-map candidate, else from the first fix."),
        P("base_to_camera", [0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5], "Fixed base -> camera optical frame "
          "extrinsic (x y z qx qy qz qw); the default is the REP-103 optical rotation with zero translation."),
    )),
    Section("pose nodes and odometry", (
        P("keyframe_distance_m", 1.0, "A pose node after this much travel (0 with keyframe_angle_deg 0: one node "
          "per odometry message).", (0.0, 1000.0)),
        P("keyframe_angle_deg", 10.0, "A pose node after this much rotation.", (0.0, 180.0)),
        LIVE_P("stamp_tolerance_s", 0.5, "A closure's stamps need an odometry message this close.", (0.0, 60.0)),
        LIVE_P("pending_timeout_s", 10.0, "Closures newer than the odometry wait this long (steady clock) for it.",
               (0.0, 3600.0)),
        LIVE_P("max_pending", 1000, "At most this many closures wait for odometry; beyond it the oldest is dropped "
               "(counted).", (1, 100000)),
        LIVE_P("max_stamp_ahead_s", 60.0, "Odometry, closures and fixes stamped more than this ahead of the node's "
               "clock are refused (counted), so one wrong stamp cannot hold back every later message.", (0.0, 1e9)),
        LIVE_P("max_odometry_speed_mps", 100.0, "Odometry that moves farther than 1 m + this speed x the time since "
               "the last message has jumped (a reset or a glitch): taken as no motion, and later odometry continues "
               "from there.", (0.1, 1e6)),
        P("odom_translation_sigma_ratio", 0.05, "Odometry without covariance: translation sigma per metre.",
          (0.0, 10.0)),
        P("odom_rotation_sigma_per_m", 0.01, "Odometry without covariance: heading sigma (rad) after 1 m, growing with "
          "the square root of the distance (a random walk); roll and pitch do not grow with distance.",
          (0.0, 10.0)),
        P("odom_rotation_sigma_ratio", 0.05, "Odometry without covariance: rotation sigma per radian turned.",
          (0.0, 10.0)),
        P("odom_min_sigma_m", 0.01, "Odometry without covariance: translation sigma floor per step.", (1e-6, 100.0)),
        P("odom_min_sigma_rad", 0.002, "Odometry without covariance: rotation sigma floor per step.", (1e-6, 10.0)),
    )),
    Section("closures and absolute factors", (
        P("same_place_sigma_m", 5.0, "Closure without a metric pose ('same place'): position sigma.", (0.01, 1000.0)),
        P("same_place_sigma_rad", 0.5, "Closure without a relative pose: rotation sigma.", (0.001, 10.0)),
        P("metric_default_sigma_m", 0.2, "Metric relative pose sent without covariance: translation sigma.",
          (0.001, 100.0)),
        P("metric_default_sigma_rad", 0.05, "Relative pose sent without covariance: rotation sigma.", (0.0001, 10.0)),
        P("prior_map_sigma_m", 5.0, "Prior-map keyframe as an absolute position: horizontal sigma.", (0.01, 10000.0)),
        P("prior_map_sigma_z_m", 100.0, "Prior-map keyframe: vertical sigma.", (0.01, 100000.0)),
        LIVE_P("gps_sigma_m", 5.0, "GPS factor sigma when the message carries no covariance.", (0.01, 10000.0)),
        P("align_min_factors", 3, "Absolute measurements needed to place the trajectory in the map frame.", (2, 1000)),
        P("align_min_spread_m", 10.0, "... spread over at least this distance.", (0.0, 100000.0)),
        P("align_inlier_sigmas", 3.0, "Alignment inliers lie within this many sigmas.", (0.1, 100.0)),
        P("robust_kernel", "huber", "Kernel on closures and absolute factors.", choices=("huber", "cauchy", "none")),
        P("robust_k", 1.345, "Kernel threshold in sigmas.", (0.01, 100.0)),
        LIVE_P("gate_probability", 0.999, "Chi-square gate on each closure's innovation (1.0: no gate).", (0.5, 1.0)),
    )),
    Section("team (several robots in one graph: docs/multi_robot.md)", (
        P("robots", [""], "Robot names (namespaces, e.g. [a, b, c]); [\"\"]: one robot on the topics above. Set: "
          "one graph for the team, per robot `<robot>/odom` and `<robot>/geoloc_vpr/loop_closures` in, "
          "`~/<robot>/path` and map -> <robot>/odom out; the first robot's odometry frame is the map frame.",
          validate=_robot_names),
        P("robot_odom_topics", [""], "Per robot (robots' order), its odometry topic instead of `<robot>/odom` "
          "([\"\"] or an empty entry: the default).", validate=_one_per_robot),
        P("robot_loop_closure_topics", [""], "Per robot, its loop-closure topic instead of "
          "`<robot>/geoloc_vpr/loop_closures` ([\"\"] or an empty entry: the default).", validate=_one_per_robot),
    )),
    Section("outputs", (
        P("map_frame", "map", "Frame of ~/path and parent of the map -> odom transform."),
        P("odom_frame", "", "Child of the map -> odom transform (empty: the odometry's header.frame_id)."),
        LIVE_P("publish_tf", True, "Publish map -> odom on /tf."),
        P("publish_period_s", 0.5, "Period of ~/path (when changed) and /tf.", (0.01, 60.0)),
        LIVE_P("g2o_path", "~/.ros/geoloc_pose_graph.g2o", "Where ~/save_graph writes the g2o file (a regular file "
               "or absent)."),
        P("diagnostics_period_s", 1.0, "Period of /diagnostics messages.", (0.05, 60.0)),
    )),
)
PARAMETERS = ros_params.flat(SPEC)
YAML_HEADER = """Parameters of the geoloc_pose_graph node, generated from geoloc_ros/slam/params.py by
tools/gen_params.py: edit the spec there, not this file; docs/slam.md gives the reasons for the defaults. Load with:
  pose_graph_node --ros-args --params-file config/pose_graph.yaml -r loop_closures:=/geoloc_vpr/loop_closures"""


# Parameters a running node applies when set (`ros2 param set`); a change of any other one is refused with the
# reason, since it is read once at start.
LIVE = ("closures_per_message", "min_confidence", "gate_probability", "stamp_tolerance_s", "pending_timeout_s",
        "max_pending", "max_stamp_ahead_s", "max_odometry_speed_mps", "gps_sigma_m", "publish_tf", "g2o_path")
# ... of which these live in the graph's settings under the same name.
LIVE_GRAPH_SETTINGS = ("gate_probability", "stamp_tolerance_s", "pending_timeout_s", "max_pending",
                       "max_odometry_speed_mps")


def declare(node) -> None:
    """Declare SPEC on `node` (ros_params.declare)."""
    ros_params.declare(node, SPEC)


def read(node) -> dict:
    """Every parameter's value, checked; ParameterError names each refused one and why."""
    return ros_params.read(node, SPEC)


def defaults() -> dict:
    return ros_params.defaults(SPEC)


def graph_settings(p: dict) -> GraphSettings:
    """The core's settings from parameter values (a dict like defaults())."""
    return GraphSettings(
        keyframe_distance_m=p["keyframe_distance_m"], keyframe_angle_deg=p["keyframe_angle_deg"],
        stamp_tolerance_s=p["stamp_tolerance_s"], pending_timeout_s=p["pending_timeout_s"],
        max_pending=p["max_pending"], max_odometry_speed_mps=p["max_odometry_speed_mps"],
        odometry=noise.OdometryNoise(p["odom_translation_sigma_ratio"], p["odom_rotation_sigma_per_m"],
                                     p["odom_rotation_sigma_ratio"], p["odom_min_sigma_m"], p["odom_min_sigma_rad"]),
        same_place_sigma_m=p["same_place_sigma_m"], same_place_sigma_rad=p["same_place_sigma_rad"],
        metric_default_sigma_m=p["metric_default_sigma_m"], metric_default_sigma_rad=p["metric_default_sigma_rad"],
        prior_map_sigma_m=p["prior_map_sigma_m"], prior_map_sigma_z_m=p["prior_map_sigma_z_m"],
        align_min_factors=p["align_min_factors"], align_min_spread_m=p["align_min_spread_m"],
        align_inlier_sigmas=p["align_inlier_sigmas"], robust_kernel=p["robust_kernel"], robust_k=p["robust_k"],
        gate_probability=p["gate_probability"], base_to_camera=noise.base_to_camera(p["base_to_camera"]))


def default_extrinsic() -> gtsam.Pose3:
    return noise.base_to_camera(defaults()["base_to_camera"])


def team_topics(p: dict) -> list[tuple[str, str, str]]:
    """(robot, odometry topic, loop-closure topic) per robot of `robots` (empty: one robot, no team);
    ParameterError when an override list does not give one entry per robot."""
    robots = [r for r in p["robots"] if r]
    topics = []
    for name, default in (("robot_odom_topics", "{}/odom"),
                          ("robot_loop_closure_topics", "{}/geoloc_vpr/loop_closures")):
        given = p[name] if any(p[name]) else [""] * len(robots)
        if len(given) != len(robots):
            raise ParameterError(f"{name}: {len(given)} entries for {len(robots)} robots")
        topics.append([t or default.format(r) for t, r in zip(given, robots)])
    return list(zip(robots, *topics))
