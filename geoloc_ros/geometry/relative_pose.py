"""`relative_pose`: the pose of camera b in camera a's optical frame from two images (or their features).

    metric     depth on either side: 3D points from the side with depth, PnP RANSAC (cv2.solvePnPRansac) and a
               Levenberg-Marquardt refinement on the inliers (cv2.solvePnPRefineLM)
    direction  no depth: essential matrix (cv2.findEssentialMat, USAC MAGSAC) and cv2.recoverPose; the
               translation is a unit vector (scale unknown)
    none       fewer than `min_inliers` inliers

The covariance (docs/geometry.md) is first-order: sigma^2 (J^T J)^-1 over the inlier residuals at the solution
(reprojection error for PnP, Sampson error for the essential matrix), with sigma^2 their mean square, carried to
(x, y, z, roll, pitch, yaw) of T_ab by the Jacobian of that conversion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from geoloc_ros.geometry.camera import PinholeCamera
from geoloc_ros.geometry.features import DEFAULT_DETECTOR, Features, detect, match

KINDS = ("metric", "direction", "none")
DEFAULT_MIN_INLIERS = 15
RANSAC_PIXELS = 2.0
# The variance (m^2) given to the translation of a "direction" result: a back end that adds the factor anyway
# learns nothing from those axes. A "none" result has zero covariance and identity, as PlaceCandidate defines it.
UNKNOWN_VARIANCE = 1e6


@dataclass
class RelativePose:
    T_ab: np.ndarray = field(default_factory=lambda: np.eye(4))
    kind: str = "none"
    inliers: int = 0
    covariance: np.ndarray = field(default_factory=lambda: np.zeros((6, 6)))
    matches: int = 0

    @property
    def translation(self) -> np.ndarray:
        return self.T_ab[:3, 3].copy()

    @property
    def rotation(self) -> np.ndarray:
        return self.T_ab[:3, :3].copy()


def relative_pose(image_a, cam_a: PinholeCamera, image_b, cam_b: PinholeCamera, depth_a=None, depth_b=None,
                  min_inliers: int = DEFAULT_MIN_INLIERS, detector: str = DEFAULT_DETECTOR) -> RelativePose:
    """`image_a`/`image_b`: HxW or HxWx3 uint8 images, or precomputed `Features` (their depth, if any, is used;
    with images, `depth_a`/`depth_b` are depth images aligned to them: uint16 mm or float metres). An image beside
    precomputed Features is detected with their detector. T_ab maps points of b's optical frame into a's:
    x_a = T_ab @ x_b."""
    given = next((f.detector for f in (image_a, image_b) if isinstance(f, Features)), detector)
    fa = _features(image_a, depth_a, given)
    fb = _features(image_b, depth_b, given)
    return solve(fa, cam_a, fb, cam_b, min_inliers)


def verify_candidate(query_features: Features, query_camera: PinholeCamera, keyframe_features: Features,
                     keyframe_camera: PinholeCamera, min_inliers: int = DEFAULT_MIN_INLIERS) -> RelativePose:
    """The geometric check of a place candidate, the way geoloc_msgs/PlaceCandidate.relative_pose reads: T_ab is
    the query camera's pose in the keyframe camera's optical frame (a = keyframe, b = query: p_k = T_ab @ p_q)."""
    return solve(keyframe_features, keyframe_camera, query_features, query_camera, min_inliers)


def solve(fa: Features, cam_a: PinholeCamera, fb: Features, cam_b: PinholeCamera,
          min_inliers: int = DEFAULT_MIN_INLIERS) -> RelativePose:
    """The pose of camera b in camera a's frame from two sets of features: metric with depth on either side,
    else direction, else none."""
    pairs = match(fa, fb)
    result = None
    if fa.has_depth or fb.has_depth:
        result = _best_metric(fa, cam_a, fb, cam_b, pairs, min_inliers)
    if result is None:
        result = _direction(fa, cam_a, fb, cam_b, pairs, min_inliers)
    result.matches = len(pairs)
    return result


def _features(image, depth, detector) -> Features:
    if isinstance(image, Features):
        if depth is not None:
            raise ValueError("pass depth with the image, or inside the Features, not both")
        return image
    return detect(image, detector, depth=depth)


# -- metric: PnP on the side with depth -------------------------------------------------------------------------

def _best_metric(fa, cam_a, fb, cam_b, pairs, min_inliers):
    """PnP from whichever side(s) have depth; the fit with more inliers wins."""
    tries = []
    if fa.has_depth:  # 3D in a, 2D in b: PnP gives T_ba
        tries.append(_pnp(fa, cam_a, fb, cam_b, pairs[:, 0], pairs[:, 1], invert=True))
    if fb.has_depth:  # 3D in b, 2D in a: PnP gives T_ab
        tries.append(_pnp(fb, cam_b, fa, cam_a, pairs[:, 1], pairs[:, 0], invert=False))
    tries = [t for t in tries if t is not None and t.inliers >= min_inliers]
    return max(tries, key=lambda t: t.inliers) if tries else None


def _pnp(f3d, cam3d, f2d, cam2d, i3d, i2d, invert):
    import cv2

    z = f3d.depth[i3d]
    ok = np.isfinite(z) & (z > 0)
    if ok.sum() < 6:
        return None
    rays = cam3d.normalized(f3d.keypoints[i3d[ok]])
    obj = np.column_stack([rays * z[ok, None], z[ok]])
    img = f2d.keypoints[i2d[ok]].astype(np.float64)
    found, rvec, tvec, idx = cv2.solvePnPRansac(obj, img, cam2d.K, cam2d.dist_coeffs, iterationsCount=1000,
                                                reprojectionError=RANSAC_PIXELS, confidence=0.999,
                                                flags=cv2.SOLVEPNP_SQPNP)
    if not found or idx is None or len(idx) < 6:
        return None
    idx = idx.reshape(-1)
    rvec, tvec = cv2.solvePnPRefineLM(obj[idx], img[idx], cam2d.K, cam2d.dist_coeffs, rvec, tvec)
    # re-select the inliers at the refined pose, so the residuals behind the covariance are the final ones
    proj, _ = cv2.projectPoints(obj, rvec, tvec, cam2d.K, cam2d.dist_coeffs)
    err = np.linalg.norm(proj.reshape(-1, 2) - img, axis=1)
    idx = np.flatnonzero(err < RANSAC_PIXELS)
    if len(idx) < 6:
        return None
    proj, jac = cv2.projectPoints(obj[idx], rvec, tvec, cam2d.K, cam2d.dist_coeffs)
    resid = (proj.reshape(-1, 2) - img[idx]).reshape(-1)
    cov_rt = _fit_covariance(jac[:, :6], resid)  # over (rvec, tvec) of x_cam2d = R X + t
    params = np.concatenate([rvec.reshape(3), tvec.reshape(3)])

    def pose6(p):
        T = _rt_to_T(p[:3], p[3:])
        return _T_to_xyzrpy(np.linalg.inv(T) if invert else T)

    T = _rt_to_T(rvec.reshape(3), tvec.reshape(3))
    T_ab = np.linalg.inv(T) if invert else T
    return RelativePose(T_ab, "metric", int(len(idx)), _propagate(pose6, params, cov_rt))


# -- direction: the essential matrix ----------------------------------------------------------------------------

def _direction(fa, cam_a, fb, cam_b, pairs, min_inliers):
    import cv2

    if len(pairs) < max(min_inliers, 5):
        return RelativePose(inliers=0)
    xa = cam_a.normalized(fa.keypoints[pairs[:, 0]])
    xb = cam_b.normalized(fb.keypoints[pairs[:, 1]])
    focal = np.mean([cam_a.fx, cam_a.fy, cam_b.fx, cam_b.fy])
    eye = np.eye(3)
    E, mask = cv2.findEssentialMat(xa, xb, eye, method=cv2.USAC_MAGSAC, prob=0.9999,
                                   threshold=RANSAC_PIXELS / focal, maxIters=5000)
    if E is None or mask is None or E.shape != (3, 3):
        return RelativePose(inliers=0)
    _, R, t, mask = cv2.recoverPose(E, xa, xb, eye, mask=mask.copy())
    inl = np.flatnonzero(mask.reshape(-1) > 0)
    if len(inl) < min_inliers:
        return RelativePose(inliers=int(len(inl)))
    # recoverPose: x_b = R x_a + t  ->  T_ba; parameters: rotation vector of R and t as a unit vector
    rvec = Rotation.from_matrix(R).as_rotvec()
    t = t.reshape(3) / np.linalg.norm(t)
    basis = _tangent_basis(t)

    def unpack(p):
        tt = t + basis @ p[3:]
        return Rotation.from_rotvec(p[:3]).as_matrix(), tt / np.linalg.norm(tt)

    def sampson(p):
        Rm, tt = unpack(p)
        return _sampson(_skew(tt) @ Rm, xa[inl], xb[inl])

    p0 = np.concatenate([rvec, [0.0, 0.0]])
    cov5 = _fit_covariance(_numeric_jacobian(sampson, p0), sampson(p0))

    def pose6(p):
        Rm, tt = unpack(p)
        return _T_to_xyzrpy(np.linalg.inv(_Rt(Rm, tt)))

    cov = _propagate(pose6, p0, cov5)
    cov[:3, :] = 0.0
    cov[:, :3] = 0.0
    cov[:3, :3] = np.eye(3) * UNKNOWN_VARIANCE
    return RelativePose(np.linalg.inv(_Rt(R, t)), "direction", int(len(inl)), cov)


def _sampson(E, xa, xb):
    a = np.column_stack([xa, np.ones(len(xa))])
    b = np.column_stack([xb, np.ones(len(xb))])
    Ea = a @ E.T  # rows: E @ a_i
    Etb = b @ E   # rows: E^T @ b_i
    num = np.sum(b * Ea, axis=1)
    den = np.sqrt(Ea[:, 0] ** 2 + Ea[:, 1] ** 2 + Etb[:, 0] ** 2 + Etb[:, 1] ** 2)
    return num / np.maximum(den, 1e-12)


# -- covariance -------------------------------------------------------------------------------------------------

def _fit_covariance(J: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """sigma^2 (J^T J)^-1 with sigma^2 = sum(r^2) / (m - n), the least-squares covariance at the solution."""
    m, n = J.shape
    sigma2 = float(residuals @ residuals) / max(m - n, 1)
    return np.linalg.pinv(J.T @ J) * sigma2


def _numeric_jacobian(fn, p0, step=1e-6):
    f0 = np.asarray(fn(p0))
    J = np.empty((len(f0), len(p0)))
    for j in range(len(p0)):
        dp = np.zeros_like(p0)
        dp[j] = step
        J[:, j] = (np.asarray(fn(p0 + dp)) - np.asarray(fn(p0 - dp))) / (2 * step)
    return J


def _propagate(fn, p0, cov):
    G = _numeric_jacobian(fn, p0)
    out = G @ cov @ G.T
    return (out + out.T) / 2


# -- transforms -------------------------------------------------------------------------------------------------

def _skew(v):
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def _tangent_basis(t):
    """Two unit vectors perpendicular to t (the unit translation's two degrees of freedom)."""
    helper = np.eye(3)[np.argmin(np.abs(t))]
    u = np.cross(t, helper)
    u /= np.linalg.norm(u)
    return np.column_stack([u, np.cross(t, u)])


def _Rt(R, t):
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, np.asarray(t).reshape(3)
    return T


def _rt_to_T(rvec, tvec):
    return _Rt(Rotation.from_rotvec(np.asarray(rvec, float)).as_matrix(), tvec)


def _T_to_xyzrpy(T):
    # fixed axes x, y, z (roll, pitch, yaw): R = Rz(yaw) Ry(pitch) Rx(roll), as geometry_msgs covariances use
    return np.concatenate([T[:3, 3], Rotation.from_matrix(T[:3, :3]).as_euler("xyz")])


def pose_message_fields(T: np.ndarray, covariance: np.ndarray):
    """(position (x, y, z), orientation quaternion (x, y, z, w), covariance as 36 floats row-major) for
    geometry_msgs/PoseWithCovariance, ROS-free."""
    T = np.asarray(T, dtype=np.float64)
    cov = np.asarray(covariance, dtype=np.float64).reshape(6, 6)
    q = Rotation.from_matrix(T[:3, :3]).as_quat()  # x, y, z, w
    return tuple(float(v) for v in T[:3, 3]), tuple(float(v) for v in q), [float(v) for v in cov.reshape(-1)]
