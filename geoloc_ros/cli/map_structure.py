"""`geoloc map build` options for maps with 3D structure (docs/geometry.md, "Metric localization").

    geoloc map build --encoder ENC --images DIR --poses FILE.csv [--depth DIR] --out MAP   known poses
    geoloc map build --encoder ENC --images DIR --sfm --out MAP                            structure from motion
    geoloc map build --encoder ENC --images DIR --colmap MODEL_DIR --out MAP               a COLMAP model
    geoloc map build --encoder ENC --bag BAG --image-topic T --depth-topic D --odom-topic O [--base-to-camera ...]
                                                                             a recording with depth and odometry

--sfm keeps the focal length of --camera when given, else refines COLMAP's estimate (EXIF focal length as its prior).
--sfm and --colmap maps are georegistered by the photos' EXIF GPS (a similarity fit of the camera centres) when at
least 3 photos carry it; without GPS their frame is the reconstruction's (arbitrary scale).
A bag's keypoints with depth are lifted into the odometry frame through the keyframe's odometry pose (the robot's
base) and --base-to-camera (default: the node's base_to_camera parameter's).
"""

from __future__ import annotations

from pathlib import Path
import sys
import tempfile


def add_args(p):
    g = p.add_argument_group("3D structure: camera poses and 3D points per keyframe, for metric localization")
    g.add_argument("--poses", metavar="FILE.csv",
                   help="known camera poses of the --images: CSV image,tx,ty,tz,qx,qy,qz,qw[,fx,fy,cx,cy[,k1,k2,p1,"
                        "p2]] (T_map_camera, optical frame x right y down z forward, metres); features are "
                        "matched and triangulated with pycolmap, or lifted with --depth")
    g.add_argument("--depth", metavar="DIR", help="with --poses: depth images aligned with the images (same stem; "
                                                  "16-bit millimetres or float metres): 3D points from depth")
    g.add_argument("--sfm", action="store_true", help="reconstruct the --images with pycolmap's incremental "
                                                      "structure from motion")
    g.add_argument("--colmap", metavar="MODEL_DIR", help="import a COLMAP reconstruction of the --images (cameras, "
                                                         "images, points3D; text or binary)")
    g.add_argument("--base-to-camera", metavar="X,Y,Z,QX,QY,QZ,QW", type=_extrinsic_arg,
                   default=_default_base_to_camera(),
                   help="with --bag, --depth-topic and --odom-topic: the camera optical frame in the robot's base "
                        "frame (metres; default %(default)s, the node's base_to_camera: camera at the base origin "
                        "looking along +x); keypoints with depth become 3D structure through the odometry pose")


def _extrinsic_arg(text: str):
    """T_base_camera (4x4) from X,Y,Z,QX,QY,QZ,QW; refused at parse time, before anything is encoded."""
    import argparse

    from geoloc_ros.localization.metric_worker import extrinsic

    try:
        return extrinsic(text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _default_base_to_camera() -> str:
    from geoloc_ros import ros_params
    from geoloc_ros.node.params import SPEC

    return ",".join(f"{v:g}" for v in ros_params.defaults(SPEC)["base_to_camera"])


def wanted(args) -> bool:
    return bool(getattr(args, "poses", None) or getattr(args, "sfm", False) or getattr(args, "colmap", None))


def add(db, encoder, args) -> list[int]:
    """Build `db`'s keyframes, features and structure from the posed images the options describe."""
    from geoloc_ros.cli import map_features
    from geoloc_ros.mapping import posed as posed_images

    chosen = [name for name in ("poses", "sfm", "colmap") if getattr(args, name)]
    if len(chosen) > 1:
        _fail(f"give one of --poses, --sfm and --colmap, not {' and '.join('--' + c for c in chosen)}")
    if not args.images or args.bag:
        _fail(f"--{chosen[0]} needs --images DIR (the folder of the images) and no --bag")
    if args.depth and not args.poses:
        _fail("--depth needs --poses")
    images = Path(args.images)
    if not images.is_dir():
        _fail(f"{images}: not a folder of images")
    map_features.prepare(db, args)  # the map's LocalFeatureStore (detector, keypoint cap)
    camera = map_features._fixed_camera(args)
    georegistered = False
    if args.poses:
        posed = posed_images.read_poses_csv(args.poses, images, camera)
        if args.depth:
            posed_images.attach_depth(posed, args.depth)
        source, structure = Path(args.poses).name, "triangulation"
    else:
        if args.sfm:
            with tempfile.TemporaryDirectory(prefix="geoloc_sfm_") as work:
                rec = posed_images.run_sfm(images, work, camera)
                posed = posed_images.posed_from_reconstruction(rec, images)
            source, structure = "sfm", "sfm"
        else:
            posed = posed_images.posed_from_reconstruction(posed_images.read_colmap(args.colmap), images)
            source, structure = Path(args.colmap).name, "colmap"
        if camera is not None:
            for p in posed:
                p.camera = camera
        posed, frame, sim = posed_images.georegister(posed)
        if frame is None:
            print("geoloc map: fewer than 3 photos carry EXIF GPS: the map keeps the reconstruction's frame "
                  "(arbitrary scale, not georegistered)", file=sys.stderr)
        else:
            db.frame, georegistered = frame, True
            print(f"geoloc map: georegistered by EXIF GPS: scale {sim.scale:.4f}, camera centres within "
                  f"{sim.rms_m:.2f} m RMS of their GPS", file=sys.stderr)
    ids = posed_images.add_posed(db, encoder, posed, source, structure, georegistered,
                                 batch_size=args.batch_size, progress=not args.quiet)
    print(f"geoloc map: 3D structure ({db.structure.source}): {db.structure.point_count()} points on "
          f"{len(db.structure)} keyframes", file=sys.stderr)
    return ids


def add_bag_depth(db, ids, args) -> None:
    """3D structure (source depth) for the keyframes of a bag built with --depth-topic and --odom-topic."""
    from geoloc_ros.mapping import posed as posed_images

    if not (getattr(args, "bag", None) and getattr(args, "depth_topic", None)) or db.local_features is None:
        return
    if not args.odom_topic or args.fix_topic:
        print("geoloc map: no 3D structure from --depth-topic: it needs the keyframes' 6-DoF pose from --odom-topic "
              "(and no --fix-topic, whose keyframes carry a heading only); the keypoint depth is kept",
              file=sys.stderr)
        return
    n = posed_images.lift_keyframe_depth(db, ids, args.base_to_camera)
    if n:
        print(f"geoloc map: 3D structure (depth): {db.structure.point_count()} points on {n} keyframes",
              file=sys.stderr)
    else:
        print("geoloc map: no keyframe has keypoint depth and a camera model: no 3D structure", file=sys.stderr)


def _fail(message: str):
    raise SystemExit(f"geoloc map: {message}")
