"""From candidates to one position: the similarity-weighted mean of the candidates within fusion_radius_m of the
best one, with a covariance from their spread that never drops below a floor (a place match is only as precise
as the keyframe spacing, however tightly the candidates cluster)."""

from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

UNKNOWN_VARIANCE = 1e6  # rad^2 / m^2 for quantities the candidates say nothing about (ROS convention: large)


@dataclass
class PoseEstimate:
    x: float  # map frame, metres
    y: float
    z: float
    heading: float  # degrees clockwise from north, NaN unknown
    var_xy: float  # per-axis position variance, m^2
    var_z: float
    var_yaw: float  # rad^2
    used: int  # candidates fused


def fuse(keyframes, similarities, fusion_radius_m: float = 30.0, floor_m: float = 5.0, scale: float = 1.0,
         yaw_floor_deg: float = 10.0) -> PoseEstimate | None:
    """`keyframes` best first (the first is the anchor), all in one map frame. None when the best has no
    position."""
    if not keyframes or not keyframes[0].has_position:
        return None
    best = keyframes[0]
    pick = [(k, s) for k, s in zip(keyframes, similarities)
            if k.has_position and math.hypot(k.x - best.x, k.y - best.y) <= fusion_radius_m]
    xyz = np.array([(k.x, k.y, k.z if math.isfinite(k.z) else 0.0) for k, _ in pick], dtype=np.float64)
    # Cosine similarities can be negative; shift so the weakest fused candidate still counts a little.
    s = np.array([s for _, s in pick], dtype=np.float64)
    w = s - s.min() + 1e-3 if len(s) > 1 else np.ones(1)
    w = w / w.sum()
    mean = (w[:, None] * xyz).sum(axis=0)
    spread = (w[:, None] * (xyz - mean) ** 2).sum(axis=0)
    floor = floor_m * floor_m
    var_xy = max(scale * float(spread[0] + spread[1]) / 2.0, floor)
    var_z = max(scale * float(spread[2]), floor)
    headings = np.array([k.heading for k, _ in pick], dtype=np.float64)
    known = np.isfinite(headings)
    if known.any():
        a = np.radians(headings[known])
        ww = w[known] / w[known].sum()
        c, si = float((ww * np.cos(a)).sum()), float((ww * np.sin(a)).sum())
        heading = math.degrees(math.atan2(si, c)) % 360.0
        r = min(max(math.hypot(c, si), 1e-9), 1.0)
        circ_var = -2.0 * math.log(r)  # circular variance of the weighted headings, rad^2
        var_yaw = max(scale * circ_var, math.radians(yaw_floor_deg) ** 2)
    else:
        heading, var_yaw = math.nan, UNKNOWN_VARIANCE
    return PoseEstimate(float(mean[0]), float(mean[1]), float(mean[2]), heading, var_xy, var_z, var_yaw, len(pick))


def covariance6(est: PoseEstimate) -> list[float]:
    """Row-major 6x6 (x, y, z, roll, pitch, yaw); roll and pitch unknown."""
    c = [0.0] * 36
    for i, v in enumerate((est.var_xy, est.var_xy, est.var_z, UNKNOWN_VARIANCE, UNKNOWN_VARIANCE, est.var_yaw)):
        c[i * 7] = float(v)
    return c
