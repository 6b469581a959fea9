"""PoseGraph: a GTSAM Pose3 factor graph of odometry, loop closures and absolute position factors, optimised
incrementally with iSAM2. ROS-free: stamps are integer nanoseconds, poses gtsam.Pose3, covariances ROS-ordered
(x y z roll pitch yaw) as the messages carry them. docs/slam.md explains every factor and default."""

from __future__ import annotations

import bisect
from collections import Counter
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
# A closure's or absolute position's own covariance never claims more than this (sigmas, added as variances):
# a singular or near-singular factor would make the system indeterminate.
CLOSURE_FLOOR_SIGMA_M, CLOSURE_FLOOR_SIGMA_RAD = 0.01, 0.001
# An odometry step longer than this plus max_odometry_speed_mps times the time between the two messages is a
# jump (a reset or a glitch), not motion.
JUMP_SLACK_M = 1.0
# Absolute measurements kept while waiting to place the trajectory in the map frame (the newest; older dropped).
MAX_UNALIGNED = 1000
# Odometry nodes reach iSAM2 in batches of (nodes so far) / BATCH_DIVISOR (at least 1), or sooner when anything
# needs the estimate. GTSAM 4.3's iSAM2 walks every clique of the tree after each update (the Bayes tree
# destructor's breadth-first pass over the orphans it re-attached), so one update per node made each message cost
# grow with the drive; batches keep the cost per node near that of a 1,000-node graph.
BATCH_DIVISOR = 1000


class GraphError(RuntimeError):
    """GTSAM could not take an update even after rebuilding iSAM2 from the committed factors; the update was
    dropped and the graph is as it was before it."""


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
    pending_timeout_s: float = 10.0  # closures waiting for odometry are dropped after this (steady clock)
    max_pending: int = 1000  # at most this many wait; beyond it the oldest is dropped
    max_odometry_speed_mps: float = 100.0  # faster odometry "motion" is a jump: the robot is taken not to have moved
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
    factorization: str = "QR"  # iSAM2's; QR stays accurate where Cholesky (squaring the condition number) fails
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
        self.isam = gtsam.ISAM2(isam2_params(s.factorization))
        self.history = OdometryHistory()
        self.node_stamps: list[int] = []
        self.node_odom: list[gtsam.Pose3] = []
        self.edges: list[Edge] = []
        self.absolute_factors = 0
        self.pose_priors = 0  # of which full 6-DoF priors (metric prior-map closures)
        self.aligned = False  # True once absolute factors hold the trajectory in the map frame
        self._factors = gtsam.NonlinearFactorGraph()  # every committed factor but the gauge prior
        self._gauge = None  # the prior on X(0) in force
        self._committed = 0  # pose nodes iSAM2 holds; those after it wait in the batch below
        self._batch, self._batch_values = gtsam.NonlinearFactorGraph(), gtsam.Values()
        self._edges_committed = 0
        self._tip = None  # the estimate of the newest pose node (iSAM2's, or predicted from odometry in the batch)
        self._closure_count = 0
        # Odometry is stored corrected: corrected = _odom_correction * received, continuous across jumps.
        self._odom_correction = gtsam.Pose3()
        self._last_odometry = None  # (stamp_ns, received pose, corrected pose) of the last message taken
        self.counts = Counter()  # what the graph handled on its own (jumps, expiries, recoveries), for diagnostics
        self._unaligned: list[tuple[int, np.ndarray, np.ndarray]] = []  # (node, position, cov) before aligning
        self.closures_accepted = 0  # loop closures that became factors
        self.closures_rejected = 0  # ... refused: gate, no odometry at a stamp, timed out
        self.absolute_rejected = 0  # absolute positions refused: gate, no pose, alignment outlier, timed out
        self.last_optimise_ms = float("nan")
        self.last_error = ""  # the last failure the graph recovered from or refused, for diagnostics
        # (steady deadline, stamp_ns it waits for, retry, is a closure)
        self._pending: list[tuple[float, int, callable, bool]] = []
        self._estimate = None

    def __len__(self) -> int:
        return len(self.node_stamps)

    # -- odometry ---------------------------------------------------------------------------------------------
    def add_odometry(self, stamp_ns: int, pose: gtsam.Pose3, covariance=None) -> int | None:
        """Record an odometry pose (odom frame); returns the index of the pose node it created, or None when
        it fell within the keyframe step of the last node. Stamps must increase; the pose must be finite and
        the covariance (36 values, ROS order; None or all zero: the default model) a covariance, else
        ValueError. A jump (farther than max_odometry_speed_mps allows since the last message) is taken as no
        motion: later odometry continues from where the robot was. Nothing is recorded when this raises."""
        stamp_ns = int(stamp_ns)
        last = self.history.last_stamp
        if last is not None and stamp_ns <= last:
            raise ValueError(f"odometry stamp {stamp_ns} ns is not after the previous one ({last} ns)")
        noise.checked_pose(pose, "odometry pose")
        if covariance is not None and not noise.is_unset(covariance):
            noise.checked_covariance(covariance, 6, "odometry")
        correction, jumped = self._odom_correction, False
        if self._last_odometry is not None:
            last_stamp, last_received, last_corrected = self._last_odometry
            moved = float(np.linalg.norm(pose.translation() - last_received.translation()))
            if moved > JUMP_SLACK_M + self.settings.max_odometry_speed_mps * (stamp_ns - last_stamp) * 1e-9:
                correction, jumped = last_corrected.compose(pose.inverse()), True
        corrected = correction.compose(pose)
        made = self._maybe_add_node(stamp_ns, corrected, covariance)  # raises with nothing recorded
        if jumped:
            self.counts["odometry_jumps"] += 1
        self._odom_correction = correction
        self._last_odometry = (stamp_ns, pose, corrected)
        self.history.append(stamp_ns, corrected)
        self._retry_pending(stamp_ns)
        return made

    def _maybe_add_node(self, stamp_ns, pose, covariance) -> int | None:
        s = self.settings
        i = len(self.node_stamps)
        if i == 0:
            graph, values = gtsam.NonlinearFactorGraph(), gtsam.Values()
            gauge = gtsam.PriorFactorPose3(X(0), pose, gtsam.noiseModel.Diagonal.Sigmas(GAUGE_SIGMAS))
            graph.add(gauge)
            values.insert(X(0), pose)
            self._commit(graph, values, iterations=0, gauge=gauge)
            self.node_stamps.append(stamp_ns)
            self.node_odom.append(pose)
            self._committed, self._tip = 1, pose
            return i
        step = self.node_odom[-1].between(pose)
        if not self._is_keyframe_step(step):
            return None
        cov = noise.odometry_covariance(step, pose.rotation(), covariance, s.odometry)
        self._tip = self._tip.compose(step)
        self._batch.add(gtsam.BetweenFactorPose3(X(i - 1), X(i), step, noise.gaussian(cov)))
        self._batch_values.insert(X(i), self._tip)
        self.edges.append(Edge(X(i - 1), X(i), step, cov, "odometry"))
        self.node_stamps.append(stamp_ns)
        self.node_odom.append(pose)
        if len(self.node_stamps) - self._committed >= max(1, self._committed // BATCH_DIVISOR):
            self.flush()  # raises with this node (and the batch's others) dropped
        return i

    def flush(self):
        """Hand the batched odometry nodes to iSAM2. If GTSAM fails on them even after rebuilding iSAM2, they are
        dropped (GraphError): the graph then holds exactly the nodes iSAM2 holds, and their odometry messages
        stay in the history, so later odometry steps from the last node that remains."""
        if self._committed == len(self.node_stamps):
            return
        batch, values = self._batch, self._batch_values
        self._batch, self._batch_values = gtsam.NonlinearFactorGraph(), gtsam.Values()
        try:
            self._commit(batch, values, iterations=0)
        except GraphError:
            del self.node_stamps[self._committed:], self.node_odom[self._committed:]
            del self.edges[self._edges_committed:]
            self._tip = self.isam.calculateEstimatePose3(X(self._committed - 1))
            raise
        self._committed, self._edges_committed = len(self.node_stamps), len(self.edges)
        self._tip = self.isam.calculateEstimatePose3(X(self._committed - 1))

    def _is_keyframe_step(self, step: gtsam.Pose3) -> bool:
        return is_keyframe_step(self.settings, step)

    # -- where a stamp falls ----------------------------------------------------------------------------------
    def locate(self, stamp_ns: int):
        """(node index, offset) with pose(stamp) = node pose * offset, from the odometry nearest the stamp;
        None when no odometry lies within stamp_tolerance_s."""
        self.flush()
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
        """Hold a measurement until odometry passes its stamp: at most pending_timeout_s on the steady clock
        (which no message stamp can stall) and max_pending of them (the oldest dropped), each drop counted."""
        self._expire_pending()
        while self._pending and len(self._pending) >= self.settings.max_pending:
            self._count_rejected(self._pending.pop(0)[3])
            self.counts["pending_dropped"] += 1
        self._pending.append((time.monotonic() + self.settings.pending_timeout_s, stamp_ns, retry, closure))
        return Verdict.PENDING

    def _expire_pending(self):
        now = time.monotonic()
        kept = [p for p in self._pending if p[0] >= now]
        expired = [p for p in self._pending if p[0] < now]
        if expired:
            self._pending = kept
            for p in expired:
                self._count_rejected(p[3])
            self.counts["pending_expired"] += len(expired)

    def _count_rejected(self, closure: bool):
        if closure:
            self.closures_rejected += 1
        else:
            self.absolute_rejected += 1

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _retry_pending(self, now_ns: int):
        self._expire_pending()
        waiting = [p for p in self._pending if p[1] <= now_ns]
        if not waiting:
            return
        self._pending = [p for p in self._pending if p[1] > now_ns]
        for _, _, retry, closure in waiting:
            try:
                retry()
            except (ValueError, RuntimeError) as e:  # the odometry that triggered it is recorded all the same
                self._count_rejected(closure)
                self.counts["pending_failed"] += 1
                self.last_error = f"pending measurement: {e}"

    # -- loop closures ----------------------------------------------------------------------------------------
    def add_session_closure(self, query_stamp_ns: int, keyframe_stamp_ns: int, relative_pose: gtsam.Pose3,
                            covariance, kind: int) -> str:
        """A candidate from the session map: the query camera's pose in the keyframe camera's optical frame
        (p_k = T p_q) with its ROS-ordered covariance and geoloc_msgs RELATIVE_POSE_* kind."""
        noise.checked_pose(relative_pose, "relative pose")
        if int(kind) not in (KIND_NONE, KIND_DIRECTION, KIND_METRIC):
            raise ValueError(f"relative_pose_kind {kind}: expected 0 (none), 1 (direction) or 2 (metric)")
        if not noise.is_unset(covariance):
            noise.checked_covariance(covariance, 6, "relative pose")
        query_stamp_ns, keyframe_stamp_ns = int(query_stamp_ns), int(keyframe_stamp_ns)
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
        measured, cov = closure_between(self.settings, relative_pose, covariance, kind, d_a, d_b)
        if not self._gate_between(X(b), X(a), measured, cov):
            self.closures_rejected += 1
            return Verdict.REJECTED
        s = self.settings
        graph = gtsam.NonlinearFactorGraph()
        graph.add(gtsam.BetweenFactorPose3(X(b), X(a), measured, noise.robust(s.robust_kernel, s.robust_k, cov)))
        self._commit(graph, gtsam.Values(), iterations=s.relinearize_iterations)
        self.edges.append(Edge(X(b), X(a), measured, cov, "closure"))
        self._edges_committed = len(self.edges)
        self._closure_count += 1
        self.closures_accepted += 1
        return Verdict.ACCEPTED

    def _camera_measurement(self, relative_pose: gtsam.Pose3, covariance, kind: int):
        return camera_measurement(self.settings, relative_pose, covariance, kind)

    def _gate_between(self, key_from, key_to, measured, cov) -> bool:
        return gate_between(self.isam, key_from, key_to, measured, cov, self.settings.gate_probability)

    # -- absolute factors -------------------------------------------------------------------------------------
    def add_absolute(self, stamp_ns: int, position, covariance3) -> str:
        """The robot (base) position at `stamp_ns` in the map frame, with a 3x3 covariance (ENU, m^2): a
        prior-map keyframe's position or a projected GPS fix. Becomes a robust gtsam.GPSFactor. A position that
        is not finite or a covariance that is not one raises ValueError."""
        stamp_ns = int(stamp_ns)
        position = noise.checked_position(position, "absolute position")
        covariance3 = noise.floored(noise.checked_covariance(covariance3, 3, "position"),
                                    [CLOSURE_FLOOR_SIGMA_M ** 2] * 3)
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
            if len(self._unaligned) >= MAX_UNALIGNED:
                self._unaligned.pop(0)
                self.absolute_rejected += 1
                self.counts["unaligned_dropped"] += 1
            self._unaligned.append((i, target, cov))
            return Verdict.ACCEPTED if self._try_align() else Verdict.PENDING
        if not self._gate_position(X(i), node, target, cov):
            self.absolute_rejected += 1
            return Verdict.REJECTED
        graph = gtsam.NonlinearFactorGraph()
        self._add_absolute_factor(graph, i, target, cov)
        self._commit(graph, gtsam.Values(), iterations=self.settings.relinearize_iterations)
        self.absolute_factors += 1
        return Verdict.ACCEPTED

    def add_prior_map_pose(self, stamp_ns: int, keyframe_pose: gtsam.Pose3, relative_pose: gtsam.Pose3,
                           covariance) -> str:
        """A prior-map candidate with a metric relative pose: `keyframe_pose` is the keyframe camera's body pose in
        the map frame (x forward, y left, z up at the camera centre, as maps with 3D structure store keyframes),
        `relative_pose` the query camera in the keyframe camera's optical frame with its ROS-ordered covariance.
        The robot's full pose at `stamp_ns` becomes a robust gtsam.PriorFactorPose3 with that covariance; before
        the trajectory is aligned to the map frame its position alone goes to `add_absolute`, with the prior map's
        position covariance (the alignment's inlier test is against drifted odometry)."""
        stamp_ns = int(stamp_ns)
        noise.checked_pose(keyframe_pose, "keyframe pose")
        noise.checked_pose(relative_pose, "relative pose")
        if not noise.is_unset(covariance):
            noise.checked_covariance(covariance, 6, "relative pose")
        if self._waits_for_odometry(stamp_ns):
            return self._defer(stamp_ns, lambda: self.add_prior_map_pose(stamp_ns, keyframe_pose, relative_pose,
                                                                         covariance), closure=False)
        t_cam, cov_cam = self._camera_measurement(relative_pose, covariance, KIND_METRIC)
        e = self.settings.base_to_camera
        map_from_base = keyframe_pose.compose(BODY_TO_OPTICAL).compose(t_cam).compose(e.inverse())
        cov = noise.floored(noise.transform_covariance(e, cov_cam),
                            [CLOSURE_FLOOR_SIGMA_RAD ** 2] * 3 + [CLOSURE_FLOOR_SIGMA_M ** 2] * 3)
        if not self.aligned:  # the alignment is a coarse fit against drifted odometry: a place's sigma
            return self.add_absolute(stamp_ns, map_from_base.translation(), self.prior_map_covariance())
        where = self.locate(stamp_ns)
        if where is None:
            self.absolute_rejected += 1
            return Verdict.NO_POSE
        i, offset = where
        target = map_from_base.compose(offset.inverse())  # node i's pose; the stamp lies `offset` beyond it
        cov = noise.transform_covariance(offset, cov)
        rot = target.rotation().matrix()
        if not self._gate_position(X(i), self.isam.calculateEstimatePose3(X(i)), target.translation(),
                                   rot @ cov[3:, 3:] @ rot.T):
            self.absolute_rejected += 1
            return Verdict.REJECTED
        s = self.settings
        graph = gtsam.NonlinearFactorGraph()
        graph.add(gtsam.PriorFactorPose3(X(i), target, noise.robust(s.robust_kernel, s.robust_k, cov)))
        self._commit(graph, gtsam.Values(), iterations=s.relinearize_iterations)
        self.absolute_factors += 1
        self.pose_priors += 1
        return Verdict.ACCEPTED

    def _add_absolute_factor(self, graph, i, target, cov):
        s = self.settings
        graph.add(gtsam.GPSFactor(X(i), target, noise.robust(s.robust_kernel, s.robust_k, cov)))

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
        if not np.all(np.isfinite(rot)) or not np.all(np.isfinite(trans)):
            return False
        yaw = math.atan2(rot[1, 0], rot[0, 0])
        inliers = [m for m, k in zip(self._unaligned, keep) if k]
        self._rebuild(gtsam.Pose3(gtsam.Rot3.Yaw(yaw), np.array([trans[0], trans[1], 0.0])), inliers)
        self.absolute_factors += len(inliers)
        self.absolute_rejected += int((~keep).sum())
        self._unaligned = []
        return True

    def _rebuild(self, map_from_odom: gtsam.Pose3, measurements):
        """A new iSAM2 holding the estimate moved into the map frame, the loosened gauge, every factor and the
        measurements; it replaces the old one only once it has taken them (GraphError otherwise)."""
        est = self.estimate
        graph, values, new = gtsam.NonlinearFactorGraph(), gtsam.Values(), gtsam.NonlinearFactorGraph()
        for i in range(len(self.node_stamps)):
            values.insert(X(i), map_from_odom.compose(est.atPose3(X(i))))
        anchor = gtsam.PriorFactorPose3(X(0), values.atPose3(X(0)),
                                        gtsam.noiseModel.Diagonal.Sigmas(ALIGNED_ANCHOR_SIGMAS))
        for i, target, cov in measurements:
            self._add_absolute_factor(new, i, target, cov)
        graph.add(anchor)
        graph.push_back(self._factors)
        graph.push_back(new)
        isam = gtsam.ISAM2(isam2_params(self.settings.factorization))
        try:
            _update(isam, graph, values, self.settings.relinearize_iterations)
        except RuntimeError as e:
            self.counts["update_failures"] += 1
            raise GraphError(f"placing the trajectory in the map frame failed: {e}") from e
        self.isam, self._gauge, self.aligned, self._estimate = isam, anchor, True, None
        self._factors.push_back(new)
        self._tip = isam.calculateEstimatePose3(X(self._committed - 1))

    def prior_map_covariance(self) -> np.ndarray:
        s = self.settings
        return np.diag([s.prior_map_sigma_m ** 2] * 2 + [s.prior_map_sigma_z_m ** 2])

    def _gate_position(self, key, node: gtsam.Pose3, target, cov) -> bool:
        p = self.settings.gate_probability
        if p >= 1.0:
            return True
        rot = node.rotation().matrix()
        marginal = rot @ self.isam.marginalCovariance(key)[3:, 3:] @ rot.T  # body -> map frame
        return _chi_square_passes(node.translation() - target, marginal + cov, p)

    # -- optimisation and results -----------------------------------------------------------------------------
    def _commit(self, graph, values, iterations: int, gauge=None):
        """Give iSAM2 the new factors and values. When GTSAM fails (IndeterminateLinearSystem and the like),
        iSAM2 is rebuilt from the committed factors and the update tried once more; if that fails too, the
        update is dropped (GraphError) and the graph holds exactly what it held before. On success the factors
        are committed (`gauge`: the graph's one factor is the gauge prior, kept apart for re-anchoring)."""
        start = time.perf_counter()
        update_or_recover(self, graph, values, iterations)
        if gauge is not None:
            self._gauge = gauge
        else:
            self._factors.push_back(graph)
        self._estimate = None
        if self._committed and self._committed == len(self.node_stamps):  # a closure or absolute factor moved it
            self._tip = self.isam.calculateEstimatePose3(X(self._committed - 1))
        self.last_optimise_ms = (time.perf_counter() - start) * 1e3

    def _recover(self):
        """Rebuild iSAM2 (QR) from the gauge and every committed factor, seeded by a batch Levenberg-Marquardt
        optimisation (QR) from the last linearisation point. Raises GraphError if even that fails."""
        n = self._committed
        self._estimate = None
        if n == 0:
            self.isam = gtsam.ISAM2(isam2_params("QR"))
            return
        theta = self.isam.getLinearizationPoint()
        values = gtsam.Values()
        for i in range(n):
            pose = theta.atPose3(X(i)) if theta.exists(X(i)) else None
            if pose is None or not np.all(np.isfinite(pose.matrix())):
                pose = values.atPose3(X(i - 1)).compose(self.node_odom[i - 1].between(self.node_odom[i])) if i \
                    else self._gauge.prior()
            values.insert(X(i), pose)
        graph = gtsam.NonlinearFactorGraph()
        graph.add(self._gauge)
        graph.push_back(self._factors)
        self.isam = rebuilt_isam(graph, values)
        self.counts["recoveries"] += 1

    @property
    def estimate(self) -> gtsam.Values:
        self.flush()
        if self._estimate is None:
            self._estimate = self.isam.calculateEstimate()
        return self._estimate

    def pose_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """poses() as arrays, extracted in one pass: stamps (N), positions (N x 3) and quaternions (N x 4, x y z w)."""
        from scipy.spatial.transform import Rotation

        if not self.node_stamps:
            return np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 4))
        m = gtsam.utilities.extractPose3(self.estimate)
        quaternions = Rotation.from_matrix(m[:, :9].reshape(-1, 3, 3)).as_quat()
        return np.asarray(self.node_stamps, np.int64), m[:, 9:12], quaternions

    def poses(self) -> list[tuple[int, gtsam.Pose3]]:
        """Every pose node's optimised base pose in the map frame, with its odometry stamp."""
        est = self.estimate
        return [(stamp, est.atPose3(X(i))) for i, stamp in enumerate(self.node_stamps)]

    def map_to_odom(self) -> gtsam.Pose3:
        """The map -> odom correction: the newest node's optimised pose times its odometry pose inverted (and
        times the correction that makes odometry continuous across jumps, so it is the received odom frame)."""
        if not self._committed:
            return gtsam.Pose3()
        last = self._committed - 1  # the batch's nodes are odometry from it, so the correction is the same
        newest = self.isam.calculateEstimatePose3(X(last))
        return newest.compose(self.node_odom[last].inverse()).compose(self._odom_correction)

    @property
    def closures(self) -> int:
        return self._closure_count


def is_keyframe_step(s: GraphSettings, step: gtsam.Pose3) -> bool:
    """Whether odometry has moved keyframe_distance_m or turned keyframe_angle_deg since the last pose node (both 0:
    every message makes a node)."""
    if s.keyframe_distance_m <= 0 and s.keyframe_angle_deg <= 0:
        return True
    dist = float(np.linalg.norm(step.translation()))
    angle = math.degrees(float(np.linalg.norm(gtsam.Rot3.Logmap(step.rotation()))))
    return (s.keyframe_distance_m > 0 and dist >= s.keyframe_distance_m) or \
        (s.keyframe_angle_deg > 0 and angle >= s.keyframe_angle_deg)


def camera_measurement(s: GraphSettings, relative_pose: gtsam.Pose3, covariance, kind: int):
    """(camera-frame relative pose, GTSAM-ordered covariance) as a closure factor uses it for each kind."""
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


def closure_between(s: GraphSettings, relative_pose: gtsam.Pose3, covariance, kind: int, d_a: gtsam.Pose3,
                    d_b: gtsam.Pose3) -> tuple[gtsam.Pose3, np.ndarray]:
    """A closure candidate as a between-factor from pose node b (the keyframe's) to node a (the query's): the
    camera-frame measurement through `base_to_camera`, and the offsets d_a, d_b from each node to its stamp's
    odometry; with its GTSAM-ordered covariance, floored."""
    t_cam, cov_cam = camera_measurement(s, relative_pose, covariance, kind)
    e = s.base_to_camera
    base = e.compose(t_cam).compose(e.inverse())  # keyframe base -> query base
    measured = d_b.compose(base).compose(d_a.inverse())  # node b -> node a
    cov = noise.transform_covariance(d_a, noise.transform_covariance(e, cov_cam))
    return measured, noise.floored(cov, [CLOSURE_FLOOR_SIGMA_RAD ** 2] * 3 + [CLOSURE_FLOOR_SIGMA_M ** 2] * 3)


def gate_between(isam, key_from, key_to, measured, cov, probability: float) -> bool:
    """Chi-square test of a between-factor's innovation against the estimate's relative uncertainty (iSAM2's
    joint marginal of the two poses through the relative-pose Jacobian) plus its own covariance; 1.0: no gate."""
    if probability >= 1.0:
        return True
    est_from = isam.calculateEstimatePose3(key_from)
    predicted = est_from.between(isam.calculateEstimatePose3(key_to))
    error = gtsam.Pose3.Logmap(measured.between(predicted))
    joint = isam.jointMarginalCovariance([key_from, key_to])
    sigma = np.block([[joint.at(key_from, key_from), joint.at(key_from, key_to)],
                      [joint.at(key_to, key_from), joint.at(key_to, key_to)]])
    jac = np.hstack([-predicted.inverse().AdjointMap(), np.eye(6)])
    return _chi_square_passes(error, jac @ sigma @ jac.T + cov, probability)


def isam2_params(factorization: str) -> gtsam.ISAM2Params:
    """iSAM2 as the graph uses it: relinearise every update (threshold 0.01), checking only the cliques an
    update touches (the full check walks every variable, so each update grew with the graph), and no cache of
    linearised factors (it too made each update cost grow with the graph)."""
    params = gtsam.ISAM2Params()
    params.setFactorization(factorization)
    params.setRelinearizeThreshold(0.01)
    params.relinearizeSkip = 1
    params.enablePartialRelinearizationCheck = True
    params.cacheLinearizedFactors = False
    return params


def _update(isam, graph, values, iterations: int):
    isam.update(graph, values)
    for _ in range(iterations):
        isam.update()


def rebuilt_isam(graph, values) -> gtsam.ISAM2:
    """A fresh QR iSAM2 holding `graph`, seeded with a Levenberg-Marquardt solution from `values` (or `values` as
    they are when LM fails); GraphError when even that iSAM2 cannot take the graph."""
    lm = gtsam.LevenbergMarquardtParams()
    lm.setLinearSolverType("MULTIFRONTAL_QR")
    try:
        values = gtsam.LevenbergMarquardtOptimizer(graph, values, lm).optimize()
    except RuntimeError:
        pass  # seed iSAM2 with the linearisation point as it is
    isam = gtsam.ISAM2(isam2_params("QR"))
    try:
        isam.update(graph, values)
    except RuntimeError as e:
        raise GraphError(f"iSAM2 could not be rebuilt from the committed factors: {e}") from e
    return isam


def update_or_recover(owner, graph, values, iterations: int):
    """Give `owner.isam` the update; when GTSAM fails, `owner._recover()` rebuilds iSAM2 from the committed factors
    and the update is tried once more; a second failure recovers again and raises GraphError, so the graph holds
    exactly what it held before. Failures are counted in `owner.counts` and the first named in `owner.last_error`."""
    try:
        _update(owner.isam, graph, values, iterations)
    except RuntimeError as first:
        owner.counts["update_failures"] += 1
        owner.last_error = f"iSAM2 update: {first}".splitlines()[0]
        owner._recover()
        try:
            _update(owner.isam, graph, values, iterations)
        except RuntimeError as e:
            owner.counts["update_failures"] += 1
            owner._recover()
            raise GraphError(f"GTSAM could not take the update: {str(e).strip().splitlines()[0]}") from e


def _chi_square_passes(error: np.ndarray, covariance: np.ndarray, probability: float) -> bool:
    """error^T covariance^-1 error within the chi-square quantile; a covariance that is not positive definite
    (Cholesky fails) or a statistic that is not finite fails the test."""
    try:
        root = np.linalg.cholesky(0.5 * (covariance + covariance.T))
    except np.linalg.LinAlgError:
        return False
    white = np.linalg.solve(root, error)
    statistic = float(white @ white)
    return math.isfinite(statistic) and statistic <= chi2.ppf(probability, len(error))
