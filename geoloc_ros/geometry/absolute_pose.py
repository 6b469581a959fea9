"""`absolute_pose`: a camera's pose in a map frame from 2D-3D correspondences (keypoints of the query image and
3D points of the map), ROS-free.

pycolmap's LO-RANSAC P3P with a non-linear refinement (`estimate_and_refine_absolute_pose`) on undistorted
pixels; the covariance is first-order, the same as `relative_pose`'s PnP: sigma^2 (J^T J)^-1 over the inliers'
reprojection residuals at the refined pose (sigma^2 their mean square), carried to (x, y, z, roll, pitch, yaw)
of T_map_camera by the Jacobian of that conversion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geoloc_ros.geometry.camera import PinholeCamera
from geoloc_ros.geometry.relative_pose import _fit_covariance, _propagate, _rt_to_T, _T_to_xyzrpy

ABSOLUTE_RANSAC_PIXELS = 4.0  # inlier threshold of the 2D-3D RANSAC (pixels)
MIN_CORRESPONDENCES = 6


@dataclass
class AbsolutePose:
    """T_map_camera: the camera's (optical frame: x right, y down, z forward) pose in the map frame; covariance
    6x6 over (x, y, z, roll, pitch, yaw) of T_map_camera; inliers of `correspondences`."""

    T_map_camera: np.ndarray = field(default_factory=lambda: np.eye(4))
    inliers: int = 0
    correspondences: int = 0
    covariance: np.ndarray = field(default_factory=lambda: np.zeros((6, 6)))
    inlier_mask: np.ndarray | None = None

    @property
    def sigma_position_m(self) -> float:
        """The largest standard deviation of the position over its principal axes (metres)."""
        return float(np.sqrt(max(np.linalg.eigvalsh(self.covariance[:3, :3]).max(), 0.0)))

    @property
    def sigma_rotation_deg(self) -> float:
        """The largest standard deviation of roll, pitch, yaw (degrees)."""
        return float(np.degrees(np.sqrt(max(np.diag(self.covariance)[3:].max(), 0.0))))


def pycolmap_camera(camera: PinholeCamera, width: int, height: int):
    """A pycolmap PINHOLE camera with `camera`'s intrinsics (points are undistorted before they reach it)."""
    import pycolmap

    return pycolmap.Camera(model="PINHOLE", width=int(width), height=int(height),
                           params=[camera.fx, camera.fy, camera.cx, camera.cy])


def absolute_pose(points2d, points3d, camera: PinholeCamera, max_error_px: float = ABSOLUTE_RANSAC_PIXELS,
                  seed: int = 0) -> AbsolutePose | None:
    """The pose of the camera that saw the map points `points3d` (M, 3) at the pixels `points2d` (M, 2); None
    when RANSAC finds no pose with at least MIN_CORRESPONDENCES inliers."""
    import cv2
    import pycolmap

    pts2 = camera.undistort_points(np.asarray(points2d, np.float64).reshape(-1, 2))
    pts3 = np.asarray(points3d, np.float64).reshape(-1, 3)
    if len(pts2) != len(pts3):
        raise ValueError(f"absolute_pose: {len(pts2)} 2D points for {len(pts3)} 3D points")
    if len(pts2) < MIN_CORRESPONDENCES:
        return None
    width = camera.width or int(2 * camera.cx + 1)
    height = camera.height or int(2 * camera.cy + 1)
    estimation = pycolmap.AbsolutePoseEstimationOptions()
    estimation.ransac.max_error = float(max_error_px)
    estimation.ransac.random_seed = int(seed)  # the same pose for the same input on every run
    found = pycolmap.estimate_and_refine_absolute_pose(pts2, pts3, pycolmap_camera(camera, width, height),
                                                       estimation)
    if not found or int(found["num_inliers"]) < MIN_CORRESPONDENCES:
        return None
    cam_from_world = found["cam_from_world"].matrix()  # x_cam = R X + t
    rvec = cv2.Rodrigues(cam_from_world[:, :3])[0].reshape(3)
    tvec = cam_from_world[:, 3].copy()
    K, no_dist = camera.K, np.zeros(0)
    proj, _ = cv2.projectPoints(pts3, rvec, tvec, K, no_dist)
    err = np.linalg.norm(proj.reshape(-1, 2) - pts2, axis=1)
    mask = err < max_error_px  # the refined pose's inliers: their residuals are the covariance's
    if mask.sum() < MIN_CORRESPONDENCES:
        return None
    proj, jac = cv2.projectPoints(pts3[mask], rvec, tvec, K, no_dist)
    cov_rt = _fit_covariance(jac[:, :6], (proj.reshape(-1, 2) - pts2[mask]).reshape(-1))

    def map_pose(p):
        return _T_to_xyzrpy(np.linalg.inv(_rt_to_T(p[:3], p[3:])))

    params = np.concatenate([rvec, tvec])
    T_map_camera = np.linalg.inv(_rt_to_T(rvec, tvec))
    return AbsolutePose(T_map_camera, int(mask.sum()), len(pts2), _propagate(map_pose, params, cov_rt), mask)
