"""Benchmark of the training data pipeline at scale: a synthetic index of N paths (default 1 M: one tiny
real image listed N times in a CSV, on a grid of positions so CosPlace groups form; no N files are written), then
- the scan (datasets.load_dataset) and its cached re-read (loader.cached_dataset), seconds;
- CosPlace grouping of the N records, seconds;
- DataLoader throughput over the paths (decode + resize in W worker processes, batches drawn as stage 2 draws
  them), images/s at the requested input size;
- peak RSS of this process and of the workers, and the RSS each step added.
Prints one JSON object and writes it to --out. Timings depend on the CPU and on what else runs on it.

    PYTHONPATH=$PWD /work/main/tools/venv.sh python tools/bench_data.py --out bench_data.json
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
import resource
import tempfile
import time

import numpy as np

from geoloc_ros.machine import cpu_model as cpu_name
from geoloc_ros.machine import rss_bytes


def rss_mb() -> float:
    """Current resident set size of this process, MiB."""
    return rss_bytes()[0] / 2**20


def write_index(path: Path, image: Path, n: int, per_place: int = 4):
    """A CSV of `image` listed n times: places 12 m apart on a square grid near Lund, `per_place` rows each."""
    side = int(np.ceil(np.sqrt(n / per_place)))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "lat", "lon"])
        for i in range(n):
            place = i // per_place
            w.writerow([str(image), f"{55.70 + (place // side) * 1.08e-4:.7f}",
                        f"{13.19 + (place % side) * 1.9e-4:.7f}"])


def bench_loader(records, size, workers, batches_n, batch):
    from geoloc_ros.model.data import ImageBank
    from geoloc_ros.model.loader import batches

    bank = ImageBank(records, size, preload=False)
    rng = np.random.default_rng(0)
    lists = [rng.integers(0, len(records), batch).tolist() for _ in range(batches_n)]
    it = batches(bank, lists, workers)
    next(it)  # workers started, first batch in
    t0 = time.perf_counter()
    n = sum(len(b) for b in it)
    return n / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--paths", type=int, default=1_000_000)
    p.add_argument("--image", default=None, help="the image listed (default: a nordland64 frame from ../shared)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--sizes", default="64x128,512x512", help="input sizes to time the loader at")
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out", default="bench_data.json")
    args = p.parse_args()
    from geoloc_ros.model.grouping import make_groups
    from geoloc_ros.model.loader import cached_dataset

    root = Path(__file__).resolve().parents[1]
    image = Path(args.image or root.parent / "shared" / "data" / "nordland64" / "summer" / "images-00010.png")
    res = {"cpu": cpu_name(), "cores": len(__import__("os").sched_getaffinity(0)), "paths": args.paths,
           "image": str(image), "workers": args.workers, "rss_start_mb": round(rss_mb(), 1)}
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "index.csv"
        write_index(table, image, args.paths)
        t0 = time.perf_counter()
        records, _ = cached_dataset(table, Path(tmp) / "cache")
        res["scan_s"] = round(time.perf_counter() - t0, 1)
        res["rss_after_index_mb"] = round(rss_mb(), 1)
        t0 = time.perf_counter()
        again, hit = cached_dataset(table, Path(tmp) / "cache")
        res["cached_read_s"], res["cache_hit"] = round(time.perf_counter() - t0, 1), hit
        del again
        t0 = time.perf_counter()
        groups = make_groups(records, min_images_per_class=2, groups_num=8)
        res["grouping_s"] = round(time.perf_counter() - t0, 1)
        res["groups_images"] = [g.images_num for g in groups]
        res["rss_after_groups_mb"] = round(rss_mb(), 1)
        for size in args.sizes.split(","):
            h, w = (int(v) for v in size.split("x"))
            res[f"loader_images_per_s_{size}"] = round(bench_loader(records, (h, w), args.workers, args.batches,
                                                                    args.batch), 1)
        res["rss_after_loader_mb"] = round(rss_mb(), 1)
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    res["peak_rss_one_worker_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    print(json.dumps(res, indent=2))
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
