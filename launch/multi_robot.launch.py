"""A team of robots on one machine, for trying multi-robot place recognition and the team back end:

    ros2 launch geoloc_ros multi_robot.launch.py robots:=a,b,c

Per robot <r>: geoloc_vpr in namespace /<r> (self-activating: `autostart`), with robot_id <r>, session map on, no
prior map by default, its camera `/<r>/camera/image_raw` and odometry `/<r>/odom` (relative names, so each robot's
own), publishing its keyframes on /<r>/geoloc_vpr/keyframes and searching every other robot's
(peer_keyframe_topics). One geoloc_pose_graph (root namespace, or `backend_namespace`) with robots:=[a, b, c] reads
every robot's odometry and loop closures and publishes ~/<r>/path and map -> <r>/odom. On real robots each
geoloc_vpr runs on its robot and the back end on one of them or a base station: docs/multi_robot.md.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from launch import LaunchDescription


def robot_names(text: str) -> list[str]:
    """'a,b, c' -> ['a', 'b', 'c'] (a ROS name token each, no repeats), else ValueError."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if len(names) < 2 or len(set(names)) != len(names) or not all(
            n[0].isalpha() and n.replace("_", "").isalnum() for n in names):
        raise ValueError(f"robots:={text!r}: give two or more distinct names (letters, digits, _), comma-separated")
    return names


def team_layout(names: list[str]) -> list[dict]:
    """Per robot: its namespace and the geoloc_vpr parameters that make it one of the team."""
    return [{"namespace": f"/{r}", "robot_id": r,
             "peer_keyframe_topics": [f"/{other}/geoloc_vpr/keyframes" for other in names if other != r]}
            for r in names]


def _nodes(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    names = robot_names(arg("robots"))
    actions = []
    for robot in team_layout(names):
        actions.append(LifecycleNode(
            package="geoloc_ros", executable="vpr_node", name="geoloc_vpr", namespace=robot["namespace"],
            output="screen",
            parameters=[arg("vpr_config"), {
                "map_path": [arg("map")],
                "encoder_path": arg("encoder"),
                "image_topics": [arg("camera_topic")],
                "odom_topic": arg("odom_topic"),
                "session_map": True,
                "robot_id": robot["robot_id"],
                "peer_keyframe_topics": robot["peer_keyframe_topics"],
                "use_sim_time": arg("use_sim_time") == "true",
                "autostart": True,
            }]))
    ns = arg("backend_namespace")
    actions.append(Node(
        package="geoloc_ros", executable="pose_graph_node", name="geoloc_pose_graph", namespace=ns,
        output="screen",
        parameters=[arg("slam_config"), {
            "robots": names,
            # absolute, so the back end may live in any namespace
            "robot_odom_topics": [f"/{r}/{arg('odom_topic')}" for r in names],
            "robot_loop_closure_topics": [f"/{r}/geoloc_vpr/loop_closures" for r in names],
            "use_sim_time": arg("use_sim_time") == "true",
        }]))
    return actions


def generate_launch_description():
    share = Path(get_package_share_directory("geoloc_ros"))
    args = [
        DeclareLaunchArgument("robots", default_value="a,b,c", description="robot names, comma-separated"),
        DeclareLaunchArgument("vpr_config", default_value=str(share / "config" / "vpr.yaml"),
                              description="YAML file of geoloc_vpr parameters (every robot)"),
        DeclareLaunchArgument("slam_config", default_value=str(share / "config" / "pose_graph.yaml"),
                              description="YAML file of geoloc_pose_graph parameters"),
        DeclareLaunchArgument("map", default_value="",
                              description="prior map database directory ('': session maps only)"),
        DeclareLaunchArgument("encoder", default_value=str(share / "maps" / "nordland_demo" / "encoder.safetensors"),
                              description="encoder every robot uses (one encoder for the team: descriptors of two "
                                          "encoders cannot be compared)"),
        DeclareLaunchArgument("camera_topic", default_value="camera/image_raw",
                              description="image topic, relative: inside each robot's namespace"),
        DeclareLaunchArgument("odom_topic", default_value="odom",
                              description="odometry topic, relative: inside each robot's namespace"),
        DeclareLaunchArgument("backend_namespace", default_value="", description="namespace of the back end"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock"),
    ]
    return LaunchDescription(args + [OpaqueFunction(function=_nodes)])
