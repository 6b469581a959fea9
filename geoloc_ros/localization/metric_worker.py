"""The node's metric localization, beside the place-recognition path (ROS-free).

A frame whose loop closure names a prior map with 3D structure, seen by a camera with a known model, goes to one
background thread (`MetricPublisher.submit`) instead of having its keyframe-fusion pose published at once; the
place-recognition path goes on with the next frame. The thread localizes the frame against the map
(localization/metric.py), carries the camera pose to the robot through the `base_to_camera` extrinsic, and
publishes it with its covariance; when localization does not pass its thresholds it publishes the fused pose
instead. One frame waits at most: a newer one replaces it (newest wins) and the replaced one is counted.

Counters (the node's /diagnostics): metric_poses (published metric), place_poses (fused, published by either path),
metric_fallbacks (sent to metric localization, fused published), metric_superseded, metric_errors.
"""

from __future__ import annotations

from collections import Counter
import math
import threading

import numpy as np
from scipy.spatial.transform import Rotation

from geoloc_ros.geometry.relative_pose import _propagate, _T_to_xyzrpy
from geoloc_ros.localization.frames import Pose
from geoloc_ros.localization.metric import MetricLocalizer

COUNTERS = ("metric_poses", "place_poses", "metric_fallbacks", "metric_superseded", "metric_errors")


def extrinsic(values) -> np.ndarray:
    """T_base_camera (camera optical frame in the base frame) from [x, y, z, qx, qy, qz, qw]."""
    try:
        v = [float(x) for x in values] if not isinstance(values, (str, bytes)) else []
    except (TypeError, ValueError):
        v = []
    if len(v) != 7 or not all(math.isfinite(x) for x in v) or abs(np.linalg.norm(v[3:]) - 1.0) > 1e-3:
        raise ValueError(f"base_to_camera needs x y z qx qy qz qw with a unit quaternion, got {values!r}")
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = Rotation.from_quat(v[3:]).as_matrix(), v[:3]
    return T


def base_pose(T_map_camera, covariance, T_base_camera):
    """(T_map_base, its covariance over x y z roll pitch yaw) from the camera's pose and covariance."""
    T_camera_base = np.linalg.inv(T_base_camera)

    def to_base(p):
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = Rotation.from_euler("xyz", p[3:]).as_matrix(), p[:3]
        return _T_to_xyzrpy(T @ T_camera_base)

    return T_map_camera @ T_camera_base, _propagate(to_base, _T_to_xyzrpy(T_map_camera), covariance)


class MetricPublisher:
    """`wants(result)` says whether a result's pose goes through metric localization; `submit(result, snapshot)`
    hands it over (newest wins); `publish(result, pose)` is called from the thread (or directly by the caller
    for everything else). `stop()` ends the thread."""

    def __init__(self, settings, publish, counts: Counter | None = None):
        self.settings, self.publish = settings, publish
        self.T_base_camera = extrinsic(settings.base_to_camera)
        self.counts = Counter() if counts is None else counts
        self._localizers: dict = {}  # (snapshot id, map id) -> MetricLocalizer
        self._cv = threading.Condition()
        self._job = None
        self.last_metric = None  # (frame time ns, Pose) of the last metric pose published: the metric search prior
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="metric_localization", daemon=True)
        self._thread.start()

    def wants(self, result, snapshot) -> bool:
        if not self.settings.metric_localization or result.pose is None or not result.closures:
            return False
        entry = snapshot.entry(result.closures[0].map_id)
        return entry is not None and result.frame.camera_model is not None and \
            getattr(entry.db, "structure", None) is not None and len(entry.db.structure) > 0 and \
            (entry.db.frame == snapshot.primary_frame or snapshot.primary_frame is None)

    def submit(self, result, snapshot) -> None:
        with self._cv:
            if self._job is not None:
                self.counts["metric_superseded"] += 1
            self._job = (result, snapshot)
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stop, self._job = True, None
            self._cv.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)

    def _run(self):
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._job is not None or self._stop)
                if self._stop:
                    return
                (result, snapshot), self._job = self._job, None
            try:
                pose = self.localize(result, snapshot)
            except Exception:  # noqa: BLE001 - a bad frame must never kill the thread: the fused pose goes out
                self.counts["metric_errors"] += 1
                pose = None
            if pose is None:
                self.counts["metric_fallbacks"] += 1
                self.counts["place_poses"] += 1
                self.publish(result, result.pose)
            else:
                self.counts["metric_poses"] += 1
                self.last_metric = (result.frame.time_ns, pose)
                self.publish(result, pose)

    def localize(self, result, snapshot) -> Pose | None:
        """The metric base pose of the result's frame, or None when localization does not pass its thresholds."""
        s = self.settings
        entry = snapshot.entry(result.closures[0].map_id)
        key = (id(snapshot), entry.id)
        if key not in self._localizers:
            self._localizers = {k: v for k, v in self._localizers.items() if k[0] == id(snapshot)}
            self._localizers[key] = MetricLocalizer(entry.db, s.metric_min_inliers, s.metric_max_sigma_m,
                                                    s.metric_max_sigma_deg, s.metric_top_k)
        ids = [c.keyframe.id for c in result.candidates if c.map_id == entry.id] or \
            [c.keyframe.id for c in result.closures]
        found = self._localizers[key].localize(result.frame.rgb, result.frame.camera_model, ids)
        if found.kind != "metric":
            return None
        T, cov = base_pose(found.T_map_camera, found.covariance, self.T_base_camera)
        frame = entry.db.frame
        wgs84 = tuple(float(v) for v in frame.to_wgs84(*T[:3, 3])) if frame is not None else None
        return Pose(float(T[0, 3]), float(T[1, 3]), float(T[2, 3]),
                    tuple(float(v) for v in Rotation.from_matrix(T[:3, :3]).as_quat()),
                    [float(v) for v in cov.reshape(-1)], wgs84)
