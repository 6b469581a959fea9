"""geoloc_ros.deploy: the encoder behind the same interface, run by a faster engine. No ROS imports.

    from geoloc_ros.deploy import open_encoder
    enc = open_encoder("maps/nordland_demo", backend="onnxruntime")   # or "torch", "torch-tuned"
    enc.encode(images)      # list of HxWx3 uint8 RGB -> float32 (N, enc.dim), rows L2-normalised
    enc.dim, enc.fingerprint, enc.device, enc.backend

Every backend keeps the checkpoint's fingerprint, so maps built with the plain PyTorch encoder match, and gives
descriptors within cosine 0.999 of the fp32 PyTorch reference (tested). See docs/benchmarks.md for which pays.
"""

from geoloc_ros.deploy.api import BACKENDS, open_encoder
from geoloc_ros.deploy.onnx_export import DEFAULT_OPSET, export_onnx

__all__ = ["BACKENDS", "DEFAULT_OPSET", "export_onnx", "open_encoder"]
