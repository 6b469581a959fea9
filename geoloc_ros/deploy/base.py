"""What every deployed encoder shares with the model's `Encoder`: preprocessing, batching, the output contract."""

from __future__ import annotations

import os

import numpy as np

from geoloc_ros.model.encoder import resize_batch


def default_threads() -> int:
    """CPU threads for the tuned backends: every core this process may use on a machine of one or two cores,
    one core fewer on a larger one.

    From three cores up, leaving one to the camera driver, DDS and the node's own callbacks costs the encoder a
    third of its speed or less, and OpenMP-style pools stall at every barrier when one of their threads is
    descheduled, so a pool as wide as a busy machine can collapse (measured on a 2-core machine shared with other
    jobs: ViT-B-32 fp32 at batch 1 went from ~0.4 s with 1 thread to ~2.3 s with 2). On two cores leaving one free
    halves the encoder: ViT-B-32 bf16 at batch 1 on an idle 2-core AMD EPYC (Zen 4) took 326 ms with 1 thread and
    182 ms with 2 (docs/benchmarks.md). `inference_threads` (the node) and `threads=` (open_encoder) override this."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import torch

        n = min(n, torch.get_num_threads())      # torch's own default: physical cores, or what the user set
    except ImportError:
        pass
    return max(1, n if n <= 2 else n - 1)


def as_image_list(images) -> list:
    """The model Encoder's input rule: a single HxW / HxWxC array is a list of one."""
    if isinstance(images, np.ndarray) and images.ndim in (2, 3) and (images.ndim == 2 or images.shape[2] in (1, 3, 4)):
        return [images]
    return list(images)


def preprocess_numpy(images, preprocess: dict) -> np.ndarray:
    """List of images -> (N, 3, H, W) float32, normalised exactly as `Encoder.to_tensor` does (same resize code,
    same float32 arithmetic), for engines that take numpy input."""
    batch = resize_batch(images, tuple(preprocess["image_size"]))
    x = batch.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(preprocess["mean"], dtype=np.float32)
    std = np.asarray(preprocess["std"], dtype=np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def l2_normalise(d: np.ndarray) -> np.ndarray:
    d = np.asarray(d, dtype=np.float32)
    n = np.linalg.norm(d, axis=1, keepdims=True)
    return np.ascontiguousarray(d / np.maximum(n, 1e-12), dtype=np.float32)


class DeployedEncoder:
    """Base class: subclasses set `dim`, `fingerprint`, `device`, `preprocess`, `backend` and implement
    `_encode_batch(images) -> (n, dim) array-like`. `encode` matches `geoloc_ros.model.Encoder.encode`."""

    backend = "?"
    batch_size = 64
    backend_reason = "asked for by name"     # backend="auto" replaces it with what it chose and why

    def encode(self, images, batch_size: int | None = None) -> np.ndarray:
        images = as_image_list(images)
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        bs = int(batch_size or self.batch_size)
        out = [l2_normalise(self._encode_batch(images[i:i + bs])) for i in range(0, len(images), bs)]
        return np.ascontiguousarray(np.concatenate(out, axis=0), dtype=np.float32)

    __call__ = encode

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.preprocess["image_size"])

    def _encode_batch(self, images):
        raise NotImplementedError

    def __repr__(self):
        h, w = self.image_size
        return (f"{type(self).__name__}(backend={self.backend}, dim={self.dim}, input={h}x{w}, device={self.device}, "
                f"fingerprint={self.fingerprint[:12]})")
