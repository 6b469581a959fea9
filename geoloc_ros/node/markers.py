"""Loop closures as visualization_msgs/MarkerArray for RViz / Foxglove (`publish_markers`, ~/loop_closure_markers).

One LINE_LIST marker per frame that closed a loop, in `map_frame`: a line from the query's position to each
closure keyframe that has a position (green: verified, orange: not verified). The query's position is its
odometry position when `odom_topic` is given (the frame session keyframes are positioned in), else the fused
~/pose. Frames whose query or keyframes have no position draw nothing. Markers accumulate (id = a running count,
no lifetime), so the display shows every loop closure of the run.
"""

from __future__ import annotations

import math

from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from geoloc_ros.stamps import set_stamp

NAMESPACE = "loop_closures"
LINE_WIDTH_M = 0.2
VERIFIED = ColorRGBA(r=0.1, g=0.8, b=0.2, a=1.0)
UNVERIFIED = ColorRGBA(r=1.0, g=0.6, b=0.0, a=1.0)


def query_position(result):
    """(x, y, z) of the query: odometry when known, else the fused pose; None without either."""
    if result.frame.odom is not None:
        return tuple(float(v) for v in result.frame.odom)
    if result.pose is not None:
        return result.pose.x, result.pose.y, result.pose.z
    return None


def keyframe_position(keyframe):
    if not keyframe.has_position:
        return None
    return float(keyframe.x), float(keyframe.y), float(keyframe.z) if math.isfinite(keyframe.z) else 0.0


def closure_markers(result, map_frame: str, marker_id: int) -> MarkerArray | None:
    """The MarkerArray of one FrameResult's loop closures, or None when there is nothing to draw."""
    start = query_position(result)
    ends = [(keyframe_position(c.keyframe), c.verified) for c in result.closures]
    ends = [(p, v) for p, v in ends if p is not None]
    if start is None or not ends:
        return None
    m = Marker(ns=NAMESPACE, id=int(marker_id), type=Marker.LINE_LIST, action=Marker.ADD)
    m.header.frame_id = map_frame
    set_stamp(m.header.stamp, result.frame.stamp_ns)
    m.pose.orientation.w = 1.0
    m.scale.x = LINE_WIDTH_M
    for end, verified in ends:
        m.points.extend([Point(x=start[0], y=start[1], z=start[2]), Point(x=end[0], y=end[1], z=end[2])])
        colour = VERIFIED if verified else UNVERIFIED
        m.colors.extend([colour, colour])
    return MarkerArray(markers=[m])
