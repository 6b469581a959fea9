"""The latest transforms of /tf and /tf_static, and where one frame lies in another through them: the part of tf2
the search prior needs (tf2 is not a wheel). One transform per child frame is kept, the latest (no interpolation
in time): the prior wants where the robot is now.

A position is refused as stale when the moving link nearest the robot (e.g. odom -> base_link, or map ->
base_link from a localiser that publishes it directly) is older than the allowed age at the frame's time; the
links above it (map -> odom, a correction a back end republishes when it changes) are taken as they last were,
and static links never age."""

from __future__ import annotations

from dataclasses import dataclass
import math
import threading

MAX_CHAIN = 64  # links walked from the robot towards the map frame before giving up (a cycle, a broken tree)


@dataclass(frozen=True)
class Transform:
    """`child`'s pose in `parent`: translation (x, y, z) in metres and rotation (qx, qy, qz, qw)."""

    parent: str
    child: str
    stamp_ns: int
    translation: tuple
    rotation: tuple
    static: bool = False


def checked(t: Transform) -> Transform | None:
    """The transform with a unit quaternion, or None when it is not a transform (empty or equal frame names, a
    non-finite value, a zero quaternion)."""
    parent, child = t.parent.lstrip("/"), t.child.lstrip("/")
    values = (*t.translation, *t.rotation)
    if not parent or not child or parent == child or len(values) != 7 or \
            not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return None
    norm = math.sqrt(sum(v * v for v in t.rotation))
    if not 1e-6 < norm < 1e6:
        return None
    return Transform(parent, child, int(t.stamp_ns), tuple(float(v) for v in t.translation),
                     tuple(float(v) / norm for v in t.rotation), bool(t.static))


def rotate(q, v) -> tuple:
    """The vector v rotated by the unit quaternion q (x, y, z, w)."""
    x, y, z, w = q
    cx, cy, cz = y * v[2] - z * v[1], z * v[0] - x * v[2], x * v[1] - y * v[0]  # q x v
    cx, cy, cz = 2 * cx, 2 * cy, 2 * cz
    return (v[0] + w * cx + (y * cz - z * cy), v[1] + w * cy + (z * cx - x * cz), v[2] + w * cz + (x * cy - y * cx))


class TransformBuffer:
    """Thread-safe: `update` from the subscription callbacks, `position` from the worker."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_child: dict[str, Transform] = {}

    def update(self, t: Transform) -> bool:
        """Keep `t` as its child's latest transform (an older stamp than the one held is ignored); False when it
        is not a transform."""
        t = checked(t)
        if t is None:
            return False
        with self._lock:
            held = self._by_child.get(t.child)
            if held is None or t.stamp_ns >= held.stamp_ns or t.static != held.static:
                self._by_child[t.child] = t
        return True

    def position(self, target: str, source: str, at_ns: int, max_age_ns: int) -> tuple[tuple | None, str]:
        """((x, y, z) of `source`'s origin in `target`, "ok"), or (None, "unavailable": no chain of transforms
        joins them; "stale": the moving link nearest `source` is older than `max_age_ns` at `at_ns`)."""
        target, source = target.lstrip("/"), source.lstrip("/")
        chain, frame = [], source
        with self._lock:
            while frame != target:
                t = self._by_child.get(frame)
                if t is None or len(chain) >= MAX_CHAIN:
                    return None, "unavailable"
                chain.append(t)
                frame = t.parent
        moving = next((t for t in chain if not t.static), None)
        if moving is not None and at_ns - moving.stamp_ns > max_age_ns:
            return None, "stale"
        p = (0.0, 0.0, 0.0)
        for t in chain:  # from the robot up: p in child -> p in parent
            r = rotate(t.rotation, p)
            p = (r[0] + t.translation[0], r[1] + t.translation[1], r[2] + t.translation[2])
        return p, "ok"
