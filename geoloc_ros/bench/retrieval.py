"""Map search at scale: FAISS index configurations over up to 1,000,000 keyframes of 512-d descriptors.

For each database size and index factory string: build time (train + add), memory per keyframe (the size of
the serialised index, which is what a map holds in memory for search), single-query latency p50/p99 (one query
at a time, as the node asks), and Recall@1 relative to exact search.

Data: synthetic *clustered* unit vectors, not uniform random ones (on uniform random vectors every point is
about equally far from every other, so ANN recall means nothing). Each database descriptor is a "place" drawn
around one of `n_clusters` scene types (x = normalise(c + a*g)); each query is a revisit of a random place
(q = normalise(x + b*g')), and the right answer is that place. Recall@1 = share of queries whose top-1 is that
place; "rel" divides by exact (Flat) search's Recall@1 on the same queries; "agree" is the share of queries
whose top-1 equals exact search's top-1.

FAISS runs single-threaded (omp 1): on this 2-core machine the other core is busy (the node's encoder, or
during the recorded run a training job), and OpenMP threads that wait for a busy core make both slower.
"""

from __future__ import annotations

import json
from pathlib import Path
import tempfile
import time

import numpy as np

from geoloc_ros.model import load_encoder

DEFAULT_CONFIGS = {
    # label: (index factory, largest size to build it at or None, [(search parameters, exact re-rank depth), ...])
    "Flat": ("Flat", None, [("", 0)]),
    # HNSW graph construction is ~20 s per 100k here single-threaded and grows superlinearly: 1M is left out
    "HNSW32": ("HNSW32", 100_000, [("efSearch=64", 0), ("efSearch=256", 0)]),
    "IVF1024,Flat": ("IVF1024,Flat", None, [("nprobe=16", 0), ("nprobe=32", 0)]),
    # "np": no polysemous training (minutes, and only useful with polysemous search, which maps do not use)
    "IVF1024,PQ64": ("IVF1024,PQ64np", None, [("nprobe=16", 0), ("nprobe=16", 100)]),
}


def clustered_data(n: int, dim: int, n_clusters: int, spread: float, seed: int, chunk: int = 100_000):
    """(n, dim) float32 unit vectors around `n_clusters` random unit centres."""
    import faiss

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    faiss.normalize_L2(centres)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        x[start:stop] = centres[rng.integers(0, n_clusters, stop - start)]
        x[start:stop] += rng.standard_normal((stop - start, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
        faiss.normalize_L2(x[start:stop])
    return x


def revisits(x: np.ndarray, n: int, noise: float, seed: int):
    """Queries: noisy copies of `n` random database rows; returns (queries, the rows they revisit)."""
    import faiss

    rng = np.random.default_rng(seed)
    truth = rng.choice(len(x), n, replace=False)
    q = x[truth] + rng.standard_normal((n, x.shape[1]), dtype=np.float32) * np.float32(noise / np.sqrt(x.shape[1]))
    faiss.normalize_L2(q)
    return q, truth


def _build(factory: str, x, train_size: int):
    import faiss

    index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    if not index.is_trained:
        rng = np.random.default_rng(1)
        index.train(x[np.sort(rng.choice(len(x), min(train_size, len(x)), replace=False))])
    t1 = time.perf_counter()
    for start in range(0, len(x), 100_000):
        index.add(x[start:start + 100_000])
    t2 = time.perf_counter()
    return index, {"train_s": round(t1 - t0, 2), "add_s": round(t2 - t1, 2), "build_s": round(t2 - t0, 2),
                   "bytes_per_keyframe": round(int(faiss.serialize_index(index).nbytes) / len(x), 1)}


def _search(index, params: str, rerank: int, descriptors, queries, k: int):
    """What MapDatabase.search does: the index, then (rerank > 0) exact re-scoring of its candidates against the
    stored descriptors (a memory-mapped .npy, as a loaded map holds them)."""
    from geoloc_ros.mapping.database import rerank_exact

    _, rows = index.search(queries, max(k, rerank))
    if rerank:
        _, rows = rerank_exact(queries, rows, descriptors, k)
    return rows


def _evaluate(index, params, rerank, descriptors, queries, truth, exact_top1, n_latency):
    import faiss

    if params:
        faiss.ParameterSpace().set_index_parameters(index, params)
    top1 = np.concatenate([_search(index, params, rerank, descriptors, queries[i:i + 100], 1)[:, 0]
                           for i in range(0, len(queries), 100)])
    lat = []
    for i in range(min(n_latency, len(queries))):
        s = time.perf_counter()
        _search(index, params, rerank, descriptors, queries[i:i + 1], 5)
        lat.append((time.perf_counter() - s) * 1e3)
    return top1, {"p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
                  "latency_queries": len(lat), "recall_at_1": round(float(np.mean(top1 == truth)), 4),
                  "agree_with_exact": None if exact_top1 is None else round(float(np.mean(top1 == exact_top1)), 4)}


REAL_CONFIGS = {
    # the same families, scaled to 2,400 keyframes (IVF lists ~ sqrt(N); PQ codes of 32 bytes for 256-d)
    "Flat": ("Flat", None, [("", 0)]),
    "HNSW32": ("HNSW32", None, [("efSearch=64", 0)]),
    "IVF48,Flat": ("IVF48,Flat", None, [("nprobe=4", 0), ("nprobe=12", 0)]),
    "IVF48,PQ32": ("IVF48,PQ32np", None, [("nprobe=12", 0), ("nprobe=12", 100)]),
}


def real_descriptor_recall(encoder_path=Path(__file__).resolve().parents[2] / "maps" / "nordland_demo", data=None,
                           configs=None, log=print) -> dict:
    """Recall on real descriptors: Nordland summer (all 2,400 frames) as the map, winter as the queries, encoded
    with the bundled encoder; a query is right when its top-1 lies within 2 frames (~25 m). Small (the data has
    no more), so it checks what compression does to real descriptors, not scale."""
    from geoloc_ros.datasets import list_images, read_image
    data = Path(data or Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nordland64")
    encoder = load_encoder(encoder_path, device="cpu")
    t = time.perf_counter()
    summer = encoder.encode([read_image(p) for p in list_images(data / "summer")])
    winter = encoder.encode([read_image(p) for p in list_images(data / "winter")])
    log(f"[retrieval] real: {len(summer)} summer / {len(winter)} winter Nordland frames encoded "
        f"({encoder.dim}-d) in {time.perf_counter() - t:.1f} s")
    frames = np.arange(len(summer))
    rows, exact_recall, exact_top1 = [], None, None
    with tempfile.TemporaryDirectory(prefix="geoloc-retrieval-") as tmp:
        np.save(Path(tmp) / "d.npy", summer)
        on_disk = np.load(Path(tmp) / "d.npy", mmap_mode="r")
        for label, (factory, _, variants) in (configs or REAL_CONFIGS).items():
            index, built = _build(factory, summer, train_size=len(summer))
            for params, rerank in variants:
                top1, r = _evaluate(index, params, rerank, on_disk, winter, frames, exact_top1, 200)
                r["recall_at_1"] = round(float(np.mean(np.abs(top1 - frames) <= 2)), 4)
                if factory == "Flat":
                    exact_top1, exact_recall = top1, r["recall_at_1"]
                    r["agree_with_exact"] = 1.0
                r = {**built, **r, "relative_recall_at_1": round(r["recall_at_1"] / exact_recall, 4)}
                rows.append({"keyframes": len(summer), "config": label, "factory": factory, "search_params": params,
                             "rerank": rerank, **r})
    return {"encoder": str(encoder_path), "encoder_fingerprint": encoder.fingerprint, "dim": encoder.dim,
            "data": "nordland64 summer (map) vs winter (queries), all 2,400 frames; right = within 2 frames",
            "rows": rows}


def run_retrieval_benchmark(sizes=(100_000, 1_000_000), dim: int = 512, out_dir="docs/benchmarks", quick=False,
                            configs: dict | None = None, n_queries: int = 1000, n_latency: int = 200,
                            n_clusters: int = 1000, spread: float = 0.5, noise: float = 2.0, threads: int = 1,
                            real_encoder=Path(__file__).resolve().parents[2] / "maps" / "nordland_demo",
                            log=print) -> dict:
    """Run the benchmark, print a table, write `out_dir`/retrieval.json (and retrieval.md). `quick`: one small size
    (20,000) for a smoke run. `real_encoder`: also measure recall on real Nordland descriptors with this encoder
    (skipped when None or missing). Returns the result dict."""
    import faiss

    if quick:
        sizes, n_queries, n_latency = (20_000,), 200, 50
    configs = dict(configs or DEFAULT_CONFIGS)
    threads_before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        return _run(sizes, dim, out_dir, configs, n_queries, n_latency, n_clusters, spread, noise, threads,
                    None if quick else real_encoder, log)
    finally:
        faiss.omp_set_num_threads(threads_before)


def _run(sizes, dim, out_dir, configs, n_queries, n_latency, n_clusters, spread, noise, threads, real_encoder,
         log) -> dict:
    rows = []
    started = time.perf_counter()
    for n in sizes:
        t = time.perf_counter()
        x = clustered_data(int(n), dim, n_clusters, spread, seed=0)
        queries, truth = revisits(x, n_queries, noise, seed=1)
        log(f"[retrieval] {n:,} x {dim} clustered unit vectors in {time.perf_counter() - t:.1f} s; "
            f"{n_queries} revisit queries")
        exact_top1 = exact_recall = None
        with tempfile.TemporaryDirectory(prefix="geoloc-retrieval-") as tmp:
            np.save(Path(tmp) / "descriptors.npy", x)
            on_disk = np.load(Path(tmp) / "descriptors.npy", mmap_mode="r")
            for label, (factory, max_n, variants) in configs.items():
                if max_n is not None and n > max_n:
                    log(f"[retrieval]   {label}: not built at {n:,} (only up to {max_n:,})")
                    continue
                index, built = _build(factory, x, train_size=64 * 1024)
                for params, rerank in variants:
                    # exact search at 1M takes ~0.3 s a query: fewer timed queries keep the run short
                    nl = min(n_latency, 30) if factory == "Flat" and n > 200_000 else n_latency
                    top1, r = _evaluate(index, params, rerank, on_disk, queries, truth, exact_top1, nl)
                    if factory == "Flat":
                        exact_top1, exact_recall = top1, r["recall_at_1"]
                        r["agree_with_exact"] = 1.0
                    r = {**built, **r, "relative_recall_at_1": round(r["recall_at_1"] / exact_recall, 4)}
                    rows.append({"keyframes": int(n), "config": label, "factory": factory, "search_params": params,
                                 "rerank": rerank, **r})
                    log(f"[retrieval]   {factory:16s} {params or '-':12s} rerank {rerank:3d}  build "
                        f"{r['build_s']:6.1f} s  {r['bytes_per_keyframe']:7.1f} B/kf  p50 {r['p50_ms']:8.3f} ms  "
                        f"p99 {r['p99_ms']:8.3f} ms  R@1 {r['recall_at_1']:.4f} (rel {r['relative_recall_at_1']})")
                del index
            del on_disk
        del x
    result = {
        "benchmark": "retrieval",
        "dim": dim, "sizes": [int(s) for s in sizes], "queries": n_queries, "faiss_threads": int(threads),
        "data": {"kind": "synthetic clustered unit vectors", "n_clusters": n_clusters, "spread": spread,
                 "query_noise": noise, "note": "database x = normalise(c + spread*g/sqrt(dim)), query = "
                                               "normalise(x + noise*g'/sqrt(dim)); truth = x's row"},
        "memory": "bytes per keyframe = serialised FAISS index size / keyframes (what search holds in memory; a "
                  "map also keeps float32 descriptors on disk, memory-mapped, which re-ranking reads: rerank rows "
                  "touch `rerank` descriptor rows per query, from the page cache in this run)",
        "rows": rows, "total_s": round(time.perf_counter() - started, 1),
        "machine": _machine(),
    }
    real = None
    if real_encoder and Path(real_encoder).exists():
        real = real_descriptor_recall(real_encoder, log=log)
        result["real_descriptors"] = real
    table = format_table(rows)
    if real:
        table += "\n\nReal descriptors (" + real["data"] + f", {real['dim']}-d):\n\n" + format_table(real["rows"])
    result["total_s"] = round(time.perf_counter() - started, 1)
    log(table)
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "retrieval.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "retrieval.md").write_text(table + "\n")
        log(f"[retrieval] wrote {out / 'retrieval.json'} and {out / 'retrieval.md'}")
    return result


def format_table(rows) -> str:
    lines = ["| keyframes | index | search | exact re-rank | build s | bytes/keyframe | p50 ms | p99 ms | R@1 | "
             "rel. to exact | top-1 = exact |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['keyframes']:,} | {r['factory']} | {r['search_params'] or '-'} | {r['rerank'] or '-'} | "
                     f"{r['build_s']:.1f} | "
                     f"{r['bytes_per_keyframe']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['recall_at_1']:.3f} | {r['relative_recall_at_1']:.3f} | {r['agree_with_exact']:.3f} |")
    return "\n".join(lines)


def _machine() -> dict:
    try:
        from geoloc_ros.machine import machine_info

        return machine_info()
    except Exception:  # noqa: BLE001 - the shared helper is optional here
        import os
        import platform

        return {"cores": os.cpu_count(), "os": platform.platform()}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out-dir", default="docs/benchmarks")
    a = ap.parse_args()
    run_retrieval_benchmark(sizes=tuple(int(s) for s in a.sizes.split(",")), out_dir=a.out_dir, quick=a.quick)
