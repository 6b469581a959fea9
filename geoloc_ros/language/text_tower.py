"""The optional CLIP text tower of an encoder: text -> a vector in the encoder's descriptor space.

An encoder checkpoint (`encoder.safetensors`) holds only the image side. Its text tower, when there is one, is a
sidecar file `text_tower.safetensors` in the same directory (a map carries it beside MAP/encoder.safetensors):

    tensors   the open_clip TextTransformer state dict (token_embedding, positional_embedding, transformer.*,
              ln_final, text_projection), plus optionally `projection.weight` (dim, embed_dim) [and
              `projection.bias`]: the linear map from CLIP's text space to the descriptors (ProGEO's stage 2 learns
              it when dim != embed_dim); without it the CLIP text embedding is used as it is (dim == embed_dim)
    metadata  format "geoloc_ros.text_tower", format_version "1", arch (JSON: the encoder's architecture dict),
              dim, encoder_fingerprint (the encoder it belongs to: a tower is refused for any other encoder)

`save_text_tower(clip, folder, encoder)` writes one from an open_clip CLIP model (open_clip pretrained, or
the frozen tower stage 1 learned prompts with); `find_text_tower(encoder)` loads the one beside the encoder's
checkpoint, or returns (None, reason).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

TEXT_TOWER_NAME = "text_tower.safetensors"
FORMAT = "geoloc_ros.text_tower"


class TextTower:
    """`encode_text(texts) -> (N, dim)` float32 rows, L2-normalised, comparable with the encoder's descriptors."""

    def __init__(self, tower, arch: dict, dim: int, projection=None, source: Path | None = None):
        self.tower = tower.eval()
        self.arch = arch
        self.dim = int(dim)
        self.projection = projection
        self.source = source

    def encode_text(self, texts) -> np.ndarray:
        import open_clip
        import torch

        tokens = open_clip.tokenize(list(texts), context_length=int(self.arch["text_cfg"]["context_length"]))
        with torch.inference_mode():
            x = self.tower(tokens).float()
            if self.projection is not None:
                x = self.projection(x)
            x = torch.nn.functional.normalize(x, dim=-1)
        return x.numpy().astype(np.float32)


def _build_tower(arch: dict):
    from open_clip.model import CLIPTextCfg, _build_text_tower

    return _build_text_tower(arch["embed_dim"], CLIPTextCfg(**arch["text_cfg"]),
                             quick_gelu=bool(arch.get("quick_gelu")))


def save_text_tower(clip, folder, encoder, projection=None) -> Path:
    """Write the text tower of the open_clip CLIP model `clip` for `encoder` into `folder` (beside its
    checkpoint). `projection`: a torch.nn.Linear(embed_dim, encoder.dim), needed when they differ."""
    from safetensors.torch import save_file
    import torch

    embed = int(encoder.arch["embed_dim"])
    if projection is None and embed != encoder.dim:
        raise ValueError(f"CLIP text space has {embed} dimensions, the descriptors {encoder.dim}: give the "
                         f"projection between them (ProGEO stage 2 learns one)")
    tower = _build_tower(encoder.arch)
    own = tower.state_dict()
    state = {k: v for k, v in clip.state_dict().items() if k in own}
    missing = sorted(set(own) - set(state))
    if missing:
        raise ValueError(f"the CLIP model lacks text tower tensors {missing[:3]}")
    if projection is not None:
        state.update({f"projection.{k}": v for k, v in projection.state_dict().items()})
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    path = Path(folder) / TEXT_TOWER_NAME
    meta = {"format": FORMAT, "format_version": "1", "arch": json.dumps(encoder.arch), "dim": str(encoder.dim),
            "encoder_fingerprint": encoder.fingerprint}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_text_tower(path, encoder) -> TextTower:
    """Load `path` for `encoder`; ValueError naming the file when it is not one of ours or not this encoder's."""
    from safetensors import safe_open
    import torch

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a geoloc_ros text tower (format {meta.get('format')!r})")
    if meta.get("encoder_fingerprint") != encoder.fingerprint:
        raise ValueError(f"{path}: belongs to encoder {meta.get('encoder_fingerprint', '?')[:12]}..., not "
                         f"{encoder.fingerprint[:12]}...")
    try:
        arch, dim = json.loads(meta["arch"]), int(meta["dim"])
        if not isinstance(arch, dict):
            raise ValueError("arch is not a JSON object")
        tower = _build_tower(arch)
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError, RuntimeError) as e:
        raise ValueError(f"{path}: not a readable text tower header ({type(e).__name__}: {str(e)[:200]})") from None
    proj_state = {k[len("projection."):]: v for k, v in state.items() if k.startswith("projection.")}
    try:
        tower.load_state_dict({k: v for k, v in state.items() if not k.startswith("projection.")})
        projection = None
        if proj_state:
            weight = proj_state["weight"]
            projection = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in proj_state)
            projection.load_state_dict(proj_state)
    except (RuntimeError, KeyError, IndexError) as e:
        raise ValueError(f"{path}: tensors do not fit the architecture ({(str(e).splitlines() or [''])[0]})") from None
    return TextTower(tower, arch, dim, projection, path)


def find_text_tower(encoder, checkpoint=None):
    """(TextTower, "") from the text_tower.safetensors beside the encoder's checkpoint (or `checkpoint`), else
    (None, why not)."""
    source = checkpoint or encoder.metadata.get("checkpoint")
    if not source:
        return None, "the encoder was not loaded from a file"
    folder = Path(source) if Path(source).is_dir() else Path(source).parent
    path = folder / TEXT_TOWER_NAME
    if not path.is_file():
        return None, f"the encoder carries no CLIP text tower (no {path})"
    try:
        return load_text_tower(path, encoder), ""
    except ValueError as e:
        return None, str(e)
