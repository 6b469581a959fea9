"""The node's side of a large map: the index and descriptors that bench/retrieval_large.py built (its work
directory, kept with --keep-work) become an on-disk map with N synthetic keyframes, which is then loaded and
searched in a fresh process through the node's own path (`localization.snapshot.load_maps`, then
`MapDatabase.search(descriptors, top_k)` as the localizer calls it). Prints and saves load time, memory (RSS:
anonymous and file-backed) and search latency.

    python -m geoloc_ros.bench.retrieval_large --keyframes 10000000 --keep-work --work-dir W ...
    python -m geoloc_ros.bench.large_map_load --work-dir W --map W/map --out-dir docs/benchmarks/retrieval_10m
"""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys
import time

import numpy as np


def _status() -> dict:
    """VmRSS, VmHWM (peak), RssAnon, RssFile of this process, bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) * 1024
    return out


def assemble(work: Path, folder: Path, factory: str, search_params: str, rerank: int, log=print) -> dict:
    """An on-disk map at `folder` from the work directory's index.faiss, index.ivfdata and descriptors.npy (hard
    linked, not copied), with synthetic keyframes on a 10 m grid."""
    import faiss

    from geoloc_ros.mapping import MapDatabase, storage

    t = time.perf_counter()
    index = faiss.read_index(str(work / storage.INDEX))  # its lists: the work directory's index.ivfdata
    descriptors = np.load(work / storage.DESCRIPTORS, mmap_mode="r")
    n = index.ntotal
    rows = np.arange(n)
    nan = np.full(n, np.nan)
    columns = {"id": rows.astype(np.int64), "label": np.array([f"kf{r:08d}" for r in rows], dtype=object),
               "stamp_ns": np.zeros(n, dtype=np.int64), "source": np.full(n, "synthetic", dtype=object),
               "synthetic": np.ones(n, dtype=bool), "x": (rows % 1000) * 10.0, "y": (rows // 1000) * 10.0,
               "z": np.zeros(n), "qx": np.zeros(n), "qy": np.zeros(n), "qz": np.zeros(n), "qw": np.ones(n)}
    from geoloc_ros.mapping.keyframe import KEYFRAME_FIELDS, TEXT_FIELDS

    for f in KEYFRAME_FIELDS:
        if f not in columns:
            columns[f] = np.full(n, "", dtype=object) if f in TEXT_FIELDS else nan.copy()
    db = MapDatabase(folder.name, descriptors.shape[1], "synthetic-clustered", None, factory, search_params,
                     index, columns, descriptors, rerank=rerank,
                     disk_files={name: work / name for name in (storage.IVFDATA, storage.DESCRIPTORS)})
    db.save(folder)
    took = time.perf_counter() - t
    log(f"[large-map] {n:,} keyframes assembled into {folder} in {took:.0f} s (files linked; keyframes.sqlite "
        f"{(folder / storage.KEYFRAMES).stat().st_size / 1e9:.2f} GB)")
    return {"assemble_s": round(took, 1), "keyframes": int(n),
            "files_bytes": {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}}


def measure(folder: Path, n_queries: int = 200, noise: float = 2.0, log=print) -> dict:
    """In this (fresh) process: load the map as the node does, then single-query searches as the localizer
    makes them; queries are noisy copies of random rows (the benchmark's revisits), right when top-1 is the row."""
    import faiss

    from geoloc_ros.localization.snapshot import load_maps

    faiss.omp_set_num_threads(1)
    before = _status()
    t = time.perf_counter()
    [entry] = load_maps([folder])
    load_s = time.perf_counter() - t
    db = entry.db
    after_load = _status()
    log(f"[large-map] loaded {db} in {load_s:.1f} s; RSS {after_load['VmRSS'] / 2**30:.2f} GiB (anonymous "
        f"{after_load['RssAnon'] / 2**30:.2f}, file-backed {after_load['RssFile'] / 2**30:.2f}), peak "
        f"{after_load['VmHWM'] / 2**30:.2f} GiB")
    rng = np.random.default_rng(7)
    rows = np.sort(rng.choice(len(db), n_queries, replace=False))
    q = np.array(db.descriptors[rows]) + rng.standard_normal((n_queries, db.dim), dtype=np.float32) * np.float32(
        noise / np.sqrt(db.dim))
    lat, top1, again = [], [], []
    for i in range(n_queries):
        s = time.perf_counter()
        matches = db.search(q[i:i + 1], 5)[0]
        lat.append((time.perf_counter() - s) * 1e3)
        top1.append(matches[0].keyframe.id if matches else -1)
    for i in range(n_queries):  # the same queries again: the rows they re-rank are in the page cache now
        s = time.perf_counter()
        db.search(q[i:i + 1], 5)
        again.append((time.perf_counter() - s) * 1e3)
    end = _status()
    result = {"load_s": round(load_s, 2), "rss_before_load": before, "rss_after_load": after_load,
              "rss_after_search": end, "search_params": db.search_params, "rerank": db.rerank,
              "queries": n_queries, "p50_ms": round(float(np.percentile(lat, 50)), 3),
              "p99_ms": round(float(np.percentile(lat, 99)), 3),
              "repeated_p50_ms": round(float(np.percentile(again, 50)), 3),
              "repeated_p99_ms": round(float(np.percentile(again, 99)), 3),
              "top1_is_the_revisited_row": round(float(np.mean(np.array(top1) == db.column("id")[rows])), 4)}
    log(f"[large-map] search (k=5, {db.search_params}, rerank {db.rerank}): p50 {result['p50_ms']:.2f} ms, p99 "
        f"{result['p99_ms']:.2f} ms over {n_queries} single queries (the same again, re-ranked rows cached: p50 "
        f"{result['repeated_p50_ms']:.2f} ms, p99 {result['repeated_p99_ms']:.2f} ms); top-1 = revisited row "
        f"{result['top1_is_the_revisited_row']:.3f}; RSS after {end['VmRSS'] / 2**30:.2f} GiB, peak "
        f"{end['VmHWM'] / 2**30:.2f} GiB")
    return result


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", required=True, help="bench/retrieval_large.py's kept work directory")
    ap.add_argument("--map", required=True, help="where to write the map (same filesystem: files are linked)")
    ap.add_argument("--factory", default="IVF1024,PQ64", help="the bench's index factory (recorded in the manifest)")
    ap.add_argument("--search-params", default="nprobe=8")
    ap.add_argument("--rerank", type=int, default=100)
    ap.add_argument("--out-dir", default="docs/benchmarks/retrieval_10m")
    ap.add_argument("--measure-only", action="store_true", help="(internal) load and search in this process")
    ap.add_argument("--map-exists", action="store_true",
                    help="measure the map an earlier run assembled (its figures are kept in the JSON)")
    a = ap.parse_args()
    if a.measure_only:
        print(json.dumps(measure(Path(a.map), log=lambda m: print(m, file=sys.stderr))))
        sys.exit(0)
    from geoloc_ros.machine import machine_info

    out = Path(a.out_dir)
    if a.map_exists:
        earlier = json.loads((out / "large_map_load.json").read_text())
        built = {k: earlier[k] for k in ("assemble_s", "keyframes", "files_bytes")}
        built["earlier_measurements"] = earlier.get("earlier_measurements", []) + [
            {k: v for k, v in earlier.items() if k not in built and k != "earlier_measurements"}]
    else:
        built = assemble(Path(a.work_dir), Path(a.map), a.factory, a.search_params, a.rerank)
    # a fresh process, so that its memory is the loaded map's and not the assembly's
    run = subprocess.run([sys.executable, "-m", "geoloc_ros.bench.large_map_load", "--work-dir", a.work_dir,
                          "--map", a.map, "--measure-only"], capture_output=True, text=True, check=True)
    print(run.stderr.strip())
    result = {"benchmark": "large_map_load", **built, **json.loads(run.stdout.strip().splitlines()[-1]),
              "machine": machine_info()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "large_map_load.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"[large-map] wrote {out / 'large_map_load.json'}")
