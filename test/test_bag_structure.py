"""A recording with depth and odometry becomes a map with 3D structure: the RGB-D desk frames 1, 3, 5 written as a
rosbag2 (rgb8 colour, 16UC1 depth, CameraInfo, nav_msgs/Odometry of the robot's base derived from the ground truth
through a camera extrinsic), built with `geoloc map build --bag --depth-topic --odom-topic [--base-to-camera]`;
`geoloc map localize` of the held-out frames 2 and 4 is metric within centimetres."""

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from test_map_features import T0, camera_bag, image_msg
from test_metric_localization import RGBD_CAMERA, run

from geoloc_ros.geometry import benchmark as bench
from geoloc_ros.localization.metric_worker import extrinsic
from geoloc_ros.mapping import MapDatabase

DEFAULT_BASE_TO_CAMERA = "0,0,0,-0.5,0.5,-0.5,0.5"  # the node's base_to_camera default
MOUNTED = "0.3,-0.1,0.8,-0.5,0.5,-0.5,0.5"  # a camera 0.8 m up, 0.3 m ahead and 0.1 m right of the base


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    from geoloc_ros.model import save_encoder
    from geoloc_ros.model.testing import tiny_encoder

    return save_encoder(tiny_encoder(), tmp_path_factory.mktemp("enc"))


def write_rgbd_odom_bag(path, desk, poses, base_to_camera: str, frames=(1, 3, 5)):
    """Colour, depth (5 ms later) and Odometry T_odom_base = T_map_camera @ inv(T_base_camera) at 1 Hz."""
    T_camera_base = np.linalg.inv(extrinsic(base_to_camera.split(",")))
    topics = {"/rgbd/image_raw": "sensor_msgs/msg/Image", "/rgbd/depth": "sensor_msgs/msg/Image",
              "/odom": "nav_msgs/msg/Odometry"}
    with camera_bag(path, bench.RGBD_CAMERA, "rgbd", "/rgbd/camera_info", topics) as (write, T, header):
        for n in frames:
            t = T0 + n * 10**9
            base = poses[n] @ T_camera_base
            q = Rotation.from_matrix(base[:3, :3]).as_quat()
            pose = T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=base[0, 3], y=base[1, 3],
                                                                                      z=base[2, 3]),
                                               orientation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2],
                                                                                             w=q[3]))
            zero = T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
            twist = T["geometry_msgs/msg/TwistWithCovariance"](
                twist=T["geometry_msgs/msg/Twist"](linear=zero, angular=zero), covariance=np.zeros(36))
            for dt in (-100_000_000, 0, 100_000_000):  # the pose held around the frame's stamp
                odom = T["nav_msgs/msg/Odometry"](
                    header=T["std_msgs/msg/Header"](stamp=header(t + dt).stamp, frame_id="odom"),
                    child_frame_id="base_link",
                    pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)), twist=twist)
                write("/odom", t + dt, odom)
            write("/rgbd/image_raw", t, image_msg(T, header(t), bench.read_rgb(desk / "color" / f"{n}.png"), "rgb8"))
            depth = bench.read_depth(desk / "depth" / f"{n}.pgm")
            write("/rgbd/depth", t + 5_000_000, image_msg(T, header(t + 5_000_000), depth, "16UC1"))


def build(encoder_file, bag, out, *extra):
    run("map", "build", "--encoder", str(encoder_file), "--bag", str(bag), "--image-topic", "/rgbd/image_raw",
        "--depth-topic", "/rgbd/depth", "--out", str(out), "--quiet", "--device", "cpu", *extra)
    return MapDatabase.load(out)


@pytest.mark.parametrize("base_to_camera", [DEFAULT_BASE_TO_CAMERA, MOUNTED])
def test_bag_with_depth_and_odometry_is_localized_metrically(tmp_path, shared_data, encoder_file, base_to_camera):
    desk = shared_data / "geometry" / "rgbd_desk"
    poses = bench.rgbd_poses(desk)
    bag = tmp_path / "rgbd"
    write_rgbd_odom_bag(bag, desk, poses, base_to_camera)
    flag = [] if base_to_camera == DEFAULT_BASE_TO_CAMERA else ["--base-to-camera", base_to_camera]
    db = build(encoder_file, bag, tmp_path / "map", "--odom-topic", "/odom", *flag)
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert manifest["structure"]["source"] == "depth" and manifest["structure"]["keyframes"] == 3
    assert len(db.structure) == 3 and db.structure.point_count() > 500
    for kid, n in zip(sorted(db.column("id")), (1, 3, 5)):
        assert np.allclose(db.structure.pose(kid), poses[n], atol=1e-5)  # odometry through the extrinsic
        base = poses[n] @ np.linalg.inv(extrinsic(base_to_camera.split(",")))
        k = db.keyframe(kid)
        assert np.allclose([k.x, k.y, k.z], base[:3, 3], atol=1e-5)  # the keyframe keeps the robot's pose
    lines = run("map", "localize", str(tmp_path / "map"), str(desk / "color" / "2.png"), str(desk / "color" / "4.png"),
                "--camera", RGBD_CAMERA, "--json", "--device", "cpu").splitlines()
    for line, n in zip(lines, (2, 4)):
        rec = json.loads(line)
        assert rec["kind"] == "metric", rec
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = Rotation.from_quat(rec["q_xyzw"]).as_matrix(), rec["t"]
        err = bench.errors(T, poses[n])
        assert err["translation_m"] <= 0.05 and err["rotation_deg"] <= 2.0, (n, err)


def test_without_odometry_or_with_a_bad_extrinsic(tmp_path, shared_data, encoder_file, capsys):
    desk = shared_data / "geometry" / "rgbd_desk"
    bag = tmp_path / "rgbd"
    write_rgbd_odom_bag(bag, desk, bench.rgbd_poses(desk), DEFAULT_BASE_TO_CAMERA)
    db = build(encoder_file, bag, tmp_path / "plain")  # no pose for the keyframes: depth kept, no structure
    assert db.structure is None and all(db.local_features.get(k)[0].has_depth for k in db.column("id"))
    assert "needs the keyframes' 6-DoF pose from --odom-topic" in capsys.readouterr().err
    for bad in ("1,2,3", "0,0,0,1,1,0,0", "0,0,nan,0,0,0,1", "a,b"):
        with pytest.raises(SystemExit):
            build(encoder_file, bag, tmp_path / "bad", "--odom-topic", "/odom", "--base-to-camera", bad)
        assert "--base-to-camera: base_to_camera needs x y z qx qy qz qw" in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
