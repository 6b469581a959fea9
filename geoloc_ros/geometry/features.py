"""Local features of one image: OpenCV keypoints + descriptors (+ depth per keypoint), and their compact blob.

Detectors: "sift", "orb", "akaze" (all in OpenCV, no weights). The default was chosen by measurement
(docs/geometry.md, `python -m geoloc_ros.geometry.benchmark`). Descriptors are stored as uint8 for all three:
ORB and AKAZE (MLDB) are binary, and OpenCV's SIFT descriptors are integers 0..255 held in float32, so uint8
loses nothing and takes a quarter of the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
import io
import zipfile

import numpy as np

DETECTORS = ("sift", "orb", "akaze")
DEFAULT_DETECTOR = "sift"
DEFAULT_MAX_KEYPOINTS = 2000
BINARY = {"orb", "akaze"}  # compared with the Hamming distance; SIFT with L2


@dataclass
class Features:
    """keypoints (N, 2) float32 pixels (x right, y down); descriptors (N, D) uint8; depth (N,) float32 metres
    along the optical axis (NaN: no reading) or None when the image had no depth; detector name;
    image_size (width, height)."""

    keypoints: np.ndarray
    descriptors: np.ndarray
    detector: str
    depth: np.ndarray | None = None
    image_size: tuple | None = None

    def __post_init__(self):
        self.keypoints = np.ascontiguousarray(self.keypoints, dtype=np.float32).reshape(-1, 2)
        self.descriptors = np.ascontiguousarray(self.descriptors, dtype=np.uint8)
        if self.descriptors.ndim != 2 or len(self.descriptors) != len(self.keypoints):
            raise ValueError(f"Features: {len(self.keypoints)} keypoints but descriptors of shape "
                             f"{self.descriptors.shape}")
        if self.detector not in DETECTORS:
            raise ValueError(f"Features: unknown detector {self.detector!r} (one of {', '.join(DETECTORS)})")
        if self.depth is not None:
            self.depth = np.ascontiguousarray(self.depth, dtype=np.float32).reshape(-1)
            if len(self.depth) != len(self.keypoints):
                raise ValueError(f"Features: {len(self.keypoints)} keypoints but {len(self.depth)} depths")

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def has_depth(self) -> bool:
        return self.depth is not None and bool(np.isfinite(self.depth).any())

    def matching_descriptors(self) -> np.ndarray:
        """What a matcher compares: uint8 bits for binary descriptors, float32 for SIFT."""
        return self.descriptors if self.detector in BINARY else self.descriptors.astype(np.float32)

    # -- the blob ----------------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """An uncompressed .npz (descriptors and keypoints hardly compress; zip keeps it readable with numpy)."""
        buf = io.BytesIO()
        arrays = {"keypoints": self.keypoints, "descriptors": self.descriptors,
                  "detector": np.array(self.detector), "image_size": np.array(self.image_size or (0, 0), np.int32)}
        if self.depth is not None:
            arrays["depth"] = self.depth
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "Features":
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                size = tuple(int(v) for v in z["image_size"])
                return cls(z["keypoints"], z["descriptors"], str(z["detector"]),
                           z["depth"] if "depth" in z.files else None, size if any(size) else None)
        except (ValueError, KeyError, OSError, zipfile.BadZipFile) as e:
            raise ValueError(f"not a features blob ({type(e).__name__}: {e})") from None


def available_detectors() -> tuple:
    """The detectors this OpenCV build provides."""
    out = []
    for name in DETECTORS:
        try:
            make_detector(name)
            out.append(name)
        except ValueError:
            pass
    return tuple(out)


def make_detector(name: str, max_keypoints: int = DEFAULT_MAX_KEYPOINTS):
    import cv2

    if name == "sift":
        return cv2.SIFT_create(nfeatures=max_keypoints)
    if name == "orb":
        # FAST threshold 10 instead of 20: more corners on low-texture street scenes
        return cv2.ORB_create(nfeatures=max_keypoints, fastThreshold=10)
    if name == "akaze":
        # OpenCV 5 moved AKAZE to opencv_contrib (the pinned opencv-python-headless 5.0 has no AKAZE_create)
        create = getattr(cv2, "AKAZE_create", None) or getattr(getattr(cv2, "xfeatures2d", None), "AKAZE_create", None)
        if create is None:
            raise ValueError(f"detector 'akaze' is not in this OpenCV ({cv2.__version__}; OpenCV 5 moved it to "
                             f"opencv_contrib); use sift or orb")
        return create(threshold=0.0005)
    raise ValueError(f"unknown detector {name!r} (one of {', '.join(DETECTORS)})")


def as_gray(image) -> np.ndarray:
    """HxW or HxWx3 (RGB, as `encode` takes it) uint8 -> HxW uint8."""
    import cv2

    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] in (3, 4):
        return cv2.cvtColor(img[:, :, :3], cv2.COLOR_RGB2GRAY)
    raise ValueError(f"image must be HxW or HxWx3, got shape {img.shape}")


def depth_in_metres(depth) -> np.ndarray:
    """A depth image as 16UC1 millimetres (uint16) or 32FC1 metres (float) -> float32 metres, NaN where 0/invalid."""
    d = np.asarray(depth)
    if d.ndim != 2:
        raise ValueError(f"depth image must be HxW, got shape {d.shape}")
    if d.dtype == np.uint16:
        m = d.astype(np.float32) / 1000.0
    elif np.issubdtype(d.dtype, np.floating):
        m = d.astype(np.float32)
    else:
        raise ValueError(f"depth image must be uint16 millimetres or float metres, got {d.dtype}")
    m[~np.isfinite(m) | (m <= 0)] = np.nan
    return m


def detect(image, detector: str = DEFAULT_DETECTOR, max_keypoints: int = DEFAULT_MAX_KEYPOINTS,
           depth=None) -> Features:
    """Keypoints and descriptors of `image`; with an aligned `depth` image, each keypoint's depth (nearest pixel)."""
    gray = as_gray(image)
    kps, desc = make_detector(detector, max_keypoints).detectAndCompute(gray, None)
    if desc is None or not kps:
        desc = np.zeros((0, 128 if detector == "sift" else 32 if detector == "orb" else 61), np.uint8)
        kps = []
    # AKAZE has no keypoint cap: keep the strongest
    order = np.argsort([-k.response for k in kps], kind="stable")[:max_keypoints]
    pts = np.array([kps[i].pt for i in order], dtype=np.float32).reshape(-1, 2)
    desc = np.asarray(desc)[order]
    if detector == "sift":
        desc = np.clip(np.rint(desc), 0, 255)
    h, w = gray.shape
    z = None
    if depth is not None:
        dm = depth_in_metres(depth)
        if dm.shape != gray.shape:
            raise ValueError(f"depth image {dm.shape[::-1]} is not the size of the image {(w, h)} (not aligned)")
        ix = np.clip(np.rint(pts[:, 0]).astype(int), 0, w - 1)
        iy = np.clip(np.rint(pts[:, 1]).astype(int), 0, h - 1)
        z = dm[iy, ix]
    return Features(pts, desc.astype(np.uint8), detector, z, (w, h))


def match(a: Features, b: Features, ratio: float = 0.8) -> np.ndarray:
    """(M, 2) index pairs (row in a, row in b): nearest neighbours passing Lowe's ratio test, each b used once."""
    import cv2

    if a.detector != b.detector:
        raise ValueError(f"cannot match {a.detector} features with {b.detector} features")
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), np.int64)
    norm = cv2.NORM_HAMMING if a.detector in BINARY else cv2.NORM_L2
    knn = cv2.BFMatcher(norm).knnMatch(a.matching_descriptors(), b.matching_descriptors(), k=2)
    best = {}
    for pair in knn:
        if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance:
            m = pair[0]
            if m.trainIdx not in best or m.distance < best[m.trainIdx][1]:
                best[m.trainIdx] = (m.queryIdx, m.distance)
    pairs = sorted((q, t) for t, (q, _) in best.items())
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)
