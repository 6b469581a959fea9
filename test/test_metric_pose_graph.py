"""Metric prior-map closures in the pose graph (real GTSAM): a prior-map candidate with a metric relative pose
becomes a full 6-DoF robust PriorFactorPose3 through the camera extrinsic, and on the same drifting lap it leaves
a lower trajectory error than position-only factors at the keyframes; a wrong one is refused by the gate."""

import gtsam
import numpy as np

from geoloc_ros.geometry.metric_benchmark import drifting_lap, metric_closure, pose_graph_comparison
from geoloc_ros.slam import PoseGraph, Verdict

MAP_FROM_ODOM = gtsam.Pose3(gtsam.Rot3.Yaw(1.0), [500.0, 300.0, 0.0])


def ns(k: int) -> int:
    return 1_700_000_000 * 10**9 + k * 100_000_000


def test_metric_prior_map_closures_beat_position_only_factors():
    r = pose_graph_comparison()
    assert r["aligned"] and Verdict.REJECTED not in r["verdicts"] and r["pose_priors"] >= r["closures"] - 4
    assert r["metric_mean_error_m"] < 0.5 * r["position_only_mean_error_m"] and r["metric_mean_error_m"] < 0.5, r


def test_a_wrong_metric_closure_is_refused_by_the_gate():
    truth, odom = drifting_lap()
    g = PoseGraph()
    rng = np.random.default_rng(4)
    for k in range(len(odom)):
        g.add_odometry(ns(k), odom[k])
        if k % 10 == 5 and k < 150:
            g.add_prior_map_pose(ns(k), *metric_closure(MAP_FROM_ODOM.compose(truth[k]), rng))
    assert g.aligned and g.pose_priors > 0
    kf_body, rel, cov = metric_closure(MAP_FROM_ODOM.compose(truth[160]), rng)
    far = gtsam.Pose3(kf_body.rotation(), kf_body.translation() + [40.0, 0.0, 0.0])  # a keyframe of another place
    assert g.add_prior_map_pose(ns(len(odom) - 1), far, rel, cov) == Verdict.REJECTED
