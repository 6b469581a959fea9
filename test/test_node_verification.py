"""geoloc_vpr on a real DDS graph with verification: a map built by `geoloc map build --local-features`
from real RGB-D frames of ../shared/data/geometry, query frames published with their CameraInfo and depth by the
test node, and the relative poses of the verified loop closures checked against the ground truth."""

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from geoloc_ros.model import save_encoder  # noqa: E402
from geoloc_ros.model.testing import tiny_encoder  # noqa: E402
from geoloc_ros.replay import image_message  # noqa: E402

T0 = 1_700_000_000 * 10**9


def depth_message(depth, stamp_ns: int):
    """sensor_msgs/Image of a depth image: uint16 millimetres as 16UC1, float32 metres as 32FC1."""
    from sensor_msgs.msg import Image

    h, w = depth.shape
    msg = Image(height=h, width=w, encoding="16UC1" if depth.dtype == np.uint16 else "32FC1",
                step=w * depth.dtype.itemsize, data=np.ascontiguousarray(depth).tobytes())
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    msg.header.frame_id = "camera"
    return msg


def pose_matrix(pose):
    from scipy.spatial.transform import Rotation

    T = np.eye(4)
    o, p = pose.orientation, pose.position
    T[:3, :3] = Rotation.from_quat([o.x, o.y, o.z, o.w]).as_matrix()
    T[:3, 3] = p.x, p.y, p.z
    return T


@pytest.fixture(scope="module")
def desk_map(shared_data, tmp_path_factory):
    """`geoloc map build --local-features sift --camera ...` of the five real RGB-D desk colour frames."""
    from geoloc_ros.cli import main as geoloc
    from geoloc_ros.geometry import benchmark as bench

    tmp = tmp_path_factory.mktemp("desk")
    enc = save_encoder(tiny_encoder(), tmp / "encoder")
    c = bench.RGBD_CAMERA
    geoloc(["map", "build", "--encoder", str(enc), "--out", str(tmp / "map"), "--quiet", "--device", "cpu",
            "--images", str(shared_data / "geometry" / "rgbd_desk" / "color"), "--sequence-spacing", "0.1",
            "--local-features", "sift", "--camera", f"{c.fx},{c.fy},{c.cx},{c.cy}"])
    return tmp / "map", shared_data / "geometry" / "rgbd_desk"


def test_verified_closures_carry_relative_poses(desk_map, graph):
    """Colour frames with their CameraInfo (on the image_transport sibling topic) and depth (16UC1 and 32FC1)
    from the test node: every loop closure is verified with a metric relative pose that matches the ground truth
    (query camera in the keyframe camera's frame), and markers are drawn."""
    from sensor_msgs.msg import CameraInfo
    from visualization_msgs.msg import MarkerArray

    from geoloc_msgs.msg import PlaceCandidate
    from geoloc_ros.geometry import benchmark as bench
    from geoloc_ros.node.params import image_qos_profile

    map_dir, desk = desk_map
    start, h = graph
    n = start({"map_path": [str(map_dir)], "verification": True, "verification_require_pose": "metric",
               "consistency_k": 1, "top_k": 2, "depth_topics": ["/camera/depth/image_raw"], "publish_markers": True})
    assert n.active, n.node.last_error
    qos = image_qos_profile("reliable")
    info_pub = h.node.create_publisher(CameraInfo, "/camera/camera_info", qos)
    depth_pub = h.node.create_publisher(type(depth_message(np.zeros((2, 2), np.uint16), 0)),
                                        "/camera/depth/image_raw", qos)
    markers = []
    h.node.create_subscription(MarkerArray, "/geoloc_vpr/loop_closure_markers", markers.append, 10)
    assert h.wait_for_subscriber() and h.wait_for(lambda: info_pub.get_subscription_count() > 0
                                                  and depth_pub.get_subscription_count() > 0, timeout=10)
    info = bench.RGBD_CAMERA.to_camera_info(CameraInfo())
    assert h.wait_for(lambda: info_pub.publish(info) or n.node._cameras.model("/camera/image_raw"), timeout=10)
    poses = bench.rgbd_poses(desk)
    stamps = {}
    for i, q in enumerate((2, 4)):
        depth = bench.read_depth(desk / "depth" / f"{q}.pgm")
        stamp = T0 + i * 10**9
        depth_pub.publish(depth_message(depth if i == 0 else depth.astype(np.float32) / 1000.0, stamp))
        # the depth image is paired when the colour frame is decoded: let it arrive first
        assert h.wait_for(lambda: len(n.node._cameras._depth["/camera/image_raw"]) > i, timeout=10)
        h.publish(image_message(bench.read_rgb(desk / "color" / f"{q}.png"), stamp))
        stamps[stamp] = q
        time.sleep(0.5)
    assert h.wait_for(lambda: len(h.data.results["loop_closures"]) == len(stamps), timeout=30), h.diag_values()
    for stamp, q in stamps.items():
        lc = h.data.results["loop_closures"][stamp]
        assert lc.camera_frame_id == "camera" and lc.candidates
        assert {c.keyframe_label for c in lc.candidates} - {f"{q}.png"}  # another keyframe: a pose that is no identity
        for c in lc.candidates:
            assert c.verified and c.inliers >= 15
            assert c.relative_pose_kind == PlaceCandidate.RELATIVE_POSE_METRIC
            k = int(c.keyframe_label.split(".")[0])
            e = bench.errors(pose_matrix(c.relative_pose.pose), np.linalg.inv(poses[k]) @ poses[q])
            assert e["translation_m"] <= 0.10 and e["rotation_deg"] <= 1.0, (q, k, e)
            assert 0 < c.relative_pose.covariance[0] < 0.01  # metric: centimetre-level translation variance
    assert h.wait_for(lambda: len(markers) == len(stamps), timeout=5)
    line = markers[0].markers[0]
    assert line.header.frame_id == "map" and len(line.points) == 2 * len(h.data.results["loop_closures"][T0]
                                                                        .candidates)
    assert h.diag_values()["camera_info_missing"] == "none"
