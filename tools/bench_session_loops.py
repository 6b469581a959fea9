"""Session-map loop closures on a route driven once and on one driven twice (docs/node.md, "Session map: loops on a
route driven once"): the Localizer (what vpr_node runs, without DDS) on the session map alone, one frame per
second, every parameter at its default (and, for comparison, with the revisit test off). Prints a table and saves
OUT/session_loops.json.

    python tools/bench_session_loops.py --encoder maps/nordland_demo/encoder.safetensors \\
        --data ../shared/data/nordland64 --frames 19210:24000 --out docs/benchmarks/session_loops

Places: the frame numbers on a line, 10 m apart (the project's convention for Nordland); a closure is false when its
keyframe's place is more than 25 m from the frame's. Odometry, where used: x = the place; the second lap jumps back
to the start, which odometry counts as travelled path."""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
import json
from pathlib import Path
import platform
import subprocess
import time

OFF = {"session_loop_margin": 0.0, "session_loop_support": 0}


def run(job):
    import torch

    from geoloc_ros.localization import closure_eval as E
    from geoloc_ros.model.nordland import frame_number
    from geoloc_ros.node import params

    torch.set_num_threads(1)
    label, encoder, data, lo, hi, laps, with_odometry, overrides = job
    s = params.localizer_config(params.settings(**{"device": "cpu", "encoder_path": encoder, **overrides}))
    route = []
    for season in laps:
        files = sorted((Path(data) / season).glob("*.png"))
        route += [(f, float(frame_number(f))) for f in files if lo <= frame_number(f) <= hi]
    t0 = time.time()
    rows = E.replay_session(s, route, [(p, 0.0, 0.0) for _, p in route] if with_odometry else None)
    lap1 = len(route) // len(laps)
    pub = [r for r in rows if r["closure"] and r["closure"]["confidence"] >= s.loop_closure_min_confidence]
    false = [r for r in pub if r["closure"]["error_m"] > 25]
    second = [r for r in rows if r["frame"] >= lap1] if len(laps) > 1 else []
    right = [r for r in pub if r["frame"] >= lap1 and r["closure"]["error_m"] <= 25]
    return {"run": label, "frames": len(rows), "published": len(pub), "false": len(false),
            "false_per_1000": 1000 * len(false) / max(len(rows), 1),
            "lap2_frames": len(second), "lap2_right": len(right),
            "lap2_recall": len(right) / len(second) if second else None,
            "false_frames_back": sorted(r["closure"]["frames_back"] for r in false), "seconds": time.time() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", default="maps/nordland_demo/encoder.safetensors")
    ap.add_argument("--data", default="../shared/data/nordland64")
    ap.add_argument("--frames", default="19210:24000", help="LO:HI frame numbers of the stretch")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/session_loops"))
    args = ap.parse_args()
    lo, hi = (int(v) for v in args.frames.split(":"))
    jobs = []
    for odo in (False, True):
        tag = "odometry" if odo else "no odometry"
        jobs += [(f"once winter, {tag}", ("winter",), odo, {}), (f"once summer, {tag}", ("summer",), odo, {}),
                 (f"two laps winter+summer, {tag}", ("winter", "summer"), odo, {})]
    jobs += [("once winter, no odometry, revisit test off", ("winter",), False, OFF),
             ("two laps winter+summer, no odometry, revisit test off", ("winter", "summer"), False, OFF)]
    jobs = [(label, args.encoder, args.data, lo, hi, laps, odo, o) for label, laps, odo, o in jobs]
    with ProcessPoolExecutor(args.processes) as pool:
        results = list(pool.map(run, jobs))
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    lines = [f"Stretch {lo}..{hi}, {args.encoder}; {cpu or platform.processor()}",
             "| run | frames | published | false | false / 1000 frames | lap-2 frames closed right |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lap2 = f"{r['lap2_right']} / {r['lap2_frames']} ({r['lap2_recall']:.2f})" if r["lap2_frames"] else "-"
        lines.append(f"| {r['run']} | {r['frames']} | {r['published']} | {r['false']} | {r['false_per_1000']:.1f} | "
                     f"{lap2} |")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "session_loops.json").write_text(json.dumps({"stretch": [lo, hi], "encoder": args.encoder,
                                                             "cpu": cpu, "results": results}, indent=1) + "\n")
    print(f"wrote {args.out / 'session_loops.json'}")


if __name__ == "__main__":
    main()
