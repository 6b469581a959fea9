"""Fine-tuning from an encoder checkpoint (`geoloc train --init-from`): any file `load_encoder` reads (this
package's encoder.safetensors, e.g. the bundled maps/nordland_demo one, or a ProGEO release .pth) gives the
architecture, descriptor size and input size of the run, and its weights replace the run's initial image tower.
open_clip weights stay `--pretrained`. The CLIP text side that stage 1 uses is not in such checkpoints: it comes
from `--pretrained` when given, else it is the seed's random one.
"""

from __future__ import annotations

from geoloc_ros.model.archs import ARCH_NAMES, arch_config
from geoloc_ros.model.checkpoint import CheckpointError, load_encoder
from geoloc_ros.model.pretrained import mismatched_tensors


def checkpoint_config(path) -> tuple[dict, object]:
    """(TrainConfig values the checkpoint fixes: arch, dim, image_size, pool_grid; the loaded CPU encoder)."""
    enc = load_encoder(path, device="cpu", half=False)
    name = trainable_name(enc.arch)
    if name is None:
        raise CheckpointError(f"{path}: architecture {enc.arch.get('name')!r} is none of the trainable ones "
                              f"({', '.join(ARCH_NAMES)})")
    values = {"arch": name, "dim": enc.dim, "image_size": list(enc.image_size)}
    if enc.arch.get("pool_grid"):
        values["pool_grid"] = list(enc.arch["pool_grid"])
    return values, enc


def trainable_name(arch: dict) -> str | None:
    """The architecture name `arch_config` builds `arch` from: its own name, or for a ProGEO state dict of an
    unnamed ResNet/ViT ("RN-custom") the known architecture with the same tower (layers, width, patch, embedding)."""
    if arch.get("name") in ARCH_NAMES:
        return arch["name"]
    keys = ("layers", "width", "patch_size")

    def tower(cfg):
        return [cfg["embed_dim"]] + [cfg["vision_cfg"].get(k) for k in keys]

    return next((n for n in ARCH_NAMES if tower(arch_config(n)) == tower(arch)), None)


def load_weights(trainer, encoder, source) -> None:
    """Copy `encoder`'s weights into the trainer's network (same architecture, checked tensor by tensor)."""
    theirs = encoder.net.state_dict()
    ours = trainer.net.state_dict()
    wrong, extra = mismatched_tensors(ours, theirs)
    if wrong or extra:
        k = (wrong or extra)[0]
        raise CheckpointError(f"{source}: does not fit the run's network ({len(wrong)} missing or misshapen, "
                              f"{len(extra)} unexpected tensors, e.g. {k}); keep the checkpoint's --arch, --dim "
                              f"and --image-size")
    trainer.net.load_state_dict(theirs)
