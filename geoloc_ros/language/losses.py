"""AddressCLIP's training terms (Xu et al., "AddressCLIP: Empowering Vision-Language Models for City-wide Image
Address Localization", ECCV 2024), as used by the optional address stage (language/address_training.py):

- image-address contrast: CLIP's symmetric InfoNCE between the images' features and their address texts'
  features (one address per image in the batch; images sharing an address are positives of each other);
- image-caption contrast: the same between the images and their captions (scene descriptions);
- geographic matching: the batch's matrix of feature distances, (1 - cos) / 2 in [0, 1], pulled towards the
  matrix of geographic distances normalised by the batch's largest one (mean squared error over the pairs), so
  places near each other get near features.

total = address_weight * L_address + caption_weight * L_caption + geo_weight * L_geo (defaults 1, 1, 1 here; the
paper weighs the terms with hyperparameters of its own: see docs/language.md). Inputs are torch tensors.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AddressLossWeights:
    address: float = 1.0
    caption: float = 1.0
    geo: float = 1.0
    temperature: float = 0.07  # CLIP's initial temperature (logit scale 1 / 0.07)


def _normalize(x):
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1)


def contrastive(image_features, text_features, text_ids=None, temperature: float = 0.07):
    """Symmetric InfoNCE between row i of `image_features` and row i of `text_features`. `text_ids` (one integer
    per row, equal for equal texts) makes every row with the same text a positive (soft targets), as a batch
    holding two photos of one address must not push them apart."""
    import torch

    img, txt = _normalize(image_features), _normalize(text_features)
    logits = img @ txt.T / temperature
    n = len(img)
    if text_ids is None:
        target = torch.eye(n, device=img.device)
    else:
        ids = torch.as_tensor(text_ids, device=img.device)
        target = (ids[:, None] == ids[None, :]).float()
    target = target / target.sum(dim=1, keepdim=True)
    image_to_text = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
    text_to_image = -(target.T / target.T.sum(dim=1, keepdim=True) * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2


def geographic_distances(lat_lon):
    """(N, N) great-circle distances in metres of (N, 2) degrees (torch)."""
    import torch

    ll = torch.deg2rad(torch.as_tensor(lat_lon, dtype=torch.float64))
    lat, lon = ll[:, 0], ll[:, 1]
    dlat = lat[:, None] - lat[None, :]
    dlon = lon[:, None] - lon[None, :]
    a = torch.sin(dlat / 2) ** 2 + torch.cos(lat[:, None]) * torch.cos(lat[None, :]) * torch.sin(dlon / 2) ** 2
    return 2 * 6_371_008.8 * torch.asin(torch.sqrt(a.clamp(0, 1)))


def geographic_matching(image_features, lat_lon):
    """Mean squared difference between feature distances (1 - cos) / 2 and max-normalised geographic distances,
    over the pairs i != j (0 for a batch of one place)."""
    import torch

    f = _normalize(image_features)
    feature_d = (1.0 - f @ f.T) / 2
    geo = geographic_distances(lat_lon).to(feature_d.device)
    top = geo.max()
    geo = (geo / top if top > 0 else geo).to(feature_d.dtype)
    off = ~torch.eye(len(f), dtype=torch.bool, device=f.device)
    if not off.any():
        return feature_d.sum() * 0.0
    return ((feature_d - geo)[off] ** 2).mean()


def address_clip_loss(image_features, address_features, caption_features, lat_lon, address_ids=None,
                      caption_ids=None, weights: AddressLossWeights | None = None) -> dict:
    """{"address", "caption", "geo", "total"} tensors; `caption_features` None drops the caption term."""
    w = weights or AddressLossWeights()
    terms = {"address": contrastive(image_features, address_features, address_ids, w.temperature)}
    if caption_features is not None:
        terms["caption"] = contrastive(image_features, caption_features, caption_ids, w.temperature)
    terms["geo"] = geographic_matching(image_features, lat_lon)
    terms["total"] = sum(getattr(w, k) * v for k, v in terms.items())
    return terms
