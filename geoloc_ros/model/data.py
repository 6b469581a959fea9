"""Training images: the in-memory or on-disk image bank and the draws of a stage-2 batch (CosPlace sampling,
pair batches, same-class CutMix plans)."""

from __future__ import annotations

import numpy as np

from geoloc_ros.datasets import read_image
from geoloc_ros.model.encoder import resize_batch


def _other(images, i, rng):
    """A random image of `images` other than `i` (`i` itself when it is the only one)."""
    others = [j for j in images if j != i]
    return others[rng.integers(len(others))] if others else i


class ImageBank:
    """Training images as uint8 (H, W, 3) at the model input size. Preloaded into memory when given or (with
    `preload`) when they fit in `max_bytes`, else read from disk per batch (by loader.batches' workers)."""

    def __init__(self, records, size, images=None, max_bytes=4 << 30, preload=True):
        self.records = records
        self.size = tuple(size)
        h, w = self.size
        self.array = None
        self.dataset = None  # loader.PathImages, made on first use by loader.batches
        if images is not None or (preload and len(records) * h * w * 3 <= max_bytes):
            if images is None:
                images = [read_image(r.path) for r in records]
            self.array = resize_batch(images, self.size)

    def __len__(self):
        return len(self.records)

    def get(self, indices) -> np.ndarray:
        if self.array is not None:
            return self.array[np.asarray(indices)]
        return resize_batch([read_image(self.records[i].path) for i in indices], self.size)


def draw_batch(group, classes, rng, pairs: bool):
    """Labels and image indices of a stage-2 batch: one random image of each class (CosPlace sampling); with
    `pairs`, followed by a second, different image of each class in the same order."""
    idx = [group.images[c][rng.integers(len(group.images[c]))] for c in classes]
    if not pairs:
        return classes, idx
    return np.concatenate([classes, classes]), idx + [_other(group.images[c], i, rng) for c, i in zip(classes, idx)]


def cutmix_plan(group, classes, idx, rng, p: float, size):
    """For `same_class_cutmix` with probability `p`: [(batch row, other image of the class, top, left, height,
    width)] of the patches to paste into images of size (H, W)."""
    if not p:
        return []
    h, w = size
    plan = []
    for row, (c, i) in enumerate(zip(classes, idx)):
        if len(group.images[c]) > 1 and rng.random() < p:
            ph, pw = int(h * rng.uniform(0.3, 0.8)), int(w * rng.uniform(0.3, 0.8))
            plan.append((row, _other(group.images[c], i, rng), int(rng.integers(h - ph + 1)),
                         int(rng.integers(w - pw + 1)), ph, pw))
    return plan
