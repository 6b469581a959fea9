"""Large maps: IVF parts filled from one trained index, merged without re-encoding (`geoloc map merge --parts`)
into a map whose inverted lists and descriptors stay on disk; the node's loader opens and searches it; crafted
on-disk files are refused."""

import json
import subprocess
import sys

import faiss
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from geoloc_ros.localization.snapshot import load_maps
from geoloc_ros.mapping import Keyframe, MapDatabase, MapError, large, storage
from geoloc_ros.mapping.merge import merge_parts

DIM, PART, FACTORY = 32, 10_000, "IVF16,PQ16x4"  # 4-bit codes: trained in a blink


def clustered(n, seed):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(50, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, DIM)).astype(np.float32)
    faiss.normalize_L2(x)
    return x


def keyframes(part, n):
    return [Keyframe(label=f"part{part}-{i:05d}", lat=67.0 + i * 1e-5, lon=14.0 + part * 1e-3) for i in range(n)]


def part_map(folder, trained, x, part, fingerprint="fp-a"):
    index = large.fill_part(trained, x, 0)
    db = MapDatabase.from_index(f"part{part}", DIM, fingerprint, index, x, keyframes(part, len(x)),
                                index_factory=FACTORY, rerank=100)
    return db.save(folder)


def geoloc(*args):
    return subprocess.run([sys.executable, "-m", "geoloc_ros.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Two maps of 10,000 keyframes each, filled from one trained IVF-PQ index, and their descriptors."""
    root = tmp_path_factory.mktemp("parts")
    x = clustered(2 * PART, seed=0)
    trained = large.train_empty(FACTORY, DIM, x[:2000])
    return [part_map(root / f"p{i}", trained, x[i * PART:(i + 1) * PART], i) for i in range(2)], x


@pytest.fixture(scope="module")
def whole(parts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole") / "map"
    result = geoloc("map", "merge", "--parts", *parts[0], "--out", folder)
    assert result.returncode == 0, result.stderr
    return folder


def test_parts_merge_without_re_encoding_into_an_on_disk_map(parts, whole):
    paths, x = parts
    merged = MapDatabase.load(whole)
    assert merged.on_disk and len(merged) == 2 * PART
    assert {p.name for p in whole.iterdir()} >= {storage.IVFDATA, storage.DESCRIPTORS, storage.INDEX}
    assert json.loads((whole / storage.MANIFEST).read_text())["on_disk"] is True
    dbs = [MapDatabase.load(p) for p in paths]  # alive while their lists are read
    sources = [large.ivf_of(d.index).invlists for d in dbs]
    lists = large.ivf_of(merged.index).invlists
    for i in range(large.ivf_of(merged.index).nlist):  # every list: part 0's codes then part 1's, ids shifted
        codes = [faiss.rev_swig_ptr(s.get_codes(i), s.list_size(i) * s.code_size) for s in sources]
        ids = [faiss.rev_swig_ptr(s.get_ids(i), s.list_size(i)) + k * PART for k, s in enumerate(sources)]
        assert np.array_equal(faiss.rev_swig_ptr(lists.get_codes(i), lists.list_size(i) * lists.code_size),
                              np.concatenate(codes))
        assert np.array_equal(faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)), np.concatenate(ids))
    assert np.array_equal(merged.descriptors, x)
    assert [merged.keyframe(i).label for i in (0, PART)] == ["part0-00000", "part1-00000"]


def test_the_node_loader_opens_and_searches_an_on_disk_map(parts, whole):
    _, x = parts
    [entry] = load_maps([whole])  # what vpr_node's configure and ~/reload_map call
    db = entry.db
    rows = np.arange(0, 2 * PART, 997)
    q = x[rows] + 0.05 * np.random.default_rng(3).normal(size=(len(rows), DIM)).astype(np.float32)
    found = [m[0].keyframe.label for m in db.search(q, 5)]
    expected = [f"part{r // PART}-{r % PART:05d}" for r in rows]
    assert np.mean([f == e for f, e in zip(found, expected)]) >= 0.9
    near = db.search(q[:1], 3, near=(db.column("x")[0], db.column("y")[0], 30.0))
    assert near[0] and all(abs(m.keyframe.x - db.column("x")[0]) <= 30.0 for m in near[0])
    info = geoloc("map", "info", whole)
    assert info.returncode == 0 and "on disk" in info.stdout


def test_an_on_disk_map_saves_elsewhere_and_takes_no_single_keyframes(parts, whole, tmp_path):
    db = MapDatabase.load(whole)
    copy = db.save(tmp_path / "copy")
    again = MapDatabase.load(copy)
    q = parts[1][:5]
    assert [[m.keyframe.id for m in r] for r in again.search(q, 3)] == [[m.keyframe.id for m in r]
                                                                       for r in db.search(q, 3)]
    with pytest.raises(MapError, match="on disk"):
        again.add(q[:1], [Keyframe(label="one more", lat=67.0, lon=14.0)])


def test_parts_of_another_quantiser_index_kind_or_encoder_are_refused_with_the_reason(parts, tmp_path):
    paths, x = parts
    part0 = MapDatabase.load(paths[0])
    alone = part_map(tmp_path / "alone", large.train_empty(FACTORY, DIM, x[5000:7000]), x[:100], 2)
    with pytest.raises(MapError, match="quantiser"):
        merge_parts([part0, MapDatabase.load(alone)], "m", tmp_path / "work")
    flat = MapDatabase.create("flat", DIM, "fp-a")
    flat.add(x[:10], keyframes(3, 10))
    with pytest.raises(MapError, match="not an IVF index"):
        merge_parts([part0, flat], "m", tmp_path / "work")
    other = part_map(tmp_path / "other", large.train_empty(FACTORY, DIM, x[:2000]), x[:100], 4, "fp-b")
    with pytest.raises(MapError, match="another encoder"):
        merge_parts([part0, MapDatabase.load(other)], "m", tmp_path / "work")
    result = geoloc("map", "merge", "--parts", paths[0], alone, "--out", tmp_path / "refused")
    assert result.returncode == 1 and "quantiser" in result.stderr and not (tmp_path / "refused").exists()
    # with one map's quantiser named, the other parts are coded with it from their stored descriptors
    coded = merge_parts([flat, MapDatabase.load(alone)], "m", tmp_path / "work", quantiser_from=part0)
    assert len(coded) == 110 and large.quantiser_digest(coded.index) == large.quantiser_digest(part0.index)
    assert coded.search(x[:1], 1)[0][0].keyframe.label == "part3-00000"


# -- crafted files --------------------------------------------------------------------------------------------

def resign(folder, manifest=None):
    """Redo the manifest's sizes and checksums (and its own), as someone crafting files would."""
    manifest = manifest or json.loads((folder / storage.MANIFEST).read_text())
    manifest["files"] = storage.describe_files(folder)
    (folder / storage.MANIFEST).write_bytes(storage.manifest_bytes(manifest))


@pytest.fixture
def copy(whole, tmp_path):
    return MapDatabase.load(whole).save(tmp_path / "map")


def refused(folder, *words):
    with pytest.raises(MapError) as caught:
        MapDatabase.load(folder)
    assert str(folder) in str(caught.value) and all(w in str(caught.value) for w in words), str(caught.value)


def test_a_list_table_pointing_past_the_list_file_is_refused(copy):
    data = (copy / storage.IVFDATA).read_bytes()
    (copy / storage.IVFDATA).unlink()  # a new file, not the hard link the parts' merge shares
    (copy / storage.IVFDATA).write_bytes(data[:len(data) // 2])
    resign(copy)
    refused(copy, "index.faiss", "ivfdata")


def test_lists_on_disk_the_manifest_does_not_declare_are_refused(copy):
    manifest = json.loads((copy / storage.MANIFEST).read_text())
    del manifest["on_disk"]
    resign(copy, manifest)
    refused(copy, "on-disk inverted lists")


def test_an_index_whose_ids_are_not_the_map_rows_is_refused(parts, tmp_path):
    db = MapDatabase.load(parts[0][0])
    ids = np.arange(PART, dtype=np.int64)
    ids[7] = 5  # row 7 missing, row 5 twice
    index = large.empty_like(db.index)
    index.add_with_ids(db.descriptors, ids)
    folder = db.save(tmp_path / "map")
    faiss.write_index(index, str(folder / storage.INDEX))
    resign(folder)
    refused(folder, "ids are not the map's rows")


def test_non_finite_descriptors_of_an_on_disk_map_are_refused(copy):
    data = bytearray((copy / storage.DESCRIPTORS).read_bytes())
    data[-4:] = np.float32(np.nan).tobytes()
    (copy / storage.DESCRIPTORS).unlink()
    (copy / storage.DESCRIPTORS).write_bytes(bytes(data))
    resign(copy)
    refused(copy, "NaN")


def test_the_list_file_loads_or_is_refused_whatever_its_bytes(copy):
    original = (copy / storage.IVFDATA).read_bytes()
    (copy / storage.IVFDATA).unlink()

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(at=st.integers(0, len(original) - 1), junk=st.binary(min_size=1, max_size=64),
           cut=st.booleans())
    def check(at, junk, cut):
        data = original[:at] if cut else original[:at] + junk + original[at + len(junk):]
        (copy / storage.IVFDATA).write_bytes(data)
        resign(copy)
        try:
            db = MapDatabase.load(copy)
        except MapError as e:
            assert str(copy) in str(e)
            return
        assert all(0 <= m.keyframe.id < 2 * PART for r in db.search(db.descriptors[:3], 5) for m in r)

    check()
