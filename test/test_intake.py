"""node/intake.py: geoloc_vpr's camera subscriptions live on a hidden node of their own, spun by its own
SingleThreadedExecutor, under geoloc_vpr's namespace and remappings (publishers are counted there too);
deactivating the node removes them."""

from pathlib import Path

from geoloc_ros.replay import wait_for

BUNDLED_MAP = Path(__file__).resolve().parents[1] / "maps" / "nordland_demo"


def test_camera_subscriptions_follow_the_node_remapping_on_their_own_node():
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from geoloc_ros.vpr_node import VprNode, start

    context = Context()
    rclpy.init(context=context)
    node = VprNode(context=context, namespace="/intake_test",
                   cli_args=["--ros-args", "-r", "camera/image_raw:=/remapped/image_raw"],
                   parameter_overrides=[Parameter("map_path", value=[str(BUNDLED_MAP)]),
                                        Parameter("image_topics", value=["camera/image_raw"]),
                                        Parameter("autostart", value=False)])
    try:
        assert start(node), node.last_error
        assert wait_for(lambda: node.count_subscribers("/remapped/image_raw") == 1, timeout=10)
        assert wait_for(lambda: node.count_subscribers("/remapped/image_raw/compressed") == 1, timeout=10)
        assert node.count_subscribers("/intake_test/camera/image_raw") == 0   # the remapping applied
        assert ("_geoloc_vpr_intake", "/intake_test") in node.get_node_names_and_namespaces()
        assert node._intake.node.get_subscriptions_info_by_topic("/remapped/image_raw")  # on the intake node
        # /diagnostics' "publishers but no frames" watch counts the camera on the name subscribed, remapped
        camera = node.create_publisher(Image, "/remapped/image_raw", 1)
        assert wait_for(lambda: node._intake.count_publishers("camera/image_raw") == 1, timeout=10)
        node.destroy_publisher(camera)
        node.trigger_deactivate()
        assert wait_for(lambda: node.count_subscribers("/remapped/image_raw") == 0, timeout=10)
        assert node._intake is None
    finally:
        node._stop_worker()
        node.destroy_node()
        context.try_shutdown()
