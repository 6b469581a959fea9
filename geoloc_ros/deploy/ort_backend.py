"""`onnxruntime`: the exported ONNX file run by ONNX Runtime, on its CPU or CUDA execution provider.

ONNX Runtime fuses what the PyTorch graph runs op by op (LayerNorm, GELU, attention's matmul+softmax, conv+bias),
and plans memory once for the whole graph; the identity (fingerprint, dim, preprocessing) comes from the file's
metadata, so it needs neither the checkpoint nor PyTorch's network code at run time.
"""

from __future__ import annotations

import json

import numpy as np

from geoloc_ros.deploy.base import DeployedEncoder, default_threads, preprocess_numpy
from geoloc_ros.deploy.onnx_export import FORMAT, INPUT_NAME


def _device(kind: str):
    try:
        import torch

        return torch.device(kind)
    except ImportError:  # a Jetson image with ONNX Runtime but no PyTorch still works
        return kind


ALLOW_SPINNING = False  # why: OnnxRuntimeEncoder.__init__


class OnnxRuntimeEncoder(DeployedEncoder):
    backend = "onnxruntime"

    def __init__(self, onnx_path, device="auto", threads: int | None = None, batch_size: int = 64):
        """`device`: "auto" (CUDA provider when ONNX Runtime has it), "cuda", "cpu". `threads`: intra-op threads
        (None: `default_threads()`, as torch-tuned)."""
        import onnxruntime as ort

        self.path = str(onnx_path)
        self.batch_size = int(batch_size)
        available = ort.get_available_providers()
        want = str(device or "auto").lower()
        if want == "auto":
            want = "cuda" if "CUDAExecutionProvider" in available else "cpu"
        if want.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise RuntimeError(f"device {device!r}: this onnxruntime has no CUDAExecutionProvider "
                                   f"(install onnxruntime-gpu); available: {available}")
            index = int(want.split(":")[1]) if ":" in want else 0
            providers = [("CUDAExecutionProvider", {"device_id": index, "cudnn_conv_algo_search": "EXHAUSTIVE"}),
                         "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.threads = int(threads) if threads else default_threads()
        opts.intra_op_num_threads = self.threads
        # ONNX Runtime's pool threads spin after each run by default. On a CPU shared with the camera driver, DDS
        # and the node's own threads that spinning takes the cores they need: the bundled encoder's eager PyTorch
        # call right after an ONNX Runtime call took 9-16 ms with spinning and 6-8 ms without, for ~0.4 ms more
        # per ONNX Runtime call (2.2 -> 2.6 ms; idle 2-core AMD EPYC, docs/benchmarks.md).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if ALLOW_SPINNING else "0")
        self.session = ort.InferenceSession(self.path, opts, providers=providers)
        self.device = _device(want)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("geoloc.format") != FORMAT:
            raise ValueError(f"{self.path}: not an ONNX file written by `geoloc export` (no geoloc metadata)")
        self.fingerprint = meta["geoloc.fingerprint"]
        self.dim = int(meta["geoloc.dim"])
        self.preprocess = json.loads(meta["geoloc.preprocess"])
        self.arch = json.loads(meta.get("geoloc.arch", "{}"))
        self.providers = self.session.get_providers()

    def _encode_batch(self, images) -> np.ndarray:
        return self.session.run(None, {INPUT_NAME: preprocess_numpy(images, self.preprocess)})[0]
