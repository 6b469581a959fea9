"""Is a session-map loop closure a return to an old place, or the robot's own recent past seen again?

On a route driven once, the best session keyframe just outside the exclusion of the recent past is often a
false loop: a stretch that looks alike (snow field, corridor), or the same place while the robot stands still.
Two tests, in the spirit of RTAB-Map's hypothesis filter (Labbé & Michaud 2013: a loop hypothesis must beat the
"new place" hypothesis, and persist):

1. The recent-past test: the closure's similarity must beat the best similarity of the frame to its own recent
   past (the keyframes the exclusion keeps out) by `session_loop_margin` standard deviations of the frame's
   similarities to the whole session map. Driving on, the frame resembles where it just was at least as much as
   any old place; on a real revisit, the old place stands out. Dividing by the spread makes the margin mean the
   same for encoders whose similarities live on different scales.
2. Persistence: of the AGREEMENT_MAX preceding frames of the camera, at least `session_loop_support` must have
   passed test 1 at a keyframe that agrees with this one (consistency_radius_m / consistency_id_window).
"""

from __future__ import annotations

from collections import deque

from geoloc_ros.localization.confidence import AGREEMENT_MAX


class RevisitTest:
    """Per camera, the session loop hypotheses of the last frames that passed the recent-past test."""

    def __init__(self, agree, margin: float, support: int):
        self.agree, self.margin, self.support = agree, float(margin), int(support)
        self._passed: dict[str, deque] = {}
        self.refused_recent = 0  # closures refused by the recent-past test
        self.refused_support = 0  # closures refused for lack of support

    def reset(self):
        self._passed.clear()

    def check(self, camera: str, anchor, recent_best, spread: float) -> bool:
        """Whether the session closure at `anchor` (a Candidate; None: this frame has no session closure) is
        believed. `recent_best`: the frame's best similarity to its recent past (None: no recent past);
        `spread`: the standard deviation of its similarities to the session map."""
        h = self._passed.setdefault(camera, deque(maxlen=AGREEMENT_MAX))
        passed = anchor is not None and self._beats_recent_past(anchor.similarity, recent_best, spread)
        if anchor is not None and not passed:
            self.refused_recent += 1
        support = sum(prev is not None and self.agree(anchor.key, prev.key) for prev in h) if passed else 0
        h.append(anchor if passed else None)
        if passed and support < self.support:
            self.refused_support += 1
            return False
        return passed

    def _beats_recent_past(self, similarity: float, recent_best, spread: float) -> bool:
        if self.margin <= 0 or recent_best is None:
            return True
        return similarity - recent_best >= self.margin * max(spread, 1e-6)
