"""What reading a map into memory costs: load time and resident memory of `MapDatabase.load` (every file read
once, verified, parsed from memory) against the memory-mapped descriptors it replaced (which a `cp` over the
file under a running node turned into SIGBUS), for the bundled map and a synthetic 100k-keyframe map.

    python -m geoloc_ros.bench.map_load [--sizes 100000] [--out docs/benchmarks/map_load.json]

Each measurement runs in a fresh Python process, so resident memory (VmRSS) starts from the same point;
"after search" is after one exact pass over every stored descriptor (what a radius search or re-ranking touches),
where memory-mapped pages become resident too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import subprocess
import sys
import tempfile
import time

import numpy as np

from geoloc_ros.machine import cpu_model

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLED = REPO_ROOT / "maps" / "nordland_demo"


def rss_mib(field: str = "VmRSS") -> float:
    """Resident memory (VmRSS), or its peak so far (VmHWM), of this process in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(path: str, mode: str) -> dict:
    """In this process: load the map at `path` ('memory': MapDatabase.load; 'mmap': the former way, descriptors
    memory-mapped), then touch every descriptor. Returns seconds and MiB."""
    import faiss

    from geoloc_ros.mapping import MapDatabase, storage

    base = rss_mib()
    t = time.perf_counter()
    if mode == "memory":
        db = MapDatabase.load(path)
        kept = (db, db.descriptors)
    else:
        folder = Path(path)
        manifest = storage.read_manifest(folder)
        storage.verify_files(folder, manifest)
        kept = (np.load(folder / storage.DESCRIPTORS, mmap_mode="r"), faiss.read_index(str(folder / storage.INDEX)),
                storage.read_keyframes(folder / storage.KEYFRAMES))
    load_s = time.perf_counter() - t
    after_load = rss_mib() - base
    float((kept[1] if mode == "memory" else kept[0]).sum(dtype=np.float64))  # every page read, no copy
    return {"mode": mode, "load_s": round(load_s, 3), "rss_after_load_mib": round(after_load, 1),
            "rss_after_search_mib": round(rss_mib() - base, 1), "peak_mib": round(rss_mib("VmHWM") - base, 1)}


def synthetic_map(folder: Path, n: int, dim: int = 256) -> Path:
    from geoloc_ros.mapping import Keyframe, MapDatabase

    rng = np.random.default_rng(0)
    db = MapDatabase.create(f"synthetic{n}", dim, "0" * 64)
    db.add(rng.standard_normal((n, dim)).astype(np.float32),
           [Keyframe(id=-1, label=f"k{i}", x=float(i), y=0.0) for i in range(n)])
    return db.save(folder / f"synthetic{n}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[100_000])
    p.add_argument("--out", default=None, help="JSON file for the results")
    p.add_argument("--one", nargs=2, metavar=("MAP", "MODE"), help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(*args.one)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        maps = [BUNDLED] + [synthetic_map(Path(tmp), n) for n in args.sizes]
        for path in maps:
            size_mib = sum(f.stat().st_size for f in path.iterdir() if f.name != "encoder.safetensors") / 2**20
            for mode in ("memory", "mmap"):
                out = subprocess.run([sys.executable, "-m", "geoloc_ros.bench.map_load", "--one", str(path), mode],
                                     check=True, capture_output=True, text=True).stdout
                rows.append({"map": path.name, "files_mib": round(size_mib, 1), **json.loads(out.splitlines()[-1])})
    print(f"CPU: {cpu_model()}")
    print(f"{'map':<18} {'files MiB':>9} {'mode':<7} {'load s':>7} {'RSS after load':>15} {'after search':>13} "
          f"{'peak':>9}")
    for r in rows:
        print(f"{r['map']:<18} {r['files_mib']:>9} {r['mode']:<7} {r['load_s']:>7} {r['rss_after_load_mib']:>11} MiB "
              f"{r['rss_after_search_mib']:>9} MiB {r['peak_mib']:>5} MiB")
    if args.out:
        Path(args.out).write_text(json.dumps({"cpu": cpu_model(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
