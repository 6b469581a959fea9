"""Pretrained CLIP weights for ProGEO's backbones, loaded at CLIP's native size and adapted to the input size.

`pretrained` is one of
- an open_clip pretrained tag for the architecture (``"openai"``, ``"laion2b_s34b_b79k"``, ...): open_clip
  downloads it on first use (never in the tests);
- a local file in open_clip's layout (a ``torch.save``d CLIP state dict, optionally wrapped as
  ``{"state_dict": ...}`` with ``module.`` prefixes, or a ``.safetensors`` file), read by ``open_clip.load_checkpoint``
  strictly (every tensor present, none extra);
- one of OpenAI's original files (a TorchScript archive such as ``RN50.pt``, or its state dict), read by
  ``open_clip.load_openai_model``.

The model is always built at the size the weights were trained at, so every tensor loads with its own shape, and
then adapted the way ProGEO's ``clip.build_model(..., image_size=512)`` adapts it:
- ResNets keep the attention pool at its native grid (7x7 for 224 px); it is only used by stage 1, and
  `network.attnpool_any_size` interpolates its positional embedding to the actual feature map at run time. The
  descriptor (layer4 -> GeM -> Linear) does not depend on the input size.
- ViTs get their positional embedding resampled once to the input's patch grid, bicubic with aligned corners, as
  ProGEO's ``interpolate_embeddings`` does (open_clip's own resize uses unaligned corners and antialiasing, which
  would give other descriptors than the authors' code).
"""

from __future__ import annotations

from pathlib import Path
import zipfile

from geoloc_ros.model.archs import hw, is_resnet


def native_image_size(cfg: dict) -> int:
    """The input size a backbone's pretrained weights were made for: open_clip's config size for its named
    models (224 for ProGEO's four); for our small CPU archs (no pretrained weights) the configured size."""
    import open_clip

    base = open_clip.get_model_config(cfg["name"]) if cfg.get("name") in open_clip.list_models() else None
    if base is not None:
        return int(base["vision_cfg"]["image_size"])
    return max(hw(cfg["vision_cfg"]["image_size"]))


def is_torchscript(path) -> bool:
    """True for a TorchScript archive (OpenAI's released CLIP files): a zip holding code/ and constants.pkl."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def load_pretrained_clip(cfg: dict, pretrained: str):
    """An open_clip CLIP for `cfg` holding `pretrained`'s weights, adapted to cfg's input size (see module doc).
    Raises ValueError naming the source when the weights do not fit the architecture."""
    import open_clip

    path = Path(pretrained).expanduser()
    if not path.is_file() and (path.suffix or "/" in pretrained):
        raise ValueError(f"{pretrained}: no such weights file")
    try:
        if path.is_file() and is_torchscript(path):
            model = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
        elif path.is_file():
            model = native_clip(cfg)
            open_clip.load_checkpoint(model, str(path), strict=True)
        else:
            model = open_clip.create_model(cfg["name"], pretrained=pretrained, force_quick_gelu=cfg.get("quick_gelu"))
    except (RuntimeError, KeyError) as e:
        raise ValueError(f"{pretrained}: weights do not fit {cfg.get('name')}: {e}") from None
    check_shapes(model, cfg, pretrained)
    model.float().eval()
    if not is_resnet(cfg):
        # stage 1 embeds at the native size (stage1_images): keep the table the weights came with
        model.visual.native_positional_embedding = model.visual.positional_embedding.data.clone()
        resize_vit_positions(model.visual, hw(cfg["vision_cfg"]["image_size"]))
    return model


def native_clip(cfg: dict):
    """A randomly initialised CLIP for `cfg` at its native size (the attention pool / patch grid the weights of
    that architecture have)."""
    from open_clip.model import CLIP

    vision_cfg = {**cfg["vision_cfg"], "image_size": native_image_size(cfg)}
    return CLIP(embed_dim=cfg["embed_dim"], vision_cfg=vision_cfg, text_cfg=dict(cfg["text_cfg"]),
                quick_gelu=bool(cfg.get("quick_gelu", False)))


def check_shapes(model, cfg: dict, source: str):
    """The loaded visual tower must have cfg's shapes (an OpenAI file builds whatever architecture it holds)."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower
    import torch

    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        vision_cfg = CLIPVisionCfg(**{**cfg["vision_cfg"], "image_size": native_image_size(cfg)})
        tower = _build_vision_tower(cfg["embed_dim"], vision_cfg, quick_gelu=bool(cfg.get("quick_gelu")))
    expected = tower.state_dict()
    got = model.visual.state_dict()
    wrong, extra = mismatched_tensors(expected, got)
    if wrong or extra:
        k = (wrong or extra)[0]
        raise ValueError(f"{source}: weights do not fit {cfg.get('name')}: visual.{k} "
                         f"{tuple(got[k].shape) if k in got else 'missing'} vs "
                         f"{tuple(expected[k].shape) if k in expected else 'not in the architecture'}")


def resize_vit_positions(visual, size):
    """Resample a ViT's positional embedding (class token kept) to the patch grid of an input of `size` (H, W),
    bicubic with aligned corners like ProGEO, and update the tower's recorded sizes."""
    import torch
    import torch.nn.functional as F

    patch = hw(visual.patch_size) if hasattr(visual, "patch_size") else hw(visual.conv1.kernel_size)
    grid = (size[0] // patch[0], size[1] // patch[1])
    pos = visual.positional_embedding.data
    side = round((pos.shape[0] - 1) ** 0.5)
    if (side, side) == grid:
        return visual
    img = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=grid, mode="bicubic", align_corners=True)
    new = torch.cat([pos[:1], img.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)], dim=0)
    visual.positional_embedding = torch.nn.Parameter(new.contiguous())
    visual.grid_size = grid
    visual.image_size = tuple(size)
    return visual


def mismatched_tensors(expected: dict, got: dict) -> tuple[list, list]:
    """State-dict keys of `expected` that `got` lacks or holds in another shape, and keys only `got` has."""
    wrong = [k for k in expected if k not in got or tuple(got[k].shape) != tuple(expected[k].shape)]
    return wrong, [k for k in got if k not in expected]
