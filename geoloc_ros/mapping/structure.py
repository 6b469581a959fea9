"""The 3D structure of a map: each structured keyframe's camera pose in the map frame and a 3D point per stored
keypoint (docs/geometry.md, "Metric localization").

    MAP/structure.npz   uncompressed npz: ids (N,) keyframe ids with structure, poses (N, 7) float64 T_map_camera
                        as tx ty tz qx qy qz qw (optical frame: x right, y down, z forward; metres), offsets (N+1,)
                        into points (T, 3) float32 map-frame points aligned with that keyframe's stored keypoints
                        (features.npz; NaN rows: no point)

The manifest's "structure" entry says where the structure came from (`source`: depth, triangulation, sfm or
colmap), whether the map frame is georegistered, and how many keyframes carry it; keyframes not in `ids` have no
3D structure. A map without the entry loads as before. Corrupted poses or points (non-finite, not unit
quaternions, points that do not line up with the keypoints) are refused with MapError at load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from geoloc_ros.mapping.storage import STRUCTURE, MapError

SOURCES = ("depth", "triangulation", "sfm", "colmap")
_ARRAYS = ("ids", "poses", "offsets", "points")
_MAX_COORDINATE_M = 1e7  # beyond the Earth's size: a corrupted value, not a map point
# optical frame (x right, y down, z forward) -> body (x forward, y left, z up): the columns are body axes in optical
R_OPTICAL_BODY = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


def pose_to_row(T) -> np.ndarray:
    T = np.asarray(T, np.float64)
    return np.concatenate([T[:3, 3], Rotation.from_matrix(T[:3, :3]).as_quat()])


def row_to_pose(row) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(np.asarray(row[3:7], np.float64)).as_matrix()
    T[:3, 3] = row[:3]
    return T


def body_quaternion(T_map_camera) -> tuple[float, float, float, float]:
    """(qx, qy, qz, qw) of the camera's body frame (x forward, y left, z up) in the map frame: what a keyframe
    stores as its orientation, so that its heading is the camera's viewing direction."""
    R = np.asarray(T_map_camera, np.float64)[:3, :3] @ R_OPTICAL_BODY
    return tuple(float(v) for v in Rotation.from_matrix(R).as_quat())


class MapStructure:
    """Camera pose + per-keypoint 3D points of the keyframes that have them."""

    def __init__(self, source: str, georegistered: bool = False):
        if source not in SOURCES:
            raise MapError(f"unknown structure source {source!r} (one of {', '.join(SOURCES)})")
        self.source, self.georegistered = source, bool(georegistered)
        self._entries: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, keyframe_id) -> bool:
        return int(keyframe_id) in self._entries

    @property
    def ids(self) -> list[int]:
        return sorted(self._entries)

    def add(self, keyframe_id: int, T_map_camera, points) -> None:
        T = np.asarray(T_map_camera, np.float64)
        pts = np.asarray(points, np.float32).reshape(-1, 3)
        if T.shape != (4, 4) or not np.isfinite(T).all():
            raise MapError(f"keyframe {keyframe_id}: camera pose must be a finite 4x4 matrix")
        self._entries[int(keyframe_id)] = (T, pts)

    def pose(self, keyframe_id: int) -> np.ndarray:
        """T_map_camera of the keyframe (KeyError when it has no structure)."""
        return self._entries[int(keyframe_id)][0].copy()

    def points(self, keyframe_id: int) -> np.ndarray:
        """(N, 3) map-frame points aligned with the keyframe's stored keypoints (NaN rows: none)."""
        return self._entries[int(keyframe_id)][1]

    def point_count(self) -> int:
        return int(sum(np.isfinite(p[:, 0]).sum() for _, p in self._entries.values()))

    def copy(self) -> "MapStructure":
        other = MapStructure(self.source, self.georegistered)
        other._entries = dict(self._entries)
        return other

    # -- files -------------------------------------------------------------------------------------------------
    def manifest_entry(self) -> dict:
        return {"source": self.source, "georegistered": self.georegistered, "keyframes": len(self),
                "points": self.point_count(), "files": [STRUCTURE]}

    def write(self, folder: Path) -> None:
        ids = self.ids
        pts = [self._entries[i][1] for i in ids]
        arrays = {"ids": np.array(ids, np.int64),
                  "poses": np.array([pose_to_row(self._entries[i][0]) for i in ids], np.float64).reshape(-1, 7),
                  "offsets": np.concatenate([[0], np.cumsum([len(p) for p in pts])]).astype(np.int64),
                  "points": np.concatenate(pts or [np.zeros((0, 3), np.float32)]).astype(np.float32)}
        with open(Path(folder) / STRUCTURE, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def read(cls, path: Path, raw: np.ndarray, entry, keyframe_ids, local_features) -> "MapStructure":
        """Parse and check structure.npz (`raw`: its verified bytes) against the manifest entry, the map's keyframe
        ids and its stored local features."""
        import io
        import zipfile

        if not isinstance(entry, dict) or entry.get("source") not in SOURCES \
                or not isinstance(entry.get("georegistered"), bool) or not isinstance(entry.get("keyframes"), int):
            raise MapError(f"{path}: the manifest's 'structure' entry must name its source ({', '.join(SOURCES)}), "
                           f"georegistered (true/false) and keyframes (an integer); got {entry!r}")
        try:
            with np.load(io.BytesIO(raw.tobytes()), allow_pickle=False) as z:
                arrays = {name: z[name] for name in _ARRAYS}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise MapError(f"{path}: not a readable structure file ({type(e).__name__}: {e})") from None
        ids, poses, offsets, points = (arrays[n] for n in _ARRAYS)
        if ids.ndim != 1 or poses.shape != (len(ids), 7) or offsets.shape != (len(ids) + 1,) \
                or points.ndim != 2 or points.shape[1:] != (3,) or len(ids) != entry["keyframes"] \
                or not np.issubdtype(ids.dtype, np.integer) or not np.issubdtype(offsets.dtype, np.integer):
            raise MapError(f"{path}: array shapes disagree ({len(ids)} ids, poses {poses.shape}, offsets "
                           f"{offsets.shape}, points {points.shape}, manifest {entry['keyframes']} keyframes)")
        if len(ids) and (offsets[0] != 0 or offsets[-1] != len(points) or np.any(np.diff(offsets) < 0)):
            raise MapError(f"{path}: offsets do not cover the points (truncated or altered)")
        if len(set(ids.tolist())) != len(ids) or set(ids.tolist()) - set(np.asarray(keyframe_ids).tolist()):
            raise MapError(f"{path}: keyframe ids repeated or not in the map")
        if not np.isfinite(poses).all() or np.any(np.abs(poses[:, :3]) > _MAX_COORDINATE_M) \
                or np.any(np.abs(np.linalg.norm(poses[:, 3:], axis=1) - 1.0) > 1e-3):
            raise MapError(f"{path}: corrupted camera poses (non-finite, out of range, or not unit quaternions)")
        finite = np.isfinite(points)
        if np.any(finite.any(axis=1) != finite.all(axis=1)) or np.any(np.abs(points[finite]) > _MAX_COORDINATE_M):
            raise MapError(f"{path}: corrupted 3D points (partly NaN or out of range)")
        store = cls(entry["source"], entry["georegistered"])
        for n, kid in enumerate(ids.tolist()):
            pts = points[int(offsets[n]):int(offsets[n + 1])]
            if local_features is None or kid not in local_features or len(local_features.get(kid)[0]) != len(pts):
                raise MapError(f"{path}: keyframe {kid} has {len(pts)} points but not as many stored keypoints")
            store._entries[kid] = (row_to_pose(poses[n]), pts)
        return store


def attach_on_load(db, folder: Path, manifest: dict) -> None:
    """The `MapDatabase.load` hook: read the 3D structure when the manifest has a "structure" entry."""
    from geoloc_ros.mapping import storage

    db.structure = None
    entry = manifest.get("structure")
    if entry is None:
        return
    if STRUCTURE not in manifest.get("files", {}):
        raise MapError(f"{folder / STRUCTURE}: missing from the manifest (its structure entry needs it)")
    raw = storage.read_verified(folder, manifest, STRUCTURE)
    db.structure = MapStructure.read(folder / STRUCTURE, raw, entry, db.column("id"), db.local_features)
