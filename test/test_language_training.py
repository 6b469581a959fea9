"""The optional AddressCLIP stage (docs/language.md): its three losses on hand-made cases, and a short run on six
real street photos with addresses written for them: the losses fall, and the checkpoint it writes (encoder +
text tower) answers text queries with the text tower."""

from __future__ import annotations

import math

from language_fixtures import ADDRESSES, CAPTIONS
import numpy as np
import pytest
import torch

from geoloc_ros.datasets import read_image, read_sequence
from geoloc_ros.language.address_training import AddressSample, address_stage
from geoloc_ros.language.losses import contrastive, geographic_distances, geographic_matching
from geoloc_ros.model.testing import tiny_encoder


def test_contrastive_is_low_for_aligned_pairs_and_treats_equal_texts_as_positives():
    x = torch.eye(4)
    assert contrastive(x, x, temperature=0.07) < 1e-3
    assert contrastive(x, x.flip(0), temperature=0.07) > 10.0
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # two images of one address: with ids they are both right, without ids the loss must stay at log 2
    assert contrastive(same, same, text_ids=[0, 0]) == pytest.approx(math.log(2), abs=1e-5)
    assert contrastive(same, same) == pytest.approx(math.log(2), abs=1e-5)


def test_geographic_matching_is_zero_when_feature_distances_follow_geography():
    ll = torch.tensor([[45.0, 7.0], [45.0, 7.01]])
    d = geographic_distances(ll)
    assert d[0, 1] == pytest.approx(786.0, rel=0.01) and d[0, 0] == 0
    apart = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # (1 - cos) / 2 = 1 = the normalised distance
    assert geographic_matching(apart, ll) < 1e-12
    assert geographic_matching(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), ll) == pytest.approx(1.0)


def test_address_stage_losses_fall_and_its_checkpoint_answers_text_queries(shared_data, tmp_path):
    from geoloc_ros.language.text_search import text_search_for
    from geoloc_ros.language.text_tower import find_text_tower
    from geoloc_ros.mapping.builders import add_dataset, new_map_for
    from geoloc_ros.model import load_encoder

    records = read_sequence(shared_data / "toy_streets" / "database", spacing=50.0, origin=(45.0, 7.0))[:6]
    samples = [AddressSample(read_image(r.path), a, c, r.lat, r.lon) for r, a, c in zip(records, ADDRESSES, CAPTIONS)]
    enc = tiny_encoder()
    stage, history = address_stage(enc, samples, steps=8, batch_size=6, lr=1e-3)
    first, last = history[0], history[-1]
    for term in ("address", "caption", "geo", "total"):
        assert last[term] < 0.5 * first[term], (term, first, last)
    assert all(np.isfinite(h["geo"]) for h in history)

    path = stage.save(tmp_path / "run")
    trained = load_encoder(path, device="cpu")
    tower, why = find_text_tower(trained)
    assert tower is not None, why
    db = new_map_for(trained, "streets")
    add_dataset(db, trained, records, progress=False)
    answer = text_search_for([("m", db.name, db)], trained).find(ADDRESSES[2], 6)
    assert answer.method == "clip_text" and len(answer.places) == 6


def test_geoloc_train_address_csv_runs_the_stage_after_stage_2(shared_data, tmp_path, capsys):
    """`geoloc train --address-csv`: a tiny two-stage run on six street photos (their CSV also carries the
    addresses), then three address-stage steps; the run folder ends with an encoder and its text tower."""
    from language_fixtures import address_csv

    from geoloc_ros.cli import main
    from geoloc_ros.language.text_tower import find_text_tower
    from geoloc_ros.model import load_encoder

    records = read_sequence(shared_data / "toy_streets" / "database", spacing=50.0, origin=(45.0, 7.0))[:6]
    csv_path = address_csv(shared_data, records, tmp_path / "streets.csv")
    run = tmp_path / "run"
    assert main(["train", "--train-set", str(csv_path), "--run-dir", str(run), "--arch", "RN-pico", "--dim", "64",
                 "--M", "30", "--N", "1", "--L", "1", "--groups-num", "1", "--min-images-per-class", "1",
                 "--epochs-stage1", "1", "--batch-size-stage1", "6", "--epochs", "1", "--iterations-per-epoch", "1",
                 "--batch-size", "4", "--device", "cpu", "--no-progress", "--address-csv", str(csv_path),
                 "--address-steps", "3", "--address-lr", "1e-3"]) == 0
    assert "address stage: total loss" in capsys.readouterr().out
    encoder = load_encoder(run / "encoder.safetensors", device="cpu")
    tower, why = find_text_tower(encoder)
    assert tower is not None, why
    assert "address_stage" in encoder.metadata
