"""Do ProGEO-layout checkpoints give the official code's descriptors? Runs the authors' network code from a checkout
of Chain-Mao/ProGEO (not part of this repository) beside `load_encoder` on the same weights and inputs.

    python tools/progeo_parity.py --progeo-src ~/src/ProGEO [--arch RN50 --dim 1024 --image-size 512 --images 2]

The authors' `cosplace_network_stage2.GeoLocalizationNet` parses the command line and downloads CLIP when it is
imported, so this builds the same network from their own pieces: `clip/model.py`'s `build_model(state_dict,
image_size)` (their CLIP, positional tables resized their way) and, for ResNets, their stage-2 head from
`cosplace_model/layers.py` (L2Norm, GeM, Flatten, Linear, L2Norm) on `visual(x, stage=2)`; ViTs return `visual(x)`.
The CLIP weights are random (open_clip's initialisation), written as their checkpoint layout (``backbone.*``,
``aggregation.*``) and read back by `load_encoder`. Prints the largest difference and the worst cosine.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
import sys
import tempfile


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_network(src: Path, arch: str, dim: int, image_size: int, seed: int):
    """(their visual tower, their head or None, the ProGEO-layout state dict)."""
    import torch

    from geoloc_ros.model.archs import arch_config, feature_channels, is_resnet
    from geoloc_ros.model.pretrained import native_clip

    their_clip = _load_module(src / "clip" / "model.py", "progeo_clip_model")
    layers = _load_module(src / "cosplace_model" / "layers.py", "progeo_layers")
    torch.manual_seed(seed)
    cfg = arch_config(arch)
    weights = native_clip(cfg).state_dict()  # OpenAI's names, at CLIP's native size
    weights.pop("attn_mask", None)
    model = their_clip.build_model({k: v.clone() for k, v in weights.items()}, image_size=image_size).float().eval()
    head = None
    if is_resnet(cfg):
        head = torch.nn.Sequential(layers.L2Norm(), layers.GeM(), layers.Flatten(),
                                   torch.nn.Linear(feature_channels(cfg), dim), layers.L2Norm()).eval()
    state = {"backbone." + k: v for k, v in model.visual.state_dict().items()}
    if head is not None:
        state.update({"aggregation." + k: v for k, v in head.state_dict().items()})
    state["token_embedding.weight"] = model.token_embedding.weight.detach()  # their checkpoints carry the text side
    return model.visual, head, state


def main(argv=None):
    import numpy as np
    import torch

    from geoloc_ros.model import load_encoder

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--progeo-src", required=True, type=Path, help="a checkout of Chain-Mao/ProGEO")
    p.add_argument("--arch", default="RN50", help="RN50, RN101, ViT-B-16 or ViT-B-32")
    p.add_argument("--dim", type=int, default=1024, help="descriptor size of a ResNet head (ViTs: 512)")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    visual, head, state = official_network(args.progeo_src, args.arch, args.dim, args.image_size, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "progeo_layout.pth"
        torch.save({"model_state_dict": state}, file)
        enc = load_encoder(file, device="cpu", half=False)
    rng = np.random.default_rng(args.seed)
    images = [rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8) for _ in range(args.images)]
    x = enc.to_tensor(images)
    theirs = head(visual(x, stage=2)) if head is not None else visual(x)
    ours_raw = enc.net.raw_descriptor(x)
    ours = torch.from_numpy(enc.encode(images))
    unit = torch.nn.functional.normalize(theirs, dim=1)
    print(f"{args.arch} {args.image_size}x{args.image_size} -> {enc.dim}-d, {args.images} random images, CPU fp32, "
          f"torch {torch.__version__}")
    print(f"  raw descriptor (VG protocol): bit-for-bit {torch.equal(ours_raw, theirs)}, "
          f"max |diff| {float((ours_raw - theirs).abs().max()):.3g}")
    print(f"  L2-normalised (encode): max |diff| {float((ours - unit).abs().max()):.3g}, "
          f"worst cosine {float((ours * unit).sum(1).min()):.7f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
