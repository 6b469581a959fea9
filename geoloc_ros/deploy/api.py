"""`open_encoder`: one call for every deployment path, so the node and the CLI choose by a parameter."""

from __future__ import annotations

from pathlib import Path

from geoloc_ros.deploy import cache
from geoloc_ros.deploy.onnx_export import DEFAULT_OPSET, export_onnx, read_onnx_metadata
from geoloc_ros.model import Encoder, load_encoder
from geoloc_ros.model.encoder import resolve_device

# name -> what it is (docs/benchmarks.md has the measured speed of each)
BACKENDS = {
    "torch": "PyTorch eager, the reference (geoloc_ros.model.Encoder itself); fp16 on CUDA by default",
    "torch-tuned": "PyTorch for inference only: inference_mode, threads, channels-last ResNets, bf16 weights on "
                   "AMX/AVX512-BF16 CPUs when asked; CUDA fp16/bf16 autocast",
    "onnxruntime": "the exported ONNX graph in ONNX Runtime (CPU or CUDA execution provider)",
    "tensorrt": "an fp16 TensorRT engine built from the ONNX export (CUDA; the tensorrt wheel), dynamic batch 1..16",
}


def _as_encoder(source, device="cpu", half=False, batch_size=64):
    """A geoloc_ros.model.Encoder from an Encoder (returned as is) or a checkpoint file / directory."""
    if isinstance(source, Encoder):
        return source
    if isinstance(source, (str, Path)) and str(source).endswith(".onnx"):
        raise ValueError(f"{source}: an ONNX file runs on backend 'onnxruntime' or 'tensorrt' only; 'auto' and "
                         "the PyTorch backends need the checkpoint (auto checks agreement against its fp32 output)")
    return load_encoder(source, device=device, half=half, batch_size=batch_size, combiner=False)


def onnx_name(fingerprint: str, opset: int) -> str:
    """The cached export's name: the encoder, the opset and the exporter (torch) it depends on."""
    import torch

    return f"encoder-{fingerprint[:24]}-opset{int(opset)}-torch{cache.slug(torch.__version__)}.onnx"


def _fits(path: Path, fingerprint: str) -> bool:
    try:
        return read_onnx_metadata(path)["fingerprint"] == fingerprint
    except Exception:  # noqa: BLE001 - unreadable, truncated, foreign: not usable, so rebuilt
        return False


def _onnx_for(source, opset: int, batch_size: int, ref=None) -> Path:
    """The ONNX file for `source`: itself if it is one; an ``encoder.onnx`` beside the checkpoint when its fingerprint
    matches (shipped with a map); else the cached export (cache.py), exported when missing or stale."""
    if isinstance(source, (str, Path)) and str(source).endswith(".onnx"):
        return Path(source)
    enc = ref or _as_encoder(source, batch_size=batch_size)
    folder = cache.encoder_folder(source)
    if folder is not None and _fits(folder / "encoder.onnx", enc.fingerprint):
        return folder / "encoder.onnx"
    name = onnx_name(enc.fingerprint, opset)
    found = cache.find(source, name)
    if found is not None and _fits(found, enc.fingerprint):
        return found
    return cache.write_atomic(source, name, lambda tmp: export_onnx(enc, tmp, opset=opset))


def open_encoder(source, backend: str = "torch", device="auto", half: bool | None = None,
                 threads: int | None = None, batch_size: int = 64, opset: int = DEFAULT_OPSET, **options):
    """An encoder with the `geoloc_ros.model.Encoder` interface (encode, dim, fingerprint, device), run by `backend`,
    plus `backend_reason` (why this path; what "auto" tried) for logs and /diagnostics.

    `source`: a checkpoint file or a directory holding ``encoder.safetensors`` (e.g. a map), an Encoder, or (for
    "onnxruntime" / "tensorrt") an ONNX file from `geoloc export`. `backend`: "auto" (the fastest path here that
    keeps cosine >= 0.999 to fp32: geoloc_ros.deploy.auto), or one of BACKENDS by name. `device`: "auto", "cpu",
    "cuda[:N]". `half`: reduced precision. For "auto": None or True allow it where it passes the check, False
    keeps fp32. Otherwise None = the backend's default (torch: fp16 on CUDA, fp32 on CPU; torch-tuned: fp16 on
    CUDA, fp32 on CPU; onnxruntime: fp32; tensorrt: fp16); True on CUDA = fp16; True on CPU = bf16 weights
    (torch-tuned only); False = fp32. `threads`: CPU threads (torch-tuned and onnxruntime: default
    `base.default_threads()`, all cores on a 1-2 core CPU, else one fewer; "torch" sets torch's process-wide count
    when given). Other `options` go to the backend (torch-tuned: precision="fp32"|"fp16"|"bf16",
    channels_last=bool; tensorrt: max_batch=int; auto: check_images=list of images for the agreement check,
    log=callable).
    """
    backend = (backend or "torch").lower()
    if backend == "auto":
        from geoloc_ros.deploy.auto import open_auto

        check, log = options.pop("check_images", None), options.pop("log", None)
        dev = resolve_device(device)
        ref = _as_encoder(source, device="cpu", half=False, batch_size=batch_size)

        def open_backend(name, **opts):
            return _open(source, ref, name, dev, opts.pop("half", None), threads, batch_size, opset, **opts)

        return _fused(source, open_auto(source, ref, open_backend, dev, half=half, images=check, log=log))
    return _fused(source, _open(source, None, backend, device, half, threads, batch_size, opset, **options))


def _fused(source, encoder):
    """`encoder` fused with the feature combiner beside the checkpoint `source`, if it carries one: the backend
    runs the image encoder, the small combiner runs in PyTorch (model/fused_encoder.py)."""
    if not isinstance(source, (str, Path)) or str(source).endswith(".onnx"):
        return encoder
    from geoloc_ros.model.checkpoint import find_checkpoint
    from geoloc_ros.model.fused_encoder import with_combiner

    return with_combiner(encoder, find_checkpoint(source))


def _open(source, ref, backend, device, half, threads, batch_size, opset, **options):
    """One named backend. `ref`: the fp32 CPU Encoder of `source` when the caller has loaded it already."""
    if backend == "torch":
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        from geoloc_ros.model import Encoder

        if isinstance(ref or source, Encoder):
            return (ref or source).on(device, half)
        return _as_encoder(source, device=device, half=half, batch_size=batch_size)
    if backend == "torch-tuned":
        from geoloc_ros.deploy.torch_tuned import TunedTorchEncoder

        dev = resolve_device(device)
        precision = options.pop("precision", None)
        if precision is None and half is not None:
            precision = ("fp16" if dev.type == "cuda" else "bf16") if half else "fp32"
        enc = ref or _as_encoder(source, device="cpu", half=False, batch_size=batch_size)
        # A freshly loaded network is ours to change in place; a caller's (or auto's shared) Encoder is copied first.
        return TunedTorchEncoder(enc, device=dev, precision=precision, threads=threads, batch_size=batch_size,
                                 copy_net=enc is source or enc is ref, **options)
    if backend in ("onnxruntime", "ort", "onnx"):
        from geoloc_ros.deploy.ort_backend import OnnxRuntimeEncoder

        if half:
            raise ValueError("onnxruntime runs the fp32 graph; for fp16 use backend='tensorrt' (CUDA) "
                             "or backend='torch-tuned'")
        return OnnxRuntimeEncoder(_onnx_for(source, opset, batch_size, ref), device=device, threads=threads,
                                  batch_size=batch_size, **options)
    if backend in ("tensorrt", "trt"):
        from geoloc_ros.deploy.tensorrt_backend import TensorRTEncoder, available

        ok, why = available()
        if not ok:
            raise RuntimeError(f"backend tensorrt: {why}")
        if half is False:
            raise ValueError("the tensorrt backend builds fp16 engines; for fp32 use torch or onnxruntime")
        if str(device) == "cpu":
            raise ValueError("the tensorrt backend runs on CUDA; on a CPU use auto, onnxruntime or torch-tuned")
        dev = resolve_device("cuda" if str(device) == "auto" else device)
        return TensorRTEncoder(_onnx_for(source, opset, batch_size, ref), source=source, device=dev,
                               batch_size=min(batch_size, 16), **options)
    raise ValueError(f"unknown encoder backend {backend!r}; choose auto or one of {', '.join(BACKENDS)}")
