"""The feature combiner of LVLM-empowered multimodal place recognition: an image descriptor and the tokens of a
scene description in, one fused descriptor out.

The blocks follow the paper ("LVLM-empowered Multi-modal Representation Learning for Visual Place Recognition",
2024): token-level attention weighs each text token by its relevance to the image; a cross-attention fusion
module passes information both ways between the image token and the weighted text tokens; a projection
compresses the result into the descriptor, added to the image descriptor (a residual that starts at zero).

Two choices of ours, both documented in docs/language.md:
- The text side is a small transformer over open_clip's BPE tokens that trains with the combiner: no pretrained
  language weights can be fetched on the machines this project is built on.
- The image-only path is the plain image descriptor (through the same fixed map): with no description the
  fusion adds nothing. The fusion is a residual on the image descriptor that starts at zero and is trained with
  descriptions dropped at random, so described and undescribed descriptors stay in one space: a query frame
  without a description still matches keyframes that have one. (An empty description still passes one learned
  "no text" token through the blocks, so that a batch mixing both runs as one.)
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

CONTEXT_LENGTH = 32  # description tokens kept; longer descriptions are truncated
VOCAB_SIZE = 49408  # open_clip's BPE vocabulary (the tokenizer ships inside the open_clip wheel)


def tokenize(texts) -> tuple[torch.Tensor, torch.Tensor]:
    """Descriptions -> (token ids (N, CONTEXT_LENGTH), mask (N, CONTEXT_LENGTH), True where a token is). None or
    blank text gives an all-False mask: no description."""
    import open_clip

    texts = [t if isinstance(t, str) else "" for t in texts]
    ids = open_clip.tokenize([t.strip() for t in texts], context_length=CONTEXT_LENGTH)
    mask = ids != 0
    blank = torch.tensor([not t.strip() for t in texts], dtype=torch.bool)
    mask[blank] = False
    return ids, mask


class TextEncoder(nn.Module):
    """Token ids -> one vector per token (N, T, width)."""

    def __init__(self, width: int, heads: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, width)
        self.position = nn.Parameter(torch.zeros(CONTEXT_LENGTH, width))
        nn.init.normal_(self.position, std=0.01)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, ids, mask):
        x = self.embed(ids) + self.position[: ids.shape[1]]
        # A row with no token would make attention NaN: let it see its first (padding) slot.
        keys = mask.clone()
        keys[:, 0] |= ~mask.any(dim=1)
        return self.transformer(x, src_key_padding_mask=~keys)


class FeatureCombiner(nn.Module):
    """(image descriptor (N, image_dim), token ids, mask) -> fused descriptor (N, out_dim), L2-normalised."""

    def __init__(self, image_dim: int, out_dim: int, width: int = 128, heads: int = 4, text_layers: int = 2):
        super().__init__()
        self.config = {"image_dim": int(image_dim), "out_dim": int(out_dim), "width": int(width),
                       "heads": int(heads), "text_layers": int(text_layers)}
        self.text = TextEncoder(width, heads, text_layers)
        self.image_in = nn.Linear(image_dim, width)
        self.no_text = nn.Parameter(torch.zeros(1, 1, width))
        self.relevance_query = nn.Linear(width, width)
        self.relevance_key = nn.Linear(width, width)
        self.image_from_text = nn.MultiheadAttention(width, heads, batch_first=True)
        self.text_from_image = nn.MultiheadAttention(width, heads, batch_first=True)
        self.image_norm = nn.LayerNorm(width)
        self.text_norm = nn.LayerNorm(width)
        # The fused descriptor is the image descriptor (through a fixed map: the identity, or an orthonormal
        # projection when compressing) plus what the fusion adds, which starts at zero: an untrained combiner
        # gives the image encoder's own ranking, and training moves away from it only where that lowers the loss.
        self.register_buffer("image_map", _fixed_map(image_dim, out_dim))
        self.project = nn.Linear(2 * width, out_dim)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    @property
    def out_dim(self) -> int:
        return self.config["out_dim"]

    def token_relevance(self, image, tokens, mask):
        """Token-level attention: each text token's relevance to the image, in (0, 1), zero on padding."""
        score = (self.relevance_query(image) * self.relevance_key(tokens)).sum(-1) / math.sqrt(tokens.shape[-1])
        return torch.sigmoid(score) * mask

    def forward(self, image_desc, ids, mask):
        image = self.image_in(image_desc).unsqueeze(1)  # (N, 1, W)
        has_text = mask.any(dim=1)
        tokens = self.text(ids, mask)
        tokens = torch.where(has_text[:, None, None], tokens, self.no_text.expand_as(tokens))
        mask = mask.clone()
        mask[~has_text, 0] = True  # the "no text" token stands in the first slot
        tokens = tokens * self.token_relevance(image, tokens, mask).unsqueeze(-1)
        from_text, _ = self.image_from_text(image, tokens, tokens, key_padding_mask=~mask)
        from_image, _ = self.text_from_image(tokens, image, image)
        image = self.image_norm(image + from_text).squeeze(1)
        tokens = self.text_norm(tokens + from_image)
        weights = mask.unsqueeze(-1).float()
        pooled = (tokens * weights).sum(1) / weights.sum(1)
        added = self.project(torch.cat([image, pooled], dim=-1)) * has_text[:, None]  # no text: nothing added
        return F.normalize(image_desc @ self.image_map.T + added, dim=-1)


def _fixed_map(image_dim: int, out_dim: int) -> torch.Tensor:
    """(out_dim, image_dim): the identity when the sizes agree, else orthonormal rows drawn from a fixed seed."""
    if image_dim == out_dim:
        return torch.eye(out_dim)
    q, _ = torch.linalg.qr(torch.randn(max(image_dim, out_dim), min(image_dim, out_dim),
                                       generator=torch.Generator().manual_seed(0)))
    return (q.T if out_dim < image_dim else q)[:out_dim, :image_dim].contiguous()
