"""Every parameter of geoloc_vpr in one spec, SPEC: from it come the declarations (description, range, allowed
values), the validation, the `Settings` the node reads, config/vpr.yaml and the table in docs/node.md
(`python tools/gen_params.py` writes the last two; test_params.py fails when they are stale).

Adding a parameter: one `Param(name, default, description, range, ...)` row in its section below, then
`python tools/gen_params.py`. A value the ROS-free localizer uses also needs a field of the same name in
geoloc_ros/localization/config.py's LocalizerConfig (`localizer_config` copies it over).
"""

from __future__ import annotations

from dataclasses import fields, make_dataclass
import re

from geoloc_ros import ros_params
from geoloc_ros.localization.config import CONSISTENCY_MODES, LocalizerConfig
from geoloc_ros.ros_params import Param, ParameterError, Section

NODE_NAME = "geoloc_vpr"

# Camera messages DDS may hold per subscription until the intake takes them: the depth of ROS's sensor-data profile.
# Newest-wins is the node's job (vpr_node._on_image parks the newest frame and counts the one it replaces). With
# depth 1, DDS itself replaced a frame the intake had not yet taken, and nothing counted it: two frames published
# back to back lost the first one 8 times in 12 (a one-off in-process probe, 64x32), where depth 5 received all 12.
IMAGE_QUEUE_DEPTH = 5


def _check_topic(name: str, topic: str, optional: bool) -> None:
    from rclpy.expand_topic_name import expand_topic_name
    from rclpy.validate_topic_name import validate_topic_name

    if topic == "" and optional:
        return
    try:
        validate_topic_name(expand_topic_name(topic, "geoloc_vpr", "/"))
    except Exception as e:  # noqa: BLE001 - rclpy raises ValueError or InvalidTopicNameException
        reason = str(e).split(", at /")[0]  # drop the C source location
        raise ParameterError(f"{name}: {topic!r} is not a valid topic name ({reason})") from None



def _topics(name, value):
    for topic in value if isinstance(value, list) else [value]:
        _check_topic(name, topic, optional=False)
    return value


def _optional_topics(name, value):  # empty: no subscription
    for topic in value if isinstance(value, list) else [value]:
        _check_topic(name, topic, optional=True)
    return value


def _device(name, value):
    if value not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", value):
        raise ParameterError(f"{name}: {value!r}: expected auto, cpu, cuda or cuda:N")
    return value


def _backend(name, value):
    from geoloc_ros.deploy.api import BACKENDS

    if value != "auto" and value not in BACKENDS:
        raise ParameterError(f"{name}: {value!r} is not one of auto, {', '.join(BACKENDS)}")
    return value


def _extrinsic(name, value):
    from geoloc_ros.localization.metric_worker import extrinsic

    try:
        extrinsic(value)
    except ValueError as e:
        raise ParameterError(f"{name}: {e}") from None
    return value


SPEC = (
    Section("what to load", (
        Param("map_path", [""], "Map database directories (geoloc map format): one path (-p map_path:=/data/map) "
              "or a list; candidates from all of them are merged. Empty: run on the session map alone (needs "
              "session_map and encoder_path).", accepts_string=True),
        Param("encoder_path", "", "Encoder checkpoint (file or directory). Empty: the encoder carried by the first "
              "map."),
        Param("encoder_backend", "auto", "Inference backend: 'auto' (the fastest path on this machine that keeps "
              "cosine >= 0.999 to fp32; the choice and why in /diagnostics), or one of "
              "geoloc_ros.deploy.open_encoder's: 'torch', 'torch-tuned', 'onnxruntime', 'tensorrt'.",
              validate=_backend),
        Param("device", "auto", "Inference device: auto (CUDA when available), cuda, cuda:N or cpu.",
              validate=_device),
        Param("half_precision", True, "Reduced precision: fp16 on CUDA; with encoder_backend 'auto' also bf16 on a "
              "CPU that computes it natively, where it keeps cosine >= 0.999 to fp32 (false: fp32 only)."),
        Param("inference_threads", 0, "CPU threads for inference; 0: the backend's default (torch's for eager "
              "torch; for the tuned backends every core on a 1-2 core CPU, else one fewer). On a shared CPU, fewer "
              "threads than cores avoid spin-waiting against other processes.", (0, 256)),
    )),
    Section("inputs", (
        Param("image_topics", ["/camera/image_raw"], "Camera topics (sensor_msgs/Image). Each also gets a "
              "sensor_msgs/CompressedImage subscription on <topic>/compressed (image_transport's convention).",
              validate=_topics),
        Param("subscribe_compressed", True, "Also subscribe to <topic>/compressed for every image topic."),
        Param("odom_topic", "", "nav_msgs/Odometry giving the poses of session keyframes (empty: no "
              "subscription).", validate=_optional_topics),
        Param("fix_topic", "", "sensor_msgs/NavSatFix giving geotags of session keyframes (empty: no "
              "subscription).", validate=_optional_topics),
        Param("image_qos", "auto", f"QoS of the camera subscriptions (images, CameraInfo, depth), depth "
              f"{IMAGE_QUEUE_DEPTH} (the node, not DDS, keeps the newest frame and counts the ones it drops): 'auto' "
              "(per topic: reliable while every publisher is reliable, best effort when one is not, as `ros2 bag "
              "record` chooses; re-checked every second, the choice in /diagnostics), 'reliable' (matches reliable "
              "publishers only), 'sensor_data' (best effort: matches every publisher, but camera-sized frames from "
              "another process are lost with the Fast DDS of the PyPI wheels unless both processes load "
              "config/fastdds_large_frames.xml), 'system_default'. docs/node.md, 'Choosing image_qos', says which "
              "to pick.", choices=("auto", "reliable", "sensor_data", "system_default")),
        Param("no_frames_warn_s", 5.0, "/diagnostics warns when a camera topic has publishers but no frame has "
              "arrived for this long (a QoS mismatch, or best-effort frames lost in transport); 0 disables the "
              "warning.", (0.0, 3600.0)),
        Param("max_image_pixels", 40_000_000, "Frames whose width x height (read from the message, or from the "
              "PNG/JPEG header before decoding) exceed this are refused as 'too_large'; 40 MP is above 8K (33 MP).",
              (1, 2_000_000_000)),
        Param("mono16_max", 0, "mono16 frames become 8-bit as value x 255 / mono16_max (4095 for a 12-bit sensor); "
              "0 infers the bit depth from each frame's largest value (2^bits - 1, at least 8 bits).", (0, 65535)),
        Param("blank_threshold", 3.0, "Frames whose grey levels span less than this from the 5th to the 95th "
              "percentile are refused as blank (0 disables the check).", (0.0, 255.0)),
    )),
    Section("matching", (
        Param("top_k", 5, "Candidates published per frame.", (1, 100)),
        Param("min_similarity", 0.0, "Candidates below this cosine similarity are not published.", (-1.0, 1.0)),
        Param("consistency_k", 2, "A loop closure needs the top match of this many consecutive frames of one "
              "camera to be at one place (1: every frame stands alone).", (1, 50)),
        Param("consistency_radius_m", 50.0, "Two top matches are at one place when their keyframes lie within "
              "this distance (keyframes without positions: when their ids are within consistency_id_window).",
              (0.0, 10000.0)),
        Param("consistency_id_window", 5, "Id distance within which keyframes without positions count as one "
              "place.", (0, 100000)),
        Param("consistency_mode", "consecutive", "'consecutive': consistency_k top matches at one place; "
              "'sequence': sequence matching over the last sequence_window frames (for streams about one "
              "keyframe spacing per frame, like the Nordland demo).", choices=CONSISTENCY_MODES),
        Param("sequence_window", 8, "Frames per sequence in 'sequence' mode.", (2, 100)),
        Param("sequence_min_margin", 1.0, "'sequence' mode: the best run's score over the best run elsewhere in "
              "the map must reach this (1.0 accepts every best run).", (1.0, 10.0)),
        Param("odometry_tolerance_m", 50.0, "A loop closure whose keyframe lies farther from the previous "
              "closure's than odometry travelled between the two frames, give or take this, is odometry-"
              "inconsistent: its confidence odds are divided by 10.", (0.0, 10000.0)),
        Param("loop_closure_min_confidence", 0.96, "Loop closures whose confidence (PlaceCandidate.confidence, in "
              "[0, 1]: docs/node.md, 'Loop-closure confidence and operating point') is below this are not "
              "published on ~/loop_closures; the default was chosen for precision >= 0.99 on held-out Nordland "
              "data (0: publish all).", (0.0, 1.0)),
        Param("verification", False, "Geometric verification of loop closures against the keyframes' stored "
              "local features and camera models (maps built with local features; session keyframes keep theirs): "
              "verified, inliers and relative_pose are filled in, and only verified candidates stay loop "
              "closures."),
        Param("verification_min_inliers", 15, "RANSAC inliers needed to accept a candidate.", (4, 10000)),
        Param("verification_require_pose", "none", "What a verified loop closure must also have: 'none' (enough "
              "inliers), 'direction' (a relative pose, at least rotation and translation direction: needs both "
              "camera models) or 'metric' (a metric relative pose: also needs depth at the query or the keyframe).",
              choices=("none", "direction", "metric")),
        Param("verification_detector", "sift", "Local features kept for session keyframes; a prior map's "
              "candidates are compared with the query's features of that map's own detector.",
              choices=("sift", "orb", "akaze")),
        Param("verification_max_keypoints", 2000, "Keypoints detected per query frame and per session keyframe.",
              (50, 20000)),
    )),
    Section("camera models and depth", (
        Param("camera_info_topics", [""], "sensor_msgs/CameraInfo topic per image topic, in image_topics order "
              "('' or the default ['']: image_transport's sibling <namespace>/camera_info of "
              "<namespace>/image_raw, and <image_topic>/camera_info).", validate=_optional_topics),
        Param("depth_topics", [""], "Aligned depth image (sensor_msgs/Image 16UC1 millimetres or 32FC1 metres) "
              "per image topic, in image_topics order ('': no depth for that camera).", validate=_optional_topics),
        Param("depth_tolerance_s", 0.02, "A depth image pairs with a colour frame when their header stamps differ "
              "by at most this.", (0.0, 1.0)),
    )),
    Section("position prior on the search", (
        Param("search_prior", "none", "Where the position that bounds the search comes from. 'fix': the latest "
              "fix_topic NavSatFix, with its position_covariance; 'tf': the robot's pose in map_frame from /tf and "
              "/tf_static (map_frame -> base_frame, e.g. the back end's map -> odom and odometry's odom -> "
              "base_link), with search_prior_tf_covariance_m2; 'metric': the node's own last metric pose, with its "
              "covariance. Prior-map keyframes farther than the position's 99 % chi-square bound (never below "
              "search_prior_radius_floor_m) are not considered (counted in /diagnostics); 'none', or no position "
              "within search_prior_max_age_s: the search is unchanged. Not for a position that can be wrong without "
              "its covariance saying so, nor a robot that may be anywhere (kidnapped).",
              choices=("none", "fix", "tf", "metric")),
        Param("search_prior_radius_floor_m", 50.0, "The search prior's bound is never smaller than this (metres).",
              (0.0, 20_000_000.0)),
        Param("search_prior_tf_covariance_m2", 100.0, "Position variance (m^2, east and north alike) given to the "
              "pose from TF, which carries none (100: a 10 m standard deviation).", (0.0, 1e12)),
        Param("search_prior_max_age_s", 1.0, "search_prior tf and metric: a position older than this at the "
              "frame's stamp is not used (for tf: the moving transform nearest base_frame; static transforms never "
              "age).", (0.0, 3600.0)),
    )),
    Section("session map", (
        Param("session_map", False, "Add keyframes seen during the run to an in-memory session map that is "
              "searched too."),
        Param("session_min_spacing_m", 5.0, "Minimum travel (from odometry) between session keyframes; 0 "
              "disables.", (0.0, 1000.0)),
        Param("session_min_interval_s", 1.0, "Minimum time between session keyframes.", (0.0, 3600.0)),
        Param("session_exclusion_window_s", 30.0, "Session keyframes younger than this are never candidates, so "
              "the robot does not 'close a loop' with its own last seconds of path (with odometry, "
              "session_exclusion_distance_m decides instead).", (0.0, 86400.0)),
        Param("session_exclusion_distance_m", 50.0, "With odometry, session keyframes fewer than this many metres "
              "of travelled path back are never candidates (instead of session_exclusion_window_s): a robot "
              "standing still never closes a loop with itself.", (0.0, 100000.0)),
        Param("session_loop_margin", 1.0, "A session-map loop closure's similarity must beat the frame's best "
              "similarity to its own recent past (the excluded keyframes) by this many standard deviations of its "
              "similarities to the session map; 0 turns the test off.", (0.0, 10.0)),
        Param("session_loop_support", 2, "A session-map loop closure also needs this many of the 4 preceding "
              "frames to have passed that test at an agreeing keyframe (0: none).", (0, 4)),
        Param("session_map_path", "", "Where ~/save_session_map writes the session map (empty: "
              "~/.ros/geoloc_session_map)."),
    )),
    Section("keyframe exchange between robots (docs/node.md, 'Keyframe exchange between robots')", (
        Param("robot_id", "", "This robot's name in the keyframes it publishes on ~/keyframes and in its peers' "
              "PlaceCandidate.robot_id; empty: the node's namespace without its leading slash ('robot' in the root "
              "namespace). Peer keyframes naming this robot_id are refused: a robot never matches its own."),
        Param("peer_keyframe_topics", [""], "Other robots' geoloc_msgs/Keyframe topics (e.g. "
              "['/robot_b/geoloc_vpr/keyframes']); their keyframes are searched like a map of their own per robot. "
              "Empty: no exchange. Each topic's sibling service (trailing 'keyframes' -> 'keyframe_features') is "
              "asked for local features when verification is on.", validate=_optional_topics),
        Param("peer_descriptor_encoding", "float16", "How the descriptors of ~/keyframes travel: 'float16' (half the "
              "bytes of float32, Recall@1 unchanged on Nordland: docs/benchmarks.md), 'float32', or 'pq' "
              "(product-quantisation codes of the codebook beside the encoder, <encoder>.pq.faiss; configure fails "
              "without one). Received keyframes may use any of them.", choices=("float16", "float32", "pq")),
        Param("peer_max_keyframes", 10000, "Keyframes kept per peer robot; beyond it the oldest are dropped and "
              "counted (peer_dropped).", (1, 10_000_000)),
        Param("peer_feature_timeout_s", 2.0, "With verification: seconds to wait for a peer's local features of a "
              "candidate; unanswered, the candidate is published unverified and counted "
              "(peer_features_timeout).", (0.05, 600.0)),
        Param("peer_consistency_k", 3, "An inter-robot loop closure is published only when the best matches of this "
              "many consecutive frames of one camera were keyframes of one session of that peer, spaced in its "
              "odometry frame as this robot's odometry travelled (within peer_consistency_tolerance_m; without "
              "odometry: ids within consistency_id_window); the first k-1 frames of a revisit publish no peer "
              "closure (1: every frame stands alone).", (1, 50)),
        Param("peer_consistency_tolerance_m", 20.0, "How far the peer keyframes' spacing may differ from the "
              "distance this robot travelled between the frames that matched them (the keyframe spacing blurs "
              "both ends).", (0.0, 10000.0)),
        Param("peer_loop_margin", 1.5, "An inter-robot loop closure's similarity must beat the frame's best "
              "similarity to the same peer session's keyframes at other places (beyond consistency_radius_m) by "
              "this many standard deviations of its similarities to that session; a session with no keyframe "
              "elsewhere yet publishes no closure. 0 turns the test off.", (0.0, 10.0)),
    )),
    Section("outputs", (
        Param("map_frame", "map", "frame_id of ~/pose and ~/geopose, and the frame of the candidates' poses."),
        Param("base_frame", "base_link", "frame_id of ~/fix (the robot frame whose position is estimated)."),
        Param("agreement_radius_m", 30.0, "Candidates within this distance of the best one are fused into the "
              "pose.", (0.0, 10000.0)),
        Param("covariance_floor_m", 5.0, "Position standard deviation never reported below this (metres).",
              (0.0, 10000.0)),
        Param("covariance_scale", 1.0, "Multiplies the spread-derived position variance.", (0.0, 1000.0)),
        Param("yaw_floor_deg", 10.0, "Yaw standard deviation never reported below this (degrees); unknown "
              "headings report a yaw variance of 1e6.", (0.0, 180.0)),
        Param("publish_markers", False, "Publish loop closures as visualization_msgs/MarkerArray on "
              "~/loop_closure_markers (lines from the query to each closure keyframe, in map_frame)."),
        Param("diagnostics_period_s", 1.0, "Period of /diagnostics messages.", (0.05, 60.0), read_only=True),
    )),
    Section("places in words (docs/language.md)", (
        Param("lmm_url", "", "~/geolocate: an OpenAI-compatible chat-completions endpoint "
              "(http://host:8000/v1/chat/completions, or its base) serving a multimodal model for the Img2Loc "
              "prompt; empty: retrieval estimate only."),
        Param("lmm_model", "", "The model name sent to lmm_url (empty: the server's default)."),
        Param("lmm_timeout_s", 30.0, "Seconds to wait for one answer of lmm_url.", (0.1, 600.0)),
        Param("lmm_retries", 1, "Further attempts after a timeout, a connection error or HTTP 429/5xx.", (0, 10)),
        Param("geolocate_k", 5, "~/geolocate: nearest and farthest keyframes retrieved (each).", (1, 100)),
        Param("geolocate_reference_map", "", "~/geolocate: a large geotagged reference map (same encoder) "
              "searched besides map_path (empty: none)."),
        Param("geolocate_region_min_m", 5000.0, "A model answer farther than max(2 x the neighbours' spread, "
              "this) from the retrieval estimate is refused (metres).", (0.0, 20_000_000.0)),
        Param("geolocate_lmm_sigma_m", 25000.0, "Position standard deviation reported with an accepted model "
              "answer (metres).", (1.0, 20_000_000.0)),
        Param("describe_period_s", 0.0, "With lmm_url and an encoder that carries a feature combiner: ask lmm_url "
              "for a scene description of the newest frame at most this often, on a thread of its own (never on "
              "the camera path); frames within describe_max_age_s of a described frame fuse its description into "
              "their descriptor (docs/language.md). 0: never ask.", (0.0, 3600.0)),
        Param("describe_max_age_s", 2.0, "A description serves frames whose stamps lie within this of the "
              "described frame's.", (0.0, 3600.0)),
    )),
    Section("metric localization against maps with 3D structure (docs/geometry.md)", (
        Param("metric_localization", True, "When a loop closure names a prior map with 3D structure and the camera "
              "model is known, ~/pose, ~/geopose and ~/fix carry the 6-DoF pose from 2D-3D matches and PnP (a "
              "background thread; newest frame wins); keyframe fusion when it does not pass the thresholds below."),
        Param("metric_top_k", 3, "Candidate keyframes whose 3D points are matched.", (1, 100)),
        Param("metric_min_inliers", 30, "PnP inliers a metric pose needs.", (6, 100000)),
        Param("metric_max_sigma_m", 0.25, "Largest position standard deviation of a metric pose (metres).",
              (0.0, 1000.0)),
        Param("metric_max_sigma_deg", 1.0, "Largest rotation standard deviation of a metric pose (degrees).",
              (0.0, 180.0)),
        Param("base_to_camera", [0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5], "Fixed base_frame -> camera optical frame "
              "extrinsic [x, y, z, qx, qy, qz, qw] (metres; default: camera at the base origin looking along +x).",
              validate=_extrinsic),
    )),
    Section("lifecycle", (
        Param("autostart", True, "Configure and activate on start (set false under a lifecycle manager).",
              read_only=True),
    )),
)
PARAMETERS = ros_params.flat(SPEC)
PER_CAMERA = ("camera_info_topics", "depth_topics")  # one entry per image topic, or all empty
YAML_HEADER = """Parameters of the geoloc_vpr node, generated from geoloc_ros/node/params.py by tools/gen_params.py:
edit the spec there, not this file. Load with:  vpr_node --ros-args --params-file config/vpr.yaml"""


def _maps(self) -> list[str]:
    """map_path without empty entries."""
    return [p for p in self.map_path if p]


# The parameters' values as plain Python, read once per configure (frozen: a reload makes a new one).
Settings = make_dataclass("Settings", [(p.name, type(p.default)) for p in PARAMETERS], frozen=True,
                          namespace={"maps": property(_maps), "__module__": __name__})


def declare(node) -> None:
    """Declare SPEC on `node` (ros_params.declare: bad start-up values are refused by `read`, bad `ros2 param
    set` values at once, each with the reason)."""
    ros_params.declare(node, SPEC)


def check(name: str, value):
    """`value` for parameter `name`, normalised (map_path: always a list of strings), or ParameterError."""
    return ros_params.check(_BY_NAME[name], value)


def defaults() -> dict:
    return ros_params.defaults(SPEC)


def settings(**overrides) -> Settings:
    """Settings of the defaults with `overrides` (offline tools and tests)."""
    return Settings(**{**defaults(), **{k: check(k, v) for k, v in overrides.items()}})


def read(node) -> Settings:
    """The node's parameters as Settings, every value checked; ParameterError (a ValueError) names the first
    refused parameter and why. Cheap: nothing is loaded, so a bad value is refused before maps or encoder."""
    s = Settings(**ros_params.read(node, SPEC))
    if not s.image_topics:
        raise ParameterError("image_topics is empty: nothing to listen to")
    for name in PER_CAMERA:
        given = getattr(s, name)
        if any(given) and len(given) != len(s.image_topics):
            raise ParameterError(f"{name}: {len(given)} entries for {len(s.image_topics)} image_topics "
                                 f"(give one per image topic, '' for the default)")
    if not s.maps and not s.encoder_path:
        raise ParameterError(f"no encoder: map_path {s.map_path!r} names no map, so encoder_path must name "
                             f"the encoder")
    if not s.maps and not s.session_map:
        raise ParameterError(f"map_path {s.map_path!r} names no map and session_map is false: nothing to "
                             f"localise against")
    return s


# LocalizerConfig fields whose parameter has another name; every other field takes the parameter of its name.
CONFIG_FROM_PARAMETER = {"maps": "maps", "fusion_radius_m": "agreement_radius_m"}


def localizer_config(s: Settings) -> LocalizerConfig:
    """What the ROS-free localizer uses, from the node's Settings."""
    values = {f.name: getattr(s, CONFIG_FROM_PARAMETER.get(f.name, f.name)) for f in fields(LocalizerConfig)}
    return LocalizerConfig(**values)


_BY_NAME = {p.name: p for p in PARAMETERS}


def image_qos_profile(name: str):
    """The rclpy QoSProfile of the camera subscriptions for an `image_qos` value: KEEP_LAST, depth
    IMAGE_QUEUE_DEPTH, volatile (the node localises the newest frame; older ones are worth nothing, but the node,
    not DDS, drops them, so that /diagnostics counts every frame that arrived)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_system_default

    # auto: reliable until the publishers call for best effort (node/camera_qos.py re-subscribes then)
    reliability = {"auto": ReliabilityPolicy.RELIABLE, "reliable": ReliabilityPolicy.RELIABLE,
                   "sensor_data": ReliabilityPolicy.BEST_EFFORT, "system_default": None}
    if name not in reliability:
        raise ParameterError(f"image_qos: {name!r} is not one of {', '.join(reliability)}")
    if reliability[name] is None:
        return qos_profile_system_default
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=IMAGE_QUEUE_DEPTH, reliability=reliability[name],
                      durability=DurabilityPolicy.VOLATILE)
