"""Training the feature combiner (model/combiner.py) on image + description pairs with the project's losses:
CosFace over CosPlace groups (model/losses.py, model/grouping.py), one classifier per group, groups visited in
turn. The image encoder stays frozen, so its descriptors are computed once and training touches only the small
combiner: minutes on a CPU.

Descriptions are dropped at random (`text_dropout`), replaced by the combiner's "no text" token, so that a query
frame without a description still lands near its place's described keyframes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from geoloc_ros.model.combiner import FeatureCombiner, tokenize
from geoloc_ros.model.grouping import make_groups
from geoloc_ros.model.losses import CosFace


@dataclass(frozen=True)
class CombinerSettings:
    out_dim: int | None = None  # the fused descriptor's size (None: the image descriptor's)
    width: int = 128
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-4  # the fusion is a small correction of a trained descriptor
    text_dropout: float = 0.3
    seed: int = 0
    grouping: dict = field(default_factory=lambda: {"M": 10, "N": 5, "L": 2, "min_images_per_class": 2,
                                                    "groups_num": 5})


def train_combiner(image_descriptors: np.ndarray, texts, records, settings: CombinerSettings = CombinerSettings(),
                   log=None) -> tuple[FeatureCombiner, list[float]]:
    """A FeatureCombiner trained on (N, dim) frozen image descriptors, N descriptions ("" for none) and the N
    GeoImage-like records that place them (utm_east, utm_north, heading). Returns it with the loss of each
    step."""
    d = torch.from_numpy(np.asarray(image_descriptors, dtype=np.float32))
    texts = list(texts)
    if not (len(d) == len(texts) == len(records)):
        raise ValueError(f"{len(d)} descriptors, {len(texts)} descriptions and {len(records)} records")
    groups = make_groups(records, **settings.grouping)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    out_dim = settings.out_dim or d.shape[1]
    combiner = FeatureCombiner(d.shape[1], out_dim, width=settings.width)
    heads = torch.nn.ModuleList(CosFace(out_dim, len(g)) for g in groups)
    optimiser = torch.optim.AdamW([*combiner.parameters(), *heads.parameters()], lr=settings.lr)
    ids, mask = tokenize(texts)
    losses = []
    combiner.train()
    for step in range(settings.steps):
        g = step % len(groups)
        group = groups[g]
        classes = rng.integers(0, len(group), settings.batch_size)
        rows = np.array([rng.choice(group.images[c]) for c in classes])
        keep_text = torch.from_numpy(rng.random(len(rows)) >= settings.text_dropout)
        batch_mask = mask[rows] & keep_text[:, None]
        fused = combiner(d[rows], ids[rows], batch_mask)
        loss = heads[g](fused, torch.from_numpy(classes).long())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if log is not None and (step + 1) % max(1, settings.steps // 10) == 0:
            log(f"step {step + 1}/{settings.steps}: loss {np.mean(losses[-20:]):.3f}")
    return combiner.eval(), losses
