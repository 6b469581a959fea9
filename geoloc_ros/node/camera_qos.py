"""The reliability of the camera subscriptions (image_qos). `auto` (the default) follows the publishers, as
`ros2 bag record` chooses: reliable while every publisher of the topic offers reliable (or none is there yet),
best effort as soon as one offers best effort (a reliable subscription never matches it). Each topic is re-checked
every RECHECK_S against the ROS graph (get_publishers_info_by_topic), so publishers that come and go are followed;
a change replaces that topic's subscription and is counted. `reliable`, `sensor_data` and `system_default` fix the
profile instead.

Why not best effort always (REP 2003 has consumers subscribe with the sensor-data profile): with the Fast DDS of
the PyPI wheels a best-effort subscription loses most camera-sized frames, even from a reliable publisher, while
reliable to reliable loses none (docs/node.md, "Camera QoS")."""

from __future__ import annotations

from collections import Counter
import threading

from geoloc_ros.node import params

RECHECK_S = 1.0  # how often `auto` compares each topic's publishers with its subscription
RELIABLE, BEST_EFFORT = "reliable", "best_effort"


def auto_reliability(offered) -> str:
    """The `auto` choice for publishers offering `offered` (rclpy ReliabilityPolicy values or their names):
    best effort when any publisher is best effort, else reliable (also with no publisher)."""
    return BEST_EFFORT if any(getattr(r, "name", str(r)).upper() == "BEST_EFFORT" for r in offered) else RELIABLE


class CameraSubscriptions:
    """The subscriptions of one node whose profile image_qos decides. `create` subscribes; with `auto`, a timer
    on `node` re-subscribes a topic whose publishers changed what it should be (`on_change(key, reliability)`
    is told). Thread-safe against `diagnostics` from another thread."""

    def __init__(self, node, image_qos, on_change=None, recheck_s: float = RECHECK_S):
        """`image_qos`: an image_qos word, or a QoSProfile every subscription takes as it is."""
        self._fixed = params.image_qos_profile(image_qos) if isinstance(image_qos, str) else image_qos
        self.node, self.on_change = node, on_change
        self.image_qos = image_qos if isinstance(image_qos, str) else "profile"
        self.changes = Counter()  # key -> re-subscriptions
        self._lock = threading.Lock()
        self._subs = {}  # key -> [kind, resolved topic, callback, event_callbacks, reliability, subscription]
        self._timer = node.create_timer(recheck_s, self.recheck) if image_qos == "auto" else None

    def profile(self, reliability: str | None):
        if self.image_qos != "auto":
            return self._fixed
        return params.image_qos_profile("sensor_data" if reliability == BEST_EFFORT else "reliable")

    def offered(self, topic: str) -> str:
        return auto_reliability(i.qos_profile.reliability for i in self.node.get_publishers_info_by_topic(topic))

    def create(self, key: str, kind, topic: str, callback, event_callbacks=None):
        """Subscribe `callback` to `topic` (resolved) under `key` (the name diagnostics show)."""
        reliability = self.offered(topic) if self.image_qos == "auto" else None
        sub = self.node.create_subscription(kind, topic, callback, self.profile(reliability),
                                            event_callbacks=event_callbacks)
        with self._lock:
            self._subs[key] = [kind, topic, callback, event_callbacks, reliability, sub]
        return sub

    def recheck(self) -> list[str]:
        """`auto`: re-subscribe every topic whose publishers call for the other reliability; the keys changed."""
        changed = []
        with self._lock:
            entries = list(self._subs.items())
        for key, entry in entries:
            kind, topic, callback, events, reliability, sub = entry
            want = self.offered(topic)
            if want == reliability:
                continue
            self.node.destroy_subscription(sub)
            fresh = self.node.create_subscription(kind, topic, callback, self.profile(want), event_callbacks=events)
            with self._lock:
                entry[4], entry[5] = want, fresh
                self.changes[key] += 1
            changed.append(key)
            if self.on_change is not None:
                self.on_change(key, want)
        return changed

    def reliability(self, key: str) -> str | None:
        """What `key` subscribes with now: 'reliable' or 'best_effort' (`auto`), else None."""
        with self._lock:
            entry = self._subs.get(key)
        return entry[4] if entry is not None else None

    def diagnostics(self) -> dict:
        """/diagnostics values: image_qos, and with `auto` each topic's current choice and the re-subscriptions."""
        out = {"image_qos": self.image_qos}
        if self.image_qos != "auto":
            return out
        with self._lock:
            out.update({f"image_qos {key}": entry[4] for key, entry in self._subs.items()})
            out["image_qos_changes"] = sum(self.changes.values())
        return out

    def close(self):
        if self._timer is not None:
            self.node.destroy_timer(self._timer)
            self._timer = None
