"""`open_encoder`: one call for every deployment path, so the node and the CLI choose by a parameter."""

from __future__ import annotations

import os
from pathlib import Path

from geoloc_ros.deploy.onnx_export import DEFAULT_OPSET

# name -> what it is (docs/benchmarks.md has the measured speed of each)
BACKENDS = {
    "torch": "PyTorch eager, the reference (geoloc_ros.model.Encoder itself); fp16 on CUDA by default",
    "torch-tuned": "PyTorch for inference only: inference_mode, threads, channels-last ResNets, bf16 weights on "
                   "AMX/AVX512-BF16 CPUs when asked; CUDA fp16/bf16 autocast",
    "onnxruntime": "the exported ONNX graph in ONNX Runtime (CPU or CUDA execution provider)",
}


def onnx_cache_dir() -> Path:
    base = os.environ.get("GEOLOC_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME")
                                                          or os.path.expanduser("~/.cache"), "geoloc_ros")
    return Path(base) / "onnx"


def _as_encoder(source, device="cpu", half=False, batch_size=64):
    """A geoloc_ros.model.Encoder from an Encoder (returned as is) or a checkpoint file / directory."""
    from geoloc_ros.model import Encoder, load_encoder

    if isinstance(source, Encoder):
        return source
    return load_encoder(source, device=device, half=half, batch_size=batch_size)


def _onnx_for(source, opset: int, batch_size: int) -> Path:
    """The ONNX file for `source`: itself if it is one; an ``encoder.onnx`` beside the checkpoint when its fingerprint
    matches; else exported once into the cache (keyed by fingerprint and opset)."""
    from geoloc_ros.deploy.onnx_export import export_onnx, read_onnx_metadata

    if isinstance(source, (str, Path)) and str(source).endswith(".onnx"):
        return Path(source)
    enc = _as_encoder(source, batch_size=batch_size)
    if isinstance(source, (str, Path)):
        folder = Path(source) if Path(source).is_dir() else Path(source).parent
        beside = folder / "encoder.onnx"
        try:
            if beside.is_file() and read_onnx_metadata(beside)["fingerprint"] == enc.fingerprint:
                return beside
        except (ValueError, KeyError):
            pass
    cached = onnx_cache_dir() / f"{enc.fingerprint[:24]}-opset{int(opset)}.onnx"
    if not cached.is_file():
        export_onnx(enc, cached, opset=opset)
    return cached


def open_encoder(source, backend: str = "torch", device="auto", half: bool | None = None,
                 threads: int | None = None, batch_size: int = 64, opset: int = DEFAULT_OPSET, **options):
    """An encoder with the `geoloc_ros.model.Encoder` interface (encode, dim, fingerprint, device), run by `backend`.

    `source`: a checkpoint file or a directory holding ``encoder.safetensors`` (e.g. a map), an Encoder, or (for
    "onnxruntime") an ONNX file from `geoloc export`. `device`: "auto", "cpu", "cuda[:N]".
    `half`: reduced precision. None = the backend's default (torch: fp16 on CUDA, fp32 on CPU; torch-tuned: fp16
    on CUDA, fp32 on CPU; onnxruntime: fp32); True on CUDA =
    fp16; True on CPU = bf16 weights (torch-tuned only); False = fp32. `threads`: CPU threads (torch-tuned and
    onnxruntime: default one core fewer than available; "torch" sets torch's process-wide count when given). Other `options` go to the backend
    (torch-tuned: precision="fp32"|"fp16"|"bf16", channels_last=bool).
    """
    from geoloc_ros.model.encoder import resolve_device

    backend = (backend or "torch").lower()
    if backend == "torch":
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        from geoloc_ros.model import Encoder

        if isinstance(source, Encoder):
            return source.on(device, half)
        return _as_encoder(source, device=device, half=half, batch_size=batch_size)
    if backend == "torch-tuned":
        from geoloc_ros.deploy.torch_tuned import TunedTorchEncoder

        dev = resolve_device(device)
        precision = options.pop("precision", None)
        if precision is None and half is not None:
            precision = ("fp16" if dev.type == "cuda" else "bf16") if half else "fp32"
        enc = _as_encoder(source, device="cpu", half=False, batch_size=batch_size)
        # A freshly loaded network is ours to change in place; a caller's Encoder is copied first.
        return TunedTorchEncoder(enc, device=dev, precision=precision, threads=threads, batch_size=batch_size,
                                 copy_net=enc is source, **options)
    if backend in ("onnxruntime", "ort", "onnx"):
        from geoloc_ros.deploy.ort_backend import OnnxRuntimeEncoder

        if half:
            raise ValueError("onnxruntime runs the fp32 graph; for fp16 build a TensorRT engine from it "
                             "(docs/benchmarks.md) or use backend='torch-tuned'")
        return OnnxRuntimeEncoder(_onnx_for(source, opset, batch_size), device=device, threads=threads,
                                  batch_size=batch_size, **options)
    raise ValueError(f"unknown encoder backend {backend!r}; choose one of {', '.join(BACKENDS)}")
