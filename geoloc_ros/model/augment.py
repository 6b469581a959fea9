"""Stage-2 augmentation on a whole batch at once: ProGEO's colour jitter and random resized crop (CosPlace's
DeviceAgnostic* transforms), with each image's own random parameters, plus the optional histogram swap and flip."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF


def _crop_boxes(n: int, h: int, w: int, scale, ratio):
    """(top, left, height, width) of `n` random resized crops, drawn as torchvision's RandomResizedCrop draws one
    (10 tries at a random area and log-uniform aspect, then the centre crop), from torch's global generator."""
    boxes = []
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(n):
        for _try in range(10):
            area = h * w * float(torch.empty(1).uniform_(scale[0], scale[1]))
            aspect = math.exp(float(torch.empty(1).uniform_(*log_ratio)))
            cw, ch = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,)))
                left = int(torch.randint(0, w - cw + 1, (1,)))
                boxes.append((top, left, ch, cw))
                break
        else:  # centre crop at the nearest allowed aspect
            aspect = min(max(w / h, ratio[0]), ratio[1])
            cw, ch = (w, int(round(w / aspect))) if w / h < aspect else (int(round(h * aspect)), h)
            cw, ch = min(cw, w), min(ch, h)
            boxes.append(((h - ch) // 2, (w - cw) // 2, ch, cw))
    return boxes


def _blend(x, other, factor):
    """torchvision's _blend with a factor per image: factor * x + (1 - factor) * other, clamped to [0, 1]."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0.0, 1.0)


def histogram_swap(x, p: float):
    """With probability `p` per image, give it the grey levels of another image of the batch, channel by channel:
    its k-th darkest pixel takes the donor's k-th darkest value (histogram matching by rank). The layout of the
    scene stays; its tone becomes the donor's: snow's bright low contrast, dusk, another exposure."""
    b = x.shape[0]
    chosen = torch.rand(b) < p
    if b < 2 or not bool(chosen.any()):
        return x
    donor = torch.randint(0, b - 1, (b,))
    donor += (donor >= torch.arange(b)).long()  # never itself
    flat = x.flatten(2)
    matched = torch.empty_like(flat).scatter_(2, flat.argsort(dim=2), flat[donor.to(x.device)].sort(dim=2).values)
    return torch.where(chosen.to(x.device).view(-1, 1, 1, 1), matched.view_as(x), x)


def augment(x, cfg):
    """Colour jitter then random resized crop, each image with its own random parameters (CosPlace's
    DeviceAgnostic* augmentations, ProGEO's parser defaults; before them the optional histogram swap, after them
    the optional flip), computed for the whole batch at once: a handful of
    kernels per batch instead of a dozen per image, which is what keeps a GPU busy in stage 2.

    `x`: float (B, 3, H, W) in [0, 1]. Jitter follows torchvision's ColorJitter: brightness, contrast, saturation
    and hue factors drawn uniformly, applied in a random order per image, clamped after each step. The crop keeps
    the output size (bilinear, like a resize of the crop); its aspect range is centred on the image's."""
    b, _, h, w = x.shape
    if cfg.histogram_swap:
        x = histogram_swap(x, cfg.histogram_swap)
    ops = {"brightness": cfg.brightness, "contrast": cfg.contrast, "saturation": cfg.saturation, "hue": cfg.hue}
    ops = {k: v for k, v in ops.items() if v}
    if ops:
        # factor per image and op (1 = identity; hue: a shift in [-hue, hue]) and each image's order of the ops
        factors = {k: torch.empty(b).uniform_(-v, v) if k == "hue" else torch.empty(b).uniform_(max(0.0, 1 - v), 1 + v)
                   for k, v in ops.items()}
        order = torch.stack([torch.randperm(len(ops)) for _ in range(b)])  # (B, ops): op index at each step
        names = list(ops)
        grey_w = torch.tensor([0.2989, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        for step in range(len(names)):
            for k, name in enumerate(names):
                chosen = order[:, step] == k
                if not bool(chosen.any()):
                    continue
                if name == "hue":  # no batched HSV rotation in torchvision: per image, only where it is drawn
                    x = x.clone()  # the caller's batch stays as it was
                    for i in torch.nonzero(chosen).flatten().tolist():
                        x[i] = TF.adjust_hue(x[i], float(factors["hue"][i]))
                    continue
                f = torch.where(chosen, factors[name], torch.ones(b)).to(x.device)
                if name == "brightness":
                    x = (x * f.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)
                else:
                    grey = (x * grey_w).sum(1, keepdim=True)
                    other = grey.mean(dim=(2, 3), keepdim=True) if name == "contrast" else grey
                    x = _blend(x, other, f)
    if cfg.random_resized_crop:
        aspect = w / h
        boxes = _crop_boxes(b, h, w, (1 - cfg.random_resized_crop, 1.0), (aspect * 3 / 4, aspect * 4 / 3))
        # crop [left, left + cw) x [top, top + ch) onto the full output grid (align_corners=False pixel centres)
        theta = torch.tensor([[[cw / w, 0.0, (2 * left + cw) / w - 1], [0.0, ch / h, (2 * top + ch) / h - 1]]
                              for top, left, ch, cw in boxes], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.hflip:
        flip = (torch.rand(b) < cfg.hflip).to(x.device).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(3), x)
    return x
