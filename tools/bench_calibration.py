"""Per-encoder calibration of the loop-closure confidence: each encoder calibrated on one Nordland stretch
(`geoloc calibrate`'s fit) and evaluated on another at the calibrated default threshold; each also evaluated with
the bundled coefficients (what a user of another encoder got before calibration). Prints a table, saves
OUT/calibration_bench.json, and lists the wrong closures published on the evaluation stretch.

    python tools/bench_calibration.py --encoder bundled=maps/nordland_demo/encoder.safetensors \\
        --encoder seed7=runs/seed7/encoder.safetensors --calibrate 19210:21600 --evaluate 21610:24000 \\
        --out docs/benchmarks/calibration

Winter queries against a summer map of the same stretch, frames 10 m apart on a line (the project's convention);
a closure is right within 25 m."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import subprocess


def main():
    from geoloc_ros.cli.calibrate import replay_modes, rescored
    from geoloc_ros.localization import calibration as C
    from geoloc_ros.localization import closure_eval as E
    from geoloc_ros.localization.confidence import COEFFICIENTS
    from geoloc_ros.model import load_encoder

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", action="append", required=True, metavar="LABEL=CHECKPOINT")
    ap.add_argument("--data", default="../shared/data/nordland64")
    ap.add_argument("--calibrate", default="19210:21600", metavar="LO:HI")
    ap.add_argument("--evaluate", default="21610:24000", metavar="LO:HI")
    ap.add_argument("--precision", type=float, default=0.99)
    ap.add_argument("--out", type=Path, default=Path("runs/calibration_bench"))
    ap.add_argument("--work", type=Path, default=Path("runs/calibration_bench"), help="folder for the maps built")
    args = ap.parse_args()
    cal, ev = ([int(v) for v in r.split(":")] for r in (args.calibrate, args.evaluate))
    summer, winter = Path(args.data) / "summer", Path(args.data) / "winter"
    results = []
    for item in args.encoder:
        label, _, checkpoint = item.partition("=")
        fingerprint = load_encoder(checkpoint, device="cpu").fingerprint
        work = args.work / label
        base, fit_rows = replay_modes(checkpoint, summer, winter, 10.0, *cal, work, "cpu", "calibrate")
        threshold = base.loop_closure_min_confidence
        coefficients = {}
        for mode, rows in fit_rows.items():
            theta, safe = C.fit_mode([r["closure"] for r in rows if r["closure"]], 25.0, args.precision)
            coefficients[mode] = C.aligned(theta, safe, threshold)
        _, eval_rows = replay_modes(checkpoint, summer, winter, 10.0, *ev, work, "cpu", "evaluate")
        for mode, rows in eval_rows.items():
            for which, coef in (("calibrated", coefficients), ("bundled coefficients", COEFFICIENTS)):
                scored = rescored(rows, coef, mode)
                s = E.summarise(scored, threshold, 25.0)
                op = s["operating_point"]
                published = [r for r in scored if r["closure"] and r["closure"]["confidence"] >= threshold]
                out = [r["closure"] for r in published]
                wrong = [{"query": r["query"], "keyframe": c["keyframe"], "error_m": round(c["error_m"], 1),
                          "confidence": round(c["confidence"], 4)}
                         for r in published if (c := r["closure"])["error_m"] > 25.0]
                results.append({"encoder": label, "fingerprint": fingerprint[:12], "mode": mode,
                                "coefficients": which, "threshold": threshold, "published": len(out),
                                "right": sum(c["error_m"] <= 25.0 for c in out),
                                "precision": op["precision"] if out else None, "recall": op["recall"],
                                "closures_unthresholded": s["curve"]["closures"], "frames": s["curve"]["frames"],
                                "recall_at_99": s["recall_at_99"], "wrong_published": wrong})
        results[-4]["fitted"] = coefficients
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    lines = [f"calibrated on {cal[0]}..{cal[1]}, evaluated on {ev[0]}..{ev[1]} (winter queries, summer map); {cpu}",
             "| encoder | mode | coefficients | published at default | right | precision | recall | "
             "recall @ 99 % (oracle) |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        precision = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        lines.append(f"| {r['encoder']} ({r['fingerprint']}) | {r['mode']} | {r['coefficients']} | {r['published']} | "
                     f"{r['right']} | {precision} | {r['recall']:.3f} | {r['recall_at_99']:.3f} |")
    print("\n".join(lines))
    for r in results:  # where the published wrong closures of the evaluation stretch go: query -> keyframe
        if r["wrong_published"]:
            print(f"wrong at the default, {r['encoder']} {r['mode']} {r['coefficients']}: " + ", ".join(
                f"{w['query']}->{w['keyframe']} ({w['error_m']:g} m, {w['confidence']:.3f})"
                for w in r["wrong_published"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration_bench.json").write_text(json.dumps({"calibrate": cal, "evaluate": ev, "cpu": cpu,
                                                                "results": results}, indent=1, default=float) + "\n")
    print(f"wrote {args.out / 'calibration_bench.json'}")


if __name__ == "__main__":
    main()
