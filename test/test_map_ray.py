"""`geoloc map build --engine ray` on a local Ray of 2 workers, from three recordings (two Nordland image folders whose
labels collide, one rosbag2 written here): the map equals the single-process map of the same inputs; a worker that
dies mid-run is restarted and its batch retried; a rerun after an interrupted build skips the finished parts. One
Ray session serves the whole module (its start-up is the slow part)."""

import json
import os
from pathlib import Path
import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from geoloc_ros.cli import main as geoloc
from geoloc_ros.datasets import read_image, read_sequence
from geoloc_ros.mapping import Keyframe, MapDatabase

REPO = Path(__file__).resolve().parents[1]
FRAMES = range(19210, 19410, 10)  # 20 frames of each season


@pytest.fixture(scope="module")
def inputs(shared_data, tmp_path_factory):
    """(encoder checkpoint, build arguments naming the three inputs). The winter folder holds one zero-byte image,
    skipped by both engines alike."""
    from geoloc_ros.mapping.bag import write_image_bag
    from geoloc_ros.model import build_encoder, save_encoder

    root = tmp_path_factory.mktemp("inputs")
    for season in ("summer", "winter"):
        (root / season).mkdir()
        for name in (f"images-{n:05d}.png" for n in FRAMES):
            (root / season / name).symlink_to(shared_data / "nordland64" / season / name)
    (root / "winter" / "images-99999.png").write_bytes(b"")
    later = read_sequence(shared_data / "nordland64" / "summer", 10.0)[1941:1956]  # 15 frames further on
    write_image_bag(root / "drive.mcap", [(1_700_000_000 * 10**9 + i * 10**8, read_image(g.path), (g.lat, g.lon, 0.0))
                                          for i, g in enumerate(later)])
    encoder = save_encoder(build_encoder("RN-pico", dim=32, image_size=(32, 64), seed=0, device="cpu"), root / "enc")
    args = ["--encoder", str(encoder), "--images", str(root / "summer"), "--images", str(root / "winter"),
            "--sequence-spacing", "10", "--bag", str(root / "drive.mcap"), "--image-topic", "/camera/image_raw",
            "--fix-topic", "/gnss/fix", "--max-keypoints", "200", "--quiet", "--device", "cpu"]
    return encoder, args


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """A local Ray of 2 CPUs for the module. Its workers inherit the kill-once switch (a flag file a test creates)."""
    ray = pytest.importorskip("ray", reason="the Ray extra (requirements-ray.txt) is not installed")
    from geoloc_ros.mapping.ray_build import KILL_ONCE_ENV

    flag = tmp_path_factory.mktemp("kill") / "kill-once"
    os.environ[KILL_ONCE_ENV] = str(flag)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield flag
    ray.shutdown()
    del os.environ[KILL_ONCE_ENV]


@pytest.fixture(scope="module")
def local_map(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "map"
    geoloc(["map", "build", *inputs[1], "--out", str(out)])
    return MapDatabase.load(out)


def build_on_ray(inputs, out, *extra):
    geoloc(["map", "build", *inputs[1], "--out", str(out), "--engine", "ray", "--ray-workers", "2",
            "--ray-part-size", "8", *extra])
    return MapDatabase.load(out)


def assert_same_map(a: MapDatabase, b: MapDatabase, encoder_file):
    from geoloc_ros.model import load_encoder

    ka, kb = list(a.keyframes()), list(b.keyframes())
    assert [(k.id, k.label, k.source, k.stamp_ns) for k in ka] == [(k.id, k.label, k.source, k.stamp_ns) for k in kb]
    np.testing.assert_allclose(a.positions(), b.positions())
    np.testing.assert_allclose(a.descriptors, b.descriptors, atol=1e-5)
    for kid in a.column("id").tolist():
        (fa, ca), (fb, cb) = a.local_features.get(kid), b.local_features.get(kid)
        assert np.array_equal(fa.keypoints, fb.keypoints) and np.array_equal(fa.descriptors, fb.descriptors)
        assert fa.image_size == fb.image_size and ca == cb
    noise = np.random.default_rng(0).integers(0, 256, (3, 32, 64, 3), dtype=np.uint8)
    queries = np.concatenate([a.descriptors[::7], load_encoder(encoder_file, device="cpu").encode(list(noise))])
    for ra, rb in zip(a.search(queries, 5), b.search(queries, 5)):
        assert [m.keyframe.id for m in ra] == [m.keyframe.id for m in rb]
        np.testing.assert_allclose([m.similarity for m in ra], [m.similarity for m in rb], atol=1e-5)


def test_several_inputs_in_one_build_keep_labels_unique(local_map):
    labels = local_map.column("label").tolist()
    # 20 summer + 20 readable winter frames + 15 bag frames; the two folders' labels collide, so all carry their input
    assert len(labels) == 20 + 20 + 15 and len(set(labels)) == len(labels)
    assert labels[0] == "summer/images-19210.png" and labels[20] == "winter/images-19210.png"
    assert labels[-1].startswith("drive.mcap//camera/image_raw@")
    assert local_map.column("source").tolist() == ["summer"] * 20 + ["winter"] * 20 + ["drive.mcap"] * 15


def test_ray_map_equals_the_single_process_map(inputs, ray_session, local_map, tmp_path):
    out = tmp_path / "ray_map"
    ray_map = build_on_ray(inputs, out)
    assert_same_map(local_map, ray_map, inputs[0])
    assert not (tmp_path / ".ray_map.ray-parts").exists()  # the work folder goes once the map is saved


def test_a_killed_worker_is_retried_and_the_map_is_complete(inputs, ray_session, local_map, tmp_path):
    ray_session.touch()  # the first actor to take a batch kills its own process
    ray_map = build_on_ray(inputs, tmp_path / "map")
    assert not ray_session.exists(), "no worker was killed"
    assert_same_map(local_map, ray_map, inputs[0])


def test_a_rerun_after_an_interrupted_build_skips_finished_parts(inputs, ray_session, local_map, tmp_path):
    from geoloc_ros.mapping import ray_build

    # the parts of a build, as an interrupted run leaves them: one part never written, one half-written
    items = _summer_items(inputs)
    rows = ray_build.plan_rows(items, [0] * len(items))
    work = tmp_path / ".map.ray-parts"
    key = ray_build.build_key(rows, "fp", None, 0)
    first = ray_build.encode_parts(rows, inputs[0], work, key, workers=2, part_size=4)
    assert first["parts_kept"] == 0 and first["frames_encoded"] == len(rows)
    parts = sorted(work.glob("part-*.json"))
    assert len(parts) == first["parts_written"] >= 3
    parts[0].unlink()
    damaged = parts[1].with_suffix(".npz")
    damaged.write_bytes(damaged.read_bytes()[:-10])
    untouched = {p: p.stat().st_mtime_ns for p in parts[2:]}
    assert len(ray_build.finished_parts(work)) == len(parts) - 2  # checksums checked: the damaged part is dropped
    again = ray_build.encode_parts(rows, inputs[0], work, key, workers=2, part_size=4)
    assert again["parts_kept"] == len(parts) - 2 and again["frames_encoded"] < len(rows)
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    db = MapDatabase.create("m", local_map.dim, local_map.fingerprint)
    ids = ray_build.assemble(db, items, work)
    assert sorted(ids) == list(range(len(items)))
    np.testing.assert_allclose(db.descriptors, local_map.descriptors[:len(items)], atol=1e-5)


def _summer_items(inputs):
    from geoloc_ros.mapping.builders import dataset_items

    folder = Path(inputs[1][inputs[1].index("--images") + 1])
    items = dataset_items(read_sequence(folder, 10.0), source=folder.name)
    return [(k.replace(label=f"summer/{k.label}"), p) for k, p in items]


def test_without_ray_the_local_engine_works_and_ray_is_refused_by_name(inputs, tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from geoloc_ros.cli import main\n"
            "main(sys.argv[1:])")
    local = subprocess.run([sys.executable, "-c", code, "map", "build", *inputs[1], "--out", str(tmp_path / "a")],
                           capture_output=True, text=True, cwd=REPO, timeout=300)
    assert local.returncode == 0, local.stderr
    assert len(MapDatabase.load(tmp_path / "a")) == 55
    refused = subprocess.run([sys.executable, "-c", code, "map", "build", *inputs[1], "--out", str(tmp_path / "b"),
                              "--engine", "ray"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert refused.returncode == 1 and "geoloc_ros[ray]" in refused.stderr and "requirements-ray.txt" in refused.stderr
    assert not (tmp_path / "b").exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(st.binary(max_size=64), st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["slots", "inputs", "unreadable", "sha256", "frames"]), inner, max_size=5), max_leaves=12)))
def test_a_part_description_of_any_content_is_redone_or_refused_by_name(tmp_path, doc):
    """Whatever a part's json holds, the work folder reader drops the part (to be redone) or assembles it; never
    another error."""
    from geoloc_ros.mapping import MapError, ray_build

    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    for f in work.iterdir():
        f.unlink()
    result = {"slot": np.array([0]), "input": np.array([0]), "ok": np.array([True]),
              "descriptor": np.ones((1, 4), np.float32) / 2, "features": np.array([b""], dtype=object),
              "errors": np.array(["[]"], dtype=object)}
    name = ray_build.write_part(work, result)
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    (work / f"{name}.json").write_bytes(raw)
    parts = ray_build.finished_parts(work)
    db = MapDatabase.create("m", 4, "f" * 64)
    try:
        ids = ray_build.assemble(db, [(Keyframe(label="a"), "a.png")], work)
        assert parts and ids == {0: 0}
    except MapError as e:
        assert str(work) in str(e)
