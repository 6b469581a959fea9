"""The training losses, each an `nn.Module`: CosFace (stage 2), image-to-text (stage 2), the image-to-image pair
InfoNCE (stage 2, not in ProGEO) and ProGEO's supervised contrastive loss (stage 1).

Each computes in fp32 whatever the caller's autocast: a loss's normalisations, logits and softmax are where bf16's
8-bit mantissa costs (a cosine logit scaled by 30 keeps about two decimal digits in bf16), so `fp32()` turns autocast
off inside and casts the inputs up; only the network itself runs in bf16/fp16.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def fp32(x):
    """A context in which autocast is off on `x`'s device (the loss's own ops then run in their inputs' dtype)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


class CosFace(nn.Module):
    """Large margin cosine loss (Wang et al. 2018; CosPlace cosface_loss.MarginCosineProduct): a classifier over
    `num_classes` whose cross-entropy has the margin `m` taken off the true class's cosine, scaled by `s`."""

    def __init__(self, in_features: int, num_classes: int, s: float = 30.0, m: float = 0.40, generator=None):
        super().__init__()
        self.s, self.m = s, m
        weight = torch.empty(num_classes, in_features)
        bound = math.sqrt(6.0 / (num_classes + in_features))  # xavier_uniform, drawn from `generator`
        weight.uniform_(-bound, bound, generator=generator)
        self.weight = nn.Parameter(weight)

    def logits(self, x, labels):
        cos = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()
        one_hot = torch.zeros_like(cos).scatter_(1, labels.view(-1, 1), 1.0)
        return self.s * (cos - one_hot * self.m)

    def forward(self, x, labels):
        with fp32(x):
            return F.cross_entropy(self.logits(x.float(), labels), labels)


class ImageToTextLoss(nn.Module):
    """ProGEO's image-to-text loss: cross-entropy with label smoothing over ``descriptor @ text_features.T`` (the
    frozen stage-1 text features of the group's classes, not normalised, as ProGEO's)."""

    def __init__(self, label_smoothing: float = 0.1):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, x, text_features, labels):
        with fp32(x):
            logits = x.float() @ text_features.float().t()
            return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)


class PairInfoNCE(nn.Module):
    """Image-to-image InfoNCE for a batch whose second half holds another image of each class of the first half,
    in the same order: each row's positive is its partner, the other classes of the batch are its negatives; the
    mean of both directions."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, d):
        with fp32(d):
            a, b = F.normalize(d.float(), dim=1).chunk(2)
            logits = a @ b.t() / self.temperature
            target = torch.arange(len(a), device=d.device)
            return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def pair_infonce(d, temperature: float):
    """`PairInfoNCE` as a function."""
    return PairInfoNCE(temperature)(d)


class SupConLoss(nn.Module):
    """Supervised contrastive loss of ProGEO's SupConLoss: for each row of `a`, mean log-softmax (over `b`) of the
    entries of `b` with the same label."""

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, a, b, labels_a, labels_b):
        with fp32(a):
            logits = a.float() @ b.float().t() / self.temperature
            logits = logits - logits.max(dim=1, keepdim=True).values.detach()
            log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            mask = (labels_a.view(-1, 1) == labels_b.view(1, -1)).float()
            return -((mask * log_prob).sum(1) / mask.sum(1).clamp(min=1)).mean()


def supcon_loss(a, b, labels_a, labels_b, temperature: float = 1.0):
    """`SupConLoss` as a function."""
    return SupConLoss(temperature)(a, b, labels_a, labels_b)
