"""Small helpers of the node's services and lifecycle: a never-failing service callback, the CUDA cache."""

from __future__ import annotations

import functools


def service(callback):
    """A service callback that answers success=false with the reason on any exception, never dies."""
    @functools.wraps(callback)
    def safe(self, request, response):
        try:
            return callback(self, request, response)
        except Exception as e:  # noqa: BLE001 - a service call must never take the node down
            response.success, response.message = False, f"{callback.__name__.strip('_')} failed: " \
                                                        f"{type(e).__name__}: {e}"
            self.get_logger().error(response.message)
            return response
    return safe


def empty_gpu_cache():
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
