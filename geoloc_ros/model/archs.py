"""Backbone configurations: open_clip's CLIP models plus small ones a CPU can train.

An architecture is fully described by a JSON-able dict (stored in every checkpoint):

    {"name": "RN50", "embed_dim": 1024, "vision_cfg": {...}, "text_cfg": {...}, "quick_gelu": true}

`vision_cfg` / `text_cfg` are open_clip's ``CLIPVisionCfg`` / ``CLIPTextCfg`` fields. ``vision_cfg["layers"]``
being a list means a ModifiedResNet (CLIP's ResNet), an int means a VisionTransformer.
"""

from __future__ import annotations

import copy

# The four backbones of ProGEO (Chain-Mao/ProGEO, cosplace_network_stage2.py: CLIP-RN50, CLIP-RN101,
# CLIP-ViT-B-16, CLIP-ViT-B-32). Their configs come from open_clip; OpenAI's weights use QuickGELU.
OPEN_CLIP_ARCHS = ("RN50", "RN101", "ViT-B-16", "ViT-B-32")

# Small configurations for CPU training at small input sizes (not in open_clip; same module types).
_TEXT_SMALL = {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}
CUSTOM_ARCHS = {
    # CLIP ModifiedResNet, one bottleneck per stage, stem width 32: 1024 channels after layer4, 2.3 M encoder params.
    "RN-nano": {"embed_dim": 256, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 32},
                "text_cfg": dict(_TEXT_SMALL), "quick_gelu": True},
    # Even smaller: stem width 16 (512 channels after layer4), for unit tests.
    "RN-pico": {"embed_dim": 128, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
                "text_cfg": {**_TEXT_SMALL, "width": 64, "layers": 1}, "quick_gelu": True},
    # A 4-layer ViT with 8-pixel patches.
    "ViT-nano": {"embed_dim": 256, "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "head_width": 64,
                                                  "patch_size": 8},
                 "text_cfg": dict(_TEXT_SMALL), "quick_gelu": True},
}

ARCH_NAMES = OPEN_CLIP_ARCHS + tuple(CUSTOM_ARCHS)

# Aliases used by ProGEO's --backbone flag.
_ALIASES = {f"CLIP-{n}": n for n in OPEN_CLIP_ARCHS}


def canonical_name(name: str) -> str:
    return _ALIASES.get(name, name)


def arch_config(name: str, image_size=None) -> dict:
    """The architecture dict for a named backbone; `image_size` (int or (H, W)) overrides the vision input size."""
    name = canonical_name(name)
    if name in CUSTOM_ARCHS:
        cfg = copy.deepcopy(CUSTOM_ARCHS[name])
    elif name in OPEN_CLIP_ARCHS:
        import open_clip

        cfg = copy.deepcopy(open_clip.get_model_config(name))
        cfg = {"embed_dim": cfg["embed_dim"], "vision_cfg": cfg["vision_cfg"], "text_cfg": cfg["text_cfg"],
               "quick_gelu": True}
        cfg["vision_cfg"] = {k: v for k, v in cfg["vision_cfg"].items() if v is not None}
    else:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(ARCH_NAMES)}")
    cfg["name"] = name
    if image_size is not None:
        cfg["vision_cfg"]["image_size"] = _size_for_cfg(image_size)
    return cfg


def is_resnet(cfg: dict) -> bool:
    return isinstance(cfg["vision_cfg"]["layers"], (list, tuple))


def feature_channels(cfg: dict) -> int:
    """Channels of the last conv feature map (ResNet) or the embedding size (ViT): the aggregation input."""
    if is_resnet(cfg):
        return cfg["vision_cfg"].get("width", 64) * 32
    return cfg["embed_dim"]


def hw(size) -> tuple[int, int]:
    """(height, width) from an int or a 2-sequence."""
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def _size_for_cfg(size):
    h, w = hw(size)
    return h if h == w else [h, w]
