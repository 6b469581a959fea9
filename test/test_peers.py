"""Peer keyframes without DDS: the descriptor encodings, what PeerStore refuses and counts (wrong dimension or
fingerprint, NaN, its own robot, floods, two sessions claiming one robot_id), restarts, a property test of the
keyframe check, and the Localizer searching peers beside the session map."""

from dataclasses import dataclass, field
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from geoloc_ros.localization import peers as P

DIM, FINGERPRINT = 16, "f" * 64
EXPECT = P.Expectation("robot_a", "session_a", DIM, FINGERPRINT)


@dataclass
class Stamp:
    sec: int = 0
    nanosec: int = 0


@dataclass
class Vec:
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    w: float = 1.0


@dataclass
class Pose:
    position: Vec = field(default_factory=Vec)
    orientation: Vec = field(default_factory=Vec)


@dataclass
class Msg:
    """The fields of geoloc_msgs/Keyframe (PeerStore reads messages by field name)."""

    robot_id: str = "robot_b"
    session_id: str = "session_b"
    keyframe_id: int = 0
    stamp: Stamp = field(default_factory=Stamp)
    encoder_fingerprint: str = FINGERPRINT
    descriptor_encoding: int = 1
    descriptor_dim: int = DIM
    codebook_id: str = ""
    descriptor: bytes = b""
    has_odom_pose: bool = False
    odom_frame_id: str = ""
    odom_pose: Pose = field(default_factory=Pose)
    has_geotag: bool = False
    latitude: float = math.nan
    longitude: float = math.nan
    altitude: float = math.nan


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def msg(seed=0, encoding="float16", stamp_s=0, **fields) -> Msg:
    given = {"descriptor": P.encode_descriptor(unit(seed), encoding), "keyframe_id": seed,
             "descriptor_encoding": P.ENCODING_CODES[encoding], **fields}
    return Msg(stamp=Stamp(sec=stamp_s), **given)


def test_encoding_codes_are_the_message_constants():
    from geoloc_msgs.msg import Keyframe

    assert P.ENCODING_CODES == {"float32": Keyframe.DESCRIPTOR_FLOAT32, "float16": Keyframe.DESCRIPTOR_FLOAT16,
                                "pq": Keyframe.DESCRIPTOR_PQ}


@pytest.mark.parametrize("encoding, nbytes", [("float32", 4 * DIM), ("float16", 2 * DIM)])
def test_float_encodings_round_trip(encoding, nbytes):
    d = unit(1)
    data = P.encode_descriptor(d, encoding)
    assert len(data) == nbytes
    assert np.dot(P.decode_descriptor(data, encoding, DIM), d) > 0.9999
    with pytest.raises(P.PeerRefused) as e:
        P.decode_descriptor(data[:-2], encoding, DIM)
    assert e.value.kind == "size"


def test_pq_codes_round_trip_with_the_codebook_and_are_refused_without_it(tmp_path):
    x = np.stack([unit(i) for i in range(600)])
    book = P.Codebook.train(x, m=4)
    book.save(tmp_path / "encoder.pq.faiss")
    again = P.find_codebook(tmp_path / "encoder.safetensors")
    assert again is not None and again.id == book.id and again.code_size == 4
    data = P.encode_descriptor(x[0], "pq", book)
    assert len(data) == 4 and np.dot(P.decode_descriptor(data, "pq", DIM, again), x[0]) > 0.5
    store = P.PeerStore(EXPECT, 10)
    assert store.offer(Msg(descriptor=data, descriptor_encoding=2, codebook_id=book.id)) is None
    assert store.counts["refused_codebook"] == 1
    with_book = P.PeerStore(P.Expectation("robot_a", "session_a", DIM, FINGERPRINT, book), 10)
    assert with_book.offer(Msg(descriptor=data, descriptor_encoding=2, codebook_id=book.id)) is not None
    assert with_book.offer(Msg(descriptor=data, descriptor_encoding=2, codebook_id="other", keyframe_id=1)) is None


@pytest.mark.parametrize("bad, kind", [
    ({"robot_id": "robot_a"}, "own"), ({"session_id": "session_a", "robot_id": "x"}, "own"),
    ({"robot_id": ""}, "robot_id"), ({"session_id": ""}, "session_id"),
    ({"encoder_fingerprint": "0" * 64}, "fingerprint"), ({"descriptor_dim": DIM * 2}, "dimension"),
    ({"descriptor_encoding": 9}, "encoding"), ({"descriptor": b"\x00" * 5}, "size"),
    ({"descriptor": np.full(DIM, np.nan, "<f2").tobytes()}, "not_finite"),
    ({"descriptor": bytes(2 * DIM)}, "not_finite"),
    ({"has_odom_pose": True, "odom_pose": Pose(Vec(x=math.inf))}, "not_finite"),
    ({"has_geotag": True, "latitude": 91.0, "longitude": 0.0}, "geotag")])
def test_bad_keyframes_are_refused_and_counted(bad, kind):
    store = P.PeerStore(EXPECT, 10)
    assert store.offer(msg(**bad)) is None
    assert store.counts[f"refused_{kind}"] == 1 and len(store) == 0
    assert store.diagnostics()["peer_refused"] == 1


def test_a_flood_keeps_the_newest_keyframes_and_counts_the_dropped():
    store = P.PeerStore(EXPECT, 20)
    for i in range(50):
        assert store.offer(msg(i, stamp_s=i)) is not None
    assert len(store) == 20 and store.diagnostics()["peer_dropped"] == 30
    assert store.keyframe("robot_b", "session_b", 29) is None and store.keyframe("robot_b", "session_b", 30)
    found = store.search(unit(45)[None, :], 3)[0]
    assert found[0].keyframe.id == 45 and found[0].similarity > 0.999
    old = store.search(unit(3)[None, :], 20)[0]
    assert all(c.keyframe.id >= 30 for c in old)
    assert store.offer(msg(45, stamp_s=45)) is None  # again: a re-subscription's transient-local history
    assert store.diagnostics()["peer_duplicates"] == 1 and store.diagnostics()["peer_refused"] == 0


def test_a_restarted_peer_keeps_both_sessions_and_two_live_sessions_are_a_conflict():
    store = P.PeerStore(EXPECT, 100)
    for i in range(3):
        store.offer(msg(i, stamp_s=i, session_id="old"))
    for i in range(3):  # the restart: new ids from 0 again, stamped later
        store.offer(msg(10 + i, stamp_s=10 + i, session_id="new", keyframe_id=i))
    assert len(store) == 6 and store.counts["conflicts"] == 0
    assert store.keyframe("robot_b", "old", 1) and store.keyframe("robot_b", "new", 1)
    assert store.offer(msg(20, stamp_s=20, session_id="old", keyframe_id=3)) is None  # old session alive again
    assert store.counts["refused_conflict"] == 1 and store.diagnostics()["peer_conflicting_robot_ids"] == "robot_b"
    assert store.offer(msg(21, stamp_s=21, session_id="new", keyframe_id=3)) is not None  # the newer one is kept


def test_a_topic_carries_one_robot():
    store = P.PeerStore(EXPECT, 10)
    assert store.offer(msg(0), "/b/keyframes") is not None
    assert store.offer(msg(1, robot_id="robot_c"), "/b/keyframes") is None
    assert store.counts["refused_other_robot_on_topic"] == 1 and store.topic_of("robot_b") == "/b/keyframes"


def test_peer_candidates_are_placed_only_from_a_geotag():
    from geoloc_ros.geodesy import MapFrame

    store = P.PeerStore(EXPECT, 10)
    store.offer(msg(0, has_geotag=True, latitude=45.0, longitude=7.0, altitude=math.nan))
    store.offer(msg(1, has_odom_pose=True, odom_pose=Pose(Vec(x=3.0))))
    frame = MapFrame.at(45.0, 7.0)
    placed = {c.keyframe.id: c for c in store.search(np.stack([unit(0), unit(1)]), 1, frame)[0] +
              store.search(np.stack([unit(0), unit(1)]), 1, frame)[1]}
    assert placed[0].keyframe.has_position and abs(placed[0].keyframe.x) < 1e-6
    assert not placed[1].keyframe.has_position and placed[1].keyframe.odom_pose[0] == 3.0
    c = placed[0]
    assert (c.source, c.robot_id, c.map_id, c.map_name) == ("peer", "robot_b", "peer:robot_b", "robot_b")


text = st.text(max_size=8)
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(robot_id=st.sampled_from(["robot_b", "robot_a", "", "x"]) | text,
       session_id=st.sampled_from(["s1", "session_a", ""]) | text,
       keyframe_id=st.integers(-5, 2**64 + 5), sec=st.integers(-2**40, 2**40), nanosec=number,
       fingerprint=st.sampled_from([FINGERPRINT, "", "g" * 64]), encoding=st.integers(-3, 300),
       dim=st.sampled_from([DIM, 0, DIM + 1, -1, 2**40]), codebook_id=text,
       descriptor=st.one_of(st.binary(max_size=80), st.lists(st.floats(width=16), min_size=DIM, max_size=DIM).map(
           lambda v: np.asarray(v, "<f2").tobytes())),
       has_odom_pose=st.booleans(), pose=st.lists(number, min_size=7, max_size=7), has_geotag=st.booleans(),
       geotag=st.lists(number, min_size=3, max_size=3))
def test_any_keyframe_message_is_kept_whole_or_refused_and_counted(robot_id, session_id, keyframe_id, sec, nanosec,
                                                                   fingerprint, encoding, dim, codebook_id,
                                                                   descriptor, has_odom_pose, pose, has_geotag,
                                                                   geotag):
    store = P.PeerStore(EXPECT, 4)
    m = Msg(robot_id, session_id, keyframe_id, Stamp(sec, nanosec), fingerprint, encoding, dim, codebook_id,
            descriptor, has_odom_pose, "odom", Pose(Vec(*pose[:3]), Vec(*pose[3:])), has_geotag, *geotag)
    kept = store.offer(m)
    assert sum(store.counts.values()) == 1
    if kept is None:
        assert len(store) == 0
        return
    assert kept.robot_id not in ("robot_a", "") and kept.session_id not in ("session_a", "")
    found = store.search(np.eye(DIM, dtype=np.float32)[:1], 1)[0]
    assert len(found) == 1 and math.isfinite(found[0].similarity)
    assert kept.odom_pose is None or all(math.isfinite(v) for v in kept.odom_pose)
    assert not kept.has_geotag or (abs(kept.lat) <= 90 and abs(kept.lon) <= 180)


def test_the_localizer_searches_peers_beside_its_session_map(shared_data):
    """A frame showing a peer's keyframe: a peer candidate (source peer, the owner's robot_id and stamp), and a
    loop closure once consistency_k frames agree; the peer's keyframes are outside the session exclusion."""
    from geoloc_ros.datasets import read_image
    from geoloc_ros.localization import Frame, Localizer, SessionMap, Snapshot
    from geoloc_ros.localization.config import LocalizerConfig
    from geoloc_ros.model.testing import tiny_encoder

    enc = tiny_encoder()
    images = [read_image(p) for p in sorted((shared_data / "toy_streets" / "database").glob("*"))[:3]]
    config = LocalizerConfig(consistency_k=2, peer_consistency_k=2, peer_loop_margin=0.0,
                             loop_closure_min_confidence=0.0, top_k=3)
    store = P.PeerStore(P.Expectation("robot_a", "session_a", enc.dim, enc.fingerprint), 100)
    for i, d in enumerate(enc.encode(images)):
        m = Msg(robot_id="robot_b", keyframe_id=i, stamp=Stamp(sec=100 + i), encoder_fingerprint=enc.fingerprint,
                descriptor_dim=enc.dim, descriptor_encoding=1, descriptor=P.encode_descriptor(d, "float16"))
        assert store.offer(m) is not None
    loc = Localizer(Snapshot(enc, (), config, ""), SessionMap(enc), None, store)
    t0 = 1_700_000_000 * 10**9
    frames = [Frame("cam", "cam", t0 + i * 10**9, "camera", images[1]) for i in range(2)]
    results = [loc.process([f])[0] for f in frames]
    best = results[0].candidates[0]
    assert (best.source, best.robot_id, best.map_id, best.keyframe.id, best.keyframe.stamp_ns) == \
        ("peer", "robot_b", "peer:robot_b", 1, 101 * 10**9)
    assert best.similarity > 0.99
    assert not results[0].closures and results[1].closures[0].robot_id == "robot_b"
    assert results[1].descriptor is not None and results[0].session_keyframe is not None


def test_the_features_service_sits_beside_the_keyframe_topic():
    from geoloc_ros.node.peer_exchange import features_service_of, robot_id_of

    assert features_service_of("/robot_b/geoloc_vpr/keyframes") == "/robot_b/geoloc_vpr/keyframe_features"
    assert features_service_of("/relay/robot_b") == "/relay/robot_b/keyframe_features"
    assert (robot_id_of("", "/robot_b"), robot_id_of("", "/"), robot_id_of("r2", "/x")) == ("robot_b", "robot", "r2")


def test_a_features_answer_is_read_whole_or_refused():
    """What a peer's KeyframeFeatures answer must hold: counts that fit together, finite keypoints, a known
    detector; found false is no features, not an error."""
    from geoloc_msgs.srv import KeyframeFeatures
    from geoloc_ros.geometry import PinholeCamera
    from geoloc_ros.node.peer_exchange import _floats, features_from_answer

    kp = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
    ok = KeyframeFeatures.Response(found=True, detector="orb", count=3, descriptor_dim=32, keypoints=_floats(kp),
                                   descriptors=bytes(96))
    PinholeCamera(500.0, 500.0, 320.0, 240.0, 640, 480).to_camera_info(ok.camera)
    features, camera = features_from_answer(ok)
    assert np.array_equal(features.keypoints, kp) and features.detector == "orb" and camera.fx == 500.0
    assert features_from_answer(KeyframeFeatures.Response(found=False)) is None
    for bad in ({"count": 4}, {"descriptors": bytes(95)}, {"keypoints": _floats(np.full((3, 2), np.nan))},
                {"detector": "bogus"}, {"depth": [1.0]}, {"count": 0}):
        answer = KeyframeFeatures.Response(**{**{"found": True, "detector": "orb", "count": 3, "descriptor_dim": 32,
                                                 "keypoints": _floats(kp), "descriptors": bytes(96)}, **bad})
        with pytest.raises(ValueError):
            features_from_answer(answer)
