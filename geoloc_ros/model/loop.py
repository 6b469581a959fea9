"""What both training stages' loops share: each epoch's random state, progress bars, atomic checkpoint writes and
the stage-2 learning-rate schedule."""

from __future__ import annotations

import math
import os
from pathlib import Path
import random

import numpy as np
import torch
from tqdm import tqdm


def seed_epoch(seed: int, stage: int, epoch: int):
    """Seed Python, torch and a returned numpy Generator from (seed, stage, epoch): a resumed run draws what an
    uninterrupted one does."""
    s = (seed * 1_000_003 + stage * 10_007 + epoch) % (2**31)
    random.seed(s)
    torch.manual_seed(s)
    return np.random.default_rng(s)


def progress(iterable, desc, enabled=True):
    return tqdm(iterable, desc=desc, ncols=100, leave=False) if enabled else iterable


def atomic_save(obj, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def stage2_lr_scale(cfg, epoch: int) -> float:
    """Factor on the stage-2 learning rates during `epoch` (0-based)."""
    if cfg.lr_schedule == "constant":
        return 1.0
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    raise ValueError(f"lr_schedule must be 'constant' or 'cosine', not {cfg.lr_schedule!r}")
