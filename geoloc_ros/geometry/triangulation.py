"""3D points for the keypoints of images whose camera poses are known: from depth, or matched and triangulated.

    points_from_depth(features, camera, T_map_camera)   each keypoint with a depth reading, lifted into the map
    triangulate(features, cameras, T_map_cameras)       pairs of images matched (`features.match`), the matches kept
                                                        when they fit the known epipolar geometry, joined into
                                                        tracks, and each track triangulated robustly with
                                                        pycolmap's `estimate_triangulation` (reprojection error,
                                                        minimum triangulation angle)

Both return, per image, an (N, 3) float32 array of map-frame points aligned with that image's keypoints (NaN rows:
no point). Poses are T_map_camera of the optical frame (x right, y down, z forward), metres.
"""

from __future__ import annotations

import numpy as np

from geoloc_ros.geometry.camera import PinholeCamera
from geoloc_ros.geometry.features import Features, match
from geoloc_ros.geometry.relative_pose import _skew

TRIANGULATION_PIXELS = 4.0  # reprojection error a track's observation may have (pixels)
MIN_TRIANGULATION_DEG = 1.5  # narrower rays fix depth too poorly to localize against
EXHAUSTIVE_PAIRS_MAX = 30  # up to this many images every pair is matched; beyond, each image with its nearest
NEAREST_PAIRS = 8


def points_from_depth(features: Features, camera: PinholeCamera, T_map_camera) -> np.ndarray:
    """The map-frame 3D point of every keypoint with a depth reading (NaN rows for the others)."""
    out = np.full((len(features), 3), np.nan, np.float32)
    if features.depth is None or len(features) == 0:
        return out
    z = features.depth.astype(np.float64)
    ok = np.isfinite(z) & (z > 0)
    rays = camera.normalized(features.keypoints[ok])
    cam = np.column_stack([rays * z[ok, None], z[ok]])
    T = np.asarray(T_map_camera, np.float64)
    out[ok] = (cam @ T[:3, :3].T + T[:3, 3]).astype(np.float32)
    return out


def image_pairs(T_map_cameras) -> list[tuple[int, int]]:
    """Which images to match: all pairs of a small set, else each image with its NEAREST_PAIRS nearest centres."""
    n = len(T_map_cameras)
    if n <= EXHAUSTIVE_PAIRS_MAX:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    centres = np.array([np.asarray(T)[:3, 3] for T in T_map_cameras])
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=2)
    pairs = set()
    for i in range(n):
        for j in np.argsort(dist[i])[1:NEAREST_PAIRS + 1]:
            pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


def epipolar_matches(fa: Features, cam_a: PinholeCamera, T_a, fb: Features, cam_b: PinholeCamera, T_b,
                     max_error_px: float = TRIANGULATION_PIXELS) -> np.ndarray:
    """Descriptor matches (rows in a, rows in b) whose Sampson error under the known relative pose is small."""
    pairs = match(fa, fb)
    if len(pairs) == 0:
        return pairs
    T_ab = np.linalg.inv(np.asarray(T_a, np.float64)) @ np.asarray(T_b, np.float64)  # x_a = R x_b + t
    E = _skew(T_ab[:3, 3]) @ T_ab[:3, :3]
    xa = np.column_stack([cam_a.normalized(fa.keypoints[pairs[:, 0]]), np.ones(len(pairs))])
    xb = np.column_stack([cam_b.normalized(fb.keypoints[pairs[:, 1]]), np.ones(len(pairs))])
    Exb = xb @ E.T
    Etxa = xa @ E
    num = np.sum(xa * Exb, axis=1)
    den = np.sqrt(Exb[:, 0] ** 2 + Exb[:, 1] ** 2 + Etxa[:, 0] ** 2 + Etxa[:, 1] ** 2)
    focal = np.mean([cam_a.fx, cam_a.fy, cam_b.fx, cam_b.fy])
    return pairs[np.abs(num) / np.maximum(den, 1e-12) * focal < max_error_px]


def _tracks(n_images: int, sizes, matched) -> list[list[tuple[int, int]]]:
    """Union-find over (image, keypoint) nodes joined by the pairwise matches; a track that holds two keypoints of
    one image is inconsistent and dropped."""
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    parent = np.arange(int(offsets[-1]))

    def root(v):
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for (i, j), pairs in matched.items():
        for a, b in pairs:
            ra, rb = root(offsets[i] + a), root(offsets[j] + b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for (i, j), pairs in matched.items():
        for a, b in pairs:
            for node in (offsets[i] + a, offsets[j] + b):
                groups.setdefault(root(node), []).append(int(node))
    tracks = []
    for nodes in groups.values():
        nodes = sorted(set(nodes))
        images = np.searchsorted(offsets, nodes, side="right") - 1
        if len(set(images.tolist())) == len(nodes) >= 2:
            tracks.append([(int(im), int(node - offsets[im])) for im, node in zip(images, nodes)])
    return tracks


def triangulate(features, cameras, T_map_cameras, max_error_px: float = TRIANGULATION_PIXELS,
                min_angle_deg: float = MIN_TRIANGULATION_DEG) -> list[np.ndarray]:
    """Per image, the map-frame 3D points of its keypoints that were matched in other images and triangulated."""
    import pycolmap

    from geoloc_ros.geometry.absolute_pose import pycolmap_camera

    n = len(features)
    if not (n == len(cameras) == len(T_map_cameras)):
        raise ValueError(f"triangulate: {n} feature sets, {len(cameras)} cameras, {len(T_map_cameras)} poses")
    out = [np.full((len(f), 3), np.nan, np.float32) for f in features]
    if n < 2:
        return out
    matched = {(i, j): epipolar_matches(features[i], cameras[i], T_map_cameras[i], features[j], cameras[j],
                                        T_map_cameras[j], max_error_px) for i, j in image_pairs(T_map_cameras)}
    undistorted = [c.undistort_points(f.keypoints) for f, c in zip(features, cameras)]
    cols = [pycolmap_camera(c, *(f.image_size or (2 * c.cx + 1, 2 * c.cy + 1))) for f, c in zip(features, cameras)]
    cam_from_map = [pycolmap.Rigid3d(np.linalg.inv(np.asarray(T, np.float64))[:3, :]) for T in T_map_cameras]
    options = pycolmap.EstimateTriangulationOptions()
    options.min_tri_angle = float(np.radians(min_angle_deg))
    options.residual_type = pycolmap.TriangulationResidualType.REPROJECTION_ERROR
    options.ransac.max_error = float(max_error_px)
    options.ransac.random_seed = 0
    for track in _tracks(n, [len(f) for f in features], matched):
        pts = np.array([undistorted[i][k] for i, k in track], np.float64)
        found = pycolmap.estimate_triangulation(pts, [cam_from_map[i] for i, _ in track],
                                                [cols[i] for i, _ in track], options)
        if not found:
            continue
        inliers = np.asarray(found["inliers"], bool)
        if inliers.sum() < 2:
            continue
        xyz = np.asarray(found["xyz"], np.float32).reshape(3)
        for (i, k), keep in zip(track, inliers):
            if keep:
                out[i][k] = xyz
    return out
