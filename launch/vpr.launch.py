"""Start the geoloc_vpr lifecycle node and take it to active:

    ros2 launch geoloc_ros vpr.launch.py map:=/path/to/map camera_topic:=/camera/image_raw

With autostart:=true (default) this launch file drives the lifecycle itself (configure when the process starts,
activate once it is inactive), like launch_ros's lifecycle example, so the transitions are visible to
`ros2 lifecycle get` and to monitoring tools. With autostart:=false it only starts the process and leaves the
transitions to a lifecycle manager (e.g. nav2_lifecycle_manager with node_names: [geoloc_vpr]).

dds_profile (default: config/fastdds_large_frames.xml, unless FASTDDS_DEFAULT_PROFILES_FILE is already set) is
exported to every process this launch starts after it, a camera driver included after this file too: raw camera
frames larger than Fast DDS's 512 KB shared-memory segment cross processes 4-7x faster with it (docs/node.md,
"Raw frames between processes"). dds_profile:='' leaves the environment as it is.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler, SetEnvironmentVariable
from launch.conditions import IfCondition, LaunchConfigurationNotEquals
from launch.event_handlers import OnProcessStart
from launch.events import matches_action
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription


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
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate from this launch file (false: leave it to a "
                                          "lifecycle manager)"),
        DeclareLaunchArgument("dds_profile", default_value=EnvironmentVariable(
            "FASTDDS_DEFAULT_PROFILES_FILE", default_value=str(share / "config" / "fastdds_large_frames.xml")),
            description="Fast DDS XML profile for the processes started from here ('' leaves the environment)"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("dds_profile"),
                               condition=LaunchConfigurationNotEquals("dds_profile", "")),
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
                # A list of lists of substitutions is a string array to launch_ros (one list would be
                # concatenated into a single string).
                "map_path": [[LaunchConfiguration("map")]],
                "image_topics": [[LaunchConfiguration("camera_topic")]],
                "use_sim_time": LaunchConfiguration("use_sim_time"),
                # The transitions come from the events below or from a lifecycle manager, not from the node.
                "autostart": False,
            },
        ],
    )
    autostart = IfCondition(LaunchConfiguration("autostart"))
    configure = RegisterEventHandler(
        OnProcessStart(target_action=node, on_start=[EmitEvent(event=ChangeState(
            lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_CONFIGURE))]),
        condition=autostart)
    activate = RegisterEventHandler(
        OnStateTransition(target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
                          entities=[EmitEvent(event=ChangeState(
                              lifecycle_node_matcher=matches_action(node),
                              transition_id=Transition.TRANSITION_ACTIVATE))]),
        condition=autostart)
    return LaunchDescription(args + [node, configure, activate])
