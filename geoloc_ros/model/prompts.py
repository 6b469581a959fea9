"""The text side of ProGEO's stage 1: the frozen CLIP text tower fed with learnable class contexts (CoOp)."""

from __future__ import annotations

import open_clip
import torch


class TextSide:
    """The frozen CLIP text tower fed with prompt embeddings (CoOp), built from an open_clip CLIP model."""

    def __init__(self, clip, prompt: str):
        self.clip = clip
        ctx = clip.positional_embedding.shape[0]
        self.tokenized = open_clip.tokenize([prompt], context_length=ctx)  # (1, ctx)
        x_id = open_clip.tokenize(["X"], context_length=ctx)[0, 1].item()
        where = (self.tokenized[0] == x_id).nonzero().flatten().tolist()
        if not where or where != list(range(where[0], where[0] + len(where))):
            raise ValueError(f"prompt {prompt!r} needs one contiguous run of 'X' placeholders")
        self.start, self.n_cls_ctx = where[0], len(where)
        with torch.no_grad():
            self.embedding = clip.token_embedding(self.tokenized)  # (1, ctx, width)
        for p in self._modules():
            p.requires_grad_(False)

    def _modules(self):
        c = self.clip
        mods = [c.transformer, c.ln_final, c.token_embedding]
        params = [p for m in mods for p in m.parameters()] + [c.positional_embedding]
        if isinstance(c.text_projection, torch.nn.Parameter):
            params.append(c.text_projection)
        elif c.text_projection is not None:
            params += list(c.text_projection.parameters())
        return params

    def to(self, device):
        self.tokenized = self.tokenized.to(device)
        self.embedding = self.embedding.to(device)
        return self

    def new_context(self, num_classes, generator=None):
        width = self.embedding.shape[-1]
        ctx = torch.empty(num_classes, self.n_cls_ctx, width)
        ctx.normal_(0.0, 0.02, generator=generator)  # ProGEO: nn.init.normal_(cls_vectors, std=0.02)
        return ctx

    def features(self, cls_ctx):
        """(B, n_cls_ctx, width) class contexts -> (B, embed_dim) text features (not normalised, as ProGEO)."""
        c = self.clip
        b = cls_ctx.shape[0]
        prefix = self.embedding[:, :self.start].expand(b, -1, -1)
        suffix = self.embedding[:, self.start + self.n_cls_ctx:].expand(b, -1, -1)
        x = torch.cat([prefix, cls_ctx.to(prefix.dtype), suffix], dim=1) + c.positional_embedding
        x = c.transformer(x, attn_mask=c.attn_mask)
        x = c.ln_final(x)
        x = x[:, self.tokenized[0].argmax()]
        proj = c.text_projection
        return proj(x) if isinstance(proj, torch.nn.Module) else x @ proj
