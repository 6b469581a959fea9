"""The node's camera inputs without DDS: which CameraInfo topics a camera listens on, depth decoding (16UC1,
32FC1, big-endian, padded rows, bad messages), pairing depth by stamp, the per-camera parameters, and the
loop-closure markers. Real sensor_msgs / visualization_msgs messages and the real RGB-D desk depth image."""

import numpy as np
import pytest

pytest.importorskip("rclpy")

from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from geoloc_ros.geometry import benchmark as bench  # noqa: E402
from geoloc_ros.localization import Candidate, Frame, FrameResult  # noqa: E402
from geoloc_ros.mapping import Keyframe  # noqa: E402
from geoloc_ros.node import params  # noqa: E402
from geoloc_ros.node.camera_inputs import CameraInputs, camera_info_topics, decode_depth  # noqa: E402
from geoloc_ros.node.images import FrameError  # noqa: E402
from geoloc_ros.node.markers import closure_markers  # noqa: E402


def settings(**overrides):
    return params.settings(**overrides)


def depth_msg(depth, stamp_ns=0, big_endian=False, pad=0):
    h, w = depth.shape
    arr = depth.astype(depth.dtype.newbyteorder(">" if big_endian else "<"))
    rows = np.zeros((h, w * depth.itemsize + pad), np.uint8)
    rows[:, : w * depth.itemsize] = arr.view(np.uint8).reshape(h, -1)
    msg = Image(height=h, width=w, encoding="16UC1" if depth.dtype == np.uint16 else "32FC1",
                is_bigendian=int(big_endian), step=w * depth.itemsize + pad, data=rows.tobytes())
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    return msg


def test_camera_info_topics_follow_image_transport():
    assert camera_info_topics("/front/image_raw") == ["/front/camera_info", "/front/image_raw/camera_info"]
    assert camera_info_topics("/front/image_raw/compressed") == camera_info_topics("/front/image_raw")
    assert camera_info_topics("/image") == ["/camera_info", "/image/camera_info"]


def test_depth_decodes_every_layout(shared_data):
    mm = bench.read_depth(shared_data / "geometry" / "rgbd_desk" / "depth" / "1.pgm")
    for big_endian, pad in ((False, 0), (True, 6)):
        out = decode_depth(depth_msg(mm, big_endian=big_endian, pad=pad))
        assert out.dtype == np.uint16 and np.array_equal(out, mm)
    metres = mm.astype(np.float32) / 1000.0
    assert np.array_equal(decode_depth(depth_msg(metres, big_endian=True)), metres)
    bad = depth_msg(mm)
    bad.encoding = "rgb8"
    with pytest.raises(FrameError, match="16UC1"):
        decode_depth(bad)
    short = depth_msg(mm)
    short.data = short.data[:100]
    with pytest.raises(FrameError, match="does not fit"):
        decode_depth(short)


def test_depth_pairs_by_nearest_stamp_within_tolerance():
    inputs = CameraInputs(settings(depth_topics=["/cam/depth"], image_topics=["/cam/image_raw"]))
    t = 10**12
    for i in range(6):  # only the newest DEPTH_KEPT stay
        inputs.on_depth(depth_msg(np.full((2, 3), i + 1, np.uint16), t + i * 100_000_000), "/cam/image_raw")
    assert inputs.depth_for("/cam/image_raw", t + 510_000_000)[0, 0] == 6
    assert inputs.depth_for("/cam/image_raw", t + 290_000_000)[0, 0] == 4  # 10 ms from the third
    assert inputs.depth_for("/cam/image_raw", t) is None  # dropped: older than the kept ones
    assert inputs.depth_for("/cam/image_raw", t + 250_000_000) is None  # 50 ms from both neighbours
    assert inputs.counts["depth_unpaired"] == 2 and inputs.depth_for("/other", t) is None


def test_camera_info_sibling_wins_and_uncalibrated_is_refused():
    inputs = CameraInputs(settings(image_topics=["/cam/image_raw"]))
    assert inputs.info_topics == {"/cam/image_raw": ["/cam/camera_info", "/cam/image_raw/camera_info"]}
    assert inputs.diagnostics()["camera_info_missing"] == "/cam/image_raw"
    inputs.on_info(CameraInfo(), "/cam/image_raw", 0)
    assert inputs.model("/cam/image_raw") is None
    assert "uncalibrated" in inputs.diagnostics()["camera_info_refused /cam/image_raw"]
    inputs.on_info(bench.RGBD_CAMERA.to_camera_info(CameraInfo()), "/cam/image_raw", 0)
    inputs.on_info(bench.KITTI_CAMERA.to_camera_info(CameraInfo()), "/cam/image_raw", 1)  # the fallback topic
    assert inputs.model("/cam/image_raw") == bench.RGBD_CAMERA
    assert inputs.diagnostics()["camera_info_missing"] == "none"


def test_per_camera_topics_must_match_image_topics():
    class Node:  # params.read needs only get_parameter
        def __init__(self, values):
            self.values = values

        def get_parameter(self, name):
            return type("P", (), {"value": self.values[name]})

    node = Node({**params.defaults(), "map_path": ["/m"], "image_topics": ["/a/image_raw", "/b/image_raw"],
                 "depth_topics": ["/a/depth"]})
    with pytest.raises(params.ParameterError, match="depth_topics: 1 entries for 2 image_topics"):
        params.read(node)
    node.values["depth_topics"] = ["/a/depth", ""]
    assert params.read(node).depth_topics == ["/a/depth", ""]
    with pytest.raises(params.ParameterError, match="verification_require_pose"):
        params.check("verification_require_pose", "exact")


def test_markers_join_query_and_closure_keyframes():
    frame = Frame(camera="/c", topic="/c", stamp_ns=5 * 10**9, frame_id="cam", rgb=np.zeros((2, 2, 3), np.uint8),
                  odom=(1.0, 2.0, 0.0))
    near = Candidate("m", "m", Keyframe(id=1, x=10.0, y=2.0, z=0.0), 0.9, verified=True)
    nowhere = Candidate("m", "m", Keyframe(id=2), 0.8)
    array = closure_markers(FrameResult(frame, closures=[near, nowhere]), "map", 7)
    (m,) = array.markers
    assert (m.id, m.header.frame_id, m.header.stamp.sec) == (7, "map", 5)
    assert [(p.x, p.y) for p in m.points] == [(1.0, 2.0), (10.0, 2.0)] and m.colors[0].g > m.colors[0].r
    assert closure_markers(FrameResult(frame, closures=[nowhere]), "map", 8) is None
