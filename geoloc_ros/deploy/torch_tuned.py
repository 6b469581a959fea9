"""`torch-tuned`: the same PyTorch network, run for inference only.

CPU: inference_mode (no autograd bookkeeping), a chosen thread count, channels-last memory for the ResNets
(oneDNN's convolutions run NHWC natively; a NCHW model pays a reorder per layer), and, when asked, bf16 weights
where the CPU has native bf16 (AVX512-BF16 / AMX). bf16 is not the default on CPU: how well it keeps the fp32
descriptors depends on the weights. Random networks and the first bundled encoder stayed at cosine >= 0.9998.
The bundled encoder 09aa2e52 reached only 0.9989 on camera images, and 0.94 on near-uniform Nordland frames, where
its validation R@1 dropped from 57.5 to 56.9 (its successors: 51bd40b4, cosine >= 0.9897 there, 57.9 -> 57.7;
9890b58a, trained in bf16, >= 0.9912, 58.5 -> 57.9;
94c402b0, >= 0.9905, 61.5 -> 61.3).
CUDA: fp16 (default) or bf16 autocast, cuDNN autotuning;
the weights stay fp32, so the accuracy-sensitive ops (norms, pow, softmax) run in fp32 as autocast decides.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np

from geoloc_ros.deploy.base import DeployedEncoder, default_threads
from geoloc_ros.model.archs import is_resnet
from geoloc_ros.model.encoder import resize_batch, resolve_device

PRECISIONS = ("fp32", "fp16", "bf16")


class TunedTorchEncoder(DeployedEncoder):
    backend = "torch-tuned"

    def __init__(self, encoder, device="auto", precision: str | None = None, threads: int | None = None,
                 channels_last: bool | None = None, batch_size: int = 64, copy_net: bool = True):
        """`encoder`: a fp32 `geoloc_ros.model.Encoder` (its network is copied unless `copy_net` is False, so the
        caller's encoder stays as it was). `precision`: "fp32", "fp16" (CUDA only) or "bf16"; None = fp16 on CUDA,
        fp32 on CPU (bf16 is opt-in there: see the module docstring). `threads`: torch's intra-op threads while
        this encoder runs (set and restored around each call, so the rest of the process keeps its own); None =
        `default_threads()` (all cores on 1-2, else one fewer). `channels_last`: None = on for ResNets, off for ViTs
        (a ViT has one convolution)."""
        import torch

        if getattr(encoder, "half", False):
            raise ValueError("torch-tuned needs the fp32 encoder (load it with half=False); it applies autocast itself")
        self.fingerprint = encoder.fingerprint          # of the fp32 weights, before anything below touches them
        self.preprocess = dict(encoder.preprocess)
        self.metadata = dict(getattr(encoder, "metadata", {}))
        self.dim = int(encoder.dim)
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        cuda = self.device.type == "cuda"
        self.precision = precision or ("fp16" if cuda else "fp32")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.precision == "fp16" and not cuda:
            raise ValueError("fp16 needs CUDA; on CPU use precision='bf16' (native on AVX512-BF16/AMX CPUs)")
        self.threads = int(threads) if threads else default_threads()
        net = copy.deepcopy(encoder.net) if copy_net else encoder.net
        self.channels_last = is_resnet(net.cfg) if channels_last is None else bool(channels_last)
        self._memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        # CPU bf16: the weights themselves become bf16. CPU autocast re-casts every weight on every call and sends
        # attention down a slow path (measured: ViT-B-32 at batch 4, ~9x slower than fp32), while bf16 weights let
        # oneDNN run AMX / AVX512-BF16 kernels directly (~2x faster than fp32, cosine 0.99995). CUDA keeps autocast.
        self._cast = None
        if self.precision == "bf16" and not cuda:
            net = net.to(torch.bfloat16)
            self._cast = torch.bfloat16
        self.net = net.to(self.device).eval().to(memory_format=self._memory_format)
        for p in self.net.parameters():
            p.requires_grad_(False)
        if cuda:
            torch.backends.cudnn.benchmark = True   # fixed input size: let cuDNN pick the fastest kernels once
        self._mean = torch.tensor(self.preprocess["mean"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.preprocess["std"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def _autocast(self):
        import torch

        if self.precision == "fp32" or self._cast is not None:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def _encode_batch(self, images) -> np.ndarray:
        import torch

        batch = torch.from_numpy(resize_batch(images, self.image_size))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        previous = torch.get_num_threads()
        if previous != self.threads:
            torch.set_num_threads(self.threads)
        try:
            return self._run(batch)
        finally:
            if previous != self.threads:
                torch.set_num_threads(previous)

    def _run(self, batch) -> np.ndarray:
        import torch

        with torch.inference_mode():
            # uint8 goes to the device first (4x less to copy); normalise there, as Encoder.to_tensor does.
            x = (batch.permute(0, 3, 1, 2).float().div_(255.0) - self._mean) / self._std
            x = x.contiguous(memory_format=self._memory_format)
            if self._cast is not None:
                x = x.to(self._cast)
            with self._autocast():
                d = self.net(x)
            return d.float().cpu().numpy()

    def __repr__(self):
        return super().__repr__()[:-1] + f", precision={self.precision}, threads={self.threads}, " \
                                          f"channels_last={self.channels_last})"
