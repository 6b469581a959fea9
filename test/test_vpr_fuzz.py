"""Property-based fuzzing of vpr_node's message callbacks (hypothesis): arbitrary field values in Image,
CompressedImage, CameraInfo, depth Image, Odometry and NavSatFix, fed to the callbacks of one real, active node
(the bundled map and encoder, a session map, verification and every closure published) the way its intake
delivers them. Each example ends with its frame accounted for (processed, rejected or dropped); afterwards the
node is active, its worker and intake threads alive, what it holds bounded, and every published number finite.
A bounded budget (max_examples, no deadline) keeps CI fast."""

import math
from pathlib import Path
import resource
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

pytest.importorskip("rclpy")

from nav_msgs.msg import Odometry  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, NavSatFix  # noqa: E402

from geoloc_ros.replay import Harness, InProcessNode, wait_for  # noqa: E402

BUNDLED_MAP = Path(__file__).resolve().parents[1] / "maps" / "nordland_demo"
CAMERA = "/fuzz/image_raw"
BUDGET = settings(max_examples=25, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# -- field strategies -------------------------------------------------------------------------------------------
# the edge values first (hypothesis rarely draws NaN or inf itself within a small budget), then any float
big_float = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308, 5e-324, 1.0]),
                      st.floats(allow_nan=True, allow_infinity=True))
uint32 = st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 4000))
small_text = st.text(max_size=40)


@st.composite
def stamps(draw, msg):
    msg.header.stamp.sec = draw(st.one_of(st.integers(-2**31, 2**31 - 1), st.integers(1_700_000_000, 1_700_000_100)))
    msg.header.stamp.nanosec = draw(st.integers(0, 2**32 - 1))
    msg.header.frame_id = draw(small_text)
    return msg


@st.composite
def images(draw):
    """Raw frames: consistent ones of random pixels (any accepted encoding, padding, endianness) or arbitrary
    fields that need not agree with the data."""
    msg = Image()
    encoding = draw(st.one_of(st.sampled_from(["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "RGB8"]),
                              small_text))
    if draw(st.booleans()):
        h, w = draw(st.integers(1, 96)), draw(st.integers(1, 128))
        channels = {"rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 2}.get(encoding.lower(), 3)
        pad = draw(st.integers(0, 7))
        msg.height, msg.width, msg.step = h, w, w * channels + pad
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        msg.data = rng.integers(0, 256, msg.step * h, dtype=np.uint8).tobytes()
    else:
        msg.height, msg.width, msg.step = draw(uint32), draw(uint32), draw(uint32)
        msg.data = draw(st.binary(max_size=4096))
    msg.encoding, msg.is_bigendian = encoding, draw(st.integers(0, 255))
    return draw(stamps(msg))


@st.composite
def compressed_images(draw):
    """JPEG/PNG of random pixels, truncated or bit-flipped ones, or arbitrary bytes, under any format string."""
    import cv2

    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from([".jpg", ".png"]))
    ok, buf = cv2.imencode(kind, rng.integers(0, 256, (draw(st.integers(1, 80)), draw(st.integers(1, 80)), 3),
                                              dtype=np.uint8))
    data = buf.tobytes()
    how = draw(st.sampled_from(["whole", "truncated", "flipped", "arbitrary"]))
    if how == "truncated":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "flipped":
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
    elif how == "arbitrary":
        data = draw(st.binary(max_size=2048))
    msg = CompressedImage(format=draw(st.one_of(st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8"]),
                                                small_text)))
    msg.data = data
    return draw(stamps(msg))


@st.composite
def camera_infos(draw):
    msg = CameraInfo(width=draw(uint32), height=draw(uint32),
                     distortion_model=draw(st.one_of(st.sampled_from(["plumb_bob", "rational_polynomial", "equidistant",
                                                                       ""]), small_text)))
    msg.k = draw(st.lists(big_float, min_size=9, max_size=9))
    msg.d = draw(st.lists(big_float, max_size=14))
    return draw(stamps(msg))


@st.composite
def depth_images(draw):
    msg = Image(encoding=draw(st.one_of(st.sampled_from(["16UC1", "32FC1", "mono16"]), small_text)))
    if draw(st.booleans()):
        h, w = draw(st.integers(1, 96)), draw(st.integers(1, 128))
        size = 2 if msg.encoding in ("16UC1", "mono16") else 4
        msg.height, msg.width, msg.step = h, w, w * size
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        msg.data = rng.integers(0, 256, w * size * h, dtype=np.uint8).tobytes()
    else:
        msg.height, msg.width, msg.step = draw(uint32), draw(uint32), draw(uint32)
        msg.data = draw(st.binary(max_size=4096))
    msg.is_bigendian = draw(st.integers(0, 1))
    return draw(stamps(msg))


@st.composite
def odometries(draw):
    msg = Odometry()
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    p.x, p.y, p.z = draw(big_float), draw(big_float), draw(big_float)
    q.x, q.y, q.z, q.w = draw(big_float), draw(big_float), draw(big_float), draw(big_float)
    msg.pose.covariance = draw(st.lists(big_float, min_size=36, max_size=36))
    return draw(stamps(msg))


@st.composite
def fixes(draw):
    msg = NavSatFix(latitude=draw(big_float), longitude=draw(big_float), altitude=draw(big_float))
    msg.status.status = draw(st.integers(-128, 127))
    msg.position_covariance = draw(st.lists(big_float, min_size=9, max_size=9))
    return draw(stamps(msg))


# -- the node ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzzed():
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    n = InProcessNode(context, {"map_path": [str(BUNDLED_MAP)], "device": "cpu", "image_topics": [CAMERA],
                                "depth_topics": ["/fuzz/depth"], "odom_topic": "/fuzz/odom", "fix_topic": "/fuzz/fix",
                                "session_map": True, "session_min_spacing_m": 0.0, "session_min_interval_s": 0.0,
                                "verification": True, "consistency_k": 1, "loop_closure_min_confidence": 0.0,
                                "diagnostics_period_s": 0.5})
    assert n.active, n.node.last_error
    h = Harness(context, image_topic="/fuzz/unused")
    yield n.node, h
    h.close()
    n.close()
    context.try_shutdown()


def accounted(node) -> int:
    s = node.stats.snapshot()
    return s["frames_processed"] + s["frames_rejected"] + s["frames_dropped"]


def feed(node, msg, topic=CAMERA):
    """One frame through the node's image callback; waits until the worker has accounted for it."""
    before = accounted(node)
    node._on_image(msg, CAMERA, topic)
    assert wait_for(lambda: accounted(node) > before, timeout=30), node.stats.snapshot()


def healthy(node):
    assert node.lifecycle_state == "active" and node._worker.is_alive() and node._intake._thread.is_alive()
    assert len(node._pending) <= 1 and len(node._warned) <= 40


def finite_outputs(h):
    for topic, results in h.data.results.items():
        for msg in results.values():
            for c in getattr(msg, "candidates", []):
                # NaN latitude/longitude is the message's "unknown" (a session keyframe without a fix)
                assert (math.isnan(c.latitude) and math.isnan(c.longitude)) or \
                    (abs(c.latitude) <= 90 and abs(c.longitude) <= 180), (topic, c)
                numbers = {"similarity": c.similarity, "confidence": c.confidence, "x": c.pose.position.x,
                           "y": c.pose.position.y, "z": c.pose.position.z,
                           "relative x": c.relative_pose.pose.position.x,
                           "relative qw": c.relative_pose.pose.orientation.w,
                           "relative covariance": max(abs(v) for v in c.relative_pose.covariance)}
                bad = {k: v for k, v in numbers.items() if not math.isfinite(v)}
                assert not bad, (topic, c.map_name, c.keyframe_label, bad)


def photo():
    from geoloc_ros.node.images import rgb_to_image_fields

    rng = np.random.default_rng(0)
    msg = Image(**{k: v for k, v in rgb_to_image_fields(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).items()
                   if k != "data"})
    msg.data = rgb_to_image_fields(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))["data"].tobytes()
    msg.header.stamp.sec = 1_700_000_000
    return msg


@BUDGET
@given(msg=images())
def test_image_callback_survives_any_fields(fuzzed, msg):
    node, h = fuzzed
    feed(node, msg)
    healthy(node)


@BUDGET
@given(msg=compressed_images())
def test_compressed_image_callback_survives_any_bytes(fuzzed, msg):
    node, h = fuzzed
    feed(node, msg, CAMERA + "/compressed")
    healthy(node)


@BUDGET
@given(info=camera_infos(), depth=depth_images(), frame=images())
def test_camera_info_and_depth_callbacks_survive_any_fields(fuzzed, info, depth, frame):
    node, h = fuzzed
    node._cameras.on_info(info, CAMERA, 0)
    node._cameras.on_depth(depth, CAMERA)
    depth_stamp = depth.header.stamp
    frame.header.stamp.sec, frame.header.stamp.nanosec = depth_stamp.sec, depth_stamp.nanosec  # paired
    feed(node, frame)
    feed(node, photo())
    healthy(node)
    values = node._cameras.diagnostics()
    assert all(isinstance(v, (int, str)) for v in values.values())


@BUDGET
@given(odom=odometries(), fix=fixes())
def test_odometry_and_fix_callbacks_survive_any_fields(fuzzed, odom, fix):
    node, h = fuzzed
    node._on_odom(odom)
    node._on_fix(fix)
    assert node._odom is None or all(math.isfinite(v) for v in node._odom)
    assert node._fix is None or all(math.isfinite(v) for v in node._fix[:2])
    feed(node, photo())
    healthy(node)


def test_after_fuzzing_the_node_is_whole_and_its_outputs_finite(fuzzed):
    node, h = fuzzed
    feed(node, photo())
    healthy(node)
    assert wait_for(lambda: h.data.results["place_recognition"], timeout=10)
    finite_outputs(h)
    assert node.session is not None and len(node.session) > 0
    for keyframe in node.session.db.keyframes() if hasattr(node.session, "db") else []:
        assert not keyframe.has_position or all(math.isfinite(v) for v in (keyframe.x, keyframe.y))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 4 * 2**20  # KiB: well under 4 GiB
    time.sleep(1.0)  # one more /diagnostics from the fuzzed node
    d = h.diag_values()
    assert d and d["state"] == "active"
