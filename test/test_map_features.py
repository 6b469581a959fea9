"""Maps keep each keyframe's camera model and local features (issue 18): built from an image folder (EXIF focal
length, --camera) and from a rosbag2 recording with sensor_msgs/CameraInfo written here with rosbags; the files
are checksummed like every map file, and the stored features verify a candidate without the raw images."""

import json

import numpy as np
import pytest

from geoloc_ros.cli import main as geoloc
from geoloc_ros.geometry import PinholeCamera, verify_candidate
from geoloc_ros.geometry import benchmark as bench
from geoloc_ros.mapping import MapDatabase, MapError
from geoloc_ros.mapping.storage import CAMERAS, LOCAL_FEATURES


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    from geoloc_ros.model import build_encoder, save_encoder

    return save_encoder(build_encoder("RN-pico", dim=32, image_size=(32, 64), seed=0, device="cpu"),
                        tmp_path_factory.mktemp("enc"))


def build(encoder_file, out, *args):
    geoloc(["map", "build", "--encoder", str(encoder_file), "--out", str(out), "--quiet", "--device", "cpu", *args])
    return MapDatabase.load(out)


def test_folder_map_keeps_exif_cameras_and_features(tmp_path, shared_data, encoder_file):
    db = build(encoder_file, tmp_path / "lund", "--images", str(shared_data / "geometry" / "lund_street"),
               "--sequence-spacing", "6", "--range", "0:4")
    store = db.local_features
    assert store is not None and store.detector == "sift" and len(store) == len(db) == 4
    manifest = json.loads((tmp_path / "lund" / "manifest.json").read_text())
    assert manifest["local_features"]["detector"] == "sift"
    assert {LOCAL_FEATURES, CAMERAS} <= set(manifest["files"])
    for kid in db.column("id"):
        features, camera = store.get(kid)
        assert len(features) > 200 and features.depth is None and features.image_size == (1024, 768)
        assert camera == PinholeCamera.from_exif(shared_data / "geometry" / "lund_street" / "01.jpg")
    # walking photos a few metres apart: the stored features alone give a relative pose
    (fa, ca), (fb, cb) = store.get(0), store.get(1)
    assert verify_candidate(fa, ca, fb, cb).kind == "direction"


def test_camera_option_orb_and_no_features(tmp_path, shared_data, encoder_file):
    folder = str(shared_data / "toy_streets" / "database")
    db = build(encoder_file, tmp_path / "orb", "--images", folder, "--sequence-spacing", "5", "--range", "0:3",
               "--local-features", "orb", "--camera", "400,400,255.5,255.5,0.01,0,0,0")
    features, camera = db.local_features.get(2)
    assert features.detector == "orb" and features.descriptors.shape[1] == 32
    assert camera == PinholeCamera(400, 400, 255.5, 255.5, 512, 512, (0.01, 0, 0, 0))
    db = build(encoder_file, tmp_path / "plain", "--images", folder, "--sequence-spacing", "5", "--range", "0:3",
               "--local-features", "none")
    assert db.local_features is None and not (tmp_path / "plain" / LOCAL_FEATURES).exists()
    with pytest.raises(SystemExit, match="--camera"):
        build(encoder_file, tmp_path / "bad", "--images", folder, "--sequence-spacing", "5", "--camera", "1,2")


def write_kitti_bag(path, shared_data):
    """KITTI 06 colour frames 12, 13, 14, 17 at 10 Hz (their frame numbers), NavSatFix beside them, and one
    latched-style CameraInfo on /kitti/camera_info (image_transport's sibling of /kitti/image_raw)."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    Image, CameraInfo = T["sensor_msgs/msg/Image"], T["sensor_msgs/msg/CameraInfo"]
    RoI = T["sensor_msgs/msg/RegionOfInterest"]
    NavSatFix, NavSatStatus = T["sensor_msgs/msg/NavSatFix"], T["sensor_msgs/msg/NavSatStatus"]
    t0 = 1_700_000_000 * 10**9
    cam = bench.KITTI_CAMERA.to_camera_info()

    def header(t):
        return Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="kitti_left")

    with Writer(path, version=9) as w:
        info_conn = w.add_connection("/kitti/camera_info", CameraInfo.__msgtype__, typestore=ts)
        img_conn = w.add_connection("/kitti/image_raw", Image.__msgtype__, typestore=ts)
        fix_conn = w.add_connection("/fix", NavSatFix.__msgtype__, typestore=ts)
        info = CameraInfo(header=header(t0), height=cam["height"], width=cam["width"],
                          distortion_model=cam["distortion_model"], d=np.array(cam["d"]), k=np.array(cam["k"]),
                          r=np.array(cam["r"]), p=np.array(cam["p"]), binning_x=0, binning_y=0,
                          roi=RoI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
        w.write(info_conn, t0, ts.serialize_cdr(info, CameraInfo.__msgtype__))
        for frame in (12, 13, 14, 17):
            t = t0 + (frame - 12) * 100_000_000
            rgb = bench.read_rgb(shared_data / "geometry" / "kitti06" / f"kitti06-{frame}-color.png")
            msg = Image(header=header(t), height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0,
                        step=rgb.shape[1] * 3, data=rgb.reshape(-1))
            w.write(img_conn, t, ts.serialize_cdr(msg, Image.__msgtype__))
        for j in range(-1, 8):
            t = t0 + j * 100_000_000
            fix = NavSatFix(header=header(t), status=NavSatStatus(status=0, service=1), latitude=49.0 + j * 1e-5,
                            longitude=8.4, altitude=110.0, position_covariance=np.zeros(9), position_covariance_type=0)
            w.write(fix_conn, t, ts.serialize_cdr(fix, NavSatFix.__msgtype__))


def test_bag_map_takes_camera_info_and_verifies_from_stored_features(tmp_path, shared_data, encoder_file):
    cv2 = pytest.importorskip("cv2")
    bag = tmp_path / "kitti"
    write_kitti_bag(bag, shared_data)
    db = build(encoder_file, tmp_path / "kmap", "--bag", str(bag), "--image-topic", "/kitti/image_raw",
               "--fix-topic", "/fix")
    assert len(db) == len(db.local_features) == 4
    (fa, ca), (fb, cb) = db.local_features.get(0), db.local_features.get(1)
    assert ca == cb == bench.KITTI_CAMERA
    cv2.setRNGSeed(0)
    r = verify_candidate(fa, ca, fb, cb)
    poses = bench.kitti_poses(shared_data / "geometry" / "kitti06")
    e = bench.errors(r.T_ab, np.linalg.inv(poses["12"]) @ poses["13"])
    assert r.kind == "direction" and e["rotation_deg"] <= 1.0 and e["direction_deg"] <= 5.0


@pytest.mark.parametrize("name", [LOCAL_FEATURES, CAMERAS])
def test_corrupted_feature_files_are_refused(tmp_path, shared_data, encoder_file, name):
    out = tmp_path / "map"
    build(encoder_file, out, "--images", str(shared_data / "toy_streets" / "queries"), "--sequence-spacing", "5",
          "--range", "0:2", "--camera", "400,400,255.5,255.5")
    path = out / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(MapError, match=f"{name}: checksum mismatch"):
        MapDatabase.load(out)
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(MapError, match=f"{name}: .*bytes, the manifest says"):
        MapDatabase.load(out)
    path.unlink()
    with pytest.raises(MapError, match=f"{name}: missing"):
        MapDatabase.load(out)


def test_merge_keeps_local_features(tmp_path, shared_data, encoder_file):
    folder = str(shared_data / "toy_streets" / "queries")
    a = build(encoder_file, tmp_path / "a", "--images", folder, "--sequence-spacing", "5", "--range", "0:2",
              "--camera", "400,400,255.5,255.5")
    b = build(encoder_file, tmp_path / "b", "--images", folder, "--sequence-spacing", "5", "--range", "2:4",
              "--camera", "300,300,255.5,255.5")
    geoloc(["map", "merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ab")])
    merged = MapDatabase.load(tmp_path / "ab")
    assert len(merged.local_features) == 4
    for kid, (source, old) in enumerate([(a, 0), (a, 1), (b, 0), (b, 1)]):
        features, camera = merged.local_features.get(kid)
        want, want_camera = source.local_features.get(old)
        assert np.array_equal(features.keypoints, want.keypoints) and camera == want_camera
    orb = build(encoder_file, tmp_path / "orb", "--images", folder, "--sequence-spacing", "5", "--range", "4:5",
                "--local-features", "orb")
    assert orb.local_features.get(0)[1] is None  # toy_streets JPEGs carry no EXIF focal length
    with pytest.raises(SystemExit, match="different detectors"):
        geoloc(["map", "merge", str(tmp_path / "a"), str(tmp_path / "orb"), "--out", str(tmp_path / "bad")])
