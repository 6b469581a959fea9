"""Encoder checkpoints: one self-describing safetensors file, plus a loader for ProGEO's released state dicts.

File: ``encoder.safetensors`` (the name `load_encoder` looks for inside a directory, e.g. a map directory).
Tensors: the GeoLocalizationNet state dict (``backbone.*``, ``aggregation.*``), float32.
safetensors metadata (all strings):

    format          "geoloc_ros.encoder"
    format_version  "1"
    arch            JSON: the architecture dict (name, embed_dim, vision_cfg, text_cfg, quick_gelu)
    dim             descriptor dimension, e.g. "256"
    preprocess      JSON: {"image_size": [H, W], "mean": [...], "std": [...], "resize": ..., "channels": "RGB"}
    training        JSON: free-form training metadata (recipe, data, seed, epochs, losses, git commit, ...)
    fingerprint     sha256 hex of weights + arch + dim + preprocess (checked on load)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from geoloc_ros.model.archs import arch_config, canonical_name, feature_channels, is_resnet
from geoloc_ros.model.encoder import PROGEO_IMAGE_SIZE, Encoder, fingerprint_of, make_preprocess

CHECKPOINT_NAME = "encoder.safetensors"
FORMAT = "geoloc_ros.encoder"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: the message names the file and what is wrong."""


def save_encoder(encoder, path, training: dict | None = None) -> Path:
    """Write `encoder` to `path` (a file, or a directory that receives ``encoder.safetensors``), atomically.
    `training` metadata is merged into the encoder's own metadata. Returns the file written."""
    from safetensors.torch import save_file
    import torch

    path = Path(path)
    if path.is_dir() or (not path.suffix and not path.exists()):
        path.mkdir(parents=True, exist_ok=True)
        path = path / CHECKPOINT_NAME
    state = {k: v.detach().to("cpu", torch.float32).contiguous() if v.is_floating_point() else v.detach().cpu()
             .contiguous() for k, v in encoder.net.state_dict().items()}
    # The fingerprint is computed on what is written (fp32), so a loaded copy reports the same value.
    meta_training = {k: v for k, v in {**encoder.metadata, **(training or {})}.items()
                     if k != "checkpoint"}  # where it was loaded from is runtime information
    fp = fingerprint_of(state, encoder.config())
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "arch": json.dumps(encoder.arch),
                "dim": str(encoder.dim), "preprocess": json.dumps(encoder.preprocess),
                "training": json.dumps(meta_training, default=str), "fingerprint": fp}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def find_checkpoint(path) -> Path:
    """A checkpoint file, or a directory holding ``encoder.safetensors`` (or exactly one *.safetensors / *.pth)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / CHECKPOINT_NAME).is_file():
            return path / CHECKPOINT_NAME
        found = sorted(list(path.glob("*.safetensors")) + list(path.glob("*.pth")) + list(path.glob("*.pt")))
        if len(found) == 1:
            return found[0]
        raise CheckpointError(f"{path}: no {CHECKPOINT_NAME} in this directory"
                              + (f" (and several candidates: {', '.join(p.name for p in found)})" if found else ""))
    raise CheckpointError(f"{path}: no such checkpoint file or directory")


def load_encoder(path, device="auto", half: bool | None = None, arch: str | None = None, dim: int | None = None,
                 batch_size: int = 64, combiner: bool = True):
    """Load an encoder from `path`: a checkpoint file or a directory holding one (e.g. a map directory).

    Reads this package's ``encoder.safetensors`` format and ProGEO's released ``.pth`` state dicts (the authors'
    ``GeoLocalizationNet``: ``backbone.*`` = CLIP visual tower, ``aggregation.3`` = Linear for ResNets; the text
    tower keys are ignored). `arch`/`dim`, when given, are checked against the checkpoint (a mismatch raises
    CheckpointError). `device`: "auto" (CUDA when available), "cuda", "cpu"; `half`: fp16 (default: on CUDA).
    With a feature combiner beside the checkpoint (model/fused_encoder.py) the result is a FusedEncoder, whose
    `encode(images, texts=None)` fuses scene descriptions; `combiner=False` gives the image encoder alone.
    """
    file = find_checkpoint(path)
    try:
        with open(file, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"{file}: cannot read ({e})") from None
    if _looks_like_safetensors(head):
        net, preprocess, meta = _load_safetensors(file, arch, dim)
    else:
        net, preprocess, meta = _load_torch(file, arch, dim)
    meta = {**meta, "checkpoint": str(file)}
    encoder = Encoder(net, preprocess, meta, device=device, half=half, batch_size=batch_size)
    if not combiner:
        return encoder
    from geoloc_ros.model.fused_encoder import with_combiner

    return with_combiner(encoder, file)


def read_safetensors_metadata(file) -> dict:
    """The ``__metadata__`` strings of a safetensors file, parsed from its header alone: no weights read and no
    torch, so the map database reads encoder fingerprints with it too. Raises CheckpointError naming the file."""
    file = Path(file)
    try:
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100_000_000:
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError("__metadata__ is not an object of strings")
    except (OSError, ValueError) as e:  # JSON and UTF-8 decoding errors are ValueErrors
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{file}: not a readable safetensors file (its header is nested too deeply)") from None
    return dict(meta)


def read_header(path) -> dict:
    """The metadata of an ``encoder.safetensors`` file (no weights loaded), JSON fields decoded."""
    file = find_checkpoint(path)
    meta = read_safetensors_metadata(file)
    for k in ("arch", "preprocess", "training"):
        if k in meta:
            try:
                meta[k] = json.loads(meta[k])
            except (ValueError, RecursionError) as e:
                raise CheckpointError(f"{file}: header field {k!r} is not readable JSON "
                                      f"({type(e).__name__}: {str(e)[:200]})") from None
    return meta


# ---- internals -------------------------------------------------------------------------------------------------
def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < 100_000_000 and head[8:9] == b"{"


def _load_safetensors(file: Path, arch, dim):
    from safetensors.torch import load_file

    meta = read_header(file)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{file}: not a geoloc_ros encoder checkpoint (format={meta.get('format')!r}, "
                              f"expected {FORMAT!r})")
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        version = -1
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{file}: checkpoint format version {meta.get('format_version')!r}, this code reads "
                              f"version {FORMAT_VERSION}")
    try:
        cfg, ckpt_dim, preprocess = meta["arch"], int(meta["dim"]), meta["preprocess"]
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{file}: incomplete header ({e})") from None
    _check_expected(file, cfg, ckpt_dim, arch, dim)
    try:
        state = load_file(str(file))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{file}: corrupt weights ({e})") from None
    net = _net_from_state(file, cfg, ckpt_dim, state)
    if meta.get("fingerprint"):
        from geoloc_ros.model.encoder import fingerprint_of

        fp = fingerprint_of(net.state_dict(), {"arch": cfg, "dim": ckpt_dim, "preprocess": preprocess})
        if fp != meta["fingerprint"]:
            raise CheckpointError(f"{file}: fingerprint mismatch (header {meta['fingerprint'][:12]}, weights "
                                  f"{fp[:12]}): the file was modified or damaged")
    return net, preprocess, meta.get("training", {})


def _check_expected(file, cfg, ckpt_dim, arch, dim):
    if arch is not None and canonical_name(arch) != cfg.get("name"):
        raise CheckpointError(f"{file}: architecture mismatch: checkpoint holds {cfg.get('name')!r}, "
                              f"expected {canonical_name(arch)!r}")
    if dim is not None and int(dim) != ckpt_dim:
        raise CheckpointError(f"{file}: descriptor dimension mismatch: checkpoint has {ckpt_dim}, expected {dim}")


def _net_from_state(file, cfg, dim, state):
    """Build the net for cfg/dim and load `state` strictly; any missing/unexpected/misshapen tensor -> error."""
    from geoloc_ros.model.network import GeoLocalizationNet

    try:
        net = GeoLocalizationNet(cfg, dim)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{file}: cannot build architecture {cfg.get('name')!r} ({e})") from None
    expected = net.state_dict()
    state = dict(state)
    for k, v in expected.items():  # BatchNorm counters are absent from OpenAI CLIP / ProGEO state dicts
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [f"{k}: checkpoint {tuple(state[k].shape)} vs {cfg.get('name')} {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or misshapen:
        parts = []
        if misshapen:
            parts.append(f"{len(misshapen)} tensor(s) of the wrong shape, e.g. {misshapen[0]}")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        raise CheckpointError(f"{file}: architecture mismatch with {cfg.get('name')!r} (dim {dim}): "
                              + "; ".join(parts))
    net.load_state_dict(state, strict=True)
    return net


def _load_torch(file: Path, arch, dim):
    """ProGEO / CosPlace-style torch checkpoints: a state dict, or a dict holding one under
    ``model_state_dict`` / ``state_dict`` (util.save_checkpoint), optionally with ``module.`` prefixes."""
    import torch

    try:
        obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{file}: neither a safetensors encoder nor a readable torch checkpoint ({e})") from None
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{file}: not a state dict (got {type(obj).__name__})")
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}
    if not any(k.startswith("backbone.") for k in state):
        raise CheckpointError(f"{file}: not a ProGEO checkpoint (no 'backbone.*' tensors)")
    cfg, ckpt_dim = infer_progeo_arch(file, state)
    _check_expected(file, cfg, ckpt_dim, arch, dim)
    keep = {k: v for k, v in state.items() if k.startswith(("backbone.", "aggregation."))
            and not k.startswith("backbone.attnpool.")}
    # OpenAI CLIP's ResNet has no act modules and open_clip names them act1..3 (no tensors): names match.
    net = _net_from_state(file, cfg, ckpt_dim, keep)
    # ProGEO feeds 512x512 images (parser.py --image_size); a ViT's positional grid fixes its own input size.
    size = PROGEO_IMAGE_SIZE if is_resnet(cfg) else cfg["vision_cfg"]["image_size"]
    preprocess = make_preprocess(size)
    return net, preprocess, {"source": "ProGEO checkpoint", "file": str(file)}


def infer_progeo_arch(file, state):
    """Architecture dict and descriptor dim of a ProGEO state dict, read from tensor shapes as CLIP's
    build_model does."""
    if "backbone.proj" in state:  # ViT
        width = state["backbone.conv1.weight"].shape[0]
        patch = state["backbone.conv1.weight"].shape[-1]
        layers = len([k for k in state if k.startswith("backbone.transformer.resblocks.")
                      and k.endswith(".attn.in_proj_weight")])
        grid = round((state["backbone.positional_embedding"].shape[0] - 1) ** 0.5)
        embed = state["backbone.proj"].shape[1]
        name = {16: "ViT-B-16", 32: "ViT-B-32"}.get(patch, f"ViT-custom-p{patch}")
        if name in ("ViT-B-16", "ViT-B-32"):  # the same dict as build_encoder's, so fingerprints agree
            cfg = arch_config(name, grid * patch)
        else:
            cfg = {"name": name, "text_cfg": {}, "quick_gelu": True, "embed_dim": embed,
                   "vision_cfg": {"image_size": grid * patch, "layers": layers, "width": width, "patch_size": patch}}
        dim = state["aggregation.0.weight"].shape[0] if "aggregation.0.weight" in state else embed
        return cfg, dim
    if "backbone.layer1.0.conv1.weight" in state:  # ModifiedResNet
        counts = [len({k.split(".")[2] for k in state if k.startswith(f"backbone.layer{i}.")}) for i in (1, 2, 3, 4)]
        width = state["backbone.conv1.weight"].shape[0] * 2
        embed = state["backbone.attnpool.c_proj.weight"].shape[0] if "backbone.attnpool.c_proj.weight" in state \
            else width * 32
        name = {(3, 4, 6, 3): "RN50", (3, 4, 23, 3): "RN101"}.get(tuple(counts), "RN-custom")
        # The attention pool (stage 1 only) is not part of the encoder, so its native grid does not matter here:
        # the architecture records the input ProGEO feeds (512), as build_encoder(arch="RN50") does.
        if name in ("RN50", "RN101"):
            cfg = arch_config(name, PROGEO_IMAGE_SIZE)
        else:
            cfg = {"name": name, "text_cfg": {}, "quick_gelu": True, "embed_dim": embed,
                   "vision_cfg": {"image_size": PROGEO_IMAGE_SIZE, "layers": counts, "width": width}}
        if "aggregation.3.weight" not in state:
            raise CheckpointError(f"{file}: ResNet ProGEO checkpoint without its aggregation layer "
                                  f"'aggregation.3.weight'")
        dim = state["aggregation.3.weight"].shape[0]
        if state["aggregation.3.weight"].shape[1] != feature_channels(cfg):
            raise CheckpointError(f"{file}: aggregation.3.weight takes {state['aggregation.3.weight'].shape[1]} "
                                  f"channels, backbone gives {feature_channels(cfg)}")
        return cfg, dim
    raise CheckpointError(f"{file}: unrecognised ProGEO backbone (neither CLIP ResNet nor ViT tensors)")
