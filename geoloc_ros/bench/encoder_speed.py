"""Encoder speed per backend: ms/image at batch 1 and 16, images/s, peak memory, and the ratio to PyTorch eager fp32
measured in the same run.

Timing covers what a caller pays: `encode(list of camera images)`, i.e. resize + normalise + network + L2-norm, on
real street images (~614x480 JPEG, ../shared/data/toy_streets). Backends are interleaved call by call (round r
runs every backend once), so a load change on a shared machine hits all of them alike and the ratios hold even
when the absolute times do not.
"""

from __future__ import annotations

import gc
import time

import numpy as np

from geoloc_ros.deploy import open_encoder
from geoloc_ros.machine import reset_peak_rss, rss_bytes
from geoloc_ros.model import build_encoder, load_encoder
from geoloc_ros.model.encoder import cpu_has_bf16

# label -> open_encoder arguments. "torch" is the baseline every ratio divides by; "auto" (what the node and
# open_encoder's callers get by default) leads every table.
CPU_VARIANTS = {
    "auto": {"backend": "auto"},
    "torch": {"backend": "torch"},
    "torch-tuned": {"backend": "torch-tuned"},                      # its defaults: fp32, cores-1 threads
    "torch-tuned bf16": {"backend": "torch-tuned", "precision": "bf16"},
    "torch-tuned bf16 all cores": {"backend": "torch-tuned", "precision": "bf16", "threads": "all"},
    "torch-tuned fp32 all cores": {"backend": "torch-tuned", "precision": "fp32", "threads": "all"},
    "onnxruntime": {"backend": "onnxruntime"},
}
CUDA_VARIANTS = {
    "auto": {"backend": "auto"},
    "torch": {"backend": "torch", "half": False},
    "torch-tuned fp16": {"backend": "torch-tuned", "precision": "fp16"},
    "torch-tuned bf16": {"backend": "torch-tuned", "precision": "bf16"},
    "onnxruntime": {"backend": "onnxruntime"},
    "tensorrt": {"backend": "tensorrt"},
}
FULL_MODELS = ("bundled", "RN50", "ViT-B-32", "ViT-B-16")
QUICK_MODELS = ("bundled", "ViT-nano")


def bench_images(n: int = 16) -> list[np.ndarray]:
    """Real camera-sized images (toy_streets), cycled to `n`; random ones only if the data folder is missing."""
    from geoloc_ros.model.testing import SHARED_DATA

    files = sorted((SHARED_DATA / "toy_streets").rglob("*.jpg"))
    if files:
        from geoloc_ros.datasets import read_image

        imgs = [read_image(f) for f in files[:n]]
        return [imgs[i % len(imgs)] for i in range(n)]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(n)]


def model_encoder(spec: str):
    """(name, fp32 CPU Encoder, what it is) for "bundled" (the trained encoder, or a random RN-nano in a checkout
    without it) or an architecture name with random weights (timing does not depend on the weights)."""
    from geoloc_ros.model.testing import bundled_encoder_path

    if spec == "bundled":
        p = bundled_encoder_path()
        if p.is_file():
            enc = load_encoder(p, device="cpu", half=False)
            return f"bundled ({enc.arch['name']})", enc, f"trained, {p.relative_to(p.parents[2])}"
        spec = "RN-nano"
    enc = build_encoder(spec, device="cpu", pretrained=None)
    return spec, enc, "random weights"


def _variants(device: str, only=None) -> dict:
    if device == "cuda":
        v = {k: dict(a) for k, a in CUDA_VARIANTS.items()}
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            v.pop("onnxruntime")
        from geoloc_ros.deploy.tensorrt_backend import available

        if not available()[0]:
            v.pop("tensorrt")
    else:
        v = {k: dict(a) for k, a in CPU_VARIANTS.items()}
        if not cpu_has_bf16():
            for label in ("torch-tuned bf16", "torch-tuned bf16 all cores"):
                v.pop(label)                      # emulated bf16 is slower than fp32: nothing to measure
    import torch

    for args in v.values():
        if args.get("threads") == "all":
            args["threads"] = torch.get_num_threads()
    if only:
        v = {k: a for k, a in v.items() if k in ("torch", "auto") or a["backend"] in only or k in only}
    return v


def _sync(device):
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _open_variants(ref, device, only, images, log):
    """Open every variant of `ref`: ({label: encoder}, {label: row with its opening cost and cosine to fp32})."""
    import torch

    encs, rows = {}, {}
    ref_desc = ref.encode(images[:4])
    for label, args in _variants(device, only).items():
        args = dict(args)
        gc.collect()
        before, _ = rss_bytes()
        t0 = time.perf_counter()
        try:
            enc = open_encoder(ref, device=device, **args)
        except Exception as e:  # noqa: BLE001 - one backend failing is a result, not the end of the suite
            rows[label] = {"error": f"{type(e).__name__}: {e}"}
            log(f"    {label}: not measured ({type(e).__name__}: {e})")
            continue
        d = enc.encode(images[:4])                 # warm-up (lazy init, oneDNN primitives) + accuracy check
        after, _ = rss_bytes()
        encs[label] = enc
        rows[label] = {"backend": args["backend"], "precision": getattr(enc, "precision", "fp32"),
                       "threads": getattr(enc, "threads", None) or torch.get_num_threads(),
                       "open_s": round(time.perf_counter() - t0, 2), "load_rss_mb": round((after - before) / 2**20, 1),
                       "cosine_min_vs_fp32": round(float((d * ref_desc).sum(1).min()), 6), "runs": {}}
        if args["backend"] == "auto":
            rows[label].update(chose=enc.backend_choice, reason=enc.backend_reason)
    return encs, rows


def bench_model(spec: str, device: str = "cpu", batches=(1, 16), repeats: dict | None = None, only=None,
                images=None, log=print) -> dict:
    """All variants of one model, interleaved. Returns {"model", "input", "dim", "variants": {label: {...}}}."""
    import torch


    # a GPU call takes milliseconds: more repeats there cost nothing and steady the median
    repeats = repeats or ({1: 20, 16: 10} if device == "cuda" else {1: 5, 16: 2})
    images = images or bench_images(max(batches))
    name, ref, what = model_encoder(spec)
    h, w = ref.image_size
    log(f"  {name}: {ref.arch['name']} {h}x{w} -> {ref.dim}-d ({what})")
    encs, rows = _open_variants(ref, device, only, images, log)
    for b in batches:
        batch = images[:b]
        # warm-up at this batch size. On a CPU a batch of 2 is enough; on a GPU the first call at a new input shape
        # pays for cuDNN's algorithm search and the allocator, so it must be the full batch (the first GPU figures
        # at batch 16 timed that search: docs/benchmarks.md)
        for label, enc in encs.items():
            enc.encode(batch if device == "cuda" else batch[:min(b, 2)], batch_size=b)
        times = {label: [] for label in encs}
        peak = {label: 0 for label in encs}
        gpu_peak = {label: 0 for label in encs}
        n_rep = repeats.get(b, 2)
        b1 = rows.get("torch", {}).get("runs", {}).get("1")
        if b > 1 and b1 and b1["ms_per_image"] * b > 15000:
            n_rep = 1             # a batch takes > 15 s (ViT-B-16 at 512): one round keeps the suite short
        for _ in range(n_rep):
            for label, enc in encs.items():
                cur, _ = rss_bytes()
                reset_peak_rss()
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                _sync(device)
                t = time.perf_counter()
                enc.encode(batch, batch_size=b)
                _sync(device)
                times[label].append(time.perf_counter() - t)
                peak[label] = max(peak[label], rss_bytes()[1] - cur)
                if device == "cuda":
                    gpu_peak[label] = max(gpu_peak[label], torch.cuda.max_memory_allocated())
        base = float(np.median(times["torch"])) if times.get("torch") else None
        for label in encs:
            med = float(np.median(times[label]))
            # spread: per-image times and, rounds being interleaved, the ratio to eager within each round
            rounds = np.asarray(times["torch"]) / np.asarray(times[label]) if base else None
            run = {"ms_per_image": round(1000 * med / b, 2), "images_per_s": round(b / med, 2),
                   "ms_per_batch_min": round(1000 * min(times[label]), 1), "repeats": len(times[label]),
                   "ms_per_image_min_max": [round(1000 * min(times[label]) / b, 2),
                                            round(1000 * max(times[label]) / b, 2)],
                   "ratio_per_round_min_max": None if rounds is None else [round(float(rounds.min()), 2),
                                                                           round(float(rounds.max()), 2)],
                   "peak_rss_during_mb": round(peak[label] / 2**20, 1),
                   "ratio_vs_torch": round(base / med, 2) if base else None}
            if device == "cuda" and getattr(encs[label], "backend", "torch") != "onnxruntime":
                run["gpu_peak_allocated_mb"] = round(gpu_peak[label] / 2**20, 1)
            rows[label]["runs"][str(b)] = run
        log("    batch %-3d " % b + "  ".join(f"{k}: {rows[k]['runs'][str(b)]['ms_per_image']:.1f} ms/img "
                                              f"(x{rows[k]['runs'][str(b)]['ratio_vs_torch']})" for k in encs))
    _, peak_total = rss_bytes()
    del encs
    gc.collect()
    return {"model": name, "arch": ref.arch["name"], "weights": what, "input": [h, w], "dim": ref.dim,
            "device": device, "variants": rows, "process_peak_rss_mb": round(peak_total / 2**20, 1)}


def run_encoder_benchmark(models=None, device: str = "cpu", batches=(1, 16), quick: bool = False, only=None,
                          log=print, repeats_b1: int | None = None) -> dict:
    """Every model in `models` (default: bundled, RN50, ViT-B-32, ViT-B-16; quick: bundled, ViT-nano).
    `repeats_b1`: timed calls at batch 1 (default 5, quick 3; on CUDA 20); larger batches get a fifth (>= 2)."""
    models = list(models or (QUICK_MODELS if quick else FULL_MODELS))
    repeats = {1: 3, 16: 1} if quick else {1: 5, 16: 2}
    if device == "cuda" and not quick:
        repeats = {1: 20, 16: 10}
    if repeats_b1:
        repeats = {1: int(repeats_b1), 16: max(2, int(repeats_b1) // 5)}
    t = time.perf_counter()
    out = {"device": device, "batches": list(batches), "repeats": {str(k): v for k, v in repeats.items()},
           "timing": "encode() of real ~614x480 images: resize + normalise + network + L2-norm; median over repeats; "
                     "backends interleaved call by call", "models": []}
    for spec in models:
        out["models"].append(bench_model(spec, device=device, batches=batches, repeats=repeats, only=only, log=log))
    out["seconds"] = round(time.perf_counter() - t, 1)
    return out
