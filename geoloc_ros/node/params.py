"""Every parameter of geoloc_vpr, declared in this one table: name, default, description, range.

config/vpr.yaml lists the same names with the same defaults (test_node_units checks that they agree).
"""

from __future__ import annotations

from dataclasses import dataclass

# (name, default, description, (min, max) or None, read_only)
# Ranges become FloatingPointRange / IntegerRange in the ParameterDescriptor, so `ros2 param set` refuses values
# outside them. Parameters read at configure time are applied on the next configure (reload_map re-reads maps).
PARAMETERS = [
    # -- what to load ---------------------------------------------------------------------------------------
    ("map_path", [""], "Map database directories (geoloc map format); candidates from all of them are merged. "
     "Empty: run on the session map alone (needs encoder_path).", None),
    ("encoder_path", "", "Encoder checkpoint (file or directory). Empty: the encoder carried by the first map.",
     None),
    ("encoder_backend", "torch", "Inference backend: 'torch', or a backend of geoloc_ros.deploy.open_encoder "
     "('torch-tuned', 'onnxruntime').", None),
    ("device", "auto", "Inference device: auto (CUDA when available), cuda, cuda:N or cpu.", None),
    ("half_precision", True, "fp16 inference; applies on CUDA only (CPU always runs fp32).", None),
    ("inference_threads", 0, "CPU threads for inference (torch intra-op threads); 0 keeps torch's default. On a "
     "shared CPU, fewer threads than cores avoid spin-waiting against other processes.", (0, 256)),
    # -- inputs -----------------------------------------------------------------------------------------------
    ("image_topics", ["/camera/image_raw"], "Camera topics (sensor_msgs/Image). Each also gets a "
     "sensor_msgs/CompressedImage subscription on <topic>/compressed (image_transport's convention).", None),
    ("subscribe_compressed", True, "Also subscribe to <topic>/compressed for every image topic.", None),
    ("odom_topic", "", "nav_msgs/Odometry giving the poses of session keyframes (empty: no subscription).", None),
    ("fix_topic", "", "sensor_msgs/NavSatFix giving geotags of session keyframes (empty: no subscription).", None),
    ("blank_threshold", 3.0, "Frames whose grey levels span less than this from the 5th to the 95th percentile "
     "are refused as blank (0 disables the check).", (0.0, 255.0)),
    # -- matching ---------------------------------------------------------------------------------------------
    ("top_k", 5, "Candidates published per frame.", (1, 100)),
    ("min_similarity", 0.0, "Candidates below this cosine similarity are not published.", (-1.0, 1.0)),
    ("consistency_k", 2, "A loop closure needs the top match of this many consecutive frames of one camera to "
     "agree (1: every frame stands alone).", (1, 50)),
    ("consistency_radius_m", 50.0, "Consecutive top matches agree when their keyframes lie within this distance "
     "(keyframes without positions agree when their ids are within consistency_id_window).", (0.0, 10000.0)),
    ("consistency_id_window", 5, "Id distance within which keyframes without positions count as agreeing.",
     (0, 100000)),
    ("consistency_mode", "consecutive", "'consecutive': consistency_k agreeing top matches; 'sequence': "
     "sequence matching over the last sequence_window frames (for streams about one keyframe spacing per frame, "
     "like the Nordland demo).", None),
    ("sequence_window", 8, "Frames per sequence in 'sequence' mode.", (2, 100)),
    ("sequence_min_margin", 1.0, "'sequence' mode: the best run's score over the best run elsewhere in the map "
     "must reach this (1.0 accepts every best run).", (1.0, 10.0)),
    ("verification", False, "Geometric verification of loop closures (ORB features + RANSAC fundamental "
     "matrix); needs the keyframe image (session keyframes, or verification_image_dir).", None),
    ("verification_min_inliers", 15, "RANSAC inliers needed to accept a candidate.", (4, 10000)),
    ("verification_features", 1000, "ORB features extracted per image for verification.", (50, 20000)),
    ("verification_image_dir", "", "Directory holding the map keyframes' images under their labels (empty: "
     "only session keyframes can be verified).", None),
    # -- session map ------------------------------------------------------------------------------------------
    ("session_map", False, "Add keyframes seen during the run to an in-memory session map that is searched too.",
     None),
    ("session_min_spacing_m", 5.0, "Minimum travel (from odometry) between session keyframes; 0 disables.",
     (0.0, 1000.0)),
    ("session_min_interval_s", 1.0, "Minimum time between session keyframes.", (0.0, 3600.0)),
    ("session_exclusion_window_s", 30.0, "Session keyframes younger than this are never candidates, so the robot "
     "does not 'close a loop' with its own last seconds of path.", (0.0, 86400.0)),
    ("session_map_path", "", "Where ~/save_session_map writes the session map (empty: ~/.ros/geoloc_session_map).",
     None),
    # -- outputs ----------------------------------------------------------------------------------------------
    ("map_frame", "map", "frame_id of ~/pose and ~/geopose.", None),
    ("base_frame", "base_link", "frame_id of ~/fix (the robot frame whose position is estimated).", None),
    ("agreement_radius_m", 30.0, "Candidates within this distance of the best one are fused into the pose.",
     (0.0, 10000.0)),
    ("covariance_floor_m", 5.0, "Position standard deviation never reported below this (metres).",
     (0.0, 10000.0)),
    ("covariance_scale", 1.0, "Multiplies the spread-derived position variance.", (0.0, 1000.0)),
    ("yaw_floor_deg", 10.0, "Yaw standard deviation never reported below this (degrees); unknown headings "
     "report a yaw variance of 1e6.", (0.0, 180.0)),
    ("diagnostics_period_s", 1.0, "Period of /diagnostics messages.", (0.05, 60.0)),
    ("autostart", True, "Configure and activate on start (set false under a lifecycle manager).", None),
]


@dataclass
class Settings:
    """The parameters' values as plain Python, read once per configure."""

    map_path: list
    encoder_path: str
    encoder_backend: str
    device: str
    half_precision: bool
    inference_threads: int
    image_topics: list
    subscribe_compressed: bool
    odom_topic: str
    fix_topic: str
    blank_threshold: float
    top_k: int
    min_similarity: float
    consistency_k: int
    consistency_radius_m: float
    consistency_id_window: int
    consistency_mode: str
    sequence_window: int
    sequence_min_margin: float
    verification: bool
    verification_min_inliers: int
    verification_features: int
    verification_image_dir: str
    session_map: bool
    session_min_spacing_m: float
    session_min_interval_s: float
    session_exclusion_window_s: float
    session_map_path: str
    map_frame: str
    base_frame: str
    agreement_radius_m: float
    covariance_floor_m: float
    covariance_scale: float
    yaw_floor_deg: float
    diagnostics_period_s: float
    autostart: bool

    @property
    def maps(self) -> list[str]:
        return [p for p in self.map_path if p]


def declare(node) -> None:
    """Declare every parameter of PARAMETERS on `node` with its descriptor."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    for name, default, description, bounds in PARAMETERS:
        d = ParameterDescriptor(name=name, description=description)
        if bounds is not None and isinstance(default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(bounds[0]), to_value=float(bounds[1]))]
        elif bounds is not None and isinstance(default, int) and not isinstance(default, bool):
            d.integer_range = [IntegerRange(from_value=int(bounds[0]), to_value=int(bounds[1]), step=1)]
        node.declare_parameter(name, default, d)


def read(node) -> Settings:
    values = {name: node.get_parameter(name).value for name, *_ in PARAMETERS}
    for name in ("map_path", "image_topics"):
        values[name] = [str(v) for v in (values[name] or [])]
    return Settings(**values)


def defaults() -> dict:
    return {name: default for name, default, *_ in PARAMETERS}
