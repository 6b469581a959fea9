"""Every map file read back against crafted and arbitrary content (docs/maps.md): features.npz (a deflate bomb,
crafted arrays, descriptors of the wrong width), cameras.json, keyframes.sqlite, descriptors.npy, index.faiss and
manifest.json. The checksums are redone after each change, as a deliberate forger would, so what is tested is
the validation behind them: a map either loads whole (and every keyframe's features are usable) or is refused
with MapError naming the file and the reason, in bounded memory. `geoloc map info` says the same, no traceback."""

from __future__ import annotations

import io
import json
import resource
import sqlite3
import tracemalloc
import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from geoloc_ros.cli import main as geoloc
from geoloc_ros.geometry.camera import PinholeCamera
from geoloc_ros.geometry.features import Features
from geoloc_ros.mapping import Keyframe, MapDatabase, MapError, storage
from geoloc_ros.mapping.features import LocalFeatureStore

KEYFRAMES = 6


def features_map(folder, n=KEYFRAMES, dim=8, seed=0):
    """A map of `n` geotagged keyframes with SIFT-sized local features and one camera model, saved to `folder`."""
    rng = np.random.default_rng(seed)
    db = MapDatabase.create("hostile", dim, "f" * 64)
    ids = db.add(rng.normal(size=(n, dim)), [Keyframe(lat=60.0 + i * 1e-4, lon=10.0, label=f"k{i}", address=f"{i}")
                                             for i in range(n)])
    store = LocalFeatureStore("sift", 500)
    camera = PinholeCamera(500.0, 500.0, 320.0, 240.0, 640, 480)
    for kid in ids:
        k = int(rng.integers(5, 20))
        store.add(kid, Features(rng.uniform(0, 400, (k, 2)), rng.integers(0, 256, (k, 128)), "sift",
                                image_size=(640, 480)), camera)
    db.local_features = store
    return db.save(folder)


def rewrite(folder, name, data: bytes):
    """Put `data` in MAP/name and redo the manifest's size and sha256 of it (and its self-checksum)."""
    (folder / name).write_bytes(data)
    manifest = json.loads((folder / storage.MANIFEST).read_text())
    manifest["files"][name] = {"bytes": len(data), "sha256": storage.sha256_file(folder / name)}
    (folder / storage.MANIFEST).write_bytes(storage.manifest_bytes(manifest))


def npz(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def stored_arrays(folder) -> dict:
    with np.load(folder / storage.LOCAL_FEATURES) as z:
        return {k: z[k] for k in z.files}


def refused(folder, *words):
    """MapDatabase.load and `geoloc map info` both refuse `folder` with MapError naming a file and `words`."""
    with pytest.raises(MapError) as caught:
        MapDatabase.load(folder)
    message = str(caught.value)
    assert str(folder) in message and all(w in message for w in words), message
    with pytest.raises(SystemExit, match="geoloc map: "):
        geoloc(["map", "info", str(folder)])
    return message


@pytest.fixture
def good(tmp_path):
    return features_map(tmp_path / "map")


def test_a_good_map_loads_with_usable_features_for_every_keyframe(good, capsys):
    db = MapDatabase.load(good)
    assert len(db.local_features) == len(db) == KEYFRAMES
    for kid in db.column("id"):
        features, camera = db.local_features.get(kid)
        assert features.descriptors.shape[1] == 128 and camera.width == 640
    assert geoloc(["map", "info", str(good)]) in (None, 0)


def test_a_deflate_bomb_in_features_npz_is_refused_without_inflating_it(good):
    """256 MiB of zeros deflated to ~250 KB (a ratio of ~1000, as a 1 GiB bomb of 1 MB): refused from the zip
    headers, never inflated."""
    arrays = stored_arrays(good)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, a in arrays.items():
            if name != "descriptors":
                z.writestr(f"{name}.npy", npy_bytes(a), compress_type=zipfile.ZIP_STORED)
        rows = (1 << 28) // 128
        with z.open("descriptors.npy", "w", force_zip64=True) as f:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                          "shape": (rows, 128)})
            f.write(header.getvalue())
            zeros = bytes(1 << 24)
            for _ in range(64):
                f.write(zeros)
    bomb = buf.getvalue()
    assert len(bomb) < 1 << 20
    rewrite(good, storage.LOCAL_FEATURES, bomb)
    tracemalloc.start()
    try:
        with pytest.raises(MapError, match="compressed"):
            MapDatabase.load(good)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def npy_bytes(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _change(name, make):
    def change(arrays):
        arrays = dict(arrays)
        if make is None:
            del arrays[name]
        else:
            arrays[name] = make(arrays)
        return arrays
    return change


CRAFTED = {
    "descriptors 7 wide": (_change("descriptors", lambda a: a["descriptors"][:, :7].copy()), "7 bytes wide"),
    "offsets going back": (_change("offsets", lambda a: a["offsets"][::-1].copy()), "offsets"),
    "offsets past the keypoints": (_change("offsets", lambda a: a["offsets"] + 3), "offsets"),
    "a camera that is not there": (_change("camera", lambda a: a["camera"] + 5), "camera 5 of 1"),
    "an unknown keyframe id": (_change("ids", lambda a: a["ids"] + 1000), "does not match the map's keyframes"),
    "a NaN keypoint": (_change("keypoints", lambda a: np.where(np.arange(len(a["keypoints"]))[:, None] == 3, np.nan,
                                                                a["keypoints"]).astype(np.float32)), "finite"),
    "float ids": (_change("ids", lambda a: a["ids"].astype(np.float64)), "array 'ids'"),
    "no has_depth": (_change("has_depth", None), "no array 'has_depth'"),
    "2-D ids": (_change("ids", lambda a: a["ids"].reshape(-1, 1)), "array 'ids'"),
    "repeated ids": (_change("ids", lambda a: np.zeros_like(a["ids"])), "repeat"),
    "pickled objects": (_change("ids", lambda a: np.array([{"x": 1}] * len(a["ids"]), dtype=object)), "plain"),
    "uint16 descriptors": (_change("descriptors", lambda a: a["descriptors"].astype(np.uint16)), "uint8"),
    "huge unsigned offsets": (_change("offsets", lambda a: a["offsets"].astype(np.uint64) + np.uint64(2 ** 63)),
                              "offsets"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_feature_arrays_are_refused_naming_the_reason(good, case):
    change, words = CRAFTED[case]
    rewrite(good, storage.LOCAL_FEATURES, npz(change(stored_arrays(good))))
    refused(good, storage.LOCAL_FEATURES, words)


def test_feature_files_that_are_not_archives_are_refused(good):
    rewrite(good, storage.LOCAL_FEATURES, b"PK\x03\x04" + b"\0" * 100)
    refused(good, "not a readable .npz archive")


CAMERA_FILES = {
    "nested 100k deep": ("[" * 100_000 + "]" * 100_000, "not a camera model file"),
    "cameras not a list": (json.dumps({"detector": "sift", "max_keypoints": 500, "cameras": "x"}), "'cameras' list"),
    "a negative focal length": (json.dumps({"detector": "sift", "max_keypoints": 500, "cameras": [
        {"fx": -1, "fy": 1, "cx": 0, "cy": 0}]}), "focal lengths must be positive"),
    "an overflowing focal length": ('{"detector": "sift", "max_keypoints": 500, "cameras": [{"fx": 1' + "0" * 400
                                    + ', "fy": 1, "cx": 0, "cy": 0}]}', "not a camera model file"),
    "an unknown detector": (json.dumps({"detector": "surf", "max_keypoints": 500, "cameras": []}), "detector 'surf'"),
    "max_keypoints infinite": ('{"detector": "sift", "max_keypoints": 1e400, "cameras": []}', "max_keypoints"),
    "a camera that is a list": (json.dumps({"detector": "sift", "max_keypoints": 500, "cameras": [[1, 2]]}),
                                "camera 0 is not an object"),
    "not UTF-8": ("\udcff", "not a camera model file"),
}


@pytest.mark.parametrize("case", sorted(CAMERA_FILES))
def test_crafted_camera_files_are_refused_naming_the_reason(good, case):
    text, words = CAMERA_FILES[case]
    rewrite(good, storage.CAMERAS, text.encode("utf-8", "surrogateescape"))
    refused(good, storage.CAMERAS, words)


def sqlite_edit(folder, *statements) -> bytes:
    """keyframes.sqlite of `folder` with its table copied without constraints and `statements` run on it."""
    path = folder.parent / "edit.sqlite"
    path.write_bytes((folder / storage.KEYFRAMES).read_bytes())
    con = sqlite3.connect(path)
    con.executescript("CREATE TABLE k2 AS SELECT * FROM keyframes; DROP TABLE keyframes; "
                      "ALTER TABLE k2 RENAME TO keyframes;" + "".join(s + ";" for s in statements))
    con.commit()
    con.close()
    data = path.read_bytes()
    path.unlink()
    return data


KEYFRAME_TABLES = {
    "a text id": (["UPDATE keyframes SET id = 'abc' WHERE row = 0"], "column id"),
    "a text latitude": (["UPDATE keyframes SET lat = 'north' WHERE row = 1"], "column lat"),
    "a blob label": (["UPDATE keyframes SET label = x'00ff' WHERE row = 1"], "column label"),
    "a latitude of 95": (["UPDATE keyframes SET lat = 95 WHERE row = 1"], "out of range"),
    "repeated ids": (["UPDATE keyframes SET id = 0"], "ids repeat"),
    "rows with a gap": (["UPDATE keyframes SET row = 9 WHERE row = 2"], "rows are not 0..N-1"),
    "a view that never ends": (["ALTER TABLE keyframes RENAME TO k3",
                                "CREATE VIEW keyframes AS WITH RECURSIVE c(n) AS (SELECT 0 UNION ALL SELECT n + 1 "
                                "FROM c) SELECT n AS row, k3.* FROM c, k3"], "no keyframes table"),
    "a generated gigabyte": (["ALTER TABLE keyframes ADD COLUMN big BLOB GENERATED ALWAYS AS "
                              "(zeroblob(1000000000)) VIRTUAL"], "generated"),
    "no lat column": (["ALTER TABLE keyframes DROP COLUMN lat"], "no column lat"),
}


@pytest.mark.parametrize("case", sorted(KEYFRAME_TABLES))
def test_crafted_keyframe_tables_are_refused_naming_the_reason(good, case):
    statements, words = KEYFRAME_TABLES[case]
    rewrite(good, storage.KEYFRAMES, sqlite_edit(good, *statements))
    refused(good, storage.KEYFRAMES, words)


def test_a_null_text_value_reads_as_empty_text_not_none(good):
    rewrite(good, storage.KEYFRAMES, sqlite_edit(good, "UPDATE keyframes SET address = NULL WHERE row = 2"))
    db = MapDatabase.load(good)
    assert db.keyframe(2).address == "" and db.keyframe(3).address == "3"


def test_non_finite_descriptors_and_impossible_npy_shapes_are_refused(good):
    d = MapDatabase.load(good).descriptors.copy()
    d[1, 2] = np.nan
    rewrite(good, storage.DESCRIPTORS, npy_bytes(d))
    refused(good, storage.DESCRIPTORS, "NaN")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (2 ** 62, 2 ** 2)})
    rewrite(good, storage.DESCRIPTORS, header.getvalue())  # 2^64 elements: wraps to 0 in int64 arithmetic
    refused(good, storage.DESCRIPTORS, "data bytes")


def test_a_flat_index_claiming_more_vectors_than_it_holds_is_refused_before_faiss_reads_it(good):
    raw = bytearray((good / storage.INDEX).read_bytes())
    raw[8:16] = (1 << 36).to_bytes(8, "little")  # ntotal
    raw[37:45] = (8 << 36).to_bytes(8, "little")  # floats: 2 TiB
    rewrite(good, storage.INDEX, bytes(raw))
    refused(good, storage.INDEX, "does not describe")
    rewrite(good, storage.INDEX, (good / storage.INDEX).read_bytes() + b"\0")
    refused(good, storage.INDEX)


# -- arbitrary content, every reader ------------------------------------------------------------------------

MAP_FILES = [storage.KEYFRAMES, storage.DESCRIPTORS, storage.INDEX, storage.LOCAL_FEATURES, storage.CAMERAS]


@st.composite
def damaged(draw, original: bytes):
    """Arbitrary bytes, or the original truncated, overwritten in a span, or with bytes inserted."""
    how = draw(st.sampled_from(["arbitrary", "truncated", "overwritten", "inserted"]))
    if how == "arbitrary" or not original:
        return draw(st.binary(max_size=2048))
    at = draw(st.integers(0, len(original) - 1))
    if how == "truncated":
        return original[:at]
    junk = draw(st.binary(min_size=1, max_size=16))
    if how == "overwritten":
        return original[:at] + junk + original[at + len(junk):]
    return original[:at] + junk + original[at:]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    folder = features_map(tmp_path_factory.mktemp("pristine") / "map")
    return folder, {name: (folder / name).read_bytes() for name in MAP_FILES + [storage.MANIFEST]}


def restore(folder, files):
    for name, data in files.items():
        (folder / name).write_bytes(data)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.parametrize("name", MAP_FILES)
def test_every_map_file_reader_loads_or_refuses_arbitrary_content(pristine, name):
    folder, files = pristine
    before = peak_rss_bytes()

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def check(data):
        restore(folder, files)
        rewrite(folder, name, data.draw(damaged(files[name])))
        try:
            db = MapDatabase.load(folder)
        except MapError as e:
            assert str(folder) in str(e)
            return
        assert len(db) == KEYFRAMES and np.isfinite(db.descriptors).all()
        for kid in db.column("id"):  # what loads is usable at run time
            db.local_features.get(kid)
        db.search(db.descriptors[:1], 3)

    check()
    restore(folder, files)
    assert peak_rss_bytes() - before < 512 << 20


finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | finite | st.integers() | st.text(max_size=8)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10)


def test_the_manifest_reader_loads_or_refuses_arbitrary_field_values(pristine):
    folder, files = pristine
    good = json.loads(files[storage.MANIFEST])

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.sampled_from(sorted(good) + ["local_features", "extra"]), json_values)
    def check(field, value):
        restore(folder, files)
        (folder / storage.MANIFEST).write_bytes(storage.manifest_bytes({**good, field: value}))
        try:
            db = MapDatabase.load(folder)
        except MapError as e:
            assert str(folder) in str(e)
            return
        assert len(db) == KEYFRAMES

    check()
    restore(folder, files)
