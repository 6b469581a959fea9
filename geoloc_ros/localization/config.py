"""LocalizerConfig: what the ROS-free localizer uses, and nothing else. The node maps its parameters onto it
(geoloc_ros/node/params.py, `localizer_config`); offline tools build one directly. Immutable: a reload builds a
new one with dataclasses.replace."""

from __future__ import annotations

from dataclasses import dataclass

CONSISTENCY_MODES = ("consecutive", "sequence")


@dataclass(frozen=True)
class LocalizerConfig:
    # what to load
    maps: tuple = ()  # map directories, in search order
    encoder_path: str = ""  # empty: the encoder carried by the first map
    encoder_backend: str = "auto"
    device: str = "auto"
    half_precision: bool = True
    inference_threads: int = 0
    # search
    top_k: int = 5
    min_similarity: float = 0.0
    # loop closures
    consistency_mode: str = "consecutive"  # one of CONSISTENCY_MODES
    consistency_k: int = 2
    consistency_radius_m: float = 50.0  # keyframes this close are one place
    consistency_id_window: int = 5  # ... or, without positions, ids this close
    sequence_window: int = 8
    sequence_min_margin: float = 1.0
    odometry_tolerance_m: float = 50.0  # map distance vs odometry travel between two closures
    loop_closure_min_confidence: float = 0.96
    # geometric verification
    verification: bool = False
    verification_min_inliers: int = 15
    verification_require_pose: str = "none"
    verification_detector: str = "sift"
    verification_max_keypoints: int = 2000
    # session map
    session_min_spacing_m: float = 5.0
    session_min_interval_s: float = 1.0
    session_exclusion_window_s: float = 30.0
    session_exclusion_distance_m: float = 50.0  # with odometry: the recent past by travelled path
    session_loop_margin: float = 1.0  # revisit test: standard deviations over the recent past (0: off)
    session_loop_support: int = 2  # revisit test: preceding frames that passed at an agreeing keyframe
    # inter-robot closures (consistency.PeerRun)
    peer_consistency_k: int = 3  # frames whose best peer matches must lie on one run of one peer session
    peer_consistency_tolerance_m: float = 20.0  # keyframe spacing vs odometry travel along that run
    peer_loop_margin: float = 1.5  # standard deviations over the peer session's keyframes elsewhere (0: off)
    # position prior on the search
    search_prior: str = "none"  # none | fix | tf | metric (localization/prior.py)
    search_prior_radius_floor_m: float = 50.0
    # pose fusion
    fusion_radius_m: float = 30.0  # candidates this close to the best one are fused into the pose
    covariance_floor_m: float = 5.0
    covariance_scale: float = 1.0
    yaw_floor_deg: float = 10.0

    def __post_init__(self):
        if self.consistency_mode not in CONSISTENCY_MODES:
            raise ValueError(f"consistency_mode {self.consistency_mode!r}: expected one of "
                             f"{', '.join(CONSISTENCY_MODES)}")
        object.__setattr__(self, "maps", tuple(str(m) for m in self.maps))
