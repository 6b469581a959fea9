"""The ProGEO image network: an open_clip visual tower followed by ProGEO's aggregation.

Layout (and state-dict names) follow ProGEO's stage-2 ``GeoLocalizationNet`` so that the authors'
checkpoints load directly:

- ResNet backbones: feature map after ``layer4`` -> L2Norm over channels -> GeM (p=3, learnable) -> Flatten
  -> Linear(channels, dim) -> L2Norm  (``aggregation.0`` ... ``aggregation.4``; the Linear is ``aggregation.3``).
  An architecture dict with ``pool_grid: [rows, cols]`` (not in ProGEO) pools the whole map and each cell of
  that grid (`GeMRegions`), with the same state-dict names.
- ViT backbones: CLIP's projected class token (``backbone(x)``) -> [Linear(embed_dim, dim) if dim differs]
  -> L2Norm. ProGEO uses the projected token as is; we always L2-normalise the output.

The CLIP image embedding used by stage 1 (``clip_image_embedding``) is the attention pool (ResNet) or the
projected class token (ViT), as in ProGEO's ``cosplace_network_stage1``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from geoloc_ros.model.archs import feature_channels, hw, is_resnet


class L2Norm(nn.Module):
    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.normalize(x, p=2.0, dim=self.dim)


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.), learnable exponent p (CosPlace: p=3, eps=1e-6)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x):
        p = self.p.to(x.dtype)
        return F.avg_pool2d(x.clamp(min=self.eps).pow(p), (x.size(-2), x.size(-1))).pow(1.0 / p)


class GeMRegions(GeM):
    """GeM over the whole feature map and over each cell of a `grid` (rows, columns) of regions, concatenated:
    (N, C * (1 + rows * cols), 1, 1). Not in ProGEO: a camera on a vehicle sees a place from the same viewpoint
    every time (a train on its track, a car in its lane), so where a feature sits in the frame is information that
    GeM alone throws away. Adaptive pooling makes the regions follow the map's actual size."""

    def __init__(self, grid, p: float = 3.0, eps: float = 1e-6):
        super().__init__(p, eps)
        self.grid = tuple(int(v) for v in grid)

    def forward(self, x):
        p = self.p.to(x.dtype)
        xp = x.clamp(min=self.eps).pow(p)
        whole = xp.mean(dim=(2, 3))
        cells = F.adaptive_avg_pool2d(xp, self.grid).flatten(2).transpose(1, 2).flatten(1)  # cell-major
        return torch.cat([whole, cells], dim=1).pow(1.0 / p)[:, :, None, None]


class Flatten(nn.Module):
    def forward(self, x):
        return x[:, :, 0, 0]


def build_clip(cfg: dict, pretrained: str | None = None):
    """An open_clip CLIP model (visual + text towers) for the architecture dict `cfg`.

    `pretrained`: None (random init), an open_clip pretrained tag (e.g. "openai"; downloads unless cached), a local
    file in open_clip's layout or one of OpenAI's original files (see `geoloc_ros.model.pretrained`). A ResNet's
    attention pool is built at the backbone's native size (what pretrained weights have; 7x7 for ProGEO's RN50 /
    RN101) and adapted to the actual feature map at run time (`attnpool_any_size`); a ViT is built for cfg's input.
    """
    from open_clip.model import CLIP

    if pretrained:
        from geoloc_ros.model.pretrained import load_pretrained_clip

        return load_pretrained_clip(cfg, pretrained)
    vision_cfg = dict(cfg["vision_cfg"])
    if is_resnet(cfg):
        from geoloc_ros.model.pretrained import native_image_size

        vision_cfg["image_size"] = native_image_size(cfg)
    return CLIP(embed_dim=cfg["embed_dim"], vision_cfg=vision_cfg, text_cfg=dict(cfg["text_cfg"]),
                quick_gelu=bool(cfg.get("quick_gelu", False)))


def build_visual(cfg: dict):
    """Only the visual tower (inference does not need the text tower)."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    vision_cfg = dict(cfg["vision_cfg"])
    if is_resnet(cfg):
        vision_cfg["image_size"] = max(hw(vision_cfg["image_size"]))
    return _build_vision_tower(cfg["embed_dim"], CLIPVisionCfg(**vision_cfg), quick_gelu=bool(cfg.get("quick_gelu")))


class GeoLocalizationNet(nn.Module):
    """backbone (open_clip visual tower) + aggregation; forward returns L2-normalised (N, dim) descriptors."""

    def __init__(self, cfg: dict, dim: int, backbone: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.dim = int(dim)
        self.backbone = backbone if backbone is not None else build_visual(cfg)
        if is_resnet(cfg):
            # The attention pool is CLIP's image head; descriptors use GeM instead, so it is not part of the
            # encoder (training keeps it aside for stage 1: see `detach_attnpool`).
            self.backbone.attnpool = nn.Identity()
            grid = cfg.get("pool_grid")  # not in ProGEO: regional GeM (GeMRegions); absent = ProGEO's GeM
            pool = GeMRegions(grid) if grid else GeM()
            regions = 1 + math.prod(pool.grid) if grid else 1
            self.aggregation = nn.Sequential(L2Norm(), pool, Flatten(),
                                             nn.Linear(feature_channels(cfg) * regions, self.dim), L2Norm())
        elif self.dim == cfg["embed_dim"]:
            self.aggregation = nn.Sequential(L2Norm())
        else:
            self.aggregation = nn.Sequential(nn.Linear(cfg["embed_dim"], self.dim), L2Norm())

    def feature_map(self, x):
        """ResNet: the layer4 feature map (ProGEO's ``stage=2``)."""
        b = self.backbone
        x = x.to(b.conv1.weight.dtype)
        x = b.stem(x)
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def forward(self, x):
        return self.aggregate(self.feature_map(x) if is_resnet(self.cfg) else self.backbone(x))

    def raw_descriptor(self, x):
        """What ProGEO's own network returns, for the VG protocol's L2 search: for a ViT head the output before
        the final L2Norm (ProGEO searches the projected class token unnormalised); a ResNet head ends with L2Norm
        in ProGEO as well, so it is `forward`."""
        if is_resnet(self.cfg):
            return self.forward(x)
        head = self.aggregation[:-1]
        p = next(head.parameters(), None)
        features = self.backbone(x)
        return head(features if p is None else features.to(p.dtype))

    def aggregate(self, features):
        """The aggregation, in its own precision (see `half_backbone`)."""
        p = next(self.aggregation.parameters(), None)
        return self.aggregation(features if p is None else features.to(p.dtype))

    def half_backbone(self):
        """fp16 backbone, fp32 aggregation (what `Encoder(half=True)` runs). GeM cubes channel-normalised
        activations, about 1/sqrt(channels) each: their cubes fall below fp16's normal range (6e-5), and an all-fp16
        bundled encoder lost cosine down to 0.984 and 1.5 points of Recall@1 (docs/benchmarks.md)."""
        self.backbone.half()
        return self

    def clip_image_embedding(self, x, attnpool=None):
        """CLIP's image embedding (embed_dim): what stage 1 aligns the learned prompts with. ResNets need CLIP's
        attention pool (`attnpool`, kept outside the encoder)."""
        if is_resnet(self.cfg):
            return attnpool_any_size(attnpool, self.feature_map(x))
        return self.backbone(x)


def detach_attnpool(visual):
    """Take CLIP's attention pool out of a ModifiedResNet visual tower (returns it; None for ViTs)."""
    pool = getattr(visual, "attnpool", None)
    return pool if isinstance(pool, nn.Module) and not isinstance(pool, nn.Identity) else None


def attnpool_any_size(pool, x):
    """open_clip's AttentionPool2d with its positional embedding bilinearly resized to x's grid."""
    n, c, h, w = x.shape
    pos = pool.positional_embedding
    side = int(round((pos.shape[0] - 1) ** 0.5))
    if (h, w) != (side, side):
        grid = pos[1:].reshape(1, side, side, c).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(h, w), mode="bilinear", align_corners=False).to(pos.dtype)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(h * w, c)], dim=0)
    x = x.reshape(n, c, h * w).permute(2, 0, 1)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + pos[:, None, :].to(x.dtype)
    x, _ = F.multi_head_attention_forward(
        query=x, key=x, value=x, embed_dim_to_check=c, num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=pool.training, need_weights=False)
    return x[0]
