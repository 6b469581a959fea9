"""The machine a process runs on: its CPU (the key deploy caches tuned backends under), memory use, and what
every benchmark figure records about where and how it was measured."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The instruction-set extensions that decide which backend pays (bf16 / AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return sorted(have & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8",
                                          "amx_tile", "avx_vnni"})
    except OSError:
        pass
    return []


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def gpu() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            gib = torch.cuda.get_device_properties(0).total_memory / 2**30
            return f"{torch.cuda.get_device_name(0)} ({gib:.0f} GiB)"
    except Exception:  # noqa: BLE001 - a broken CUDA install means "no GPU" here
        pass
    return None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "onnxruntime", "onnx", "open_clip", "faiss", "numpy", "cv2"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            out[name] = None
    try:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out["geoloc_ros_commit"] = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"],
                                                  capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["geoloc_ros_commit"] = None
    return out


def machine_info(command: str | None = None) -> dict:
    import torch

    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "torch_threads": torch.get_num_threads(),
        "gpu": gpu(), "os": platform.platform(), "versions": versions(),
        "command": command or " ".join(["geoloc" if sys.argv[0].endswith("geoloc") else sys.argv[0]] + sys.argv[1:]),
        "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "load_average_at_start": load_average(),
    }


def rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS since the last `reset_peak_rss`) of this process, bytes (Linux /proc)."""
    cur = peak = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return cur, peak


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0), so a peak can be taken per backend."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
