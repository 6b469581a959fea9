"""Wheel odometry simulated from frame positions, with a documented drift: a scale error and a heading random
walk (for `geoloc demo --slam` and the tests; docs/slam.md "Simulated odometry").

The truth heading at a frame is the direction of travel (towards the next frame; the last frame keeps the
previous heading). Each odometry step is the true step with its length scaled by (1 + scale_error) and the
heading error advanced by a normal draw of sigma heading_sigma_per_sqrt_m * sqrt(step length): a random walk in
distance, so the heading error after L metres has sigma heading_sigma_per_sqrt_m * sqrt(L). Odometry starts at
the identity (the odom frame is where the robot started), as a real robot's does.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import gtsam
import numpy as np


@dataclass(frozen=True)
class OdometryDrift:
    scale_error: float = 0.03  # odometry reports 3 % more distance than was driven (tyre wear, pressure)
    heading_sigma_per_sqrt_m: float = 0.005  # rad / sqrt(m): 0.05 rad (2.9 deg) after 100 m
    seed: int = 0


def truth_poses(positions) -> list[gtsam.Pose3]:
    """Base poses at `positions` (N x 2 or N x 3, metres, map frame) heading along the direction of travel."""
    p = np.asarray(positions, dtype=float)
    if p.ndim != 2 or p.shape[1] not in (2, 3) or len(p) < 2:
        raise ValueError(f"positions must be N x 2 or N x 3 with N >= 2, got shape {p.shape}")
    if p.shape[1] == 2:
        p = np.hstack([p, np.zeros((len(p), 1))])
    if not np.all(np.isfinite(p)):
        raise ValueError("positions hold NaN or infinite values")
    poses, heading = [], 0.0
    for i in range(len(p)):
        ahead = p[min(i + 1, len(p) - 1)] - p[i]
        if i + 1 < len(p) and np.hypot(ahead[0], ahead[1]) > 1e-6:
            heading = math.atan2(ahead[1], ahead[0])
        poses.append(gtsam.Pose3(gtsam.Rot3.Yaw(heading), p[i]))
    return poses


def simulate_odometry(truth: list[gtsam.Pose3], drift: OdometryDrift = OdometryDrift()) -> list[gtsam.Pose3]:
    """Odometry poses (odom frame, starting at the identity) for the truth poses, drifting as `drift` says."""
    rng = np.random.default_rng(drift.seed)
    relative = [truth[0].between(t) for t in truth]  # the truth as seen from the start
    odom, yaw_error = [gtsam.Pose3()], 0.0
    for a, b in zip(relative[:-1], relative[1:]):
        moved = b.translation() - a.translation()
        length = float(np.linalg.norm(moved))
        if length:
            yaw_error += rng.normal(0.0, drift.heading_sigma_per_sqrt_m * math.sqrt(length))
        bend = gtsam.Rot3.Yaw(yaw_error)  # the heading error so far turns every later step
        position = odom[-1].translation() + bend.rotate(moved * (1.0 + drift.scale_error))
        odom.append(gtsam.Pose3(bend.compose(b.rotation()), position))
    return odom
