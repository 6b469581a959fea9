"""The bundled encoder's report, in one run: nordland64 validation stretch (frames 19210..24000, never trained on),
winter queries against the summer database, Recall@1/5/10(/20) with +-2 frames tolerance (and the 25 m radius on
the synthetic 10 m/frame positions), for
  (a) normalised raw pixels (the classic SeqSLAM-style single-image baseline; whole-image and 8x8-patch
      normalisation),
  (b) the same encoder untrained (the exact initial weights of the training run: same config, same seed),
  (c) the trained encoder.

    .venv/bin/python -m geoloc_ros.model.nordland_report [--encoder maps/nordland_demo] [--json out.json]
    geoloc eval --nordland-report                          (the same)
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from geoloc_ros.model import evaluation as E
from geoloc_ros.model import load_encoder
from geoloc_ros.model import nordland as N


def report(encoder_path="maps/nordland_demo", data=None, device="cpu", frames=None, tolerance=None) -> dict:
    from geoloc_ros.model.training import TrainConfig, untrained_encoder

    frames = tuple(frames or N.VAL_FRAMES)
    tolerance = N.FRAME_TOLERANCE if tolerance is None else tolerance
    db = N.split(data, frames=frames, seasons=("summer",))
    q = N.split(data, frames=frames, seasons=("winter",))
    dbi, qi = N.read_images(db), N.read_images(q)
    dbf = np.array([N.frame_number(r.path) for r in db])
    qf = np.array([N.frame_number(r.path) for r in q])
    protocols = {f"+-{tolerance} frames": E.positives_by_frame(dbf, qf, tolerance * 10),
                 "25 m (synthetic)": E.positives_by_radius([(r.utm_east, r.utm_north) for r in db],
                                                           [(r.utm_east, r.utm_north) for r in q], 25.0)}

    trained = load_encoder(encoder_path, device=device)
    cfg_dict = trained.metadata.get("config")
    methods = {
        "(a) raw pixels, normalised": lambda imgs: E.raw_pixel_descriptors(imgs),
        "(a') raw pixels, SeqSLAM 8x8 patch-norm": lambda imgs: E.raw_pixel_descriptors(imgs, patch=8),
    }
    if cfg_dict:
        fields = TrainConfig.__dataclass_fields__
        cfg = TrainConfig(**{k: v for k, v in cfg_dict.items() if k in fields})
        untrained = untrained_encoder(cfg, device=device)
        methods[f"(b) {trained.arch['name']} untrained"] = untrained.encode
    methods[f"(c) {trained.arch['name']} trained"] = trained.encode

    descs = {name: (fn(dbi), fn(qi)) for name, fn in methods.items()}
    results = {name: {p: E.recall_at_n(d, qd, pos) for p, pos in protocols.items()} for name, (d, qd) in
               descs.items()}
    main_p = f"+-{tolerance} frames"
    table = (f"nordland64 validation stretch, frames {frames[0]:05d}..{frames[1]:05d}: {len(q)} winter queries vs "
             f"{len(db)} summer database images, positives within {main_p}\n"
             + E.format_table({n: r[main_p] for n, r in results.items()}, (1, 5, 10, 20))
             + "\n\nsame, positives within 25 m (synthetic positions, 10 m per frame)\n"
             + E.format_table({n: r["25 m (synthetic)"] for n, r in results.items()}, (1, 5, 10, 20)))
    raw = results["(a) raw pixels, normalised"][main_p]["R@1"]
    mine = results[f"(c) {trained.arch['name']} trained"][main_p]["R@1"]
    table += f"\n\ntrained R@1 / raw-pixel R@1 = {mine / raw:.2f}x" if raw else ""
    return {"table": table, "results": results, "frames": list(frames), "frame_tolerance": tolerance,
            "encoder": str(encoder_path), "fingerprint": trained.fingerprint,
            "blank_frames": {"database": int(sum(N.is_blank(i) for i in dbi)),
                             "queries": int(sum(N.is_blank(i) for i in qi))}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default="maps/nordland_demo")
    p.add_argument("--data", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    r = report(a.encoder, a.data, a.device)
    print(r["table"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
