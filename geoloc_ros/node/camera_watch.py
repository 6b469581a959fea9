"""Why a camera topic delivers nothing, for /diagnostics: a publisher is there but no frame has come for
`no_frames_warn_s`, or a publisher's QoS cannot match the subscription's (rclpy's incompatible-QoS event).

Both are silent otherwise: DDS neither connects incompatible endpoints nor reports lost best-effort samples, so a
node that "listens" can look healthy while the camera it listens to never reaches it."""

from __future__ import annotations

import threading
import time


class CameraWatch:
    def __init__(self, topics, warn_after_s: float, image_qos: str):
        now = time.monotonic()
        self.warn_after_s = warn_after_s
        self.image_qos = image_qos
        self._lock = threading.Lock()
        self._last = {t: now for t in topics}  # last frame, or the subscription's creation
        self._incompatible = {}  # topic -> the QoS policy that did not match

    def on_frame(self, topic: str) -> None:
        with self._lock:
            self._last[topic] = time.monotonic()
            self._incompatible.pop(topic, None)

    def on_incompatible_qos(self, topic: str, event) -> str:
        """Record rclpy's QoSRequestedIncompatibleQoSInfo for `topic`; returns the warning to log."""
        from rclpy.qos import QoSPolicyKind

        kind = event.last_policy_kind
        policy = kind.name if isinstance(kind, QoSPolicyKind) else QoSPolicyKind(int(kind)).name
        with self._lock:
            self._incompatible[topic] = policy
        return self._incompatible_text(topic, policy)

    def _incompatible_text(self, topic, policy) -> str:
        hint = ("set image_qos:=sensor_data (the publisher is best effort; a reliable subscription never matches it)"
                if policy == "RELIABILITY" and self.image_qos == "reliable"
                else "match the publisher's QoS with image_qos (sensor_data, reliable or system_default)")
        return f"{topic}: a publisher's QoS is incompatible with image_qos {self.image_qos} ({policy}): {hint}"

    def warnings(self, count_publishers, now: float | None = None) -> list[str]:
        """One line per camera topic that has publishers (`count_publishers(topic)` > 0) but delivers nothing;
        none at all when the watch is off (no_frames_warn_s 0)."""
        if self.warn_after_s <= 0:
            return []
        now = time.monotonic() if now is None else now
        out = []
        with self._lock:
            last, incompatible = dict(self._last), dict(self._incompatible)
        for topic, t in last.items():
            publishers = count_publishers(topic)
            if publishers == 0:
                continue  # no camera yet: nothing is wrong with the connection
            if topic in incompatible:
                out.append(self._incompatible_text(topic, incompatible[topic]))
            elif now - t >= self.warn_after_s:
                out.append(f"{topic}: {publishers} publisher(s) but no frame for {now - t:.0f} s (image_qos "
                           f"{self.image_qos}; a best-effort camera needs image_qos:=sensor_data, and large "
                           f"best-effort frames from another process can be lost: docs/node.md, Camera QoS)")
        return out
