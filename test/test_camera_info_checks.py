"""A CameraInfo the frames cannot use is refused, counted and named in /diagnostics instead of being stretched to
fit: non-finite values (NaN distortion), or a size that is no resize of the frames' (100000x10 for 1024x768
frames). A CameraInfo of another resolution with the frames' aspect ratio (binning, a resized stream) is still
used. Real sensor_msgs messages; the node test publishes them over DDS into an active vpr_node."""

import math

import numpy as np
import pytest

pytest.importorskip("rclpy")

from sensor_msgs.msg import CameraInfo  # noqa: E402

from geoloc_ros.geometry import PinholeCamera  # noqa: E402
from geoloc_ros.node import params  # noqa: E402
from geoloc_ros.node.camera_inputs import CameraInputs  # noqa: E402

CAMERA = "/camera/image_raw"


def info(width, height, d=(0.0,) * 5):
    msg = PinholeCamera(500.0, 500.0, width / 2, height / 2, width, height).to_camera_info(CameraInfo())
    msg.d = list(d)
    return msg


def inputs():
    return CameraInputs(params.Settings(**{**params.defaults(), "image_topics": [CAMERA]}))


def test_a_camera_info_of_another_shape_is_refused_for_the_frames():
    cams = inputs()
    cams.on_info(info(100000, 10), CAMERA)
    assert cams.model(CAMERA) is not None  # a model, until a frame says it does not fit
    assert cams.model(CAMERA, 1024, 768) is None
    d = cams.diagnostics()
    assert d["camera_info_size_mismatch"] == 1
    assert "100000x10 but the frames are 1024x768" in d[f"camera_info_refused {CAMERA}"]
    cams.on_info(info(2048, 1536), CAMERA)  # twice the frames' size: a resize, used (and scaled by verification)
    assert cams.model(CAMERA, 1024, 768) is not None
    assert f"camera_info_refused {CAMERA}" not in cams.diagnostics()
    assert cams.model(CAMERA, 1024, 768) == cams.model(CAMERA)


def test_non_finite_camera_info_is_refused():
    cams = inputs()
    cams.on_info(info(1024, 768, d=(math.nan, 0.0, 0.0, 0.0, 0.0)), CAMERA)
    assert cams.model(CAMERA) is None
    d = cams.diagnostics()
    assert d["camera_info_refused"] == 1 and "non-finite" in d[f"camera_info_refused {CAMERA}"]
    bad_k = info(1024, 768)
    bad_k.k[0] = math.inf
    cams.on_info(bad_k, CAMERA)
    assert cams.model(CAMERA) is None and cams.counts["camera_info_refused"] == 2
    cams.on_info(info(1024, 768), CAMERA)
    assert cams.model(CAMERA, 1024, 768) is not None and f"camera_info_refused {CAMERA}" not in cams.diagnostics()


def test_the_node_names_a_camera_info_that_does_not_fit_in_diagnostics(rclpy_context):
    from pathlib import Path

    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from geoloc_ros.replay import Harness, InProcessNode, image_message

    bundled = Path(__file__).resolve().parents[1] / "maps" / "nordland_demo"
    n = InProcessNode(rclpy_context, {"map_path": [str(bundled)], "device": "cpu", "diagnostics_period_s": 0.2})
    h = Harness(rclpy_context)
    try:
        assert n.active, n.node.last_error
        pub = h.node.create_publisher(CameraInfo, "/camera/camera_info",
                                      QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        assert h.wait_for_subscriber() and h.wait_for(lambda: pub.get_subscription_count() > 0, timeout=10)
        pub.publish(info(100000, 10, d=(0.1, 0.0, 0.0, 0.0, 0.0)))
        assert h.wait_for(lambda: n.node._cameras.model(CAMERA) is not None, timeout=10)
        rgb = np.random.default_rng(0).integers(0, 256, (768, 1024, 3), dtype=np.uint8)
        h.publish(image_message(rgb, 1_700_000_000 * 10**9))
        assert h.wait_for(lambda: "camera_info_size_mismatch" in h.diag_values(), timeout=20), h.diag_values()
        d = h.diag_values()
        assert d["camera_info_size_mismatch"] == "1" and "1024x768" in d[f"camera_info_refused {CAMERA}"], d
        assert d["frames_processed"] == "1"  # the frame itself is localised, only without that camera model
        pub.publish(info(1024, 768, d=(math.nan,) * 5))
        assert h.wait_for(lambda: "camera_info_refused" in h.diag_values(), timeout=20), h.diag_values()
        assert "non-finite" in h.diag_values()[f"camera_info_refused {CAMERA}"]
    finally:
        h.close()
        n.close()
