"""Camera frames: decoded size read from the PNG/JPEG header and refused before decoding; mono16 scaled by
its real range (12-bit data, 8-bit data in 16 bits) or by mono16_max; the one blank-frame rule."""

import resource
import struct

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage

from geoloc_ros.datasets import read_image
from geoloc_ros.imaging import FrameError, compressed_size, is_blank, message_to_rgb
from geoloc_ros.replay import image_message

SIDE = 30000  # 30000 x 30000 = 900 MP: 2.7 GB as RGB once decoded


def jpeg_header(width: int, height: int) -> bytes:
    """SOI + a baseline SOF0 marker declaring width x height, 3 components, then SOS: all a decoder needs to
    allocate the image."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"".join(bytes([i, 0x11, 0]) for i in (1, 2, 3))
    sos = struct.pack(">B", 3) + b"".join(bytes([i, 0]) for i in (1, 2, 3)) + bytes([0, 63, 0])
    return (b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof
            + b"\xff\xda" + struct.pack(">H", len(sos) + 2) + sos + b"\0" * 1000 + b"\xff\xd9")


def test_png_bomb_is_refused_from_its_header(png_bomb):
    assert compressed_size(png_bomb) == (SIDE, SIDE, "PNG")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(FrameError) as e:
        message_to_rgb(CompressedImage(format="png", data=png_bomb), max_pixels=40_000_000)
    assert e.value.kind == "too_large" and "30000x30000" in str(e.value)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 500_000  # decoding would take 2.7 GB; the header check allocates nothing of the sort


def test_jpeg_header_size_is_checked_and_small_frames_pass(shared_data):
    assert compressed_size(jpeg_header(SIDE, SIDE))[:2] == (SIDE, SIDE)
    with pytest.raises(FrameError) as e:
        message_to_rgb(CompressedImage(format="jpeg", data=jpeg_header(SIDE, SIDE)))  # default limit: 40 MP
    assert e.value.kind == "too_large"
    street = read_image(sorted((shared_data / "toy_streets").rglob("*.jpg"))[0])
    ok, buf = cv2.imencode(".jpg", street)
    h, w = street.shape[:2]
    with pytest.raises(FrameError, match="too_large|more than max_image_pixels"):
        message_to_rgb(CompressedImage(format="jpeg", data=buf.tobytes()), max_pixels=h * w - 1)
    assert message_to_rgb(CompressedImage(format="jpeg", data=buf.tobytes()), max_pixels=h * w).shape == (h, w, 3)


def test_raw_frame_size_is_checked_before_its_data():
    msg = image_message(np.zeros((4, 4, 3), np.uint8), 1)
    msg.height = msg.width = SIDE
    msg.step = SIDE * 3
    with pytest.raises(FrameError) as e:
        message_to_rgb(msg)
    assert e.value.kind == "too_large"


def mono16_message(values: np.ndarray):
    msg = image_message(np.zeros((*values.shape, 3), np.uint8), 1)
    msg.encoding, msg.step, msg.is_bigendian = "mono16", values.shape[1] * 2, 0
    msg.data = values.astype("<u2").tobytes()
    return msg


def test_mono16_is_scaled_by_its_real_range(shared_data):
    grey = cv2.cvtColor(read_image(shared_data / "nordland64" / "summer" / "images-19500.png"), cv2.COLOR_RGB2GRAY)
    assert grey.max() > 200
    twelve_bit = grey.astype(np.uint16) * 16  # 0..4080, as a 12-bit sensor writes it
    out = message_to_rgb(mono16_message(twelve_bit), blank_threshold=3.0)[..., 0]
    assert np.abs(out.astype(int) - grey).max() <= 1  # not the high byte (which would be grey // 16: dark)
    eight_in_16 = grey.astype(np.uint16)  # 8-bit data in a 16-bit container
    out = message_to_rgb(mono16_message(eight_in_16), blank_threshold=3.0)[..., 0]  # not refused as blank
    assert np.array_equal(out, grey)
    # A fixed scale (mono16_max) for a 12-bit sensor even when a hot pixel reads 65535
    hot = twelve_bit.copy()
    hot[0, 0] = 65535
    fixed = message_to_rgb(mono16_message(hot), mono16_max=4095)[..., 0]
    assert np.abs(fixed[1:].astype(int) - grey[1:]).max() <= 1 and fixed[0, 0] == 255


def test_one_blank_rule(shared_data):
    blank = read_image(shared_data / "nordland64" / "summer" / "images-00010.png")  # a blank frame of the recording
    scene = read_image(shared_data / "nordland64" / "summer" / "images-19500.png")
    assert is_blank(blank) and not is_blank(scene)
    with pytest.raises(FrameError) as e:
        message_to_rgb(image_message(blank, 1), blank_threshold=3.0)
    assert e.value.kind == "blank"


def test_blank_rule_histogram_path_equals_the_percentile_definition(shared_data):
    """grey_spread's fast path for uint8 RGB (a histogram of channel sums) gives what its definition says: the
    5th..95th percentile span of the channel mean, on Nordland frames (blank ones included), camera-sized frames and
    edge cases (one pixel, uniform, extremes)."""
    from geoloc_ros.imaging import grey_spread

    def definition(img):
        small = img[:: max(1, img.shape[0] // 128), :: max(1, img.shape[1] // 128)]
        lo, hi = np.percentile(small.mean(axis=2), (5, 95))
        return float(hi - lo)

    rng = np.random.default_rng(0)
    frames = [read_image(shared_data / "nordland64" / s / f"images-{i:05d}.png")
              for s in ("summer", "winter") for i in (10, 20, 5000, 19500)]
    frames += [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), np.zeros((1, 1, 3), np.uint8),
               np.full((720, 1280, 3), 255, np.uint8), np.full((37, 53, 3), 7, np.uint8),
               cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (640, 480))]
    for img in frames:
        assert grey_spread(img) == pytest.approx(definition(img), abs=1e-9)
