"""A position prior on the search: when the robot already knows roughly where it is (a GPS fix with its
covariance, the back end's pose through TF, or the node's own last metric pose), map keyframes farther than a
chi-square bound around that position are not considered, as RTAB-Map's LoopGPS does. A look-alike place
kilometres away then cannot win. Without a prior the search is unchanged.

Do not use it when the position can be wrong without its covariance saying so (multipath in urban canyons, a
GPS that reports a fix with a stale or too small covariance), or when the robot may be anywhere (the kidnapped
robot, start-up without a fix): the true place would be refused and relocalisation becomes impossible. A pose
prior (tf, metric) that went wrong keeps itself wrong the same way: the search only looks where it already is."""

from __future__ import annotations

import math

from geoloc_ros.localization.snapshot import reexpress

# fix: the frame's NavSatFix; tf, metric: the frame's position_prior, a map-frame position (node/position_prior.py)
PRIOR_KINDS = ("none", "fix", "tf", "metric")
CHI2_2D_99 = 9.2103  # chi-square quantile, 2 degrees of freedom, 0.99: a 2-D Gaussian's 99 % ellipse


class SearchPrior:
    """The bound around a frame's prior position, and what it refused (for /diagnostics)."""

    def __init__(self, kind: str, radius_floor_m: float):
        if kind not in PRIOR_KINDS:
            raise ValueError(f"search_prior {kind!r}: expected one of {', '.join(PRIOR_KINDS)}")
        self.kind, self.floor = kind, float(radius_floor_m)
        self.frames = 0  # frame searches a prior bounded
        self.refused = 0  # candidates of the unbounded search outside the bound
        self.refused_best = 0  # frame searches whose unbounded best candidate lay outside the bound
        self.missing = 0  # frame searches left unbounded: the frame had no prior position

    def radius(self, covariance) -> float:
        """The 99 % bound of a 2-D position covariance (east, east-north, north; m^2) along its longest axis, never
        below the floor (a covariance that is unknown or too optimistic still leaves the floor)."""
        if covariance is None:
            return self.floor
        xx, xy, yy = (float(v) for v in covariance)
        if not all(math.isfinite(v) for v in (xx, xy, yy)):
            return self.floor
        largest = xx / 2 + yy / 2 + math.hypot((xx - yy) / 2, xy)  # the larger eigenvalue, without overflow
        return max(self.floor, math.sqrt(CHI2_2D_99 * max(largest, 0.0)))

    def bound(self, frame, map_frame, primary_frame=None):
        """(x, y, radius) in the map's frame around the frame's prior position, or None: no prior, or a map
        without a geographic frame (its positions cannot be compared with a fix, nor with a position in the
        geotagged `primary_frame` the node's map frame is)."""
        if self.kind == "none":
            return None
        if self.kind == "fix":
            if frame.fix is None or map_frame is None:
                self.missing += frame.fix is None
                return None
            lat, lon, alt = frame.fix
            x, y, _ = map_frame.to_local(lat, lon, 0.0 if not math.isfinite(alt) else alt)
            return float(x), float(y), self.radius(frame.fix_covariance)
        if frame.position_prior is None:
            self.missing += 1
            return None
        if map_frame is None and primary_frame is not None:
            return None
        x, y, covariance = frame.position_prior
        x, y = reexpress(float(x), float(y), primary_frame, map_frame)
        return x, y, self.radius(covariance)

    def count(self, matches, near):
        """Count what the bound refuses of an unbounded search's matches (Match with .keyframe.x/.y)."""
        x, y, r = near
        outside = [not math.hypot(m.keyframe.x - x, m.keyframe.y - y) <= r for m in matches]
        self.frames += 1
        self.refused += sum(outside)
        self.refused_best += bool(outside and outside[0])

    def diagnostics(self) -> dict:
        if self.kind == "none":
            return {}
        return {"search_prior": self.kind, "prior_searches": self.frames, "prior_refused_candidates": self.refused,
                "prior_refused_best": self.refused_best, "prior_missing": self.missing}
