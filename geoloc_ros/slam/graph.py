"""PoseGraph: a GTSAM Pose3 factor graph of odometry, loop closures and absolute position factors, optimised
incrementally with iSAM2. ROS-free: stamps are integer nanoseconds, poses gtsam.Pose3, covariances ROS-ordered
(x y z roll pitch yaw) as the messages carry them. docs/slam.md explains every factor and default."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
import math
import time

import gtsam
from gtsam.symbol_shorthand import X
import numpy as np
from scipy.stats import chi2

from geoloc_ros.slam import noise
from geoloc_ros.slam.history import OdometryHistory

# geoloc_msgs/PlaceCandidate.RELATIVE_POSE_* (kept as numbers so the core needs no ROS).
KIND_NONE, KIND_DIRECTION, KIND_METRIC = 0, 1, 2
# A keyframe camera's optical frame in its body frame (x forward, y left, z up): REP-103's optical rotation
BODY_TO_OPTICAL = gtsam.Pose3(gtsam.Rot3.Quaternion(0.5, -0.5, 0.5, -0.5), np.zeros(3))
# The first pose's prior fixes the gauge: tight until absolute factors place the trajectory (a looser one
# makes the system too poorly conditioned for iSAM2), then loose in position and heading so they decide, and
# tight in tilt because odom frames are gravity-aligned (REP-105). Sigmas in GTSAM order (rx ry rz x y z).
GAUGE_SIGMAS = np.array([1e-3] * 3 + [1e-3] * 3)
ALIGNED_ANCHOR_SIGMAS = np.array([0.01, 0.01, math.pi, 1e3, 1e3, 1e3])


class Verdict:
    """What happened to a closure or absolute measurement."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"  # failed the consistency gate against the current estimate
    PENDING = "pending"  # its stamp is newer than the odometry; retried as odometry arrives
    NO_POSE = "no_pose"  # no odometry within stamp_tolerance_s of a stamp it needs
    SAME_NODE = "same_node"  # both ends fall on one pose node: nothing to constrain


@dataclass
class GraphSettings:
    keyframe_distance_m: float = 1.0  # a new pose node after this much travel ...
    keyframe_angle_deg: float = 10.0  # ... or this much turning (both 0: one node per odometry message)
    stamp_tolerance_s: float = 0.5  # a stamp needs an odometry message this close
    pending_timeout_s: float = 10.0  # closures waiting for odometry are dropped after this (stamp time)
    odometry: noise.OdometryNoise = field(default_factory=noise.OdometryNoise)
    same_place_sigma_m: float = 5.0  # "same place" closure (no relative pose): positional sigma
    same_place_sigma_rad: float = 0.5  # ... and rotational sigma
    metric_default_sigma_m: float = 0.2  # metric relative pose sent without covariance
    metric_default_sigma_rad: float = 0.05
    prior_map_sigma_m: float = 5.0  # prior-map keyframe as an absolute position: horizontal sigma
    prior_map_sigma_z_m: float = 100.0  # ... vertical sigma (map altitudes come from GPS)
    align_min_factors: int = 3  # absolute measurements that place the trajectory in the map frame ...
    align_min_spread_m: float = 10.0  # ... spread over at least this distance (so they fix the heading)
    align_inlier_sigmas: float = 3.0  # measurements further than this many sigmas from the alignment are dropped
    robust_kernel: str = "huber"
    robust_k: float = 1.345
    gate_probability: float = 0.999  # chi-square gate on the innovation; 1.0 disables the gate
    relinearize_iterations: int = 3  # extra iSAM2 updates after a closure, so it converges at once
    base_to_camera: gtsam.Pose3 = field(default_factory=lambda: gtsam.Pose3(
        gtsam.Rot3(noise.OPTICAL_ROTATION), np.zeros(3)))


@dataclass
class Edge:
    """A between-factor as written to g2o: keys, measurement and Gaussian covariance (GTSAM tangent order)."""

    key_from: int
    key_to: int
    measured: gtsam.Pose3
    covariance: np.ndarray
    kind: str  # "odometry" or "closure"


class PoseGraph:
    def __init__(self, settings: GraphSettings | None = None):
        self.settings = s = settings or GraphSettings()
        noise.robust(s.robust_kernel, s.robust_k, np.eye(3))  # refuses an unknown kernel now
        params = gtsam.ISAM2Params()
        params.setRelinearizeThreshold(0.01)
        params.relinearizeSkip = 1
        self.isam = gtsam.ISAM2(params)
        self.history = OdometryHistory()
        self.node_stamps: list[int] = []
        self.node_odom: list[gtsam.Pose3] = []
        self.edges: list[Edge] = []
        self.absolute_factors = 0
        self.pose_priors = 0  # of which full 6-DoF priors (metric prior-map closures)
        self.aligned = False  # True once absolute factors hold the trajectory in the map frame
        self._factors = gtsam.NonlinearFactorGraph()  # every factor but the gauge prior, for re-anchoring
        self._unaligned: list[tuple[int, np.ndarray, np.ndarray]] = []  # (node, position, cov) before aligning
        self.closures_accepted = 0  # loop closures that became factors
        self.closures_rejected = 0  # ... refused: gate, no odometry at a stamp, timed out
        self.absolute_rejected = 0  # absolute positions refused: gate, no pose, alignment outlier, timed out
        self.last_optimise_ms = float("nan")
        self._pending: list[tuple[int, callable, bool]] = []  # (stamp_ns it waits for, retry, is a closure)
        self._estimate = None

    def __len__(self) -> int:
        return len(self.node_stamps)

    # -- odometry ---------------------------------------------------------------------------------------------
    def add_odometry(self, stamp_ns: int, pose: gtsam.Pose3, covariance=None) -> int | None:
        """Record an odometry pose (odom frame); returns the index of the pose node it created, or None when
        it fell within the keyframe step of the last node. Stamps must increase."""
        last = self.history.last_stamp
        if last is not None and stamp_ns <= last:
            raise ValueError(f"odometry stamp {stamp_ns} ns is not after the previous one ({last} ns)")
        self.history.append(stamp_ns, pose)
        made = self._maybe_add_node(stamp_ns, pose, covariance)
        self._retry_pending(stamp_ns)
        return made

    def _maybe_add_node(self, stamp_ns, pose, covariance) -> int | None:
        s = self.settings
        graph, values = gtsam.NonlinearFactorGraph(), gtsam.Values()
        i = len(self.node_stamps)
        if i == 0:
            graph.add(gtsam.PriorFactorPose3(X(0), pose, gtsam.noiseModel.Diagonal.Sigmas(GAUGE_SIGMAS)))
            values.insert(X(0), pose)
        else:
            step = self.node_odom[-1].between(pose)
            if not self._is_keyframe_step(step):
                return None
            cov = noise.odometry_covariance(step, pose.rotation(), covariance, s.odometry)
            self._add(graph, gtsam.BetweenFactorPose3(X(i - 1), X(i), step, noise.gaussian(cov)))
            values.insert(X(i), self.isam.calculateEstimatePose3(X(i - 1)).compose(step))
            self.edges.append(Edge(X(i - 1), X(i), step, cov, "odometry"))
        self.node_stamps.append(stamp_ns)
        self.node_odom.append(pose)
        self._update(graph, values, iterations=0)
        return i

    def _is_keyframe_step(self, step: gtsam.Pose3) -> bool:
        s = self.settings
        if s.keyframe_distance_m <= 0 and s.keyframe_angle_deg <= 0:
            return True
        dist = float(np.linalg.norm(step.translation()))
        angle = math.degrees(float(np.linalg.norm(gtsam.Rot3.Logmap(step.rotation()))))
        return (s.keyframe_distance_m > 0 and dist >= s.keyframe_distance_m) or \
            (s.keyframe_angle_deg > 0 and angle >= s.keyframe_angle_deg)

    # -- where a stamp falls ----------------------------------------------------------------------------------
    def locate(self, stamp_ns: int):
        """(node index, offset) with pose(stamp) = node pose * offset, from the odometry nearest the stamp;
        None when no odometry lies within stamp_tolerance_s."""
        at = self.history.nearest(stamp_ns, int(self.settings.stamp_tolerance_s * 1e9))
        if at is None or not self.node_stamps:
            return None
        j = bisect.bisect_left(self.node_stamps, stamp_ns)
        i = min((k for k in (j - 1, j) if 0 <= k < len(self.node_stamps)),
                key=lambda k: abs(self.node_stamps[k] - stamp_ns))
        return i, self.node_odom[i].between(at)

    def _waits_for_odometry(self, stamp_ns: int) -> bool:
        last = self.history.last_stamp
        return last is None or stamp_ns > last

    def _defer(self, stamp_ns: int, retry, closure: bool) -> str:
        self._pending.append((stamp_ns, retry, closure))
        return Verdict.PENDING

    def _retry_pending(self, now_ns: int):
        timeout = int(self.settings.pending_timeout_s * 1e9)
        waiting, self._pending = self._pending, []
        for stamp, retry, closure in waiting:
            if stamp <= now_ns:
                retry()
            elif now_ns - stamp < timeout:
                self._pending.append((stamp, retry, closure))
            else:
                if closure:
                    self.closures_rejected += 1
                else:
                    self.absolute_rejected += 1

    # -- loop closures ----------------------------------------------------------------------------------------
    def add_session_closure(self, query_stamp_ns: int, keyframe_stamp_ns: int, relative_pose: gtsam.Pose3,
                            covariance, kind: int) -> str:
        """A candidate from the session map: the query camera's pose in the keyframe camera's optical frame
        (p_k = T p_q) with its ROS-ordered covariance and geoloc_msgs RELATIVE_POSE_* kind."""
        if self._waits_for_odometry(query_stamp_ns):
            return self._defer(query_stamp_ns, lambda: self.add_session_closure(
                query_stamp_ns, keyframe_stamp_ns, relative_pose, covariance, kind), closure=True)
        query, keyframe = self.locate(query_stamp_ns), self.locate(keyframe_stamp_ns)
        if query is None or keyframe is None:
            self.closures_rejected += 1
            return Verdict.NO_POSE
        (a, d_a), (b, d_b) = query, keyframe
        if a == b:
            return Verdict.SAME_NODE
        t_cam, cov_cam = self._camera_measurement(relative_pose, covariance, kind)
        e = self.settings.base_to_camera
        base = e.compose(t_cam).compose(e.inverse())  # keyframe base -> query base
        measured = d_b.compose(base).compose(d_a.inverse())  # node b -> node a
        cov = noise.transform_covariance(d_a, noise.transform_covariance(e, cov_cam))
        if not self._gate_between(X(b), X(a), measured, cov):
            self.closures_rejected += 1
            return Verdict.REJECTED
        s = self.settings
        graph = gtsam.NonlinearFactorGraph()
        self._add(graph, gtsam.BetweenFactorPose3(X(b), X(a), measured,
                                                  noise.robust(s.robust_kernel, s.robust_k, cov)))
        self.edges.append(Edge(X(b), X(a), measured, cov, "closure"))
        self.closures_accepted += 1
        self._update(graph, gtsam.Values(), iterations=s.relinearize_iterations)
        return Verdict.ACCEPTED

    def _camera_measurement(self, relative_pose: gtsam.Pose3, covariance, kind: int):
        """(camera-frame relative pose, GTSAM-ordered covariance) as the factor uses it for each kind."""
        s = self.settings
        rot_var, pos_var = s.metric_default_sigma_rad ** 2, s.metric_default_sigma_m ** 2
        if kind == KIND_METRIC:
            if noise.is_unset(covariance):
                return relative_pose, np.diag([rot_var] * 3 + [pos_var] * 3)
            return relative_pose, noise.ros_to_gtsam_covariance(covariance)
        place_var = s.same_place_sigma_m ** 2
        if kind == KIND_DIRECTION:  # rotation is known; the unit translation has no scale: "same place" there
            cov = np.diag([rot_var] * 3 + [place_var] * 3)
            if not noise.is_unset(covariance):
                cov[:3, :3] = noise.ros_to_gtsam_covariance(covariance)[:3, :3]
            return gtsam.Pose3(relative_pose.rotation(), np.zeros(3)), cov
        if kind == KIND_NONE:
            return gtsam.Pose3(), np.diag([s.same_place_sigma_rad ** 2] * 3 + [place_var] * 3)
        raise ValueError(f"relative_pose_kind {kind}: expected 0 (none), 1 (direction) or 2 (metric)")

    def _gate_between(self, key_from, key_to, measured, cov) -> bool:
        """Chi-square test of the closure's innovation against the estimate's relative uncertainty."""
        p = self.settings.gate_probability
        if p >= 1.0:
            return True
        est_from = self.isam.calculateEstimatePose3(key_from)
        predicted = est_from.between(self.isam.calculateEstimatePose3(key_to))
        error = gtsam.Pose3.Logmap(measured.between(predicted))
        joint = self.isam.jointMarginalCovariance([key_from, key_to])
        sigma = np.block([[joint.at(key_from, key_from), joint.at(key_from, key_to)],
                          [joint.at(key_to, key_from), joint.at(key_to, key_to)]])
        jac = np.hstack([-predicted.inverse().AdjointMap(), np.eye(6)])
        innovation = jac @ sigma @ jac.T + cov
        return float(error @ np.linalg.solve(innovation, error)) <= chi2.ppf(p, 6)

    # -- absolute factors -------------------------------------------------------------------------------------
    def add_absolute(self, stamp_ns: int, position, covariance3) -> str:
        """The robot (base) position at `stamp_ns` in the map frame, with a 3x3 covariance (ENU, m^2): a
        prior-map keyframe's position or a projected GPS fix. Becomes a robust gtsam.GPSFactor."""
        if self._waits_for_odometry(stamp_ns):
            return self._defer(stamp_ns, lambda: self.add_absolute(stamp_ns, position, covariance3),
                               closure=False)
        where = self.locate(stamp_ns)
        if where is None:
            self.absolute_rejected += 1
            return Verdict.NO_POSE
        i, offset = where
        cov = np.asarray(covariance3, float).reshape(3, 3)
        node = self.isam.calculateEstimatePose3(X(i))
        # The factor holds node i's position; the stamp lies `offset` beyond it, rotated by node i's estimate.
        target = np.asarray(position, float) - node.rotation().rotate(offset.translation())
        if not self.aligned:
            self._unaligned.append((i, target, cov))
            return Verdict.ACCEPTED if self._try_align() else Verdict.PENDING
        if not self._gate_position(X(i), node, target, cov):
            self.absolute_rejected += 1
            return Verdict.REJECTED
        graph = gtsam.NonlinearFactorGraph()
        self._add_absolute_factor(graph, i, target, cov)
        self._update(graph, gtsam.Values(), iterations=self.settings.relinearize_iterations)
        return Verdict.ACCEPTED

    def add_prior_map_pose(self, stamp_ns: int, keyframe_pose: gtsam.Pose3, relative_pose: gtsam.Pose3,
                           covariance) -> str:
        """A prior-map candidate with a metric relative pose: `keyframe_pose` is the keyframe camera's body pose in
        the map frame (x forward, y left, z up at the camera centre, as maps with 3D structure store keyframes),
        `relative_pose` the query camera in the keyframe camera's optical frame with its ROS-ordered covariance.
        The robot's full pose at `stamp_ns` becomes a robust gtsam.PriorFactorPose3 with that covariance; before
        the trajectory is aligned to the map frame its position alone goes to `add_absolute`, with the prior map's
        position covariance (the alignment's inlier test is against drifted odometry)."""
        if self._waits_for_odometry(stamp_ns):
            return self._defer(stamp_ns, lambda: self.add_prior_map_pose(stamp_ns, keyframe_pose, relative_pose,
                                                                         covariance))
        t_cam, cov_cam = self._camera_measurement(relative_pose, covariance, KIND_METRIC)
        e = self.settings.base_to_camera
        map_from_base = keyframe_pose.compose(BODY_TO_OPTICAL).compose(t_cam).compose(e.inverse())
        cov = noise.transform_covariance(e, cov_cam)
        if not self.aligned:  # the alignment is a coarse fit against drifted odometry: a place's sigma
            return self.add_absolute(stamp_ns, map_from_base.translation(), self.prior_map_covariance())
        where = self.locate(stamp_ns)
        if where is None:
            self.rejected += 1
            return Verdict.NO_POSE
        i, offset = where
        target = map_from_base.compose(offset.inverse())  # node i's pose; the stamp lies `offset` beyond it
        cov = noise.transform_covariance(offset, cov)
        rot = target.rotation().matrix()
        if not self._gate_position(X(i), self.isam.calculateEstimatePose3(X(i)), target.translation(),
                                   rot @ cov[3:, 3:] @ rot.T):
            self.rejected += 1
            return Verdict.REJECTED
        s = self.settings
        graph = gtsam.NonlinearFactorGraph()
        self._add(graph, gtsam.PriorFactorPose3(X(i), target, noise.robust(s.robust_kernel, s.robust_k, cov)))
        self.absolute_factors += 1
        self.pose_priors += 1
        self.accepted += 1
        self._update(graph, gtsam.Values(), iterations=s.relinearize_iterations)
        return Verdict.ACCEPTED

    def _add_absolute_factor(self, graph, i, target, cov):
        s = self.settings
        self._add(graph, gtsam.GPSFactor(X(i), target, noise.robust(s.robust_kernel, s.robust_k, cov)))
        self.absolute_factors += 1

    def _try_align(self) -> bool:
        """Place the trajectory in the map frame from the buffered absolute measurements (a rigid x-y-yaw fit,
        evo's Umeyama, refitted on the inliers), then rebuild iSAM2 with the gauge prior loosened."""
        from evo.core.geometry import umeyama_alignment

        s = self.settings
        if len(self._unaligned) < s.align_min_factors:
            return False
        nodes = np.array([self.isam.calculateEstimatePose3(X(i)).translation() for i, _, _ in self._unaligned])
        targets = np.array([t for _, t, _ in self._unaligned])
        sigmas = np.array([math.sqrt(max(c[0, 0], c[1, 1])) for _, _, c in self._unaligned])
        keep = np.ones(len(nodes), bool)
        for _ in range(2):  # fit, drop what the fit cannot explain, fit again
            if keep.sum() < s.align_min_factors or np.ptp(targets[keep, :2], axis=0).max() < s.align_min_spread_m:
                return False
            rot, trans, _ = umeyama_alignment(nodes[keep, :2].T, targets[keep, :2].T)
            residual = np.linalg.norm(nodes[:, :2] @ rot.T + trans - targets[:, :2], axis=1)
            keep = residual <= s.align_inlier_sigmas * sigmas
        if keep.sum() < s.align_min_factors:
            return False
        yaw = math.atan2(rot[1, 0], rot[0, 0])
        self._rebuild(gtsam.Pose3(gtsam.Rot3.Yaw(yaw), np.array([trans[0], trans[1], 0.0])),
                      [m for m, k in zip(self._unaligned, keep) if k])
        self.absolute_rejected += int((~keep).sum())
        self._unaligned = []
        return True

    def _rebuild(self, map_from_odom: gtsam.Pose3, measurements):
        est = self.estimate
        graph, values = gtsam.NonlinearFactorGraph(), gtsam.Values()
        for i in range(len(self.node_stamps)):
            values.insert(X(i), map_from_odom.compose(est.atPose3(X(i))))
        graph.add(gtsam.PriorFactorPose3(X(0), values.atPose3(X(0)),
                                         gtsam.noiseModel.Diagonal.Sigmas(ALIGNED_ANCHOR_SIGMAS)))
        graph.push_back(self._factors)
        for i, target, cov in measurements:
            self._add_absolute_factor(graph, i, target, cov)
        self.isam = gtsam.ISAM2(self.isam.params())
        self.aligned = True
        self._update(graph, values, iterations=self.settings.relinearize_iterations)

    def prior_map_covariance(self) -> np.ndarray:
        s = self.settings
        return np.diag([s.prior_map_sigma_m ** 2] * 2 + [s.prior_map_sigma_z_m ** 2])

    def _gate_position(self, key, node: gtsam.Pose3, target, cov) -> bool:
        p = self.settings.gate_probability
        if p >= 1.0:
            return True
        rot = node.rotation().matrix()
        marginal = rot @ self.isam.marginalCovariance(key)[3:, 3:] @ rot.T  # body -> map frame
        error = node.translation() - target
        return float(error @ np.linalg.solve(marginal + cov, error)) <= chi2.ppf(p, 3)

    # -- optimisation and results -----------------------------------------------------------------------------
    def _add(self, graph, factor):
        graph.add(factor)
        self._factors.add(factor)

    def _update(self, graph, values, iterations: int):
        start = time.perf_counter()
        self.isam.update(graph, values)
        for _ in range(iterations):
            self.isam.update()
        self._estimate = None
        self.last_optimise_ms = (time.perf_counter() - start) * 1e3

    @property
    def estimate(self) -> gtsam.Values:
        if self._estimate is None:
            self._estimate = self.isam.calculateEstimate()
        return self._estimate

    def poses(self) -> list[tuple[int, gtsam.Pose3]]:
        """Every pose node's optimised base pose in the map frame, with its odometry stamp."""
        est = self.estimate
        return [(stamp, est.atPose3(X(i))) for i, stamp in enumerate(self.node_stamps)]

    def map_to_odom(self) -> gtsam.Pose3:
        """The map -> odom correction: the newest node's optimised pose times its odometry pose inverted."""
        if not self.node_stamps:
            return gtsam.Pose3()
        last = len(self.node_stamps) - 1
        return self.estimate.atPose3(X(last)).compose(self.node_odom[last].inverse())

    @property
    def closures(self) -> int:
        return sum(1 for e in self.edges if e.kind == "closure")
