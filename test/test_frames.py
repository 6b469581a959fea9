"""geoloc_ros.imaging.image_view: the pixels of a real rclpy sensor_msgs/Image without a copy, or None where the
checked, converting path must run."""

from array import array

import numpy as np

from geoloc_ros.imaging import image_view, message_to_rgb
from geoloc_ros.replay import image_message


def test_rgb8_is_a_view_of_the_message_buffer():
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    msg = image_message(rgb, 1)
    view = image_view(msg)
    np.testing.assert_array_equal(view, message_to_rgb(msg))
    msg.data[0] = (int(msg.data[0]) + 1) % 256                  # the same memory, not a copy
    assert view[0, 0, 0] == msg.data[0]


def test_mono8_view_and_the_cases_left_to_the_checked_path():
    grey = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)
    msg = image_message(np.dstack([grey] * 3), 1)
    msg.encoding, msg.step, msg.data = "mono8", 64, array("B", grey.tobytes())
    assert image_view(msg).shape == (48, 64)
    msg.step = 72                                                # row padding: needs the strided copy
    assert image_view(msg) is None
    msg.step, msg.data = 64, array("B", grey.tobytes()[:-1])     # short data: the checked path names the fault
    assert image_view(msg) is None
    msg.encoding = "bgr8"                                        # needs a channel swap
    assert image_view(msg) is None


def test_the_node_views_rgb8_in_place_and_still_checks_it():
    """messages.pixels: an unpadded rgb8 frame is used in place, with the size and blank checks of the converting
    path; mono8 (and anything else) is converted."""
    import pytest

    from geoloc_ros.imaging import FrameError
    from geoloc_ros.node.messages import pixels

    rgb = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    msg = image_message(rgb, 1)
    out = pixels(msg, 3.0)
    np.testing.assert_array_equal(out, rgb)
    assert np.shares_memory(out, np.frombuffer(msg.data, dtype=np.uint8))
    with pytest.raises(FrameError) as e:
        pixels(image_message(np.full((48, 64, 3), 7, np.uint8), 2), 3.0)
    assert e.value.kind == "blank"
    with pytest.raises(FrameError) as e:
        pixels(msg, 3.0, max_pixels=100)
    assert e.value.kind == "too_large"
    mono = pixels(image_message(rgb, 3, encoding="mono8"), 3.0)
    assert mono.shape == (48, 64, 3) and not np.shares_memory(mono, rgb)
