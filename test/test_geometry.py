"""geoloc_ros.geometry on real frames: camera models, local features, and the relative pose against ground truth
(KITTI 06 and the RGB-D desk frames in ../shared/data/geometry). The thresholds: docs/geometry.md, "The bar"."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from geoloc_ros.geometry import Features, PinholeCamera, detect, pose_message_fields, relative_pose, verify_candidate
from geoloc_ros.geometry import benchmark as bench

ROTATION_BAR_DEG = 1.0
DIRECTION_BAR_DEG = 5.0
METRIC_BAR_M = 0.10


def test_calibration_yaml(tmp_path):
    path = tmp_path / "cam.yaml"
    path.write_text("image_width: 640\nimage_height: 480\ncamera_name: front\ncamera_matrix:\n  rows: 3\n  cols: 3\n"
                    "  data: [518.0, 0.0, 325.5, 0.0, 519.0, 253.5, 0.0, 0.0, 1.0]\ndistortion_model: plumb_bob\n"
                    "distortion_coefficients:\n  rows: 1\n  cols: 5\n  data: [0.1, -0.2, 0.0, 0.0, 0.05]\n")
    cam = PinholeCamera.from_calibration_yaml(path)
    assert cam == PinholeCamera(518.0, 519.0, 325.5, 253.5, 640, 480, (0.1, -0.2, 0.0, 0.0, 0.05))
    path.write_text("camera_matrix: 3\n")
    with pytest.raises(ValueError, match="not a ROS camera_info YAML"):
        PinholeCamera.from_calibration_yaml(path)


def test_camera_model_conversions(shared_data):
    cv2 = pytest.importorskip("cv2")
    cam = PinholeCamera(500.0, 510.0, 320.0, 240.0, 640, 480, (0.1, -0.05, 0.001, 0.002, 0.01))
    assert np.allclose(cam.K, [[500, 0, 320], [0, 510, 240], [0, 0, 1]])
    assert PinholeCamera.from_dict(cam.to_dict()) == cam
    assert PinholeCamera.parse("500,510,320,240,0.1,-0.05,0.001,0.002,0.01", 640, 480) == cam
    from sensor_msgs.msg import CameraInfo

    msg = cam.to_camera_info(CameraInfo())
    assert PinholeCamera.from_camera_info(msg) == cam
    with pytest.raises(ValueError, match="uncalibrated"):
        PinholeCamera.from_camera_info(CameraInfo())
    # undistortion inverts OpenCV's own projection
    rays = np.array([[0.1, -0.2, 1.0], [-0.3, 0.25, 1.0], [0.0, 0.0, 1.0]])
    px, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), cam.K, cam.dist_coeffs)
    assert np.allclose(cam.normalized(px.reshape(-1, 2)), rays[:, :2], atol=1e-5)
    half = cam.scaled(320, 240)
    assert half.fx == 250.0 and half.width == 320
    # Lund photos: EXIF FocalLengthIn35mmFilm 35 mm on a 1024 px wide image
    exif = PinholeCamera.from_exif(shared_data / "geometry" / "lund_street" / "01.jpg")
    assert exif.fx == pytest.approx(35 / 36 * 1024) and (exif.width, exif.height) == (1024, 768)
    with pytest.raises(ValueError, match="no EXIF focal length"):
        PinholeCamera.from_exif(shared_data / "toy_streets" / "database" / "db1.jpg")


def test_features_blob_round_trip_and_bad_input(shared_data):
    rgb = bench.read_rgb(shared_data / "geometry" / "rgbd_desk" / "color" / "1.png")
    depth = bench.read_depth(shared_data / "geometry" / "rgbd_desk" / "depth" / "1.pgm")
    f = detect(rgb, "sift", depth=depth)
    assert len(f) > 100 and f.descriptors.shape[1] == 128 and f.has_depth
    g = Features.from_bytes(f.to_bytes())
    assert np.array_equal(g.keypoints, f.keypoints) and np.array_equal(g.descriptors, f.descriptors)
    assert np.array_equal(g.depth, f.depth, equal_nan=True) and g.detector == "sift" and g.image_size == (640, 480)
    with pytest.raises(ValueError, match="not a features blob"):
        Features.from_bytes(f.to_bytes()[:-40])
    with pytest.raises(ValueError, match="not the size"):
        detect(rgb, depth=depth[:100])


def _rotation_deg(T_est, T_true):
    return bench.errors(T_est, T_true)["rotation_deg"]


def test_kitti_pairs_meet_the_bar(shared_data):
    cv2 = pytest.importorskip("cv2")
    cv2.setRNGSeed(0)
    for name, ia, ca, _, ib, cb, _, T_true in bench.kitti_cases(shared_data):
        r = relative_pose(ia, ca, ib, cb)
        e = bench.errors(r.T_ab, T_true)
        assert r.kind == "direction", name
        assert e["rotation_deg"] <= ROTATION_BAR_DEG and e["direction_deg"] <= DIRECTION_BAR_DEG, (name, e)
        assert np.linalg.norm(r.translation) == pytest.approx(1.0)
        # scale unknown: the translation block says so; the rotation block comes from the fit
        assert np.all(np.diag(r.covariance)[:3] >= 1e5) and np.all(np.diag(r.covariance)[3:] < 1e-3)


def test_rgbd_pairs_metric_with_depth_on_either_side(shared_data):
    cv2 = pytest.importorskip("cv2")
    cv2.setRNGSeed(0)
    consecutive = [c for c in bench.rgbd_cases(shared_data) if abs(int(c[0].split()[1]) - int(c[0].split()[3])) == 1]
    assert len(consecutive) >= 6
    for name, ia, ca, da, ib, cb, db, T_true in consecutive:
        r = relative_pose(ia, ca, ib, cb, depth_a=da, depth_b=db)
        e = bench.errors(r.T_ab, T_true)
        assert r.kind == "metric" and r.inliers >= 15, name
        assert e["translation_m"] <= METRIC_BAR_M and e["rotation_deg"] <= ROTATION_BAR_DEG, (name, e)
        cov = r.covariance
        assert np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)
        assert np.sqrt(cov[0, 0]) < 0.05  # centimetres, not the "unknown" variance


def test_depth_on_b_is_the_inverse_of_depth_on_a(shared_data):
    cv2 = pytest.importorskip("cv2")
    cv2.setRNGSeed(0)
    folder = shared_data / "geometry" / "rgbd_desk"
    rgb = [bench.read_rgb(folder / "color" / f"{n}.png") for n in (3, 4)]
    depth = [bench.read_depth(folder / "depth" / f"{n}.pgm") for n in (3, 4)]
    fa = detect(rgb[0], depth=depth[0])
    fb = detect(rgb[1])
    ab = verify_candidate(fa, bench.RGBD_CAMERA, fb, bench.RGBD_CAMERA)
    ba = verify_candidate(fb, bench.RGBD_CAMERA, fa, bench.RGBD_CAMERA)
    assert ab.kind == ba.kind == "metric"
    assert np.linalg.norm((ab.T_ab @ ba.T_ab)[:3, 3]) < 0.02 and _rotation_deg(ab.T_ab @ ba.T_ab, np.eye(4)) < 0.5


def test_verify_candidate_gives_the_query_in_the_keyframe_frame(shared_data):
    """PlaceCandidate.relative_pose: the query camera's pose in the keyframe camera's frame (p_k = T p_q)."""
    cv2 = pytest.importorskip("cv2")
    cv2.setRNGSeed(0)
    folder = shared_data / "geometry"
    keyframe = detect(bench.read_rgb(folder / "rgbd_desk" / "color" / "2.png"),
                      depth=bench.read_depth(folder / "rgbd_desk" / "depth" / "2.pgm"))
    query = detect(bench.read_rgb(folder / "rgbd_desk" / "color" / "3.png"))
    poses = bench.rgbd_poses(folder / "rgbd_desk")
    r = verify_candidate(query, bench.RGBD_CAMERA, keyframe, bench.RGBD_CAMERA)
    e = bench.errors(r.T_ab, np.linalg.inv(poses[2]) @ poses[3])
    assert r.kind == "metric" and e["translation_m"] <= METRIC_BAR_M and e["rotation_deg"] <= ROTATION_BAR_DEG


def test_unrelated_images_give_no_pose(shared_data):
    kitti = bench.read_rgb(shared_data / "geometry" / "kitti06" / "kitti06-12-color.png")
    desk = bench.read_rgb(shared_data / "geometry" / "rgbd_desk" / "color" / "1.png")
    r = relative_pose(kitti, bench.KITTI_CAMERA, desk, bench.RGBD_CAMERA)
    assert r.kind == "none" and np.allclose(r.T_ab, np.eye(4)) and not r.covariance.any()


def test_pose_message_fields():
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", [0.1, -0.2, 0.3]).as_matrix()
    T[:3, 3] = [1.0, 2.0, 3.0]
    position, quat, cov = pose_message_fields(T, np.diag([1, 2, 3, 4, 5, 6.0]))
    assert position == (1.0, 2.0, 3.0) and len(cov) == 36 and cov[7] == 2.0
    assert np.allclose(Rotation.from_quat(quat).as_matrix(), T[:3, :3])
