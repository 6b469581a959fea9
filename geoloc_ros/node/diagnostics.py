"""Counters and timings behind /diagnostics: input and processed rates, latency percentiles, dropped and
rejected frames. Thread-safe: the subscription callbacks and the worker both write here."""

from __future__ import annotations

from collections import Counter, deque
import threading
import time

import numpy as np


class RateMeter:
    """Events per second over the last `window_s` seconds."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self._t: deque = deque()

    def tick(self, now: float | None = None):
        now = time.monotonic() if now is None else now
        self._t.append(now)
        while self._t and self._t[0] < now - self.window_s:
            self._t.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._t and self._t[0] < now - self.window_s:
            self._t.popleft()
        return len(self._t) / self.window_s


class NodeStats:
    def __init__(self, window: int = 500):
        self._lock = threading.Lock()
        self.received = Counter()  # per camera topic
        self.processed = 0
        self.dropped = 0  # replaced by a newer frame before the worker took it (newest wins)
        self.rejected = Counter()  # FrameError.kind -> count
        self.loop_closures = 0
        self.fixes_ignored = Counter()  # NavSatFix refused as a geotag, by reason (no_fix, out_of_range, ...)
        self.odom_ignored = 0  # Odometry refused as a keyframe position (a non-finite position)
        self.input_rate, self.output_rate = RateMeter(), RateMeter()
        self.encode_ms: deque = deque(maxlen=window)
        self.search_ms: deque = deque(maxlen=window)
        self.total_ms: deque = deque(maxlen=window)  # receive -> publish inside the node
        self.sources = []  # callables -> dict of further values (node/language_services.py)

    def on_receive(self, topic: str):
        with self._lock:
            self.received[topic] += 1
            self.input_rate.tick()

    def on_drop(self, n: int = 1):
        with self._lock:
            self.dropped += n

    def on_reject(self, kind: str):
        with self._lock:
            self.rejected[kind] += 1

    def on_processed(self, encode_ms: float, search_ms: float, total_ms: float):
        with self._lock:
            self.processed += 1
            self.output_rate.tick()
            self.encode_ms.append(encode_ms)
            self.search_ms.append(search_ms)
            self.total_ms.append(total_ms)

    def on_ignored_fix(self, reason: str):
        with self._lock:
            self.fixes_ignored[reason] += 1

    def on_ignored_odom(self):
        with self._lock:
            self.odom_ignored += 1

    def on_loop_closure(self):
        with self._lock:
            self.loop_closures += 1

    @staticmethod
    def _pct(values, q) -> float:
        return float(np.percentile(np.asarray(values), q)) if values else float("nan")

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "frames_received": sum(self.received.values()),
                "frames_processed": self.processed,
                "frames_dropped": self.dropped,
                "frames_rejected": sum(self.rejected.values()),
                **{f"rejected_{k}": v for k, v in sorted(self.rejected.items())},
                "loop_closures": self.loop_closures,
                "fixes_ignored": sum(self.fixes_ignored.values()),
                **{f"fixes_ignored_{k}": v for k, v in sorted(self.fixes_ignored.items())},
                "odom_ignored": self.odom_ignored,
                "input_rate_hz": self.input_rate.rate(),
                "processed_rate_hz": self.output_rate.rate(),
                "encode_ms_p50": self._pct(self.encode_ms, 50), "encode_ms_p95": self._pct(self.encode_ms, 95),
                "search_ms_p50": self._pct(self.search_ms, 50), "search_ms_p95": self._pct(self.search_ms, 95),
                "node_ms_p50": self._pct(self.total_ms, 50), "node_ms_p95": self._pct(self.total_ms, 95),
            } | {k: v for source in self.sources for k, v in source().items()}
