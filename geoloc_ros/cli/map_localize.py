"""`geoloc map localize MAP IMAGE... [--camera fx,fy,cx,cy[,k1,k2,p1,p2]] [--json]`: each image's camera pose
T_map_camera in a map with 3D structure (retrieval, then 2D-3D matches and PnP; geoloc_ros/localization/metric.py).

Text: one line per image with the kind (metric, place, none), the inliers, t and q_xyzw. --json: one JSON object
per image per line with exactly the keys image, kind, inliers, t ([x, y, z]) and q_xyzw ([x, y, z, w]) (null for
kind none). An unreadable image is reported (kind none) and the others still localized; the exit status is then 1.
"""

from __future__ import annotations

import json
import math
import sys

from geoloc_ros.localization import metric


def add_parser(msub):
    p = msub.add_parser("localize", help="6-DoF camera pose of images in a map with 3D structure",
                        description="Camera pose T_map_camera of each image (optical frame) in a map built with 3D "
                                    "structure (--poses, --sfm, --colmap, depth): docs/geometry.md.")
    p.add_argument("map")
    p.add_argument("images", nargs="+")
    p.add_argument("--camera", metavar="FX,FY,CX,CY[,K1,K2,P1,P2]",
                   help="the query camera (default: each image's EXIF focal length)")
    p.add_argument("--json", action="store_true", help="one JSON object per image per line")
    p.add_argument("-k", type=int, default=metric.DEFAULT_TOP_K,
                   help=f"retrieval candidates whose 3D points are matched (default {metric.DEFAULT_TOP_K})")
    p.add_argument("--min-inliers", type=int, default=metric.DEFAULT_MIN_INLIERS,
                   help=f"PnP inliers a metric pose needs (default {metric.DEFAULT_MIN_INLIERS})")
    p.add_argument("--max-sigma-m", type=float, default=metric.DEFAULT_MAX_SIGMA_M,
                   help=f"largest position standard deviation of a metric pose (default {metric.DEFAULT_MAX_SIGMA_M})")
    p.add_argument("--max-sigma-deg", type=float, default=metric.DEFAULT_MAX_SIGMA_DEG,
                   help=f"largest rotation standard deviation of a metric pose (default "
                        f"{metric.DEFAULT_MAX_SIGMA_DEG})")
    p.add_argument("--encoder", help="encoder checkpoint for retrieval (default: the one the map carries)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args):
    from geoloc_ros.cli.map import _load_map_and_encoder
    from geoloc_ros.datasets import read_image
    from geoloc_ros.geometry.camera import PinholeCamera

    if args.k <= 0:
        raise SystemExit("geoloc map localize: -k must be positive")
    try:
        camera = PinholeCamera.parse(args.camera) if args.camera else None
    except ValueError as e:
        raise SystemExit(f"geoloc map localize: {e}") from None
    db, encoder = _load_map_and_encoder(args)
    if db.structure is None:
        print(f"geoloc map localize: {args.map} has no 3D structure: every answer is the place estimate (kind "
              f"place); build it with --poses, --sfm, --colmap or depth", file=sys.stderr)
    try:
        localizer = metric.MetricLocalizer(db, args.min_inliers, args.max_sigma_m, args.max_sigma_deg, args.k)
    except ValueError as e:
        raise SystemExit(f"geoloc map localize: {e}") from None
    failed = 0
    for path in args.images:
        try:
            image = read_image(path)
            cam = camera or PinholeCamera.from_exif(path)
            if cam.width is None:
                cam = PinholeCamera(cam.fx, cam.fy, cam.cx, cam.cy, image.shape[1], image.shape[0], cam.distortion)
            ids = metric.candidates_for(db, encoder, [image], args.k)[0]
            result = localizer.localize(image, cam, ids)
        except (OSError, ValueError) as e:
            failed += 1
            print(f"geoloc map localize: {path}: {e}", file=sys.stderr)
            result = metric.Localization()
        _print(path, result, args.json)
    sys.stdout.flush()
    if failed:
        raise SystemExit(1)


def _print(path, result, as_json: bool):
    record = result.as_json(str(path))
    if as_json:
        print(json.dumps(record), flush=True)
        return
    if result.kind == "none":
        print(f"{path}  kind none  inliers 0", flush=True)
        return
    t, q = record["t"], record["q_xyzw"]
    sigma = (f"  sigma {math.sqrt(max(result.covariance[:3, :3].diagonal().max(), 0)):.3f} m"
             if result.kind == "metric" else "")
    print(f"{path}  kind {result.kind}  inliers {result.inliers}  t {t[0]:.3f} {t[1]:.3f} {t[2]:.3f}  "
          f"q_xyzw {q[0]:.5f} {q[1]:.5f} {q[2]:.5f} {q[3]:.5f}  keyframe {result.keyframe_id}{sigma}", flush=True)
