"""Keyframes of other robots (peers), searched like maps of their own, one per robot.

A peer's vpr_node publishes its session keyframes (geoloc_msgs/Keyframe: the descriptor, compressed, with its
owner, session, stamp, odometry pose and geotag). `PeerStore.offer` checks each one (`peer_keyframe`) and keeps it
in the owner's `PeerMap`; `PeerStore.search` gives the Localizer candidates with source "peer". Nothing here
imports ROS: a message is read through its field names, so a test can hand in any object that has them.

Refused keyframes are counted by reason (REFUSALS) and never raise out of `offer`: a broken or hostile peer costs
this robot nothing but the counters. Memory is bounded per robot (`capacity` keyframes, oldest dropped and
counted), per topic (one robot per topic) and per robot in sessions (MAX_SESSIONS)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
import hashlib
import math
from pathlib import Path
import threading

import numpy as np

from geoloc_ros.localization.frames import Candidate
from geoloc_ros.mapping import Keyframe

# Keyframe.descriptor_encoding values (the constants of geoloc_msgs/msg/Keyframe.msg, test_peers.py checks them)
ENCODING_CODES = {"float32": 0, "float16": 1, "pq": 2}
ENCODINGS = tuple(ENCODING_CODES)
PEER_MAP_PREFIX = "peer:"  # map_id of a peer's keyframes: "peer:<robot_id>"
MAX_SESSIONS = 8  # sessions remembered per robot (a restart starts one); older ones are forgotten, not searched
# Why a peer keyframe was refused (the /diagnostics counters peer_refused_<reason>); a keyframe held already is
# counted apart (peer_duplicates)
REFUSALS = ("own", "robot_id", "session_id", "fingerprint", "dimension", "encoding", "codebook", "size",
            "not_finite", "geotag", "conflict", "other_robot_on_topic", "malformed")
CODEBOOK_SUFFIX = ".pq.faiss"  # the PQ codebook beside its encoder: <encoder stem>.pq.faiss


class PeerRefused(ValueError):
    """Why a peer keyframe is not kept: `kind` (one of REFUSALS) and the reason in words."""

    def __init__(self, kind: str, text: str):
        super().__init__(text)
        self.kind = kind


@dataclass
class PeerKeyframe(Keyframe):
    """A peer's keyframe as a map keyframe (the Localizer treats it like any other), with its owner and session."""

    robot_id: str = ""
    session_id: str = ""
    odom_pose: tuple | None = None  # (x, y, z, qx, qy, qz, qw) in the owner's odometry frame, when it had odometry
    odom_frame_id: str = ""


# -- descriptor encodings ------------------------------------------------------------------------------------------
class Codebook:
    """A product-quantisation codebook (faiss.ProductQuantizer) for DESCRIPTOR_PQ: `id` names it in messages (a
    hash of its centroids, so two robots with the same file agree, and a changed file gets a new id)."""

    def __init__(self, pq):
        self.pq = pq
        self.dim, self.code_size = int(pq.d), int(pq.code_size)
        import faiss

        centroids = faiss.vector_to_array(pq.centroids).astype(np.float32)
        self.id = hashlib.sha256(centroids.tobytes() + f"{pq.M}x{pq.nbits}".encode()).hexdigest()[:16]

    @classmethod
    def train(cls, descriptors, m: int, nbits: int = 8) -> Codebook:
        import faiss

        x = np.ascontiguousarray(descriptors, dtype=np.float32)
        pq = faiss.ProductQuantizer(x.shape[1], m, nbits)
        pq.train(x)
        return cls(pq)

    @classmethod
    def load(cls, path) -> Codebook:
        import faiss

        return cls(faiss.read_ProductQuantizer(str(path)))

    def save(self, path) -> None:
        import faiss

        faiss.write_ProductQuantizer(self.pq, str(path))

    def encode(self, x: np.ndarray) -> np.ndarray:
        return self.pq.compute_codes(np.ascontiguousarray(x, dtype=np.float32).reshape(-1, self.dim))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.pq.decode(np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, self.code_size))


def codebook_path(encoder_file) -> Path:
    """Where the PQ codebook of an encoder checkpoint lives: beside it (encoder.safetensors -> encoder.pq.faiss)."""
    p = Path(encoder_file)
    if p.is_dir():
        p = p / "encoder.safetensors"
    return p.with_name(p.stem + CODEBOOK_SUFFIX)


def find_codebook(encoder_file) -> Codebook | None:
    """The PQ codebook shipped beside `encoder_file`, or None when there is none."""
    path = codebook_path(encoder_file) if encoder_file else None
    return Codebook.load(path) if path is not None and path.is_file() else None


def encode_descriptor(desc: np.ndarray, encoding: str, codebook: Codebook | None = None) -> bytes:
    """The bytes of Keyframe.descriptor for an L2-normalised descriptor."""
    d = np.asarray(desc, dtype=np.float32).reshape(-1)
    if encoding == "float32":
        return d.astype("<f4").tobytes()
    if encoding == "float16":
        return d.astype("<f2").tobytes()
    if encoding == "pq":
        if codebook is None:
            raise ValueError("peer_descriptor_encoding pq needs a PQ codebook beside the encoder")
        return codebook.encode(d[None, :]).tobytes()
    raise ValueError(f"unknown descriptor encoding {encoding!r} (one of {', '.join(ENCODINGS)})")


def decode_descriptor(data, encoding: str, dim: int, codebook: Codebook | None = None) -> np.ndarray:
    """The float32 descriptor of Keyframe.descriptor bytes, L2-normalised; PeerRefused when they cannot be one."""
    raw = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
    if encoding in ("float32", "float16"):
        width = 4 if encoding == "float32" else 2
        if len(raw) != dim * width:
            raise PeerRefused("size", f"{len(raw)} descriptor bytes for {dim} {encoding} values")
        d = np.frombuffer(raw, dtype="<f4" if width == 4 else "<f2").astype(np.float32)
    elif encoding == "pq":
        if codebook is None:
            raise PeerRefused("codebook", "a PQ descriptor, but this robot has no PQ codebook")
        if len(raw) != codebook.code_size:
            raise PeerRefused("size", f"{len(raw)} PQ code bytes, the codebook's codes are {codebook.code_size}")
        d = codebook.decode(np.frombuffer(raw, dtype=np.uint8))[0]
    else:
        raise PeerRefused("encoding", f"unknown descriptor encoding {encoding!r}")
    if not np.isfinite(d).all():
        raise PeerRefused("not_finite", "the descriptor has non-finite values")
    norm = float(np.linalg.norm(d))
    if not norm > 1e-6:
        raise PeerRefused("not_finite", "the descriptor is zero")
    return d / norm


# -- one message ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expectation:
    """What this robot accepts: its own identity (never matched) and its encoder's dimension and fingerprint."""

    robot_id: str
    session_id: str
    dim: int
    fingerprint: str
    codebook: Codebook | None = None


def peer_keyframe(msg, expect: Expectation) -> tuple[PeerKeyframe, np.ndarray]:
    """(PeerKeyframe, its L2-normalised float32 descriptor) of a geoloc_msgs/Keyframe (read by field names);
    PeerRefused with the reason when this robot must not use it."""
    robot, session = str(msg.robot_id), str(msg.session_id)
    if not robot:
        raise PeerRefused("robot_id", "the keyframe names no robot")
    if robot == expect.robot_id or session == expect.session_id:
        raise PeerRefused("own", f"robot_id {robot!r} is this robot's own")
    if not session:
        raise PeerRefused("session_id", "the keyframe names no session")
    if str(msg.encoder_fingerprint) != expect.fingerprint:
        raise PeerRefused("fingerprint", f"encoder fingerprint {str(msg.encoder_fingerprint)[:12]!r}... is not this "
                                         f"robot's {expect.fingerprint[:12]}... (descriptors cannot be compared)")
    if int(msg.descriptor_dim) != expect.dim:
        raise PeerRefused("dimension", f"descriptor_dim {int(msg.descriptor_dim)}, this robot's encoder gives "
                                       f"{expect.dim}")
    encoding = next((name for name, code in ENCODING_CODES.items() if code == int(msg.descriptor_encoding)), None)
    if encoding is None:
        raise PeerRefused("encoding", f"unknown descriptor_encoding {int(msg.descriptor_encoding)}")
    if encoding == "pq" and (expect.codebook is None or str(msg.codebook_id) != expect.codebook.id):
        raise PeerRefused("codebook", f"PQ codebook {str(msg.codebook_id)!r} is not one this robot holds")
    desc = decode_descriptor(msg.descriptor, encoding, expect.dim, expect.codebook)
    kf = PeerKeyframe(id=int(msg.keyframe_id), label=f"{robot}/{session}#{int(msg.keyframe_id)}",
                      stamp_ns=int(msg.stamp.sec) * 10**9 + int(msg.stamp.nanosec), source="peer",
                      robot_id=robot, session_id=session)
    if msg.has_odom_pose:
        p, o = msg.odom_pose.position, msg.odom_pose.orientation
        pose = tuple(float(v) for v in (p.x, p.y, p.z, o.x, o.y, o.z, o.w))
        if not all(math.isfinite(v) for v in pose):
            raise PeerRefused("not_finite", "the odometry pose has non-finite values")
        kf.odom_pose, kf.odom_frame_id = pose, str(msg.odom_frame_id)
    if msg.has_geotag:
        lat, lon, alt = float(msg.latitude), float(msg.longitude), float(msg.altitude)
        if not (math.isfinite(lat) and math.isfinite(lon)) or math.isinf(alt):
            raise PeerRefused("not_finite", "the geotag has non-finite values")
        if abs(lat) > 90.0 or abs(lon) > 180.0:
            raise PeerRefused("geotag", f"geotag {lat}, {lon} is outside WGS84")
        kf.lat, kf.lon, kf.alt = lat, lon, alt
    return kf, desc


# -- one robot's keyframes -----------------------------------------------------------------------------------------
class PeerMap:
    """One peer robot's keyframes, at most `capacity` (the oldest dropped first), searched by inner product.

    Sessions: a restarted peer (a new session_id) keeps its earlier session's keyframes searchable under their own
    session, until they age out. Two sessions alive at once are two robots claiming one robot_id: a keyframe of an
    older session stamped after a newer session began is refused as a conflict (the newer session is kept)."""

    def __init__(self, robot_id: str, dim: int, capacity: int):
        self.robot_id, self.map_id, self.capacity = robot_id, PEER_MAP_PREFIX + robot_id, int(capacity)
        self._desc = np.zeros((min(self.capacity, 64), dim), dtype=np.float32)
        self._keyframes: list[PeerKeyframe | None] = [None] * len(self._desc)
        self._xy = np.full((len(self._desc), 2), np.nan)  # odometry x, y per row (NaN: none), for `elsewhere`
        self._session_of = np.zeros(len(self._desc), dtype=np.int64)  # per row, its session's number in _sessions
        self._ids = np.zeros(len(self._desc), dtype=np.int64)
        self._sessions: dict[str, int] = {}
        self._slot: dict[tuple, int] = {}  # (session_id, keyframe_id) -> row
        self.added = 0  # keyframes ever kept; the next one goes to row added % capacity
        self.dropped = 0
        self.sessions: dict[str, list] = {}  # session_id -> [first stamp, last stamp] of its keyframes

    def __len__(self):
        return min(self.added, self.capacity)

    def add(self, kf: PeerKeyframe, desc: np.ndarray) -> bool:
        """Keep `kf`; True when it began a session while an older one of this robot still sent keyframes (a
        conflict, counted; the newer session is kept). PeerRefused when it is a duplicate or a conflict's loser."""
        key = (kf.session_id, int(kf.id))
        if key in self._slot:
            raise PeerRefused("duplicate", f"keyframe {kf.label} is held already")
        conflict = self._check_session(kf)
        if self.added < self.capacity and self.added == len(self._desc):  # grow, up to capacity
            size = min(self.capacity, 2 * len(self._desc))
            grow = size - len(self._desc)
            self._desc = np.vstack([self._desc, np.zeros((grow, self._desc.shape[1]), np.float32)])
            self._xy = np.vstack([self._xy, np.full((grow, 2), np.nan)])
            self._session_of = np.concatenate([self._session_of, np.zeros(grow, dtype=np.int64)])
            self._ids = np.concatenate([self._ids, np.zeros(grow, dtype=np.int64)])
            self._keyframes.extend([None] * (size - len(self._keyframes)))
        row = self.added % self.capacity
        old = self._keyframes[row]
        if old is not None:
            del self._slot[(old.session_id, int(old.id))]
            self.dropped += 1
        self._desc[row], self._keyframes[row], self._slot[key] = desc, kf, row
        self._xy[row] = kf.odom_pose[:2] if kf.odom_pose is not None else (np.nan, np.nan)
        self._session_of[row] = self._sessions.setdefault(kf.session_id, len(self._sessions))
        self._ids[row] = int(kf.id)
        self.added += 1
        return conflict

    def _check_session(self, kf: PeerKeyframe) -> bool:
        """Record `kf` in its session's span; True when it begins a session inside an older one's span."""
        span = self.sessions.get(kf.session_id)
        newer = [first for s, (first, _) in self.sessions.items()
                 if s != kf.session_id and span is not None and first > span[0]]
        if any(kf.stamp_ns >= first for first in newer):
            raise PeerRefused("conflict", f"robot_id {self.robot_id!r}: session {kf.session_id[:8]} sends "
                                          f"keyframes after session(s) that began later: two robots claim this id")
        if span is None:
            while len(self.sessions) >= MAX_SESSIONS:  # forget the oldest session's record
                del self.sessions[min(self.sessions, key=lambda s: self.sessions[s][0])]
            self.sessions[kf.session_id] = [kf.stamp_ns, kf.stamp_ns]
            return any(s != kf.session_id and first < kf.stamp_ns <= last
                       for s, (first, last) in self.sessions.items())
        span[1] = max(span[1], kf.stamp_ns)
        return False

    def search(self, desc: np.ndarray, k: int) -> list[list[tuple[PeerKeyframe, float]]]:
        n = len(self)
        if n == 0:
            return [[] for _ in range(len(desc))]
        sims = np.asarray(desc, dtype=np.float32) @ self._desc[:n].T
        k = min(k, n)
        out = []
        for row in sims:
            top = np.argpartition(-row, k - 1)[:k]
            top = top[np.argsort(-row[top])]
            out.append([(self._keyframes[i], float(row[i])) for i in top])
        return out

    def elsewhere(self, desc: np.ndarray, anchor: PeerKeyframe, radius_m: float, id_window: int):
        """(best similarity of `desc` to the anchor's session's keyframes at another place, standard deviation of its
        similarities to that session's keyframes), or None when the session holds no keyframe at another place.
        Another place: farther than radius_m from the anchor in the owner's odometry frame, or, where either has no
        odometry pose, ids more than id_window apart. Other sessions are left out: their odometry frame is another."""
        n, session = len(self), self._sessions.get(anchor.session_id)
        rows = np.flatnonzero(self._session_of[:n] == session) if session is not None else np.zeros(0, np.int64)
        if not len(rows):
            return None
        sims = (self._desc[:n] @ np.asarray(desc, dtype=np.float32).reshape(-1))[rows]
        xy, ids = self._xy[rows], self._ids[rows]
        if anchor.odom_pose is not None:  # rows without a pose fall back to ids, as _apart does
            dist = np.hypot(xy[:, 0] - anchor.odom_pose[0], xy[:, 1] - anchor.odom_pose[1])
            far = np.where(np.isnan(dist), np.abs(ids - int(anchor.id)) > id_window, dist > radius_m)
        else:
            far = np.abs(ids - int(anchor.id)) > id_window
        if not far.any():
            return None
        return float(sims[far].max()), float(sims.std())

    def get(self, session_id: str, keyframe_id: int) -> PeerKeyframe | None:
        row = self._slot.get((session_id, int(keyframe_id)))
        return self._keyframes[row] if row is not None else None


# -- every peer ----------------------------------------------------------------------------------------------------
class PeerStore:
    """The peers' keyframes, one PeerMap per robot; thread-safe (subscription callbacks add while the worker
    searches)."""

    def __init__(self, expect: Expectation, capacity: int):
        self.expect, self.capacity = expect, int(capacity)
        self.maps: dict[str, PeerMap] = {}
        self.counts = Counter()  # accepted, refused_<reason>
        self.conflicts: set[str] = set()  # robot ids two sessions claimed at once
        self._topic_robot: dict[str, str] = {}  # each peer topic carries one robot: the first valid one's
        self._lock = threading.Lock()

    def offer(self, msg, topic: str = "") -> PeerKeyframe | None:
        """Check and keep one Keyframe message; the kept PeerKeyframe, or None (counted) when refused. Never raises:
        a peer's message cannot take this robot down."""
        try:
            kf, desc = peer_keyframe(msg, self.expect)
            with self._lock:
                bound = self._topic_robot.setdefault(topic, kf.robot_id)
                if bound != kf.robot_id:
                    raise PeerRefused("other_robot_on_topic", f"{topic} carries robot {bound!r}, not {kf.robot_id!r}")
                peer = self.maps.get(kf.robot_id)
                if peer is None:
                    peer = self.maps[kf.robot_id] = PeerMap(kf.robot_id, self.expect.dim, self.capacity)
                if peer.add(kf, desc):
                    self.counts["conflicts"] += 1
                    self.conflicts.add(kf.robot_id)
                self.counts["accepted"] += 1
            return kf
        except PeerRefused as e:
            with self._lock:  # a duplicate is no fault: a re-subscription receives the transient-local history again
                self.counts["duplicates" if e.kind == "duplicate" else f"refused_{e.kind}"] += 1
                if e.kind == "conflict":
                    self.counts["conflicts"] += 1
                    self.conflicts.add(str(getattr(msg, "robot_id", "")))
            return None
        except Exception:  # noqa: BLE001 - any field of any type: a peer's message is never fatal
            with self._lock:
                self.counts["refused_malformed"] += 1
            return None

    def __len__(self):
        with self._lock:
            return sum(len(m) for m in self.maps.values())

    def search(self, desc, top_k: int, frame=None) -> list[list[Candidate]]:
        """Per query descriptor, at most top_k candidates of each peer (source "peer", map_id "peer:<robot>"). A
        geotagged peer keyframe is placed in `frame` (the node's map frame, geodesy.MapFrame) when there is one;
        otherwise it has no position (the owner's odometry frame is not this robot's map frame)."""
        with self._lock:
            found = [(m, m.search(desc, top_k)) for m in self.maps.values()]
        out = [[] for _ in range(len(desc))]
        for peer, per_query in found:
            for i, matches in enumerate(per_query):
                out[i].extend(Candidate(peer.map_id, peer.robot_id, _placed(kf, frame), sim, source="peer",
                                        robot_id=peer.robot_id) for kf, sim in matches)
        return out

    def elsewhere(self, desc, anchor: PeerKeyframe, radius_m: float, id_window: int):
        """PeerMap.elsewhere of the anchor's robot; None when that robot is not held."""
        with self._lock:
            peer = self.maps.get(anchor.robot_id)
            return peer.elsewhere(desc, anchor, radius_m, id_window) if peer is not None else None

    def topic_of(self, robot_id: str) -> str | None:
        """The topic `robot_id`'s keyframes arrive on (its features service is that topic's sibling)."""
        with self._lock:
            return next((t for t, r in self._topic_robot.items() if r == robot_id), None)

    def keyframe(self, robot_id: str, session_id: str, keyframe_id: int) -> PeerKeyframe | None:
        with self._lock:
            peer = self.maps.get(robot_id)
            return peer.get(session_id, keyframe_id) if peer is not None else None

    def diagnostics(self) -> dict:
        """/diagnostics values: keyframes held per robot, accepted, refused by reason, dropped (oldest beyond
        peer_max_keyframes), conflicts (robot ids two sessions claimed at once)."""
        with self._lock:
            counts, maps = Counter(self.counts), dict(self.maps)
            conflicts = sorted(self.conflicts)
        return {"peer_robots": ", ".join(f"{r} ({len(m)})" for r, m in sorted(maps.items())) or "none",
                "peer_keyframes": sum(len(m) for m in maps.values()),
                "peer_accepted": counts["accepted"],
                "peer_refused": sum(v for k, v in counts.items() if k.startswith("refused_")),
                **{f"peer_{k}": v for k, v in sorted(counts.items()) if k.startswith("refused_")},
                "peer_dropped": sum(m.dropped for m in maps.values()),
                "peer_duplicates": counts["duplicates"],
                "peer_conflicts": counts["conflicts"],
                **({"peer_conflicting_robot_ids": ", ".join(conflicts)} if conflicts else {})}


def _placed(kf: PeerKeyframe, frame) -> PeerKeyframe:
    """`kf` with x, y, z in `frame` from its geotag (NaN without a geotag or frame: no position)."""
    if frame is None or not kf.has_geotag:
        return kf
    x, y, z = frame.to_local(kf.lat, kf.lon, kf.alt if math.isfinite(kf.alt) else 0.0)
    return replace(kf, x=float(x), y=float(y), z=float(z) if math.isfinite(kf.alt) else math.nan)
