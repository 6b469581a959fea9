"""Every odometry pose by stamp, compactly (64 bytes a message), so a closure's stamps can be placed exactly
between pose nodes even hours later."""

from __future__ import annotations

import gtsam
import numpy as np


class OdometryHistory:
    def __init__(self, capacity: int = 1024):
        self._stamps = np.zeros(capacity, dtype=np.int64)
        self._poses = np.zeros((capacity, 7))  # x y z qw qx qy qz
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def last_stamp(self) -> int | None:
        return int(self._stamps[self._n - 1]) if self._n else None

    def append(self, stamp_ns: int, pose: gtsam.Pose3):
        if self._n == len(self._stamps):
            self._stamps = np.concatenate([self._stamps, np.zeros_like(self._stamps)])
            self._poses = np.concatenate([self._poses, np.zeros_like(self._poses)])
        q = pose.rotation().toQuaternion()
        self._stamps[self._n] = stamp_ns
        self._poses[self._n] = [*pose.translation(), q.w(), q.x(), q.y(), q.z()]
        self._n += 1

    def nearest(self, stamp_ns: int, tolerance_ns: int) -> gtsam.Pose3 | None:
        """The odometry pose whose stamp is nearest `stamp_ns`, or None when none lies within the tolerance."""
        if not self._n:
            return None
        stamps = self._stamps[: self._n]
        i = int(np.searchsorted(stamps, stamp_ns))
        best = min((j for j in (i - 1, i) if 0 <= j < self._n), key=lambda j: abs(int(stamps[j]) - stamp_ns))
        if abs(int(stamps[best]) - stamp_ns) > tolerance_ns:
            return None
        x, y, z, qw, qx, qy, qz = self._poses[best]
        return gtsam.Pose3(gtsam.Rot3.Quaternion(qw, qx, qy, qz), np.array([x, y, z]))
