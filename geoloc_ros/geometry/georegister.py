"""Georegistration of a reconstruction: the similarity (scale, rotation, translation) that carries its camera
centres onto their GPS positions in the map frame (ENU metres), fitted by least squares (Umeyama).

Camera centres along one street are close to a line, which leaves the rotation about that line free: the fit then
turns the reconstruction about the line so that the cameras' mean "up" (-y of the optical frame) points as close
to the map frame's +z as it can (people and vehicles hold cameras upright).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

COLLINEAR_RATIO = 0.05  # second / first singular value of the centred positions below this: a line


@dataclass
class Similarity:
    scale: float
    R: np.ndarray
    t: np.ndarray
    rms_m: float  # residual of the GPS positions after the fit

    def apply_points(self, X) -> np.ndarray:
        return self.scale * np.asarray(X, np.float64) @ self.R.T + self.t

    def apply_pose(self, T) -> np.ndarray:
        """A camera pose T_model_camera -> T_map_camera (rotation turned, centre carried; no scale on the axes)."""
        T = np.asarray(T, np.float64)
        out = np.eye(4)
        out[:3, :3] = self.R @ T[:3, :3]
        out[:3, 3] = self.apply_points(T[:3, 3])
        return out


def fit_similarity(src, dst, camera_rotations=None) -> Similarity:
    """dst ~ s R src + t for (N, 3) `src` (model) and `dst` (map), N >= 3 not all on one point.
    `camera_rotations`: the cameras' model-frame rotations R_model_camera, used to level a near-line fit."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if len(src) != len(dst) or len(src) < 3:
        raise ValueError(f"georegistration needs at least 3 positions, got {len(src)}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    var_s = float((a ** 2).sum() / len(a))
    if var_s <= 1e-12 or float((b ** 2).sum()) <= 1e-12:
        raise ValueError("georegistration: the positions do not spread (all at one point)")
    U, S, Vt = np.linalg.svd(b.T @ a / len(a))
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt)) or 1.0
    R = U @ D @ Vt
    scale = float(np.trace(np.diag(S) @ D) / var_s)
    sv = np.linalg.svd(b, compute_uv=False)
    if camera_rotations is not None and sv[1] < COLLINEAR_RATIO * sv[0]:
        R = _level(R, np.linalg.svd(b)[2][0], camera_rotations)
    t = mu_d - scale * mu_s @ R.T
    rms = float(np.sqrt(np.mean(np.sum((scale * src @ R.T + t - dst) ** 2, axis=1))))
    return Similarity(scale, R, t, rms)


def _level(R, axis, camera_rotations) -> np.ndarray:
    """Turn R about the map-frame `axis` so that the cameras' mean up vector is nearest +z."""
    ups = np.array([R @ np.asarray(Rc)[:3, :3] @ np.array([0.0, -1.0, 0.0]) for Rc in camera_rotations])
    up = ups.mean(0)
    axis = axis / np.linalg.norm(axis)
    # the angle about `axis` that brings the part of `up` perpendicular to it closest to the perpendicular part of z
    z = np.array([0.0, 0.0, 1.0])
    u_perp, z_perp = up - axis * (up @ axis), z - axis * (z @ axis)
    if np.linalg.norm(u_perp) < 1e-9 or np.linalg.norm(z_perp) < 1e-9:
        return R
    angle = np.arctan2(axis @ np.cross(u_perp, z_perp), u_perp @ z_perp)
    return Rotation.from_rotvec(axis * angle).as_matrix() @ R
