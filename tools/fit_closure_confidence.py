"""Fit the loop-closure confidence (geoloc_ros/localization/confidence.py COEFFICIENTS) on the tuning split.

    geoloc eval --loop-closures ... --split tuning=19210:21600 --param loop_closure_min_confidence:=0 --out OUT
    python tools/fit_closure_confidence.py OUT/loop_closures.json --split tuning [--precision 0.99]

A logistic regression of "closure correct within 25 m" on the evidence features of every closure of the tuning
runs (one fit per consistency mode), weights held >= 0 (more evidence never lowers the confidence), a small L2
penalty. Prints the coefficients and, for the fitted confidence, the lowest threshold at which every higher
threshold keeps tuning precision >= --precision: the operating point."""

from __future__ import annotations

import argparse
import json

import numpy as np

from geoloc_ros.localization.calibration import FEATURES, fit, safe_threshold


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json")
    ap.add_argument("--split", default="tuning", help="label prefix of the runs to fit on")
    ap.add_argument("--precision", type=float, default=0.99)
    ap.add_argument("--tolerance", type=float, default=25.0)
    ap.add_argument("--align", default="sequence", help="mode whose safe threshold the others' biases are shifted "
                                                       "to, so one threshold is one operating point in every mode")
    args = ap.parse_args()
    with open(args.json) as f:
        runs = json.load(f)["runs"]
    fitted = {}
    for key, run in runs.items():
        if not key.startswith(args.split):
            continue
        mode = key.rsplit(", ", 1)[-1]
        cl = [r["closure"] for r in run["rows"] if r["closure"] is not None]
        x = np.array([[c["features"][f] for f in FEATURES] for c in cl])
        y = np.array([c["error_m"] <= args.tolerance for c in cl], dtype=float)
        used = [i for i, f in enumerate(FEATURES) if x[:, i].std() > 0]
        theta = np.zeros(len(FEATURES) + 1)
        theta[[0] + [i + 1 for i in used]] = fit(x[:, used], y)
        conf = 1.0 / (1.0 + np.exp(-(theta[0] + x @ theta[1:])))
        fitted[mode] = (theta, safe_threshold(conf, y > 0, args.precision))
        print(f"{key}: {len(cl)} closures, {int(y.sum())} correct; lowest threshold keeping precision >= "
              f"{args.precision}: {fitted[mode][1]:.3f}")
    target = fitted[args.align][1]
    for mode, (theta, safe) in fitted.items():
        shift = _logit(target) - _logit(safe)  # the safe threshold of every mode becomes the aligned mode's
        weights = {f: round(float(w), 3) for f, w in zip(FEATURES, theta[1:])}
        coef = {"bias": round(float(theta[0] + shift), 3), **weights}
        print(f"COEFFICIENTS[{mode!r}] = {coef}  (bias shifted by {shift:+.3f}; operating point {target:.3f})")


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


if __name__ == "__main__":
    main()
