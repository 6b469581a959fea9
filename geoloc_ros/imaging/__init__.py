"""Camera images without ROS: sensor_msgs/Image and CompressedImage (rclpy or rosbags objects, same field names)
to numpy RGB, refusing unusable frames with a reason. Used by the node, map building, training data and closure
evaluation alike.

- `buffers`: the message's bytes as numpy without a copy; the zero-copy view of unpadded rgb8/mono8 frames.
- `checks`: `FrameError` and the checks that raise it: the size limit and the one blank-frame rule.
- `convert`: decoding (raw encodings, JPEG/PNG, depth) and the fields of an Image holding an RGB array.
"""

from geoloc_ros.imaging.buffers import image_view, message_bytes
from geoloc_ros.imaging.checks import MAX_IMAGE_PIXELS, FrameError, check_blank, check_size, grey_spread, is_blank
from geoloc_ros.imaging.convert import (
    compressed_size,
    compressed_to_rgb,
    decode_depth,
    image_to_rgb,
    message_to_rgb,
    mono16_to_8,
    rgb_to_image_fields,
)

__all__ = [
    "MAX_IMAGE_PIXELS", "FrameError", "check_blank", "check_size", "compressed_size", "compressed_to_rgb",
    "decode_depth", "grey_spread", "image_to_rgb", "image_view", "is_blank", "message_bytes", "message_to_rgb",
    "mono16_to_8", "rgb_to_image_fields",
]
