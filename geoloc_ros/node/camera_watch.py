"""Why a camera topic delivers nothing or too little, for /diagnostics: a publisher is there but no frame has come
for `no_frames_warn_s`, a publisher's QoS cannot match the subscription's (rclpy's incompatible-QoS event), or
frames go missing on the way.

All are silent otherwise: DDS neither connects incompatible endpoints nor reports lost best-effort samples (nor
reliable ones its history overwrote), so a node that "listens" can look healthy while the camera it listens to
never reaches it. Missing frames are counted from the header stamps (`StampGaps`): a camera stamps at a steady
rate, so a gap of n periods is n - 1 frames lost between the camera and this node. An estimate: frames a driver
never published count too, and a camera without stamps or with a jittering rate counts nothing."""

from __future__ import annotations

from collections import deque
import threading
import time

import numpy as np

PROFILE_ADVICE = ("load config/fastdds_large_frames.xml in the camera's process and this one "
                  "(FASTDDS_DEFAULT_PROFILES_FILE; vpr.launch.py exports it) or publish reliable: docs/node.md, "
                  "Camera QoS")
MISSING_RECENT_S = 10.0  # frames missing within this long make /diagnostics warn


class StampGaps:
    """Frames missing from one stream, by its header stamps: a step of more than 1.5 periods is round(step /
    period) - 1 missing frames. The period is the 10th percentile of the last PERIODS steps, not their median: under
    heavy loss most steps that arrive span several periods. Steps back in time (a replay restarting, two
    publishers) restart the count; a gap of more than MAX_GAP periods (a camera paused) counts nothing."""

    PERIODS = 30
    MIN_PERIODS = 5
    MAX_GAP = 100

    def __init__(self):
        self.last = 0
        self.steps: deque = deque(maxlen=self.PERIODS)
        self.missing = 0

    def add(self, stamp_ns: int) -> int:
        """Take the next frame's stamp; the frames found missing before it."""
        if stamp_ns <= 0:
            return 0
        step, self.last = stamp_ns - self.last, stamp_ns
        if step <= 0 or step == stamp_ns:  # back in time, a repeat, or the first stamp
            if step < 0:
                self.steps.clear()
            return 0
        missing = 0
        if len(self.steps) >= self.MIN_PERIODS:
            period = float(np.percentile(self.steps, 10))
            if period > 0 and 1.5 * period < step <= self.MAX_GAP * period:
                missing = round(step / period) - 1
        self.steps.append(step)
        self.missing += missing
        return missing


class CameraWatch:
    def __init__(self, topics, warn_after_s: float, image_qos: str, reliability_of=None):
        """`reliability_of(topic)`: what image_qos `auto` subscribes `topic` with now ('reliable' or
        'best_effort'), or None."""
        now = time.monotonic()
        self.warn_after_s = warn_after_s
        self.image_qos = image_qos
        self._reliability_of = reliability_of or (lambda topic: None)
        self._lock = threading.Lock()
        self._last = {t: now for t in topics}  # last frame, or the subscription's creation
        self._incompatible = {}  # topic -> the QoS policy that did not match
        self._gaps = {t: StampGaps() for t in topics}
        self._missing_at = {}  # topic -> when frames were last found missing

    def on_frame(self, topic: str, stamp_ns: int = 0) -> None:
        now = time.monotonic()
        with self._lock:
            self._last[topic] = now
            self._incompatible.pop(topic, None)
            gaps = self._gaps.get(topic)
            if gaps is not None and gaps.add(stamp_ns):
                self._missing_at[topic] = now

    def on_qos_change(self, topic: str) -> None:
        """image_qos `auto` re-subscribed `topic`: an incompatibility seen before is gone."""
        with self._lock:
            self._incompatible.pop(topic, None)

    def on_incompatible_qos(self, topic: str, event) -> str:
        """Record rclpy's QoSRequestedIncompatibleQoSInfo for `topic`; returns the warning to log."""
        from rclpy.qos import QoSPolicyKind

        kind = event.last_policy_kind
        policy = kind.name if isinstance(kind, QoSPolicyKind) else QoSPolicyKind(int(kind)).name
        with self._lock:
            self._incompatible[topic] = policy
        return self._incompatible_text(topic, policy)

    def _best_effort(self, topic) -> bool:
        return self.image_qos == "sensor_data" or self._reliability_of(topic) == "best_effort"

    def _incompatible_text(self, topic, policy) -> str:
        if self.image_qos == "auto" and policy == "RELIABILITY":
            hint = "image_qos auto re-subscribes best effort within a second"
        elif policy == "RELIABILITY" and self.image_qos == "reliable":
            hint = ("set image_qos:=auto or sensor_data (the publisher is best effort; a reliable subscription "
                    "never matches it)")
        else:
            hint = "match the publisher's QoS with image_qos (auto, sensor_data, reliable or system_default)"
        return f"{topic}: a publisher's QoS is incompatible with image_qos {self.image_qos} ({policy}): {hint}"

    def diagnostics(self) -> dict:
        """/diagnostics values: frames missing by header stamps, in all and per topic that missed any."""
        with self._lock:
            per_topic = {t: g.missing for t, g in self._gaps.items()}
        out = {"frames_missing": sum(per_topic.values())}
        out.update({f"frames_missing {t}": n for t, n in per_topic.items() if n})
        return out

    def warnings(self, count_publishers, now: float | None = None) -> list[str]:
        """One line per camera topic that has publishers (`count_publishers(topic)` > 0) but delivers nothing, or
        misses frames by its stamps (within MISSING_RECENT_S); none at all when the watch is off
        (no_frames_warn_s 0)."""
        if self.warn_after_s <= 0:
            return []
        now = time.monotonic() if now is None else now
        out = []
        with self._lock:
            last, incompatible = dict(self._last), dict(self._incompatible)
            missing = {t: (g.missing, self._missing_at.get(t)) for t, g in self._gaps.items()}
        for topic, t in last.items():
            publishers = count_publishers(topic)
            if publishers == 0:
                continue  # no camera yet: nothing is wrong with the connection
            best_effort = self._best_effort(topic)
            qos = f"image_qos {self.image_qos}" + (", best effort" if self.image_qos == "auto" and best_effort
                                                   else ", reliable" if self.image_qos == "auto" else "")
            lost, at = missing.get(topic, (0, None))
            if topic in incompatible:
                out.append(self._incompatible_text(topic, incompatible[topic]))
            elif now - t >= self.warn_after_s:
                hint = (f"best-effort camera-sized frames from another process are lost: {PROFILE_ADVICE}"
                        if best_effort else
                        "`ros2 topic info -v` shows the publishers' QoS: docs/node.md, Camera QoS"
                        if self.image_qos == "auto" else
                        "a best-effort camera needs image_qos auto or sensor_data: docs/node.md, Camera QoS")
                out.append(f"{topic}: {publishers} publisher(s) but no frame for {now - t:.0f} s ({qos}); {hint}")
            elif at is not None and now - at < max(MISSING_RECENT_S, self.warn_after_s):
                hint = PROFILE_ADVICE if best_effort else "the node's intake fell behind or the camera skipped them"
                out.append(f"{topic}: {lost} frames missing by their stamps ({qos}); {hint}")
        return out
