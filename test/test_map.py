"""The map database: add/search/save/load round trips, radius filter, and refusing damaged or mismatched maps."""

import json
import math

import numpy as np
import pytest

from geoloc_ros.geodesy import MapFrame
from geoloc_ros.mapping import Keyframe, MapDatabase, MapError, Match, storage

DIM = 16


@pytest.fixture(scope="module")
def encoders():
    """Three small random encoders: the map's, one with other weights, one with another dimension."""
    from geoloc_ros.model import build_encoder

    return {"same": build_encoder("RN-nano", dim=DIM, image_size=32, seed=0),
            "other_weights": build_encoder("RN-nano", dim=DIM, image_size=32, seed=1),
            "other_dim": build_encoder("RN-nano", dim=2 * DIM, image_size=32, seed=0)}


def unit_rows(n, dim=DIM, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def line_keyframes(n, spacing=10.0):
    """Keyframes northwards from 67 N 14 E, `spacing` metres apart (given as map-frame positions)."""
    frame = MapFrame.at(67.0, 14.0)
    kfs = []
    for i in range(n):
        lat, lon, _ = frame.to_wgs84(0.0, i * spacing)
        kfs.append(Keyframe(label=f"frame{i:03d}", stamp_ns=i * 100_000_000, lat=lat, lon=lon, heading=0.0,
                            source="test", synthetic=True))
    return kfs


@pytest.fixture
def small_map():
    db = MapDatabase.create("small", DIM, "fp-a")
    x = unit_rows(50)
    db.add(x, line_keyframes(50))
    return db, x


def test_empty_map_answers_no_candidates(tmp_path, encoders):
    enc = encoders["same"]
    db = MapDatabase.create("empty", DIM, enc.fingerprint)
    assert len(db) == 0 and db.frame is None and db.encoder_path is None
    assert db.search(unit_rows(3), 5) == [[], [], []]
    db.save(tmp_path / "empty")
    loaded = MapDatabase.load(tmp_path / "empty", encoder=enc)
    assert len(loaded) == 0
    assert loaded.search(unit_rows(2), 5, near=(0.0, 0.0, 100.0)) == [[], []]


def test_add_search_returns_the_same_keyframe_first(small_map):
    db, x = small_map
    results = db.search(x[[7, 31]], 3)
    assert [r[0].keyframe.id for r in results] == [7, 31]
    assert all(isinstance(m, Match) for r in results for m in r)
    assert results[0][0].similarity == pytest.approx(1.0, abs=1e-5)
    sims = [m.similarity for m in results[0]]
    assert sims == sorted(sims, reverse=True)
    assert db.search(x[:1], 500)[0].__len__() == 50  # k larger than the map: every keyframe once


def test_positions_are_derived_in_the_map_frame(small_map):
    db, _ = small_map
    k0, k5 = db.keyframe(0), db.keyframe(5)
    assert db.frame.zone == "33W"
    assert (k0.x, k0.y) == pytest.approx((0.0, 0.0), abs=1e-6)
    assert math.hypot(k5.x, k5.y) == pytest.approx(50.0, abs=0.01)
    assert k5.utm_north - k0.utm_north == pytest.approx(50.0, abs=0.5)
    assert k5.synthetic and k5.label == "frame005" and k5.stamp_ns == 500_000_000
    assert math.isnan(k5.alt) and k5.z == 0.0
    with pytest.raises(KeyError):
        db.keyframe(999)


def test_radius_filter_keeps_only_nearby_keyframes(small_map):
    db, x = small_map
    y20 = db.keyframe(20).y
    (matches,) = db.search(x[5], 10, near=(0.0, y20, 25.0))
    assert {m.keyframe.id for m in matches} == {18, 19, 20, 21, 22}
    assert db.search(x[5], 3, near=(5000.0, 5000.0, 10.0)) == [[]]


def test_incremental_add_after_load_and_ids(tmp_path, small_map):
    db, x = small_map
    db.save(tmp_path / "m")
    loaded = MapDatabase.load(tmp_path / "m")
    new = unit_rows(2, seed=9)
    ids = loaded.add(new, [Keyframe(label="seen-a"), Keyframe(id=1000, label="seen-b")])
    assert ids == [1001, 1000] and len(loaded) == 52
    assert loaded.search(new[1], 1)[0][0].keyframe.label == "seen-b"
    with pytest.raises(MapError, match="already in map"):
        loaded.add(new[:1], [Keyframe(id=1000)])
    loaded.save(tmp_path / "m")
    again = MapDatabase.load(tmp_path / "m")
    assert len(again) == 52 and again.keyframe(1001).label == "seen-a"
    np.testing.assert_allclose(again.search(x[7], 1)[0][0].similarity, 1.0, atol=1e-5)


def test_round_trip_keeps_every_field(tmp_path, small_map):
    db, _ = small_map
    db.save(tmp_path / "m")
    loaded = MapDatabase.load(tmp_path / "m")
    assert loaded.frame == db.frame and loaded.fingerprint == "fp-a" and loaded.dim == DIM
    for a, b in zip(db.keyframes(), loaded.keyframes()):
        for field in a.__dataclass_fields__:
            va, vb = getattr(a, field), getattr(b, field)
            assert (va == vb) or (isinstance(va, float) and math.isnan(va) and math.isnan(vb)), field


def test_save_replaces_atomically_and_leaves_no_temporaries(tmp_path, small_map):
    db, _ = small_map
    target = tmp_path / "m"
    db.save(target)
    (target / "README.md").write_text("about this map\n")  # not part of the map, but kept with it
    (target / "recordings").mkdir()
    (target / "recordings" / "drive.mcap").write_bytes(b"x")
    bigger = MapDatabase.load(target)
    bigger.add(unit_rows(1, seed=3), [Keyframe(label="extra")])
    bigger.save(target)
    assert len(MapDatabase.load(target)) == 51
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert (target / "README.md").read_text() == "about this map\n"
    assert (target / "recordings" / "drive.mcap").read_bytes() == b"x"
    assert "README.md" not in json.loads((target / "manifest.json").read_text())["files"]
    assert (target.stat().st_mode & 0o777) == 0o777 & ~_umask()


@pytest.mark.parametrize("factory", ["HNSW16", "IVF4,Flat", "IVF4,PQ4"])
def test_other_index_factories_round_trip(tmp_path, factory):
    x = unit_rows(400, seed=1)
    db = MapDatabase.create("ann", DIM, "fp-a", index_factory=factory)
    db.add(x, [Keyframe(label=str(i)) for i in range(400)])
    db.save(tmp_path / "m")
    loaded = MapDatabase.load(tmp_path / "m")
    assert loaded.index_factory == factory and len(loaded) == 400
    hits = [r[0].keyframe.id for r in loaded.search(x[:20], 1)]
    assert np.mean(np.array(hits) == np.arange(20)) >= 0.8  # approximate indexes: nearly always the same row


def test_untrainable_index_is_refused_clearly():
    db = MapDatabase.create("ivf", DIM, "fp-a", index_factory="IVF64,Flat")
    with pytest.raises(MapError, match="cannot be trained"):
        db.add(unit_rows(10), [Keyframe() for _ in range(10)])
    with pytest.raises(MapError, match="factory string"):
        MapDatabase.create("bad", DIM, "fp-a", index_factory="NoSuchIndex")


def test_dimension_and_fingerprint_mismatch_are_refused(tmp_path, encoders):
    enc = encoders["same"]
    db = MapDatabase.create("m", DIM, enc.fingerprint)
    db.add(unit_rows(5), [Keyframe() for _ in range(5)])
    db.save(tmp_path / "m")
    assert len(MapDatabase.load(tmp_path / "m", encoder=enc)) == 5
    with pytest.raises(MapError, match="dimension 16, the encoder produces 32"):
        MapDatabase.load(tmp_path / "m", encoder=encoders["other_dim"])
    with pytest.raises(MapError, match="fingerprint"):
        MapDatabase.load(tmp_path / "m", encoder=encoders["other_weights"])
    with pytest.raises(MapError, match=r"expected shape \(N, 16\)"):
        db.search(unit_rows(1, dim=8), 1)


def test_every_altered_byte_file_is_refused_naming_the_file(tmp_path, small_map):
    db, _ = small_map
    db.save(tmp_path / "m")
    for file in sorted((tmp_path / "m").iterdir()):
        original = file.read_bytes()
        for offset in (0, len(original) // 2, len(original) - 1):
            damaged = bytearray(original)
            damaged[offset] ^= 0x01
            file.write_bytes(bytes(damaged))
            with pytest.raises(MapError) as err:
                MapDatabase.load(tmp_path / "m")
            assert file.name in str(err.value), (file.name, offset, str(err.value))
        file.write_bytes(original[:-7])  # truncated
        with pytest.raises(MapError, match=file.name):
            MapDatabase.load(tmp_path / "m")
        file.write_bytes(original)
    assert len(MapDatabase.load(tmp_path / "m")) == 50


def test_missing_file_and_unknown_version_are_refused(tmp_path, small_map):
    db, _ = small_map
    db.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    (tmp_path / "m" / "manifest.json").write_bytes(storage.manifest_bytes({**manifest, "format_version": 99}))
    with pytest.raises(MapError, match="format version 99 is not supported"):
        MapDatabase.load(tmp_path / "m")
    (tmp_path / "m" / "manifest.json").write_bytes(storage.manifest_bytes(manifest))
    (tmp_path / "m" / "index.faiss").unlink()
    with pytest.raises(MapError, match="index.faiss: missing"):
        MapDatabase.load(tmp_path / "m")
    with pytest.raises(MapError, match="no such map directory"):
        MapDatabase.load(tmp_path / "nothing-here")


def test_local_map_without_geotags(tmp_path):
    db = MapDatabase.create("odom", DIM, "fp-a")
    db.add(unit_rows(3), [Keyframe(x=float(i), y=0.0, z=0.0) for i in range(3)])
    assert db.frame is None and math.isnan(db.keyframe(1).lat)
    assert [m.keyframe.id for m in db.search(unit_rows(3)[2], 3, near=(2.0, 0.0, 0.5))[0]] == [2]
    with pytest.raises(MapError, match="without geotags"):
        db.add(unit_rows(1), [Keyframe(lat=60.0, lon=10.0)])


def test_pq_map_with_exact_reranking(tmp_path):
    x = unit_rows(600, seed=4)
    db = MapDatabase.create("pq", DIM, "fp-a", index_factory="IVF8,PQ2", search_params="nprobe=8", rerank=20)
    db.add(x, [Keyframe(label=str(i)) for i in range(600)])
    db.save(tmp_path / "m")
    loaded = MapDatabase.load(tmp_path / "m")
    assert loaded.rerank == 20
    results = loaded.search(x[:30], 3)
    # 2-byte codes alone confuse neighbours; exact re-scoring of the candidates finds each row itself again
    assert [r[0].keyframe.id for r in results] == list(range(30))
    assert all(r[0].similarity == pytest.approx(1.0, abs=1e-5) for r in results)
    assert all([m.similarity for m in r] == sorted((m.similarity for m in r), reverse=True) for r in results)


def _umask():
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF4,Flat"])
def test_radius_filter_through_the_index_selector(monkeypatch, factory):
    """Beyond EXACT_SUBSET_MAX keyframes inside the radius, the index searches with a FAISS ID selector."""
    from geoloc_ros.mapping import database

    monkeypatch.setattr(database, "EXACT_SUBSET_MAX", 0)  # take the selector path even for this small map
    x = unit_rows(300, seed=2)
    db = MapDatabase.create("sel", DIM, "fp-a", index_factory=factory,
                            search_params="nprobe=4" if "IVF" in factory else None)
    db.add(x, line_keyframes(300))
    (matches,) = db.search(x[0], 5, near=(0.0, db.keyframe(150).y, 25.0))
    assert matches and {m.keyframe.id for m in matches} <= {148, 149, 150, 151, 152}
