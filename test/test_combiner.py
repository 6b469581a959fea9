"""Scene descriptions fused into the descriptor: the feature combiner, its training, its checkpoint, `geoloc
describe` against a loopback chat-completions server (no model runs here: the server answers what the test tells
it), maps built with descriptions, `geoloc eval` and the node on such a map.

The descriptions of Nordland frames are `colour_layout`'s: a deterministic stand-in for an LVLM's, derived from
each frame alone (its grid of tones), not a model's words."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
import subprocess
import sys

from language_fixtures import chat_server
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
STRETCH = (16010, 16600)  # the tuning stretch of the bundled encoder (model/nordland.py), never trained on


def geoloc(*args, timeout=600):
    """`geoloc ARGS` in a process of its own, as a user runs it."""
    code = "import sys; from geoloc_ros.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_combiner_image_only_path_and_descriptions_change_the_descriptor():
    import torch

    from geoloc_ros.model.combiner import FeatureCombiner, tokenize

    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    texts = ["a red church by the quay", "", None, "a red church by the quay and a tall tree"]
    untrained = FeatureCombiner(image_dim=16, out_dim=16, width=32).eval()
    with torch.no_grad():  # the fusion starts at zero: an untrained combiner gives the image descriptor itself
        assert torch.allclose(untrained(image, *tokenize(texts)), image, atol=1e-6)
    combiner = FeatureCombiner(image_dim=16, out_dim=8, width=32).eval()
    torch.nn.init.normal_(combiner.project.weight, std=0.5)  # as if trained
    with torch.no_grad():
        fused = combiner(image, *tokenize(texts))
        alone = combiner(image, *tokenize([""] * 4))
    assert torch.allclose(fused.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.isfinite(fused).all()
    assert torch.allclose(fused[1], alone[1], atol=1e-6) and torch.allclose(fused[2], alone[2], atol=1e-6)
    plain = torch.nn.functional.normalize(image @ combiner.image_map.T, dim=1)
    assert torch.allclose(alone, plain, atol=1e-6)  # the image-only path is the plain image descriptor
    assert not torch.allclose(fused[0], alone[0], atol=1e-4)  # a description moves the descriptor
    assert not torch.allclose(fused[0], fused[3], atol=1e-4)  # and which description matters


@pytest.fixture(scope="module")
def nordland_pairs(shared_data):
    """(records, images, descriptions) of the stretch, both seasons."""
    from geoloc_ros.language.describe import colour_layout
    from geoloc_ros.model.nordland import read_images, split

    records = split(shared_data / "nordland64", frames=STRETCH)
    images = read_images(records)
    return records, images, [colour_layout(i).text for i in images]


@pytest.fixture(scope="module")
def fused_checkpoint(nordland_pairs, tmp_path_factory):
    """A combiner trained briefly on the bundled encoder: (folder with encoder + combiner, losses)."""
    from geoloc_ros.model import load_encoder, save_encoder
    from geoloc_ros.model.combiner_training import CombinerSettings, train_combiner
    from geoloc_ros.model.fused_encoder import save_combiner

    records, images, texts = nordland_pairs
    base = load_encoder(REPO / "maps" / "nordland_demo", device="cpu", half=False, combiner=False)
    combiner, losses = train_combiner(base.encode(images), texts, records,
                                      CombinerSettings(out_dim=128, steps=80, batch_size=32, lr=1e-3))
    folder = tmp_path_factory.mktemp("fused")
    save_encoder(base, folder)
    save_combiner(combiner, folder, base, training={"steps": 80})
    return folder, losses


def test_combiner_trains_with_cosface_over_cosplace_groups_and_round_trips(fused_checkpoint, nordland_pairs):
    from geoloc_ros.model import CheckpointError, load_encoder
    from geoloc_ros.model.fused_encoder import COMBINER_NAME, FusedEncoder, load_combiner
    from geoloc_ros.model.testing import tiny_encoder

    folder, losses = fused_checkpoint
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])  # the loss falls
    enc = load_encoder(folder, device="cpu", half=False)
    assert isinstance(enc, FusedEncoder) and enc.dim == 128
    assert enc.fingerprint != enc.base.fingerprint
    _, images, texts = nordland_pairs
    with_text = enc.encode(images[:6], texts=texts[:6])
    alone = enc.encode(images[:6])
    assert with_text.shape == (6, 128) and np.allclose(np.linalg.norm(with_text, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(with_text, alone, atol=1e-4)
    again = load_encoder(folder, device="cpu", half=False)  # the round trip gives the same descriptors
    assert again.fingerprint == enc.fingerprint
    assert np.allclose(again.encode(images[:6], texts=texts[:6]), with_text, atol=1e-6)
    with pytest.raises(CheckpointError, match="not on this one"):  # a combiner belongs to its encoder
        load_combiner(folder / COMBINER_NAME, tiny_encoder())


def test_a_damaged_combiner_is_refused_with_the_reason(fused_checkpoint, tmp_path):
    import shutil

    from geoloc_ros.model import CheckpointError, load_encoder
    from geoloc_ros.model.fused_encoder import COMBINER_NAME

    folder, _ = fused_checkpoint
    for name in ("encoder.safetensors", COMBINER_NAME):
        shutil.copy(folder / name, tmp_path / name)
    data = bytearray((tmp_path / COMBINER_NAME).read_bytes())
    (tmp_path / COMBINER_NAME).write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match=COMBINER_NAME):
        load_encoder(tmp_path, device="cpu")


def _frames_folder(records, folder: Path, season: str, n: int) -> Path:
    """The first n frames of one season copied into `folder` (a sequence folder)."""
    import shutil

    out = folder / season
    out.mkdir(parents=True)
    for r in [r for r in records if f"/{season}/" in str(r.path)][:n]:
        shutil.copy(r.path, out / r.path.name)
    return out


def test_geoloc_describe_against_a_loopback_server_keeps_going_and_resumes(nordland_pairs, tmp_path):
    records, _, _ = nordland_pairs
    folder = _frames_folder(records, tmp_path, "winter", 5)
    out = tmp_path / "descriptions.csv"
    answers = [(0.0, "A single track through pine forest,   with a   red hut on the left."),
               (0.0, ""),  # empty: no description, reason counted
               (0.0, "x" * 200_000),  # enormous: cut to a bounded size
               (3.0, "too late"),  # slower than the timeout: retryable
               (0.0, "Open fields with a fence along the track.")]
    with chat_server(answers) as server:
        run = geoloc("describe", "--images", folder, "--out", out, "--lmm-url", server.url, "--lmm-timeout", 1,
                     "--lmm-retries", 0, timeout=120)
        assert run.returncode == 0, run.stderr
        first_requests = len(server.requests)
    rows = list(csv.DictReader(open(out)))
    assert [r["image"] for r in rows] == sorted(p.name for p in folder.iterdir())
    by = {r["image"]: r for r in rows}
    names = sorted(by)
    assert by[names[0]]["caption"] == "A single track through pine forest, with a red hut on the left."
    assert by[names[1]]["caption"] == "" and by[names[1]]["reason"] == "empty answer"
    assert 0 < len(by[names[2]]["caption"]) <= 400
    assert by[names[3]]["caption"] == "" and "within 1 s" in by[names[3]]["reason"]
    assert by[names[4]]["caption"].startswith("Open fields")
    assert first_requests == 5
    # Resume: only the timed-out image is asked again.
    with chat_server([(0.0, "A level crossing with a white gate.")]) as server:
        run = geoloc("describe", "--images", folder, "--out", out, "--lmm-url", server.url, timeout=120)
        assert run.returncode == 0, run.stderr
        assert len(server.requests) == 1
        assert "1 described, 4 kept" in run.stdout
    rows = {r["image"]: r for r in csv.DictReader(open(out))}
    assert rows[names[3]]["caption"] == "A level crossing with a white gate."
    assert rows[names[1]]["reason"] == "empty answer"  # a permanent answer is kept, not asked again


def test_maps_store_descriptions_and_the_fused_encoder_runs_in_eval_and_the_node(fused_checkpoint, nordland_pairs,
                                                                                 tmp_path, graph):
    from geoloc_ros.mapping.database import MapDatabase
    from geoloc_ros.replay import image_message

    folder, _ = fused_checkpoint
    records, _, _ = nordland_pairs
    summer = _frames_folder(records, tmp_path, "summer", 30)
    winter = _frames_folder(records, tmp_path, "winter", 30)
    for season in (summer, winter):  # one CSV per folder: labels are paths relative to it
        run = geoloc("describe", "--images", season, "--out", tmp_path / f"{season.name}.csv", "--colour-layout")
        assert run.returncode == 0, run.stderr
    mapdir = tmp_path / "map"
    run = geoloc("map", "build", "--encoder", folder, "--images", summer, "--sequence-spacing", 10,
                 "--descriptions", tmp_path / "summer.csv", "--out", mapdir)
    assert run.returncode == 0, run.stderr + run.stdout
    db = MapDatabase.load(mapdir)
    assert db.dim == 128 and (mapdir / "combiner.safetensors").is_file()
    assert all(k.caption for k in db.keyframes())  # the map stores the descriptions it was built with

    run = geoloc("eval", "--encoder", mapdir, "--database", summer, "--queries", winter, "--sequence-spacing", 10,
                 "--database-descriptions", tmp_path / "summer.csv", "--query-descriptions", tmp_path / "winter.csv",
                 "--json", tmp_path / "eval.json")
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "eval.json").read_text())
    methods = result["protocols"]["25 m"]
    assert any(m.endswith("with descriptions") for m in methods) and any(m.endswith("image only") for m in methods)

    start, harness = graph
    # The node asks a slow loopback "model server" for descriptions on a thread of its own: frames are answered
    # while it waits, and later frames fuse the description it gave.
    with chat_server([(2.0, "A single track through pine forest with a red hut on the left.")]) as server:
        node = start({"map_path": [str(mapdir)], "encoder_backend": "torch", "lmm_url": server.url,
                      "lmm_timeout_s": 10.0, "describe_period_s": 0.2, "describe_max_age_s": 1000.0})
        assert node.active
        assert harness.wait_for_subscriber()
        from geoloc_ros.datasets import read_image

        frames = sorted(winter.iterdir())
        answered = harness.data.results["place_recognition"]
        for i, path in enumerate(frames * 3):  # one at a time: the node keeps only the newest of a burst
            harness.publish(image_message(read_image(path), stamp=(i + 1) * 100_000_000))
            assert harness.wait_for(lambda n=i + 1: len(answered) >= n, timeout=60)
            if int(harness.diag_values().get("descriptions_used", 0)) >= 2:
                break
        assert all(msg.candidates and np.isfinite(msg.candidates[0].similarity) for msg in answered.values())
        values = harness.diag_values()
        assert int(values["descriptions"]) >= 1 and int(values["descriptions_used"]) >= 2, {
            k: v for k, v in values.items() if k.startswith("descri")}
        assert server.requests and "image_url" in json.dumps(server.requests[0]["body"])
