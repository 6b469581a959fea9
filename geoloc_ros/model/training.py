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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("geoloc.train")

PROMPT = "A photo of a X X X X street."  # ProGEO PromptLearner ctx_init


@dataclass
class TrainConfig:
    # model
    arch: str = "RN50"
    dim: int | None = None  # descriptor size; default = CLIP embed_dim (ProGEO --fc_output_dim 1024 for RN50)
    image_size: object = 512  # int or [H, W] (ProGEO --image_size 512)
    pretrained: str | None = None  # open_clip tag ("openai") or local file; None = random init
    train_all_layers: bool = False  # ProGEO: freeze the first layers of a pretrained backbone
    freeze_cnn: int = 2  # ResNet: stem..layer{freeze_cnn} frozen (ProGEO --freeze_cnn 2)
    freeze_trans: int = 6  # ViT: conv1, ln_pre and the first 6 blocks frozen (ProGEO --freeze_trans 6)
    # not in ProGEO: ResNets pool the whole feature map and each cell of this [rows, cols] grid (GeMRegions),
    # stored in the checkpoint's architecture; None = ProGEO's single GeM
    pool_grid: list | None = None
    # CosPlace groups (ProGEO parser.py = CosPlace defaults)
    M: float = 10
    alpha: float = 30
    N: int = 5
    L: int = 2
    groups_num: int = 8
    min_images_per_class: int = 10
    # stage 1
    epochs_stage1: int = 480
    batch_size_stage1: int = 512
    lr_stage1: float = 0.01
    prompt: str = PROMPT
    # stage 2
    epochs: int = 64
    iterations_per_epoch: int = 10000
    batch_size: int = 32
    lr: float = 1e-5
    # "constant" (ProGEO, CosPlace) or "cosine": stage-2 learning rates (encoder and classifiers) follow a cosine
    # from their start value towards 0 over `epochs`, set at the start of each epoch (so a resumed run matches)
    lr_schedule: str = "constant"
    classifiers_lr: float = 0.01
    # not in ProGEO: decoupled weight decay on the network (AdamW instead of Adam when > 0)
    weight_decay: float = 0.0
    # not in ProGEO: when > 0, an exponential moving average of the network's weights (and BatchNorm statistics),
    # updated after every step with this decay, is what each epoch evaluates and saves
    ema_decay: float = 0.0
    cosface_s: float = 30.0
    cosface_m: float = 0.40
    i2t_weight: float = 1.0
    label_smoothing: float = 0.1
    # augmentation (ProGEO parser.py)
    brightness: float = 0.7
    contrast: float = 0.7
    saturation: float = 0.7
    hue: float = 0.5
    random_resized_crop: float = 0.5
    hflip: float = 0.0  # not in ProGEO: probability of a horizontal flip per training image
    # not in ProGEO: with this probability an image takes the grey-level distribution of another image of the batch
    # (histogram matching by rank): the tone of snow, dusk or another exposure on the same scene
    histogram_swap: float = 0.0
    # not in ProGEO: with this probability a rectangle (30-80% of each side) of another image of the same class is
    # pasted at the same place (CutMix within a class, label unchanged). Meant for aligned sequences such as
    # Nordland, where it makes partly-snowed images of a place from its summer and winter frames.
    same_class_cutmix: float = 0.0
    # not in ProGEO: when > 0, a stage-2 batch is batch_size/2 classes with two different images each (on Nordland a
    # place's summer and winter frame), and an image-to-image InfoNCE loss (both directions, this temperature)
    # between the two halves is added with this weight: the season pairs the test compares, as in-batch positives
    pair_weight: float = 0.0
    pair_temperature: float = 0.1
    # after stage 2 (not in ProGEO): learned whitening from pairs of same-class training images, folded into the
    # projection (geoloc_ros.model.whitening); reg = fraction of the mean eigenvalue added to the pair covariance
    whiten: bool = False
    whiten_reg: float = 0.1
    whiten_max_pairs: int = 20000
    # misc
    seed: int = 0
    device: str = "auto"
    use_amp16: bool = False  # CUDA: fp16 autocast with a gradient scaler
    # not in ProGEO: autocast convolutions and matmuls to bfloat16 where the device does them natively (CPUs with
    # AMX or AVX512-BF16, CUDA GPUs with bf16); elsewhere the run stays fp32 and says so. Weights, optimiser state,
    # losses and whitening stay fp32. On this project's 2-core AMX Xeon a stage-2 step of the Nordland recipe
    # takes half the fp32 time (docs/benchmarks.md, "Training step")
    bf16: bool = False
    # ResNets train channels-last: oneDNN (CPU) and cuDNN convolutions run NHWC natively, so an NCHW network pays
    # a layout reorder around every convolution (on the CPU the network's fp32 pass took 1.5x as long). Same
    # arithmetic.
    channels_last: bool = True
    skip_blank: bool = True  # drop uniform frames (recording artefacts) from training
    extra: dict = field(default_factory=dict)

    def to_dict(self):
        return dataclasses.asdict(self)


def _other(images, i, rng):
    """A random image of `images` other than `i` (`i` itself when it is the only one)."""
    others = [j for j in images if j != i]
    return others[rng.integers(len(others))] if others else i


# ---- losses ----------------------------------------------------------------------------------------------------
def _torch():
    import torch

    return torch


class CosFace:
    """Large margin cosine loss classifier (Wang et al. 2018; CosPlace cosface_loss.MarginCosineProduct)."""

    @staticmethod
    def make(in_features, out_features):
        torch = _torch()
        w = torch.nn.Parameter(torch.empty(out_features, in_features))
        torch.nn.init.xavier_uniform_(w)
        return w

    @staticmethod
    def logits(x, weight, labels, s, m):
        torch = _torch()
        cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(weight, dim=1).t()
        one_hot = torch.zeros_like(cos).scatter_(1, labels.view(-1, 1), 1.0)
        return s * (cos - one_hot * m)


def pair_infonce(d, temperature: float):
    """Image-to-image InfoNCE for a batch whose second half holds another image of each class of the first half,
    in the same order: each row's positive is its partner, the other classes of the batch are its negatives;
    the mean of both directions."""
    torch = _torch()
    F = torch.nn.functional
    a, b = F.normalize(d, dim=1).chunk(2)
    logits = a @ b.t() / temperature
    target = torch.arange(len(a), device=d.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def supcon_loss(a, b, labels_a, labels_b, temperature: float = 1.0):
    """Supervised contrastive loss of ProGEO's SupConLoss: for each row of `a`, mean log-softmax (over `b`) of
    the entries of `b` with the same label."""
    torch = _torch()
    logits = a @ b.t() / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    mask = (labels_a.view(-1, 1) == labels_b.view(1, -1)).float()
    return -((mask * log_prob).sum(1) / mask.sum(1).clamp(min=1)).mean()


# ---- text side -------------------------------------------------------------------------------------------------
class TextSide:
    """The frozen CLIP text tower fed with prompt embeddings (CoOp), built from an open_clip CLIP model."""

    def __init__(self, clip, prompt: str):
        torch = _torch()
        import open_clip

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
        if isinstance(c.text_projection, _torch().nn.Parameter):
            params.append(c.text_projection)
        elif c.text_projection is not None:
            params += list(c.text_projection.parameters())
        return params

    def to(self, device):
        self.tokenized = self.tokenized.to(device)
        self.embedding = self.embedding.to(device)
        return self

    def new_context(self, num_classes, generator=None):
        torch = _torch()
        width = self.embedding.shape[-1]
        ctx = torch.empty(num_classes, self.n_cls_ctx, width)
        ctx.normal_(0.0, 0.02, generator=generator)  # ProGEO: nn.init.normal_(cls_vectors, std=0.02)
        return ctx

    def features(self, cls_ctx):
        """(B, n_cls_ctx, width) class contexts -> (B, embed_dim) text features (not normalised, as ProGEO)."""
        torch = _torch()
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


# ---- images ----------------------------------------------------------------------------------------------------
class ImageBank:
    """Training images as uint8 (H, W, 3) at the model input size. Preloaded into memory when they fit in
    `max_bytes`, else read from disk per batch."""

    def __init__(self, records, size, images=None, max_bytes=4 << 30):
        self.records = records
        self.size = tuple(size)
        h, w = self.size
        self.array = None
        if images is not None or len(records) * h * w * 3 <= max_bytes:
            from geoloc_ros.model.encoder import resize_batch

            if images is None:
                from geoloc_ros.datasets import read_image

                images = [read_image(r.path) for r in records]
            self.array = resize_batch(images, self.size)

    def __len__(self):
        return len(self.records)

    def get(self, indices) -> np.ndarray:
        if self.array is not None:
            return self.array[np.asarray(indices)]
        from geoloc_ros.datasets import read_image
        from geoloc_ros.model.encoder import resize_batch

        return resize_batch([read_image(self.records[i].path) for i in indices], self.size)


def _crop_boxes(n: int, h: int, w: int, scale, ratio):
    """(top, left, height, width) of `n` random resized crops, drawn as torchvision's RandomResizedCrop draws one
    (10 tries at a random area and log-uniform aspect, then the centre crop), from torch's global generator."""
    torch = _torch()
    boxes = []
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(n):
        for _try in range(10):
            area = h * w * float(torch.empty(1).uniform_(scale[0], scale[1]))
            aspect = math.exp(float(torch.empty(1).uniform_(*log_ratio)))
            cw, ch = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,)))
                left = int(torch.randint(0, w - cw + 1, (1,)))
                boxes.append((top, left, ch, cw))
                break
        else:  # centre crop at the nearest allowed aspect
            aspect = min(max(w / h, ratio[0]), ratio[1])
            cw, ch = (w, int(round(w / aspect))) if w / h < aspect else (int(round(h * aspect)), h)
            cw, ch = min(cw, w), min(ch, h)
            boxes.append(((h - ch) // 2, (w - cw) // 2, ch, cw))
    return boxes


def _blend(x, other, factor):
    """torchvision's _blend with a factor per image: factor * x + (1 - factor) * other, clamped to [0, 1]."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0.0, 1.0)


def histogram_swap(x, p: float):
    """With probability `p` per image, give it the grey levels of another image of the batch, channel by channel:
    its k-th darkest pixel takes the donor's k-th darkest value (histogram matching by rank). The layout of the
    scene stays; its tone becomes the donor's: snow's bright low contrast, dusk, another exposure."""
    torch = _torch()
    b = x.shape[0]
    chosen = torch.rand(b) < p
    if b < 2 or not bool(chosen.any()):
        return x
    donor = torch.randint(0, b - 1, (b,))
    donor += (donor >= torch.arange(b)).long()  # never itself
    flat = x.flatten(2)
    matched = torch.empty_like(flat).scatter_(2, flat.argsort(dim=2), flat[donor.to(x.device)].sort(dim=2).values)
    return torch.where(chosen.to(x.device).view(-1, 1, 1, 1), matched.view_as(x), x)


def augment(x, cfg: TrainConfig):
    """Colour jitter then random resized crop, each image with its own random parameters (CosPlace's
    DeviceAgnostic* augmentations, ProGEO's parser defaults; before them the optional histogram swap, after them
    the optional flip), computed for the whole batch at once: a handful of
    kernels per batch instead of a dozen per image, which is what keeps a GPU busy in stage 2.

    `x`: float (B, 3, H, W) in [0, 1]. Jitter follows torchvision's ColorJitter: brightness, contrast, saturation
    and hue factors drawn uniformly, applied in a random order per image, clamped after each step. The crop keeps
    the output size (bilinear, like a resize of the crop); its aspect range is centred on the image's."""
    torch = _torch()
    F = torch.nn.functional
    b, _, h, w = x.shape
    if cfg.histogram_swap:
        x = histogram_swap(x, cfg.histogram_swap)
    ops = {"brightness": cfg.brightness, "contrast": cfg.contrast, "saturation": cfg.saturation, "hue": cfg.hue}
    ops = {k: v for k, v in ops.items() if v}
    if ops:
        # factor per image and op (1 = identity; hue: a shift in [-hue, hue]) and each image's order of the ops
        factors = {k: torch.empty(b).uniform_(-v, v) if k == "hue" else torch.empty(b).uniform_(max(0.0, 1 - v), 1 + v)
                   for k, v in ops.items()}
        order = torch.stack([torch.randperm(len(ops)) for _ in range(b)])  # (B, ops): op index at each step
        names = list(ops)
        grey_w = torch.tensor([0.2989, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        for step in range(len(names)):
            for k, name in enumerate(names):
                chosen = order[:, step] == k
                if not bool(chosen.any()):
                    continue
                if name == "hue":  # no batched HSV rotation in torchvision: per image, only where it is drawn
                    from torchvision.transforms.v2 import functional as TF

                    x = x.clone()  # the caller's batch stays as it was
                    for i in torch.nonzero(chosen).flatten().tolist():
                        x[i] = TF.adjust_hue(x[i], float(factors["hue"][i]))
                    continue
                f = torch.where(chosen, factors[name], torch.ones(b)).to(x.device)
                if name == "brightness":
                    x = (x * f.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)
                else:
                    grey = (x * grey_w).sum(1, keepdim=True)
                    other = grey.mean(dim=(2, 3), keepdim=True) if name == "contrast" else grey
                    x = _blend(x, other, f)
    if cfg.random_resized_crop:
        aspect = w / h
        boxes = _crop_boxes(b, h, w, (1 - cfg.random_resized_crop, 1.0), (aspect * 3 / 4, aspect * 4 / 3))
        # crop [left, left + cw) x [top, top + ch) onto the full output grid (align_corners=False pixel centres)
        theta = torch.tensor([[[cw / w, 0.0, (2 * left + cw) / w - 1], [0.0, ch / h, (2 * top + ch) / h - 1]]
                              for top, left, ch, cw in boxes], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.hflip:
        flip = (torch.rand(b) < cfg.hflip).to(x.device).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(3), x)
    return x


# ---- training --------------------------------------------------------------------------------------------------
def _atomic_save(obj, path: Path):
    torch = _torch()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def stage2_lr_scale(cfg: TrainConfig, epoch: int) -> float:
    """Factor on the stage-2 learning rates during `epoch` (0-based)."""
    if cfg.lr_schedule == "constant":
        return 1.0
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    raise ValueError(f"lr_schedule must be 'constant' or 'cosine', not {cfg.lr_schedule!r}")


def _seed_epoch(seed: int, stage: int, epoch: int):
    import random

    torch = _torch()
    s = (seed * 1_000_003 + stage * 10_007 + epoch) % (2**31)
    random.seed(s)
    torch.manual_seed(s)
    return np.random.default_rng(s)


def _progress(iterable, desc, total=None, enabled=True):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, ncols=100, leave=False)


def init_model(cfg: TrainConfig):
    """(arch, clip without its visual tower, ResNet attention pool or None, GeoLocalizationNet), initialised
    deterministically from cfg.seed: the "untrained" starting point of a run."""
    from geoloc_ros.model.archs import arch_config, hw, is_resnet
    from geoloc_ros.model.network import GeoLocalizationNet, build_clip, detach_attnpool

    _seed_epoch(cfg.seed, 0, 0)
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
    from geoloc_ros.model.archs import hw
    from geoloc_ros.model.encoder import Encoder, make_preprocess

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
        torch = _torch()
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.val_fn = val_fn
        self.metadata = dict(metadata or {})
        from geoloc_ros.model.encoder import native_bf16, resolve_device

        self.device = resolve_device(cfg.device)
        self.amp = bool(cfg.use_amp16 and self.device.type == "cuda")
        bf16 = bool(cfg.bf16 and not self.amp and native_bf16(self.device))
        self.precision = "fp16" if self.amp else "bf16" if bf16 else "fp32"
        if cfg.bf16 and not bf16:
            log.warning("bf16 asked for, but %s has no native bf16 (or fp16 is on): training in %s", self.device,
                        self.precision)

        # data
        from geoloc_ros.model.archs import hw, is_resnet
        from geoloc_ros.model.grouping import make_groups
        from geoloc_ros.model.nordland import is_blank

        self.size = hw(cfg.image_size)
        if images is not None and cfg.skip_blank:
            keep = [i for i, im in enumerate(images) if not is_blank(im)]
            records, images = [records[i] for i in keep], [images[i] for i in keep]
        self.records = records
        self.groups = make_groups(records, cfg.M, cfg.alpha, cfg.N, cfg.L, cfg.min_images_per_class,
                                  cfg.groups_num)
        self.bank = ImageBank(records, self.size, images)
        log.info("%d groups, classes %s, images %s", len(self.groups), [len(g) for g in self.groups],
                 [g.images_num for g in self.groups])

        # model: deterministic initialisation from the seed
        from geoloc_ros.model.encoder import make_preprocess

        self.arch, self.clip, self.attnpool, self.net = init_model(cfg)
        self.text = TextSide(self.clip, cfg.prompt)
        self.preprocess = make_preprocess(self.size)
        self.encoder = self._encoder_of(self.net)
        channels_last = cfg.channels_last and is_resnet(self.arch)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        self.clip.to(self.device)
        if self.attnpool is not None:
            self.attnpool.to(self.device)
        self.text.to(self.device)
        self._mean = torch.tensor(self.preprocess["mean"], device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.preprocess["std"], device=self.device).view(1, 3, 1, 1)
        self.history = []

    # -- helpers
    def _images(self, idx):
        torch = _torch()
        return torch.from_numpy(self.bank.get(idx)).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)

    def _draw(self, group, classes, rng):
        """Labels and image indices of a stage-2 batch: one random image of each class (CosPlace sampling); with
        `pair_weight`, followed by a second, different image of each class in the same order."""
        idx = [group.images[c][rng.integers(len(group.images[c]))] for c in classes]
        if not self.cfg.pair_weight:
            return classes, idx
        return np.concatenate([classes, classes]), idx + [_other(group.images[c], i, rng)
                                                          for c, i in zip(classes, idx)]

    def _cutmix_plan(self, group, classes, idx, rng):
        """For `same_class_cutmix`: [(batch row, other image of the class, top, left, height, width)]."""
        p = self.cfg.same_class_cutmix
        if not p:
            return []
        h, w = self.size
        plan = []
        for row, (c, i) in enumerate(zip(classes, idx)):
            if len(group.images[c]) > 1 and rng.random() < p:
                ph, pw = int(h * rng.uniform(0.3, 0.8)), int(w * rng.uniform(0.3, 0.8))
                plan.append((row, _other(group.images[c], i, rng), int(rng.integers(h - ph + 1)),
                             int(rng.integers(w - pw + 1)), ph, pw))
        return plan

    def _batch(self, idx, train_aug: bool, cutmix=()):
        x = self._images(idx)
        if cutmix:
            other = self._images([j for _, j, *_ in cutmix])
            for k, (row, _, top, left, ph, pw) in enumerate(cutmix):
                x[row, :, top:top + ph, left:left + pw] = other[k, :, top:top + ph, left:left + pw]
        if train_aug:
            x = augment(x, self.cfg)
        return ((x - self._mean) / self._std).contiguous(memory_format=self.memory_format)

    def _autocast(self):
        torch = _torch()
        return torch.autocast(device_type=self.device.type, dtype=torch.float16 if self.amp else torch.bfloat16,
                              enabled=self.precision != "fp32")

    # -- stage 1
    def stage1(self):
        """Learn per-class prompt contexts for every group; returns the text features per group (frozen)."""
        torch = _torch()
        cfg = self.cfg
        path = self.run_dir / "stage1.pt"
        state = torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
        if state is not None and state.get("done"):
            log.info("stage 1 already done (%s)", path)
            self.history = list(state.get("history", []))
            return [t.to(self.device) for t in state["text_features"]]
        gen = torch.Generator().manual_seed(cfg.seed)
        ctxs = [torch.nn.Parameter(self.text.new_context(len(g), gen).to(self.device)) for g in self.groups]
        opts = [torch.optim.Adam([c], lr=cfg.lr_stage1) for c in ctxs]
        t_max = max(1, cfg.epochs_stage1 // len(self.groups))
        scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=t_max) for o in opts]
        start = 0
        if state is not None:
            for c, s in zip(ctxs, state["ctx"]):
                c.data.copy_(s)
            for o, s in zip(opts, state["opt"]):
                o.load_state_dict(s)
            for sc, s in zip(scheds, state["sched"]):
                sc.load_state_dict(s)
            start = state["epoch"]
            self.history = list(state.get("history", []))
            log.info("stage 1: resuming at epoch %d", start)

        # frozen image embeddings of every group's images, computed once (ProGEO: no augmentation)
        self.net.eval()
        feats, labels = [], []
        with torch.no_grad():
            for g in self.groups:
                idx = [i for c in g.images for i in c]
                lab = [k for k, c in enumerate(g.images) for _ in c]
                out = []
                for j in range(0, len(idx), 256):
                    with self._autocast():
                        out.append(self.net.clip_image_embedding(self._batch(idx[j:j + 256], False),
                                                                 self.attnpool).float())
                feats.append(torch.cat(out))
                labels.append(torch.tensor(lab, device=self.device))

        bar = _progress(range(start, cfg.epochs_stage1), "stage 1", enabled=self.progress)
        for epoch in bar:
            _seed_epoch(cfg.seed, 1, epoch)
            g = epoch % len(self.groups)
            f, lab = feats[g], labels[g]
            perm = torch.randperm(len(lab), device=self.device)
            losses = []
            for j in range(0, len(perm), cfg.batch_size_stage1):
                b = perm[j:j + cfg.batch_size_stage1]
                opts[g].zero_grad(set_to_none=True)
                with self._autocast():
                    t = self.text.features(ctxs[g][lab[b]]).float()
                loss = supcon_loss(f[b], t, lab[b], lab[b]) + supcon_loss(t, f[b], lab[b], lab[b])
                loss.backward()
                opts[g].step()
                losses.append(loss.item())
            scheds[g].step()
            mean_loss = float(np.mean(losses))
            self.history.append({"stage": 1, "epoch": epoch, "group": g, "loss": mean_loss})
            if self.progress and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{mean_loss:.3f}")
            _atomic_save({"epoch": epoch + 1, "ctx": [c.detach().cpu() for c in ctxs],
                          "opt": [o.state_dict() for o in opts], "sched": [s.state_dict() for s in scheds],
                          "history": self.history, "done": False}, path)
        with torch.no_grad():
            text_features = []
            for g, c in zip(self.groups, ctxs):
                text_features.append(torch.cat([self.text.features(c[j:j + 256]).float()
                                                for j in range(0, len(g), 256)]))
        _atomic_save({"epoch": cfg.epochs_stage1, "ctx": [c.detach().cpu() for c in ctxs], "done": True,
                      "text_features": [t.cpu() for t in text_features], "history": self.history}, path)
        return text_features

    # -- stage 2
    def _freeze(self):
        cfg = self.cfg
        for p in self.net.parameters():
            p.requires_grad_(True)
        if cfg.train_all_layers or not cfg.pretrained:
            return  # from scratch everything trains
        b = self.net.backbone
        from geoloc_ros.model.archs import is_resnet

        if is_resnet(self.arch):
            for name, child in b.named_children():
                if name == f"layer{cfg.freeze_cnn + 1}":
                    break
                for p in child.parameters():
                    p.requires_grad_(False)
        else:
            for m in (b.conv1, b.ln_pre):
                for p in m.parameters():
                    p.requires_grad_(False)
            for p in (b.class_embedding, b.positional_embedding):
                p.requires_grad_(False)
            for i, blk in enumerate(b.transformer.resblocks):
                if i < cfg.freeze_trans:
                    for p in blk.parameters():
                        p.requires_grad_(False)

    def stage2(self, text_features):
        torch = _torch()
        F = torch.nn.functional
        cfg = self.cfg
        path = self.run_dir / "stage2.pt"
        self._freeze()
        dim = self.net.dim
        embed = text_features[0].shape[1]
        adapter = None
        params = [p for p in self.net.parameters() if p.requires_grad]
        if dim != embed:  # descriptor and text feature sizes differ: learn a linear map text -> descriptor space
            adapter = torch.nn.Linear(embed, dim, bias=False).to(self.device)
            params += list(adapter.parameters())
        opt = (torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.weight_decay
               else torch.optim.Adam(params, lr=cfg.lr))
        ema, saved = None, self.encoder
        if cfg.ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
            saved = self._encoder_of(ema.module)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        classifiers = []
        for g in self.groups:
            w = torch.empty(len(g), dim)
            bound = math.sqrt(6.0 / (len(g) + dim))  # xavier_uniform
            w.uniform_(-bound, bound, generator=gen)
            classifiers.append(torch.nn.Parameter(w.to(self.device)))
        cls_opts = [torch.optim.Adam([w], lr=cfg.classifiers_lr) for w in classifiers]
        scaler = torch.amp.GradScaler("cuda") if self.amp else None
        start, best = 0, -1.0
        if path.exists():
            st = torch.load(path, map_location="cpu", weights_only=False)
            self.net.load_state_dict(st["net"])
            opt.load_state_dict(st["opt"])
            for w, s in zip(classifiers, st["classifiers"]):
                w.data.copy_(s)
            for o, s in zip(cls_opts, st["cls_opts"]):
                o.load_state_dict(s)
            if adapter is not None and st.get("adapter") is not None:
                adapter.load_state_dict(st["adapter"])
            if ema is not None:
                ema.load_state_dict(st["ema"])
            start, best, self.history = st["epoch"], st.get("best", -1.0), st.get("history", self.history)
            log.info("stage 2: resuming at epoch %d", start)

        n_classes = cfg.batch_size // 2 if cfg.pair_weight else cfg.batch_size  # classes per batch
        for epoch in range(start, cfg.epochs):
            rng = _seed_epoch(cfg.seed, 2, epoch)
            scale = stage2_lr_scale(cfg, epoch)
            for o, base in [(opt, cfg.lr)] + [(o, cfg.classifiers_lr) for o in cls_opts]:
                for pg in o.param_groups:
                    pg["lr"] = base * scale
            g = epoch % len(self.groups)
            group, w, copt, tf = self.groups[g], classifiers[g], cls_opts[g], text_features[g]
            n_cls = len(group)
            self.net.train()
            order, pos = rng.permutation(n_cls), 0
            losses, t0 = [], time.time()
            bar = _progress(range(cfg.iterations_per_epoch), f"stage 2 epoch {epoch + 1}/{cfg.epochs}",
                            enabled=self.progress)
            for _ in bar:
                if pos + n_classes > n_cls:  # CosPlace: batches of distinct classes, reshuffled when used up
                    order, pos = rng.permutation(n_cls), 0
                labels_np, idx = self._draw(group, order[pos:pos + n_classes], rng)
                pos += n_classes
                labels = torch.as_tensor(labels_np, device=self.device)
                x = self._batch(idx, True, self._cutmix_plan(group, labels_np, idx, rng))
                opt.zero_grad(set_to_none=True)
                copt.zero_grad(set_to_none=True)
                with self._autocast():
                    d = self.net(x)
                    loss = F.cross_entropy(CosFace.logits(d.float(), w, labels, cfg.cosface_s, cfg.cosface_m),
                                           labels)
                    if cfg.i2t_weight:
                        t = adapter(tf) if adapter is not None else tf
                        loss = loss + cfg.i2t_weight * F.cross_entropy(d.float() @ t.t(), labels,
                                                                       label_smoothing=cfg.label_smoothing)
                    if cfg.pair_weight:
                        loss = loss + cfg.pair_weight * pair_infonce(d.float(), cfg.pair_temperature)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.step(copt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                    copt.step()
                if ema is not None:
                    ema.update_parameters(self.net)
                losses.append(loss.item())
                if self.progress and hasattr(bar, "set_postfix") and len(losses) % 20 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            entry = {"stage": 2, "epoch": epoch, "group": g, "loss": float(np.mean(losses)),
                     "seconds": round(time.time() - t0, 1)}
            self._save_encoder(self.run_dir / "encoder_last.safetensors", epoch + 1, saved)
            if self.val_fn is not None:
                entry["val"] = self.val_fn(saved)
                if entry["val"]["R@1"] > best:
                    best = entry["val"]["R@1"]
                    self._save_encoder(self.run_dir / "encoder.safetensors", epoch + 1, saved)
            else:
                os.replace(self._save_encoder(self.run_dir / "encoder.tmp.safetensors", epoch + 1, saved),
                           self.run_dir / "encoder.safetensors")
            self.history.append(entry)
            log.info("stage 2 epoch %d: %s", epoch + 1, json.dumps(entry))
            _atomic_save({"epoch": epoch + 1, "net": self.net.state_dict(), "opt": opt.state_dict(),
                          "classifiers": [c.detach().cpu() for c in classifiers],
                          "cls_opts": [o.state_dict() for o in cls_opts],
                          "adapter": adapter.state_dict() if adapter is not None else None,
                          "ema": ema.state_dict() if ema is not None else None,
                          "best": best, "history": self.history}, path)
        return self.history

    def _encoder_of(self, net):
        from geoloc_ros.model.encoder import Encoder

        return Encoder(net, self.preprocess, {}, device=self.device, half=False)

    def _save_encoder(self, path, epoch, encoder):
        from geoloc_ros.model.checkpoint import save_encoder

        training = {"recipe": "ProGEO two-stage (geoloc_ros)", "stage2_epochs_done": epoch,
                    "config": self.cfg.to_dict(), "precision": self.precision,
                    "groups": [len(g) for g in self.groups], "train_images": len(self.records), **self.metadata}
        return save_encoder(encoder, path, training=training)

    # -- after stage 2
    def whiten(self):
        """Fold learned whitening, fitted on pairs of training images of the same class, into the selected
        encoder (run_dir/encoder.safetensors). Done once: the checkpoint's metadata records it."""
        from geoloc_ros.model.checkpoint import load_encoder, save_encoder
        from geoloc_ros.model.whitening import whiten_encoder

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
