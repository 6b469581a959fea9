"""Fine-tuning from an encoder checkpoint (`geoloc train --init-from`): any file `load_encoder` reads (this
package's encoder.safetensors, e.g. the bundled maps/nordland_demo one, or a ProGEO release .pth) gives the
architecture, descriptor size and input size of the run, and its weights replace the run's initial image tower.
open_clip weights stay `--pretrained`. The CLIP text side that stage 1 uses is not in such checkpoints: it comes
from `--pretrained` when given, else it is the seed's random one.
"""

from __future__ import annotations

from geoloc_ros.model.archs import ARCH_NAMES
from geoloc_ros.model.checkpoint import CheckpointError, load_encoder


def checkpoint_config(path) -> tuple[dict, object]:
    """(TrainConfig values the checkpoint fixes: arch, dim, image_size, pool_grid; the loaded CPU encoder)."""
    enc = load_encoder(path, device="cpu", half=False)
    name = enc.arch.get("name")
    if name not in ARCH_NAMES:
        raise CheckpointError(f"{path}: architecture {name!r} cannot be trained here (trainable: "
                              f"{', '.join(ARCH_NAMES)})")
    values = {"arch": name, "dim": enc.dim, "image_size": list(enc.image_size)}
    if enc.arch.get("pool_grid"):
        values["pool_grid"] = list(enc.arch["pool_grid"])
    return values, enc


def load_weights(trainer, encoder, source) -> None:
    """Copy `encoder`'s weights into the trainer's network (same architecture, checked tensor by tensor)."""
    theirs = encoder.net.state_dict()
    ours = trainer.net.state_dict()
    wrong = [k for k in ours if k not in theirs or tuple(theirs[k].shape) != tuple(ours[k].shape)]
    extra = [k for k in theirs if k not in ours]
    if wrong or extra:
        k = (wrong or extra)[0]
        raise CheckpointError(f"{source}: does not fit the run's network ({len(wrong)} missing or misshapen, "
                              f"{len(extra)} unexpected tensors, e.g. {k}); keep the checkpoint's --arch, --dim "
                              f"and --image-size")
    trainer.net.load_state_dict(theirs)
