"""The session map: keyframes seen during this run, searched like the other maps so the robot can close loops
with its own path. It outlives map reloads (the localizer of each snapshot is handed the same SessionMap)."""

from __future__ import annotations

from collections import OrderedDict
import math
import threading

from geoloc_ros.localization.frames import SESSION_MAP_ID, Candidate

# Session keyframes keep their local features (for verification) within this budget; beyond it the oldest
# keyframes' features are dropped (those keyframes can then no longer be verified). SIFT at the default 2000
# keypoints is 2000 x (128 + 8 + 4) bytes = 280 KB per keyframe, so this is about 950 keyframes (ORB: 88 KB, ~3,000).
SESSION_FEATURE_BYTES = 256 * 1024 * 1024


class FeatureStore:
    """Keyframe id -> verification features, oldest dropped first once `max_bytes` is exceeded."""

    def __init__(self, max_bytes: int = SESSION_FEATURE_BYTES):
        self.max_bytes, self.nbytes = int(max_bytes), 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _size(item) -> int:
        """Bytes of the arrays in `item`: a tuple of arrays, or of geometry.Features (and a camera model)."""
        arrays = []
        for part in item if isinstance(item, tuple) else (item,):
            arrays.extend((part.keypoints, part.descriptors, part.depth) if hasattr(part, "keypoints") else (part,))
        return sum(getattr(a, "nbytes", 0) for a in arrays)

    def put(self, key, features):
        with self._lock:
            if key in self._items:
                self.nbytes -= self._size(self._items.pop(key))
            self._items[key] = features
            self.nbytes += self._size(features)
            while self.nbytes > self.max_bytes and len(self._items) > 1:
                self.nbytes -= self._size(self._items.popitem(last=False)[1])

    def get(self, key):
        with self._lock:
            return self._items.get(key)

    def __len__(self):
        return len(self._items)

    def clear(self):
        with self._lock:
            self._items.clear()
            self.nbytes = 0


class SessionMap:
    """An in-memory MapDatabase of this run's keyframes, with its spacing rule and verification features."""

    def __init__(self, encoder, frame=None, feature_bytes: int = SESSION_FEATURE_BYTES):
        from geoloc_ros.mapping import MapDatabase

        self.db = MapDatabase.create(SESSION_MAP_ID, encoder.dim, encoder.fingerprint, frame=frame)
        self.features = FeatureStore(feature_bytes)
        self.lock = threading.Lock()  # the worker adds while a service saves
        self._last = None  # (time_ns, x, y) of the last session keyframe

    def __len__(self):
        return len(self.db)

    def search(self, desc, frames, top_k: int, exclusion_window_s: float) -> list[list[Candidate]]:
        """Per frame: at most top_k session candidates, none younger than the exclusion window (the robot's own
        recent path is no loop closure)."""
        if not len(self.db):
            return [[] for _ in frames]
        window_ns = int(exclusion_window_s * 1e9)
        k = min(len(self.db), top_k + 64)  # more than top_k: the youngest keyframes are removed
        with self.lock:
            found = self.db.search(desc, k)
        out = []
        for frame, matches in zip(frames, found):
            kept = [x for x in matches if abs(frame.time_ns - x.keyframe.stamp_ns) >= window_ns][:top_k]
            out.append([Candidate(SESSION_MAP_ID, SESSION_MAP_ID, x.keyframe, float(x.similarity),
                                  source="session") for x in kept])
        return out

    def wants(self, frame, s) -> bool:
        """Whether `frame` is far enough (in time, and in odometry travel) from the last session keyframe."""
        if self._last is None:
            return True
        last_t, lx, ly = self._last
        if abs(frame.time_ns - last_t) < s.session_min_interval_s * 1e9:
            return False
        odom = frame.odom
        return not (odom is not None and lx is not None and s.session_min_spacing_m > 0
                    and math.hypot(odom[0] - lx, odom[1] - ly) < s.session_min_spacing_m)

    def add(self, frame, descriptor) -> int:
        """Add `frame` as a keyframe (geotag from its fix, else position from its odometry); returns its id."""
        from geoloc_ros.mapping import Keyframe

        t = frame.time_ns
        kf = Keyframe(label=f"{frame.topic}@{t}", stamp_ns=t, source="session")
        if frame.fix is not None:
            kf.lat, kf.lon, kf.alt = frame.fix
        elif frame.odom is not None:
            kf.x, kf.y, kf.z = frame.odom
        with self.lock:
            kid = self.db.add(descriptor[None, :], [kf])[0]
        odom = frame.odom
        self._last = (t, odom[0] if odom else None, odom[1] if odom else None)
        return kid

    def save(self, path, encoder_file: str, attach_encoder: bool):
        with self.lock:
            if attach_encoder and self.db.encoder_path is None:
                self.db.attach_encoder(encoder_file)
            self.db.save(path)
