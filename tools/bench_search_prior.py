"""Held-out loop-closure precision and recall with and without the search prior (docs/node.md, "Search prior"):
winter queries against a summer map of the same stretch, replayed through the Localizer; with the prior, each
frame carries a fix at its position plus Gaussian noise of --sigma metres (seeded), with that covariance. Prints a
table and saves OUT/search_prior.json.

    python tools/bench_search_prior.py --frames 21610:24000 --sigma 20 --out docs/benchmarks/search_prior
"""

from __future__ import annotations

import argparse
from argparse import Namespace
from dataclasses import replace
import json
import math
from pathlib import Path
import subprocess

import numpy as np


def main():
    from geoloc_ros.cli import eval_closures
    from geoloc_ros.localization import closure_eval as E
    from geoloc_ros.node import params

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", default="maps/nordland_demo/encoder.safetensors")
    ap.add_argument("--data", default="../shared/data/nordland64")
    ap.add_argument("--frames", default="21610:24000", metavar="LO:HI")
    ap.add_argument("--sigma", type=float, default=20.0, help="fix noise and reported standard deviation (m)")
    ap.add_argument("--out", type=Path, default=Path("runs/search_prior"))
    ap.add_argument("--work", type=Path, default=Path("runs/search_prior_work"))
    args = ap.parse_args()
    lo, hi = (int(v) for v in args.frames.split(":"))
    data = Path(args.data)
    ns = Namespace(encoder=args.encoder, database=str(data / "summer"), queries=str(data / "winter"),
                   sequence_spacing=10.0, out=args.work, device="cpu", param=[])
    base = eval_closures._settings(ns)
    map_dir = eval_closures._build_map(ns, "prior", lo, hi)
    records = eval_closures._records(ns.queries, 10.0, lo, hi)
    rng = np.random.default_rng(0)
    fixes = []
    for r in records:  # a fix sigma metres off at random, in degrees near this latitude
        de, dn = rng.normal(0.0, args.sigma, 2)
        lat = r.lat + dn / 111_320.0
        lon = r.lon + de / (111_320.0 * math.cos(math.radians(r.lat)))
        fixes.append(((lat, lon, math.nan), (args.sigma**2, 0.0, args.sigma**2)))
    results = []
    for mode in ("sequence", "consecutive"):
        for prior in ("none", "fix"):
            s = replace(base, map_path=[str(map_dir)], consistency_mode=mode, search_prior=prior)
            rows = E.replay(params.localizer_config(s), records, blank_threshold=s.blank_threshold,
                            fixes=fixes if prior == "fix" else None)
            summary = E.summarise(rows, base.loop_closure_min_confidence)
            op = summary["operating_point"]
            results.append({"mode": mode, "search_prior": prior, "frames": summary["curve"]["frames"],
                            "published": op["published"], "precision": op["precision"], "recall": op["recall"]})
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    lines = [f"frames {lo}..{hi}, fix noise and sigma {args.sigma:g} m; {cpu}",
             "| mode | search_prior | frames | published at default | precision | recall |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['mode']} | {r['search_prior']} | {r['frames']} | {r['published']} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} |" for r in results]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search_prior.json").write_text(json.dumps({"frames": [lo, hi], "sigma_m": args.sigma, "cpu": cpu,
                                                            "results": results}, indent=1, default=float) + "\n")
    print(f"wrote {args.out / 'search_prior.json'}")


if __name__ == "__main__":
    main()
