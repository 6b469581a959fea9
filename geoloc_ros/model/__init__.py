"""geoloc_ros.model: the ProGEO encoder, its checkpoints, training and evaluation. No ROS imports.

Public API (stable; see docs/model.md):

    from geoloc_ros.model import load_encoder
    enc = load_encoder(path, device="auto")   # checkpoint file, or a directory holding encoder.safetensors
    enc.encode(images)   # list of HxWx3 uint8 RGB (any size; grey / RGBA accepted)
                         # -> float32 (N, enc.dim), L2-normalised
    enc.dim, enc.fingerprint, enc.device

    build_encoder(arch="RN-nano", dim=None, image_size=None)   # a fresh (random or open_clip-pretrained) encoder
    save_encoder(enc, path)                                     # write encoder.safetensors
"""

from geoloc_ros.model.archs import ARCH_NAMES
from geoloc_ros.model.checkpoint import CHECKPOINT_NAME, CheckpointError, load_encoder, read_header, save_encoder
from geoloc_ros.model.encoder import Encoder, build_encoder

__all__ = ["ARCH_NAMES", "CHECKPOINT_NAME", "CheckpointError", "Encoder", "build_encoder", "load_encoder",
           "read_header", "save_encoder"]
