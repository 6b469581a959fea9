"""The ROS side of the geoloc_vpr node that needs no running ROS graph: parameter declarations (params), message
-> RGB conversion (images), messages <-> the localizer's Frame / FrameResult (messages) and the counters behind
/diagnostics (diagnostics). The matching itself lives in geoloc_ros/localization; geoloc_ros/vpr_node.py wires
both to rclpy."""
