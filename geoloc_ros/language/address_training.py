"""The optional AddressCLIP stage (docs/language.md): fine-tune an encoder's descriptors together with a CLIP
text tower and a linear map text space -> descriptor space on images with addresses, captions and positions,
with AddressCLIP's three terms (language/losses.py). Off unless asked for: `geoloc train` does not run it by
itself (see docs/language.md for how it hooks in); `address_stage` is the standalone stage and `address_step`
one optimisation step of it.

The result is an ordinary encoder.safetensors plus text_tower.safetensors beside it (language/text_tower.py):
maps built with it carry both, and `geoloc map query --text` / `~/find_place` then answer with the text tower.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from pathlib import Path

import numpy as np

from geoloc_ros.language.annotate import csv_text
from geoloc_ros.language.losses import AddressLossWeights, address_clip_loss
from geoloc_ros.language.text_tower import _build_tower, save_text_tower
from geoloc_ros.model import load_encoder, save_encoder


@dataclass
class AddressSample:
    image: object  # HxWx3 uint8 RGB array or an image path
    address: str
    caption: str = ""
    lat: float = math.nan
    lon: float = math.nan


class AddressStage:
    """The trainable parts: the encoder's network (descriptors), the text tower and the projection."""

    def __init__(self, encoder, clip=None, lr: float = 1e-4, weights: AddressLossWeights | None = None,
                 seed: int = 0):
        import torch

        torch.manual_seed(seed)
        self.encoder = encoder
        self.weights = weights or AddressLossWeights()
        self.tower = _build_tower(encoder.arch)
        if clip is not None:  # open_clip pretrained (or stage 1's frozen) text tower to start from
            own = self.tower.state_dict()
            self.tower.load_state_dict({k: v for k, v in clip.state_dict().items() if k in own})
        self.tower.to(encoder.device)
        self.projection = torch.nn.Linear(int(encoder.arch["embed_dim"]), encoder.dim).to(encoder.device)
        # The token embedding table (49408 rows, a batch of addresses uses a few dozen) stays frozen: it would be
        # most of the tower's gradient and optimizer work for rows that do not change.
        self.tower.token_embedding.weight.requires_grad_(False)
        text_params = [p for p in self.tower.parameters() if p.requires_grad]
        params = list(encoder.net.parameters()) + text_params + list(self.projection.parameters())
        self.optimizer = torch.optim.Adam(params, lr=lr)
        self.context_length = int(encoder.arch["text_cfg"]["context_length"])

    def text_features(self, texts):
        import open_clip

        tokens = open_clip.tokenize(list(texts), context_length=self.context_length).to(self.encoder.device)
        return self.projection(self.tower(tokens).float())

    def step(self, samples: list[AddressSample]) -> dict:
        """One optimisation step on `samples` (one batch); returns the loss terms as floats."""
        from geoloc_ros.datasets import read_image

        images = [read_image(s.image) if not isinstance(s.image, np.ndarray) else s.image for s in samples]
        self.encoder.net.train()
        self.tower.train()
        image_features = self.encoder.net(self.encoder.to_tensor(images)).float()
        address_ids = _ids([s.address for s in samples])
        captions = [s.caption for s in samples]
        caption_features = self.text_features(captions) if all(captions) else None
        terms = address_clip_loss(image_features, self.text_features([s.address for s in samples]),
                                  caption_features, [(s.lat, s.lon) for s in samples], address_ids,
                                  _ids(captions), self.weights)
        self.optimizer.zero_grad()
        terms["total"].backward()
        self.optimizer.step()
        self.encoder.net.eval()
        self.tower.eval()
        return {k: float(v.detach()) for k, v in terms.items()}

    def save(self, folder):
        """encoder.safetensors + text_tower.safetensors into `folder`; returns the encoder file."""
        path = save_encoder(self.encoder, folder, training={"address_stage": {
            "losses": "AddressCLIP image-address + image-caption contrast + geographic matching",
            "weights": vars(self.weights)}})
        save_text_tower(self.tower, path.parent, self.encoder, self.projection)
        return path


def _ids(texts) -> list[int]:
    index = {}
    return [index.setdefault(t, len(index)) for t in texts]


def address_stage(encoder, samples, steps: int = 20, batch_size: int = 8, **options):
    """Train for `steps` batches (drawn in turn from `samples`, shuffled with the seed); returns (stage, history:
    the loss terms of every step)."""
    stage = AddressStage(encoder, **options)
    rng = np.random.default_rng(options.get("seed", 0))
    order = rng.permutation(len(samples))
    history = []
    for i in range(steps):
        pick = [order[(i * batch_size + j) % len(samples)] for j in range(min(batch_size, len(samples)))]
        history.append(stage.step([samples[j] for j in pick]))
    return stage, history


def samples_from_csv(csv_path) -> list[AddressSample]:
    """AddressSamples of an image CSV with a header row naming an `address` column (and optionally `caption`):
    image,lat,lon[,alt,heading],address[,caption]. ValueError naming the file when it has no addresses."""
    from geoloc_ros.datasets import read_csv
    with open(csv_path, newline="") as f:
        header = [h.strip().lower() for h in f.readline().split(",")]
    if "address" not in header:
        raise ValueError(f"{csv_path}: the header row names no 'address' column")
    text = csv_text(csv_path, "address", "caption" if "caption" in header else None)
    samples = [AddressSample(r.path, text[r.label]["address"], text[r.label].get("caption", ""), r.lat, r.lon)
               for r in read_csv(csv_path) if text.get(r.label, {}).get("address")]
    if not samples:
        raise ValueError(f"{csv_path}: no image with an address")
    return samples


def train_from_csv(encoder_path, csv_path, steps: int = 50, batch_size: int = 16, lr: float = 1e-4, clip=None,
                   device: str = "auto"):
    """`geoloc train --address-csv`: the address stage on the finished encoder at `encoder_path`, written back
    over it together with text_tower.safetensors (same folder). Returns (encoder file, history)."""
    encoder = load_encoder(encoder_path, device=device, half=False)
    samples = samples_from_csv(csv_path)
    stage, history = address_stage(encoder, samples, steps=steps, batch_size=batch_size, lr=lr, clip=clip)
    return stage.save(Path(encoder.metadata["checkpoint"]).parent), history
