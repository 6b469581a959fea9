"""Trajectory error for the SLAM demo: ATE through evo (the `evo_ape` computation: APE on the translation part
after a rigid Umeyama alignment in the ground plane, no scale), and the same-place distance between two laps."""

from __future__ import annotations

import numpy as np


def _trajectory(positions, stamps_s):
    from evo.core.trajectory import PoseTrajectory3D

    p = np.asarray(positions, dtype=float)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"positions must be N x 3, got shape {p.shape}")
    quats = np.tile([1.0, 0.0, 0.0, 0.0], (len(p), 1))  # translation-only APE: orientations do not enter
    return PoseTrajectory3D(positions_xyz=p, orientations_quat_wxyz=quats, timestamps=np.asarray(stamps_s, float))


def ate(reference, estimate, align: bool = True) -> dict:
    """evo APE statistics (rmse, mean, median, std, min, max, sse; metres) of `estimate` against `reference`,
    both N x 3 positions of the same N instants, after aligning the estimate (rigid, no scale) when `align`.

    The alignment is evo's Umeyama fit in the ground plane (x, y and yaw; z untouched): the demo's routes are
    planar, and a straight route (a Nordland stretch) makes evo's full SE(3) fit degenerate (evo raises
    "Degenerate covariance rank": a rotation about the line is undetermined), where the planar fit is exact."""
    from evo.core import metrics

    reference, estimate = np.asarray(reference, float), np.asarray(estimate, float)
    if reference.shape != estimate.shape:
        raise ValueError(f"reference {reference.shape} and estimate {estimate.shape} differ in shape")
    if align:
        estimate = aligned(reference, estimate)
    stamps = np.arange(len(reference), dtype=float)
    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((_trajectory(reference, stamps), _trajectory(estimate, stamps)))
    return {k: float(v) for k, v in ape.get_all_statistics().items()}


def same_place_distance(positions, pairs) -> float:
    """Mean distance between the positions of index pairs (i, j) that show the same place (lap 1, lap 2)."""
    p = np.asarray(positions, float)
    pairs = np.asarray(pairs, int).reshape(-1, 2)
    if not len(pairs):
        raise ValueError("no same-place pairs")
    return float(np.linalg.norm(p[pairs[:, 1]] - p[pairs[:, 0]], axis=1).mean())


def aligned(reference, estimate) -> np.ndarray:
    """`estimate` (N x 3) after the rigid planar Umeyama alignment to `reference` (evo's umeyama_alignment on
    x, y) that `ate(align=True)` measures after; also for plotting odometry, whose frame starts anywhere."""
    from evo.core.geometry import umeyama_alignment

    reference, estimate = np.asarray(reference, float), np.asarray(estimate, float)
    rot, shift, _ = umeyama_alignment(estimate[:, :2].T, reference[:, :2].T, False)
    out = estimate.copy()
    out[:, :2] = estimate[:, :2] @ rot.T + shift
    return out
