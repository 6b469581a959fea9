"""sensor_msgs/Image and CompressedImage -> HxWx3 uint8 RGB, refusing bad frames with a reason.

cv_bridge is on no registry reachable here, so raw images are viewed with numpy (honouring `step`, which
rosbags-image's `image_to_cvimage` ignores, and checking sizes, which it trusts) and their colour and depth are
converted with rosbags-image's `convert_color` (the maintained table of ROS encodings -> OpenCV conversions).
Compressed images are decoded with OpenCV directly, because rosbags-image asserts instead of raising on corrupt
bytes. Works on rclpy messages and on rosbags message objects alike (same field names).
"""

from __future__ import annotations

import struct

import numpy as np

from geoloc_ros.imaging.buffers import message_bytes
from geoloc_ros.imaging.checks import MAX_IMAGE_PIXELS, FrameError, check_blank, check_size

# Encodings the node accepts; anything else is refused by name rather than guessed.
RAW_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 1}
BYTES_PER_CHANNEL = {"rgb8": 1, "bgr8": 1, "rgba8": 1, "bgra8": 1, "mono8": 1, "mono16": 2}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")
DEPTH_ENCODINGS = {"16UC1": "u2", "mono16": "u2", "32FC1": "f4"}  # millimetres (u2) or metres (f4)


def image_to_rgb(msg, max_pixels: int | None = MAX_IMAGE_PIXELS, mono16_max: int = 0) -> np.ndarray:
    """sensor_msgs/Image -> HxWx3 uint8 RGB (a copy; the message buffer may be reused). mono16: see mono16_to_8."""
    from rosbags.image.image import convert_color

    enc = (msg.encoding or "").lower()
    if enc not in RAW_ENCODINGS:
        raise FrameError("encoding", f"unsupported encoding {msg.encoding!r} (accepted: {', '.join(RAW_ENCODINGS)})")
    h, w = int(msg.height), int(msg.width)
    if h == 0 or w == 0:
        raise FrameError("empty", f"zero-size image {w}x{h}")
    check_size(w, h, max_pixels)
    channels, depth = RAW_ENCODINGS[enc], BYTES_PER_CHANNEL[enc]
    row = w * channels * depth
    step = int(msg.step)
    data = message_bytes(msg)
    if step < row:
        raise FrameError("corrupt", f"step {step} is shorter than a row of {w} {enc} pixels ({row} bytes)")
    if data.size < step * (h - 1) + row:
        raise FrameError("corrupt", f"{data.size} data bytes, {enc} {w}x{h} with step {step} needs "
                                    f"{step * (h - 1) + row}")
    rows = np.lib.stride_tricks.as_strided(data, shape=(h, row), strides=(step, 1))
    dtype = np.dtype(">u2" if msg.is_bigendian else "<u2") if depth == 2 else np.uint8
    img = np.ascontiguousarray(rows).view(dtype).reshape((h, w) if channels == 1 else (h, w, channels))
    if depth == 2:
        img, enc = mono16_to_8(img.astype(np.uint16, copy=False), mono16_max), "mono8"
    return np.ascontiguousarray(convert_color(img, enc, "rgb8"))


def mono16_to_8(img: np.ndarray, mono16_max: int = 0) -> np.ndarray:
    """16-bit grey -> 8 bits as value * 255 / scale. `mono16_max` > 0 is the scale (4095 for a 12-bit sensor);
    0 infers the sensor's bit depth from the frame's largest value (2**bits - 1, at least 8 bits), so 12-bit data
    fills the 8-bit range instead of keeping only its high byte (nearly black), and 8-bit data in a 16-bit
    container keeps its values instead of becoming 0 (refused as blank)."""
    scale = int(mono16_max)
    if scale <= 0:
        bits = max(8, int(img.max()).bit_length()) if img.size else 8
        scale = (1 << bits) - 1
    out = np.minimum(img.astype(np.float32) * (255.0 / scale) + 0.5, 255.0)
    return out.astype(np.uint8)


def decode_depth(msg) -> np.ndarray:
    """sensor_msgs/Image 16UC1 (mm) -> HxW uint16, 32FC1 (m) -> HxW float32; FrameError when unusable."""
    kind = DEPTH_ENCODINGS.get(msg.encoding)
    if kind is None:
        raise FrameError("depth_encoding", f"depth encoding {msg.encoding!r}: expected 16UC1 (millimetres) or "
                                           f"32FC1 (metres)")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = int(kind[1])
    data = message_bytes(msg)
    if h == 0 or w == 0 or step < w * itemsize or data.size < step * (h - 1) + w * itemsize:
        raise FrameError("depth_corrupt", f"depth image {w}x{h}, step {step}, {data.size} bytes does not fit")
    rows = np.lib.stride_tricks.as_strided(data, shape=(h, w * itemsize), strides=(step, 1))
    dtype = np.dtype((">" if msg.is_bigendian else "<") + kind)
    return np.ascontiguousarray(rows).view(dtype).reshape(h, w).astype(dtype.newbyteorder("="), copy=False)


def compressed_size(data) -> tuple[int, int, str]:
    """(width, height, 'PNG' or 'JPEG') read from the header with Pillow's PNG/JPEG readers, which parse only the
    header (IHDR, the JPEG SOF marker) until pixels are asked for: a small file that decodes to a huge image
    costs nothing. (The readers are used directly: Image.open would apply Pillow's own 178 MP limit first.)"""
    import io

    from PIL import JpegImagePlugin, PngImagePlugin

    data = bytes(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        reader, kind = PngImagePlugin.PngImageFile, "PNG"
    elif data.startswith(b"\xff\xd8"):
        reader, kind = JpegImagePlugin.JpegImageFile, "JPEG"
    else:
        raise FrameError("corrupt", f"{len(data)} bytes: neither a PNG nor a JPEG signature")
    try:
        with reader(io.BytesIO(data)) as im:
            return im.width, im.height, kind
    except (OSError, SyntaxError, ValueError, struct.error) as e:
        raise FrameError("corrupt", f"{len(data)} bytes: no readable {kind} header ({e})") from None


def compressed_to_rgb(msg, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png, as image_transport's compressed plugin writes it: the format
    string may be 'jpeg', 'rgb8; jpeg compressed bgr8', ...) -> HxWx3 uint8 RGB. The size in the header is checked
    against `max_pixels` before anything is decoded."""
    import cv2

    fmt = (msg.format or "").lower()
    if not any(f in fmt for f in COMPRESSED_FORMATS):
        raise FrameError("encoding", f"unsupported compressed format {msg.format!r} (accepted: jpeg, png)")
    data = message_bytes(msg)
    if data.size == 0:
        raise FrameError("empty", "compressed image with no data")
    width, height, kind = compressed_size(data)
    check_size(width, height, max_pixels, f"{kind} header says ")
    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10 decodes to RGB itself: no extra pass
    img = cv2.imdecode(data, cv2.IMREAD_COLOR if rgb_flag is None else rgb_flag)
    if img is None or img.size == 0:
        raise FrameError("corrupt", f"{data.size} bytes of {msg.format!r} could not be decoded")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if rgb_flag is None else img


def message_to_rgb(msg, blank_threshold: float = 0.0, max_pixels: int | None = MAX_IMAGE_PIXELS,
                   mono16_max: int = 0) -> np.ndarray:
    """Either message type -> RGB, refusing frames of more than `max_pixels` (None: no limit) before decoding,
    and with `blank_threshold` > 0 blank frames (see `grey_spread`)."""
    if hasattr(msg, "format"):
        img = compressed_to_rgb(msg, max_pixels)
    else:
        img = image_to_rgb(msg, max_pixels, mono16_max)
    check_blank(img, blank_threshold)
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
