"""`FusedEncoder`: an image encoder plus a feature combiner (model/combiner.py), so `encode(images, texts=None)`
fuses a scene description into each descriptor when one is given.

The combiner travels as a sidecar file beside the encoder's checkpoint, as the text tower does:

    combiner.safetensors   tensors: the FeatureCombiner state dict (float32)
                           metadata: format "geoloc_ros.combiner", format_version "1", config (JSON: the
                           combiner's sizes), encoder_fingerprint (the image encoder it was trained on: a
                           combiner is refused for any other), fingerprint (the fused encoder's, checked on
                           load; maps read it without torch), training (JSON, free-form)

`load_encoder` returns a FusedEncoder when the sidecar is there; maps carry the sidecar with their encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from geoloc_ros.model.checkpoint import CheckpointError, read_safetensors_metadata

COMBINER_NAME = "combiner.safetensors"
FORMAT = "geoloc_ros.combiner"
FORMAT_VERSION = "1"


class FusedEncoder:
    """Image (+ description) -> fused descriptor. `base` is any encoder with the Encoder interface (a backend of
    geoloc_ros.deploy too); its descriptors feed the combiner, which runs in PyTorch on the CPU (it is small)."""

    def __init__(self, base, combiner, metadata: dict | None = None):
        self.base = base
        self.combiner = combiner.eval()
        self.metadata = dict(metadata or {})
        self._fingerprint = None

    @property
    def dim(self) -> int:
        return self.combiner.out_dim

    @property
    def fingerprint(self) -> str:
        """sha256 of the base encoder's fingerprint, the combiner's sizes and its weights."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.base.fingerprint.encode())
            h.update(json.dumps(self.combiner.config, sort_keys=True).encode())
            for name, t in sorted(self.combiner.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __getattr__(self, name):
        # image_size, preprocess, arch, device, backend_reason, ...: the base encoder's
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def fuse(self, image_descriptors: np.ndarray, texts=None) -> np.ndarray:
        """Base descriptors (N, base dim) + descriptions (None, or N strings; empty for none) -> (N, dim)."""
        import torch

        from geoloc_ros.model.combiner import tokenize

        d = np.asarray(image_descriptors, dtype=np.float32)
        texts = [""] * len(d) if texts is None else list(texts)
        if len(texts) != len(d):
            raise ValueError(f"{len(d)} images but {len(texts)} descriptions")
        if not len(d):
            return np.zeros((0, self.dim), dtype=np.float32)
        ids, mask = tokenize(texts)
        with torch.inference_mode():
            return self.combiner(torch.from_numpy(d), ids, mask).numpy().astype(np.float32)

    def encode(self, images, texts=None, batch_size: int | None = None) -> np.ndarray:
        """Images (as Encoder.encode takes them) and their descriptions -> float32 (N, dim), rows L2-normalised.
        `texts` None (or an empty string for one image) takes the image-only path: the combiner's "no text"
        token."""
        return self.fuse(self.base.encode(images, batch_size=batch_size), texts)

    __call__ = encode

    def __repr__(self):
        return f"FusedEncoder(base={self.base!r}, dim={self.dim}, fingerprint={self.fingerprint[:12]})"


def save_combiner(combiner, folder, base, training: dict | None = None) -> Path:
    """Write `combiner` (trained on the image encoder `base`) as COMBINER_NAME into `folder`, atomically."""
    from safetensors.torch import save_file
    import torch

    path = Path(folder) / COMBINER_NAME
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in combiner.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": json.dumps(combiner.config),
            "encoder_fingerprint": base.fingerprint, "fingerprint": FusedEncoder(base, combiner).fingerprint,
            "training": json.dumps(training or {}, default=str)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def combiner_beside(checkpoint) -> Path | None:
    """The combiner sidecar beside an encoder checkpoint file, or None."""
    path = Path(checkpoint).parent / COMBINER_NAME
    return path if path.is_file() else None


def load_combiner(path, base):
    """The FeatureCombiner in `path`, checked against the image encoder `base`; CheckpointError naming the file
    when it is not a combiner, is damaged, or belongs to another encoder."""
    from safetensors.torch import load_file

    from geoloc_ros.model.combiner import FeatureCombiner

    path = Path(path)
    meta = read_safetensors_metadata(path)
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a combiner file of format {FORMAT} v{FORMAT_VERSION}")
    if meta.get("encoder_fingerprint") != base.fingerprint:
        raise CheckpointError(f"{path}: trained on encoder {str(meta.get('encoder_fingerprint'))[:12]}..., "
                              f"not on this one ({base.fingerprint[:12]}...)")
    try:
        config = json.loads(meta["config"])
        combiner = FeatureCombiner(**config)
        combiner.load_state_dict(load_file(str(path)))
    except Exception as e:  # noqa: BLE001 - any damage to sizes or tensors is one refusal with the reason
        raise CheckpointError(f"{path}: damaged combiner ({type(e).__name__}: {e})") from None
    if combiner.config["image_dim"] != base.dim:
        raise CheckpointError(f"{path}: expects {combiner.config['image_dim']}-d image descriptors, the encoder "
                              f"gives {base.dim}")
    if FusedEncoder(base, combiner).fingerprint != meta.get("fingerprint"):
        raise CheckpointError(f"{path}: the weights do not match the fingerprint in the header (altered file)")
    return combiner.eval()


def with_combiner(base, checkpoint):
    """`base` fused with the combiner beside `checkpoint`, or `base` itself when there is none."""
    path = combiner_beside(checkpoint)
    if path is None:
        return base
    return FusedEncoder(base, load_combiner(path, base), metadata={"combiner": str(path)})
