"""Camera models, local features and the relative pose between two views (ROS-free)."""

from geoloc_ros.geometry.camera import PinholeCamera
from geoloc_ros.geometry.features import DEFAULT_DETECTOR, DETECTORS, Features, detect, match
from geoloc_ros.geometry.relative_pose import RelativePose, pose_message_fields, relative_pose, solve, verify_candidate

__all__ = ["PinholeCamera", "Features", "detect", "match", "DETECTORS", "DEFAULT_DETECTOR", "RelativePose",
           "relative_pose", "verify_candidate", "solve", "pose_message_fields"]
