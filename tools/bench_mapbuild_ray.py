"""Map build throughput of both engines on the same inputs: `geoloc map build` (the command users run) with
`--engine local` and `--engine ray --ray-workers W`, frames per second from the first frame listed to the map saved.
The Ray figure is given twice: with Ray's start-up (`ray.init` of a local Ray of W CPUs, paid once per build) and
without it. Inputs: N Nordland summer frames (64x32 PNG) as --inputs folders of N/inputs frames each, the bundled
encoder, the default local features (SIFT). Prints the figures and writes results.json and results.md to --out.

    python tools/bench_mapbuild_ray.py --frames 2000 --workers 2 --out docs/benchmarks/mapbuild_ray
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import platform
import shutil
import subprocess
import tempfile
import time

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def make_inputs(root: Path, frames: int, inputs: int) -> list[Path]:
    """`inputs` folders of consecutive Nordland summer frames (symlinks), `frames` in all."""
    source = REPO.parent / "shared" / "data" / "nordland64" / "summer"
    names = sorted(p.name for p in source.glob("images-*.png"))[:frames]
    if len(names) < frames:
        raise SystemExit(f"{source}: {len(names)} frames, {frames} asked for")
    folders = []
    for n in range(inputs):
        folder = root / f"part{n}"
        folder.mkdir()
        for name in names[n::inputs]:
            (folder / name).symlink_to(source / name)
        folders.append(folder)
    return folders


def build(args_common, out: Path, extra=()) -> float:
    from geoloc_ros.cli import main as geoloc

    t = time.perf_counter()
    geoloc(["map", "build", *args_common, "--out", str(out), "--force", *extra])
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--inputs", type=int, default=2, help="image folders the frames are split into")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "mapbuild_ray")
    a = ap.parse_args()

    import ray
    import torch

    encoder = REPO / "maps" / "nordland_demo" / "encoder.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders = make_inputs(tmp, a.frames, a.inputs)
        common = ["--encoder", str(encoder), "--sequence-spacing", "10", "--device", "cpu", "--quiet",
                  "--no-encoder-copy"]
        for folder in folders:
            common += ["--images", str(folder)]
        build(common[:-2] + ["--range", "0:10"], tmp / "warm-up")  # imports and first model load, untimed
        load_start = os.getloadavg()
        local_s = build(common, tmp / "local")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each Ray actor runs (Ray sets OMP_NUM_THREADS=1 for a 1-CPU actor)
        local_1_s = build(common, tmp / "local")
        torch.set_num_threads(threads)
        t = time.perf_counter()
        ray.init(num_cpus=a.workers, include_dashboard=False, logging_level="warning")
        init_s = time.perf_counter() - t
        ray_s = build(common, tmp / "ray", ["--engine", "ray", "--ray-workers", str(a.workers)])
        ray.shutdown()
        load_end = os.getloadavg()
        shutil.rmtree(tmp / "local")
        shutil.rmtree(tmp / "ray")
    result = {
        "cpu": cpu_name(), "cores": os.cpu_count(), "frames": a.frames, "inputs": a.inputs, "workers": a.workers,
        "frame_size": "64x32 PNG (nordland64/summer)", "encoder": str(encoder.relative_to(REPO)),
        "local_features": "sift (default)", "ray": ray.__version__,
        "local": {"seconds": round(local_s, 2), "frames_per_s": round(a.frames / local_s, 1), "torch_threads": threads},
        "local_1_thread": {"seconds": round(local_1_s, 2), "frames_per_s": round(a.frames / local_1_s, 1)},
        "ray_start_s": round(init_s, 2),
        "ray_with_start": {"seconds": round(init_s + ray_s, 2), "frames_per_s": round(a.frames / (init_s + ray_s), 1)},
        "ray_without_start": {"seconds": round(ray_s, 2), "frames_per_s": round(a.frames / ray_s, 1)},
        "load_average_start": [round(v, 2) for v in load_start], "load_average_end": [round(v, 2) for v in load_end],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": f"python tools/bench_mapbuild_ray.py --frames {a.frames} --inputs {a.inputs} --workers {a.workers}",
    }
    rows = [(f"local (one process, {threads} torch threads)", result["local"]),
            ("local (one process, 1 torch thread)", result["local_1_thread"]),
            (f"ray, {a.workers} workers, with Ray start-up ({init_s:.1f} s)", result["ray_with_start"]),
            (f"ray, {a.workers} workers, Ray already running", result["ray_without_start"])]
    md = [f"{a.frames} frames ({result['frame_size']}) in {a.inputs} inputs, {result['encoder']}, SIFT features; "
          f"{result['cpu']} ({result['cores']} cores); Ray {result['ray']}; load average {result['load_average_start']}"
          f" at start, {result['load_average_end']} at end; {result['date']}; `{result['command']}`", "",
          "| engine | frames/s | seconds |", "|---|---|---|"]
    md += [f"| {label} | {r['frames_per_s']} | {r['seconds']} |" for label, r in rows]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (a.out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
