"""Loop-closure confidence: how sure the localizer is that a closure shows the place it names, in [0, 1].

A logistic of a few pieces of evidence, every weight >= 0 so that more evidence never lowers the confidence:

    logit = bias + w_seq * log(sequence margin)       (sequence mode: best run's score over the best run elsewhere)
                 + w_sim * similarity margin           (the closure's similarity minus the best candidate that does
                                                        not agree with it, i.e. another place)
                 + w_agree * agreement                 (of the AGREEMENT_MAX preceding frames, those whose closure
                                                        agreed with this one; in sequence mode only those at another
                                                        keyframe count: the run must advance, as sequence matching
                                                        assumes motion, and a closure stuck on one keyframe while
                                                        the frames move on is the typical Nordland failure)
                 + log(inliers / min_inliers)          (geometric verification accepted it: odds x inliers/min)
                 - ODOMETRY_PENALTY                    (odometry disagrees with the step from the previous closure)

bias, w_seq, w_sim and w_agree are fitted per consistency mode on the tuning split (docs/node.md, "Loop-closure
confidence and operating point"; `tools/fit_closure_confidence.py`). Verification and odometry terms are
documented likelihood ratios, not fitted: the Nordland data has neither stored features nor odometry."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
import math

AGREEMENT_MAX = 4  # preceding frames looked at for agreement
SEQUENCE_MARGIN_CAP = 1.5  # log(margin) is capped at log(1.5): beyond it a run is unambiguous anyway
ODOMETRY_PENALTY = math.log(10.0)  # an odometry-inconsistent closure: odds / 10

# Fitted on the tuning split (winter 19210..21600 against a summer map of 19210..21600, every default) by
# tools/fit_closure_confidence.py; consecutive's bias is shifted so that its tuning operating point is sequence's.
COEFFICIENTS = {
    "sequence": {"bias": -1.301, "log_sequence_margin": 1.735, "similarity_margin": 2.372, "agreement": 1.095},
    "consecutive": {"bias": 2.611, "log_sequence_margin": 0.0, "similarity_margin": 6.213, "agreement": 0.025},
}


@dataclass(frozen=True)
class Evidence:
    """What a closure's confidence is computed from."""

    similarity_margin: float  # in [-2, 2]
    agreement: int  # 0..AGREEMENT_MAX (ClosureHistory)
    sequence_margin: float | None = None  # >= 1 (sequence mode), None otherwise
    inliers: int = 0  # RANSAC inliers when verification accepted the closure, else 0
    min_inliers: int = 15
    odometry_consistent: bool | None = None  # None: no odometry, or no previous closure to compare with

    def features(self) -> dict:
        seq = 0.0 if self.sequence_margin is None else math.log(min(max(self.sequence_margin, 1.0),
                                                                   SEQUENCE_MARGIN_CAP))
        return {"log_sequence_margin": seq, "similarity_margin": float(self.similarity_margin),
                "agreement": float(min(max(self.agreement, 0), AGREEMENT_MAX))}


def confidence(evidence: Evidence, mode: str = "sequence", coefficients=None) -> float:
    """The closure's confidence in [0, 1] (see the module docstring)."""
    w = (coefficients or COEFFICIENTS)[mode]
    logit = w["bias"] + sum(w[k] * v for k, v in evidence.features().items())
    if evidence.inliers > 0:
        logit += math.log(max(evidence.inliers / max(evidence.min_inliers, 1), 1.0))
    if evidence.odometry_consistent is False:
        logit -= ODOMETRY_PENALTY
    return _sigmoid(logit)


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def similarity_margin(anchor, candidates, same_place) -> float:
    """The anchor's similarity minus the best candidate at another place (`same_place(key, key)` false). When all
    of them are at the anchor's place, the lowest candidate's similarity stands in: the best other place is at
    most that similar."""
    others = [c.similarity for c in candidates if not same_place(anchor.key, c.key)]
    if others:
        return float(anchor.similarity - max(others))
    return float(anchor.similarity - min((c.similarity for c in candidates), default=anchor.similarity))


class ClosureHistory:
    """Per camera, the anchors (candidate 0) of the last frames' closures, before any confidence threshold, and
    the odometry of those frames: the agreement and odometry evidence."""

    def __init__(self, same_place, odometry_tolerance_m: float, must_advance: bool = False):
        """`same_place(key, key)`: whether two closures' keyframes are one place (ConsistencyFilter.same_place)."""
        self.same_place, self.tolerance = same_place, float(odometry_tolerance_m)
        self.must_advance = bool(must_advance)
        self._history: dict[str, deque] = {}

    def reset(self):
        self._history.clear()

    def update(self, camera: str, anchor, odom) -> tuple[int, bool | None]:
        """Record this frame's anchor (None: no closure) and odometry; (agreement, odometry_consistent)."""
        h = self._history.setdefault(camera, deque(maxlen=AGREEMENT_MAX))
        agreement, consistent = 0, None
        if anchor is not None:
            agreement = sum(prev is not None and self.same_place(anchor.key, prev.key)
                            and not (self.must_advance and _same_keyframe(prev, anchor)) for prev, _ in h)
            consistent = self._odometry_consistent(anchor, odom, h)
        h.append((anchor, odom))
        return agreement, consistent

    def _odometry_consistent(self, anchor, odom, history) -> bool | None:
        """Does the distance between this closure's keyframe and the previous closure's match the distance
        odometry travelled between the two frames (within the tolerance)? None when it cannot be told."""
        k = anchor.keyframe
        if odom is None or not k.has_position:
            return None
        for prev, prev_odom in reversed(history):
            if prev is None or prev_odom is None or prev.map_id != anchor.map_id or not prev.keyframe.has_position:
                continue
            mapped = math.hypot(k.x - prev.keyframe.x, k.y - prev.keyframe.y)
            travelled = math.hypot(odom[0] - prev_odom[0], odom[1] - prev_odom[1])
            return abs(mapped - travelled) <= self.tolerance
        return None


def _same_keyframe(a, b) -> bool:
    return a.map_id == b.map_id and int(a.keyframe.id) == int(b.keyframe.id)
