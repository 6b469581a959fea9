"""`Encoder`: a GeoLocalizationNet plus the preprocessing it was trained with, ready to encode numpy images."""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np

from geoloc_ros.model.archs import OPEN_CLIP_ARCHS, arch_config, canonical_name, hw, is_resnet

# ProGEO normalises with the ImageNet statistics (train_clip_stage2.py: T.Normalize(mean=[0.485, 0.456, 0.406],
# std=[0.229, 0.224, 0.225])), not CLIP's own.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ProGEO trains and tests the CLIP backbones at 512x512 (parser.py --image_size 512).
PROGEO_IMAGE_SIZE = 512


def make_preprocess(image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> dict:
    h, w = hw(image_size)
    return {"image_size": [h, w], "mean": [float(m) for m in mean], "std": [float(s) for s in std],
            "resize": "bilinear-stretch", "channels": "RGB"}


def to_rgb_uint8(img) -> np.ndarray:
    """Any of HxW, HxWx1, HxWx3, HxWx4 (uint8, other integer, bool or float) -> HxWx3 uint8 RGB.

    Floats whose maximum is <= 1 are taken as [0, 1] and scaled by 255; other values are clipped to [0, 255].
    RGBA drops its alpha channel.
    """
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"empty image of shape {a.shape}")
    a = a[:, :, :3]
    if a.dtype != np.uint8:
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        elif np.issubdtype(a.dtype, np.floating):
            a = np.nan_to_num(a.astype(np.float32))
            if a.size and a.max() <= 1.0:
                a = a * 255.0
            a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        else:
            a = np.clip(a, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def resize_batch(images, size) -> np.ndarray:
    """List of images -> (N, H, W, 3) uint8 at `size` (H, W), bilinear (area when shrinking)."""
    import cv2

    h, w = size
    out = np.empty((len(images), h, w, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        a = to_rgb_uint8(img)
        if a.shape[:2] != (h, w):
            shrink = a.shape[0] > h and a.shape[1] > w
            a = cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out[i] = a
    return out


def fingerprint_of(state_dict, config: dict) -> str:
    """sha256 over every weight (name, dtype, shape, bytes as float32/stored dtype) and the canonical JSON of the
    architecture + preprocessing config. Stable across devices; changes when any weight or setting changes."""
    import torch

    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        t = t.cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def resolve_device(device="auto"):
    import torch

    if isinstance(device, torch.device):
        return device
    device = (device or "auto").lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """True where oneDNN has native bf16 matmuls (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        import torch

        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - the op is private; absent means "do not rely on it"
        return False


def native_bf16(device) -> bool:
    """Whether `device` (a torch.device) computes bf16 convolutions and matmuls natively."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


class Encoder:
    """Image -> descriptor. Attributes: `dim`, `fingerprint`, `device`, `preprocess` (dict), `arch` (dict),
    `net` (the torch module), `metadata` (training metadata, dict)."""

    def __init__(self, net, preprocess: dict, metadata: dict | None = None, device="auto", half: bool | None = None,
                 batch_size: int = 64):
        self.net = net
        self.preprocess = dict(preprocess)
        self.metadata = dict(metadata or {})
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        self.net.to(self.device).eval()
        # half: None = fp16 on CUDA, fp32 on CPU.
        self.half = (self.device.type == "cuda") if half is None else bool(half)
        if self.half and self.device.type != "cuda":
            raise ValueError("half precision needs a CUDA device")
        self._fp_cache = None
        self._fp_frozen = None
        if self.half:
            self._fp_frozen = self._compute_fingerprint()
            self.net.half_backbone()

    # -- identity ---------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.net.dim)

    @property
    def arch(self) -> dict:
        return self.net.cfg

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.preprocess["image_size"])

    def config(self) -> dict:
        """What, besides the weights, determines the descriptors."""
        return {"arch": self.net.cfg, "dim": self.dim, "preprocess": self.preprocess}

    def _compute_fingerprint(self) -> str:
        return fingerprint_of(self.net.state_dict(), self.config())

    @property
    def fingerprint(self) -> str:
        """sha256 hex of weights + architecture + preprocessing. Computed from fp32 weights (before any fp16
        conversion), so a map built on CPU matches the same checkpoint run in fp16 on a GPU."""
        if self._fp_frozen is not None:
            return self._fp_frozen
        key = (json.dumps(self.config(), sort_keys=True),
               tuple((id(p), p._version) for p in self.net.state_dict(keep_vars=True).values()))
        if self._fp_cache is None or self._fp_cache[0] != key:
            self._fp_cache = (key, self._compute_fingerprint())
        return self._fp_cache[1]

    # -- encoding ---------------------------------------------------------------------------------------------
    def to_tensor(self, images, size=None):
        """List of numpy images -> normalised float tensor (N, 3, H, W) on the encoder's device, resized to `size`
        (H, W; default the encoder's input size)."""
        import torch

        batch = resize_batch(images, tuple(size or self.image_size))
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.preprocess["mean"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess["std"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        return x.half() if self.half else x

    def encode(self, images, batch_size: int | None = None, raw: bool = False,
               native_size: bool = False) -> np.ndarray:
        """List of HxWx3 uint8 RGB arrays (any size; grey HxW / HxWx1 and RGBA accepted) -> float32 (N, dim),
        rows L2-normalised. A single array (HxW or HxWxC) is treated as a list of one.

        For the VG benchmark's protocol: `raw` returns what ProGEO's network outputs (a ViT's projected class token
        unnormalised; see GeoLocalizationNet.raw_descriptor); `native_size` feeds each image at its own resolution
        instead of stretching it to the input size (ResNets only: a ViT's positional table fixes its input)."""
        import torch

        if isinstance(images, np.ndarray) and (images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (1, 3, 4))):
            images = [images]
        images = list(images)
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        if native_size and not is_resnet(self.arch):
            raise ValueError(f"native-size input needs a ResNet backbone; {self.arch.get('name')} is a ViT whose "
                             f"positional table fixes the input at {self.image_size[0]}x{self.image_size[1]}")
        bs = batch_size or self.batch_size
        was_training = self.net.training
        self.net.eval()
        out = np.empty((len(images), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for size, idx in self._batches(images, bs, native_size):
                x = self.to_tensor([images[i] for i in idx], size)
                d = (self.net.raw_descriptor(x) if raw else self.net(x)).float()
                out[idx] = (d if raw else torch.nn.functional.normalize(d, dim=1)).cpu().numpy()
        if was_training:
            self.net.train()
        return out

    def _batches(self, images, batch_size, native_size):
        """(size, indices) batches: all at the input size, or grouped by each image's own size."""
        if not native_size:
            return [(None, list(range(i, min(i + batch_size, len(images)))))
                    for i in range(0, len(images), batch_size)]
        groups = {}
        for i, img in enumerate(images):
            groups.setdefault(tuple(np.asarray(img).shape[:2]), []).append(i)
        return [(size, idx[j:j + batch_size]) for size, idx in groups.items() for j in range(0, len(idx), batch_size)]

    __call__ = encode

    def on(self, device="auto", half: bool | None = None) -> "Encoder":
        """This encoder when it already runs on `device` at `half` ("auto" and None ask for nothing), else a copy
        that does; this one is left as it was. half None: as now on the same device, else fp16 on CUDA."""
        dev = self.device if device in (None, "auto") else resolve_device(device)
        if half is None:
            half = self.half if dev == self.device else dev.type == "cuda"
        if dev == self.device and bool(half) == self.half:
            return self
        moved = Encoder(copy.deepcopy(self.net).float(), self.preprocess, self.metadata, device=dev, half=bool(half),
                        batch_size=self.batch_size)
        if self.half:  # weights already rounded to fp16: still the same checkpoint, so it keeps its identity
            moved._fp_frozen = self.fingerprint
        return moved

    def __repr__(self):
        h, w = self.image_size
        return (f"Encoder(arch={self.arch.get('name')}, dim={self.dim}, input={h}x{w}, device={self.device}, "
                f"half={self.half}, fingerprint={self.fingerprint[:12]})")


def build_encoder(arch: str = "RN-nano", dim: int | None = None, image_size=None, pretrained: str | None = None,
                  device="cpu", half: bool | None = None, seed: int | None = 0, mean=IMAGENET_MEAN,
                  std=IMAGENET_STD, metadata: dict | None = None) -> Encoder:
    """A fresh encoder. `arch`: RN50, RN101, ViT-B-16, ViT-B-32 (open_clip) or RN-nano, RN-pico, ViT-nano (small,
    CPU-trainable). `dim` defaults to the backbone's CLIP embedding size (ProGEO's fc_output_dim equals it so that
    the image-to-text loss applies). `image_size`: int or (H, W); defaults to 512 for the open_clip backbones
    (ProGEO) and 64 for the small ones. `pretrained`: None, an open_clip tag ("openai") or a local file.
    With `seed` set, the random initialisation is deterministic (same seed, same weights, same fingerprint)."""
    import torch

    from geoloc_ros.model.network import GeoLocalizationNet, build_clip

    arch = canonical_name(arch)
    if image_size is None:
        image_size = PROGEO_IMAGE_SIZE if arch in OPEN_CLIP_ARCHS else arch_config(arch)["vision_cfg"]["image_size"]
    cfg = arch_config(arch, image_size)
    dim = int(dim or cfg["embed_dim"])
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if pretrained:
            backbone = build_clip(cfg, pretrained).visual
        else:
            backbone = None
        net = GeoLocalizationNet(cfg, dim, backbone)
    meta = {"pretrained": pretrained or None, **(metadata or {})}
    return Encoder(net, make_preprocess(image_size, mean, std), meta, device=device, half=half)
