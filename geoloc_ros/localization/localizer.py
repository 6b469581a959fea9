"""The Localizer: a batch of frames in, one FrameResult per frame out. Read `process` top to bottom: encode,
search every map (and the session map), decide loop closures (consecutive agreement or sequence matching),
verify them, fuse a pose, and add session keyframes.

A Localizer is built from one immutable Snapshot; reloading maps builds a new Localizer (handed the same
SessionMap) and the caller swaps it in whole, so one batch always searches, checks and fuses against one set of
maps. Consistency history starts afresh with each Localizer, as a reload resets it."""

from __future__ import annotations

from dataclasses import replace
import time

import numpy as np

from geoloc_ros.localization.confidence import ClosureHistory, Evidence, confidence, similarity_margin
from geoloc_ros.localization.consistency import ConsistencyFilter, PeerRun, SequenceMatcher
from geoloc_ros.localization.frames import SESSION_MAP_ID, Candidate, FrameResult, Pose
from geoloc_ros.localization.fusion import covariance6, fuse
from geoloc_ros.localization.prior import SearchPrior
from geoloc_ros.localization.revisit import RevisitTest
from geoloc_ros.localization.snapshot import reexpress
from geoloc_ros.localization.verification import Verifier
from geoloc_ros.model.fused_encoder import FusedEncoder


class Localizer:
    def __init__(self, snapshot, session=None, verifier: Verifier | None = None, peers=None):
        """`session`: a SessionMap or None; `verifier`: a Verifier, or None to publish closures unverified;
        `peers`: a peers.PeerStore (other robots' keyframes, searched like maps of their own) or None."""
        s = snapshot.config
        self.snapshot, self.session, self.verifier, self.peers = snapshot, session, verifier, peers
        self.consistency = ConsistencyFilter(s.consistency_k, s.consistency_radius_m, s.consistency_id_window)
        self.sequence = SequenceMatcher(s.sequence_window, min_margin=s.sequence_min_margin) \
            if s.consistency_mode == "sequence" else None
        self.history = ClosureHistory(self.consistency.same_place, s.odometry_tolerance_m,
                                      must_advance=self.sequence is not None)
        self.revisits = RevisitTest(self.consistency.same_place, s.session_loop_margin, s.session_loop_support)
        self.peer_run = PeerRun(s.peer_consistency_k, s.peer_consistency_tolerance_m, s.consistency_id_window)
        self.peer_refused = {"run": 0, "margin": 0}  # peer closures not published, by the test that refused them
        self.prior = SearchPrior(s.search_prior, s.search_prior_radius_floor_m)

    @property
    def config(self):
        """The LocalizerConfig of this localizer's snapshot."""
        return self.snapshot.config

    def process(self, frames) -> list[FrameResult]:
        if not frames:
            return []
        t0 = time.perf_counter()
        encoder = self.snapshot.encoder
        if isinstance(encoder, FusedEncoder):  # a frame's scene description, when it has one, is fused in
            desc = encoder.encode([f.rgb for f in frames], texts=[f.description for f in frames])
        else:
            desc = encoder.encode([f.rgb for f in frames])
        t1 = time.perf_counter()
        if self.session is not None:
            for frame in frames:
                self.session.observe(frame)
        candidates, recent = self._search(desc, frames)
        t2 = time.perf_counter()
        encode_ms, search_ms = (t1 - t0) * 1e3 / len(frames), (t2 - t1) * 1e3 / len(frames)
        results = []
        for frame, d, cands, past in zip(frames, desc, candidates, recent):
            closures, sequence_margin = self.closures(frame.camera, d, cands)
            peer_ok = self._is_peer_closure(frame, d, cands, closures)  # every frame: it keeps the run's history
            believed = self._is_revisit(frame.camera, closures, past) and peer_ok
            # a peer's keyframe features are on the peer: the node asks for them (closures of one place share a map)
            ask_peer = bool(closures) and self.verifier is not None and closures[0].source == "peer"
            if closures and believed and self.verifier is not None and not ask_peer:
                closures = self.verifier.verify(frame, closures)
            closures, evidence = self._rate(frame, cands, closures, sequence_margin)
            # the best keyframe: one request, one verified closure
            pending = closures[:1] if ask_peer and believed else []
            closures = [c for c in closures if believed and not ask_peer
                        and c.confidence >= self.config.loop_closure_min_confidence]
            pose = self.pose(closures) if closures else None
            results.append(FrameResult(frame, cands, closures, pose, encode_ms, search_ms,
                                       self._add_to_session(frame, d), evidence, d, pending))
        return results

    def rate_verified(self, evidence, closures) -> list[Candidate]:
        """Peer closures once the owner's features verified them: the confidence rated again with the anchor's
        inliers (as a verified session closure is), then the loop_closure_min_confidence threshold."""
        if not closures or evidence is None:
            return []
        anchor = closures[0]
        evidence = replace(evidence, inliers=anchor.inliers if anchor.verified else 0)
        calibration = self.snapshot.calibration
        value = confidence(evidence, "consecutive" if evidence.sequence_margin is None else "sequence",
                           calibration.coefficients if calibration is not None else None)
        return [replace(c, confidence=value) for c in closures if value >= self.config.loop_closure_min_confidence]

    # -- search ------------------------------------------------------------------------------------------------
    def search(self, desc, frames) -> list[list[Candidate]]:
        """Per frame: candidates of every map and the session map, best first, at most top_k, all at least
        min_similarity, ranked."""
        return self._search(desc, frames)[0]

    def _search(self, desc, frames):
        """search(), and per frame the session map's RecentPast (None without a session map)."""
        s = self.config
        merged = [[] for _ in frames]
        recent = [None for _ in frames]
        for m in self.snapshot.maps:
            for i, matches in enumerate(m.db.search(desc, s.top_k)):
                near = self.prior.bound(frames[i], m.db.frame, self.snapshot.primary_frame)
                if near is not None:  # candidates outside the prior's bound are not considered
                    self.prior.count(matches, near)
                    matches = m.db.search(desc[i:i + 1], s.top_k, near=near)[0]
                merged[i].extend(Candidate(m.id, m.name, x.keyframe, float(x.similarity)) for x in matches)
        if self.session is not None:
            found, recent = self.session.search(desc, frames, s.top_k, s)
            for i, cands in enumerate(found):
                merged[i].extend(cands)
        if self.peers is not None:  # no exclusion window: a peer's recent past is not this robot's
            for i, cands in enumerate(self.peers.search(desc, s.top_k, self.snapshot.primary_frame)):
                merged[i].extend(cands)
        out = []
        for cands in merged:
            kept = sorted((c for c in cands if c.similarity >= s.min_similarity), key=lambda c: -c.similarity)
            out.append(_ranked([self.snapshot.placed(c) for c in kept[: s.top_k]]))
        return out, recent

    def _is_revisit(self, camera: str, closures, past) -> bool:
        """False for a session-map closure that revisit.RevisitTest does not believe. Like the confidence
        threshold, it decides publication only: the closure's confidence is rated all the same, so agreement
        evidence stays what the confidence was fitted on."""
        if past is None:  # no session map
            return True
        anchor = closures[0] if closures and closures[0].map_id == SESSION_MAP_ID else None
        return self.revisits.check(camera, anchor, past.best, past.spread) or anchor is None

    def _is_peer_closure(self, frame, desc, cands, closures) -> bool:
        """False for a peer closure that is not the end of a run of peer matches (consistency.PeerRun) or does not
        stand out from the peer session's keyframes elsewhere by peer_loop_margin standard deviations of the
        frame's similarities to them (a session that holds no keyframe elsewhere cannot tell: refused). Decides
        publication only, like the revisit test."""
        best = cands[0] if cands and cands[0].source == "peer" else None
        run = self.peer_run.update(frame.camera, best, frame.odom)
        anchor = closures[0] if closures and closures[0].source == "peer" else None
        if anchor is None:
            return True
        if not run:
            self.peer_refused["run"] += 1
            return False
        s = self.config
        if s.peer_loop_margin <= 0 or self.peers is None:
            return True
        other = self.peers.elsewhere(desc, anchor.keyframe, s.consistency_radius_m, s.consistency_id_window)
        if other is None or anchor.similarity - other[0] < s.peer_loop_margin * max(other[1], 1e-6):
            self.peer_refused["margin"] += 1
            return False
        return True

    # -- loop closures ----------------------------------------------------------------------------------------
    def closures(self, camera: str, desc, cands) -> tuple[list[Candidate], float | None]:
        """The candidates believed as loop closures for this frame of `camera` (empty: none yet), before any
        confidence threshold, and the sequence margin (sequence mode; else None)."""
        if self.sequence is not None and self.snapshot.maps:
            return self._sequence_closures(camera, desc, cands)
        best = cands[0].key if cands else None
        if not self.consistency.update(camera, best):
            return [], None
        return [c for c in cands if self.consistency.same_place(best, c.key)], None

    def _sequence_closures(self, camera, desc, cands):
        """The end of the best-scoring run of map rows, then the frame's own candidates at its place (same map,
        within consistency_radius_m)."""
        self.sequence.push(camera, desc)
        best = None
        for m in self.snapshot.maps:
            found = self.sequence.best(camera, m.descriptors)
            if found is not None and (best is None or found[1] > best[1][1]):
                best = (m, found)
        if best is None or best[1][2] < self.sequence.min_margin:
            return [], None
        m, (row, _score, margin) = best
        kf = m.db.keyframe(int(m.row_ids[row]))
        anchor = self.snapshot.placed(Candidate(m.id, m.name, kf, float(np.dot(desc, m.descriptors[row]))))
        picked = [anchor] + [c for c in cands if c.map_id == m.id and c.keyframe.id != kf.id
                             and self.consistency.same_place(anchor.key, c.key)]
        return _ranked(picked), margin

    def _rate(self, frame, cands, closures, sequence_margin) -> tuple[list[Candidate], Evidence | None]:
        """The closures with their confidence (docs/node.md, "Loop-closure confidence") and the evidence, or None
        when the frame has no closure. Agreement and odometry are recorded before any threshold, so the confidence
        of a frame does not depend on loop_closure_min_confidence."""
        s = self.config
        anchor = closures[0] if closures else None
        agreement, odometry_ok = self.history.update(frame.camera, anchor, frame.odom)
        if anchor is None:
            return closures, None
        margin = similarity_margin(anchor, cands, self.consistency.same_place)
        evidence = Evidence(margin, agreement, sequence_margin, anchor.inliers if anchor.verified else 0,
                            s.verification_min_inliers, odometry_ok)
        # a closure of consecutive agreement (also sequence mode's fallback on the session map alone) is rated so
        calibration = self.snapshot.calibration
        value = confidence(evidence, "consecutive" if sequence_margin is None else "sequence",
                           calibration.coefficients if calibration is not None else None)
        return [replace(c, confidence=value) for c in closures], evidence

    # -- pose -------------------------------------------------------------------------------------------------
    def pose(self, closures) -> Pose | None:
        """Fuse the closures of the best one's map into a position; None when that keyframe has no position."""
        from geoloc_ros.mapping import quaternion_from_heading

        s, anchor = self.config, closures[0].map_id
        same = [c for c in closures if c.map_id == anchor]
        est = fuse([c.keyframe for c in same], [c.similarity for c in same], s.fusion_radius_m,
                   s.covariance_floor_m, s.covariance_scale, s.yaw_floor_deg)
        if est is None:
            return None
        frame = self._map_frame(anchor)
        x, y = reexpress(est.x, est.y, frame, self.snapshot.primary_frame)  # in the first geotagged map's frame
        wgs84 = tuple(float(v) for v in frame.to_wgs84(est.x, est.y, est.z)) if frame is not None else None
        return Pose(float(x), float(y), float(est.z), tuple(quaternion_from_heading(est.heading)),
                    covariance6(est), wgs84)

    def _map_frame(self, map_id: str):
        if map_id == SESSION_MAP_ID:
            return self.session.db.frame if self.session is not None else None
        entry = self.snapshot.entry(map_id)
        return entry.db.frame if entry is not None else None

    # -- session map ------------------------------------------------------------------------------------------
    def _add_to_session(self, frame, desc) -> int | None:
        if self.session is None or not self.session.wants(frame, self.config):
            return None
        kid = self.session.add(frame, desc)
        if self.verifier is not None:
            self.verifier.remember(kid, frame)
        return kid


def _ranked(cands) -> list[Candidate]:
    return [replace(c, rank=rank) for rank, c in enumerate(cands)]
