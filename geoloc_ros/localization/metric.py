"""Metric localization: the query camera's 6-DoF pose in a map with 3D structure (docs/geometry.md).

Hierarchical, as hloc does: the place-recognition candidates (retrieval) name the keyframes; the query's local
features are matched to each candidate's stored keypoints that carry a 3D point (several keyframes); all those
2D-3D matches go to one PnP RANSAC + refinement (geometry/absolute_pose.py), whose covariance comes from the
refinement. The result is

    metric  the refined pose, when its inliers >= min_inliers and the covariance's largest position and rotation
            standard deviations are within max_sigma_m and max_sigma_deg
    place   otherwise: the best candidate keyframe's camera pose (the place estimate; never a pose PnP did not
            vouch for)
    none    no candidate at all
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
import time

import numpy as np

from geoloc_ros.geometry.absolute_pose import ABSOLUTE_RANSAC_PIXELS, absolute_pose
from geoloc_ros.geometry.camera import PinholeCamera
from geoloc_ros.geometry.features import Features, detect, match
from geoloc_ros.mapping.structure import R_OPTICAL_BODY

KINDS = ("metric", "place", "none")
DEFAULT_MIN_INLIERS = 30
DEFAULT_MAX_SIGMA_M = 0.25
DEFAULT_MAX_SIGMA_DEG = 1.0
DEFAULT_TOP_K = 3
PLACE_SIGMA_M = 5.0  # a place estimate is as good as the keyframe spacing: the fusion's floor
UNKNOWN_VARIANCE = 1e6


@dataclass
class Localization:
    """kind: KINDS; T_map_camera: the optical frame's pose in the map frame (identity for none); covariance 6x6
    over (x, y, z, roll, pitch, yaw) of T_map_camera; inliers of `correspondences` 2D-3D matches; keyframe_id:
    the best candidate; candidates: the keyframes matched; milliseconds: features, matching, pnp."""

    kind: str = "none"
    T_map_camera: np.ndarray = field(default_factory=lambda: np.eye(4))
    covariance: np.ndarray = field(default_factory=lambda: np.zeros((6, 6)))
    inliers: int = 0
    correspondences: int = 0
    keyframe_id: int | None = None
    candidates: tuple = ()
    milliseconds: dict = field(default_factory=dict)

    @property
    def quaternion_xyzw(self) -> np.ndarray:
        from scipy.spatial.transform import Rotation

        return Rotation.from_matrix(self.T_map_camera[:3, :3]).as_quat()

    def as_json(self, image: str) -> dict:
        """The `geoloc map localize --json` record: exactly image, kind, inliers, t, q_xyzw."""
        known = self.kind != "none"
        return {"image": image, "kind": self.kind, "inliers": int(self.inliers),
                "t": [float(v) for v in self.T_map_camera[:3, 3]] if known else None,
                "q_xyzw": [float(v) for v in self.quaternion_xyzw] if known else None}


class MetricLocalizer:
    """Localizes query images against a map's 3D structure (`db.structure`, `db.local_features`)."""

    def __init__(self, db, min_inliers: int = DEFAULT_MIN_INLIERS, max_sigma_m: float = DEFAULT_MAX_SIGMA_M,
                 max_sigma_deg: float = DEFAULT_MAX_SIGMA_DEG, top_k: int = DEFAULT_TOP_K,
                 max_error_px: float = ABSOLUTE_RANSAC_PIXELS, query_max_keypoints: int | None = None):
        if db.local_features is None:
            raise ValueError(f"map {db.name!r} stores no local features: no metric localization")
        self.db, self.min_inliers, self.top_k = db, int(min_inliers), int(top_k)
        self.max_sigma_m, self.max_sigma_deg, self.max_error_px = float(max_sigma_m), float(max_sigma_deg), \
            float(max_error_px)
        self.detector = db.local_features.detector
        self.query_max_keypoints = int(query_max_keypoints or db.local_features.max_keypoints)
        self._with_points = {}  # keyframe id -> (features restricted to keypoints with 3D points, their points)

    @property
    def has_structure(self) -> bool:
        return self.db.structure is not None and len(self.db.structure) > 0

    def features(self, image) -> Features:
        return detect(image, self.detector, self.query_max_keypoints)

    def localize(self, query, camera: PinholeCamera, candidate_ids) -> Localization:
        """`query`: an HxW(x3) uint8 image or its Features (the map's detector); `camera`: its model;
        `candidate_ids`: keyframe ids best first (retrieval's ranking); the first `top_k` with 3D structure are
        matched."""
        t0 = time.perf_counter()
        fq = query if isinstance(query, Features) else self.features(query)
        t1 = time.perf_counter()
        candidate_ids = [int(k) for k in candidate_ids]
        if not candidate_ids:
            return Localization(milliseconds={"features": (t1 - t0) * 1e3})
        structured = [k for k in candidate_ids if self.has_structure and k in self.db.structure][:self.top_k]
        pts2, pts3 = [], []
        for kid in structured:
            fk, xyz = self._keyframe(kid)
            pairs = match(fq, fk)
            if len(pairs):
                pts2.append(fq.keypoints[pairs[:, 0]])
                pts3.append(xyz[pairs[:, 1]])
        t2 = time.perf_counter()
        pose = absolute_pose(np.concatenate(pts2), np.concatenate(pts3), camera, self.max_error_px) \
            if pts2 else None
        t3 = time.perf_counter()
        ms = {"features": (t1 - t0) * 1e3, "matching": (t2 - t1) * 1e3, "pnp": (t3 - t2) * 1e3}
        correspondences = int(sum(len(p) for p in pts2))
        if pose is not None and self.passes(pose.inliers, pose.covariance):
            return Localization("metric", pose.T_map_camera, pose.covariance, pose.inliers, correspondences,
                                candidate_ids[0], tuple(structured), ms)
        T, cov = self.place_pose(candidate_ids[0])
        return Localization("place", T, cov, pose.inliers if pose is not None else 0, correspondences,
                            candidate_ids[0], tuple(structured), ms)

    def passes(self, inliers: int, covariance) -> bool:
        """The documented thresholds of a metric pose: enough inliers and a tight refined covariance."""
        cov = np.asarray(covariance, np.float64)
        if inliers < self.min_inliers or not np.isfinite(cov).all():
            return False
        sigma_m = math.sqrt(max(float(np.linalg.eigvalsh(cov[:3, :3]).max()), 0.0))
        sigma_deg = math.degrees(math.sqrt(max(float(np.diag(cov)[3:].max()), 0.0)))
        return sigma_m <= self.max_sigma_m and sigma_deg <= self.max_sigma_deg

    def place_pose(self, keyframe_id: int):
        """(T_map_camera, covariance) of a keyframe: its stored camera pose, else its position and orientation
        (body frame turned into the optical frame), with the place estimate's covariance."""
        from scipy.spatial.transform import Rotation

        if self.has_structure and keyframe_id in self.db.structure:
            T = self.db.structure.pose(keyframe_id)
        else:
            k = self.db.keyframe(keyframe_id)
            T = np.eye(4)
            T[:3, :3] = Rotation.from_quat([k.qx, k.qy, k.qz, k.qw]).as_matrix() @ R_OPTICAL_BODY.T
            T[:3, 3] = [v if math.isfinite(v) else 0.0 for v in (k.x, k.y, k.z)]
        cov = np.diag([PLACE_SIGMA_M ** 2] * 3 + [UNKNOWN_VARIANCE] * 3)
        return T, cov

    def _keyframe(self, kid: int):
        if kid not in self._with_points:
            fk, _ = self.db.local_features.get(kid)
            xyz = self.db.structure.points(kid)
            keep = np.isfinite(xyz[:, 0])
            sub = Features(fk.keypoints[keep], fk.descriptors[keep], fk.detector, None, fk.image_size)
            self._with_points[kid] = (sub, xyz[keep].astype(np.float64))
        return self._with_points[kid]


def candidates_for(db, encoder, images, k: int) -> list[list[int]]:
    """Retrieval: for each image, up to `k` keyframe ids best first (the map's global descriptors)."""
    if encoder is None:
        ids = [int(i) for i in db.column("id")]
        return [ids[:k] for _ in images]
    return [[m.keyframe.id for m in matches] for matches in db.search(encoder.encode(list(images)), k)]
