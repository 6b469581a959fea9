"""End-to-end latency of the geoloc_vpr node: camera publish -> ~/place_recognition, through DDS, against the
bare encode + search time of the same encoder and map measured in the same run.

    from geoloc_ros.bench.node_latency import run_node_benchmark
    r = run_node_benchmark(encoder="maps/nordland_demo", rates=(10, 30), duration_s=20, out_dir="runs/bench")

The node runs as its own `vpr_node` process (as on a robot: the camera driver and the node do not share a GIL);
this process publishes real Nordland winter frames at each rate on a fixed schedule and records when each
answer arrives. Reported per rate: latency p50/p95, sustained answers per second, dropped frames (newest wins),
and `overhead_ratio` = end-to-end p50 / bare (encode + search) p50 — the node's goal is <= 1.2 when it keeps up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import tempfile
import time

import numpy as np


def _encoder(encoder):
    """An Encoder from an Encoder, a checkpoint path / map directory, or None (the bundled encoder if present, else
    a small random one)."""
    from geoloc_ros.model import load_encoder
    from geoloc_ros.model.testing import bundled_encoder_path, tiny_encoder

    if encoder is None:
        p = bundled_encoder_path()
        return load_encoder(p, device="cpu") if p.is_file() else tiny_encoder()
    if isinstance(encoder, (str, Path)):
        return load_encoder(encoder, device="cpu")
    return encoder


def _frames(season: str, n: int):
    from geoloc_ros.datasets import read_image
    from geoloc_ros.model import nordland

    recs = nordland.split(frames=nordland.VAL_FRAMES, seasons=(season,))
    images = [(r, read_image(r.path)) for r in recs]
    return [(r, im) for r, im in images if not nordland.is_blank(im)][:n]


def run_node_benchmark(encoder=None, rates=(10, 30), duration_s: float = 20.0, out_dir="runs/bench/node",
                       quick: bool = False, map_size: int | None = None, device: str = "cpu",
                       threads: int | None = None) -> dict:
    """Measure the node at each camera rate in `rates`; returns (and writes to out_dir/node_latency.json) a dict
    with `bare` (encode/search/total ms p50/p95) and `rates` (per rate: latency p50/p95, fps, dropped, ratio).
    `threads`: torch CPU threads for both the bare measurement and the node (None: torch's default)."""
    from geoloc_ros.mapping.builders import encode_into, new_map_for
    from geoloc_ros.mapping.keyframe import keyframe_from_geoimage
    from geoloc_ros.model import save_encoder
    from geoloc_ros.replay import image_message, node_process

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if quick:
        duration_s, map_size = min(duration_s, 5.0), map_size or 100
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    enc = _encoder(encoder)
    map_frames = _frames("summer", map_size or 480)
    queries = [im for _, im in _frames("winter", 120 if not quick else 40)]
    tmp = Path(tempfile.mkdtemp(prefix="geoloc_node_bench_"))
    db = new_map_for(enc, "bench")
    encode_into(db, enc, ((keyframe_from_geoimage(r), im) for r, im in map_frames), progress=False)
    db.attach_encoder(save_encoder(enc, tmp / "encoder"))
    db.save(tmp / "map")

    # Bare compute, one frame at a time as the node sees it at camera rate (warm-up first).
    for im in queries[:3]:
        db.search(enc.encode([im]), 5)
    enc_ms, search_ms = [], []
    n_bare = 20 if quick else 60
    for im in queries[:n_bare]:
        t0 = time.perf_counter()
        d = enc.encode([im])
        t1 = time.perf_counter()
        db.search(d, 5)
        t2 = time.perf_counter()
        enc_ms.append((t1 - t0) * 1e3)
        search_ms.append((t2 - t1) * 1e3)
    total = np.add(enc_ms, search_ms)
    bare = {"encode_ms_p50": float(np.median(enc_ms)), "search_ms_p50": float(np.median(search_ms)),
            "total_ms_p50": float(np.median(total)), "total_ms_p95": float(np.percentile(total, 95))}

    per_rate = {}
    stamp = [1_700_000_000 * 10**9]
    params = [f"map_path:=['{tmp / 'map'}']", f"device:={device}", f"inference_threads:={int(threads or 0)}"]
    with node_process(params, out_dir / "vpr_node.log", name="geoloc_bench") as h:
        if not h.wait_for_subscriber(timeout=120):
            raise RuntimeError(f"vpr_node did not start; see {out_dir / 'vpr_node.log'}")
        msgs = lambda n: [image_message(queries[i % len(queries)], _next(stamp)) for i in range(n)]  # noqa: E731
        h.play(msgs(5), 5)  # warm-up: first inference allocations, DDS discovery of the result topics
        h.wait_quiet(quiet_s=1.0, timeout=20, expect=5)
        for rate in rates:
            before = dict(h.data.received)
            d0 = h.diag_values()
            batch = msgs(int(rate * duration_s))
            t0 = time.perf_counter()
            h.play(batch, rate)
            t_play = time.perf_counter() - t0
            h.wait_quiet(quiet_s=1.5, timeout=30, expect=len(before) + len(batch))
            time.sleep(0.6)  # one diagnostics period
            d1 = h.diag_values()
            sent = {int(m.header.stamp.sec) * 10**9 + int(m.header.stamp.nanosec) for m in batch}
            lat = np.array([(h.data.received[s] - h.data.published[s]) * 1e3 for s in sent if s in h.data.received])
            answered = len(lat)
            per_rate[str(rate)] = {
                "rate_hz": rate, "sent": len(batch), "answered": answered,
                "dropped": int(d1.get("frames_dropped", 0)) - int(d0.get("frames_dropped", 0)),
                "fps": answered / t_play,
                "latency_ms_p50": float(np.percentile(lat, 50)) if answered else float("nan"),
                "latency_ms_p95": float(np.percentile(lat, 95)) if answered else float("nan"),
                "node_encode_ms_p50": float(d1.get("encode_ms_p50", "nan")),
                "node_internal_ms_p50": float(d1.get("node_ms_p50", "nan")),
            }
            per_rate[str(rate)]["overhead_ratio"] = per_rate[str(rate)]["latency_ms_p50"] / bare["total_ms_p50"]
            per_rate[str(rate)]["_lat"] = lat.tolist()
    result = {"encoder": repr(enc), "map_keyframes": len(db), "device": device, "duration_s": duration_s,
              "threads": threads or "default",
              "bare": bare, "rates": per_rate}
    _plot(result, out_dir / "node_latency.png")
    for r in per_rate.values():
        r.pop("_lat")
    (out_dir / "node_latency.json").write_text(json.dumps(result, indent=1) + "\n")
    result["figure"] = str(out_dir / "node_latency.png")
    print(format_result(result))
    return result


def _next(stamp):
    stamp[0] += 1_000_000
    return stamp[0]


def format_result(r: dict) -> str:
    b = r["bare"]
    lines = [f"node latency ({r['encoder']}, map {r['map_keyframes']} keyframes, {r['device']}, threads "
             f"{r['threads']}): bare encode "
             f"{b['encode_ms_p50']:.1f} ms + search {b['search_ms_p50']:.2f} ms = {b['total_ms_p50']:.1f} ms p50",
             "| camera rate | sent | answered | dropped | answers/s | e2e p50 ms | e2e p95 ms | p50 / bare |",
             "|---|---|---|---|---|---|---|---|"]
    for x in r["rates"].values():
        lines.append(f"| {x['rate_hz']} Hz | {x['sent']} | {x['answered']} | {x['dropped']} | {x['fps']:.1f} | "
                     f"{x['latency_ms_p50']:.1f} | {x['latency_ms_p95']:.1f} | {x['overhead_ratio']:.2f} |")
    return "\n".join(lines)


def _plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, x in result["rates"].items():
        lat = np.sort(np.asarray(x["_lat"]))
        if len(lat):
            ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=f"{key} Hz ({x['dropped']} dropped)")
    ax.axvline(result["bare"]["total_ms_p50"], color="grey", ls="--", lw=0.8, label="bare encode+search p50")
    ax.set_xlabel("publish -> ~/place_recognition (ms)")
    ax.set_ylabel("fraction of answered frames")
    ax.set_title(f"geoloc_vpr end-to-end latency, {result['device']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
