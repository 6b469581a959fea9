"""sensor_msgs/Image and CompressedImage -> HxWx3 uint8 RGB, refusing bad frames with a reason.

cv_bridge is on no registry reachable here, so raw images are viewed with numpy (honouring `step`, which
rosbags-image's `image_to_cvimage` ignores, and checking sizes, which it trusts) and their colour and depth are
converted with rosbags-image's `convert_color` (the maintained table of ROS encodings -> OpenCV conversions).
Compressed images are decoded with OpenCV directly, because rosbags-image asserts instead of raising on corrupt
bytes. Works on rclpy messages and on rosbags message objects alike (same field names).
"""

from __future__ import annotations

import numpy as np

# Encodings the node accepts (issue 5); anything else is refused by name rather than guessed.
RAW_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 1}
BYTES_PER_CHANNEL = {"rgb8": 1, "bgr8": 1, "rgba8": 1, "bgra8": 1, "mono8": 1, "mono16": 2}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")


class FrameError(ValueError):
    """A frame the node cannot use. `kind` is the diagnostics counter it lands in: 'encoding' (unsupported
    encoding or format), 'corrupt' (sizes disagree, undecodable bytes), 'empty' (zero-size), 'blank' (uniform)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image -> HxWx3 uint8 RGB (a copy; the message buffer may be reused)."""
    from rosbags.image.image import convert_color

    enc = (msg.encoding or "").lower()
    if enc not in RAW_ENCODINGS:
        raise FrameError("encoding", f"unsupported encoding {msg.encoding!r} (accepted: {', '.join(RAW_ENCODINGS)})")
    h, w = int(msg.height), int(msg.width)
    if h == 0 or w == 0:
        raise FrameError("empty", f"zero-size image {w}x{h}")
    channels, depth = RAW_ENCODINGS[enc], BYTES_PER_CHANNEL[enc]
    row = w * channels * depth
    step = int(msg.step)
    data = np.frombuffer(memoryview(msg.data).cast("B") if not isinstance(msg.data, np.ndarray) else msg.data,
                         dtype=np.uint8)
    if step < row:
        raise FrameError("corrupt", f"step {step} is shorter than a row of {w} {enc} pixels ({row} bytes)")
    if data.size < step * (h - 1) + row:
        raise FrameError("corrupt", f"{data.size} data bytes, {enc} {w}x{h} with step {step} needs "
                                    f"{step * (h - 1) + row}")
    rows = np.lib.stride_tricks.as_strided(data, shape=(h, row), strides=(step, 1))
    dtype = np.dtype(">u2" if msg.is_bigendian else "<u2") if depth == 2 else np.uint8
    img = np.ascontiguousarray(rows).view(dtype).reshape((h, w) if channels == 1 else (h, w, channels))
    if depth == 2:
        img = img.astype(np.uint16, copy=False)
    return np.ascontiguousarray(convert_color(img, enc, "rgb8"))


def compressed_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png, as image_transport's compressed plugin writes it: the format
    string may be 'jpeg', 'rgb8; jpeg compressed bgr8', ...) -> HxWx3 uint8 RGB."""
    import cv2

    fmt = (msg.format or "").lower()
    if not any(f in fmt for f in COMPRESSED_FORMATS):
        raise FrameError("encoding", f"unsupported compressed format {msg.format!r} (accepted: jpeg, png)")
    data = np.frombuffer(memoryview(msg.data).cast("B") if not isinstance(msg.data, np.ndarray) else msg.data,
                         dtype=np.uint8)
    if data.size == 0:
        raise FrameError("empty", "compressed image with no data")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise FrameError("corrupt", f"{data.size} bytes of {msg.format!r} could not be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def message_to_rgb(msg, blank_threshold: float = 0.0) -> np.ndarray:
    """Either message type -> RGB. With `blank_threshold` > 0, uniform frames (lens cap, dropped video, the blank
    frames of the Nordland recording) are refused as 'blank': their grey levels span less than the threshold from
    the 5th to the 95th percentile. A percentile spread, not the standard deviation, because blank frames often
    carry a few stray bright pixels. Their descriptors match every other blank frame, so they can only mislead."""
    img = compressed_to_rgb(msg) if hasattr(msg, "format") else image_to_rgb(msg)
    if blank_threshold > 0.0:
        small = img[:: max(1, img.shape[0] // 128), :: max(1, img.shape[1] // 128)]
        lo, hi = np.percentile(small.mean(axis=2), (5, 95))
        if hi - lo < blank_threshold:
            raise FrameError("blank", f"blank frame (grey levels span {hi - lo:.1f} < {blank_threshold} from the "
                                      f"5th to the 95th percentile)")
    return img


def rgb_to_image_fields(rgb: np.ndarray, encoding: str = "rgb8") -> dict:
    """Fields of a sensor_msgs/Image holding `rgb` (HxWx3 uint8) in `encoding` (rgb8, bgr8, mono8); for writers
    (the demo, the tests, the benchmark)."""
    import cv2

    if encoding == "bgr8":
        a = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif encoding == "mono8":
        a = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif encoding == "rgb8":
        a = rgb
    else:
        raise ValueError(f"cannot write encoding {encoding!r}")
    a = np.ascontiguousarray(a)
    h, w = a.shape[:2]
    return {"height": h, "width": w, "encoding": encoding, "is_bigendian": 0, "step": a.strides[0],
            "data": a.reshape(-1)}
