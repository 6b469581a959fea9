"""Start geoloc_vpr and geoloc_pose_graph together, the back end consuming the node's loop closures:

    ros2 launch geoloc_ros slam.launch.py map:=/path/to/map camera_topic:=/camera/image_raw odom_topic:=/odom

geoloc_vpr configures and activates itself (its `autostart` parameter; use vpr.launch.py with autostart:=false
under a lifecycle manager). geoloc_pose_graph's `loop_closures` is remapped to geoloc_vpr's ~/loop_closures and
its `odom` to odom_topic, which geoloc_vpr also reads to place its session keyframes. docs/slam.md has the rest.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from launch import LaunchDescription


def generate_launch_description():
    share = Path(get_package_share_directory("geoloc_ros"))
    arg = LaunchConfiguration
    args = [
        DeclareLaunchArgument("vpr_config", default_value=str(share / "config" / "vpr.yaml"),
                              description="YAML file of geoloc_vpr parameters"),
        DeclareLaunchArgument("slam_config", default_value=str(share / "config" / "pose_graph.yaml"),
                              description="YAML file of geoloc_pose_graph parameters"),
        DeclareLaunchArgument("map", default_value=str(share / "maps" / "nordland_demo"),
                              description="prior map database directory ('' : session map only)"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("odom_topic", default_value="/odom", description="nav_msgs/Odometry topic"),
        DeclareLaunchArgument("session_map", default_value="true",
                              description="geoloc_vpr keeps session keyframes, so one trip closes its own loops"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of both nodes"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock"),
    ]
    vpr = LifecycleNode(
        package="geoloc_ros",
        executable="vpr_node",
        name="geoloc_vpr",
        namespace=arg("namespace"),
        output="screen",
        parameters=[arg("vpr_config"), {
            "map_path": [[arg("map")]],  # a list of lists of substitutions is a string array to launch_ros
            "image_topics": [[arg("camera_topic")]],
            "odom_topic": arg("odom_topic"),
            "session_map": arg("session_map"),
            "use_sim_time": arg("use_sim_time"),
            "autostart": True,
        }],
    )
    pose_graph = Node(
        package="geoloc_ros",
        executable="pose_graph_node",
        name="geoloc_pose_graph",
        namespace=arg("namespace"),
        output="screen",
        parameters=[arg("slam_config"), {"use_sim_time": arg("use_sim_time")}],
        # Relative target: resolves inside the namespace, to the geoloc_vpr started above.
        remappings=[("loop_closures", "geoloc_vpr/loop_closures"), ("odom", arg("odom_topic"))],
    )
    return LaunchDescription(args + [vpr, pose_graph])
