"""Training speed: seconds per stage-2 step of the bundled recipe (geoloc_ros/model/recipes/nordland.yaml: RN-nano
at 64x128, pair batches of 128 images) per precision and memory layout, on the real `Trainer`.

Each variant runs two stage-2 epochs of `steps` iterations on the nordland64 training stretch and times the second
(the first warms up oneDNN's kernels). Stage 1 is skipped: the image-to-text loss gets random text features,
which cost the same as learned ones.
"""

from __future__ import annotations

import tempfile

from geoloc_ros.model import nordland as N
from geoloc_ros.model.encoder import native_bf16, resolve_device

VARIANTS = {"fp32 NCHW": {"bf16": False, "channels_last": False},
            "fp32 channels-last": {"bf16": False, "channels_last": True},
            "bf16 channels-last": {"bf16": True, "channels_last": True}}


def run_train_benchmark(steps: int = 20, quick: bool = False, device: str = "cpu", log=print) -> dict:
    import torch

    from geoloc_ros.model.config import load_recipe
    from geoloc_ros.model.training import TrainConfig, Trainer

    steps = 3 if quick else int(steps)
    frames = (10, 4800) if quick else N.TRAIN_FRAMES
    records = N.split(frames=frames)
    if not records:
        return {"error": "not measured: ../shared/data/nordland64 is missing"}
    images = N.read_images(records)
    recipe = {**load_recipe("nordland"), "epochs": 2, "iterations_per_epoch": steps, "whiten": False, "device": device}
    out = {"recipe": "nordland.yaml", "arch": recipe["arch"], "image_size": recipe["image_size"],
           "batch_size": recipe["batch_size"], "steps_timed": steps, "frames": list(frames),
           "threads": torch.get_num_threads(), "variants": {}}
    log(f"  stage-2 steps: {recipe['arch']} {recipe['image_size']}, batch {recipe['batch_size']}, {steps} steps "
        f"timed, {torch.get_num_threads()} threads, {device}")
    for label, opts in VARIANTS.items():
        if opts["bf16"] and not native_bf16(resolve_device(device)):
            out["variants"][label] = {"error": f"no native bf16 on {device}"}
            continue
        with tempfile.TemporaryDirectory() as run_dir:
            t = Trainer(TrainConfig(**{**recipe, **opts}), records, run_dir, images=images, progress=False)
            text = [torch.randn(len(g), t.arch["embed_dim"], device=t.device) for g in t.groups]
            history = t.stage2(text)
        s = history[-1]["seconds"] / steps
        out["variants"][label] = {"s_per_step": round(s, 3), "images_per_s": round(recipe["batch_size"] / s, 1),
                                  "precision": t.precision}
        log(f"    {label}: {s:.3f} s/step, {recipe['batch_size'] / s:.0f} images/s")
    base = out["variants"]["fp32 NCHW"].get("s_per_step")
    for r in out["variants"].values():
        if "s_per_step" in r:
            r["speedup_vs_fp32_nchw"] = round(base / r["s_per_step"], 2)
    return out
