"""Maps under hostile use: no writer replaces a directory that is not a map of ours, a map is read into memory
(files overwritten under a loaded map change nothing), every manifest field of a wrong type is refused with
MapError naming it, maps carry a unique map_id, and `geoloc map build` skips unreadable images and bag frames."""

import json
import shutil

import numpy as np
import pytest

from geoloc_ros.cli import main as geoloc
from geoloc_ros.mapping import Keyframe, MapDatabase, MapError, storage
from geoloc_ros.mapping.bag import write_image_bag

DIM = 8


def tiny_map(n=6, seed=0, name="m"):
    rng = np.random.default_rng(seed)
    db = MapDatabase.create(name, DIM, "f" * 64)
    db.add(rng.standard_normal((n, DIM)).astype(np.float32),
           [Keyframe(id=-1, label=f"k{i}", lat=60.0 + i * 1e-4, lon=10.0) for i in range(n)])
    return db


def foreign_folder(root, names=(".git/HEAD", ".env", ".ssh/id_ed25519", ".profile", "notes.txt")):
    """A folder that is not a map: a home directory or a repository, with hidden files."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"precious {name}\n")
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def still_there(root, before):
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in root.parent.iterdir() if p.name.startswith(f".{root.name}.")]  # no temporaries left


def test_save_refuses_a_home_directory_and_keeps_every_file(tmp_path, monkeypatch):
    home = tmp_path / "home"
    before = foreign_folder(home)
    monkeypatch.setenv("HOME", str(home))
    for target in ("~", home, str(home) + "/"):  # session_map_path:='~' as the node expands it, and spelled out
        with pytest.raises(MapError, match=r"not a geoloc_ros map .*\.env"):
            tiny_map().save(target)
    still_there(home, before)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MapError, match="not a directory"):
        tiny_map().save(tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "x"


def test_save_into_empty_or_new_or_own_map_works_and_keeps_extras(tmp_path):
    (tmp_path / "empty").mkdir()
    tiny_map().save(tmp_path / "empty")
    target = tiny_map().save(tmp_path / "new" / "map")
    (target / ".git").mkdir()
    (target / ".git" / "HEAD").write_text("ref")
    (target / "README").write_text("mine")
    tiny_map(n=9).save(target)  # over a map of ours: replaced, its extras (hidden ones too) carried over
    assert len(MapDatabase.load(target)) == 9
    assert (target / ".git" / "HEAD").read_text() == "ref" and (target / "README").read_text() == "mine"


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    from geoloc_ros.model import build_encoder, save_encoder

    return save_encoder(build_encoder("RN-pico", dim=32, image_size=(32, 64), seed=0, device="cpu"),
                        tmp_path_factory.mktemp("enc"))


def frames_folder(tmp_path, shared_data, n=4, bad=()):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(n):
        shutil.copy(shared_data / "nordland64" / "summer" / f"images-{19500 + 10 * i:05d}.png",
                    folder / f"images-{i:05d}.png")
    for name, data in bad:
        (folder / name).write_bytes(data)
    return folder


def build(encoder_file, images, out, *extra):
    return geoloc(["map", "build", "--encoder", str(encoder_file), "--images", str(images), "--sequence-spacing",
                   "10", "--out", str(out), "--quiet", "--device", "cpu", *extra])


def test_cli_writers_refuse_foreign_folders(tmp_path, shared_data, encoder_file, capsys):
    images = frames_folder(tmp_path, shared_data)
    build(encoder_file, images, tmp_path / "map")
    repo = tmp_path / "repo"
    before = foreign_folder(repo, (".git/config", ".env", "src/main.c"))
    for argv in (["map", "build", "--encoder", str(encoder_file), "--images", str(images), "--sequence-spacing",
                  "10", "--out", str(repo), "--force", "--quiet", "--device", "cpu"],
                 ["map", "add", str(tmp_path / "map"), "--images", str(images), "--sequence-spacing", "10",
                  "--out", str(repo), "--quiet", "--device", "cpu"],
                 ["map", "merge", str(tmp_path / "map"), str(tmp_path / "map"), "--out", str(repo), "--force"]):
        with pytest.raises(SystemExit, match=rf"{repo}: not a geoloc_ros map .*\.env"):
            geoloc(argv)
        still_there(repo, before)


def test_train_refuses_a_run_directory_of_foreign_files(tmp_path):
    """geoloc train checks --run-dir before reading any data: a folder that is not a previous run's is refused."""
    home = tmp_path / "home"
    before = foreign_folder(home, (".ssh/id_ed25519", ".profile"))
    with pytest.raises(SystemExit, match=rf"geoloc train: {home}: holds files this writer did not write"):
        geoloc(["train", "--run-dir", str(home), "--train-set", str(tmp_path / "no-such-set")])
    still_there(home, before)


def test_unreadable_images_are_skipped_counted_and_listed(tmp_path, shared_data, encoder_file, capsys):
    bad = [("images-00011.png", b""), ("images-00012.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100)]
    images = frames_folder(tmp_path, shared_data, bad=bad)
    assert build(encoder_file, images, tmp_path / "map") in (None, 0)
    err = capsys.readouterr().err
    assert "skipped 2 unreadable image(s)" in err and "images-00011.png" in err and "images-00012.png" in err
    assert len(MapDatabase.load(tmp_path / "map")) == 4
    with pytest.raises(SystemExit, match="--strict: 2 unreadable"):
        build(encoder_file, images, tmp_path / "strict", "--strict")
    assert not (tmp_path / "strict").exists()
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "images-00000.png").write_bytes(b"")
    with pytest.raises(SystemExit, match="nothing written"):
        build(encoder_file, only_bad, tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_bad_bag_frames_are_skipped_and_counted(tmp_path, shared_data, encoder_file, capsys):
    from geoloc_ros.datasets import read_image

    good = read_image(shared_data / "nordland64" / "summer" / "images-19500.png")
    frames = [(1_700_000_000_000_000_000 + i * 250_000_000, good if i != 2 else np.zeros((0, 0, 3), np.uint8),
               (60.0 + i * 1e-5, 10.0, 0.0)) for i in range(5)]
    bag = write_image_bag(tmp_path / "bag", frames)
    geoloc(["map", "build", "--encoder", str(encoder_file), "--bag", str(bag), "--image-topic", "/camera/image_raw",
            "--fix-topic", "/gnss/fix", "--out", str(tmp_path / "map"), "--quiet", "--device", "cpu"])
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().err
    assert len(MapDatabase.load(tmp_path / "map")) == 4


def test_loaded_map_survives_its_files_overwritten(tmp_path):
    db = tiny_map(n=50)
    path = db.save(tmp_path / "map")
    loaded = MapDatabase.load(path)
    want = loaded.search(db.descriptors[:3], 3)
    assert not isinstance(loaded.descriptors.base, np.memmap) and not isinstance(loaded.descriptors, np.memmap)
    # `cp other/descriptors.npy map/` truncates and rewrites the file in place: with np.load(mmap_mode="r") the
    # next search read a shorter file and the process died of SIGBUS.
    for name in (storage.DESCRIPTORS, storage.INDEX, storage.KEYFRAMES):
        with open(path / name, "r+b") as f:
            f.truncate(0)
    got = loaded.search(db.descriptors[:3], 3)
    assert [[m.keyframe.id for m in r] for r in got] == [[m.keyframe.id for m in r] for r in want]
    with pytest.raises(MapError, match="bytes, the manifest says"):
        MapDatabase.load(path)


def rewrite_manifest(path, **fields):
    manifest = json.loads((path / storage.MANIFEST).read_text())
    manifest.update(fields)
    (path / storage.MANIFEST).write_bytes(storage.manifest_bytes(manifest))  # checksums redone


WRONG_VALUES = ["abc", "", -1, 0, 1.5, True, None, [], {}, [1], {"a": 1}]
NULLABLE = ("created", "search_params", "frame")
# Values of the right type that are still wrong are refused by the check that uses them, in its own words
ALSO_NAMED = {"count": ("counts disagree",), "search_params": ("search parameters",),
              "index_factory": ("index factory",), "files": ("missing from the manifest",)}


@pytest.mark.parametrize("field", ["name", "created", "count", "synthetic_positions", "dim", "encoder_fingerprint",
                                   "metric", "index_factory", "search_params", "rerank", "crs", "frame", "files",
                                   "map_id"])
def test_manifest_fields_of_a_wrong_type_are_refused_naming_the_field(tmp_path, field):
    path = tiny_map().save(tmp_path / "map")
    good = json.loads((path / storage.MANIFEST).read_text())
    for value in WRONG_VALUES:
        rewrite_manifest(path, **{field: value})
        try:
            MapDatabase.load(path)
        except MapError as e:  # never a bare ValueError, KeyError or TypeError
            names = (repr(field), f"'{field}.", *ALSO_NAMED.get(field, ()))
            assert any(word in str(e) for word in names), (value, e)
        else:  # accepted: a value of the field's own type (a string for a string, ...)
            assert type(value) is type(good[field]) or (value is None and field in NULLABLE), value
    rewrite_manifest(path, **{**{field: good[field]}, "dim": "abc"})
    with pytest.raises(MapError, match=r"field 'dim' must be an integer > 0, got 'abc'"):
        MapDatabase.load(path)


@pytest.mark.parametrize("key", ["zone", "origin_east", "origin_north", "origin_alt"])
def test_nested_manifest_values_are_refused_naming_them(tmp_path, key):
    path = tiny_map().save(tmp_path / "map")
    manifest = json.loads((path / storage.MANIFEST).read_text())
    for value in ("abc", None, [], True):
        if key == "zone" and value == "abc":
            continue
        rewrite_manifest(path, frame={**manifest["frame"], key: value})
        with pytest.raises(MapError, match=rf"'frame\.{key}'"):
            MapDatabase.load(path)
    name = storage.DESCRIPTORS
    for entry in ({"bytes": "abc", "sha256": "0" * 64}, {"bytes": 1}, "x"):
        rewrite_manifest(path, frame=manifest["frame"], files={**manifest["files"], name: entry})
        with pytest.raises(MapError, match=rf"'files\.{name}'"):
            MapDatabase.load(path)


def test_map_ids_are_unique_and_kept_across_saves(tmp_path, shared_data, encoder_file):
    a, b = tiny_map(), tiny_map()
    assert a.map_id != b.map_id
    path = a.save(tmp_path / "a")
    assert MapDatabase.load(path).map_id == a.map_id
    images = frames_folder(tmp_path, shared_data, n=2)
    build(encoder_file, images, tmp_path / "built")
    first = MapDatabase.load(tmp_path / "built").map_id
    geoloc(["map", "add", str(tmp_path / "built"), "--images", str(images), "--sequence-spacing", "10", "--quiet",
            "--device", "cpu"])
    assert MapDatabase.load(tmp_path / "built").map_id == first  # the same map, grown
    geoloc(["map", "add", str(tmp_path / "built"), "--images", str(images), "--sequence-spacing", "10", "--quiet",
            "--device", "cpu", "--out", str(tmp_path / "fork")])
    assert MapDatabase.load(tmp_path / "fork").map_id != first  # a copy elsewhere is another map
    # Maps written before map_id existed: /siteA/map and /siteB/map get different ids, stable per directory.
    for site in ("siteA", "siteB"):
        p = tiny_map().save(tmp_path / site / "map")
        manifest = json.loads((p / storage.MANIFEST).read_text())
        del manifest["map_id"]
        (p / storage.MANIFEST).write_bytes(storage.manifest_bytes(manifest))
    ids = [MapDatabase.load(tmp_path / s / "map").map_id for s in ("siteA", "siteB")]
    assert ids[0] != ids[1] and ids[0] == MapDatabase.load(tmp_path / "siteA" / "map").map_id


def test_safe_output_dir_refuses_foreign_files(tmp_path):
    own = storage.TRAINING_OUTPUTS
    run = storage.safe_output_dir(tmp_path / "run", own)
    (run / "stage1.pt").write_bytes(b"1")
    (run / "stage2.pt.tmp").write_bytes(b"2")  # a save of ours cut short
    assert storage.safe_output_dir(run, own) == run  # a previous run's own files: fine
    home = tmp_path / "home"
    before = foreign_folder(home)
    with pytest.raises(MapError, match=r"did not write \(\.env"):
        storage.safe_output_dir(home, own)
    still_there(home, before)
