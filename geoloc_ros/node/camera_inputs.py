"""Per camera: its camera model (sensor_msgs/CameraInfo) and an optional aligned depth image, held for the worker.

CameraInfo topic of an image topic, the rule `geoloc map build` uses for bags (docs/maps.md): image_transport's
sibling `<namespace>/camera_info` of `<namespace>/image_raw`, and `<image_topic>/camera_info`; the node listens
on both (a message on the sibling wins) unless `camera_info_topics` names the topic. The latest calibrated
CameraInfo is the camera's model; an uncalibrated one (K all zero) or one with non-finite values is ignored and
shown in /diagnostics. A model is used for a frame of its own size, or of a size with its aspect ratio (binning,
a resized stream: the model is scaled); a CameraInfo whose size does not fit the frames (100000x10 for 1024x768
frames) is refused for them, counted and named in /diagnostics, rather than stretched to fit.

Depth (`depth_topics`, sensor_msgs/Image 16UC1 millimetres or 32FC1 metres): the newest few messages are kept,
undecoded; a colour frame takes the one whose stamp is nearest its own, within `depth_tolerance_s`, else none.
"""

from __future__ import annotations

from collections import Counter, deque
import threading

import numpy as np

from geoloc_ros.node.images import FrameError
from geoloc_ros.stamps import stamp_ns

DEPTH_KEPT = 4  # depth messages kept per camera: a colour frame and its depth arrive in either order
TRANSPORTS = ("/compressed", "/theora", "/zstd")
DEPTH_ENCODINGS = {"16UC1": "u2", "mono16": "u2", "32FC1": "f4"}
ASPECT_TOLERANCE = 0.02  # relative difference of width/height scale factors still taken as one resize


def camera_info_topics(image_topic: str) -> list[str]:
    """The CameraInfo topics of an image topic: `<namespace>/camera_info`, then `<image_topic>/camera_info`."""
    base = image_topic
    for suffix in TRANSPORTS:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return list(dict.fromkeys([base.rsplit("/", 1)[0] + "/camera_info", base + "/camera_info"]))


def decode_depth(msg) -> np.ndarray:
    """sensor_msgs/Image 16UC1 (mm) -> HxW uint16, 32FC1 (m) -> HxW float32; FrameError when unusable."""
    kind = DEPTH_ENCODINGS.get(msg.encoding)
    if kind is None:
        raise FrameError("depth_encoding", f"depth encoding {msg.encoding!r}: expected 16UC1 (millimetres) or "
                                           f"32FC1 (metres)")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = int(kind[1])
    data = np.frombuffer(memoryview(msg.data).cast("B") if not isinstance(msg.data, np.ndarray) else msg.data,
                         dtype=np.uint8)
    if h == 0 or w == 0 or step < w * itemsize or data.size < step * (h - 1) + w * itemsize:
        raise FrameError("depth_corrupt", f"depth image {w}x{h}, step {step}, {data.size} bytes does not fit")
    rows = np.lib.stride_tricks.as_strided(data, shape=(h, w * itemsize), strides=(step, 1))
    dtype = np.dtype((">" if msg.is_bigendian else "<") + kind)
    return np.ascontiguousarray(rows).view(dtype).reshape(h, w).astype(dtype.newbyteorder("="), copy=False)


def model_problem(model) -> str | None:
    """Why a PinholeCamera from a CameraInfo cannot be used (non-finite or non-positive values), or None."""
    values = (model.fx, model.fy, model.cx, model.cy, *model.distortion)
    if not all(np.isfinite(v) for v in values):
        return f"CameraInfo has non-finite values (K {model.fx}, {model.fy}, {model.cx}, {model.cy}; " \
               f"D {list(model.distortion)})"
    if model.fx <= 0 or model.fy <= 0:
        return f"CameraInfo focal lengths {model.fx}, {model.fy} are not positive"
    if (model.width or 0) < 0 or (model.height or 0) < 0:
        return f"CameraInfo size {model.width}x{model.height} is negative"
    return None


def size_problem(model, width: int, height: int) -> str | None:
    """None when a model of CameraInfo size model.width x model.height describes frames of width x height: the
    same size, no size given (0x0), or a resize keeping the aspect ratio; else why not."""
    if not model.width or not model.height or (model.width, model.height) == (width, height):
        return None
    sx, sy = width / model.width, height / model.height
    if abs(sx - sy) <= ASPECT_TOLERANCE * max(sx, sy):
        return None
    return (f"CameraInfo is {model.width}x{model.height} but the frames are {width}x{height}, not a resize of it "
            f"(scale {sx:.4g} x {sy:.4g}); frames go unverified by camera geometry until it matches")


class CameraInputs:
    """Camera models and depth messages per camera (keyed by its raw image topic, like the frames)."""

    def __init__(self, settings):
        tops = settings.image_topics
        info = settings.camera_info_topics if any(settings.camera_info_topics) else [""] * len(tops)
        depth = settings.depth_topics if any(settings.depth_topics) else [""] * len(tops)
        self.info_topics = {t: ([i] if i else camera_info_topics(t)) for t, i in zip(tops, info)}
        self.depth_topics = {t: d for t, d in zip(tops, depth) if d}
        self.tolerance_ns = int(settings.depth_tolerance_s * 1e9)
        self.counts = Counter()
        self._models = {}  # camera -> (priority: 0 best, PinholeCamera)
        self._problems = {}  # camera -> why its CameraInfo is not used
        self._mismatch = {}  # camera -> why its CameraInfo does not fit its latest frame
        self._depth = {t: deque(maxlen=DEPTH_KEPT) for t in self.depth_topics}
        self._lock = threading.Lock()

    def subscribe(self, create) -> None:
        """The CameraInfo and depth subscriptions, made by `create(kind, topic, callback)` (the camera intake's
        `subscribe_camera`: the images' thread and QoS)."""
        from sensor_msgs.msg import CameraInfo, Image

        for camera, topics in self.info_topics.items():
            for priority, topic in enumerate(topics):
                create(CameraInfo, topic, lambda m, c=camera, p=priority: self.on_info(m, c, p))
        for camera, topic in self.depth_topics.items():
            create(Image, topic, lambda m, c=camera: self.on_depth(m, c))

    # -- callbacks (executor thread) ---------------------------------------------------------------------------
    def on_info(self, msg, camera: str, priority: int = 0):
        from geoloc_ros.geometry import PinholeCamera

        held = self._models.get(camera)
        if held is not None and held[0] < priority:
            return  # the sibling <namespace>/camera_info is publishing: it wins
        try:
            model = PinholeCamera.from_camera_info(msg)
            problem = model_problem(model)
        except (ValueError, TypeError, OverflowError) as e:
            problem = str(e)
        if problem is not None:
            self.counts["camera_info_refused"] += 1
            self._problems[camera] = problem
            return
        self._problems.pop(camera, None)
        self._models[camera] = (priority, model)

    def on_depth(self, msg, camera: str):
        with self._lock:
            self._depth[camera].append((stamp_ns(msg.header.stamp), msg))

    # -- the worker --------------------------------------------------------------------------------------------
    def model(self, camera: str, width: int | None = None, height: int | None = None):
        """The camera's model, or None; with a frame size, None also when the model's size does not fit it
        (`size_problem`: counted and named in /diagnostics)."""
        held = self._models.get(camera)
        if held is None:
            return None
        if width is not None and height is not None:
            problem = size_problem(held[1], width, height)
            if problem is not None:
                self.counts["camera_info_size_mismatch"] += 1
                self._mismatch[camera] = problem
                return None
            self._mismatch.pop(camera, None)
        return held[1]

    def depth_for(self, camera: str, stamp: int):
        """The decoded depth image paired with a colour frame of `camera` stamped `stamp`, or None."""
        if camera not in self._depth:
            return None
        with self._lock:
            kept = list(self._depth[camera])
        near = min(kept, key=lambda d: abs(d[0] - stamp), default=None)
        if near is None or abs(near[0] - stamp) > self.tolerance_ns:
            self.counts["depth_unpaired"] += 1
            return None
        try:
            return decode_depth(near[1])
        except FrameError as e:
            self.counts[e.kind] += 1  # depth_encoding, depth_corrupt
            return None

    def diagnostics(self) -> dict:
        """/diagnostics values: cameras without a usable CameraInfo (no relative pose can be computed for them)."""
        missing = [c for c in self.info_topics if c not in self._models]
        out = {"camera_info_missing": ", ".join(missing) or "none"}
        out.update({f"camera_info_refused {c}": why for c, why in {**self._mismatch, **self._problems}.items()})
        out.update(self.counts)
        return out
