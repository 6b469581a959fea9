"""ProGEO stage 2: the image tower trained with a CosFace classifier per CosPlace group plus the image-to-text loss
against the frozen stage-1 text features (and, optionally, the image-to-image pair loss).

`Stage2(trainer, text_features).run()` reads as its loop: setup (here, `__init__`), resume, then per epoch the
steps and the end of epoch (save the encoder, validate, checkpoint); `state_dict` / `load_state_dict` are the
save/resume pair of run_dir/stage2.pt.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from geoloc_ros.model.archs import is_resnet
from geoloc_ros.model.data import cutmix_plan, draw_batch
from geoloc_ros.model.loop import atomic_save, progress, seed_epoch, stage2_lr_scale
from geoloc_ros.model.losses import CosFace, ImageToTextLoss, PairInfoNCE

log = logging.getLogger("geoloc.train")


def freeze_pretrained_layers(net, arch, cfg):
    """ProGEO: a pretrained backbone keeps its first layers frozen (ResNet: stem..layer{freeze_cnn}; ViT: conv1,
    ln_pre and the first `freeze_trans` blocks -- class_embedding and positional_embedding train, as in ProGEO's
    code); from scratch everything trains."""
    for p in net.parameters():
        p.requires_grad_(True)
    if cfg.train_all_layers or not cfg.pretrained:
        return
    b = net.backbone
    if is_resnet(arch):
        for name, child in b.named_children():
            if name == f"layer{cfg.freeze_cnn + 1}":
                break
            child.requires_grad_(False)
        return
    for m in (b.conv1, b.ln_pre):
        m.requires_grad_(False)
    for blk in b.transformer.resblocks[:cfg.freeze_trans]:
        blk.requires_grad_(False)


class Stage2:
    def __init__(self, trainer, text_features):
        self.t, self.cfg, self.text_features = trainer, trainer.cfg, text_features
        self.path = trainer.run_dir / "stage2.pt"
        cfg, net, device = self.cfg, trainer.net, trainer.device
        freeze_pretrained_layers(net, trainer.arch, cfg)
        dim, embed = net.dim, text_features[0].shape[1]
        params = [p for p in net.parameters() if p.requires_grad]
        self.adapter = None
        if dim != embed:  # descriptor and text feature sizes differ: learn a linear map text -> descriptor space
            self.adapter = torch.nn.Linear(embed, dim, bias=False).to(device)
            params += list(self.adapter.parameters())
        self.opt = (torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.weight_decay
                    else torch.optim.Adam(params, lr=cfg.lr))
        self.ema, self.saved = None, trainer.encoder
        if cfg.ema_decay:
            self.ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
            self.saved = trainer.encoder_of(self.ema.module)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.cosface = [CosFace(dim, len(g), cfg.cosface_s, cfg.cosface_m, gen).to(device) for g in trainer.groups]
        self.cls_opts = [torch.optim.Adam(c.parameters(), lr=cfg.classifiers_lr) for c in self.cosface]
        self.i2t = ImageToTextLoss(cfg.label_smoothing)
        self.pair = PairInfoNCE(cfg.pair_temperature)
        self.scaler = torch.amp.GradScaler("cuda") if trainer.amp else None
        self.start, self.best = 0, -1.0

    # -- save / resume
    def state_dict(self, epoch: int) -> dict:
        return {"epoch": epoch, "net": self.t.net.state_dict(), "opt": self.opt.state_dict(),
                "classifiers": [c.weight.detach().cpu() for c in self.cosface],
                "cls_opts": [o.state_dict() for o in self.cls_opts],
                "adapter": self.adapter.state_dict() if self.adapter is not None else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "best": self.best, "history": self.t.history}

    def load_state_dict(self, st: dict):
        self.t.net.load_state_dict(st["net"])
        self.opt.load_state_dict(st["opt"])
        for c, w in zip(self.cosface, st["classifiers"]):
            c.weight.data.copy_(w)
        for o, s in zip(self.cls_opts, st["cls_opts"]):
            o.load_state_dict(s)
        if self.adapter is not None and st.get("adapter") is not None:
            self.adapter.load_state_dict(st["adapter"])
        if self.ema is not None:
            self.ema.load_state_dict(st["ema"])
        self.start, self.best, self.t.history = st["epoch"], st.get("best", -1.0), st.get("history", self.t.history)

    # -- the loop
    def run(self):
        if self.path.exists():
            self.load_state_dict(torch.load(self.path, map_location="cpu", weights_only=False))
            log.info("stage 2: resuming at epoch %d", self.start)
        for epoch in range(self.start, self.cfg.epochs):
            entry = self.epoch(epoch)
            self.end_of_epoch(epoch, entry)
        return self.t.history

    def epoch(self, epoch: int) -> dict:
        cfg, t = self.cfg, self.t
        rng = seed_epoch(cfg.seed, 2, epoch)
        scale = stage2_lr_scale(cfg, epoch)
        for o, base in [(self.opt, cfg.lr)] + [(o, cfg.classifiers_lr) for o in self.cls_opts]:
            for pg in o.param_groups:
                pg["lr"] = base * scale
        g = epoch % len(t.groups)
        group = t.groups[g]
        n_classes = cfg.batch_size // 2 if cfg.pair_weight else cfg.batch_size  # classes per batch
        t.net.train()
        order, pos = rng.permutation(len(group)), 0
        losses, t0 = [], time.time()
        bar = progress(range(cfg.iterations_per_epoch), f"stage 2 epoch {epoch + 1}/{cfg.epochs}", t.progress)
        plans = []  # the epoch's draws first (numpy rng only), so the DataLoader can read ahead of the steps
        for _ in range(cfg.iterations_per_epoch):
            if pos + n_classes > len(group):  # CosPlace: batches of distinct classes, reshuffled when used up
                order, pos = rng.permutation(len(group)), 0
            labels_np, idx = draw_batch(group, order[pos:pos + n_classes], rng, bool(cfg.pair_weight))
            pos += n_classes
            plans.append((labels_np, cutmix_plan(group, labels_np, idx, rng, cfg.same_class_cutmix, t.size),
                          list(idx)))
        images = t.images_of([idx + [j for _, j, *_ in cut] for _, cut, idx in plans])
        for _, (labels_np, cut, _), u8 in zip(bar, plans, images):
            x = t.prepare(u8, True, cut)
            losses.append(self.step(g, x, torch.as_tensor(labels_np, device=t.device)))
            if t.progress and hasattr(bar, "set_postfix") and len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        return {"stage": 2, "epoch": epoch, "group": g, "loss": float(np.mean(losses)),
                "seconds": round(time.time() - t0, 1)}

    def loss(self, g: int, d, labels):
        """The stage-2 loss of descriptors `d` of a batch of group `g`, in fp32."""
        cfg = self.cfg
        loss = self.cosface[g](d.float(), labels)
        if cfg.i2t_weight:
            tf = self.text_features[g]
            text = self.adapter(tf) if self.adapter is not None else tf
            loss = loss + cfg.i2t_weight * self.i2t(d.float(), text, labels)
        if cfg.pair_weight:
            loss = loss + cfg.pair_weight * self.pair(d.float())
        return loss

    def step(self, g: int, x, labels) -> float:
        self.opt.zero_grad(set_to_none=True)
        self.cls_opts[g].zero_grad(set_to_none=True)
        with self.t.autocast():
            d = self.t.net(x)
        loss = self.loss(g, d, labels)  # fp32: the adapter and the losses run outside autocast
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.step(self.cls_opts[g])
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
            self.cls_opts[g].step()
        if self.ema is not None:
            self.ema.update_parameters(self.t.net)
        return loss.item()

    def end_of_epoch(self, epoch: int, entry: dict):
        """Save this epoch's encoder (and, by validation R@1 or as the last, encoder.safetensors), then the
        resumable state."""
        t = self.t
        t.save_encoder(t.run_dir / "encoder_last.safetensors", epoch + 1, self.saved)
        if t.val_fn is not None:
            entry["val"] = t.val_fn(self.saved)
            r1 = float(entry["val"]["R@1"])
            if math.isnan(r1):
                log.warning("stage 2 epoch %d: validation R@1 is NaN (no validation query has a positive?)%s",
                            epoch + 1, "" if self.best >= 0 else ": encoder.safetensors is this epoch's")
            if r1 > self.best:
                self.best = r1
                t.save_encoder(t.run_dir / "encoder.safetensors", epoch + 1, self.saved)
            elif math.isnan(r1) and self.best < 0:  # NaN beats no score; until one comes, keep each epoch's
                t.save_encoder(t.run_dir / "encoder.safetensors", epoch + 1, self.saved)
        else:
            os.replace(t.save_encoder(t.run_dir / "encoder.tmp.safetensors", epoch + 1, self.saved),
                       t.run_dir / "encoder.safetensors")
        t.history.append(entry)
        log.info("stage 2 epoch %d: %s", epoch + 1, json.dumps(entry))
        atomic_save(self.state_dict(epoch + 1), self.path)
