"""Covariances between ROS and GTSAM conventions, and the documented defaults where a message has none.

ROS (geometry_msgs/PoseWithCovariance) orders a pose covariance x y z roll pitch yaw; GTSAM's Pose3 tangent is
rotation first, then translation, both in the pose's own frame. docs/slam.md gives the reasons for each default.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import gtsam
import numpy as np

# ROS index of each GTSAM tangent coordinate (rx ry rz tx ty tz <- roll pitch yaw x y z).
_ROS_OF_GTSAM = [3, 4, 5, 0, 1, 2]

# Base -> optical camera (REP-103): camera z forward = base x, camera x right = base -y, camera y down = base -z.
OPTICAL_ROTATION = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])

# Positions farther than this from their frame's origin are refused: no odom or map frame is that large, and
# composing poses near float64's limits gives infinities.
MAX_COORDINATE_M = 1e8
# A quaternion's norm may differ from 1 by this much (float32 rounding, typed-in values); more is not a rotation.
QUATERNION_TOLERANCE = 0.01
# A rotation sigma beyond pi says the rotation is unknown; larger ones are capped there so the factor stays
# well conditioned (drivers write 1e6 or more on axes they do not measure).
MAX_SIGMA_RAD = math.pi


def ros_to_gtsam_covariance(cov) -> np.ndarray:
    """6x6 covariance in GTSAM's tangent order from a row-major 36-element (or 6x6) ROS covariance."""
    c = np.asarray(cov, dtype=float).reshape(6, 6)
    return c[np.ix_(_ROS_OF_GTSAM, _ROS_OF_GTSAM)]


def is_unset(cov) -> bool:
    """A covariance a driver left empty (all zeros)."""
    return not np.any(np.asarray(cov, dtype=float))


def checked_covariance(cov, n: int, what: str) -> np.ndarray:
    """The n x n covariance `cov` (n*n values, row-major), or ValueError naming `what` when it is not finite,
    symmetric and positive semi-definite: such a matrix is no covariance, and a negative one would turn a
    chi-square gate's statistic negative."""
    c = np.asarray(cov, dtype=float)
    if c.size != n * n:
        raise ValueError(f"{what} covariance has {c.size} values, expected {n * n}")
    c = c.reshape(n, n)
    if not np.all(np.isfinite(c)):
        raise ValueError(f"{what} covariance has non-finite values")
    scale = float(np.abs(c).max())
    if np.abs(c - c.T).max() > 1e-6 * scale:
        raise ValueError(f"{what} covariance is not symmetric")
    w = np.linalg.eigvalsh(0.5 * (c + c.T))
    if w[0] < -1e-9 * max(float(w[-1]), 0.0) or (scale > 0.0 and w[-1] <= 0.0):
        raise ValueError(f"{what} covariance is not positive semi-definite (smallest eigenvalue {w[0]:.3g})")
    return 0.5 * (c + c.T)


def floored(cov: np.ndarray, floor_variances) -> np.ndarray:
    """`cov` (positive semi-definite) plus the floor variances on its diagonal: positive definite, so a factor
    never claims more certainty than the floor on any axis, and never becomes singular."""
    return np.asarray(cov, float) + np.diag(np.asarray(floor_variances, float))


def capped_rotation(cov6: np.ndarray) -> np.ndarray:
    """A GTSAM-ordered 6x6 covariance with each rotation sigma capped at MAX_SIGMA_RAD (rows and columns scaled,
    so the correlations and positive definiteness are kept)."""
    scale = np.ones(6)
    for k in range(3):
        if cov6[k, k] > MAX_SIGMA_RAD ** 2:
            scale[k] = MAX_SIGMA_RAD / math.sqrt(cov6[k, k])
    return cov6 * np.outer(scale, scale)


def checked_position(xyz, what: str) -> np.ndarray:
    """Three finite coordinates within MAX_COORDINATE_M of the origin, or ValueError."""
    p = np.asarray(xyz, dtype=float).reshape(-1)
    if p.size != 3 or not np.all(np.isfinite(p)) or float(np.abs(p).max()) > MAX_COORDINATE_M:
        raise ValueError(f"{what} {p.tolist()} is not a finite position within {MAX_COORDINATE_M:g} m of the origin")
    return p


def checked_pose(pose: gtsam.Pose3, what: str) -> gtsam.Pose3:
    """`pose` when its translation is a checked position and its rotation matrix finite, else ValueError."""
    checked_position(pose.translation(), what)
    if not np.all(np.isfinite(pose.rotation().matrix())):
        raise ValueError(f"{what} has a non-finite rotation")
    return pose


def pose_from_xyz_quat(x, y, z, qx, qy, qz, qw) -> gtsam.Pose3:
    """A Pose3 from a position and a unit quaternion (norm within QUATERNION_TOLERANCE of 1), else ValueError."""
    norm = math.sqrt(qx * qx + qy * qy + qz * qz + qw * qw)
    if not math.isfinite(norm) or abs(norm - 1.0) > QUATERNION_TOLERANCE:
        raise ValueError(f"quaternion ({qx}, {qy}, {qz}, {qw}) is not a unit quaternion (norm {norm:.6g})")
    position = checked_position([x, y, z], "position")
    return gtsam.Pose3(gtsam.Rot3.Quaternion(qw / norm, qx / norm, qy / norm, qz / norm), position)


def pose_from_msg(pose) -> gtsam.Pose3:
    """gtsam.Pose3 from a geometry_msgs/Pose (or anything with position and orientation)."""
    p, q = pose.position, pose.orientation
    return pose_from_xyz_quat(p.x, p.y, p.z, q.x, q.y, q.z, q.w)


def base_to_camera(values) -> gtsam.Pose3:
    """The fixed base -> camera extrinsic from [x, y, z, qx, qy, qz, qw]."""
    if len(values) != 7:
        raise ValueError(f"base_to_camera needs 7 numbers (x y z qx qy qz qw), got {len(values)}")
    return pose_from_xyz_quat(*[float(v) for v in values])


def transform_covariance(adjoint_of: gtsam.Pose3, cov: np.ndarray) -> np.ndarray:
    """Covariance of P' = A P A^-1 (or of Z = B P A^-1 seen from the right) given P's: Ad_A cov Ad_A^T."""
    ad = adjoint_of.AdjointMap()
    out = ad @ cov @ ad.T
    return 0.5 * (out + out.T)


@dataclass
class OdometryNoise:
    """Default between-factor sigmas for odometry that reports no covariance: a floor plus a share of the step."""

    translation_ratio: float = 0.05  # sigma per metre travelled
    rotation_per_m: float = 0.01  # rad of heading sigma after 1 m travelled, growing with sqrt(distance)
    rotation_ratio: float = 0.05  # sigma per radian turned
    min_translation_m: float = 0.01
    min_rotation_rad: float = 0.002

    def covariance(self, step: gtsam.Pose3) -> np.ndarray:
        dist = float(np.linalg.norm(step.translation()))
        angle = float(np.linalg.norm(gtsam.Rot3.Logmap(step.rotation())))
        st = max(self.min_translation_m, self.translation_ratio * dist)
        # Heading is a random walk in distance: sigma rotation_per_m after 1 m, growing with sqrt(distance), so
        # the model is the same whether odometry comes every metre or every 10 m (a per-metre linear term gave
        # 0.1 rad per 10 m step: a 2.3 km lap alone then made iSAM2 raise IndeterminateLinearSystem). Only yaw
        # wanders with distance; tilt does not (odom frames are gravity-aligned, REP-105). docs/slam.md.
        tilt = max(self.min_rotation_rad, self.rotation_ratio * angle)
        yaw = max(self.min_rotation_rad, self.rotation_per_m * math.sqrt(dist) + self.rotation_ratio * angle)
        return np.diag([tilt * tilt, tilt * tilt, yaw * yaw] + [st * st] * 3)


def odometry_covariance(step: gtsam.Pose3, orientation: gtsam.Rot3, message_cov, defaults: OdometryNoise) -> np.ndarray:
    """Between-factor covariance of one odometry step: the message's pose covariance (checked: finite, symmetric,
    positive semi-definite) read as the step's uncertainty (given in the odom frame, so rotated into the frame of
    the pose at `orientation`), rotation sigmas capped at MAX_SIGMA_RAD, plus the floor variances; or the default
    when it is unset (None or all zero)."""
    if message_cov is None or is_unset(message_cov):
        return defaults.covariance(step)
    rt = orientation.matrix().T
    block = np.zeros((6, 6))
    block[:3, :3], block[3:, 3:] = rt, rt
    out = block @ ros_to_gtsam_covariance(checked_covariance(message_cov, 6, "odometry")) @ block.T
    floor = [defaults.min_rotation_rad ** 2] * 3 + [defaults.min_translation_m ** 2] * 3
    return floored(capped_rotation(0.5 * (out + out.T)), floor)


def gaussian(cov: np.ndarray):
    """A full-covariance Gaussian; a singular covariance is floored so GTSAM can whiten it."""
    c = 0.5 * (np.asarray(cov, float) + np.asarray(cov, float).T)
    w, v = np.linalg.eigh(c)
    w = np.maximum(w, 1e-12)
    return gtsam.noiseModel.Gaussian.Covariance((v * w) @ v.T)


def robust(kernel: str, k: float, cov: np.ndarray):
    """The Gaussian of `cov` under a Huber or Cauchy kernel ('none': plain Gaussian)."""
    base = gaussian(cov)
    if kernel == "none":
        return base
    estimators = {"huber": gtsam.noiseModel.mEstimator.Huber, "cauchy": gtsam.noiseModel.mEstimator.Cauchy}
    if kernel not in estimators:
        raise ValueError(f"robust_kernel {kernel!r}: expected huber, cauchy or none")
    return gtsam.noiseModel.Robust.Create(estimators[kernel].Create(k), base)
