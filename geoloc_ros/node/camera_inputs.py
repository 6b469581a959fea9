"""Per camera: its camera model (sensor_msgs/CameraInfo) and an optional aligned depth image, held for the worker.

CameraInfo topic of an image topic, the rule `geoloc map build` uses for bags (docs/maps.md): image_transport's
sibling `<namespace>/camera_info` of `<namespace>/image_raw`, and `<image_topic>/camera_info`; the node listens
on both (a message on the sibling wins) unless `camera_info_topics` names the topic. The latest calibrated
CameraInfo is the camera's model; an uncalibrated one (K all zero) is ignored and shown in /diagnostics.

Depth (`depth_topics`, sensor_msgs/Image 16UC1 millimetres or 32FC1 metres): the newest few messages are kept,
undecoded; a colour frame takes the one whose stamp is nearest its own, within `depth_tolerance_s`, else none.
"""

from __future__ import annotations

from collections import Counter, deque
import threading

from geoloc_ros.imaging import FrameError, decode_depth
from geoloc_ros.stamps import stamp_ns

DEPTH_KEPT = 4  # depth messages kept per camera: a colour frame and its depth arrive in either order
TRANSPORTS = ("/compressed", "/theora", "/zstd")


def camera_info_topics(image_topic: str) -> list[str]:
    """The CameraInfo topics of an image topic: `<namespace>/camera_info`, then `<image_topic>/camera_info`."""
    base = image_topic
    for suffix in TRANSPORTS:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return list(dict.fromkeys([base.rsplit("/", 1)[0] + "/camera_info", base + "/camera_info"]))


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
        self._depth = {t: deque(maxlen=DEPTH_KEPT) for t in self.depth_topics}
        self._lock = threading.Lock()

    def subscribe(self, node, qos) -> list:
        """The CameraInfo and depth subscriptions on `node`, with the camera subscriptions' QoS profile `qos`."""
        from sensor_msgs.msg import CameraInfo, Image

        subs = []
        for camera, topics in self.info_topics.items():
            for priority, topic in enumerate(topics):
                subs.append(node.create_subscription(
                    CameraInfo, topic, lambda m, c=camera, p=priority: self.on_info(m, c, p), qos))
        for camera, topic in self.depth_topics.items():
            subs.append(node.create_subscription(Image, topic, lambda m, c=camera: self.on_depth(m, c), qos))
        return subs

    # -- callbacks (executor thread) ---------------------------------------------------------------------------
    def on_info(self, msg, camera: str, priority: int = 0):
        from geoloc_ros.geometry import PinholeCamera

        held = self._models.get(camera)
        if held is not None and held[0] < priority:
            return  # the sibling <namespace>/camera_info is publishing: it wins
        try:
            model = PinholeCamera.from_camera_info(msg)
        except ValueError as e:
            self._problems[camera] = str(e)
            return
        self._problems.pop(camera, None)
        self._models[camera] = (priority, model)

    def on_depth(self, msg, camera: str):
        with self._lock:
            self._depth[camera].append((stamp_ns(msg.header.stamp), msg))

    # -- the worker --------------------------------------------------------------------------------------------
    def model(self, camera: str):
        held = self._models.get(camera)
        return held[1] if held is not None else None

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
        out.update({f"camera_info_refused {c}": why for c, why in self._problems.items()})
        out.update(self.counts)
        return out
