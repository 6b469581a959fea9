"""Geometric verification: do the query and the keyframe image show the same 3D scene? ORB features, ratio-test
matching and a RANSAC fundamental matrix; the inlier count is the evidence. Appearance descriptors confuse
look-alike places; epipolar geometry between two views of one place is much harder to fake."""

from __future__ import annotations

import numpy as np


class GeometricVerifier:
    def __init__(self, n_features: int = 1000, min_inliers: int = 15, ratio: float = 0.8,
                 ransac_threshold_px: float = 3.0):
        import cv2

        self.min_inliers, self.ratio, self.threshold = int(min_inliers), float(ratio), float(ransac_threshold_px)
        # Small images (tiny test frames) need a small edge threshold and patch, or ORB finds nothing.
        self._orb = cv2.ORB_create(nfeatures=int(n_features), edgeThreshold=8, patchSize=15, fastThreshold=5)
        self._matcher = cv2.BFMatcher(cv2.NORM_HAMMING)

    def features(self, rgb: np.ndarray):
        import cv2

        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
        return self._orb.detectAndCompute(grey, None)

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
        a = np.float32([kq[m.queryIdx].pt for m in good])
        b = np.float32([kk[m.trainIdx].pt for m in good])
        _, mask = cv2.findFundamentalMat(a, b, cv2.FM_RANSAC, self.threshold, 0.99)
        return int(mask.sum()) if mask is not None else 0

    def verify(self, query, keyframe) -> tuple[bool, int]:
        n = self.inliers(query, keyframe)
        return n >= self.min_inliers, n
