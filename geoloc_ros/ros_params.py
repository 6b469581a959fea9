"""Declare a table of ROS parameters -- (name, default, description, (min, max) or None) rows -- with their
descriptors, so `ros2 param describe` shows the description and `ros2 param set` refuses values out of range.
Used by geoloc_pose_graph (geoloc_ros/slam/params.py); geoloc_vpr's table has the same shape."""

from __future__ import annotations


def declare_table(node, table) -> None:
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    for name, default, description, bounds in table:
        d = ParameterDescriptor(name=name, description=description)
        if bounds is not None and isinstance(default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(bounds[0]), to_value=float(bounds[1]))]
        elif bounds is not None and isinstance(default, int) and not isinstance(default, bool):
            d.integer_range = [IntegerRange(from_value=int(bounds[0]), to_value=int(bounds[1]), step=1)]
        node.declare_parameter(name, default, d)
