"""Helpers for tests (ours and other parts'): small real encoders, fake-free data access, ProGEO-layout files.

    from geoloc_ros.model.testing import tiny_encoder, bundled_encoder_path
    enc = tiny_encoder()            # random RN-pico, 32x64 input, dim 64, deterministic (seed 0), CPU; ~0.1 s
    enc = tiny_encoder(seed=1)      # different weights -> different fingerprint
"""

from __future__ import annotations

from pathlib import Path

from geoloc_ros.model import build_encoder, nordland
from geoloc_ros.model.archs import arch_config, feature_channels, is_resnet
from geoloc_ros.model.checkpoint import CHECKPOINT_NAME
from geoloc_ros.resources import SOURCE_ROOT, resource

REPO_ROOT = SOURCE_ROOT
SHARED_DATA = SOURCE_ROOT.parent / "shared" / "data"  # beside the clone; never installed
BUNDLED_MAP_DIR = resource("maps", "nordland_demo")


def tiny_encoder(dim: int = 64, image_size=(32, 64), seed: int = 0, arch: str = "RN-pico"):
    """A small random encoder (real network, random weights), deterministic for a given seed."""
    return build_encoder(arch=arch, dim=dim, image_size=image_size, seed=seed, device="cpu")


def bundled_encoder_path() -> Path:
    """maps/nordland_demo/encoder.safetensors (the trained bundled encoder)."""
    return BUNDLED_MAP_DIR / CHECKPOINT_NAME


def nordland_root() -> Path:
    return SHARED_DATA / "nordland64"


def nordland_records(frames, seasons=("summer", "winter")):
    """GeoImage records of nordland64 frames numbered frames[0]..frames[1] (inclusive)."""
    return nordland.split(nordland_root(), frames=frames, seasons=seasons)


def write_progeo_checkpoint(path, arch: str = "RN-pico", image_size=64, dim: int = 96, seed: int = 0,
                            wrap: bool = True):
    """Write a state dict laid out like ProGEO's stage-2 GeoLocalizationNet (``backbone.*`` = OpenAI-CLIP
    visual tower, ResNets: ``aggregation.1.p`` GeM + ``aggregation.3`` Linear; plus the text-side keys the
    loader must ignore), optionally wrapped as util.save_checkpoint does ({"model_state_dict": ...}).
    Returns the state dict written."""
    import torch

    from geoloc_ros.model.network import build_clip

    torch.manual_seed(seed)
    cfg = arch_config(arch, image_size)
    clip = build_clip(cfg)
    # OpenAI CLIP / ProGEO state dicts carry no BatchNorm counters.
    sd = {"backbone." + k: v.clone() for k, v in clip.visual.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    sd["token_embedding.weight"] = clip.token_embedding.weight.detach().clone()
    sd["text_encoder.positional_embedding"] = clip.positional_embedding.detach().clone()
    sd["text_encoder.text_projection"] = clip.text_projection.detach().clone()
    if is_resnet(cfg):
        sd["aggregation.1.p"] = torch.ones(1) * 3
        sd["aggregation.3.weight"] = torch.randn(dim, feature_channels(cfg)) * 0.02
        sd["aggregation.3.bias"] = torch.zeros(dim)
    torch.save({"epoch_num": 1, "model_state_dict": sd} if wrap else sd, str(path))
    return sd
