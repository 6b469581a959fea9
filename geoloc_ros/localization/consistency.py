"""Temporal consistency of matches: a loop closure is only believed when the best match of k consecutive frames
of one camera points at the same stretch of the map. A single frame often matches a look-alike place (another
tunnel mouth, another snow field); a sequence rarely does."""

from __future__ import annotations

from collections import deque
import math


class ConsistencyFilter:
    """Per camera, the keyframes that the last `k` frames matched best.

    Two keyframes are one place when both have map-frame positions within `radius_m` of each other (same map), or,
    lacking positions, when they belong to the same map and their ids differ by at most `id_window`
    (map builders number keyframes in capture order)."""

    def __init__(self, k: int = 2, radius_m: float = 50.0, id_window: int = 5):
        self.k, self.radius_m, self.id_window = max(1, int(k)), float(radius_m), int(id_window)
        self._history: dict[str, deque] = {}

    def reset(self):
        self._history.clear()

    def same_place(self, a, b) -> bool:
        """Whether keyframes a, b, each (map_id, Keyframe), show one place (see the class docstring)."""
        (ma, ka), (mb, kb) = a, b
        if ma != mb:
            return False
        if ka.has_position and kb.has_position:
            return math.hypot(ka.x - kb.x, ka.y - kb.y) <= self.radius_m
        return abs(int(ka.id) - int(kb.id)) <= self.id_window

    def update(self, camera: str, best) -> bool:
        """Record this frame's best (map_id, Keyframe), or None when it had no candidate; True when the last k
        frames' best matches are all at this one's place."""
        h = self._history.setdefault(camera, deque(maxlen=self.k))
        h.append(best)
        if best is None or len(h) < self.k:
            return False
        return all(other is not None and self.same_place(best, other) for other in h)


class SequenceMatcher:
    """Sequence matching (SeqSLAM-style, Milford & Wyeth 2012): the last `window` query descriptors of a camera are
    scored against straight runs of map rows ending at each candidate row, for a few velocities (map rows per
    query frame), and the best run's end is the match. A run of frames is far harder to alias than one frame:
    on the Nordland winter/summer demo it turns a weak single-frame Recall@1 into a much higher one.

    Assumes map rows are in capture order (true of maps built from sequences and bags) and query frames arrive
    at roughly `velocities` map keyframes apart. Maps up to FULL_SEARCH_MAX rows are scored at every row; larger
    ones only around the current frame's best `candidates` rows."""

    FULL_SEARCH_MAX = 50_000

    def __init__(self, window: int = 8, velocities=(0.5, 0.75, 1.0, 1.5, 2.0), min_margin: float = 1.0,
                 exclusion_rows: int = 5, candidates: int = 100):
        self.window, self.velocities = max(2, int(window)), [float(v) for v in velocities]
        self.min_margin, self.exclusion_rows, self.candidates = float(min_margin), int(exclusion_rows), candidates
        self._history: dict[str, deque] = {}

    def reset(self):
        self._history.clear()

    def push(self, camera: str, descriptor):
        self._history.setdefault(camera, deque(maxlen=self.window)).append(descriptor)

    def best(self, camera: str, map_descriptors):
        """(row, score, margin) of the best run ending now, or None until `window` frames were seen. `margin`: the
        score over the best score of runs ending more than `exclusion_rows` rows away (inf when there is none)."""
        import numpy as np

        h = self._history.get(camera)
        if h is None or len(h) < self.window or len(map_descriptors) == 0:
            return None
        q = np.stack(list(h)[::-1])  # (W, D), newest first: j = frames back
        n, w = len(map_descriptors), self.window
        if n <= self.FULL_SEARCH_MAX:
            sims = q @ np.asarray(map_descriptors).T  # (W, N)
            ends = np.arange(n)
        else:
            top = np.argsort(-(np.asarray(map_descriptors) @ q[0]))[: self.candidates]
            ends = np.unique(np.clip((top[:, None] + np.arange(-2, 3)[None, :]).ravel(), 0, n - 1))
            sims = None
        back = np.arange(w)
        best_scores = np.full(len(ends), -np.inf)
        for v in self.velocities:
            rows = ends[:, None] - np.round(v * back[None, :]).astype(int)  # (E, W)
            valid = rows >= 0
            r = np.clip(rows, 0, n - 1)
            if sims is not None:
                s = sims[back[None, :], r]
            else:
                s = np.einsum("wd,ewd->ew", q, np.asarray(map_descriptors)[r])
            count = valid.sum(axis=1)
            score = np.where(count >= 2, (s * valid).sum(axis=1) / np.maximum(count, 1), -np.inf)
            best_scores = np.maximum(best_scores, score)
        i = int(np.argmax(best_scores))
        row, score = int(ends[i]), float(best_scores[i])
        far = np.abs(ends - row) > self.exclusion_rows
        other = float(best_scores[far].max()) if far.any() else -np.inf
        margin = score / other if other > 0 else float("inf")
        return row, score, margin


class PeerRun:
    """Temporal consistency of inter-robot closures: a closure to a peer robot is believed when the best matches of
    the last `k` frames of one camera were keyframes of one session of that peer, spaced along its trajectory as
    this robot moved between the frames.

    A peer's map is another robot's drive, often in another season and often only a few keyframes long while the
    robots set out: a frame alone, or two, can match it at a look-alike place with a wide similarity margin, and
    two robots driving parallel stretches keep such an offset for a frame or two. A run of k matches whose spacing
    in the peer's odometry frame equals the distance this robot's odometry travelled (within `tolerance_m`: the
    keyframe spacing blurs both ends) is a revisit; look-alikes jump, or stick to one keyframe while the robot
    drives on. Without odometry on either side, the keyframe ids must lie within `id_window` of each other."""

    def __init__(self, k: int = 3, tolerance_m: float = 20.0, id_window: int = 5):
        self.k, self.tolerance_m, self.id_window = max(1, int(k)), float(tolerance_m), int(id_window)
        self._history: dict[str, deque] = {}

    def reset(self):
        self._history.clear()

    def update(self, camera: str, best, odom) -> bool:
        """Record this frame's best candidate when it is a peer's (a Candidate; None otherwise) and its odometry
        (x, y, z) or None; True when the last k frames' best matches form one run with this one."""
        h = self._history.setdefault(camera, deque(maxlen=self.k))
        h.append((best, odom))
        if best is None or len(h) < self.k:
            return False
        return all(prev is not None and self.same_run((prev, prev_odom), (best, odom)) for prev, prev_odom in h)

    def same_run(self, a, b) -> bool:
        """Whether two frames' peer matches, each (Candidate, odometry of the frame), lie on one run (see above)."""
        (ca, oa), (cb, ob) = a, b
        ka, kb = ca.keyframe, cb.keyframe
        if ca.robot_id != cb.robot_id or ka.session_id != kb.session_id:
            return False
        pa, pb = getattr(ka, "odom_pose", None), getattr(kb, "odom_pose", None)
        if oa is None or ob is None or pa is None or pb is None:
            return abs(int(ka.id) - int(kb.id)) <= self.id_window
        spacing = math.hypot(pa[0] - pb[0], pa[1] - pb[1])
        travelled = math.hypot(oa[0] - ob[0], oa[1] - ob[1])
        return abs(spacing - travelled) <= self.tolerance_m
