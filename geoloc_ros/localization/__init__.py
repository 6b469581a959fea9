"""The localizer: camera frames in, place candidates, loop closures and a fused pose out. No ROS imports: the
node (geoloc_ros/vpr_node.py) turns messages into `Frame`s, calls `Localizer.process`, and turns the
`FrameResult`s back into messages. See docs/ARCHITECTURE.md for the frame path and the contracts."""

from geoloc_ros.localization.config import LocalizerConfig
from geoloc_ros.localization.frames import SESSION_MAP_ID, Candidate, Frame, FrameResult, Pose
from geoloc_ros.localization.localizer import Localizer
from geoloc_ros.localization.session import SessionMap
from geoloc_ros.localization.snapshot import LoadError, MapEntry, Snapshot, load_snapshot

__all__ = ["SESSION_MAP_ID", "Candidate", "Frame", "FrameResult", "LoadError", "Localizer", "LocalizerConfig",
           "MapEntry", "Pose", "SessionMap", "Snapshot", "load_snapshot"]
