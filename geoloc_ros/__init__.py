"""geoloc_ros: visual place recognition for ROS 2 with a ProGEO encoder and a FAISS map database.

The model (`geoloc_ros.model`) and map (`geoloc_ros.mapping`) packages import without ROS; only the
node (`geoloc_ros.vpr_node`) needs rclpy.
"""

__version__ = "0.1.0"
