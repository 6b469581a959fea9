"""The frozen CLIP image embeddings stage 1 aligns the prompts with, computed as ProGEO's train_clip_stage1.py
computes them: once per group, no augmentation, with CLIP at its native input size (224 px for RN50, RN101,
ViT-B-16, ViT-B-32: images resized to 224x224 whatever the training size, ViTs with their native positional
table) and, by default, BatchNorm in train mode (ProGEO calls `model.train()` before extracting, so each batch of
`batch_size_stage1` shuffled images normalises with its own statistics). Stage 2 continues from the same network
here (ProGEO rebuilds CLIP for stage 2), so the BatchNorm running statistics that train mode updates are restored
afterwards. The embeddings are kept on the CPU (as ProGEO does) and moved to the device one group per epoch.

Small CPU architectures (RN-nano, RN-pico, ViT-nano) have no native size: they embed at the training size.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from geoloc_ros.model.archs import OPEN_CLIP_ARCHS, is_resnet
from geoloc_ros.model.pretrained import resize_vit_positions


def stage1_size(arch: dict, train_size) -> tuple:
    """(H, W) stage 1 embeds images at: CLIP's native square size for ProGEO's backbones, else the training size."""
    if arch.get("name") in OPEN_CLIP_ARCHS:
        from geoloc_ros.model.pretrained import native_image_size

        n = native_image_size(arch)
        return (n, n)
    return tuple(train_size)


def native_positions(visual, size):
    """A ViT's positional table for input `size`: the table its pretrained weights came with when that fits (kept
    by pretrained.load_pretrained_clip before resizing), else the current one resampled like ProGEO."""
    native = getattr(visual, "native_positional_embedding", None)
    patch = visual.conv1.kernel_size
    cells = (size[0] // patch[0]) * (size[1] // patch[1]) + 1
    if native is not None and native.shape[0] == cells:
        return native.to(visual.positional_embedding.device)
    probe = torch.nn.Module()
    probe.conv1, probe.positional_embedding = visual.conv1, torch.nn.Parameter(visual.positional_embedding.data)
    return resize_vit_positions(probe, size).positional_embedding.data


@contextmanager
def stage1_mode(net, arch, size, batchnorm: str):
    """The network set up for stage-1 extraction (BatchNorm mode, ViT positional table for `size`), put back as it
    was afterwards: mode, positional table and BatchNorm running statistics."""
    if batchnorm not in ("train", "eval"):
        raise ValueError(f"stage1_batchnorm must be 'train' (ProGEO) or 'eval', not {batchnorm!r}")
    was_training = net.training
    buffers = {k: v.clone() for k, v in net.state_dict().items() if "running_" in k or "num_batches" in k}
    visual = net.backbone
    saved_pos = None
    if not is_resnet(arch) and visual.positional_embedding.shape[0] != native_positions(visual, size).shape[0]:
        saved_pos = visual.positional_embedding.data
        visual.positional_embedding.data = native_positions(visual, size)
    net.train(batchnorm == "train")
    try:
        yield
    finally:
        if saved_pos is not None:
            visual.positional_embedding.data = saved_pos
        net.load_state_dict(buffers, strict=False)
        net.train(was_training)


def frozen_image_embeddings(trainer):
    """([per group: (n, embed_dim) float32 CPU tensor], [per group: (n,) int64 CPU labels]) of every group's images."""
    cfg, net = trainer.cfg, trainer.net
    size = stage1_size(trainer.arch, trainer.size)
    shuffle = cfg.stage1_batchnorm == "train"  # batch statistics then depend on the batch: draw them as ProGEO
    batch = cfg.batch_size_stage1 if shuffle else 256
    gen = torch.Generator().manual_seed(cfg.seed)
    feats, labels = [], []
    with torch.no_grad(), stage1_mode(net, trainer.arch, size, cfg.stage1_batchnorm):
        for g in trainer.groups:
            idx = torch.tensor([i for c in g.images for i in c])
            lab = torch.tensor([k for k, c in enumerate(g.images) for _ in c])
            order = torch.randperm(len(idx), generator=gen) if shuffle else torch.arange(len(idx))
            out = []
            for u8 in trainer.images_of([idx[order[j:j + batch]].tolist() for j in range(0, len(idx), batch)]):
                x = trainer.prepare(u8, False)
                if tuple(x.shape[-2:]) != size:
                    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
                with trainer.autocast():
                    out.append(net.clip_image_embedding(x, trainer.attnpool).float().cpu())
            result = torch.empty((len(idx), out[0].shape[1]))
            result[order] = torch.cat(out)
            feats.append(result)
            labels.append(lab)
    return feats, labels
