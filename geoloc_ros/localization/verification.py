"""Geometric verification: do the query and the keyframe image show the same 3D scene? ORB features, ratio-test
matching and a RANSAC fundamental matrix; the inlier count is the evidence. Appearance descriptors confuse
look-alike places; epipolar geometry between two views of one place is much harder to fake.

The localizer calls verification through one seam, `verify(query_frame, candidates) -> candidates` (the
candidates kept, with `verified` and `inliers` filled in); `ImageVerifier` is today's implementation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geoloc_ros.localization.frames import SESSION_MAP_ID


class GeometricVerifier:
    def __init__(self, n_features: int = 1000, min_inliers: int = 15, ratio: float = 0.8,
                 ransac_threshold_px: float = 3.0):
        import cv2

        self.min_inliers, self.ratio, self.threshold = int(min_inliers), float(ratio), float(ransac_threshold_px)
        # Small images (tiny test frames) need a small edge threshold and patch, or ORB finds nothing.
        self._orb = cv2.ORB_create(nfeatures=int(n_features), edgeThreshold=8, patchSize=15, fastThreshold=5)
        self._matcher = cv2.BFMatcher(cv2.NORM_HAMMING)

    def features(self, rgb: np.ndarray):
        """(points float32 (N, 2), descriptors uint8 (N, 32) or None): keypoint positions as an array, not
        cv2.KeyPoint objects, so stored session features cost 40 bytes per feature."""
        import cv2

        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
        keypoints, descriptors = self._orb.detectAndCompute(grey, None)
        return np.float32([k.pt for k in keypoints]).reshape(-1, 2), descriptors

    def inliers(self, query, keyframe) -> int:
        """RANSAC inliers between two feature sets (each the (keypoints, descriptors) of `features`)."""
        import cv2

        (kq, dq), (kk, dk) = query, keyframe
        if dq is None or dk is None or len(kq) < 8 or len(kk) < 8:
            return 0
        pairs = self._matcher.knnMatch(dq, dk, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < self.ratio * p[1].distance]
        if len(good) < 8:
            return 0
        a = kq[[m.queryIdx for m in good]]
        b = kk[[m.trainIdx for m in good]]
        _, mask = cv2.findFundamentalMat(a, b, cv2.FM_RANSAC, self.threshold, 0.99)
        return int(mask.sum()) if mask is not None else 0

    def verify(self, query, keyframe) -> tuple[bool, int]:
        n = self.inliers(query, keyframe)
        return n >= self.min_inliers, n


class ImageVerifier:
    """Verification against keyframe images: session keyframes by the features stored when they were added,
    map keyframes by their image under `image_dir` (named by the keyframe label; none: map keyframes fail)."""

    def __init__(self, geometric: GeometricVerifier, image_dir: str = "", session_features=None):
        self.geometric, self.image_dir, self.session_features = geometric, image_dir, session_features

    def remember(self, keyframe_id: int, frame):
        """Keep the features of a new session keyframe, for verifying later frames against it."""
        if self.session_features is not None:
            self.session_features.put(keyframe_id, self.geometric.features(frame.rgb))

    def verify(self, frame, candidates):
        query = self.geometric.features(frame.rgb)
        kept = []
        for c in candidates:
            feats = self._keyframe_features(c)
            ok, n = self.geometric.verify(query, feats) if feats is not None else (False, 0)
            c.verified, c.inliers = bool(ok), int(n)
            if ok:
                kept.append(c)
        return kept

    def _keyframe_features(self, candidate):
        if candidate.map_id == SESSION_MAP_ID:
            return self.session_features.get(candidate.keyframe.id) if self.session_features is not None else None
        if not self.image_dir:
            return None
        from geoloc_ros.datasets import read_image

        try:
            return self.geometric.features(read_image(Path(self.image_dir) / candidate.keyframe.label))
        except (OSError, ValueError):
            return None
