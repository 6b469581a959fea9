"""geoloc_ros.deploy: the encoder behind the same interface, run by a faster engine. No ROS imports.

    from geoloc_ros.deploy import open_encoder
    enc = open_encoder("maps/nordland_demo", backend="auto")   # or "torch", "torch-tuned", "onnxruntime", "tensorrt"
    enc.encode(images)      # list of HxWx3 uint8 RGB -> float32 (N, enc.dim), rows L2-normalised
    enc.dim, enc.fingerprint, enc.device, enc.backend, enc.backend_reason

Every backend keeps the checkpoint's fingerprint, so maps built with the plain PyTorch encoder match, and gives
descriptors within cosine 0.999 of the fp32 PyTorch reference (tested; "auto" checks it on this machine before
choosing). Exported files are cached beside the encoder (cache.py). See docs/benchmarks.md for which pays.
"""

from geoloc_ros.deploy.api import BACKENDS, open_encoder
from geoloc_ros.deploy.onnx_export import DEFAULT_OPSET, export_onnx

__all__ = ["BACKENDS", "DEFAULT_OPSET", "export_onnx", "open_encoder"]
