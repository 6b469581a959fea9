"""Retrieval at city scale: N synthetic clustered 512-d keyframes (the clustered data of bench/retrieval.py), made
chunk by chunk so that the float32 descriptors never sit in memory whole, indexed the way large maps are built
(mapping/large.py: an IVF index trained once on a sample, filled part by part, the parts' inverted lists merged
into one on-disk file), and searched through that on-disk index.

    python -m geoloc_ros.bench.retrieval_large --keyframes 10000000 --out-dir docs/benchmarks/retrieval_10m
    geoloc bench retrieval --keyframes 10000000

Exact ground truth (each query's top-1 over all N) is computed chunk by chunk by brute force. Reported per search
setting: p50/p99 latency of single-query searches (k=5), Recall@1 and its ratio to exact search's, bytes per
keyframe held by the index (codes + 8-byte ids + list slack, i.e. the on-disk list file over N, plus the
quantisers), build time (train, fill parts, merge) and the process's peak RSS. Re-ranking rows read the float32
descriptors from the map's descriptors.npy on disk (memory-mapped), as a map whose descriptors stay on disk does;
those bytes are on disk, not in the index, and are reported separately.

FAISS runs single-threaded (omp 1), as in bench/retrieval.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import time

import numpy as np

from geoloc_ros.machine import machine_info, rss_bytes

CHUNK = 100_000


def _centres(dim, n_clusters, seed):
    import faiss

    c = np.random.default_rng(seed).standard_normal((n_clusters, dim), dtype=np.float32)
    faiss.normalize_L2(c)
    return c


def chunk_of(i: int, n: int, centres, spread: float, seed: int, chunk: int = CHUNK) -> np.ndarray:
    """Rows [i*chunk, min(n, (i+1)*chunk)) of the clustered data: each chunk from its own random stream, so any
    chunk can be made again without the others."""
    import faiss

    rows = min(n, (i + 1) * chunk) - i * chunk
    rng = np.random.default_rng([seed, i])
    x = centres[rng.integers(0, len(centres), rows)]
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(spread / np.sqrt(x.shape[1]))
    faiss.normalize_L2(x)
    return x


def run_large_retrieval(keyframes: int = 10_000_000, dim: int = 512, out_dir="docs/benchmarks/retrieval_10m",
                        work_dir=None, factory: str = "IVF1024,PQ64", nprobes=(4, 8), reranks=(0, 100, 200, 300, 500),
                        part_size: int = 1_000_000, train_size: int = 65_536, n_queries: int = 1000,
                        n_latency: int = 200, n_clusters: int = 1000, spread: float = 0.5, noise: float = 2.0,
                        keep_work: bool = False, reuse_descriptors=None, log=print) -> dict:
    import faiss

    from geoloc_ros.mapping import large

    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    n = int(keyframes)
    work = Path(work_dir or Path(out_dir) / "work")
    work.mkdir(parents=True, exist_ok=True)
    centres = _centres(dim, n_clusters, seed=0)
    chunks = (n + CHUNK - 1) // CHUNK
    rng = np.random.default_rng(1)
    truth = np.sort(rng.choice(n, n_queries, replace=False))
    sample_rows = np.sort(rng.choice(n, min(train_size, n), replace=False))
    q_noise = rng.standard_normal((n_queries, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))

    # pass 1: the descriptors, chunk by chunk, onto disk; the query rows and the training sample kept
    t = time.perf_counter()
    desc_path = work / "descriptors.npy"
    if reuse_descriptors:  # the same data a previous run wrote (same seeds): linked, not made again
        if Path(reuse_descriptors).resolve() != desc_path.resolve():
            desc_path.unlink(missing_ok=True)
            os.link(reuse_descriptors, desc_path)
        offset = _data_offset(desc_path, n, dim)
        with open(desc_path, "rb") as f:
            queries = np.stack([_read_rows(f, offset, r, 1, dim)[0] for r in truth])
            sample = np.stack([_read_rows(f, offset, r, 1, dim)[0] for r in sample_rows])
    else:
        header = {"descr": "<f4", "fortran_order": False, "shape": (n, dim)}
        queries = np.empty((n_queries, dim), dtype=np.float32)
        sample = np.empty((len(sample_rows), dim), dtype=np.float32)
        with open(desc_path, "wb") as f:
            np.lib.format.write_array_header_2_0(f, header)
            for i in range(chunks):
                x = chunk_of(i, n, centres, spread, 0)
                lo, hi = i * CHUNK, i * CHUNK + len(x)
                for rows, dest in ((truth, queries), (sample_rows, sample)):
                    a, b = np.searchsorted(rows, [lo, hi])
                    dest[a:b] = x[rows[a:b] - lo]
                f.write(x.tobytes())
    queries += q_noise
    faiss.normalize_L2(queries)
    gen_s = time.perf_counter() - t
    log(f"[retrieval-large] {n:,} x {dim} clustered unit vectors {'linked' if reuse_descriptors else 'written'} "
        f"chunk by chunk in {gen_s:.0f} s ({desc_path.stat().st_size / 1e9:.1f} GB); {n_queries} revisit queries; "
        f"peak RSS {rss_bytes()[1] / 2**30:.2f} GiB")
    anon = _Peak()

    # train once on the sample
    t = time.perf_counter()
    trained = large.train_empty(factory, dim, sample)
    del sample
    train_s = time.perf_counter() - t
    faiss.write_index(trained, str(work / "trained.faiss"))
    log(f"[retrieval-large] {factory} trained on {len(sample_rows):,} rows in {train_s:.0f} s")

    # pass 2: each part filled from the trained index and written; exact top-1 accumulated chunk by chunk
    offset = _data_offset(desc_path, n, dim)
    reader = open(desc_path, "rb")  # read, not memory-mapped: pages of the file never count as this process's
    best_sim = np.full(n_queries, -np.inf, dtype=np.float32)
    best_row = np.full(n_queries, -1, dtype=np.int64)
    fill_s = exact_s = 0.0
    part_paths = []
    for first in range(0, n, part_size):
        stop = min(n, first + part_size)
        part = faiss.clone_index(trained)
        for lo in range(first, stop, CHUNK):
            x = _read_rows(reader, offset, lo, min(stop, lo + CHUNK) - lo, dim)
            t = time.perf_counter()
            s, r = faiss.knn(queries, x, 1, metric=faiss.METRIC_INNER_PRODUCT)
            better = s[:, 0] > best_sim
            best_sim[better], best_row[better] = s[better, 0], r[better, 0] + lo
            exact_s += time.perf_counter() - t
            t = time.perf_counter()
            part.add_with_ids(x, np.arange(lo, lo + len(x), dtype=np.int64))
            fill_s += time.perf_counter() - t
        path = work / f"part-{len(part_paths):03d}.faiss"
        faiss.write_index(part, str(path))
        part_paths.append(path)
        del part
        anon.sample()
        log(f"[retrieval-large]   part {len(part_paths)}: rows {first:,}..{stop - 1:,} (fill {fill_s:.0f} s, "
            f"exact {exact_s:.0f} s so far)")
    reader.close()
    t = time.perf_counter()
    index = large.merge_onto_disk(trained, part_paths, work / "index.ivfdata")
    merge_s = time.perf_counter() - t
    for p in part_paths:
        p.unlink()
    faiss.write_index(index, str(work / "index.faiss"))
    anon.sample()
    exact_top1 = best_row
    exact_recall = float(np.mean(exact_top1 == truth))
    list_bytes = (work / "index.ivfdata").stat().st_size
    index_bytes = (work / "index.faiss").stat().st_size
    bpk = round((list_bytes + index_bytes) / n, 1)
    build = {"train_s": round(train_s, 1), "fill_parts_s": round(fill_s, 1), "merge_s": round(merge_s, 1),
             "build_s": round(train_s + fill_s + merge_s, 1), "parts": len(part_paths), "part_size": part_size,
             "train_size": len(sample_rows)}
    log(f"[retrieval-large] built: train {train_s:.0f} s, fill {fill_s:.0f} s, merge {merge_s:.0f} s; lists "
        f"{list_bytes / 1e6:.0f} MB + quantisers {index_bytes / 1e6:.1f} MB = {bpk} B/keyframe; exact R@1 "
        f"{exact_recall:.4f} ({exact_s:.0f} s of brute force)")

    np.save(work / "exact_top1.npy", exact_top1)
    rows = search_rows(index, desc_path, queries, truth, exact_top1, nprobes, reranks, n_latency,
                       {"keyframes": n, "factory": factory, "bytes_per_keyframe": bpk, **build}, log)
    result = {"benchmark": "retrieval_large", "keyframes": n, "dim": dim, "queries": n_queries, "faiss_threads": 1,
              "factory": factory, "exact_recall_at_1": round(exact_recall, 4),
              "exact_ground_truth_s": round(exact_s, 1),
              "generate_s": round(gen_s, 1), "build": build, "index_bytes": index_bytes, "list_bytes": list_bytes,
              "peak_rss_bytes": rss_bytes()[1], "peak_anonymous_rss_bytes": anon.sample(),
              "rss_note": "peak_rss_bytes: VmHWM of the process (descriptors are read, not mapped, while building; "
                          "re-ranking maps them and counts the pages it touched); peak_anonymous_rss_bytes: the "
                          "largest RssAnon sampled after each part, after the merge and at the end",
              "descriptors_reused": bool(reuse_descriptors),
              "data": {"kind": "synthetic clustered unit vectors (bench/retrieval.py's model, made chunk by chunk)",
                       "n_clusters": n_clusters, "spread": spread, "query_noise": noise},
              "rows": rows, "total_s": round(time.perf_counter() - started, 1), "machine": machine_info()}
    table = format_table(rows, result)
    log(table)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrieval_large.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "retrieval_large.md").write_text(table + "\n")
    log(f"[retrieval-large] wrote {out / 'retrieval_large.json'} and {out / 'retrieval_large.md'}")
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _data_offset(path: Path, n: int, dim: int) -> int:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                           np.lib.format.read_array_header_2_0)(f)
        if tuple(shape) != (n, dim) or dtype != np.float32:
            raise ValueError(f"{path}: holds {dtype} {shape}, not float32 ({n}, {dim})")
        return f.tell()


def _read_rows(f, offset: int, first: int, count: int, dim: int) -> np.ndarray:
    f.seek(offset + int(first) * dim * 4)
    return np.fromfile(f, dtype=np.float32, count=count * dim).reshape(count, dim)


class _Peak:
    """The largest anonymous RSS (heap: index, buffers; not file pages) seen at the sampled moments."""

    def __init__(self):
        self.peak = 0
        self.sample()

    def sample(self) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)
        return self.peak


def search_rows(index, desc_path, queries, truth, exact_top1, nprobes, reranks, n_latency, fields, log) -> list:
    """One row per (nprobe, rerank): single-query latency and Recall@1 through the on-disk index, re-ranking
    against the memory-mapped descriptors as MapDatabase.search does."""
    from geoloc_ros.mapping import large
    from geoloc_ros.mapping.rows import rerank_exact
    from geoloc_ros.mapping.storage import random_access

    exact_recall = float(np.mean(exact_top1 == truth))
    stored = random_access(np.load(desc_path, mmap_mode="r"))  # as an on-disk map holds them
    ivf = large.ivf_of(index)
    rows = []
    for nprobe in nprobes:
        ivf.nprobe = int(nprobe)
        for rerank in reranks:
            def search(q, k, rerank=rerank):
                _, cand = index.search(q, max(k, rerank))
                return rerank_exact(q, cand, stored, k)[1] if rerank else cand
            top1 = np.concatenate([search(queries[i:i + 50], 1)[:, 0] for i in range(0, len(queries), 50)])
            lat = []
            for i in range(min(n_latency, len(queries))):
                s = time.perf_counter()
                search(queries[i:i + 1], 5)
                lat.append((time.perf_counter() - s) * 1e3)
            recall = float(np.mean(top1 == truth))
            row = {**fields, "search_params": f"nprobe={nprobe}", "rerank": rerank,
                   "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
                   "latency_queries": len(lat), "recall_at_1": round(recall, 4),
                   "relative_recall_at_1": round(recall / exact_recall, 4),
                   "agree_with_exact": round(float(np.mean(top1 == exact_top1)), 4),
                   "descriptor_bytes_on_disk_per_keyframe": 4 * stored.shape[1] if rerank else 0}
            rows.append(row)
            log(f"[retrieval-large]   nprobe {nprobe:3d} rerank {rerank:3d}: p50 {row['p50_ms']:.3f} ms  p99 "
                f"{row['p99_ms']:.3f} ms  R@1 {recall:.4f} (rel {row['relative_recall_at_1']}, top-1 = exact "
                f"{row['agree_with_exact']})")
    return rows


def search_again(work_dir, out_dir, nprobes, reranks, n_latency: int = 200, log=print) -> dict:
    """More search settings over the index a kept run built (--keep-work): the same queries (made again from
    the same seeds), the exact ground truth that run saved (or computed again chunk by chunk); the rows join
    that run's JSON."""
    import faiss

    faiss.omp_set_num_threads(1)
    work, out = Path(work_dir), Path(out_dir)
    result = json.loads((out / "retrieval_large.json").read_text())
    n, dim, n_queries = result["keyframes"], result["dim"], result["queries"]
    rng = np.random.default_rng(1)
    truth = np.sort(rng.choice(n, n_queries, replace=False))
    rng.choice(n, min(result["build"]["train_size"], n), replace=False)  # the training sample's draw
    q_noise = rng.standard_normal((n_queries, dim), dtype=np.float32) * np.float32(
        result["data"]["query_noise"] / np.sqrt(dim))
    desc_path = work / "descriptors.npy"
    stored = np.load(desc_path, mmap_mode="r")
    queries = np.array(stored[truth]) + q_noise
    faiss.normalize_L2(queries)
    if (work / "exact_top1.npy").is_file():
        exact_top1 = np.load(work / "exact_top1.npy")
    else:
        best_sim = np.full(n_queries, -np.inf, dtype=np.float32)
        exact_top1 = np.full(n_queries, -1, dtype=np.int64)
        for lo in range(0, n, CHUNK):
            s, r = faiss.knn(queries, np.array(stored[lo:lo + CHUNK]), 1, metric=faiss.METRIC_INNER_PRODUCT)
            better = s[:, 0] > best_sim
            best_sim[better], exact_top1[better] = s[better, 0], r[better, 0] + lo
        np.save(work / "exact_top1.npy", exact_top1)
    if round(float(np.mean(exact_top1 == truth)), 4) != result["exact_recall_at_1"]:
        raise RuntimeError("the queries made again do not give the first run's exact recall")
    index = faiss.read_index(str(work / "index.faiss"))
    old = result["rows"][0]
    fields = {k: old[k] for k in ("keyframes", "factory", "bytes_per_keyframe", "train_s", "fill_parts_s",
                                  "merge_s", "build_s", "parts", "part_size", "train_size")}
    new = search_rows(index, desc_path, queries, truth, exact_top1, nprobes, reranks, n_latency, fields, log)
    done = {(r["search_params"], r["rerank"]) for r in new}
    result["rows"] = [r for r in result["rows"] if (r["search_params"], r["rerank"]) not in done] + new
    result.setdefault("search_again", []).append({"machine": machine_info(), "settings": sorted(done)})
    table = format_table(result["rows"], result)
    log(table)
    (out / "retrieval_large.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "retrieval_large.md").write_text(table + "\n")
    return result


def format_table(rows, result) -> str:
    lines = [f"{result['keyframes']:,} keyframes, {result['dim']}-d, {result['factory']} trained on "
             f"{result['build']['train_size']:,}, filled in {result['build']['parts']} parts, lists on disk; "
             f"exact R@1 {result['exact_recall_at_1']:.3f}; build {result['build']['build_s']:.0f} s; peak RSS "
             f"{result['peak_rss_bytes'] / 2**30:.2f} GiB (anonymous "
             f"{result.get('peak_anonymous_rss_bytes', 0) / 2**30:.2f} GiB); CPU {result['machine'].get('cpu')}",
             "",
             "| search | exact re-rank | bytes/keyframe (index) | descriptor bytes on disk | p50 ms | p99 ms | R@1 | "
             "rel. to exact | top-1 = exact |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['search_params']} | {r['rerank'] or '-'} | {r['bytes_per_keyframe']:.1f} | "
                     f"{r['descriptor_bytes_on_disk_per_keyframe'] or '-'} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['recall_at_1']:.3f} | {r['relative_recall_at_1']:.3f} | {r['agree_with_exact']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keyframes", type=int, default=10_000_000)
    ap.add_argument("--factory", default="IVF1024,PQ64")
    ap.add_argument("--nprobe", default="4,8")
    ap.add_argument("--rerank", default="0,100,200,300,500")
    ap.add_argument("--part-size", type=int, default=1_000_000)
    ap.add_argument("--train-size", type=int, default=65_536)
    ap.add_argument("--out-dir", default="docs/benchmarks/retrieval_10m")
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--keep-work", action="store_true", help="keep descriptors.npy and the index (for a map)")
    ap.add_argument("--reuse-descriptors", default=None, metavar="NPY",
                    help="descriptors.npy of a kept run with the same --keyframes (hard-linked, not made again)")
    ap.add_argument("--search-again", action="store_true",
                    help="only search the index a --keep-work run left in --work-dir, with these settings")
    a = ap.parse_args()
    if a.search_again:
        search_again(a.work_dir, a.out_dir, [int(v) for v in a.nprobe.split(",")],
                     [int(v) for v in a.rerank.split(",")])
        raise SystemExit(0)
    run_large_retrieval(a.keyframes, factory=a.factory, nprobes=[int(v) for v in a.nprobe.split(",")],
                        reranks=[int(v) for v in a.rerank.split(",")], part_size=a.part_size,
                        train_size=a.train_size, out_dir=a.out_dir, work_dir=a.work_dir, keep_work=a.keep_work,
                        reuse_descriptors=a.reuse_descriptors)
