"""The Localizer without ROS: consistency, sequence of frames, the session map (spacing, exclusion window,
stamp-less frames), pose fusion, and two maps that share a name. Real Nordland frames from ../shared/data, a
small random encoder, real FAISS maps on disk. Verification: test_verification.py."""

from dataclasses import replace
import math

import numpy as np
import pytest

from geoloc_ros.datasets import read_image
from geoloc_ros.geodesy import to_utm
from geoloc_ros.localization import SESSION_MAP_ID, Frame, Localizer, SessionMap, load_snapshot
from geoloc_ros.localization.consistency import ConsistencyFilter, SequenceMatcher
from geoloc_ros.localization.fusion import UNKNOWN_VARIANCE, covariance6, fuse
from geoloc_ros.localization.session import FeatureStore
from geoloc_ros.mapping import Keyframe
from geoloc_ros.mapping.builders import add_dataset, new_map_for
from geoloc_ros.model import nordland, save_encoder
from geoloc_ros.model.testing import tiny_encoder
from geoloc_ros.node import params

T0 = 1_700_000_000 * 10**9


def settings(**overrides):
    """Defaults, except every closure is published: these tests check consistency, sequence matching and fusion
    with a small random encoder, not the confidence operating point (test_loop_closures.py does)."""
    return params.localizer_config(params.settings(**{"device": "cpu", "loop_closure_min_confidence": 0.0,
                                                       **overrides}))


@pytest.fixture(scope="module")
def nordland_maps(shared_data, tmp_path_factory):
    """Two maps both named `map`, at /siteA/map and /siteB/map: the same kind of frames, geotagged ~1,100 km
    apart (B's records moved 10 degrees north), and the images of site B's 20 keyframes."""
    tmp = tmp_path_factory.mktemp("localizer")
    enc = tiny_encoder()
    recs = nordland.split(shared_data / "nordland64", frames=(19210, 19800), seasons=("summer",))
    recs = [r for r in recs if not nordland.is_blank(read_image(r.path))][:40]
    checkpoint = save_encoder(enc, tmp / "encoder")
    paths = {}
    for site, part, dlat in (("siteA", recs[:20], 0.0), ("siteB", recs[20:], 10.0)):
        db = new_map_for(enc, "map")
        add_dataset(db, enc, [replace(r, lat=r.lat + dlat) for r in part], progress=False)
        db.attach_encoder(checkpoint)
        db.save(tmp / site / "map")
        paths[site] = str(tmp / site / "map")
    return {"paths": paths, "encoder": str(checkpoint), "b_records": recs[20:],
            "b_images": [read_image(r.path) for r in recs[20:]]}


def frame(rgb, i, stamp_ns=None, received_ns=0, camera="/cam"):
    return Frame(camera=camera, topic=camera, stamp_ns=T0 + i * 10**9 if stamp_ns is None else stamp_ns,
                 frame_id="camera", rgb=rgb, received_ns=received_ns)


def metres(lat1, lon1, lat2, lon2):
    e1, n1, zone = to_utm(lat1, lon1)
    e2, n2, _ = to_utm(lat2, lon2, zone)
    return float(np.hypot(e1 - e2, n1 - n2))


def test_two_maps_with_one_name_stay_apart_in_search_consistency_and_fusion(nordland_maps):
    m = nordland_maps
    snap = load_snapshot(settings(map_path=[m["paths"]["siteA"], m["paths"]["siteB"]], top_k=3, consistency_k=2))
    assert [e.name for e in snap.maps] == ["map", "map"] and snap.maps[0].id != snap.maps[1].id
    loc = Localizer(snap)
    results = loc.process([frame(m["b_images"][5], 0)]) + loc.process([frame(m["b_images"][6], 1)])
    first, second = results
    assert first.candidates[0].map_id == snap.maps[1].id and not first.closures  # k=2: one frame is not enough
    assert second.closures and all(c.map_id == snap.maps[1].id for c in second.closures)
    # The pose is site B's, not site A's ~1,100 km south (which keying maps by name gave).
    rec = m["b_records"][6]
    lat, lon, _ = second.pose.wgs84
    assert metres(lat, lon, rec.lat + 10.0, rec.lon) < 30.0
    assert second.pose.covariance[0] >= 25.0  # the 5 m floor


def test_best_matches_in_two_maps_of_one_name_do_not_agree(nordland_maps):
    """A keyframe of site A and the keyframe with the same id and local position in site B are different places."""
    m = nordland_maps
    snap = load_snapshot(settings(map_path=[m["paths"]["siteA"], m["paths"]["siteB"]], consistency_k=2))
    a, b = snap.maps
    kf_a, kf_b = a.db.keyframe(int(a.row_ids[0])), b.db.keyframe(int(b.row_ids[0]))
    loc = Localizer(snap)
    assert loc.consistency.same_place((a.id, kf_a), (a.id, kf_a))
    assert not loc.consistency.same_place((a.id, kf_a), (b.id, kf_b))


def test_sequence_mode_closes_loops_once_the_window_is_full(nordland_maps):
    m = nordland_maps
    loc = Localizer(load_snapshot(settings(map_path=[m["paths"]["siteB"]], consistency_mode="sequence",
                                           sequence_window=4)))
    results = [loc.process([frame(im, i)])[0] for i, im in enumerate(m["b_images"][:10])]
    assert not any(r.closures for r in results[:3])
    for r, rec in list(zip(results, m["b_records"]))[3:]:
        assert r.closures and r.closures[0].keyframe.label == rec.label and r.closures[0].rank == 0


def test_session_map_spacing_exclusion_window_and_stampless_frames(nordland_maps):
    m = nordland_maps
    s = settings(map_path=[""], encoder_path=m["encoder"], session_map=True, session_min_interval_s=0.5,
                 session_exclusion_window_s=5.0, consistency_k=1)
    snap = load_snapshot(s)
    session = SessionMap(snap.encoder)
    loc = Localizer(snap, session)
    images = m["b_images"][:8]
    # Stamp 0 (a driver that never sets it): the receive time spaces the keyframes, so they still accumulate.
    lap1 = [loc.process([frame(im, i, stamp_ns=0, received_ns=T0 + i * 10**9)])[0] for i, im in enumerate(images)]
    assert [r.session_keyframe is not None for r in lap1] == [True] * len(images)
    assert all(c.keyframe.stamp_ns <= r.frame.time_ns - 5 * 10**9 for r in lap1 for c in r.candidates)
    # Frames closer than session_min_interval_s add nothing.
    assert loc.process([frame(images[0], 0, stamp_ns=0, received_ns=T0 + 7_200_000_000)])[0].session_keyframe is None
    lap2 = [loc.process([frame(im, 0, stamp_ns=T0 + (100 + i) * 10**9)])[0] for i, im in enumerate(images)]
    for i, r in enumerate(lap2):
        best = r.candidates[0]
        assert best.map_id == SESSION_MAP_ID and best.keyframe.stamp_ns == T0 + i * 10**9
        assert r.closures and r.pose is None  # session keyframes without odometry or fix have no position


def test_session_features_are_bounded_oldest_first():
    store = FeatureStore(max_bytes=10_000)
    feats = (np.zeros((100, 2), np.float32), np.zeros((100, 32), np.uint8))  # 4,000 bytes
    for k in range(5):
        store.put(k, feats)
    assert store.nbytes <= 10_000 and len(store) == 2
    assert store.get(0) is None and store.get(4) is not None


def kf(i, x, y, heading=math.nan):
    return Keyframe(id=i, x=x, y=y, z=0.0, heading=heading)


def test_consistency_needs_k_agreeing_frames():
    f = ConsistencyFilter(k=3, radius_m=25.0)
    assert not f.update("cam", ("m", kf(1, 0, 0)))
    assert not f.update("cam", ("m", kf(2, 10, 0)))
    assert f.update("cam", ("m", kf(3, 20, 0)))
    assert not f.update("cam", ("m", kf(90, 900, 0)))  # a jump breaks the run
    assert not f.update("cam", None)
    assert not f.update("other", ("m", kf(3, 20, 0)))  # cameras are independent
    f1 = ConsistencyFilter(k=1)
    assert f1.update("cam", ("m", kf(1, 0, 0)))
    nopos = ConsistencyFilter(k=2, id_window=2)
    nopos.update("c", ("m", Keyframe(id=10)))
    assert nopos.update("c", ("m", Keyframe(id=12))) and not nopos.update("c", ("m", Keyframe(id=20)))


def test_fusion_weights_agreeing_candidates_and_floors_covariance():
    est = fuse([kf(1, 100, 0, 90.0), kf(2, 110, 0, 90.0), kf(3, 5000, 0)], [0.9, 0.9, 0.95],
               fusion_radius_m=30, floor_m=5, yaw_floor_deg=10)
    assert est.used == 2 and est.x == pytest.approx(105) and est.heading == pytest.approx(90.0)
    assert est.var_xy == pytest.approx(25.0)  # spread var (25+0)/2 = 12.5 -> floored at 5^2
    c = covariance6(est)
    assert c[0] == c[7] == pytest.approx(25.0) and c[21] == UNKNOWN_VARIANCE
    assert c[35] == pytest.approx(math.radians(10) ** 2)
    wide = fuse([kf(1, 0, 0), kf(2, 40, 0)], [0.5, 0.5], fusion_radius_m=50, floor_m=1)
    assert wide.var_xy == pytest.approx(200.0) and wide.var_yaw == UNKNOWN_VARIANCE
    assert fuse([Keyframe(id=1)], [0.9]) is None


def test_sequence_matcher_finds_the_run_that_single_frames_miss():
    rng = np.random.default_rng(0)
    places = rng.normal(size=(200, 32)).astype(np.float32)
    places /= np.linalg.norm(places, axis=1, keepdims=True)
    seq = SequenceMatcher(window=6, velocities=(1.0,), exclusion_rows=3)
    assert seq.best("cam", places) is None  # not enough frames yet
    for t in range(6):  # frames of places 100..105, each noisy enough that single-frame matching is unreliable
        q = places[100 + t] + rng.normal(scale=0.35, size=32).astype(np.float32)
        seq.push("cam", q / np.linalg.norm(q))
    row, score, margin = seq.best("cam", places)
    assert row == 105 and margin > 1.0
    assert seq.best("other", places) is None
