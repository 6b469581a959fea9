"""Every parameter of geoloc_vpr, declared in this one table: name, default, description, range.

config/vpr.yaml lists the same names with the same defaults (test_node_units checks that they agree).
"""

from __future__ import annotations

from dataclasses import dataclass
import re

# (name, default, description, (min, max) or None, read_only)
# Ranges become FloatingPointRange / IntegerRange in the ParameterDescriptor, so `ros2 param set` refuses values
# outside them. Parameters read at configure time are applied on the next configure (reload_map re-reads maps).
PARAMETERS = [
    # -- what to load ---------------------------------------------------------------------------------------
    ("map_path", [""], "Map database directories (geoloc map format): one path (-p map_path:=/data/map) or a "
     "list; candidates from all of them are merged. Empty: run on the session map alone (needs session_map and "
     "encoder_path).", None),
    ("encoder_path", "", "Encoder checkpoint (file or directory). Empty: the encoder carried by the first map.",
     None),
    ("encoder_backend", "auto", "Inference backend: 'auto' (the fastest path on this machine that keeps cosine "
     ">= 0.999 to fp32; the choice and why in /diagnostics), or one of geoloc_ros.deploy.open_encoder's: 'torch', "
     "'torch-tuned', 'onnxruntime', 'tensorrt'.", None),
    ("device", "auto", "Inference device: auto (CUDA when available), cuda, cuda:N or cpu.", None),
    ("half_precision", True, "Reduced precision: fp16 on CUDA; with encoder_backend 'auto' also bf16 on a CPU "
     "that computes it natively, where it keeps cosine >= 0.999 to fp32 (false: fp32 only).", None),
    ("inference_threads", 0, "CPU threads for inference; 0: the backend's default (torch's for eager torch; for the "
     "tuned backends every core on a 1-2 core CPU, else one fewer). On a shared CPU, fewer threads than cores avoid "
     "spin-waiting against other processes.", (0, 256)),
    # -- inputs -----------------------------------------------------------------------------------------------
    ("image_topics", ["/camera/image_raw"], "Camera topics (sensor_msgs/Image). Each also gets a "
     "sensor_msgs/CompressedImage subscription on <topic>/compressed (image_transport's convention).", None),
    ("subscribe_compressed", True, "Also subscribe to <topic>/compressed for every image topic.", None),
    ("odom_topic", "", "nav_msgs/Odometry giving the poses of session keyframes (empty: no subscription).", None),
    ("fix_topic", "", "sensor_msgs/NavSatFix giving geotags of session keyframes (empty: no subscription).", None),
    ("image_qos", "reliable", "QoS of the camera subscriptions: 'reliable' (matches reliable publishers only; "
     "what most drivers and image_transport publish), 'sensor_data' (best effort: matches every publisher, but "
     "best-effort frames of 640x480 and more from another process are lost with the Fast DDS of the PyPI "
     "wheels), 'system_default'. Depth 1: the newest frame wins.", None),
    ("no_frames_warn_s", 5.0, "/diagnostics warns when a camera topic has publishers but no frame has arrived "
     "for this long (a QoS mismatch, or best-effort frames lost in transport); 0 disables the warning.",
     (0.0, 3600.0)),
    ("max_image_pixels", 40_000_000, "Frames whose width x height (read from the message, or from the PNG/JPEG "
     "header before decoding) exceed this are refused as 'too_large'; 40 MP is above 8K (33 MP).",
     (1, 2_000_000_000)),
    ("mono16_max", 0, "mono16 frames are scaled to 8 bits as value * 255 / mono16_max (4095 for 12-bit "
     "sensors); 0 scales each frame by its own range (its 0.1st to 99.9th percentile).", (0, 65535)),
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
    ("loop_closure_min_confidence", 0.96, "Loop closures whose confidence (PlaceCandidate.confidence, in [0, 1]: "
     "docs/node.md, 'Loop-closure confidence and operating point') is below this are not published on "
     "~/loop_closures; the default was chosen for precision >= 0.99 on held-out Nordland data (0: publish all).",
     (0.0, 1.0)),
    ("verification", False, "Geometric verification of loop closures against the keyframes' stored local "
     "features and camera models (maps built with local features; session keyframes keep theirs): verified, "
     "inliers and relative_pose are filled in, and only verified candidates stay loop closures.", None),
    ("verification_min_inliers", 15, "RANSAC inliers needed to accept a candidate.", (4, 10000)),
    ("verification_require_pose", "none", "What a verified loop closure must also have: 'none' (enough inliers), "
     "'direction' (a relative pose, at least rotation and translation direction: needs both camera models) or "
     "'metric' (a metric relative pose: also needs depth at the query or the keyframe).", None),
    ("verification_detector", "sift", "Local features kept for session keyframes ('sift', 'orb', 'akaze'); a "
     "prior map's candidates are compared with the query's features of that map's own detector.", None),
    ("verification_max_keypoints", 2000, "Keypoints detected per query frame and per session keyframe.",
     (50, 20000)),
    # -- camera models and depth -------------------------------------------------------------------------------
    ("camera_info_topics", [""], "sensor_msgs/CameraInfo topic per image topic, in image_topics order ('' or "
     "the default ['']: image_transport's sibling <namespace>/camera_info of <namespace>/image_raw, and "
     "<image_topic>/camera_info).", None),
    ("depth_topics", [""], "Aligned depth image (sensor_msgs/Image 16UC1 millimetres or 32FC1 metres) per "
     "image topic, in image_topics order ('': no depth for that camera).", None),
    ("depth_tolerance_s", 0.02, "A depth image pairs with a colour frame when their header stamps differ by at "
     "most this.", (0.0, 1.0)),
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
    ("publish_markers", False, "Publish loop closures as visualization_msgs/MarkerArray on "
     "~/loop_closure_markers (lines from the query to each closure keyframe, in map_frame).", None),
    ("diagnostics_period_s", 1.0, "Period of /diagnostics messages.", (0.05, 60.0)),
    # -- places in words (docs/language.md) -------------------------------------------------------------------
    ("lmm_url", "", "~/geolocate: an OpenAI-compatible chat-completions endpoint (http://host:8000/v1/chat/"
     "completions, or its base) serving a multimodal model for the Img2Loc prompt; empty: retrieval estimate "
     "only.", None),
    ("lmm_model", "", "The model name sent to lmm_url (empty: the server's default).", None),
    ("lmm_timeout_s", 30.0, "Seconds to wait for one answer of lmm_url.", (0.1, 600.0)),
    ("lmm_retries", 1, "Further attempts after a timeout, a connection error or HTTP 429/5xx.", (0, 10)),
    ("geolocate_k", 5, "~/geolocate: nearest and farthest keyframes retrieved (each).", (1, 100)),
    ("geolocate_reference_map", "", "~/geolocate: a large geotagged reference map (same encoder) searched "
     "besides map_path (empty: none).", None),
    ("geolocate_region_min_m", 5000.0, "A model answer farther than max(2 x the neighbours' spread, this) from "
     "the retrieval estimate is refused (metres).", (0.0, 20_000_000.0)),
    ("geolocate_lmm_sigma_m", 25000.0, "Position standard deviation reported with an accepted model answer "
     "(metres).", (1.0, 20_000_000.0)),
    ("autostart", True, "Configure and activate on start (set false under a lifecycle manager).", None),
    # -- session-map loop closures and the search prior (docs/node.md, "Session map: loops on a route driven once")
    ("session_exclusion_distance_m", 50.0, "With odometry, session keyframes fewer than this many metres of "
     "travelled path back are never candidates (instead of session_exclusion_window_s): a robot standing still "
     "never closes a loop with itself.", (0.0, 100000.0)),
    ("session_loop_margin", 1.0, "A session-map loop closure's similarity must beat the frame's best similarity "
     "to its own recent past (the excluded keyframes) by this many standard deviations of its similarities to the "
     "session map; 0 turns the test off.", (0.0, 10.0)),
    ("session_loop_support", 2, "A session-map loop closure also needs this many of the 4 preceding frames to have "
     "passed that test at an agreeing keyframe (0: none).", (0, 4)),
    ("search_prior", "none", "'fix': prior-map keyframes farther from the latest fix_topic NavSatFix than its 99 % "
     "chi-square bound (from position_covariance, never below search_prior_radius_floor_m) are not considered "
     "(counted in /diagnostics); 'none': the search is unchanged. Not for a GPS that can be wrong without its "
     "covariance saying so, nor a robot that may be anywhere (kidnapped).", None),
    ("search_prior_radius_floor_m", 50.0, "The search prior's bound is never smaller than this (metres).",
     (0.0, 20_000_000.0)),
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
    image_qos: str
    no_frames_warn_s: float
    max_image_pixels: int
    mono16_max: int
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
    loop_closure_min_confidence: float
    verification: bool
    verification_min_inliers: int
    verification_require_pose: str
    verification_detector: str
    verification_max_keypoints: int
    camera_info_topics: list
    depth_topics: list
    depth_tolerance_s: float
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
    publish_markers: bool
    diagnostics_period_s: float
    lmm_url: str
    lmm_model: str
    lmm_timeout_s: float
    lmm_retries: int
    geolocate_k: int
    geolocate_reference_map: str
    geolocate_region_min_m: float
    geolocate_lmm_sigma_m: float
    autostart: bool
    session_exclusion_distance_m: float
    session_loop_margin: float
    session_loop_support: int
    search_prior: str
    search_prior_radius_floor_m: float

    @property
    def maps(self) -> list[str]:
        return [p for p in self.map_path if p]


# Parameters that must be one of a few words, and those that name topics.
CHOICES = {"consistency_mode": ("consecutive", "sequence"),
           "image_qos": ("reliable", "sensor_data", "system_default"),
           "verification_require_pose": ("none", "direction", "metric"),
           "verification_detector": ("sift", "orb", "akaze"),
           "search_prior": ("none", "fix")}
TOPICS = ("image_topics", "odom_topic", "fix_topic", "camera_info_topics", "depth_topics")
OPTIONAL = ("odom_topic", "fix_topic", "camera_info_topics", "depth_topics")  # may be empty: no subscription
PER_CAMERA = ("camera_info_topics", "depth_topics")  # one entry per image topic, or all empty
STRING_OR_LIST = ("map_path",)  # `-p map_path:=/data/map` is one map; a list is several
_ERRORS = "_geoloc_parameter_errors"


class ParameterError(ValueError):
    """A parameter value the node refuses; the message names the parameter and the reason."""


def declare(node) -> None:
    """Declare every parameter of PARAMETERS on `node` with its descriptor, and refuse bad `ros2 param set`
    values with the reason. A bad override given at start-up (`-p top_k:=0`, `-p top_k:=five`) does not raise
    here: the parameter keeps its default and `read` refuses with the reason, so the node stays unconfigured
    saying why instead of dying with a traceback."""
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    errors = {}
    for name, default, description, bounds in PARAMETERS:
        d = _descriptor(name, default, description, bounds)
        try:
            node.declare_parameter(name, default, d)
        except (InvalidParameterTypeException, InvalidParameterValueException) as e:  # e.g. out of range
            errors[name] = _startup_reason(name, e)
            node.declare_parameter(name, default, d, ignore_override=True)
            continue
        try:
            check(name, node.get_parameter(name).value)
        except ParameterError as e:
            errors[name] = str(e)
    setattr(node, _ERRORS, errors)
    node.add_on_set_parameters_callback(lambda changed: _on_set(node, changed))


def _descriptor(name, default, description, bounds):
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    # dynamic typing: a value of the wrong type reaches `check`, which names the parameter and what it takes,
    # instead of rclpy's "Wrong parameter type, expected '2' got '4'" (or an exception at declaration)
    d = ParameterDescriptor(name=name, description=description, dynamic_typing=True)
    if name in CHOICES:
        d.additional_constraints = "one of: " + ", ".join(CHOICES[name])
    if bounds is not None and isinstance(default, float):
        d.floating_point_range = [FloatingPointRange(from_value=float(bounds[0]), to_value=float(bounds[1]))]
    elif bounds is not None and isinstance(default, int) and not isinstance(default, bool):
        d.integer_range = [IntegerRange(from_value=int(bounds[0]), to_value=int(bounds[1]), step=1)]
    return d


def _startup_reason(name, error) -> str:
    return f"{name}: {str(error).rsplit(': ' + name, 1)[0]}"


def _on_set(node, changed):
    """`ros2 param set` (and set_parameters) of a bad value is refused with the reason."""
    from rcl_interfaces.msg import SetParametersResult

    for p in changed:
        if p.name not in _BY_NAME:
            continue
        try:
            check(p.name, p.value)
        except ParameterError as e:
            return SetParametersResult(successful=False, reason=str(e))
    for p in changed:
        getattr(node, _ERRORS, {}).pop(p.name, None)  # a good value replaces a refused start-up value
    return SetParametersResult(successful=True)


def check(name: str, value):
    """`value` for parameter `name`, normalised (map_path: always a list of strings), or ParameterError."""
    default, bounds = _BY_NAME[name]
    if name in STRING_OR_LIST:
        value = [value] if isinstance(value, str) else value
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ParameterError(f"{name}: expected a string or a list of strings, got {value!r}")
        value = [str(v) for v in value]
    elif not _same_kind(default, value):
        raise ParameterError(f"{name}: expected {_KIND_WORDS[type(default)]}, got {value!r}")
    elif isinstance(default, float):
        value = float(value)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        raise ParameterError(f"{name}: {value!r} is outside {bounds[0]}..{bounds[1]}")
    if name in CHOICES and value not in CHOICES[name]:
        raise ParameterError(f"{name}: {value!r} is not one of {', '.join(CHOICES[name])}")
    if name in TOPICS:
        for topic in value if isinstance(value, list) else [value]:
            _check_topic(name, topic)
    if name == "device" and value not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", value):
        raise ParameterError(f"device: {value!r}: expected auto, cpu, cuda or cuda:N")
    if name == "encoder_backend":
        from geoloc_ros.deploy.api import BACKENDS

        if value != "auto" and value not in BACKENDS:
            raise ParameterError(f"encoder_backend: {value!r} is not one of auto, {', '.join(BACKENDS)}")
    return value


_KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _same_kind(default, value) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _check_topic(name: str, topic: str) -> None:
    from rclpy.expand_topic_name import expand_topic_name
    from rclpy.validate_topic_name import validate_topic_name

    if topic == "" and name in OPTIONAL:
        return
    try:
        validate_topic_name(expand_topic_name(topic, "geoloc_vpr", "/"))
    except Exception as e:  # noqa: BLE001 - rclpy raises ValueError or InvalidTopicNameException
        reason = str(e).split(", at /")[0]  # drop the C source location
        raise ParameterError(f"{name}: {topic!r} is not a valid topic name ({reason})") from None


def read(node) -> Settings:
    """The node's parameters as Settings, every value checked; ParameterError (a ValueError) names the first
    refused parameter and why. Cheap: nothing is loaded, so a bad value is refused before maps or encoder."""
    errors = getattr(node, _ERRORS, {})
    if errors:
        raise ParameterError("; ".join(errors.values()))
    values = {name: check(name, node.get_parameter(name).value) for name, *_ in PARAMETERS}
    settings = Settings(**values)
    if not settings.image_topics:
        raise ParameterError("image_topics is empty: nothing to listen to")
    for name in PER_CAMERA:
        given = getattr(settings, name)
        if any(given) and len(given) != len(settings.image_topics):
            raise ParameterError(f"{name}: {len(given)} entries for {len(settings.image_topics)} image_topics "
                                 f"(give one per image topic, '' for the default)")
    if not settings.maps and not settings.encoder_path:
        raise ParameterError(f"no encoder: map_path {settings.map_path!r} names no map, so encoder_path must name "
                             f"the encoder")
    if not settings.maps and not settings.session_map:
        raise ParameterError(f"map_path {settings.map_path!r} names no map and session_map is false: nothing to "
                             f"localise against")
    return settings


def defaults() -> dict:
    return {name: default for name, default, *_ in PARAMETERS}


_BY_NAME = {name: (default, bounds) for name, default, _, bounds in PARAMETERS}


# Camera messages DDS may hold per subscription until the intake takes them: the depth of ROS's sensor-data profile.
# Newest-wins is the node's job (vpr_node._on_image parks the newest frame and counts the one it replaces). With
# depth 1, DDS itself replaced a frame the intake had not yet taken, and nothing counted it: two frames published
# back to back lost the first one 8 times in 12 (a one-off in-process probe, 64x32), where depth 5 received all 12.
IMAGE_QUEUE_DEPTH = 5


def image_qos_profile(name: str):
    """The rclpy QoSProfile of the camera subscriptions for an `image_qos` value: KEEP_LAST, depth
    IMAGE_QUEUE_DEPTH, volatile (the node localises the newest frame; older ones are worth nothing, but the node,
    not DDS, drops them, so that /diagnostics counts every frame that arrived)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_system_default

    reliability = {"reliable": ReliabilityPolicy.RELIABLE, "sensor_data": ReliabilityPolicy.BEST_EFFORT,
                   "system_default": None}
    if name not in reliability:
        raise ParameterError(f"image_qos: {name!r} is not one of {', '.join(reliability)}")
    if reliability[name] is None:
        return qos_profile_system_default
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=IMAGE_QUEUE_DEPTH, reliability=reliability[name],
                      durability=DurabilityPolicy.VOLATILE)
