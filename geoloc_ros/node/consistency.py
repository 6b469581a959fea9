"""Temporal consistency of matches: a loop closure is only believed when the best match of k consecutive frames
of one camera points at the same stretch of the map. A single frame often matches a look-alike place (another
tunnel mouth, another snow field); a sequence rarely does."""

from __future__ import annotations

from collections import deque
import math


class ConsistencyFilter:
    """Per camera, the keyframes that the last `k` frames matched best.

    Two keyframes agree when both have map-frame positions within `radius_m` of each other (same map), or,
    lacking positions, when they belong to the same map and their ids differ by at most `id_window`
    (map builders number keyframes in capture order)."""

    def __init__(self, k: int = 2, radius_m: float = 50.0, id_window: int = 5):
        self.k, self.radius_m, self.id_window = max(1, int(k)), float(radius_m), int(id_window)
        self._history: dict[str, deque] = {}

    def reset(self):
        self._history.clear()

    def agree(self, a, b) -> bool:
        """a, b: (map_name, Keyframe)."""
        (ma, ka), (mb, kb) = a, b
        if ma != mb:
            return False
        if ka.has_position and kb.has_position:
            return math.hypot(ka.x - kb.x, ka.y - kb.y) <= self.radius_m
        return abs(int(ka.id) - int(kb.id)) <= self.id_window

    def update(self, camera: str, best) -> bool:
        """Record this frame's best (map_name, Keyframe), or None when it had no candidate; True when the last k
        frames' best matches all agree with this one."""
        h = self._history.setdefault(camera, deque(maxlen=self.k))
        h.append(best)
        if best is None or len(h) < self.k:
            return False
        return all(other is not None and self.agree(best, other) for other in h)
