"""`geoloc map build` options for local features and camera models, and the per-keyframe camera lookup.

Camera model of a keyframe, first that applies: --camera fx,fy,cx,cy[,k1,...]; --calibration FILE.yaml (ROS
camera_info YAML); for a bag, its sensor_msgs/CameraInfo (image_transport's `<namespace>/camera_info`, else
`<image_topic>/camera_info`, or --camera-info-topic), the latest one at the image's stamp; for image files, the
EXIF focal length (PinholeCamera.from_exif). Without any, features are stored without a camera model.
"""

from __future__ import annotations

from pathlib import Path
import sys

from geoloc_ros.geometry.features import DEFAULT_DETECTOR, DEFAULT_MAX_KEYPOINTS, DETECTORS


def add_args(p):
    g = p.add_argument_group("local features and camera models (docs/maps.md)")
    g.add_argument("--local-features", choices=DETECTORS + ("none",), default=DEFAULT_DETECTOR,
                   help=f"detector of the local features kept per keyframe (default {DEFAULT_DETECTOR}; none: keep "
                        f"none). akaze needs an OpenCV with AKAZE (OpenCV 5 moved it to opencv_contrib)")
    g.add_argument("--max-keypoints", type=int, default=DEFAULT_MAX_KEYPOINTS,
                   help=f"keypoints kept per keyframe, strongest first (default {DEFAULT_MAX_KEYPOINTS})")
    g.add_argument("--camera", metavar="FX,FY,CX,CY[,K1,K2,P1,P2[,K3]]", help="one camera model for every image")
    g.add_argument("--calibration", metavar="FILE.yaml", help="a ROS camera_info YAML file for every image")
    g.add_argument("--camera-info-topic", help="CameraInfo topic of a bag (default: found from --image-topic)")
    g.add_argument("--depth-topic", help="a bag's depth image topic aligned with --image-topic (16UC1 mm or 32FC1 m): "
                                         "keypoint depth is stored with the features")


def prepare(db, args) -> dict:
    """Give a new map its LocalFeatureStore (per the options) and return the builder options for its images:
    camera_for (the camera lookup) and depth_for (the depth lookup); empty when the map keeps no local features."""
    from geoloc_ros.geometry.features import available_detectors
    from geoloc_ros.mapping.features import LocalFeatureStore

    detector = getattr(args, "local_features", None)
    if detector is not None and db.local_features is None and len(db) == 0 and detector != "none":
        if detector not in available_detectors():
            raise SystemExit(f"geoloc map: --local-features {detector}: not available in this OpenCV")
        if args.max_keypoints <= 0:
            raise SystemExit("geoloc map: --max-keypoints must be positive")
        db.local_features = LocalFeatureStore(detector, args.max_keypoints)
    if db.local_features is None:
        return {}
    depth_topic = getattr(args, "depth_topic", None)
    if depth_topic and not getattr(args, "bag", None):
        raise SystemExit("geoloc map: --depth-topic needs --bag")
    fixed = _fixed_camera(args)
    if fixed is not None:
        def camera_for(keyframe, image):
            return fixed
    elif getattr(args, "bag", None):
        camera_for = _bag_lookup(args)
    else:
        camera_for = _exif_lookup()
    options = {"camera_for": camera_for}
    if depth_topic:
        from geoloc_ros.mapping.features import BagDepth

        options["depth_for"] = BagDepth(args.bag, depth_topic)
    return options


def _fixed_camera(args):
    from geoloc_ros.geometry.camera import PinholeCamera

    camera, calibration = getattr(args, "camera", None), getattr(args, "calibration", None)
    if camera and calibration:
        raise SystemExit("geoloc map: give --camera or --calibration, not both")
    try:
        if camera:
            return PinholeCamera.parse(camera)
        if calibration:
            return PinholeCamera.from_calibration_yaml(calibration)
    except ValueError as e:
        raise SystemExit(f"geoloc map: {e}") from None
    return None


def _bag_lookup(args):
    from geoloc_ros.mapping.features import bag_cameras, camera_at

    if not Path(args.bag).exists():
        return None  # add_bag says what is wrong with the recording
    topic, models = bag_cameras(args.bag, args.image_topic, getattr(args, "camera_info_topic", None))
    if not models:
        print(f"geoloc map: {args.bag} has no CameraInfo for {args.image_topic}: local features are kept without a "
              f"camera model (give --camera or --calibration)", file=sys.stderr)
        return None
    return lambda keyframe, image: camera_at(models, keyframe.stamp_ns)


def _exif_lookup():
    from geoloc_ros.geometry.camera import PinholeCamera

    warned = []

    def lookup(keyframe, image):
        if not isinstance(image, (str, Path)):
            return None
        try:
            return PinholeCamera.from_exif(image)
        except (ValueError, OSError) as e:
            if not warned:
                warned.append(True)
                print(f"geoloc map: {e} (images without one keep features without a camera model)", file=sys.stderr)
            return None

    return lookup
