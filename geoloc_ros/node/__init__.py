"""Pieces of the geoloc_vpr node that need no running ROS graph: message <-> array conversion, parameters,
consistency, geometric verification, pose fusion and diagnostics bookkeeping. Each is small and testable alone;
geoloc_ros/vpr_node.py wires them to rclpy."""
