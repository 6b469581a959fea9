"""geoloc_ros.model.loader: training through a real torch DataLoader with 2 worker processes that decode real
Nordland frames from their paths, resume, and the cached scan of a training set. Nothing mocked."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from geoloc_ros.model.loader import PathImages, batches, cached_dataset
from geoloc_ros.model.testing import nordland_records

torch.set_num_threads(1)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_nordland = pytest.mark.skipif(not (DATA / "nordland64" / "summer").is_dir(),
                                    reason="../shared/data/nordland64 not present")


def _trainer(run_dir, records, workers):
    from geoloc_ros.model.training import TrainConfig, Trainer

    cfg = TrainConfig(arch="RN-pico", dim=32, image_size=[32, 64], M=10, N=2, groups_num=1, min_images_per_class=2,
                      epochs_stage1=2, batch_size_stage1=16, epochs=2, iterations_per_epoch=6, batch_size=16,
                      lr=2e-3, pair_weight=1.0, same_class_cutmix=0.5, device="cpu", data_workers=workers,
                      skip_blank=False)
    return Trainer(cfg, records, run_dir, images=None, progress=False)


@needs_nordland
def test_dataloader_workers_give_the_in_memory_batches_and_training_resumes_to_the_same_weights(tmp_path):
    from geoloc_ros.model import load_encoder
    from geoloc_ros.model.data import ImageBank

    recs = nordland_records((10, 200))
    lists = [[0, 5, 7], [3, 3, 1, 39]]
    memory = [b.numpy() for b in batches(ImageBank(recs, (32, 64)), lists, workers=0)]
    from_disk = [b.numpy() for b in batches(ImageBank(recs, (32, 64), preload=False), lists, workers=2)]
    assert all(np.array_equal(a, b) for a, b in zip(memory, from_disk, strict=True))  # same decode, same order

    t = _trainer(tmp_path / "run", recs, workers=2)
    assert t.bank.array is None  # nothing decoded up front: the loop holds only the path index
    t.run()
    stage2 = [h["loss"] for h in t.history if h["stage"] == 2]
    assert len(stage2) == 2 and all(np.isfinite(stage2))
    assert stage2[-1] < stage2[0]  # it learns
    full = load_encoder(tmp_path / "run" / "encoder.safetensors").fingerprint

    interrupted = _trainer(tmp_path / "cut", recs, workers=2)
    interrupted.cfg.epochs = 1
    interrupted.run()
    resumed = _trainer(tmp_path / "cut", recs, workers=2)  # same command again: resumes at stage-2 epoch 2
    resumed.run()
    assert load_encoder(tmp_path / "cut" / "encoder.safetensors").fingerprint == full


@needs_nordland
def test_the_scan_of_a_training_set_is_cached_and_rescanned_when_it_changes(tmp_path):
    frames = sorted((DATA / "nordland64" / "summer").glob("*.png"))[:4]
    table = tmp_path / "train.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([["image", "lat", "lon"]] + [[str(p), 63.0 + i * 1e-4, 10.0] for i, p in
                                                             enumerate(frames)])
    cache = tmp_path / "cache"
    first, hit = cached_dataset(table, cache)
    assert not hit and len(first) == 4 and len(list(cache.glob("*.pkl"))) == 1
    again, hit = cached_dataset(table, cache)
    assert hit and [(r.path, r.utm_east, r.utm_north) for r in again] == [(r.path, r.utm_east, r.utm_north)
                                                                        for r in first]  # read, not scanned
    with open(table, "a", newline="") as f:
        csv.writer(f).writerow([str(frames[0]), 63.1, 10.0])
    changed, hit = cached_dataset(table, cache)
    assert not hit and len(changed) == 5  # a changed set (size / mtime) is scanned again
    assert not list(cache.glob("*.tmp"))  # written atomically: no temporary left behind
    assert PathImages([r.path for r in changed], (32, 64))[4].shape == (32, 64, 3)


@needs_nordland
def test_a_training_set_reached_through_another_link_is_scanned_under_that_path(tmp_path):
    """Two checkouts link one shared data folder; the first link is deleted: the second's scan must not hand out
    the first link's (now dangling) paths."""
    folder = tmp_path / "data"
    folder.mkdir()
    for i, p in enumerate(sorted((DATA / "nordland64" / "summer").glob("*.png"))[:3]):
        (folder / f"@{500000 + 10 * i}@7000000@33@W@63.1@10.0@@@@@@@.png").write_bytes(p.read_bytes())  # VG names
    first_link, second_link, cache = tmp_path / "a", tmp_path / "b", tmp_path / "cache"
    first_link.symlink_to(folder)
    second_link.symlink_to(folder)
    cached_dataset(first_link, cache)
    first_link.unlink()
    records, hit = cached_dataset(second_link, cache)
    assert not hit and all(Path(r.path).is_file() and str(r.path).startswith(str(second_link)) for r in records)


@needs_nordland
def test_geoloc_train_with_workers_reads_paths_and_reuses_its_cached_index(tmp_path):
    """`geoloc train --data-workers 2 --index-cache DIR` from a CSV of real frames; the second run (same command:
    it resumes, finding the run done) reads the cached scan instead of scanning."""
    from geoloc_ros.cli import main
    from geoloc_ros.model import load_encoder

    table = tmp_path / "train.csv"
    with open(table, "w", newline="") as f:  # 12 places x 2 seasons, 10 m apart
        rows = [[str(DATA / "nordland64" / s / f"images-{10 * (i + 1):05d}.png"), 63.0 + i * 9e-5, 10.0]
                for i in range(12) for s in ("summer", "winter")]
        csv.writer(f).writerows([["image", "lat", "lon"]] + rows)
    cache, run = tmp_path / "cache", tmp_path / "run"
    argv = ["train", "--train-set", str(table), "--index-cache", str(cache), "--run-dir", str(run), "--arch",
            "RN-pico", "--dim", "32", "--image-size", "32x64", "--N", "2", "--groups-num", "1",
            "--min-images-per-class", "2", "--epochs-stage1", "1", "--epochs", "1", "--iterations-per-epoch", "2",
            "--batch-size", "8", "--data-workers", "2", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    index = list(cache.glob("*.pkl"))
    assert len(index) == 1
    stamp = index[0].stat().st_mtime_ns
    first = load_encoder(run / "encoder.safetensors").fingerprint
    assert main(argv) == 0
    assert index[0].stat().st_mtime_ns == stamp  # read, not rewritten
    assert load_encoder(run / "encoder.safetensors").fingerprint == first
