"""Metric prior-map closures in the pose graph (real GTSAM): a prior-map candidate with a metric relative pose
becomes a full 6-DoF robust PriorFactorPose3 through the camera extrinsic, and on the same drifting lap it leaves
a lower trajectory error than position-only factors at the keyframes; a wrong one is refused by the gate."""

import math

import gtsam
import numpy as np

from geoloc_ros.slam import GraphSettings, PoseGraph, Verdict
from geoloc_ros.slam.graph import BODY_TO_OPTICAL
from geoloc_ros.slam.params import default_extrinsic

RADIUS = 30.0
LAP = int(2 * math.pi * RADIUS)
MAP_FROM_ODOM = gtsam.Pose3(gtsam.Rot3.Yaw(1.0), [500.0, 300.0, 0.0])


def ns(k: int) -> int:
    return 1_700_000_000 * 10**9 + k * 100_000_000


def one_lap(seed=0):
    rng = np.random.default_rng(seed)
    truth = [gtsam.Pose3(gtsam.Rot3.Yaw(k / RADIUS + math.pi / 2), [RADIUS * math.cos(k / RADIUS),
             RADIUS * math.sin(k / RADIUS), 0.0]) for k in range(LAP)]
    truth = [truth[0].inverse().compose(t) for t in truth]
    odom = [truth[0]]
    for k in range(1, LAP):
        step = truth[k - 1].between(truth[k])
        drift = gtsam.Rot3.Yaw(rng.normal(0.0005, 0.006))
        odom.append(odom[-1].compose(gtsam.Pose3(drift.compose(step.rotation()), step.translation() * 1.03)))
    return truth, odom


def closure(truth_k, rng):
    """(keyframe body pose in the map, measured query-in-keyframe camera pose, ROS covariance) for a keyframe a few
    metres from the query, measured with centimetre noise."""
    e = default_extrinsic()
    query_cam = MAP_FROM_ODOM.compose(truth_k).compose(e)
    keyframe_cam = query_cam.compose(gtsam.Pose3(gtsam.Rot3.Yaw(rng.normal(0, 0.1)), [rng.uniform(-1, 1), 0.0,
                                                                                       rng.uniform(-4, 4)]))
    rel = keyframe_cam.inverse().compose(query_cam)
    noisy = rel.compose(gtsam.Pose3.Expmap(np.r_[rng.normal(0, 0.003, 3), rng.normal(0, 0.02, 3)]))
    cov = np.diag([0.02 ** 2] * 3 + [0.003 ** 2] * 3).ravel()
    return keyframe_cam.compose(BODY_TO_OPTICAL.inverse()), noisy, cov


def errors(g, truth) -> float:
    est = np.array([p.translation() for _, p in g.poses()])
    want = np.array([MAP_FROM_ODOM.compose(t).translation() for t in truth])
    return float(np.linalg.norm(est - want, axis=1).mean())


def test_metric_prior_map_closures_beat_position_only_factors():
    truth, odom = one_lap()
    metric, position_only = PoseGraph(), PoseGraph()
    rng = np.random.default_rng(3)
    verdicts = []
    for k in range(LAP):
        metric.add_odometry(ns(k), odom[k])
        position_only.add_odometry(ns(k), odom[k])
        if k % 10 == 5:
            kf_body, rel, cov = closure(truth[k], rng)
            verdicts.append(metric.add_prior_map_pose(ns(k), kf_body, rel, cov))
            # today's factor for the same candidate: the keyframe's position, prior_map_sigma_m
            position_only.add_absolute(ns(k), kf_body.translation(), position_only.prior_map_covariance())
    assert metric.aligned and position_only.aligned
    assert Verdict.REJECTED not in verdicts and metric.pose_priors >= len(verdicts) - 4
    metric_err, position_err = errors(metric, truth), errors(position_only, truth)
    assert metric_err < 0.5 * position_err and metric_err < 0.5, (metric_err, position_err)


def test_a_wrong_metric_closure_is_refused_by_the_gate():
    truth, odom = one_lap()
    g = PoseGraph(GraphSettings())
    rng = np.random.default_rng(4)
    for k in range(LAP):
        g.add_odometry(ns(k), odom[k])
        if k % 10 == 5 and k < 150:
            g.add_prior_map_pose(ns(k), *closure(truth[k], rng))
    assert g.aligned
    kf_body, rel, cov = closure(truth[160], rng)
    far = gtsam.Pose3(kf_body.rotation(), kf_body.translation() + [40.0, 0.0, 0.0])  # a keyframe of another place
    assert g.add_prior_map_pose(ns(LAP - 1), far, rel, cov) == Verdict.REJECTED
