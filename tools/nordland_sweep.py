"""One run of the Nordland recipe on our tuning split, with some of its settings changed.

Trains on frames 10..16000 and tests on 16010..19200 (winter queries against the summer database, +-2 frames).
After every stage-2 epoch it prints, and saves to OUT_DIR/NAME.json, R@1 and R@5 before and after a learned
whitening fitted at that epoch, and R@1 of the whitened multi-scale descriptor (MSW@1; docs/model.md, "GPU sweep",
"Second GPU lease" and "Third GPU lease"):

    tools/venv.sh python tools/nordland_sweep.py NAME '{"arch": "RN-x2", "epochs": 24}' [OUT_DIR]

NAME labels the run; the JSON overrides NORDLAND_RECIPE (TrainConfig fields). The recipe has used pair batches
(batch 128 of 64 places x 2) since the fourth lease, and 24 epochs in bf16 since the CPU budget was met; the three
sweeps ran on the recipe before both, so to repeat one of their runs add {"batch_size": 64, "pair_weight": 0,
"bf16": false, "epochs": 16} to its overrides, keeping the run's own "epochs" where it has one. DEVICE (default
cuda) and THREADS (default 1) come from the environment. The sweep in docs/model.md started one process per line of
tools/nordland_sweep_runs.txt on one GPU, all at once, and stopped them at a deadline; the second lease's runs
are listed with their overrides in docs/benchmarks/nordland_sweep2_h200.json, the third lease's in
docs/benchmarks/nordland_sweep3_h100.json.
"""

import json
import logging
import os
import shutil
import sys
import time

import numpy as np
import torch

from geoloc_ros.model import archs, evaluation, nordland
from geoloc_ros.model.config import load_recipe
from geoloc_ros.model.training import TrainConfig, Trainer
from geoloc_ros.model.whitening import fit_learned_whitening, projection_outputs

# Wider and deeper variants of RN-nano, for this sweep only.
_NANO = archs.CUSTOM_ARCHS["RN-nano"]
for _name, _layers, _width in (("RN-x2", [2, 2, 2, 2], 32), ("RN-w48", [1, 1, 1, 1], 48), ("RN-x3", [2, 3, 3, 2], 32)):
    archs.CUSTOM_ARCHS[_name] = {**_NANO, "vision_cfg": {**_NANO["vision_cfg"], "layers": _layers, "width": _width}}


def l2(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def at_scale(encoder, s):
    """The same network reading its input resized by `s` (GeM pools any grid): for multi-scale descriptors."""
    from geoloc_ros.model.encoder import Encoder

    h, w = encoder.image_size
    return Encoder(encoder.net, {**encoder.preprocess, "image_size": [round(h * s), round(w * s)]},
                   device=encoder.device, half=False)


def season_images(frames, season):
    return nordland.read_images(nordland.split(None, frames=frames, seasons=(season,)))


def main(name, overrides, out_dir):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    recipe = {**load_recipe("nordland"), "whiten": False, "device": os.environ.get("DEVICE", "cuda"), **overrides}
    cfg = TrainConfig(**recipe)

    records = nordland.split(None, frames=nordland.TUNE_TRAIN_FRAMES)
    database = nordland.split(None, frames=nordland.TUNE_VAL_FRAMES, seasons=("summer",))
    queries = nordland.split(None, frames=nordland.TUNE_VAL_FRAMES, seasons=("winter",))
    db_images, q_images = nordland.read_images(database), nordland.read_images(queries)
    positives = evaluation.positives_by_frame(np.array([nordland.frame_number(r.path) for r in database]),
                                              np.array([nordland.frame_number(r.path) for r in queries]), 20)
    # whitening pairs: summer and winter frame of each training place, blank frames left out
    summer = season_images(nordland.TUNE_TRAIN_FRAMES, "summer")
    winter = season_images(nordland.TUNE_TRAIN_FRAMES, "winter")
    keep = [k for k in range(len(summer)) if not (nordland.is_blank(summer[k]) or nordland.is_blank(winter[k]))]
    summer, winter = [summer[k] for k in keep], [winter[k] for k in keep]

    curve, t0 = [], time.time()

    def val_fn(encoder):
        raw = evaluation.recall_at_n(encoder.encode(db_images), encoder.encode(q_images), positives)
        mu, p = fit_learned_whitening(projection_outputs(encoder, summer), projection_outputs(encoder, winter))
        d, q = (l2((projection_outputs(encoder, x) - mu) @ p) for x in (db_images, q_images))
        white = evaluation.recall_at_n(d, q, positives)
        # multi-scale test (Radenovic et al.: scales 1, 1/sqrt2, sqrt2): whitened descriptors summed, L2 again
        scaled = [encoder] + [at_scale(encoder, s) for s in (2 ** -0.5, 2 ** 0.5)]
        d_ms, q_ms = (l2(sum(l2((projection_outputs(e, x) - mu) @ p) for e in scaled)) for x in (db_images, q_images))
        multi = evaluation.recall_at_n(d_ms, q_ms, positives)
        curve.append({"epoch": len(curve) + 1, "R@1": round(raw["R@1"], 1), "R@5": round(raw["R@5"], 1),
                      "W@1": round(white["R@1"], 1), "W@5": round(white["R@5"], 1),
                      "MSW@1": round(multi["R@1"], 1), "t": round(time.time() - t0, 1)})
        print(f"VAL {name} {json.dumps(curve[-1])}", flush=True)
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump({"name": name, "overrides": overrides, "curve": curve}, f)
        return raw

    run_dir = os.path.join(out_dir, "runs", name)
    shutil.rmtree(run_dir, ignore_errors=True)
    Trainer(cfg, records, run_dir, images=nordland.read_images(records), val_fn=val_fn, progress=False).run()
    print(f"DONE {name} {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {},
         sys.argv[3] if len(sys.argv) > 3 else "sweep")
