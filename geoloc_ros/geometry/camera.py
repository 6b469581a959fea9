"""`PinholeCamera`: a pinhole camera model with OpenCV distortion, ROS-free.

It converts to and from `sensor_msgs/CameraInfo` by field name only (`k`, `d`, `width`, `height`,
`distortion_model`), so any object with those attributes works and this module never imports ROS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
from pathlib import Path

import numpy as np

# 35 mm film is 36 mm wide: EXIF FocalLengthIn35mmFilm is the focal length a 36 mm wide sensor would need
FILM_35MM_WIDTH_MM = 36.0
_EXIF_IFD = 0x8769
_TAG_FOCAL_LENGTH = 0x920A
_TAG_FOCAL_35MM = 0xA405
_TAG_FOCAL_PLANE_X_RES = 0xA20E
_TAG_FOCAL_PLANE_RES_UNIT = 0xA210
_RES_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0}  # inch, centimetre, millimetre


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics in pixels; `distortion` in OpenCV order k1 k2 p1 p2 [k3 ...] (empty: none)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int | None = None
    height: int | None = None
    distortion: tuple = field(default=())

    def __post_init__(self):
        for name in ("fx", "fy", "cx", "cy"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"PinholeCamera: {name} must be finite, got {value}")
            object.__setattr__(self, name, value)
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"PinholeCamera: focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None:
                if int(value) <= 0:
                    raise ValueError(f"PinholeCamera: {name} must be positive, got {value}")
                object.__setattr__(self, name, int(value))
        dist = tuple(float(d) for d in self.distortion)
        if len(dist) not in (0, 4, 5, 8, 12, 14):
            raise ValueError(f"PinholeCamera: distortion has {len(dist)} coefficients; OpenCV takes 4, 5, 8, 12 or 14 "
                             f"(k1 k2 p1 p2 [k3 ...])")
        # trailing zeros carry no distortion: keep the tuple empty so that "undistorted" is one thing
        object.__setattr__(self, "distortion", () if not any(dist) else dist)

    # -- matrices ----------------------------------------------------------------------------------------------
    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def dist_coeffs(self) -> np.ndarray:
        return np.asarray(self.distortion, dtype=np.float64)

    def undistort_points(self, points) -> np.ndarray:
        """(N, 2) pixel coordinates -> the pixels an undistorted camera with the same K would see."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if not self.distortion or len(pts) == 0:
            return pts.copy()
        import cv2

        return cv2.undistortPoints(pts.reshape(-1, 1, 2), self.K, self.dist_coeffs, P=self.K).reshape(-1, 2)

    def normalized(self, points) -> np.ndarray:
        """(N, 2) pixels -> (N, 2) normalised image coordinates (x/z, y/z), distortion removed."""
        pts = self.undistort_points(points)
        return np.stack([(pts[:, 0] - self.cx) / self.fx, (pts[:, 1] - self.cy) / self.fy], axis=1)

    def scaled(self, width: int, height: int) -> "PinholeCamera":
        """The same camera for images resized to width x height (needs the original size)."""
        if self.width is None or self.height is None:
            raise ValueError("PinholeCamera.scaled needs the camera's width and height")
        sx, sy = width / self.width, height / self.height
        # pixel centres: OpenCV puts pixel i's centre at i, so the scale maps (c + 0.5) to (c + 0.5) * s
        return PinholeCamera(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
                             width, height, self.distortion)

    # -- storage -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy, "width": self.width,
                "height": self.height, "distortion": list(self.distortion)}

    @classmethod
    def from_dict(cls, d: dict) -> "PinholeCamera":
        try:
            return cls(d["fx"], d["fy"], d["cx"], d["cy"], d.get("width"), d.get("height"),
                       tuple(d.get("distortion") or ()))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a camera model: {d!r} ({e})") from None

    @classmethod
    def parse(cls, text: str, width: int | None = None, height: int | None = None) -> "PinholeCamera":
        """"fx,fy,cx,cy[,k1,k2,p1,p2[,k3]]" as `geoloc map build --camera` takes it."""
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise ValueError(f"--camera {text!r}: expected numbers fx,fy,cx,cy[,k1,k2,p1,p2[,k3]]") from None
        if len(values) < 4:
            raise ValueError(f"--camera {text!r}: expected at least fx,fy,cx,cy")
        return cls(*values[:4], width=width, height=height, distortion=tuple(values[4:]))

    # -- sensor_msgs/CameraInfo (duck-typed) -------------------------------------------------------------------
    @classmethod
    def from_camera_info(cls, msg) -> "PinholeCamera":
        """From a sensor_msgs/CameraInfo (or anything with its field names `k`, `d`, `width`, `height`)."""
        k = np.asarray(getattr(msg, "k"), dtype=np.float64).reshape(-1)
        if k.size != 9 or k[0] <= 0 or k[4] <= 0:
            raise ValueError(f"CameraInfo has no calibration (K = {k.tolist()}); the camera is uncalibrated")
        model = getattr(msg, "distortion_model", "") or "plumb_bob"
        d = tuple(float(v) for v in getattr(msg, "d", ()))
        if d and any(d) and model not in ("plumb_bob", "rational_polynomial"):
            raise ValueError(f"CameraInfo distortion model {model!r} is not OpenCV's pinhole model "
                             f"(plumb_bob or rational_polynomial)")
        w, h = int(getattr(msg, "width", 0) or 0), int(getattr(msg, "height", 0) or 0)
        return cls(k[0], k[4], k[2], k[5], w or None, h or None, d)

    def to_camera_info(self, msg=None):
        """Fill a sensor_msgs/CameraInfo (pass one) or return a dict of its fields."""
        d = list(self.distortion) or [0.0] * 5
        fields = {"width": self.width or 0, "height": self.height or 0,
                  "distortion_model": "rational_polynomial" if len(d) > 5 else "plumb_bob", "d": d,
                  "k": self.K.reshape(-1).tolist(), "r": np.eye(3).reshape(-1).tolist(),
                  "p": np.hstack([self.K, np.zeros((3, 1))]).reshape(-1).tolist()}
        if msg is None:
            return fields
        for name, value in fields.items():
            setattr(msg, name, value)
        return msg

    @classmethod
    def from_calibration_yaml(cls, path) -> "PinholeCamera":
        """A ROS camera_info YAML file (camera_calibration_parsers' format: image_width, image_height,
        camera_matrix.data, distortion_model, distortion_coefficients.data)."""
        import yaml

        try:
            doc = yaml.safe_load(Path(path).read_text())
            k = doc["camera_matrix"]["data"]
            d = (doc.get("distortion_coefficients") or {}).get("data") or ()

            class _Info:
                pass

            info = _Info()
            info.k, info.d = k, d
            info.width, info.height = doc.get("image_width", 0), doc.get("image_height", 0)
            info.distortion_model = doc.get("distortion_model", "plumb_bob")
        except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a ROS camera_info YAML file ({type(e).__name__}: {e})") from None
        return cls.from_camera_info(info)

    # -- EXIF --------------------------------------------------------------------------------------------------
    @classmethod
    def from_exif(cls, image, sensor_width_mm: float | None = None) -> "PinholeCamera":
        """A camera from a photo's EXIF (a path or a PIL image). Focal length in pixels:
        fx = FocalLengthIn35mmFilm / 36 mm * image width (the 35 mm equivalent describes the full image width), else
        FocalLength / sensor width * image width, with the sensor width from `sensor_width_mm` or from EXIF
        FocalPlaneXResolution. Square pixels, principal point at the image centre, no distortion.
        Raises ValueError when the EXIF does not say enough."""
        from PIL import Image

        img = Image.open(image) if isinstance(image, (str, Path)) else image
        exif = img.getexif()
        sub = exif.get_ifd(_EXIF_IFD)
        tags = {**dict(exif), **dict(sub)}
        w, h = img.size
        f35 = float(tags.get(_TAG_FOCAL_35MM) or 0)
        focal = float(tags.get(_TAG_FOCAL_LENGTH) or 0)
        if f35 > 0:
            fx = f35 / FILM_35MM_WIDTH_MM * max(w, h)
        elif focal > 0:
            if sensor_width_mm is None:
                res = float(tags.get(_TAG_FOCAL_PLANE_X_RES) or 0)
                unit = _RES_UNIT_MM.get(int(tags.get(_TAG_FOCAL_PLANE_RES_UNIT) or 2))
                if res <= 0 or unit is None:
                    raise ValueError(f"{_name(image)}: EXIF FocalLength {focal} mm but no sensor width "
                                     f"(no FocalPlaneXResolution); give the camera model")
                # FocalPlaneXResolution is pixels per unit of the *original* image width
                sensor_width_mm = max(w, h) / res * unit
            fx = focal / float(sensor_width_mm) * max(w, h)
        else:
            raise ValueError(f"{_name(image)}: no EXIF focal length (FocalLengthIn35mmFilm or FocalLength); "
                             f"give the camera model")
        return cls(fx, fx, (w - 1) / 2.0, (h - 1) / 2.0, w, h)


def _name(image) -> str:
    return str(image) if isinstance(image, (str, Path)) else getattr(image, "filename", "") or "image"
