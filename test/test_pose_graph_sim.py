"""The ROS-free parts of the SLAM demo: odometry simulated from frame positions drifts as documented (scale
error, heading random walk), ATE is evo's aligned APE, and the plot is written; then the pose graph fed that
odometry and same-place closures between two laps brings ATE and the lap gap down."""

import math

import gtsam
import numpy as np
import pytest

from geoloc_ros.slam import PoseGraph
from geoloc_ros.slam.evaluate import ate, same_place_distance
from geoloc_ros.slam.graph import KIND_NONE
from geoloc_ros.slam.plot import plot_trajectories
from geoloc_ros.slam.simulate import OdometryDrift, simulate_odometry, truth_poses


def loop_positions(n=200, radius=40.0):
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.c_[radius * np.cos(t), 0.6 * radius * np.sin(t)]  # an ellipse, about 1 m between frames


def xyz(poses):
    return np.array([p.translation() for p in poses])


def test_without_drift_odometry_is_the_truth_seen_from_the_start():
    truth = truth_poses(loop_positions())
    odom = simulate_odometry(truth, OdometryDrift(scale_error=0.0, heading_sigma_per_sqrt_m=0.0))
    want = [truth[0].between(t) for t in truth]
    assert np.allclose(xyz(odom), xyz(want), atol=1e-9)
    assert all(abs(o.rotation().yaw() - w.rotation().yaw()) < 1e-9 for o, w in zip(odom, want))


def test_scale_error_and_heading_random_walk_are_as_documented():
    line = np.c_[np.arange(0.0, 101.0), np.zeros(101)]  # 100 m straight, 1 m steps
    odom = simulate_odometry(truth_poses(line), OdometryDrift(scale_error=0.03, heading_sigma_per_sqrt_m=0.0))
    assert np.linalg.norm(odom[-1].translation()) == pytest.approx(103.0)
    finals = [simulate_odometry(truth_poses(line), OdometryDrift(0.0, 0.005, seed=s))[-1].rotation().yaw()
              for s in range(300)]
    assert np.std(finals) == pytest.approx(0.005 * math.sqrt(100.0), rel=0.2)  # sigma * sqrt(metres)


def test_ate_is_evo_ape_after_alignment(tmp_path):
    truth = xyz(truth_poses(loop_positions()))
    turned = truth @ gtsam.Rot3.Yaw(0.7).matrix().T + [30.0, -5.0, 0.0]
    assert ate(truth, turned)["rmse"] < 1e-9  # a rigid motion is aligned away
    assert ate(truth, turned, align=False)["rmse"] > 10.0
    shifted = truth + np.where(np.arange(len(truth))[:, None] % 2, 1.0, -1.0) * [1.0, 0.0, 0.0]  # +-1 m in x
    assert ate(truth, shifted)["rmse"] == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="shape"):
        ate(truth, truth[:-1])
    out = plot_trajectories(tmp_path / "slam.png", truth, turned, truth, "test", closures=[(0, 10)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [p.name for p in tmp_path.iterdir()] == ["slam.png"]


def test_pose_graph_on_simulated_odometry_reduces_ate_and_the_lap_gap():
    lap = loop_positions()
    truth = truth_poses(np.vstack([lap, lap]))  # two laps of the same places
    odom = simulate_odometry(truth, OdometryDrift(seed=3))
    g = PoseGraph()
    n = len(lap)
    for k, pose in enumerate(odom):
        g.add_odometry(k * 10**8, pose)
        if k >= n and k % 4 == 0:
            g.add_session_closure(k * 10**8, (k - n) * 10**8, gtsam.Pose3(), [0.0] * 36, KIND_NONE)
    stamps = [s for s, _ in g.poses()]
    frames = [s // 10**8 for s in stamps]  # pose node -> frame index
    est = xyz([p for _, p in g.poses()])
    ref, raw = xyz(truth)[frames], xyz(odom)[frames]
    assert ate(ref, est)["rmse"] < ate(ref, raw)["rmse"]  # same-place closures cannot undo the scale error
    node_of = {f: i for i, f in enumerate(frames)}
    pairs = [(node_of[f - n], node_of[f]) for f in frames if f >= n and f - n in node_of]
    assert same_place_distance(est, pairs) < 0.25 * same_place_distance(raw, pairs)


def test_prior_map_positions_on_simulated_odometry_bring_ate_down():
    """Relocalisation in a prebuilt map along a 1 km route (a railway-like curve, a frame every 2 m, the
    documented default drift): the map's keyframe positions (truth plus 2 m noise) every 5th frame."""
    x = np.arange(0.0, 1000.0, 2.0)
    truth = truth_poses(np.c_[x, 30.0 * np.sin(x / 80.0)])
    odom = simulate_odometry(truth, OdometryDrift(seed=0))
    rng = np.random.default_rng(5)
    g = PoseGraph()
    for k, pose in enumerate(odom):
        g.add_odometry(k * 10**8, pose)
        if k % 5 == 2:
            g.add_absolute(k * 10**8, truth[k].translation() + np.r_[rng.normal(0.0, 2.0, 2), 0.0],
                           g.prior_map_covariance())
    frames = [s // 10**8 for s, _ in g.poses()]
    est, ref, raw = xyz([p for _, p in g.poses()]), xyz(truth)[frames], xyz(odom)[frames]
    assert g.aligned and g.absolute_rejected == 0
    # In the map frame without alignment, against odometry's best (aligned) case. Not 0.25: the systematic
    # 3 % scale error is only partly removed by the random-walk odometry model (docs/slam.md).
    assert ate(ref, est, align=False)["rmse"] < 0.5 * ate(ref, raw)["rmse"]


def test_heading_noise_is_a_random_walk_and_a_long_lap_of_odometry_alone_stays_solvable():
    """The default odometry noise: heading sigma grows with sqrt(distance) (the same model for 1 m and 10 m
    steps), tilt does not wander; and 2.4 km of odometry alone at 10 m steps (a Nordland lap of geoloc demo
    --slam before any closure) no longer makes iSAM2 raise IndeterminateLinearSystem."""
    from geoloc_ros.slam.noise import OdometryNoise

    sigmas = np.sqrt(np.diag(OdometryNoise().covariance(gtsam.Pose3(gtsam.Rot3(), [10.0, 0.0, 0.0]))))
    assert sigmas[2] == pytest.approx(0.01 * math.sqrt(10.0)) and sigmas[0] == sigmas[1] == pytest.approx(0.002)
    assert sigmas[3] == pytest.approx(0.5)
    x = np.arange(0.0, 2400.0, 10.0)
    odom = simulate_odometry(truth_poses(np.c_[x, np.zeros_like(x)]), OdometryDrift(seed=1))
    g = PoseGraph()
    for k, pose in enumerate(odom):
        g.add_odometry(k * 10**9, pose)
    assert len(g.poses()) == len(odom)
