"""Maps keep each keyframe's camera model and local features: built from an image folder (EXIF focal
length, --camera) and from a rosbag2 recording with sensor_msgs/CameraInfo written here with rosbags; the files
are checksummed like every map file, and the stored features verify a candidate without the raw images."""

import contextlib
import json

import numpy as np
import pytest

from geoloc_ros.cli import main as geoloc
from geoloc_ros.geometry import PinholeCamera, relative_pose, verify_candidate
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


def camera_info(ts, camera, header):
    """A rosbags sensor_msgs/CameraInfo filled by PinholeCamera.to_camera_info."""
    fields = camera.to_camera_info()
    return ts.types["sensor_msgs/msg/CameraInfo"](
        header=header, height=fields["height"], width=fields["width"], distortion_model=fields["distortion_model"],
        d=np.array(fields["d"]), k=np.array(fields["k"]), r=np.array(fields["r"]), p=np.array(fields["p"]),
        binning_x=0, binning_y=0,
        roi=ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


T0 = 1_700_000_000 * 10**9


@contextlib.contextmanager
def camera_bag(path, camera, frame_id, info_topic, topics):
    """A rosbags writer with one CameraInfo of `camera` at T0 on `info_topic`; yields (write(topic, t, msg),
    typestore types, header(t)) for the other `topics` ({topic: message type})."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types

    def header(t):
        return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9),
                                        frame_id=frame_id)

    with Writer(path, version=9) as w:
        conns = {topic: w.add_connection(topic, msgtype, typestore=ts)
                 for topic, msgtype in {info_topic: "sensor_msgs/msg/CameraInfo", **topics}.items()}

        def write(topic, t, msg):
            w.write(conns[topic], t, ts.serialize_cdr(msg, conns[topic].msgtype))

        write(info_topic, T0, camera_info(ts, camera, header(T0)))
        yield write, T, header


def image_msg(T, header, array, encoding):
    h, w = array.shape[:2]
    return T["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding=encoding, is_bigendian=0,
                                      step=array.strides[0],
                                      data=np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def write_kitti_bag(path, shared_data):
    """KITTI 06 colour frames 12, 13, 14, 17 at 10 Hz (their frame numbers), NavSatFix beside them, and one
    CameraInfo on /kitti/camera_info (image_transport's sibling of /kitti/image_raw)."""
    topics = {"/kitti/image_raw": "sensor_msgs/msg/Image", "/fix": "sensor_msgs/msg/NavSatFix"}
    with camera_bag(path, bench.KITTI_CAMERA, "kitti_left", "/kitti/camera_info", topics) as (write, T, header):
        for frame in (12, 13, 14, 17):
            t = T0 + (frame - 12) * 100_000_000
            rgb = bench.read_rgb(shared_data / "geometry" / "kitti06" / f"kitti06-{frame}-color.png")
            write("/kitti/image_raw", t, image_msg(T, header(t), rgb, "rgb8"))
        for j in range(-1, 8):
            t = T0 + j * 100_000_000
            fix = T["sensor_msgs/msg/NavSatFix"](
                header=header(t), status=T["sensor_msgs/msg/NavSatStatus"](status=0, service=1),
                latitude=49.0 + j * 1e-5, longitude=8.4, altitude=110.0, position_covariance=np.zeros(9),
                position_covariance_type=0)
            write("/fix", t, fix)


def verify_stored(db, id_a, id_b, T_true, camera):
    """relative_pose of two keyframes' stored features and cameras (which must be `camera`): (result, errors)."""
    import cv2

    (fa, ca), (fb, cb) = db.local_features.get(id_a), db.local_features.get(id_b)
    assert ca == cb == camera
    cv2.setRNGSeed(0)
    r = relative_pose(fa, ca, fb, cb)
    return r, bench.errors(r.T_ab, T_true)


def test_bag_map_takes_camera_info_and_verifies_from_stored_features(tmp_path, shared_data, encoder_file):
    bag = tmp_path / "kitti"
    write_kitti_bag(bag, shared_data)
    db = build(encoder_file, tmp_path / "kmap", "--bag", str(bag), "--image-topic", "/kitti/image_raw",
               "--fix-topic", "/fix")
    assert len(db) == len(db.local_features) == 4
    poses = bench.kitti_poses(shared_data / "geometry" / "kitti06")
    r, e = verify_stored(db, 0, 1, np.linalg.inv(poses["12"]) @ poses["13"], bench.KITTI_CAMERA)
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


def write_rgbd_bag(path, shared_data):
    """The RGB-D desk frames 1-5 as rgb8 colour and 16UC1 depth (millimetres, 5 ms later) at 1 Hz, one CameraInfo."""
    folder = shared_data / "geometry" / "rgbd_desk"
    topics = {"/rgbd/image_raw": "sensor_msgs/msg/Image", "/rgbd/depth": "sensor_msgs/msg/Image"}
    with camera_bag(path, bench.RGBD_CAMERA, "rgbd", "/rgbd/camera_info", topics) as (write, T, header):
        for n in range(1, 6):
            t = T0 + n * 10**9
            write("/rgbd/image_raw", t, image_msg(T, header(t), bench.read_rgb(folder / "color" / f"{n}.png"), "rgb8"))
            depth = bench.read_depth(folder / "depth" / f"{n}.pgm")
            write("/rgbd/depth", t + 5_000_000, image_msg(T, header(t + 5_000_000), depth, "16UC1"))


def test_bag_map_with_depth_gives_metric_verification(tmp_path, shared_data, encoder_file):
    bag = tmp_path / "rgbd"
    write_rgbd_bag(bag, shared_data)
    db = build(encoder_file, tmp_path / "dmap", "--bag", str(bag), "--image-topic", "/rgbd/image_raw",
               "--depth-topic", "/rgbd/depth")
    assert len(db.local_features) == 5
    assert all(db.local_features.get(k)[0].has_depth for k in range(5))
    poses = bench.rgbd_poses(shared_data / "geometry" / "rgbd_desk")
    r, e = verify_stored(db, 1, 2, np.linalg.inv(poses[2]) @ poses[3], bench.RGBD_CAMERA)
    assert r.kind == "metric" and e["translation_m"] <= 0.10 and e["rotation_deg"] <= 1.0
    with pytest.raises(SystemExit, match="no depth topic"):
        build(encoder_file, tmp_path / "bad", "--bag", str(bag), "--image-topic", "/rgbd/image_raw",
              "--depth-topic", "/nope")
