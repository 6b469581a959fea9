"""What travels through the localizer: a `Frame` in, a `FrameResult` out, each candidate a `Candidate`.

Maps are identified by `map_id` (the map's absolute directory, or SESSION_MAP_ID for the session map), never by
their name alone: two maps both called `map` at /siteA/map and /siteB/map stay apart in consistency and fusion.
The name is carried for the messages (PlaceCandidate.map_name)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SESSION_MAP_ID = "session"  # map_id and map_name of the session map (keyframes added during this run)


@dataclass(frozen=True)
class Frame:
    """One decoded camera frame and what was known when it arrived."""

    camera: str  # the camera's key: its raw topic (raw and compressed topics of a camera share one history)
    topic: str  # the topic it arrived on
    stamp_ns: int  # header stamp; 0 when the driver left it unset
    frame_id: str  # header frame_id, copied to the outputs
    rgb: np.ndarray  # HxWx3 uint8
    received_ns: int = 0  # node clock when it arrived
    received_mono: float = 0.0  # time.monotonic() when it arrived, for the node's latency figures
    odom: tuple | None = None  # latest odometry (x, y, z) when it arrived
    odom_orientation: tuple | None = None  # that odometry's orientation (qx, qy, qz, qw), for the keyframe message
    fix: tuple | None = None  # latest valid NavSatFix (lat, lon, alt) when it arrived
    fix_covariance: tuple | None = None  # that fix's ENU position covariance (east, east-north, north), m^2
    # the robot's position in the node's map frame when it arrived, for the search prior: (x, y, (xx, xy, yy) m^2)
    position_prior: tuple | None = None
    travelled_m: float | None = None  # odometry path length summed over every odometry message until it arrived
    camera_model: object | None = None  # geoloc_ros.geometry.PinholeCamera from the camera's CameraInfo, if known
    depth: np.ndarray | None = None  # aligned depth image, HxW uint16 millimetres or float32 metres, if paired
    description: str = ""  # a scene description of this frame (language/describe.py); "" when there is none

    @property
    def time_ns(self) -> int:
        """The frame's time for the session map (spacing, exclusion window, keyframe stamps): the header stamp, or
        the receive time for stamp-less frames, so that such a stream still accumulates session keyframes."""
        return self.stamp_ns or self.received_ns


SOURCES = ("prior_map", "session", "peer")  # where a candidate's keyframe came from (PlaceCandidate.source)


@dataclass(frozen=True)
class Candidate:
    """One place candidate: a keyframe of a map, its similarity, and what verification said about it. Immutable:
    each step (ranking, verification, confidence) makes a new one with dataclasses.replace."""

    map_id: str
    map_name: str
    keyframe: object  # geoloc_ros.mapping.Keyframe
    similarity: float
    rank: int = 0
    verified: bool = False
    inliers: int = 0
    relative_pose: object | None = None  # geoloc_ros.geometry.RelativePose: query camera in the keyframe camera
    confidence: float = 0.0  # of a loop closure, in [0, 1] (localization/confidence.py); 0 for plain candidates
    source: str = "prior_map"  # one of SOURCES
    robot_id: str = ""  # the robot owning a peer keyframe; empty for prior-map and own session keyframes
    # (x, y, z) of the keyframe in the node's map frame (the first geotagged map's, as ~/pose), z NaN when unknown;
    # None when the keyframe has no position. Set by Snapshot.placed.
    position: tuple | None = None

    @property
    def relative_pose_kind(self) -> str:
        """"metric", "direction" or "none" (no pose computed)."""
        return self.relative_pose.kind if self.relative_pose is not None else "none"

    @property
    def key(self) -> tuple:
        """(map_id, Keyframe): what the consistency check compares."""
        return self.map_id, self.keyframe


@dataclass(frozen=True)
class Pose:
    """The fused position of a loop closure. x, y, z in the first geotagged map's frame (or the anchor map's own
    frame when no map is geotagged); `wgs84` (lat, lon, alt) when the anchor map is geotagged."""

    x: float
    y: float
    z: float
    quaternion: tuple  # (qx, qy, qz, qw) from the fused heading
    covariance: list  # row-major 6x6 (x, y, z, roll, pitch, yaw)
    wgs84: tuple | None = None


@dataclass
class FrameResult:
    """Everything the node needs to publish for one frame."""

    frame: Frame
    candidates: list = field(default_factory=list)  # Candidate, best first: ~/place_recognition
    closures: list = field(default_factory=list)  # Candidate: ~/loop_closures (empty: no loop closure)
    pose: Pose | None = None  # ~/pose, and ~/geopose + ~/fix when pose.wgs84 is set
    encode_ms: float = 0.0  # per frame of the batch
    search_ms: float = 0.0
    session_keyframe: int | None = None  # id of the session keyframe this frame became, if it did
    evidence: object = None  # confidence.Evidence of this frame's loop closure before the threshold, if it had one
    descriptor: object = None  # the frame's descriptor (float32, L2-normalised): a session keyframe's is shared
    # a peer closure waiting for geometric verification (verification on): its best keyframe, rated, not
    # thresholded; the node asks the owning robot for its features and publishes it then (node/peer_exchange.py)
    peer_pending: list = field(default_factory=list)
