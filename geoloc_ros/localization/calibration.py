"""Per-encoder loop-closure calibration: the coefficients of confidence.py's logistic, fitted for one encoder and
stored beside its checkpoint (`encoder.safetensors` -> `encoder.calibration.json`), with what they were fitted
on. Similarity margins mean different things for different encoders, so coefficients fitted for one encoder are
only used for that encoder (its fingerprint); any other encoder runs uncalibrated, and says so.

`geoloc calibrate` (geoloc_ros/cli/calibrate.py) writes the file; `load_snapshot` reads it (`for_encoder`)."""

from __future__ import annotations

from dataclasses import dataclass
import datetime
import json
import math
from pathlib import Path

import numpy as np

from geoloc_ros.localization.confidence import COEFFICIENTS

FORMAT = "geoloc_ros closure calibration 1"
FEATURES = ("log_sequence_margin", "similarity_margin", "agreement")
# The encoder COEFFICIENTS were fitted for: the bundled Nordland encoder (maps/nordland_demo/encoder.safetensors).
BUNDLED_FINGERPRINT = "94c402b08d9c19f0a9ff0617ceaa67d937b80e79ce48f22bd165b6e18e7c7179"
UNCALIBRATED_MEANING = ("loop-closure confidences of this encoder are not calibrated: the bundled encoder's "
                        "coefficients stand in, so loop_closure_min_confidence does not mean precision >= 0.99 "
                        "(closures may all pass or none); run `geoloc calibrate` for this encoder")


@dataclass(frozen=True)
class Calibration:
    coefficients: dict  # mode -> {"bias", FEATURES...}, as confidence.COEFFICIENTS
    source: str  # the calibration file, "bundled", or "uncalibrated"
    calibrated: bool  # fitted for this encoder

    def describe(self) -> str:
        return f"calibrated ({self.source})" if self.calibrated else f"UNCALIBRATED: {UNCALIBRATED_MEANING}"


def path_for(encoder_file) -> Path:
    """Where the calibration of the checkpoint `encoder_file` (a file or a directory) lives."""
    p = Path(encoder_file)
    if p.is_dir():
        return p / "encoder.calibration.json"
    return p.with_name(p.name.split(".")[0] + ".calibration.json")


def for_encoder(encoder_file, fingerprint: str) -> Calibration:
    """The calibration beside `encoder_file` when it was fitted for `fingerprint`; else the bundled coefficients,
    calibrated only when `fingerprint` is the bundled encoder's."""
    path = path_for(encoder_file) if encoder_file else None
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and data.get("format") == FORMAT and \
                    data.get("encoder_fingerprint") == fingerprint:
                return Calibration(_checked(data["coefficients"]), str(path), True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # unreadable: treated as absent (the node warns that closures are uncalibrated)
    if fingerprint == BUNDLED_FINGERPRINT:
        return Calibration(COEFFICIENTS, "bundled", True)
    return Calibration(COEFFICIENTS, "uncalibrated", False)


def _checked(coefficients) -> dict:
    out = {}
    for mode in COEFFICIENTS:
        w = coefficients[mode]
        out[mode] = {k: float(w[k]) for k in ("bias", *FEATURES)}
        if not all(math.isfinite(v) for v in out[mode].values()):
            raise ValueError(f"calibration of {mode}: non-finite coefficient")
    return out


# -- fitting ---------------------------------------------------------------------------------------------------
def fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """(bias, w...) of a logistic with w >= 0 (more evidence never lowers the confidence): minimises the mean log
    loss + l2 * |w|^2."""
    from scipy.optimize import minimize

    def loss(theta):
        z = theta[0] + x @ theta[1:]
        p = 1.0 / (1.0 + np.exp(-z))
        nll = np.mean(np.logaddexp(0.0, z) - y * z)
        grad = np.r_[np.mean(p - y), x.T @ (p - y) / len(y)] + 2 * l2 * np.r_[0.0, theta[1:]]
        return nll + l2 * float(theta[1:] @ theta[1:]), grad

    bounds = [(None, None)] + [(0.0, None)] * x.shape[1]
    return minimize(loss, np.zeros(x.shape[1] + 1), jac=True, bounds=bounds, method="L-BFGS-B").x


def safe_threshold(conf: np.ndarray, ok: np.ndarray, target: float) -> float:
    """The lowest t such that the precision of {conf >= t'} is >= target for every t' >= t (1.0: none)."""
    order = np.argsort(-conf, kind="stable")
    c, k = conf[order], ok[order]
    precision = np.cumsum(k) / np.arange(1, len(k) + 1)
    bad = np.nonzero(precision < target)[0]
    first_bad = bad[0] if len(bad) else len(c)
    return float(c[first_bad - 1]) if first_bad > 0 else 1.0


def fit_mode(closures, tolerance_m: float, precision: float) -> tuple[np.ndarray, float]:
    """Coefficients (bias, FEATURES...) fitted on closure_eval rows' closures of one mode, and the safe threshold
    of the fitted confidence for `precision`."""
    x = np.array([[c["features"][f] for f in FEATURES] for c in closures], dtype=float).reshape(-1, len(FEATURES))
    y = np.array([c["error_m"] <= tolerance_m for c in closures], dtype=float)
    if len(y) < 10 or y.min() == y.max():
        raise ValueError(f"{len(y)} closures, {int(y.sum())} correct: calibration needs both right and wrong ones "
                         f"(a longer recording, or one with revisits)")
    used = [i for i in range(len(FEATURES)) if x[:, i].std() > 0]
    theta = np.zeros(len(FEATURES) + 1)
    theta[[0] + [i + 1 for i in used]] = fit(x[:, used], y)
    conf = 1.0 / (1.0 + np.exp(-(theta[0] + x @ theta[1:])))
    return theta, safe_threshold(conf, y > 0, precision)


def aligned(theta: np.ndarray, safe: float, threshold: float) -> dict:
    """Coefficients with the bias shifted so that the fitted safe threshold becomes `threshold` (the node's
    loop_closure_min_confidence): the default threshold is then the calibrated operating point."""
    shift = _logit(threshold) - _logit(safe)
    return {"bias": round(float(theta[0] + shift), 4), **{f: round(float(w), 4) for f, w in zip(FEATURES, theta[1:])}}


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


def write(path, fingerprint: str, coefficients: dict, operating_point: dict, data: dict, command: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "encoder_fingerprint": fingerprint, "coefficients": coefficients,
           "operating_point": operating_point, "fitted_on": data, "command": command,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)
    return path
