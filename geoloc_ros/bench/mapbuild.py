"""Map build throughput: Nordland frames (files on disk) -> decode -> encode -> MapDatabase, images/s per backend.

Uses the mapping package's own builder (`geoloc_ros.mapping.builders.add_dataset`, what `geoloc map build` runs),
so the figure includes image decoding and index insertion; if that builder is missing it measures encoding of the
decoded frames only and says so in the result.
"""

from __future__ import annotations

import time

from geoloc_ros.bench.encoder_speed import model_encoder
from geoloc_ros.deploy import open_encoder
from geoloc_ros.model.encoder import cpu_has_bf16


def default_variants() -> dict:
    return {"torch": {"backend": "torch"},
            "torch-tuned " + ("bf16" if cpu_has_bf16() else "fp32"):
                {"backend": "torch-tuned", "precision": "bf16" if cpu_has_bf16() else "fp32"},
            "onnxruntime": {"backend": "onnxruntime"}}


def run_mapbuild_benchmark(variants: dict | None = None, n_images: int = 1200, quick: bool = False,
                           batch_size: int = 64, log=print) -> dict:
    """`variants`: label -> open_encoder arguments (default: torch, torch-tuned, onnxruntime)."""
    from geoloc_ros.model.testing import nordland_records

    n = 200 if quick else int(n_images)
    records = nordland_records((19210, 24000), seasons=("summer",))[:n]
    if not records:
        return {"error": "not measured: ../shared/data/nordland64 is missing"}
    name, ref, what = model_encoder("bundled")
    try:
        from geoloc_ros.mapping.builders import add_dataset, new_map_for
        mode = "geoloc_ros.mapping.builders.add_dataset: read PNG + encode + MapDatabase.add (Flat index)"
    except ImportError as e:
        add_dataset = None
        mode = f"encode throughput only (mapping builder not importable: {e})"
    out = {"model": name, "weights": what, "images": len(records), "batch_size": batch_size, "mode": mode,
           "backends": {}}
    log(f"  map build: {len(records)} Nordland summer frames, {name}, {mode}")
    for label, args in (variants or default_variants()).items():
        enc = open_encoder(ref, device="cpu", **args)
        enc.encode([__import__("numpy").zeros((32, 64, 3), "uint8")])     # warm-up
        t = time.perf_counter()
        if add_dataset is not None:
            db = new_map_for(enc, "bench")
            add_dataset(db, enc, records, source="bench", batch_size=batch_size, progress=False)
            count = len(records)
        else:
            from geoloc_ros.model.nordland import read_images

            count = len(enc.encode(read_images(records), batch_size=batch_size))
        dt = time.perf_counter() - t
        out["backends"][label] = {"seconds": round(dt, 2), "images_per_s": round(count / dt, 1)}
        log(f"    {label}: {count / dt:.1f} images/s ({dt:.1f} s)")
    base = out["backends"].get("torch", {}).get("images_per_s")
    for r in out["backends"].values():
        r["ratio_vs_torch"] = round(r["images_per_s"] / base, 2) if base else None
    return out
