"""Geometric verification with the keyframes' stored local features and camera models (docs/geometry.md): do the query
and the keyframe show the same 3D scene, and where was the query camera relative to the keyframe camera?

Prior-map keyframes are checked against the features and camera the map stores (`MapDatabase.local_features`,
written by `geoloc map build`); session keyframes against the features `remember` kept when they were added (with
that frame's camera model and depth), bounded by the session's FeatureStore. No raw keyframe image is needed.

With both camera models known, `geoloc_ros.geometry.verify_candidate` gives the relative pose (metric with depth
on either side, else direction) and its inliers. When either camera model is unknown (no CameraInfo received
yet, or a map built without one) no pose can be computed: the candidate is judged by the inliers of a RANSAC
fundamental matrix between the same features, and its relative pose stays "none".

The localizer calls verification through one seam, the `Verifier` protocol: `verify(query_frame, candidates) ->
candidates kept` (new candidates with `verified`, `inliers` and `relative_pose` filled in), and
`remember(keyframe_id, frame)` for session keyframes."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Protocol

import numpy as np

from geoloc_ros.geometry import DEFAULT_DETECTOR, RelativePose, detect, match, verify_candidate
from geoloc_ros.geometry.features import DEFAULT_MAX_KEYPOINTS
from geoloc_ros.localization.frames import SESSION_MAP_ID

POSE_LEVELS = ("none", "direction", "metric")  # verification_require_pose values, weakest first
FUNDAMENTAL_PIXELS = 3.0  # RANSAC threshold of the camera-less check (pixels)
REBUILD_HINT = "rebuild it with `geoloc map build --local-features sift` (the default)"


class Verifier(Protocol):
    """What the localizer asks of geometric verification."""

    counts: Counter  # verdicts and why candidates could not be checked, for /diagnostics

    def verify(self, frame, candidates) -> list:
        """The candidates that `frame` verifiably shows, as new Candidates with verified, inliers and
        relative_pose set."""

    def remember(self, keyframe_id: int, frame) -> None:
        """Keep what later verification against session keyframe `keyframe_id` (made from `frame`) needs."""

    def with_maps(self, maps) -> Verifier:
        """The same verifier for reloaded maps."""

    def problems(self) -> list[str]:
        """Why some candidates can never be verified, for the log and /diagnostics."""


class FeatureVerifier:
    def __init__(self, maps=(), session_features=None, min_inliers: int = 15, require_pose: str = "none",
                 detector: str = DEFAULT_DETECTOR, max_keypoints: int = DEFAULT_MAX_KEYPOINTS, counts=None):
        """`maps`: the snapshot's MapEntry objects; `session_features`: the SessionMap's FeatureStore (None: no
        session map); `require_pose`: one of POSE_LEVELS; `detector`/`max_keypoints`: for session keyframes
        (a prior map's candidates are compared with query features of that map's own detector)."""
        if require_pose not in POSE_LEVELS:
            raise ValueError(f"verification_require_pose {require_pose!r}: expected one of {', '.join(POSE_LEVELS)}")
        self.maps = tuple(maps)
        self.stores = {m.id: m.db.local_features for m in self.maps}
        self.session_features, self.min_inliers = session_features, int(min_inliers)
        self.require_pose, self.detector, self.max_keypoints = require_pose, detector, int(max_keypoints)
        self.counts = Counter() if counts is None else counts  # shared across reloads, read by /diagnostics
        self._query = None  # the last frame's query features, reused when that frame becomes a session keyframe

    def with_maps(self, maps) -> FeatureVerifier:
        """The same verifier (session features, settings, counters) for reloaded maps."""
        return FeatureVerifier(maps, self.session_features, self.min_inliers, self.require_pose, self.detector,
                               self.max_keypoints, self.counts)

    def problems(self) -> list[str]:
        """Why some candidates can never be verified (maps without stored features), for the log and diagnostics."""
        return [f"map {m.name!r} ({m.id}) stores no local features: its candidates stay unverified and never "
                f"become loop closures while verification is on; {REBUILD_HINT}"
                for m in self.maps if self.stores.get(m.id) is None]

    # -- the seam ----------------------------------------------------------------------------------------------
    def verify(self, frame, candidates):
        query = self._query_for(frame)
        checked = [self._check(query, c) for c in candidates]
        return [c for c in checked if c.verified]

    def remember(self, keyframe_id: int, frame):
        """Keep a new session keyframe's features with its camera model (depth inside the features)."""
        if self.session_features is not None:
            self.session_features.put(keyframe_id, (self._query_for(frame).get(self.detector), frame.camera_model))

    def verify_with(self, frame, candidate, stored):
        """`candidate` judged against features sent by the robot that owns its keyframe: `stored` is
        (geometry.Features, PinholeCamera or None), or None when it had none. Safe beside the worker's `verify`."""
        return self._check(QueryFeatures(frame, self.max_keypoints, self.counts), candidate, stored)

    # -- one candidate -----------------------------------------------------------------------------------------
    def _check(self, query, c, stored=False):
        """`c` with what verification found (verified, inliers, relative_pose); `stored`: the keyframe's
        (features, camera), or False to look them up."""
        stored = self._stored(c) if stored is False else stored
        if stored is None:
            self.counts["no_features"] += 1
            return replace(c, verified=False, inliers=0, relative_pose=None)
        features, camera = stored
        if query.camera is None or camera is None:
            self.counts["no_query_camera" if query.camera is None else "no_keyframe_camera"] += 1
            result = RelativePose(inliers=fundamental_inliers(query.get(features.detector), features))
        else:
            result = verify_candidate(query.get(features.detector), query.camera, features, camera, self.min_inliers)
        inliers = int(result.inliers)
        verified = inliers >= self.min_inliers and \
            POSE_LEVELS.index(result.kind) >= POSE_LEVELS.index(self.require_pose)
        self.counts["verified" if verified else "rejected"] += 1
        if verified:
            self.counts[f"pose_{result.kind}"] += 1
        return replace(c, verified=verified, inliers=inliers,
                       relative_pose=result if result.kind != "none" else None)

    def _stored(self, c):
        """(Features, PinholeCamera or None) of the candidate's keyframe, or None when none are stored."""
        if c.map_id == SESSION_MAP_ID:
            return self.session_features.get(c.keyframe.id) if self.session_features is not None else None
        store = self.stores.get(c.map_id)
        if store is None:
            return None
        try:
            return store.get(c.keyframe.id)
        except KeyError:
            return None

    def _query_for(self, frame):
        if self._query is None or self._query.frame is not frame:
            self._query = QueryFeatures(frame, self.max_keypoints, self.counts)
        return self._query


class QueryFeatures:
    """The query frame's features per detector (computed on first use) and its camera model at the image size."""

    def __init__(self, frame, max_keypoints: int, counts: Counter):
        self.frame, self.max_keypoints, self.counts = frame, max_keypoints, counts
        self.camera = _at_image_size(frame.camera_model, frame.rgb)
        self._by_detector = {}

    def get(self, detector: str):
        if detector not in self._by_detector:
            depth = self.frame.depth
            try:
                f = detect(self.frame.rgb, detector, self.max_keypoints, depth=depth)
            except ValueError:  # a depth image not aligned with the colour image: verify without depth
                self.counts["depth_not_aligned"] += 1
                f = detect(self.frame.rgb, detector, self.max_keypoints)
            self._by_detector[detector] = f
        return self._by_detector[detector]


def _at_image_size(camera, rgb):
    """A CameraInfo for another resolution (binning, a resized stream) is scaled to the image; None stays None."""
    if camera is None or camera.width is None or camera.height is None:
        return camera
    h, w = rgb.shape[:2]
    return camera if (camera.width, camera.height) == (w, h) else camera.scaled(w, h)


def fundamental_inliers(a, b, threshold_px: float = FUNDAMENTAL_PIXELS) -> int:
    """RANSAC inliers of a fundamental matrix between two feature sets: the evidence when no camera model is known."""
    import cv2

    pairs = match(a, b)
    if len(pairs) < 8:
        return 0
    pa = np.ascontiguousarray(a.keypoints[pairs[:, 0]], dtype=np.float64)
    pb = np.ascontiguousarray(b.keypoints[pairs[:, 1]], dtype=np.float64)
    _, mask = cv2.findFundamentalMat(pa, pb, cv2.FM_RANSAC, threshold_px, 0.99)
    return int(mask.sum()) if mask is not None else 0


def build_verifier(s, snapshot, session) -> Verifier | None:
    """The FeatureVerifier for `s` (a LocalizerConfig) and a loaded snapshot, or None when verification is off."""
    if not s.verification:
        return None
    return FeatureVerifier(snapshot.maps, session.features if session is not None else None,
                           s.verification_min_inliers, s.verification_require_pose, s.verification_detector,
                           s.verification_max_keypoints)


def diagnostics(verifier: Verifier | None) -> dict:
    """/diagnostics values of verification: candidates verified / rejected, poses by kind, and why candidates
    could not be checked (no_features, no_query_camera: no CameraInfo yet, no_keyframe_camera)."""
    if verifier is None:
        return {}
    out = {f"verification_{k}": v for k, v in sorted(verifier.counts.items())}
    problems = verifier.problems()
    if problems:
        out["verification_problems"] = "; ".join(problems)
    return out
