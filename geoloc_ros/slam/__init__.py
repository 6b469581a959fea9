"""SLAM back end: a GTSAM pose graph that consumes geoloc_vpr's loop closures (graph.py, ROS-free) and the
geoloc_pose_graph node around it (pose_graph_node.py). docs/slam.md describes the factors and their noise."""

from geoloc_ros.slam.graph import GraphSettings, PoseGraph, Verdict  # noqa: F401
