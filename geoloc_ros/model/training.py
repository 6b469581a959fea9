"""ProGEO two-stage training (Mao, Hu et al., ICANN 2024; Chain-Mao/ProGEO train_clip_stage1.py / _stage2.py).

Stage 1 (CoOp-style prompt learning, both CLIP encoders frozen): every class of every CosPlace group gets
`n_cls_ctx` learnable token vectors inserted into the prompt "A photo of a X X X X street."; the frozen text
encoder turns them into one text feature per class. The loss is the supervised contrastive loss image->text plus
text->image (temperature 1.0) between these text features and the frozen CLIP image embeddings of the group's
images (computed once, no augmentation). Adam, lr 0.01, cosine annealing, batch 512, 480 epochs (one group per
epoch).

Stage 2 (image encoder trained): per group, a CosFace / LMCL classifier (s=30, m=0.40) over the group's classes,
plus an image-to-text loss: cross-entropy with label smoothing 0.1 over the logits
``descriptor @ text_features.T`` against the frozen stage-1 text features of the group's classes. Adam
(backbone lr 1e-5 when fine-tuning pretrained CLIP, classifiers lr 0.01), batch 32, 64 epochs x 10,000
iterations, one group per epoch, batches of distinct classes with one random image each (CosPlace sampling), colour
jitter (0.7, 0.7, 0.7, 0.5) and random resized crop (scale 0.5-1) augmentation, ImageNet normalisation.

Three additions, off by default, that the bundled Nordland recipe uses: `same_class_cutmix` (stage 2 pastes a
patch of another image of the same class at the same place), `pair_weight` (stage-2 batches of image pairs per
class and an image-to-image InfoNCE loss between the pairs) and `whiten` (learned whitening from same-class pairs
folded into the projection after stage 2, geoloc_ros.model.whitening). Others were tried and stay available
(`weight_decay`, `ema_decay`, `hflip`, `histogram_swap`, `pool_grid`). docs/model.md says why each is or is not
in the recipe.

Everything is resumable: `run_dir/stage1.pt` and `run_dir/stage2.pt` are rewritten atomically after every
epoch, and each epoch's random state is derived from (seed, stage, epoch), so an interrupted run resumes with the
same result as an uninterrupted one.

Files: config.py (TrainConfig), data.py (images, batch draws), augment.py, prompts.py (text side), losses.py,
loop.py (random state, checkpoints), this module (the Trainer and stage 1), stage2.py (stage 2).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from geoloc_ros.model.archs import arch_config, hw, is_resnet
from geoloc_ros.model.augment import augment
from geoloc_ros.model.checkpoint import load_encoder, save_encoder
from geoloc_ros.model.config import TrainConfig
from geoloc_ros.model.data import ImageBank
from geoloc_ros.model.encoder import Encoder, make_preprocess, native_bf16, resolve_device
from geoloc_ros.model.grouping import make_groups
from geoloc_ros.model.loader import batches
from geoloc_ros.model.loop import atomic_save, progress, seed_epoch, stage2_lr_scale
from geoloc_ros.model.losses import SupConLoss
from geoloc_ros.model.network import GeoLocalizationNet, build_clip, detach_attnpool
from geoloc_ros.model.nordland import is_blank
from geoloc_ros.model.prompts import TextSide
from geoloc_ros.model.stage1_images import frozen_image_embeddings
from geoloc_ros.model.stage2 import Stage2
from geoloc_ros.model.whitening import whiten_encoder

__all__ = ["Trainer", "TrainConfig", "init_model", "stage2_lr_scale", "untrained_encoder"]
log = logging.getLogger("geoloc.train")


def init_model(cfg: TrainConfig):
    """(arch, clip without its visual tower, ResNet attention pool or None, GeoLocalizationNet), initialised
    deterministically from cfg.seed: the "untrained" starting point of a run."""
    seed_epoch(cfg.seed, 0, 0)
    arch = arch_config(cfg.arch, cfg.image_size)
    if cfg.pool_grid:
        if not is_resnet(arch):
            raise ValueError(f"pool_grid pools a ResNet's feature map; {cfg.arch} is a ViT (its descriptor is the "
                             "class token)")
        arch["pool_grid"] = list(hw(cfg.pool_grid))
    clip = build_clip(arch, cfg.pretrained)
    attnpool = detach_attnpool(clip.visual)
    net = GeoLocalizationNet(arch, int(cfg.dim or arch["embed_dim"]), clip.visual)
    clip.visual = None  # the image tower now lives in net
    return arch, clip, attnpool, net


def untrained_encoder(cfg: TrainConfig, device="cpu"):
    """The encoder a run with `cfg` starts from (same seed, same initial weights)."""
    _, _, _, net = init_model(cfg)
    return Encoder(net, make_preprocess(hw(cfg.image_size)), {"untrained": True}, device=device, half=False)


class Trainer:
    """Runs stage 1 then stage 2 into `run_dir`, resuming whatever is already there.

    records: GeoImage-like training records (UTM position, heading). images: optional list of the decoded images
    (same order) to avoid reading them again. val_fn: optional callable(encoder) -> dict with "R@1", evaluated
    after every stage-2 epoch; the best epoch is saved as run_dir/encoder.safetensors (else the last one).
    """

    def __init__(self, cfg: TrainConfig, records, run_dir, images=None, val_fn=None, progress=True,
                 metadata: dict | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.val_fn = val_fn
        self.metadata = dict(metadata or {})
        self.history = []
        self._setup_precision()
        self._setup_data(records, images)
        self._setup_model()

    # -- setup
    def _setup_precision(self):
        cfg = self.cfg
        self.device = resolve_device(cfg.device)
        self.amp = bool(cfg.use_amp16 and self.device.type == "cuda")
        bf16 = bool(cfg.bf16 and not self.amp and native_bf16(self.device))
        self.precision = "fp16" if self.amp else "bf16" if bf16 else "fp32"
        if cfg.bf16 and not bf16:
            log.warning("bf16 asked for, but %s has no native bf16 (or fp16 is on): training in %s", self.device,
                        self.precision)

    def _setup_data(self, records, images):
        cfg = self.cfg
        self.size = hw(cfg.image_size)
        if images is None and cfg.skip_blank:
            log.info("images read from disk: the blank-frame rule (skip_blank) needs them decoded, not applied")
        if images is not None and cfg.skip_blank:
            keep = [i for i, im in enumerate(images) if not is_blank(im)]
            records, images = [records[i] for i in keep], [images[i] for i in keep]
        self.records = records
        self.groups = make_groups(records, cfg.M, cfg.alpha, cfg.N, cfg.L, cfg.min_images_per_class,
                                  cfg.groups_num)
        self.bank = ImageBank(records, self.size, images, preload=cfg.data_workers == 0)
        log.info("%d groups, classes %s, images %s", len(self.groups), [len(g) for g in self.groups],
                 [g.images_num for g in self.groups])

    def _setup_model(self):
        """The model, initialised deterministically from the seed, on the device in its memory layout."""
        self.arch, self.clip, self.attnpool, self.net = init_model(self.cfg)
        self.text = TextSide(self.clip, self.cfg.prompt)
        self.preprocess = make_preprocess(self.size)
        self.encoder = self.encoder_of(self.net)
        channels_last = self.cfg.channels_last and is_resnet(self.arch)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        self.clip.to(self.device)
        if self.attnpool is not None:
            self.attnpool.to(self.device)
        self.text.to(self.device)
        self._mean = torch.tensor(self.preprocess["mean"], device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.preprocess["std"], device=self.device).view(1, 3, 1, 1)

    # -- batches
    def images_of(self, index_lists):
        """uint8 (B, H, W, 3) images of each index list in turn (loader.batches: from memory, or decoded by
        `data_workers` DataLoader processes, pinned for CUDA)."""
        return batches(self.bank, index_lists, self.cfg.data_workers, pin_memory=self.device.type == "cuda")

    def batch(self, idx, train_aug: bool, cutmix=()):
        """Normalised (B, 3, H, W) network input of images `idx`, with the CutMix patches of `cutmix` pasted
        (data.cutmix_plan) and, for training, augmented."""
        return self.prepare(torch.from_numpy(self.bank.get(list(idx) + [j for _, j, *_ in cutmix])), train_aug,
                            cutmix)

    def prepare(self, images, train_aug: bool, cutmix=()):
        """`batch` from uint8 (B + len(cutmix), H, W, 3) images: the batch's, then the CutMix sources."""
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        x, other = x[:len(x) - len(cutmix)], x[len(x) - len(cutmix):]
        for k, (row, _, top, left, ph, pw) in enumerate(cutmix):
            x[row, :, top:top + ph, left:left + pw] = other[k, :, top:top + ph, left:left + pw]
        if train_aug:
            x = augment(x, self.cfg)
        return ((x - self._mean) / self._std).contiguous(memory_format=self.memory_format)

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.float16 if self.amp else torch.bfloat16,
                              enabled=self.precision != "fp32")

    # -- stage 1
    def stage1(self):
        """Learn per-class prompt contexts for every group; returns the text features per group (frozen)."""
        cfg = self.cfg
        path = self.run_dir / "stage1.pt"
        state = torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
        if state is not None and state.get("done"):
            log.info("stage 1 already done (%s)", path)
            self.history = list(state.get("history", []))
            return [t.to(self.device) for t in state["text_features"]]
        ctxs, opts, scheds = self._stage1_setup()
        start = self._stage1_resume(state, ctxs, opts, scheds)
        feats, labels = frozen_image_embeddings(self)
        bar = progress(range(start, cfg.epochs_stage1), "stage 1", self.progress)
        for epoch in bar:
            g = epoch % len(self.groups)
            mean_loss = self._stage1_epoch(epoch, ctxs[g], opts[g], feats[g].to(self.device),
                                           labels[g].to(self.device))
            scheds[g].step()
            self.history.append({"stage": 1, "epoch": epoch, "group": g, "loss": mean_loss})
            if self.progress and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{mean_loss:.3f}")
            atomic_save({"epoch": epoch + 1, "ctx": [c.detach().cpu() for c in ctxs],
                         "opt": [o.state_dict() for o in opts], "sched": [s.state_dict() for s in scheds],
                         "history": self.history, "done": False}, path)
        return self._stage1_finish(ctxs, path)

    def _stage1_setup(self):
        """Class contexts (N(0, 0.02) from the seed), their Adam optimisers and cosine schedules, per group."""
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        ctxs = [torch.nn.Parameter(self.text.new_context(len(g), gen).to(self.device)) for g in self.groups]
        opts = [torch.optim.Adam([c], lr=cfg.lr_stage1) for c in ctxs]
        t_max = max(1, cfg.epochs_stage1 // len(self.groups))
        scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=t_max) for o in opts]
        return ctxs, opts, scheds

    def _stage1_resume(self, state, ctxs, opts, scheds) -> int:
        if state is None:
            return 0
        for c, s in zip(ctxs, state["ctx"]):
            c.data.copy_(s)
        for o, s in zip(opts, state["opt"]):
            o.load_state_dict(s)
        for sc, s in zip(scheds, state["sched"]):
            sc.load_state_dict(s)
        self.history = list(state.get("history", []))
        log.info("stage 1: resuming at epoch %d", state["epoch"])
        return state["epoch"]

    def _stage1_epoch(self, epoch, ctx, opt, feats, labels) -> float:
        """One epoch of one group: SupCon image -> text plus text -> image over shuffled batches; the mean loss."""
        cfg = self.cfg
        seed_epoch(cfg.seed, 1, epoch)
        supcon = SupConLoss(1.0)
        perm = torch.randperm(len(labels), device=self.device)
        losses = []
        for j in range(0, len(perm), cfg.batch_size_stage1):
            b = perm[j:j + cfg.batch_size_stage1]
            opt.zero_grad(set_to_none=True)
            with self.autocast():
                t = self.text.features(ctx[labels[b]]).float()
            loss = supcon(feats[b], t, labels[b], labels[b]) + supcon(t, feats[b], labels[b], labels[b])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return float(np.mean(losses))

    def _stage1_finish(self, ctxs, path):
        with torch.no_grad():
            text_features = [torch.cat([self.text.features(c[j:j + 256]).float() for j in range(0, len(g), 256)])
                             for g, c in zip(self.groups, ctxs)]
        atomic_save({"epoch": self.cfg.epochs_stage1, "ctx": [c.detach().cpu() for c in ctxs], "done": True,
                     "text_features": [t.cpu() for t in text_features], "history": self.history}, path)
        return text_features

    # -- stage 2, saving, whitening
    def stage2(self, text_features):
        return Stage2(self, text_features).run()

    def encoder_of(self, net):
        return Encoder(net, self.preprocess, {}, device=self.device, half=False)

    def save_encoder(self, path, epoch, encoder):
        training = {"recipe": "ProGEO two-stage (geoloc_ros)", "stage2_epochs_done": epoch,
                    "config": self.cfg.to_dict(), "precision": self.precision,
                    "groups": [len(g) for g in self.groups], "train_images": len(self.records), **self.metadata}
        return save_encoder(encoder, path, training=training)

    def whiten(self):
        """Fold learned whitening, fitted on pairs of training images of the same class, into the selected
        encoder (run_dir/encoder.safetensors). Done once: the checkpoint's metadata records it."""
        cfg = self.cfg
        path = self.run_dir / "encoder.safetensors"
        enc = load_encoder(path, device=self.device, half=False)
        if "whitening" in enc.metadata:
            log.info("whitening already folded into %s", path)
            return
        pairs = [(i, j) for g in self.groups for c in g.images for k, i in enumerate(c) for j in c[k + 1:]]
        if len(pairs) > cfg.whiten_max_pairs:
            rng = np.random.default_rng(cfg.seed)
            pairs = [pairs[k] for k in np.sort(rng.choice(len(pairs), cfg.whiten_max_pairs, replace=False))]
        before = self.val_fn(enc) if self.val_fn is not None else None
        first, second = self.bank.get([i for i, _ in pairs]), self.bank.get([j for _, j in pairs])
        info = whiten_encoder(enc, list(first), list(second), cfg.whiten_reg)
        if self.val_fn is not None:
            info.update(val_before=before, val=self.val_fn(enc))
        log.info("whitening: %s", json.dumps(info))
        self.history.append({"stage": "whitening", **info})
        save_encoder(enc, path, training={"whitening": info})

    def run(self):
        text_features = self.stage1()
        self.stage2(text_features)
        if self.cfg.whiten:
            self.whiten()
        return self.run_dir / "encoder.safetensors"
