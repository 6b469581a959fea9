"""Learned whitening from matching pairs, folded into the encoder's last projection.

Radenović, Tolias, Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation" (TPAMI 2018), section 3.3:
with pairs (x_i, x_j) of descriptors of the same place, the intra-class covariance
C_S = mean (x_i - x_j)(x_i - x_j)^T is whitened first (C_S^-1/2: directions in which the same place varies, e.g.
snow on the ground, are shrunk), then the whitened descriptors are rotated onto their principal axes. Compared
with plain PCA whitening, it uses the labels: what differs between two images of one place is suppressed.

The transform z = P^T (u - mu) is linear, so it is folded into the aggregation's Linear layer (W' = P^T W,
b' = P^T (b - mu)). The checkpoint keeps ProGEO's layout and every consumer (node, map builder, ONNX export)
gets the whitened descriptor without knowing about it. It is fitted on the Linear layer's output u before the
final L2 normalisation, which is what a fold can reach.
"""

from __future__ import annotations

import numpy as np


def projection_layer(net):
    """The aggregation's Linear layer (ResNet: ``aggregation.3``; ViT with a dim change: ``aggregation.0``)."""
    import torch

    linears = [m for m in net.aggregation if isinstance(m, torch.nn.Linear)]
    if len(linears) != 1:
        raise ValueError("learned whitening needs an aggregation with one Linear projection "
                         "(ResNet backbones, or a ViT whose descriptor size differs from its embedding size)")
    return linears[0]


def projection_outputs(encoder, images, batch_size: int = 256) -> np.ndarray:
    """(N, dim) outputs of the projection layer (before the final L2 normalisation) for `images`."""
    layer = projection_layer(encoder.net)
    out = []
    hook = layer.register_forward_hook(lambda m, i, o: out.append(o.detach().float().cpu().numpy()))
    try:
        for j in range(0, len(images), batch_size):
            encoder.encode(images[j:j + batch_size], batch_size=batch_size)
    finally:
        hook.remove()
    return np.concatenate(out) if out else np.zeros((0, layer.out_features), np.float32)


def fit_learned_whitening(a: np.ndarray, b: np.ndarray, reg: float = 0.1):
    """(mu, P) from matching pairs: rows a[k], b[k] show the same place. `reg` (a fraction of the mean
    eigenvalue added to C_S) keeps directions that never vary within a pair from being blown up.
    Apply as (x - mu) @ P."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"need two equally long lists of at least 2 paired descriptors, got {a.shape} and {b.shape}")
    x = np.concatenate([a, b])
    mu = x.mean(0)
    diff = a - b
    cs = diff.T @ diff / len(diff)
    w, v = np.linalg.eigh(cs)
    w = np.clip(w, 0.0, None) + reg * max(w.mean(), 1e-12)
    p_w = v / np.sqrt(w)  # C_S^-1/2 up to a rotation
    y = (x - mu) @ p_w
    _, v2 = np.linalg.eigh(np.cov(y.T))
    return mu, p_w @ v2[:, ::-1]  # principal axes first


def fold_into_projection(net, mu: np.ndarray, p: np.ndarray) -> None:
    """Replace the projection u = W x + b by P^T (u - mu) in place."""
    import torch

    layer = projection_layer(net)
    if layer.bias is None:
        raise ValueError("the projection layer has no bias to take the centring")
    dev = layer.weight.device  # the trainer whitens a network that may still sit on the GPU
    pt = torch.as_tensor(p.T, dtype=torch.float64, device=dev)
    with torch.no_grad():
        new_w = pt @ layer.weight.double()
        new_b = pt @ (layer.bias.double() - torch.as_tensor(mu, dtype=torch.float64, device=dev))
        layer.weight.copy_(new_w.to(layer.weight.dtype))
        layer.bias.copy_(new_b.to(layer.bias.dtype))


def whiten_encoder(encoder, pairs_a, pairs_b, reg: float = 0.1) -> dict:
    """Fit learned whitening on image pairs (two lists of images, pairs_a[k] and pairs_b[k] show the same place)
    and fold it into `encoder` (its fingerprint changes). Returns what to record in the training metadata."""
    if encoder.half:
        raise ValueError("fit whitening on an fp32 encoder (its fingerprint is frozen in fp16)")
    a = projection_outputs(encoder, pairs_a)
    b = projection_outputs(encoder, pairs_b)
    mu, p = fit_learned_whitening(a, b, reg)
    fold_into_projection(encoder.net, mu, p)  # in-place: the encoder's fingerprint follows the new weights
    return {"method": "learned whitening from matching pairs (Radenovic et al. 2018)", "pairs": len(a), "reg": reg}
