"""Every parameter of geoloc_pose_graph in one spec, SPEC: from it come the declarations (description, range,
read-only: the node reads them once, at start), the validation, config/pose_graph.yaml and the table in
docs/slam.md (`python tools/gen_params.py` writes the last two; test_params.py fails when they are stale).

Adding a parameter: one `P(name, default, description, range)` row in its section below, then
`python tools/gen_params.py`; `graph_settings` maps the values onto the ROS-free GraphSettings.
"""

from __future__ import annotations

from functools import partial

import gtsam

from geoloc_ros import ros_params
from geoloc_ros.ros_params import Param, Section
from geoloc_ros.slam import noise
from geoloc_ros.slam.graph import GraphSettings

NODE_NAME = "geoloc_pose_graph"
P = partial(Param, read_only=True)  # read once, when the node starts

SPEC = (
    Section("inputs", (
        P("use_fix", False, "Subscribe to `fix` (sensor_msgs/NavSatFix) and add GPS factors."),
        P("use_geopose", False, "Subscribe to `geopose` (geographic_msgs/GeoPoseWithCovarianceStamped, e.g. "
          "geoloc_vpr's ~/geopose) and add GPS factors. It is derived from the same matches as loop_closures: use "
          "one or the other, not both."),
        P("closures_per_message", 1, "Candidates of each loop_closures message turned into factors, best first "
          "(the others agree with the best one; adding them would count one match several times).", (1, 100)),
        P("min_confidence", 0.0, "Candidates whose confidence is below this are ignored.", (0.0, 1.0)),
        P("map_origin", [0.0], "WGS84 origin (lat, lon[, alt]) of the map frame for GPS factors. [0.0]: taken "
          "from the first geotagged prior-map candidate, else from the first fix."),
        P("base_to_camera", [0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5], "Fixed base -> camera optical frame "
          "extrinsic (x y z qx qy qz qw); the default is the REP-103 optical rotation with zero translation."),
    )),
    Section("pose nodes and odometry", (
        P("keyframe_distance_m", 1.0, "A pose node after this much travel (0 with keyframe_angle_deg 0: one node "
          "per odometry message).", (0.0, 1000.0)),
        P("keyframe_angle_deg", 10.0, "A pose node after this much rotation.", (0.0, 180.0)),
        P("stamp_tolerance_s", 0.5, "A closure's stamps need an odometry message this close.", (0.0, 60.0)),
        P("pending_timeout_s", 10.0, "Closures newer than the odometry wait this long (stamp time) for it.",
          (0.0, 3600.0)),
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
        P("gps_sigma_m", 5.0, "GPS factor sigma when the message carries no covariance.", (0.01, 10000.0)),
        P("align_min_factors", 3, "Absolute measurements needed to place the trajectory in the map frame.", (2, 1000)),
        P("align_min_spread_m", 10.0, "... spread over at least this distance.", (0.0, 100000.0)),
        P("align_inlier_sigmas", 3.0, "Alignment inliers lie within this many sigmas.", (0.1, 100.0)),
        P("robust_kernel", "huber", "Kernel on closures and absolute factors.", choices=("huber", "cauchy", "none")),
        P("robust_k", 1.345, "Kernel threshold in sigmas.", (0.01, 100.0)),
        P("gate_probability", 0.999, "Chi-square gate on each closure's innovation (1.0: no gate).", (0.5, 1.0)),
    )),
    Section("outputs", (
        P("map_frame", "map", "Frame of ~/path and parent of the map -> odom transform."),
        P("odom_frame", "", "Child of the map -> odom transform (empty: the odometry's header.frame_id)."),
        P("publish_tf", True, "Publish map -> odom on /tf."),
        P("publish_period_s", 0.5, "Period of ~/path (when changed) and /tf.", (0.01, 60.0)),
        P("g2o_path", "~/.ros/geoloc_pose_graph.g2o", "Where ~/save_graph writes the g2o file."),
        P("diagnostics_period_s", 1.0, "Period of /diagnostics messages.", (0.05, 60.0)),
    )),
)
PARAMETERS = ros_params.flat(SPEC)
YAML_HEADER = """Parameters of the geoloc_pose_graph node, generated from geoloc_ros/slam/params.py by
tools/gen_params.py: edit the spec there, not this file; docs/slam.md gives the reasons for the defaults. Load with:
  pose_graph_node --ros-args --params-file config/pose_graph.yaml -r loop_closures:=/geoloc_vpr/loop_closures"""


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
