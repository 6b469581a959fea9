"""`tensorrt`: an fp16 TensorRT engine built from our ONNX export, run through the TensorRT 10 Python API.

The engine has one optimisation profile over the batch axis (1..max_batch, tuned for batch 1, the node's case) and
is built with the FP16 builder flag, except for the aggregation (L2 norm, GeM, projection): those layers are held
to fp32, because GeM cubes channel-normalised activations of about 1/sqrt(C), whose cubes fall below fp16's
smallest normal number (the same fault `Encoder(half=True)` had: docs/benchmarks.md). Input and output buffers are
CUDA tensors of PyTorch, and the engine runs on PyTorch's current stream, so no pycuda is needed.

Engines are specific to the GPU model and the TensorRT version: the cached file's name carries both (see cache.py),
and an engine TensorRT refuses to load is rebuilt. Identity (fingerprint, dim, preprocessing) is the ONNX file's.
"""

from __future__ import annotations

import numpy as np

from geoloc_ros.deploy import cache
from geoloc_ros.deploy.base import DeployedEncoder, preprocess_numpy
from geoloc_ros.deploy.onnx_export import INPUT_NAME, OUTPUT_NAME, read_onnx_metadata

DEFAULT_MAX_BATCH = 16
WORKSPACE_BYTES = 2 << 30
FP32_LAYERS = "/aggregation/"    # ONNX node names of the aggregation (L2Norm, GeM, Linear) keep this prefix


def available() -> tuple[bool, str]:
    """(True, version) when the tensorrt wheel and a CUDA device are both here; else (False, why not)."""
    try:
        import torch
    except ImportError:
        return False, "no PyTorch (the TensorRT backend keeps its buffers in torch CUDA tensors)"
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        import tensorrt as trt
    except ImportError:
        return False, "the tensorrt wheel is not installed (pip install tensorrt-cu12 or tensorrt-cu13)"
    return True, trt.__version__


def gpu_key(index: int = 0) -> str:
    """GPU model and compute capability: what an engine is specific to."""
    import torch

    props = torch.cuda.get_device_properties(index)
    return cache.slug(f"{props.name}-sm{props.major}{props.minor}")


def engine_name(fingerprint: str, max_batch: int, index: int = 0) -> str:
    import tensorrt as trt

    return f"encoder-{fingerprint[:24]}-trt{cache.slug(trt.__version__)}-{gpu_key(index)}-fp16-b1-{max_batch}.engine"


def build_engine(onnx_path, image_size, max_batch: int = DEFAULT_MAX_BATCH, log=None) -> bytes:
    """Parse the ONNX file and build a serialised fp16 engine with a dynamic batch of 1..max_batch."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)           # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    held = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if FP32_LAYERS in layer.name and layer.type not in (trt.LayerType.CONSTANT, trt.LayerType.SHAPE):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                if layer.get_output(j).dtype in (trt.float16, trt.float32):      # not the int shape tensors
                    layer.set_output_type(j, trt.float32)
            held += 1
    h, w = image_size
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, 3, h, w), (1, 3, h, w), (int(max_batch), 3, h, w))
    config.add_optimization_profile(profile)
    if log:
        log(f"building a TensorRT {trt.__version__} fp16 engine from {onnx_path} (batch 1..{max_batch}, "
            f"{held} aggregation layers held to fp32); this takes a while once")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    return bytes(serialized)


class TensorRTEncoder(DeployedEncoder):
    backend = "tensorrt"

    def __init__(self, onnx_path, source=None, device="cuda", batch_size: int = DEFAULT_MAX_BATCH,
                 max_batch: int | None = None, log=None):
        """`onnx_path`: a file from `geoloc export` / `export_onnx`. The engine is loaded from the cache (beside
        `source`, the checkpoint it came from, else the user cache) or built and cached. `batch_size` larger than
        the engine's `max_batch` is split by `encode`."""
        import tensorrt as trt
        import torch

        ok, why = available()
        if not ok:
            raise RuntimeError(f"TensorRT backend unavailable: {why}")
        self.device = torch.device(device if str(device).startswith("cuda") else "cuda")
        self.index = self.device.index or 0
        meta = read_onnx_metadata(onnx_path)
        self.fingerprint, self.dim = meta["fingerprint"], meta["dim"]
        self.preprocess, self.arch = meta["preprocess"], meta["arch"]
        self.max_batch = int(max_batch or max(batch_size, 1))
        self.batch_size = min(int(batch_size), self.max_batch)
        self.precision = "fp16"
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        name = engine_name(self.fingerprint, self.max_batch, self.index)
        with torch.cuda.device(self.index):
            self.engine = self._load(source or onnx_path, name)
            if self.engine is None:
                blob = build_engine(onnx_path, self.image_size, self.max_batch, log=log)
                self.engine_path = cache.write_atomic(source or onnx_path, name, lambda tmp: tmp.write_bytes(blob))
                self.engine = self._runtime.deserialize_cuda_engine(blob)
            self.context = self.engine.create_execution_context()
        self.version = trt.__version__

    def _load(self, source, name):
        path = cache.find(source, name)
        if path is None:
            return None
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())   # None when TensorRT refuses it
        self.engine_path = path if engine is not None else None
        return engine

    def _encode_batch(self, images) -> np.ndarray:
        # the engine's profile ends at max_batch: a caller's larger batch runs in slices of it
        return np.concatenate([self._run(images[i:i + self.max_batch]) for i in range(0, len(images), self.max_batch)])

    def _run(self, images) -> np.ndarray:
        import torch

        x = torch.from_numpy(preprocess_numpy(images, self.preprocess)).to(self.device, non_blocking=True)
        out = torch.empty((x.shape[0], self.dim), dtype=torch.float32, device=self.device)
        ctx = self.context
        ctx.set_input_shape(INPUT_NAME, tuple(x.shape))
        ctx.set_tensor_address(INPUT_NAME, x.data_ptr())
        ctx.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        stream.synchronize()
        return out.cpu().numpy()
