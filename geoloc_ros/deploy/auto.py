"""`backend="auto"`: the fastest path this machine offers that keeps the fp32 descriptors (cosine >= 0.999).

CPU, in order, the first that passes the check (no timing: the order is what the benchmarks measured):
  1. torch-tuned bf16, where the CPU computes bf16 natively (AMX / AVX512-BF16; `cpu_has_bf16`): ~3x fp32 there;
  2. onnxruntime (fp32), when installed: fuses what PyTorch runs op by op;
  3. torch-tuned fp32; and, should even that fail, PyTorch eager.
bf16 comes before ONNX Runtime although ONNX Runtime is the CPU default elsewhere: ONNX Runtime runs fp32 only, and
on a native-bf16 CPU bf16 weights are the faster path by far (docs/benchmarks.md). Encoders whose descriptors bf16
does not keep (the bundled one) fail the check and go to ONNX Runtime.
CUDA: every candidate that passes (TensorRT fp16 when the wheel is installed, torch-tuned fp16 / bf16 autocast,
PyTorch eager fp32) is timed at batch 1, the node's case, and the fastest wins.
`half=False` allows fp32 paths only; None or True allow reduced precision (it is checked either way).

The check: `check_images()` (synthetic, deterministic: textures, edges, a near-uniform frame, a dark one -- the
frames where reduced precision loses most) encoded by the candidate and by the fp32 PyTorch encoder on the CPU.
Its result is recorded beside the encoder's artefacts (cache.py), keyed by fingerprint, candidate, library
version and device, so a later start skips it. The choice and why are logged and kept in `enc.backend_reason`.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from geoloc_ros.deploy import cache
from geoloc_ros.machine import cpu_model
from geoloc_ros.model.encoder import native_bf16

MIN_COSINE = 0.999
CHECK_IMAGES_TAG = "synthetic-v1"
LOG = logging.getLogger("geoloc_ros.deploy")


def check_images(n: int = 6, size=(480, 640)) -> list[np.ndarray]:
    """Deterministic camera-sized RGB frames for the agreement check (no data files needed on a robot)."""
    import cv2

    rng = np.random.default_rng(20)
    h, w = size
    out = []
    for coarse in (4, 16, 64):                       # smooth fields of three scales (sky, walls, foliage)
        small = rng.integers(0, 256, (coarse * h // w + 1, coarse, 3), dtype=np.uint8)
        out.append(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))
    edges = np.full((h, w, 3), 90, np.uint8)         # edges and corners
    for _ in range(12):
        y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
        edges[y:y + rng.integers(20, 200), x:x + rng.integers(20, 200)] = rng.integers(0, 256, 3)
    out.append(edges)
    out.append(np.clip(128 + rng.normal(0, 2, (h, w, 3)), 0, 255).astype(np.uint8))   # near-uniform (fog, snow)
    out.append(np.clip(12 + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8))    # dark
    return out[:n]


def _versions() -> str:
    import torch

    parts = [f"torch{torch.__version__}"]
    for mod in ("onnxruntime", "tensorrt"):
        try:
            parts.append(f"{mod[:3]}{__import__(mod).__version__}")
        except ImportError:
            pass
    return "-".join(parts)


def _device_key(device) -> str:
    if device.type == "cuda":
        from geoloc_ros.deploy.tensorrt_backend import gpu_key

        return gpu_key(device.index or 0)
    return cache.slug(cpu_model())


def candidates(device, half) -> list[tuple[str, str, dict]]:
    """(label, backend, open_encoder options) in the order they are tried."""
    reduced = half is not False
    if device.type == "cuda":
        from geoloc_ros.deploy.tensorrt_backend import available

        out = [("tensorrt fp16", "tensorrt", {})] if reduced and available()[0] else []
        if reduced:
            out.append(("torch-tuned fp16", "torch-tuned", {"precision": "fp16"}))
            if native_bf16(device):
                out.append(("torch-tuned bf16", "torch-tuned", {"precision": "bf16"}))
        return out + [("torch fp32", "torch", {"half": False})]
    out = [("torch-tuned bf16", "torch-tuned", {"precision": "bf16"})] if reduced and native_bf16(device) else []
    try:
        import onnxruntime  # noqa: F401

        out.append(("onnxruntime", "onnxruntime", {}))
    except ImportError:
        pass
    return out + [("torch-tuned fp32", "torch-tuned", {"precision": "fp32"}), ("torch fp32", "torch", {})]


def _median_ms(enc, image, repeats: int = 10) -> float:
    for _ in range(3):
        enc.encode([image])
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        enc.encode([image])
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


class _Check:
    """The fp32 reference descriptors (computed only when a check is not already on record) and the records."""

    def __init__(self, source, ref, device, images):
        self.source, self.ref, self.images = source, ref, images
        self.custom = images is not None
        self.key = f"{ref.fingerprint[:24]}-{_device_key(device)}-{cache.slug(_versions())}"
        self._ref_desc = None

    def _name(self, label: str) -> str:
        return f"check-{cache.slug(label)}-{self.key}.json"

    def recorded(self, label: str) -> float | None:
        """The worst cosine on record for `label` here (same encoder, libraries, device and images), or None."""
        rec = None if self.custom else cache.read_record(self.source, self._name(label))
        if rec and rec.get("fingerprint") == self.ref.fingerprint and rec.get("images") == CHECK_IMAGES_TAG:
            return float(rec["cosine_min"])
        return None

    def measure(self, label: str, enc) -> float:
        """The worst cosine of `enc` to the fp32 descriptors of the check images; recorded for the next start."""
        images = self.images or check_images()
        if self._ref_desc is None:
            self._ref_desc = self.ref.encode(images)
        cos = float((enc.encode(images) * self._ref_desc).sum(axis=1).min())
        if not self.custom:
            cache.write_record(self.source, self._name(label), {
                "fingerprint": self.ref.fingerprint, "candidate": label, "versions": _versions(),
                "images": CHECK_IMAGES_TAG, "cosine_min": cos, "accepted": cos >= MIN_COSINE})
        return cos


def open_auto(source, ref, open_backend, device, half=None, images=None, log=None):
    """The chosen encoder, with `backend_choice` (its label) and `backend_reason` set. `ref`: the fp32 CPU Encoder
    of `source`; `open_backend(backend, **options)`: opens one candidate (open_encoder's own dispatch)."""
    say = log or LOG.info
    check = _Check(source, ref, device, images)
    notes, passed = [], []
    for label, backend, options in candidates(device, half):
        cos = check.recorded(label)
        recorded = cos is not None
        if not recorded or cos >= MIN_COSINE:        # a refusal on record is not opened again
            try:
                enc = open_backend(backend, **options)
                cos = cos if recorded else check.measure(label, enc)
            except Exception as e:  # noqa: BLE001 - a candidate that cannot run is a reason to try the next
                notes.append(f"{label}: unavailable ({type(e).__name__}: {str(e)[:160]})")
                continue
        if cos < MIN_COSINE:
            notes.append(f"{label}: refused, cosine {cos:.5f} to fp32 < {MIN_COSINE}"
                         + (" (on record)" if recorded else ""))
            continue
        passed.append((label, enc, cos, recorded))
        if device.type != "cuda":
            break
    if not passed:
        raise RuntimeError("backend auto: no candidate kept the fp32 descriptors: " + "; ".join(notes))
    if device.type == "cuda" and len(passed) > 1:
        image = (images or check_images())[0]
        timed = sorted(((_median_ms(e, image), lbl, e, c, r) for lbl, e, c, r in passed), key=lambda t: t[0])
        notes.append("timed at batch 1: " + ", ".join(f"{lbl} {ms:.2f} ms" for ms, lbl, *_ in timed))
        label, enc, cos, recorded = timed[0][1:]
        why = "the fastest that kept cosine >= 0.999"
    else:
        label, enc, cos, recorded = passed[0]
        why = "the first in this device's order that kept cosine >= 0.999"
    enc.backend_choice = label
    enc.backend_reason = (f"auto on {device}: {label}, {why} (cosine {cos:.5f}{', on record' if recorded else ''})"
                          + ("; " + "; ".join(notes) if notes else ""))
    say(enc.backend_reason)
    return enc
