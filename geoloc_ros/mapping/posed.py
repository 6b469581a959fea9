"""Maps with 3D structure from images with camera poses: known poses (a CSV), structure from motion (pycolmap's
incremental mapping) or an existing COLMAP reconstruction, georegistered by the photos' EXIF GPS when they have it.

    read_poses_csv(csv, images_dir, camera)        [PosedImage] from `image,tx,ty,tz,qx,qy,qz,qw[,fx,fy,cx,cy
                                                   [,k1,k2,p1,p2]]` (T_map_camera, optical frame, metres)
    run_sfm(images_dir, workdir, camera)           a pycolmap Reconstruction of the folder's photos
    posed_from_reconstruction(rec, images_dir)     [PosedImage] of its registered images (model frame)
    georegister(posed)                             (posed in ENU metres, MapFrame, Similarity) from EXIF GPS
    add_posed(db, encoder, posed, source, ...)     keyframes + local features + structure (depth or triangulated)
    lift_keyframe_depth(db, ids, T_base_camera)    structure from stored keypoint depth of keyframes posed by
                                                   odometry (the robot's base) through the camera extrinsic

Whatever the source, the map's own local features (the map's detector) are what is stored and localized against:
their 3D points come from depth images when given, else from triangulation with the (known or reconstructed)
poses; a reconstruction's own points are not carried over.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
import math
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from geoloc_ros.geometry.camera import PinholeCamera
from geoloc_ros.mapping.errors import MapError
from geoloc_ros.mapping.keyframe import Keyframe, heading_from_quaternion
from geoloc_ros.mapping.structure import MapStructure, body_quaternion

POSE_COLUMNS = ("image", "tx", "ty", "tz", "qx", "qy", "qz", "qw")
INTRINSIC_COLUMNS = ("fx", "fy", "cx", "cy")
DISTORTION_COLUMNS = ("k1", "k2", "p1", "p2")
DEPTH_SUFFIXES = (".png", ".pgm", ".tif", ".tiff")
SFM_MAX_FEATURES = 4096  # per photo: exhaustive matching's cost grows with its square
_QUATERNION_TOLERANCE = 1e-2  # |q| may differ from 1 by rounding in a hand-written CSV, not by more


@dataclass
class PosedImage:
    path: Path
    T_map_camera: np.ndarray
    camera: PinholeCamera | None = None
    depth_path: Path | None = None

    @property
    def name(self) -> str:
        return self.path.name


def read_poses_csv(path, images_dir, camera: PinholeCamera | None = None) -> list[PosedImage]:
    """The poses CSV (header row; columns POSE_COLUMNS, optionally INTRINSIC_COLUMNS and DISTORTION_COLUMNS);
    `camera` for rows without intrinsics. MapError names the row and the problem."""
    path, images_dir = Path(path), Path(images_dir)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MapError(f"{path}: not a readable CSV ({e})") from None
    missing = [c for c in POSE_COLUMNS if c not in header]
    if not rows or missing:
        raise MapError(f"{path}: needs a header row with {','.join(POSE_COLUMNS)} and at least one row "
                       f"(missing: {', '.join(missing) or 'rows'})")
    out, seen = [], set()
    for n, row in enumerate(rows, start=2):
        where = f"{path}:{n}"
        name = (row.get("image") or "").strip()
        if not name or name in seen or Path(name).name != name and ".." in Path(name).parts:
            raise MapError(f"{where}: bad or repeated image name {name!r}")
        seen.add(name)
        try:
            t = [float(row[c]) for c in ("tx", "ty", "tz")]
            q = np.array([float(row[c]) for c in ("qx", "qy", "qz", "qw")])
        except (TypeError, ValueError):
            raise MapError(f"{where}: tx..qw must be numbers") from None
        if not np.isfinite(t).all() or not np.isfinite(q).all() \
                or abs(np.linalg.norm(q) - 1.0) > _QUATERNION_TOLERANCE:
            raise MapError(f"{where}: the pose must be finite with a unit quaternion (|q| = {np.linalg.norm(q):.4f})")
        T = np.eye(4)
        T[:3, :3] = Rotation.from_quat(q / np.linalg.norm(q)).as_matrix()
        T[:3, 3] = t
        cam = camera
        if any((row.get(c) or "").strip() for c in INTRINSIC_COLUMNS):
            try:
                values = [float(row[c]) for c in INTRINSIC_COLUMNS]
                dist = [float(row[c]) for c in DISTORTION_COLUMNS if (row.get(c) or "").strip()]
                cam = PinholeCamera(*values, distortion=tuple(dist))
            except (TypeError, ValueError, KeyError) as e:
                raise MapError(f"{where}: bad intrinsics ({e})") from None
        image = images_dir / name
        if not image.is_file():
            raise MapError(f"{where}: no image {image}")
        out.append(PosedImage(image, T, cam))
    return out


def attach_depth(posed: list[PosedImage], depth_dir) -> list[PosedImage]:
    """Each image's depth image in `depth_dir`: the same stem with one of DEPTH_SUFFIXES (16-bit millimetres or
    float metres, aligned with the colour image). MapError when one is missing."""
    depth_dir = Path(depth_dir)
    for p in posed:
        found = [depth_dir / (p.path.stem + s) for s in DEPTH_SUFFIXES if (depth_dir / (p.path.stem + s)).is_file()]
        if not found:
            raise MapError(f"{depth_dir}: no depth image for {p.name} ({p.path.stem}{{{','.join(DEPTH_SUFFIXES)}}})")
        p.depth_path = found[0]
    return posed


def read_depth(path) -> np.ndarray:
    import cv2

    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None or d.ndim != 2 or not (d.dtype == np.uint16 or np.issubdtype(d.dtype, np.floating)):
        raise MapError(f"{path}: not a depth image (16-bit millimetres or float metres, one channel)")
    return d


# -- structure from motion ----------------------------------------------------------------------------------------

def run_sfm(images_dir, workdir, camera: PinholeCamera | None = None, names=None):
    """pycolmap feature extraction, exhaustive matching and incremental mapping of the photos in `images_dir`
    (one shared camera; `camera` fixes its focal length and principal point, the distortion is refined; else
    COLMAP estimates them), with EXIF GPS as position priors where the photos have it. The largest
    reconstruction; MapError when none."""
    import pycolmap

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    database = workdir / "database.db"
    reader = pycolmap.ImageReaderOptions()
    if camera is not None:
        reader.camera_model = "OPENCV"
        reader.camera_params = ",".join(str(v) for v in [camera.fx, camera.fy, camera.cx, camera.cy,
                                                          *(list(camera.distortion[:4]) or [0.0] * 4)])
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = 2
    extraction.sift.max_num_features = SFM_MAX_FEATURES
    pycolmap.extract_features(database, images_dir, image_names=list(names or []),
                              camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                              extraction_options=extraction, device=pycolmap.Device.cpu)
    pycolmap.match_exhaustive(database, device=pycolmap.Device.cpu)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = 2
    options.min_model_size = 3
    # walking or driving along a street is mostly forward motion with narrow rays: COLMAP's defaults (16 degrees,
    # at most 95 % forward motion) find no initial pair in such sequences
    options.mapper.init_min_tri_angle = 4.0
    options.mapper.init_max_forward_motion = 0.995
    options.mapper.init_min_num_inliers = 50
    options.mapper.abs_pose_min_num_inliers = 15
    # the photos' EXIF GPS (read into the database at extraction) as position priors of the bundle adjustment: they
    # keep a long forward-moving sequence from folding back on itself
    options.use_prior_position = True
    options.use_robust_loss_on_prior_position = True
    options.random_seed = 0  # the same reconstruction on every run of one machine
    if camera is not None:  # forward motion leaves the focal length poorly observed: keep the one given
        options.ba_refine_focal_length = False
        options.ba_refine_principal_point = False
    found = pycolmap.incremental_mapping(database, images_dir, workdir / "sparse", options)
    if not found:
        raise MapError(f"{images_dir}: structure from motion registered no images (too little overlap?)")
    return max(found.values(), key=lambda r: r.num_reg_images())


def read_colmap(model_dir):
    """A COLMAP reconstruction (cameras, images, points3D; text or binary)."""
    import pycolmap

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise MapError(f"{model_dir}: no such COLMAP model directory")
    try:
        return pycolmap.Reconstruction(model_dir)
    except (RuntimeError, ValueError) as e:
        raise MapError(f"{model_dir}: not a readable COLMAP model ({str(e).splitlines()[0]})") from None


def camera_from_colmap(cam) -> PinholeCamera:
    """A PinholeCamera from a pycolmap Camera of the pinhole family (OpenCV distortion order)."""
    model, p = str(cam.model_name), [float(v) for v in cam.params]
    w, h = int(cam.width), int(cam.height)
    if model == "SIMPLE_PINHOLE":
        return PinholeCamera(p[0], p[0], p[1], p[2], w, h)
    if model == "PINHOLE":
        return PinholeCamera(*p[:4], w, h)
    if model == "SIMPLE_RADIAL":
        return PinholeCamera(p[0], p[0], p[1], p[2], w, h, (p[3], 0.0, 0.0, 0.0))
    if model == "RADIAL":
        return PinholeCamera(p[0], p[0], p[1], p[2], w, h, (p[3], p[4], 0.0, 0.0))
    if model == "OPENCV":
        return PinholeCamera(*p[:4], w, h, tuple(p[4:8]))
    raise MapError(f"COLMAP camera model {model} is not a pinhole model with OpenCV distortion")


def posed_from_reconstruction(rec, images_dir) -> list[PosedImage]:
    """The registered images of a reconstruction with their poses (model frame) and cameras, in name order."""
    out = []
    for image in rec.images.values():
        if not image.has_pose:
            continue
        path = Path(images_dir) / image.name
        if not path.is_file():
            raise MapError(f"{path}: the reconstruction's image {image.name} is not in {images_dir}")
        cam_from_world = np.eye(4)
        cam_from_world[:3, :] = image.cam_from_world().matrix()
        out.append(PosedImage(path, np.linalg.inv(cam_from_world), camera_from_colmap(rec.cameras[image.camera_id])))
    if not out:
        raise MapError("the reconstruction has no registered images")
    return sorted(out, key=lambda p: p.name)


def georegister(posed: list[PosedImage]):
    """Carry model-frame poses into an ENU map frame at the first photo's GPS fix, by the similarity that fits the
    camera centres to their EXIF GPS positions (geometry/georegister.py). (posed, MapFrame, Similarity), or
    (posed unchanged, None, None) when fewer than 3 photos carry GPS."""
    from geoloc_ros.datasets import exif_gps
    from geoloc_ros.geodesy import MapFrame
    from geoloc_ros.geometry.georegister import fit_similarity

    fixes = []
    for p in posed:
        try:
            fixes.append(exif_gps(p.path))
        except ValueError:
            fixes.append(None)
    tagged = [i for i, f in enumerate(fixes) if f is not None]
    if len(tagged) < 3:
        return posed, None, None
    lat0, lon0, alt0, _ = fixes[tagged[0]]
    frame = MapFrame.at(lat0, lon0, alt0 if math.isfinite(alt0) else 0.0)
    gps = np.array([frame.to_local(fixes[i][0], fixes[i][1], fixes[i][2] if math.isfinite(fixes[i][2]) else
                                   frame.origin_alt) for i in tagged], np.float64).reshape(len(tagged), 3)
    try:
        sim = fit_similarity([posed[i].T_map_camera[:3, 3] for i in tagged], gps,
                             [posed[i].T_map_camera for i in tagged])
    except ValueError as e:
        raise MapError(f"georegistration by EXIF GPS failed: {e}") from None
    return [PosedImage(p.path, sim.apply_pose(p.T_map_camera), p.camera, p.depth_path) for p in posed], frame, sim


# -- into a map ---------------------------------------------------------------------------------------------------

def keyframe_for(p: PosedImage, source: str) -> Keyframe:
    q = body_quaternion(p.T_map_camera)
    x, y, z = (float(v) for v in p.T_map_camera[:3, 3])
    return Keyframe(label=p.name, x=x, y=y, z=z, qx=q[0], qy=q[1], qz=q[2], qw=q[3],
                    heading=heading_from_quaternion(*q), source=source)


def add_posed(db, encoder, posed: list[PosedImage], source: str, structure_source: str,
              georegistered: bool = False, **options) -> list[int]:
    """Encode the posed images into `db` (which must keep local features), store their features and camera models,
    and give the map its 3D structure: points from depth where every image has a depth image, else triangulated
    from the poses. Returns the ids added."""
    from geoloc_ros.geometry.triangulation import points_from_depth, triangulate
    from geoloc_ros.mapping.builders import encode_into

    if db.local_features is None:
        raise MapError("a map with 3D structure needs local features (not --local-features none)")
    if any(p.camera is None for p in posed):
        raise MapError(f"{next(p.name for p in posed if p.camera is None)}: no camera model (give --camera, or "
                       f"fx,fy,cx,cy columns)")
    by_label = {p.name: p for p in posed}
    with_depth = all(p.depth_path is not None for p in posed)
    items = [(keyframe_for(p, source), p.path) for p in posed]
    ids = encode_into(db, encoder, items, total=len(items), desc=f"encoding {source}",
                      camera_for=lambda k, _image: by_label[k.label].camera,
                      depth_for=(lambda k: read_depth(by_label[k.label].depth_path)) if with_depth else None,
                      **options)
    kept = [(kid, by_label[db.keyframe(kid).label]) for kid in ids]
    feats = [db.local_features.get(kid) for kid, _ in kept]
    if with_depth:
        points = [points_from_depth(f, c, p.T_map_camera) for (f, c), (_, p) in zip(feats, kept)]
    else:
        points = triangulate([f for f, _ in feats], [c for _, c in feats], [p.T_map_camera for _, p in kept])
    db.structure = MapStructure("depth" if with_depth else structure_source, georegistered)
    for (kid, p), pts in zip(kept, points):
        db.structure.add(kid, p.T_map_camera, pts)
    return ids


def lift_keyframe_depth(db, ids, T_base_camera, georegistered: bool = False) -> int:
    """3D structure for keyframes `ids` of `db` whose pose is the robot's base (a bag's odometry) and whose stored
    keypoints carry depth and a camera model: each keypoint with a depth reading lifted into the map frame through
    T_map_camera = T_map_base @ T_base_camera (`source` depth). Returns the keyframes given structure."""
    from geoloc_ros.geometry.triangulation import points_from_depth

    if db.structure is not None and db.structure.source != "depth":
        raise MapError(f"the map's structure comes from {db.structure.source}, not depth: keypoint depth would mix "
                       f"two sources")
    lifted = []
    for kid in ids:
        features, camera = db.local_features.get(kid) if db.local_features is not None else (None, None)
        if features is None or features.depth is None or camera is None:
            continue
        k = db.keyframe(kid)
        T_map_base = np.eye(4)
        T_map_base[:3, :3] = Rotation.from_quat([k.qx, k.qy, k.qz, k.qw]).as_matrix()
        T_map_base[:3, 3] = k.x, k.y, k.z
        T_map_camera = T_map_base @ np.asarray(T_base_camera, np.float64)
        points = points_from_depth(features, camera, T_map_camera)
        if np.isfinite(points).all(axis=1).any():
            lifted.append((kid, T_map_camera, points))
    if lifted and db.structure is None:
        db.structure = MapStructure("depth", georegistered)
    for kid, T_map_camera, points in lifted:
        db.structure.add(kid, T_map_camera, points)
    return len(lifted)
