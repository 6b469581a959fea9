"""The bytes of an image message as numpy, without a copy, for the node's hot path (docs/node.md, "Where the time
goes").

rclpy hands `data` over as an array.array (which exports its buffer), rosbags as a numpy array; `message_bytes`
reads either as one flat uint8 array. `image_view(msg)` gives the pixels of a sensor_msgs/Image as an array that
shares the message's buffer when no conversion is needed: rgb8 and mono8 rows without padding. The encoder only
reads its input (it resizes first), so a view is enough. Anything else returns None and the caller takes the
checked, converting path (geoloc_ros.imaging.message_to_rgb), which also refuses bad frames with a reason.
"""

from __future__ import annotations

import numpy as np

_VIEWABLE = {"rgb8": 3, "mono8": 1}


def message_bytes(msg) -> np.ndarray:
    """`msg.data` (of an Image or CompressedImage) as a flat uint8 array sharing its buffer."""
    data = msg.data
    return np.frombuffer(data if isinstance(data, np.ndarray) else memoryview(data).cast("B"), dtype=np.uint8)


def image_view(msg) -> np.ndarray | None:
    """HxWx3 (rgb8) or HxW (mono8) uint8 view of `msg.data`, no copy; None when a conversion or check is needed."""
    channels = _VIEWABLE.get((msg.encoding or "").lower())
    h, w = int(msg.height), int(msg.width)
    if channels is None or h == 0 or w == 0 or int(msg.step) != w * channels:
        return None
    buf = message_bytes(msg)
    if buf.size != h * w * channels:
        return None                                   # short or long data: the checked path names the fault
    return buf.reshape((h, w, channels) if channels == 3 else (h, w))
