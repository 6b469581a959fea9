"""Each keyframe's camera model and local features, stored in the map directory (docs/maps.md).

    MAP/features.npz   uncompressed npz: ids (N,) keyframe ids, offsets (N+1,) into the concatenated arrays
                       keypoints (T, 2) float32 px, descriptors (T, D) uint8, depth (T,) float32 metres (NaN: none),
                       has_depth (N,) bool, image_size (N, 2) int32, camera (N,) int32 index into cameras.json (-1:
                       no model)
    MAP/cameras.json   {"detector", "max_keypoints", "cameras": [PinholeCamera.to_dict(), ...]} (distinct models)

Both are listed with size and sha256 in the manifest (storage.MAP_FILES) and written inside the map's temporary
directory, so they are replaced atomically with the rest of the map; the manifest's "local_features" entry names
the detector so verification can refuse a mismatched query.

On load both are checked in full (mapping/storage.parse_npz: stored members only, so nothing inflates past the
file's size; every array's type, shape and range; descriptor width of the detector; camera indices; keyframe ids
of the map): a map whose features would fail at run time does not load, and MapError names the file and reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from geoloc_ros.geometry.camera import PinholeCamera
from geoloc_ros.geometry.features import DEFAULT_DETECTOR, DEFAULT_MAX_KEYPOINTS, DETECTORS, Features, detect
from geoloc_ros.mapping.storage import CAMERAS, LOCAL_FEATURES, MapError
from geoloc_ros.stamps import stamp_ns

_ARRAYS = ("ids", "offsets", "keypoints", "descriptors", "depth", "has_depth", "image_size", "camera")


class LocalFeatureStore:
    """Camera model + local features per keyframe id. `add` one keyframe at a time; `get(id)` returns them."""

    def __init__(self, detector: str = DEFAULT_DETECTOR, max_keypoints: int = DEFAULT_MAX_KEYPOINTS):
        if detector not in DETECTORS:
            raise MapError(f"unknown local feature detector {detector!r} (one of {', '.join(DETECTORS)})")
        self.detector = detector
        self.max_keypoints = int(max_keypoints)
        self._cameras: list[PinholeCamera] = []
        self._entries: dict[int, tuple[Features, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, keyframe_id) -> bool:
        return int(keyframe_id) in self._entries

    @property
    def cameras(self) -> list[PinholeCamera]:
        return list(self._cameras)

    def add(self, keyframe_id: int, features: Features, camera: PinholeCamera | None) -> None:
        """Store a keyframe's features with `camera` (a model without an image size gets the features' size)."""
        if features.detector != self.detector:
            raise MapError(f"keyframe {keyframe_id}: {features.detector} features in a map of {self.detector} features")
        if camera is not None and camera.width is None and features.image_size:
            w, h = features.image_size
            camera = PinholeCamera(camera.fx, camera.fy, camera.cx, camera.cy, w, h, camera.distortion)
        self._entries[int(keyframe_id)] = (features, self._camera_index(camera))

    def add_image(self, keyframe_id: int, image, camera: PinholeCamera | None, depth=None) -> Features:
        """Detect the features of `image` (HxWx3 RGB or HxW uint8) and store them with `camera`."""
        try:
            features = detect(image, self.detector, self.max_keypoints, depth)
        except ValueError as e:
            raise MapError(f"keyframe {keyframe_id}: {e}") from None
        self.add(keyframe_id, features, camera)
        return features

    def get(self, keyframe_id: int) -> tuple[Features, PinholeCamera | None]:
        """(features, camera model or None) of a keyframe; KeyError when it has none stored."""
        features, cam = self._entries[int(keyframe_id)]
        return features, (self._cameras[cam] if cam >= 0 else None)

    def copy(self) -> "LocalFeatureStore":
        other = LocalFeatureStore(self.detector, self.max_keypoints)
        other._cameras, other._entries = list(self._cameras), dict(self._entries)
        return other

    def _camera_index(self, camera) -> int:
        if camera is None:
            return -1
        if camera not in self._cameras:
            self._cameras.append(camera)
        return self._cameras.index(camera)

    # -- files -------------------------------------------------------------------------------------------------
    def manifest_entry(self) -> dict:
        return {"detector": self.detector, "max_keypoints": self.max_keypoints, "keyframes": len(self),
                "files": [LOCAL_FEATURES, CAMERAS]}

    def write(self, folder: Path) -> None:
        ids = sorted(self._entries)
        feats = [self._entries[i][0] for i in ids]
        width = feats[0].descriptors.shape[1] if feats else 0
        if any(f.descriptors.shape[1] != width for f in feats):
            raise MapError("local features of different descriptor sizes cannot share one map")
        counts = np.array([len(f) for f in feats], dtype=np.int64)
        nan_depth = np.full(0, np.nan, np.float32)
        arrays = {
            "ids": np.array(ids, dtype=np.int64),
            "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            "keypoints": np.concatenate([f.keypoints for f in feats] or [np.zeros((0, 2), np.float32)]),
            "descriptors": np.concatenate([f.descriptors for f in feats] or [np.zeros((0, width), np.uint8)]),
            "depth": np.concatenate([f.depth if f.depth is not None else np.full(len(f), np.nan, np.float32)
                                     for f in feats] or [nan_depth]).astype(np.float32),
            "has_depth": np.array([f.depth is not None for f in feats], dtype=bool),
            "image_size": np.array([f.image_size or (0, 0) for f in feats], dtype=np.int32).reshape(-1, 2),
            "camera": np.array([self._entries[i][1] for i in ids], dtype=np.int32),
        }
        with open(folder / LOCAL_FEATURES, "wb") as f:
            np.savez(f, **arrays)
        doc = {"detector": self.detector, "max_keypoints": self.max_keypoints,
               "cameras": [c.to_dict() for c in self._cameras]}
        (folder / CAMERAS).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")

    @classmethod
    def read(cls, folder: Path, entry: dict, keyframe_ids, manifest: dict | None = None) -> "LocalFeatureStore":
        """Load and check the two files: every array's type, shape and range against the others, the cameras and
        the map's keyframes, so that a map that loads has usable features for every keyframe it lists. With
        `manifest`, the bytes parsed are those its checksums verified. Raises MapError naming the file."""
        cameras_path = folder / CAMERAS
        detector, max_kp, cameras = _read_cameras(cameras_path, _file_bytes(folder, CAMERAS, manifest))
        if detector != entry.get("detector"):
            raise MapError(f"{cameras_path}: detector {detector!r}, the manifest says {entry.get('detector')!r}")
        store = cls(detector, max_kp)
        store._cameras = cameras
        path = folder / LOCAL_FEATURES
        arrays = _read_arrays(path, _file_bytes(folder, LOCAL_FEATURES, manifest), detector, len(cameras))
        ids = arrays["ids"]
        unknown = set(ids.tolist()) - set(np.asarray(keyframe_ids).tolist())
        if unknown or len(ids) != entry.get("keyframes", -1):
            raise MapError(f"{path}: does not match the map's keyframes "
                           f"({len(ids)} entries, {len(unknown)} unknown ids, manifest {entry.get('keyframes')})")
        offsets = arrays["offsets"]
        for n, kid in enumerate(ids.tolist()):
            a, b = int(offsets[n]), int(offsets[n + 1])
            size = tuple(int(v) for v in arrays["image_size"][n])
            try:
                feats = Features(arrays["keypoints"][a:b], arrays["descriptors"][a:b], detector,
                                 arrays["depth"][a:b] if arrays["has_depth"][n] else None, size if any(size) else None)
            except ValueError as e:
                raise MapError(f"{path}: keyframe {kid}: {e}") from None
            store._entries[kid] = (feats, int(arrays["camera"][n]))
        return store


# Bytes per descriptor of each detector (OpenCV defaults: SIFT 128 values, ORB 256 bits, AKAZE MLDB 486 bits)
DESCRIPTOR_BYTES = {"sift": 128, "orb": 32, "akaze": 61}


def _file_bytes(folder: Path, name: str, manifest: dict | None) -> np.ndarray:
    from geoloc_ros.mapping.storage import read_verified

    if manifest is not None:
        return read_verified(folder, manifest, name)
    try:
        return np.fromfile(folder / name, dtype=np.uint8)
    except OSError as e:
        raise MapError(f"{folder / name}: cannot read ({e})") from None


def _read_cameras(path: Path, raw: np.ndarray):
    """(detector, max_keypoints, [PinholeCamera]) from cameras.json."""
    try:
        doc = json.loads(raw.tobytes().decode("utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("cameras"), list):
            raise ValueError("not an object with a 'cameras' list")
        detector, max_kp = doc.get("detector"), doc.get("max_keypoints")
        if detector not in DETECTORS:
            raise ValueError(f"detector {detector!r} is not one of {', '.join(DETECTORS)}")
        if not isinstance(max_kp, int) or isinstance(max_kp, bool) or max_kp <= 0:
            raise ValueError(f"max_keypoints {max_kp!r} is not a positive integer")
        cameras = []
        for n, c in enumerate(doc["cameras"]):
            if not isinstance(c, dict):
                raise ValueError(f"camera {n} is not an object")
            cameras.append(PinholeCamera.from_dict(c))
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as e:
        raise MapError(f"{path}: not a camera model file ({type(e).__name__}: {str(e)[:200]})") from None
    return detector, max_kp, cameras


# name -> (numpy kind codes accepted, number of dimensions)
_ARRAY_TYPES = {"ids": ("iu", 1), "offsets": ("iu", 1), "keypoints": ("f", 2), "descriptors": ("u", 2),
                "depth": ("f", 1), "has_depth": ("b", 1), "image_size": ("iu", 2), "camera": ("iu", 1)}


def _read_arrays(path: Path, raw: np.ndarray, detector: str = "", n_cameras: int | None = None) -> dict:
    from geoloc_ros.mapping.storage import parse_npz

    arrays = parse_npz(path, raw, _ARRAYS)
    for name, (kinds, ndim) in _ARRAY_TYPES.items():
        a = arrays[name]
        if a.dtype.kind not in kinds or a.ndim != ndim:
            raise MapError(f"{path}: array {name!r} is {a.dtype} of {a.ndim} dimension(s), expected {ndim} of kind "
                           f"{kinds!r}")
    if arrays["descriptors"].dtype != np.uint8:
        raise MapError(f"{path}: descriptors are {arrays['descriptors'].dtype}, expected uint8")
    for name in ("ids", "offsets", "image_size", "camera"):  # unsigned values past int64 turn negative: refused below
        arrays[name] = arrays[name].astype(np.int64)
    ids, offsets = arrays["ids"], arrays["offsets"]
    n, total = len(ids), len(arrays["keypoints"])
    if len(offsets) != n + 1 or offsets[0] != 0 or int(offsets[-1]) != total or np.any(np.diff(offsets) < 0):
        raise MapError(f"{path}: offsets do not cut {total} keypoints into {n} keyframes (truncated or altered)")
    if len(np.unique(ids)) != n:
        raise MapError(f"{path}: keyframe ids repeat")
    for name, want in (("descriptors", total), ("depth", total), ("has_depth", n), ("image_size", n), ("camera", n)):
        if len(arrays[name]) != want:
            raise MapError(f"{path}: array {name!r} has {len(arrays[name])} rows, expected {want}")
    if arrays["keypoints"].shape[1] != 2 or arrays["image_size"].shape[1] != 2:
        raise MapError(f"{path}: keypoints and image_size must have 2 columns")
    width = arrays["descriptors"].shape[1]
    if detector and total and width != DESCRIPTOR_BYTES[detector]:
        raise MapError(f"{path}: descriptors are {width} bytes wide; {detector} descriptors are "
                       f"{DESCRIPTOR_BYTES[detector]}")
    if not np.isfinite(arrays["keypoints"].astype(np.float32)).all():
        raise MapError(f"{path}: keypoints are not all finite")
    if np.any(arrays["image_size"] < 0) or np.any(arrays["image_size"] > 1 << 20):
        raise MapError(f"{path}: image sizes out of range")
    camera = arrays["camera"]
    if n_cameras is not None and np.any((camera < -1) | (camera >= n_cameras)):
        bad = int(camera[(camera < -1) | (camera >= n_cameras)][0])
        raise MapError(f"{path}: a keyframe names camera {bad} of {n_cameras}")
    return arrays


def attach_on_load(db, folder: Path, manifest: dict) -> None:
    """The `MapDatabase.load` hook: read the stored local features when the manifest lists them."""
    entry = manifest.get("local_features")
    if entry is None:
        return
    if not isinstance(entry, dict) or not isinstance(entry.get("keyframes"), int):
        raise MapError(f"{folder / 'manifest.json'}: field 'local_features' must be an object with 'detector' and "
                       f"'keyframes', got {entry!r}")
    for name in (LOCAL_FEATURES, CAMERAS):
        if name not in manifest.get("files", {}):
            raise MapError(f"{folder / name}: missing from the manifest (its local_features entry needs it)")
    db.local_features = LocalFeatureStore.read(folder, entry, db.column("id"), manifest)


def merged_store(maps, new_ids) -> LocalFeatureStore | None:
    """The local features of `maps` under the ids `new_ids` the merged map gave their keyframes (in map order,
    row order within a map); None when no map has any. Maps must share the detector."""
    stores = [m.local_features for m in maps if m.local_features is not None]
    if not stores:
        return None
    if len({(s.detector, s.max_keypoints) for s in stores}) > 1:
        raise MapError("cannot merge maps whose local features come from different detectors or keypoint caps: "
                       + ", ".join(f"{m.name!r}: {m.local_features.detector}/{m.local_features.max_keypoints}"
                                   for m in maps if m.local_features is not None))
    out = LocalFeatureStore(stores[0].detector, stores[0].max_keypoints)
    offset = 0
    for m in maps:
        ids = m.column("id").tolist()
        if m.local_features is not None:
            for old, new in zip(ids, new_ids[offset:offset + len(ids)]):
                if old in m.local_features:
                    out.add(new, *m.local_features.get(old))
        offset += len(ids)
    return out


def bag_cameras(bag, image_topic: str, info_topic: str | None = None):
    """(topic read, [(stamp_ns, PinholeCamera)] sorted by stamp) from sensor_msgs/CameraInfo in a rosbag2. Without
    `info_topic`, image_transport's sibling `<namespace>/camera_info` is tried first, then
    `<image_topic>/camera_info` (the transport suffix such as /compressed removed). ([], None) when there is none."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    base = image_topic
    for suffix in ("/compressed", "/theora", "/zstd"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    wanted = [info_topic] if info_topic else [base.rsplit("/", 1)[0] + "/camera_info", base + "/camera_info"]
    with AnyReader([Path(bag)], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        for topic in wanted:
            conns = [c for c in reader.connections if c.topic == topic]
            if not conns:
                continue
            if any(c.msgtype != "sensor_msgs/msg/CameraInfo" for c in conns):
                raise MapError(f"{bag}: topic {topic!r} is not sensor_msgs/msg/CameraInfo")
            models = []
            for conn, t, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, conn.msgtype)
                stamp = stamp_ns(msg.header.stamp)
                try:
                    models.append((stamp or int(t), PinholeCamera.from_camera_info(msg)))
                except ValueError as e:
                    raise MapError(f"{bag}: {topic}: {e}") from None
            return topic, sorted(models, key=lambda m: m[0])
    if info_topic:
        raise MapError(f"{bag}: no topic {info_topic!r}")
    return None, []


class BagDepth:
    """`depth_for(keyframe)` over a bag's depth topic (sensor_msgs/Image 16UC1 millimetres or 32FC1 metres, aligned
    with the colour image): the depth image whose header stamp is within `tolerance_ns` of the keyframe's, else
    None. Keyframes come in stamp order, so the depth messages are read once, alongside (a merge join)."""

    def __init__(self, bag, topic: str, tolerance_ns: int = 20_000_000):
        self.bag, self.topic, self.tolerance_ns = Path(bag), topic, int(tolerance_ns)
        self._messages = self._read()
        self._current = None

    def _read(self):
        from rosbags.highlevel import AnyReader
        from rosbags.image import message_to_cvimage
        from rosbags.typesys import Stores, get_typestore

        with AnyReader([self.bag], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
            conns = [c for c in reader.connections if c.topic == self.topic]
            if not conns:
                raise MapError(f"{self.bag}: no depth topic {self.topic!r}")
            if any(c.msgtype != "sensor_msgs/msg/Image" for c in conns):
                raise MapError(f"{self.bag}: depth topic {self.topic!r} is not sensor_msgs/msg/Image")
            for conn, t, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, conn.msgtype)
                if msg.encoding not in ("16UC1", "mono16", "32FC1"):
                    raise MapError(f"{self.bag}: depth topic {self.topic!r} has encoding {msg.encoding!r}, expected "
                                   f"16UC1 (millimetres) or 32FC1 (metres)")
                stamp = stamp_ns(msg.header.stamp)
                yield stamp or int(t), message_to_cvimage(msg)

    def __call__(self, keyframe):
        stamp = keyframe.stamp_ns
        while self._current is None or self._current[0] < stamp - self.tolerance_ns:
            self._current = next(self._messages, None)
            if self._current is None:
                self._messages = iter(())
                return None
        return self._current[1] if abs(self._current[0] - stamp) <= self.tolerance_ns else None


def camera_at(models, stamp_ns: int) -> PinholeCamera | None:
    """The latest model at or before `stamp_ns` (the first one for earlier stamps)."""
    if not models:
        return None
    stamps = [s for s, _ in models]
    i = max(int(np.searchsorted(stamps, stamp_ns, side="right")) - 1, 0)
    return models[i][1]
