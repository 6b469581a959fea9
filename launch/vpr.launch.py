"""Start the geoloc_vpr lifecycle node:  ros2 launch geoloc_ros vpr.launch.py map:=/path/to/map"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode


def generate_launch_description():
    share = Path(get_package_share_directory("geoloc_ros"))
    args = [
        DeclareLaunchArgument("config", default_value=str(share / "config" / "vpr.yaml"),
                              description="YAML file of node parameters"),
        DeclareLaunchArgument("map", default_value=str(share / "maps" / "nordland_demo"),
                              description="map database directory"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock"),
    ]
    node = LifecycleNode(
        package="geoloc_ros",
        executable="vpr_node",
        name="geoloc_vpr",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("config"),
            {
                "map_path": [LaunchConfiguration("map")],
                "image_topics": [LaunchConfiguration("camera_topic")],
                "use_sim_time": LaunchConfiguration("use_sim_time"),
                "autostart": True,
            },
        ],
    )
    return LaunchDescription(args + [node])
