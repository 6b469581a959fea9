"""`geoloc demo --slam` end to end on real Nordland frames: a vpr_node process and pose_graph_node over real DDS,
real FAISS and GTSAM, the bundled encoder, a prior map built by `geoloc map build`; short stretches (the full
demo's figures are in docs/slam.md). Plus the trips themselves (ROS-free)."""

import json

import gtsam
import numpy as np
import pytest

from geoloc_ros.model import nordland
from geoloc_ros.resources import resource
from geoloc_ros.slam import scenario

ENCODER = resource("maps", "nordland_demo", "encoder.safetensors")


def test_two_lap_trip_has_an_unimaged_return_leg_and_same_place_pairs(shared_data):
    root = shared_data / "nordland64"
    summer = nordland.split(root, frames=(21610, 21900), seasons=("summer",))
    winter = nordland.split(root, frames=(21610, 21900), seasons=("winter",))
    trip = scenario.two_lap_trip(summer, winter, return_offset_m=200.0)
    laps = [s.lap for s in trip.steps]
    assert laps.count(1) == laps.count(2) == 30 and trip.images == 60
    assert all(s.image is None for s in trip.steps if s.lap == 0)
    truth = trip.truth()
    assert np.allclose(np.linalg.norm(np.diff(truth, axis=0), axis=1), 10.0)  # one frame spacing every step
    pairs = trip.same_place_pairs()
    assert len(pairs) == 30 and all(np.allclose(truth[i], truth[j]) for i, j in pairs)
    assert np.all(np.diff([s.stamp_ns for s in trip.steps]) == int(scenario.STEP_S * 1e9))
    assert len(trip.odometry) == len(trip.steps) and trip.odometry[0].equals(gtsam.Pose3(), 1e-9)  # odom frame


def test_map_line_fit_places_frames_the_map_lacks():
    keyframes = [(0.0, 10.0 * k, 0.0, f"images-{21610 + 10 * k:05d}.png") for k in range(5) if k != 2]
    origin, per_frame = scenario.line_positions(keyframes)
    assert np.allclose(origin + 21630 * per_frame, [0.0, 20.0, 0.0])
    with pytest.raises(ValueError, match="fewer than 2"):
        scenario.line_positions(keyframes[:1])


@pytest.mark.parametrize("situation,frames", [("prior_map", "21610:22000"), ("two_laps", "21610:21900")])
def test_slam_demo_end_to_end_beats_odometry(shared_data, tmp_path, situation, frames):
    pytest.importorskip("rclpy")
    from geoloc_ros.cli import main as geoloc_main

    rc = geoloc_main(["demo", "--slam", "--situation", situation, "--frames", frames, "--rate", "10",
                      "--device", "cpu", "--data", str(shared_data / "nordland64"), "--encoder", str(ENCODER),
                      "--out", str(tmp_path)])
    assert rc == 0
    r = json.loads((tmp_path / "summary.json").read_text())["situations"][situation]
    assert r["path_poses"] >= 0.9 * r["steps"]  # ~/path holds (nearly) every odometry step
    assert r["loop_closures"] > 0
    assert r["ate_pose_graph_m"] < r["ate_odometry_m"]
    if situation == "two_laps":
        assert r["lap_gap_pose_graph_m"] < r["lap_gap_odometry_m"]
    assert (tmp_path / f"{situation}.png").stat().st_size > 10_000
