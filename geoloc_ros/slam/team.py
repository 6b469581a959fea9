"""TeamGraph: the pose graphs of several robots in one GTSAM iSAM2, joined by inter-robot loop closures. ROS-free,
like graph.PoseGraph (stamps in integer nanoseconds, gtsam.Pose3 poses, ROS-ordered covariances); docs/multi_robot.md
explains the anchoring, the restarts and the robust factors.

Each robot's odometry makes one trajectory segment, keyed gtsam.Symbol(<robot's character>, segment << 32 | node);
a restart (odometry that jumps, or starts again at the origin with older stamps) opens a new segment. The first
robot's first segment defines the map frame. Every other segment starts in its own odometry frame under a tight
prior on its first pose (a loose one leaves iSAM2 too poorly conditioned, as in PoseGraph) and is *floating*: its
poses are not in the map frame. Closures between two segments of one frame (both anchored, or one segment) are
gated and added as robust between-factors; closures that link a floating segment to the map frame wait as links
until `align_min_factors` of them, spread over `align_min_spread_m`, agree on one rigid x-y-yaw transform (evo's
Umeyama, refitted on the inliers): the segment is then moved into the map frame, its prior dropped, the agreeing
links become factors and iSAM2 is rebuilt. A single wrong closure can neither anchor a robot nor, once it is
anchored, pass the gate; the robust kernel bounds what one that passes can pull.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
import math
import string
import time

import gtsam
import numpy as np

from geoloc_ros.slam import noise
from geoloc_ros.slam.graph import (
    GAUGE_SIGMAS,
    JUMP_SLACK_M,
    KIND_DIRECTION,
    KIND_METRIC,
    KIND_NONE,
    MAX_UNALIGNED,
    Edge,
    GraphError,
    GraphSettings,
    Verdict,
    _update,
    closure_between,
    gate_between,
    is_keyframe_step,
    isam2_params,
    rebuilt_isam,
    update_or_recover,
)
from geoloc_ros.slam.history import OdometryHistory

# One Symbol character per robot, so its keys never meet another robot's.
KEY_CHARS = string.ascii_uppercase + string.ascii_lowercase
SEGMENT_SHIFT = 32  # a key's index is segment << 32 | node: 4e9 nodes per segment
# Segments a robot may open (restarts); beyond it its odometry is refused rather than memory grown without end.
MAX_SEGMENTS = 1000
# A closure that links a floating segment waits for its anchoring (Verdict-like, counted apart from rejections).
UNANCHORED = "unanchored"


class Segment:
    """One stretch of a robot's odometry between restarts: its pose nodes, every odometry message, its frame."""

    def __init__(self, robot: str, char: str, index: int, anchored: bool):
        self.robot, self.index, self._char = robot, index, char
        self.history = OdometryHistory()
        self.node_stamps: list[int] = []
        self.node_odom: list[gtsam.Pose3] = []
        self.anchored = anchored  # its poses are in the map frame
        self.last = None  # (stamp_ns, pose) of the last odometry message taken

    def key(self, i: int) -> int:
        return gtsam.Symbol(self._char, (self.index << SEGMENT_SHIFT) | i).key()

    def __repr__(self) -> str:
        return f"{self.robot}#{self.index}"


@dataclass
class Link:
    """A closure between two segments not (yet) in one frame: node j of `to` seen from node i of `frm`."""

    frm: Segment
    i: int
    to: Segment
    j: int
    measured: gtsam.Pose3  # X_to(j) = X_frm(i) * measured
    covariance: np.ndarray
    inter_robot: bool


class TeamGraph:
    def __init__(self, robots, settings: GraphSettings | None = None):
        robots = list(robots)
        if not robots or len(set(robots)) != len(robots) or not all(isinstance(r, str) and r for r in robots):
            raise ValueError(f"robots must be distinct non-empty names, got {robots!r}")
        if len(robots) > len(KEY_CHARS):
            raise ValueError(f"at most {len(KEY_CHARS)} robots, got {len(robots)}")
        self.settings = s = settings or GraphSettings()
        noise.robust(s.robust_kernel, s.robust_k, np.eye(3))  # refuses an unknown kernel now
        self.robots = robots
        self.segments: dict[str, list[Segment]] = {r: [] for r in robots}
        self.isam = gtsam.ISAM2(isam2_params(s.factorization))
        self._factors = gtsam.NonlinearFactorGraph()  # every committed factor but the segments' priors
        self._gauges: dict[int, gtsam.PriorFactorPose3] = {}  # id(segment) -> the prior on its first pose
        self.edges: list[Edge] = []
        self._links: list[Link] = []
        self._pending: list[tuple[float, str, int, str, int, callable, bool]] = []
        self.counts = Counter()  # per robot ("<robot>.<what>") and team-wide, for diagnostics
        self.closures_accepted = 0  # intra-robot closures that became factors
        self.closures_rejected = 0
        self.inter_robot_accepted = 0
        self.inter_robot_rejected = 0
        self.absolute_factors = 0  # (none in a team graph; write_g2o reports it)
        self.last_optimise_ms = float("nan")
        self.last_error = ""
        self._estimate = None

    def __len__(self) -> int:
        return sum(len(g.node_stamps) for segs in self.segments.values() for g in segs)

    @property
    def closures(self) -> int:
        return self.closures_accepted + self.inter_robot_accepted

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def waiting_links(self) -> int:
        """Closures waiting for a floating segment to be anchored."""
        return len(self._links)

    def anchored(self, robot: str) -> bool:
        """Whether the robot's current segment is in the map frame."""
        seg = self._current(robot)
        return seg is not None and seg.anchored

    def _current(self, robot: str) -> Segment | None:
        if robot not in self.segments:
            raise ValueError(f"unknown robot {robot!r} (robots: {', '.join(self.robots)})")
        segs = self.segments[robot]
        return segs[-1] if segs else None

    # -- odometry ---------------------------------------------------------------------------------------------
    def add_odometry(self, robot: str, stamp_ns: int, pose: gtsam.Pose3, covariance=None) -> int | None:
        """Record `robot`'s odometry pose; returns the node index (within its current segment) it created, or
        None. Stamps must increase, except for a restart: odometry that jumps (farther than
        max_odometry_speed_mps allows) or that starts again at its origin with an older stamp opens a new,
        floating segment. ValueError (nothing recorded) for what is no measurement, as PoseGraph.add_odometry."""
        seg = self._current(robot)
        stamp_ns = int(stamp_ns)
        noise.checked_pose(pose, "odometry pose")
        if covariance is not None and not noise.is_unset(covariance):
            noise.checked_covariance(covariance, 6, "odometry")
        restart = seg is None
        if seg is not None:
            last_stamp, last_pose = seg.last
            moved = float(np.linalg.norm(pose.translation() - last_pose.translation()))
            at_origin = float(np.linalg.norm(pose.translation())) <= JUMP_SLACK_M
            if stamp_ns <= last_stamp:
                if not at_origin:
                    raise ValueError(f"odometry stamp {stamp_ns} ns is not after the previous one ({last_stamp} ns)")
                restart = True
            elif moved > JUMP_SLACK_M + self.settings.max_odometry_speed_mps * (stamp_ns - last_stamp) * 1e-9:
                restart = True
            if restart and len(self.segments[robot]) >= MAX_SEGMENTS:
                raise ValueError(f"robot {robot!r} restarted {MAX_SEGMENTS} times; its odometry is refused")
        if restart:
            seg = self._start_segment(robot, stamp_ns, pose)
            made = 0
        else:
            made = self._maybe_add_node(seg, stamp_ns, pose, covariance)
        seg.last = (stamp_ns, pose)
        seg.history.append(stamp_ns, pose)
        self._retry_pending()
        return made

    def _start_segment(self, robot: str, stamp_ns: int, pose: gtsam.Pose3) -> Segment:
        segs = self.segments[robot]
        anchored = robot == self.robots[0] and not segs  # the map frame is the first robot's first odom frame
        seg = Segment(robot, KEY_CHARS[self.robots.index(robot)], len(segs), anchored)
        gauge = gtsam.PriorFactorPose3(seg.key(0), pose, gtsam.noiseModel.Diagonal.Sigmas(GAUGE_SIGMAS))
        graph, values = gtsam.NonlinearFactorGraph(), gtsam.Values()
        graph.add(gauge)
        values.insert(seg.key(0), pose)
        self._commit(graph, values, iterations=0, gauge=(seg, gauge))  # GraphError: nothing recorded
        segs.append(seg)
        seg.node_stamps.append(stamp_ns)
        seg.node_odom.append(pose)
        if len(segs) > 1:
            self.counts[f"{robot}.restarts"] += 1
            self.counts["robot_restarts"] += 1
        return seg

    def _maybe_add_node(self, seg: Segment, stamp_ns: int, pose: gtsam.Pose3, covariance) -> int | None:
        s = self.settings
        i = len(seg.node_stamps)
        step = seg.node_odom[-1].between(pose)
        if not is_keyframe_step(s, step):
            return None
        cov = noise.odometry_covariance(step, pose.rotation(), covariance, s.odometry)
        graph, values = gtsam.NonlinearFactorGraph(), gtsam.Values()
        graph.add(gtsam.BetweenFactorPose3(seg.key(i - 1), seg.key(i), step, noise.gaussian(cov)))
        values.insert(seg.key(i), self.isam.calculateEstimatePose3(seg.key(i - 1)).compose(step))
        self._commit(graph, values, iterations=0)
        seg.node_stamps.append(stamp_ns)
        seg.node_odom.append(pose)
        self.edges.append(Edge(seg.key(i - 1), seg.key(i), step, cov, "odometry"))
        return i

    # -- where a stamp falls ----------------------------------------------------------------------------------
    def locate(self, robot: str, stamp_ns: int):
        """(segment, node index, offset) of `robot`'s pose at `stamp_ns` (newest segment first, for stamps that
        restarts made ambiguous); None when no odometry of it lies within stamp_tolerance_s."""
        tolerance = int(self.settings.stamp_tolerance_s * 1e9)
        for seg in reversed(self.segments[robot]):
            at = seg.history.nearest(stamp_ns, tolerance)
            if at is None:
                continue
            stamps = seg.node_stamps
            j = int(np.searchsorted(stamps, stamp_ns))
            i = min((k for k in (j - 1, j) if 0 <= k < len(stamps)), key=lambda k: abs(stamps[k] - stamp_ns))
            return seg, i, seg.node_odom[i].between(at)
        return None

    def _waits(self, robot: str, stamp_ns: int) -> bool:
        seg = self._current(robot)
        return seg is None or stamp_ns > seg.history.last_stamp

    # -- closures ---------------------------------------------------------------------------------------------
    def add_closure(self, query_robot: str, query_stamp_ns: int, keyframe_robot: str, keyframe_stamp_ns: int,
                    relative_pose: gtsam.Pose3, covariance, kind: int) -> str:
        """A loop-closure candidate: `query_robot`'s camera at `query_stamp_ns` seen from the keyframe camera of
        `keyframe_robot` (the same robot for a session closure, another for a peer keyframe) at
        `keyframe_stamp_ns`: p_k = T p_q, with its ROS-ordered covariance and RELATIVE_POSE_* kind. Waits
        (pending) while either stamp is newer than its robot's odometry. Returns a Verdict or UNANCHORED;
        ValueError (nothing recorded) for an unknown robot or what is no measurement."""
        self._current(query_robot), self._current(keyframe_robot)  # unknown robots raise
        noise.checked_pose(relative_pose, "relative pose")
        if int(kind) not in (KIND_NONE, KIND_DIRECTION, KIND_METRIC):
            raise ValueError(f"relative_pose_kind {kind}: expected 0 (none), 1 (direction) or 2 (metric)")
        if not noise.is_unset(covariance):
            noise.checked_covariance(covariance, 6, "relative pose")
        q_ns, k_ns, inter = int(query_stamp_ns), int(keyframe_stamp_ns), query_robot != keyframe_robot
        if self._waits(query_robot, q_ns) or self._waits(keyframe_robot, k_ns):
            return self._defer(query_robot, q_ns, keyframe_robot, k_ns, inter, lambda: self.add_closure(
                query_robot, q_ns, keyframe_robot, k_ns, relative_pose, covariance, kind))
        query, keyframe = self.locate(query_robot, q_ns), self.locate(keyframe_robot, k_ns)
        if query is None or keyframe is None:
            self._count(inter, accepted=False)
            return Verdict.NO_POSE
        (sa, a, d_a), (sb, b, d_b) = query, keyframe
        if sa is sb and a == b:
            return Verdict.SAME_NODE
        measured, cov = closure_between(self.settings, relative_pose, covariance, int(kind), d_a, d_b)
        if sa is sb or (sa.anchored and sb.anchored):  # one frame: gate, then a robust factor
            if not gate_between(self.isam, sb.key(b), sa.key(a), measured, cov, self.settings.gate_probability):
                self._count(inter, accepted=False)
                return Verdict.REJECTED
            graph = gtsam.NonlinearFactorGraph()
            graph.add(self._closure_factor(sb.key(b), sa.key(a), measured, cov))
            self._commit(graph, gtsam.Values(), iterations=self.settings.relinearize_iterations)
            self.edges.append(Edge(sb.key(b), sa.key(a), measured, cov, "closure"))
            self._count(inter, accepted=True)
            return Verdict.ACCEPTED
        if len(self._links) >= MAX_UNALIGNED:
            dropped = self._links.pop(0)
            self._count(dropped.inter_robot, accepted=False)
            self.counts["links_dropped"] += 1
        link = Link(sb, b, sa, a, measured, cov, inter)
        self._links.append(link)
        self._anchor_linked()
        return UNANCHORED if any(x is link for x in self._links) else Verdict.ACCEPTED

    def _closure_factor(self, key_from, key_to, measured, cov):
        s = self.settings
        return gtsam.BetweenFactorPose3(key_from, key_to, measured, noise.robust(s.robust_kernel, s.robust_k, cov))

    def _count(self, inter: bool, accepted: bool):
        if inter:
            self.inter_robot_accepted += accepted
            self.inter_robot_rejected += not accepted
        else:
            self.closures_accepted += accepted
            self.closures_rejected += not accepted

    # -- pending closures -------------------------------------------------------------------------------------
    def _defer(self, query_robot, q_ns, keyframe_robot, k_ns, inter, retry) -> str:
        """Hold a closure until both robots' odometry passes its stamps: at most pending_timeout_s (steady clock)
        and max_pending per querying robot (its oldest dropped), so one robot's flood never evicts another's."""
        self._expire_pending()
        mine = [p for p in self._pending if p[1] == query_robot]
        if len(mine) >= self.settings.max_pending:
            self._pending.remove(mine[0])
            self._count(mine[0][6], accepted=False)
            self.counts["pending_dropped"] += 1
        self._pending.append((time.monotonic() + self.settings.pending_timeout_s, query_robot, q_ns, keyframe_robot,
                              k_ns, retry, inter))
        return Verdict.PENDING

    def _expire_pending(self):
        now = time.monotonic()
        expired = [p for p in self._pending if p[0] < now]
        if expired:
            self._pending = [p for p in self._pending if p[0] >= now]
            for p in expired:
                self._count(p[6], accepted=False)
            self.counts["pending_expired"] += len(expired)

    def _retry_pending(self):
        self._expire_pending()
        ready = [p for p in self._pending if not self._waits(p[1], p[2]) and not self._waits(p[3], p[4])]
        if not ready:
            return
        self._pending = [p for p in self._pending if not any(p is r for r in ready)]
        for p in ready:
            try:
                p[5]()
            except (ValueError, RuntimeError) as e:  # the odometry that triggered it is recorded all the same
                self._count(p[6], accepted=False)
                self.counts["pending_failed"] += 1
                self.last_error = f"pending closure: {e}"

    # -- anchoring --------------------------------------------------------------------------------------------
    def _anchor_linked(self):
        """Anchor every floating segment whose links to the map frame agree (anchoring one may let another)."""
        progress = True
        while progress:
            progress = False
            floating = {id(seg): seg for lk in self._links for seg in (lk.frm, lk.to) if not seg.anchored}
            for seg in floating.values():
                if self._try_anchor(seg):
                    progress = True

    def _try_anchor(self, seg: Segment) -> bool:
        """Fit the rigid x-y-yaw transform that takes `seg`'s estimate onto the places its links to anchored
        segments put it (evo's Umeyama, refitted on the links within align_inlier_sigmas); with enough agreeing
        links spread far enough, move the segment into the map frame and rebuild iSAM2."""
        from evo.core.geometry import umeyama_alignment

        s = self.settings
        links = [lk for lk in self._links if (lk.to is seg and lk.frm.anchored) or (lk.frm is seg and lk.to.anchored)]
        if len(links) < s.align_min_factors:
            return False
        est = self.estimate
        own, targets, sigmas = [], [], []
        for lk in links:
            if lk.to is seg:  # X_seg(j) = X_anchored(i) * measured
                target = est.atPose3(lk.frm.key(lk.i)).compose(lk.measured)
                own.append(est.atPose3(seg.key(lk.j)).translation())
            else:  # X_seg(i) = X_anchored(j) * measured^-1
                target = est.atPose3(lk.to.key(lk.j)).compose(lk.measured.inverse())
                own.append(est.atPose3(seg.key(lk.i)).translation())
            targets.append(target.translation())
            sigmas.append(math.sqrt(max(lk.covariance[3, 3], lk.covariance[4, 4])))
        own, targets, sigmas = np.array(own)[:, :2], np.array(targets)[:, :2], np.array(sigmas)
        keep = _consensus(own, targets, s.align_inlier_sigmas * sigmas, s.align_min_spread_m)
        for _ in range(2):  # refit on the consensus, keep what the fit explains
            if keep.sum() < s.align_min_factors or np.ptp(targets[keep], axis=0).max() < s.align_min_spread_m:
                return False
            rot, trans, _ = umeyama_alignment(own[keep].T, targets[keep].T)
            keep = np.linalg.norm(own @ rot.T + trans - targets, axis=1) <= s.align_inlier_sigmas * sigmas
        if keep.sum() < s.align_min_factors or not (np.all(np.isfinite(rot)) and np.all(np.isfinite(trans))):
            return False
        map_from_own = gtsam.Pose3(gtsam.Rot3.Yaw(math.atan2(rot[1, 0], rot[0, 0])), np.array([*trans[:2], 0.0]))
        inliers = [lk for lk, k in zip(links, keep) if k]
        self._rebuild_anchored(seg, map_from_own, inliers)
        for lk, k in zip(links, keep):
            self._count(lk.inter_robot, accepted=bool(k))
        self._links = [lk for lk in self._links if not any(lk is x for x in links)]
        self.counts[f"{seg.robot}.anchorings"] += 1
        return True

    def _rebuild_anchored(self, seg: Segment, map_from_own: gtsam.Pose3, inliers: list[Link]):
        """A new iSAM2 with `seg` moved into the map frame, its prior dropped and `inliers` as robust factors;
        it replaces the old one only once it has taken them (GraphError otherwise, nothing changed)."""
        est = self.estimate
        values = gtsam.Values()
        mine = {seg.key(i) for i in range(len(seg.node_stamps))}
        for key in est.keys():
            pose = est.atPose3(key)
            values.insert(key, map_from_own.compose(pose) if key in mine else pose)
        new = gtsam.NonlinearFactorGraph()
        for lk in inliers:
            new.add(self._closure_factor(lk.frm.key(lk.i), lk.to.key(lk.j), lk.measured, lk.covariance))
        gauges = {k: g for k, g in self._gauges.items() if k != id(seg)}
        graph = gtsam.NonlinearFactorGraph()
        for g in gauges.values():
            graph.add(g)
        graph.push_back(self._factors)
        graph.push_back(new)
        isam = gtsam.ISAM2(isam2_params(self.settings.factorization))
        try:
            _update(isam, graph, values, self.settings.relinearize_iterations)
        except RuntimeError as e:
            self.counts["update_failures"] += 1
            raise GraphError(f"anchoring {seg} in the map frame failed: {e}") from e
        self.isam, self._gauges, self._estimate = isam, gauges, None
        self._factors.push_back(new)
        seg.anchored = True
        self.edges += [Edge(lk.frm.key(lk.i), lk.to.key(lk.j), lk.measured, lk.covariance, "closure") for lk in inliers]

    # -- optimisation -----------------------------------------------------------------------------------------
    def _commit(self, graph, values, iterations: int, gauge=None):
        """Give iSAM2 the new factors and values; on a GTSAM failure rebuild it from the committed factors and
        try once more, else drop the update (GraphError) with the graph as it was."""
        start = time.perf_counter()
        update_or_recover(self, graph, values, iterations)
        if gauge is not None:
            self._gauges[id(gauge[0])] = gauge[1]
        else:
            self._factors.push_back(graph)
        self._estimate = None
        self.last_optimise_ms = (time.perf_counter() - start) * 1e3

    def _recover(self):
        """Rebuild iSAM2 (QR) from every segment prior and committed factor, seeded by a batch Levenberg-Marquardt
        optimisation from the last linearisation point."""
        self._estimate = None
        theta = self.isam.getLinearizationPoint()
        values = gtsam.Values()
        for segs in self.segments.values():
            for seg in segs:
                for i in range(len(seg.node_stamps)):
                    k = seg.key(i)
                    pose = theta.atPose3(k) if theta.exists(k) else None
                    if pose is None or not np.all(np.isfinite(pose.matrix())):
                        pose = values.atPose3(seg.key(i - 1)).compose(seg.node_odom[i - 1].between(seg.node_odom[i])) \
                            if i else seg.node_odom[0]
                    values.insert(k, pose)
        graph = gtsam.NonlinearFactorGraph()
        for g in self._gauges.values():
            graph.add(g)
        graph.push_back(self._factors)
        self.isam = rebuilt_isam(graph, values)
        self.counts["recoveries"] += 1

    def flush(self):
        """Nothing is batched in a team graph (write_g2o calls this)."""

    @property
    def estimate(self) -> gtsam.Values:
        if self._estimate is None:
            self._estimate = self.isam.calculateEstimate()
        return self._estimate

    # -- results ----------------------------------------------------------------------------------------------
    def poses(self, robot: str) -> list[tuple[int, gtsam.Pose3, bool]]:
        """`robot`'s pose nodes, segment after segment: (odometry stamp, optimised pose, in the map frame). A
        floating segment's poses are in its own odometry frame."""
        self._current(robot)
        est = self.estimate
        return [(stamp, est.atPose3(seg.key(i)), seg.anchored)
                for seg in self.segments[robot] for i, stamp in enumerate(seg.node_stamps)]

    def map_to_odom(self, robot: str) -> gtsam.Pose3 | None:
        """map -> the robot's current odometry frame, or None while its current segment is floating."""
        seg = self._current(robot)
        if seg is None or not seg.anchored:
            return None
        last = len(seg.node_stamps) - 1
        return self.isam.calculateEstimatePose3(seg.key(last)).compose(seg.node_odom[last].inverse())


def _consensus(own: np.ndarray, targets: np.ndarray, radius: np.ndarray, min_spread_m: float,
               max_pairs: int = 400) -> np.ndarray:
    """The largest set of links one rigid 2D transform explains (each within its `radius`), from the transforms that
    pairs of links at least `min_spread_m` apart define exactly (all pairs, or `max_pairs` drawn with a fixed seed):
    a wrong closure, however far off, cannot drag the fit that picks the inliers."""
    n = len(own)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if len(pairs) > max_pairs:
        pick = np.random.default_rng(0).choice(len(pairs), max_pairs, replace=False)
        pairs = [pairs[k] for k in pick]
    best = np.zeros(n, bool)
    for i, j in pairs:
        d_own, d_target = own[j] - own[i], targets[j] - targets[i]
        if np.linalg.norm(d_target) < min_spread_m or np.linalg.norm(d_own) < 1e-9:
            continue
        yaw = np.arctan2(d_target[1], d_target[0]) - np.arctan2(d_own[1], d_own[0])
        rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
        trans = targets[i] - rot @ own[i]
        inliers = np.linalg.norm(own @ rot.T + trans - targets, axis=1) <= radius
        if inliers.sum() > best.sum():
            best = inliers
    return best
