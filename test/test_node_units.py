"""The node's helpers without a ROS graph: image conversion (every accepted encoding, padded rows, refusals),
parameter declarations vs config/vpr.yaml (consistency and fusion: test_localizer.py). Real images from
../shared/data."""

import numpy as np
import pytest
import yaml

from geoloc_ros.datasets import read_image
from geoloc_ros.node import params
from geoloc_ros.node.images import FrameError, message_to_rgb
from geoloc_ros.replay import image_message

REPO_CONFIG = params.__file__.rsplit("/geoloc_ros/", 1)[0] + "/config/vpr.yaml"


@pytest.fixture(scope="module")
def frame(shared_data):
    return read_image(shared_data / "nordland64" / "summer" / "images-19500.png")


@pytest.fixture(scope="module")
def street(shared_data):
    path = sorted((shared_data / "toy_streets").rglob("*.jpg"))[0]
    return read_image(path)


def test_raw_encodings_round_trip(frame):
    import cv2

    for enc in ("rgb8", "bgr8"):
        assert np.array_equal(message_to_rgb(image_message(frame, 1, encoding=enc)), frame)
    grey = message_to_rgb(image_message(frame, 1, encoding="mono8"))
    assert grey.shape == frame.shape and np.array_equal(grey[..., 0], cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
    # rgba8 / bgra8 / mono16 (little and big endian), written by hand
    msg = image_message(frame, 1)
    rgba = np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])
    msg.encoding, msg.step, msg.data = "rgba8", rgba.shape[1] * 4, rgba.tobytes()
    assert np.array_equal(message_to_rgb(msg), frame)
    msg.encoding, msg.data = "bgra8", np.ascontiguousarray(rgba[..., [2, 1, 0, 3]]).tobytes()
    assert np.array_equal(message_to_rgb(msg), frame)
    g16 = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    for big in (0, 1):
        msg.encoding, msg.step, msg.is_bigendian = "mono16", g16.shape[1] * 2, big
        msg.data = g16.astype(">u2" if big else "<u2").tobytes()
        out = message_to_rgb(msg)
        assert out.dtype == np.uint8 and np.abs(out[..., 0].astype(int) - g16 // 257).max() <= 1


def test_padded_rows_are_honoured(frame):
    h, w, _ = frame.shape
    padded = np.zeros((h, w * 3 + 13), np.uint8)
    padded[:, : w * 3] = frame.reshape(h, -1)
    msg = image_message(frame, 1)
    msg.step, msg.data = w * 3 + 13, padded.tobytes()
    assert np.array_equal(message_to_rgb(msg), frame)


def test_compressed_jpeg_and_png(street):
    import cv2
    from sensor_msgs.msg import CompressedImage

    for fmt, ext in (("jpeg", ".jpg"), ("rgb8; png compressed bgr8", ".png")):
        ok, buf = cv2.imencode(ext, cv2.cvtColor(street, cv2.COLOR_RGB2BGR))
        out = message_to_rgb(CompressedImage(format=fmt, data=buf.tobytes()))
        assert out.shape == street.shape and np.abs(out.astype(int) - street).mean() < 3


@pytest.mark.parametrize("case,kind", [("unknown_encoding", "encoding"), ("zero_size", "empty"),
                                       ("short_step", "corrupt"), ("short_data", "corrupt"),
                                       ("corrupt_jpeg", "corrupt"), ("unknown_format", "encoding"),
                                       ("blank", "blank")])
def test_bad_frames_are_refused_with_a_kind(case, kind, frame, shared_data):
    from sensor_msgs.msg import CompressedImage

    msg = image_message(frame, 1)
    if case == "unknown_encoding":
        msg.encoding = "yuv422"
    elif case == "zero_size":
        msg.height = msg.width = msg.step = 0
        msg.data = b""
    elif case == "short_step":
        msg.step = 10
    elif case == "short_data":
        msg.data = bytes(msg.data)[:100]
    elif case == "corrupt_jpeg":
        msg = CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    elif case == "unknown_format":
        msg = CompressedImage(format="webp", data=b"RIFF")
    elif case == "blank":  # a real blank frame of the recording
        msg = image_message(read_image(shared_data / "nordland64" / "summer" / "images-00010.png"), 1)
    with pytest.raises(FrameError) as e:
        message_to_rgb(msg, blank_threshold=3.0)
    assert e.value.kind == kind


def test_config_file_lists_every_parameter_with_its_default():
    cfg = yaml.safe_load(open(REPO_CONFIG))["/**/geoloc_vpr"]["ros__parameters"]
    assert cfg == params.defaults()
    names = [p.name for p in params.PARAMETERS]
    for required in ("map_path", "encoder_path", "encoder_backend", "device", "half_precision", "image_topics",
                     "top_k", "min_similarity", "autostart"):
        assert required in names
    assert len(names) == len(set(names))
