"""The flags that name a rosbag2 recording and its positions, shared by `geoloc train --bag` and `geoloc calibrate
--bag` (both read it with geoloc_ros.model.recordings)."""

from __future__ import annotations


def add_recording_arguments(group):
    """--bag, --image-topic, one of --odom-topic / --fix-topic / --poses, and --max-gap on an argparse group."""
    group.add_argument("--bag", action="append", default=[], help="rosbag2 recording, directory or .mcap/.db3 file "
                                                                  "(repeatable: one route, several drives)")
    group.add_argument("--image-topic", help="sensor_msgs/Image or CompressedImage topic")
    src = group.add_mutually_exclusive_group()
    src.add_argument("--odom-topic", help="nav_msgs/Odometry topic giving the positions (x east, y north)")
    src.add_argument("--fix-topic", help="sensor_msgs/NavSatFix topic giving the positions (-> UTM)")
    src.add_argument("--poses", help="CSV of stamp,x,y[,z][,heading|qx,qy,qz,qw] (or lat,lon), or TUM trajectory")
    group.add_argument("--max-gap", type=float, default=0.5, metavar="S",
                       help="an image is placed only between two position samples at most S seconds apart "
                            "(default 0.5)")
