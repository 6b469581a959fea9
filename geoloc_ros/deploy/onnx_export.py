"""Export the encoder network to one self-describing ONNX file, for ONNX Runtime and TensorRT.

Graph: input ``images`` float32 (N, 3, H, W), RGB normalised with the checkpoint's mean/std (the ``preprocess``
metadata entry says how); output ``descriptors`` float32 (N, dim), L2-normalised. The batch axis is dynamic.
Metadata (``metadata_props``): ``geoloc.format``, ``geoloc.fingerprint`` (the checkpoint's, so maps built with the
PyTorch encoder match), ``geoloc.dim``, ``geoloc.preprocess`` and ``geoloc.arch`` (JSON).

Opset 17 by default: the newest that TensorRT 8.6 (JetPack 5.1.2+ / 6) parses, and the first with a native
LayerNormalization op, which TensorRT and ONNX Runtime fuse into one kernel (the ViTs have 25 of them).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
import warnings

DEFAULT_OPSET = 17
FORMAT = "geoloc_ros.encoder.onnx"
INPUT_NAME = "images"
OUTPUT_NAME = "descriptors"


def _exportable(net):
    """A copy of `net` whose GeM pools with a mean over the feature map instead of avg_pool2d with a kernel read
    from the input's shape: the same numbers, but the tracer turns that kernel into a runtime value, which ONNX's
    AveragePool cannot take (export fails). ReduceMean also fuses better in TensorRT."""
    import torch

    from geoloc_ros.model.network import GeM

    class MeanGeM(torch.nn.Module):
        def __init__(self, gem):
            super().__init__()
            self.p, self.eps = gem.p, gem.eps

        def forward(self, x):
            p = self.p.to(x.dtype)
            return x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1), keepdim=True).pow(1.0 / p)

    net = copy.deepcopy(net).eval()
    for p in net.parameters():       # a frozen copy would take MultiheadAttention's fast path even with grad on
        p.requires_grad_(True)
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GeM):
                setattr(parent, name, MeanGeM(child))
    return net


def export_onnx(encoder, out, opset: int = DEFAULT_OPSET) -> Path:
    """Write `encoder` (a fp32 `geoloc_ros.model.Encoder`) to `out` (.onnx), atomically. Returns the path."""
    import onnx
    import torch

    if getattr(encoder, "half", False):
        raise ValueError("export the fp32 encoder (load it with device='cpu', half=False); "
                         "TensorRT / ONNX Runtime choose reduced precision themselves")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = _exportable(encoder.net)
    device = next(net.parameters()).device
    h, w = encoder.image_size
    dummy = torch.zeros(2, 3, h, w, device=device)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        # Grad mode stays on: under no_grad / inference_mode nn.MultiheadAttention takes its fused fast path
        # (aten::_native_multi_head_attention), which has no ONNX symbolic; the plain path exports as MatMul/Softmax.
        with warnings.catch_warnings(), torch.enable_grad():
            # The TorchScript-based exporter: it needs no onnxscript and its output parses in TensorRT 8.6.
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (dummy,), str(tmp), opset_version=int(opset), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], do_constant_folding=True, dynamo=False,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        model = onnx.load(str(tmp))
        meta = {"geoloc.format": FORMAT, "geoloc.fingerprint": encoder.fingerprint, "geoloc.dim": str(encoder.dim),
                "geoloc.preprocess": json.dumps(encoder.preprocess, sort_keys=True),
                "geoloc.arch": json.dumps(encoder.arch, sort_keys=True)}
        onnx.helper.set_model_props(model, meta)
        model.doc_string = "geoloc_ros ProGEO encoder: images (N,3,H,W) normalised RGB -> descriptors (N,dim)"
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_onnx_metadata(path) -> dict:
    """The geoloc.* metadata of an exported file, JSON fields decoded, prefix stripped."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key[len("geoloc."):]: p.value for p in model.metadata_props if p.key.startswith("geoloc.")}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an ONNX file written by geoloc export (no geoloc.format={FORMAT})")
    for k in ("preprocess", "arch"):
        meta[k] = json.loads(meta[k])
    meta["dim"] = int(meta["dim"])
    return meta
