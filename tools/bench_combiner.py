"""The feature combiner on Nordland, end to end through the `geoloc` commands a user runs: descriptions of every
frame (`geoloc describe --colour-layout`: the deterministic stand-in, no model server), a combiner trained on one
stretch (`geoloc model combine`, bundled encoder frozen), Recall@N on another stretch (`geoloc eval`, winter
queries against a summer database) for the image encoder alone and for the fused encoder (image-only path,
described map with image-only queries, descriptions on both sides).

Stretches: combiner training 19210..21600, evaluation 21610..24000 (the bundled encoder never trained on either;
the recipe was chosen on this part of the route, so both encoders here share that advantage). Prints the tables
and writes them, with the commands and the CPU, to --out.

    tools/venv.sh python tools/bench_combiner.py --out docs/benchmarks/combiner
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path
import shutil
import tempfile
import time

from geoloc_ros.bench.machine import cpu_model
from geoloc_ros.cli import main as geoloc
from geoloc_ros.model.nordland import default_root, frame_number

TRAIN, EVAL = (19210, 21600), (21610, 24000)


def frames(root: Path, season: str, stretch, out: Path) -> Path:
    """A sequence folder of one season's frames in `stretch` (links to the shared files)."""
    out.mkdir(parents=True)
    for path in sorted((root / season).glob("*.png")):
        if stretch[0] <= frame_number(path) <= stretch[1]:
            (out / path.name).symlink_to(path)
    return out


def run(log: list, *args) -> str:
    """`geoloc ARGS` in this process; its printed output, also kept in `log` with the command."""
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = geoloc([str(a) for a in args])
    if code:
        raise SystemExit(f"geoloc {' '.join(map(str, args))} exited {code}:\n{out.getvalue()}")
    log.append({"command": "geoloc " + " ".join(map(str, args)), "seconds": round(time.perf_counter() - t0, 1),
                "output": out.getvalue()})
    return out.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/benchmarks/combiner")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--data", default=None, help="nordland64 folder (default ../shared/data/nordland64)")
    args = p.parse_args()
    root = Path(args.data) if args.data else default_root()
    log = []
    with tempfile.TemporaryDirectory(prefix="bench_combiner_") as tmp:
        tmp = Path(tmp)
        folders = {(s, part): frames(root, s, stretch, tmp / f"{s}_{part}")
                   for s in ("summer", "winter") for part, stretch in (("train", TRAIN), ("eval", EVAL))}
        csvs = {key: tmp / f"{key[0]}_{key[1]}.csv" for key in folders}
        for key, folder in folders.items():
            run(log, "describe", "--images", folder, "--out", csvs[key], "--colour-layout")
        fused = tmp / "fused"
        run(log, "model", "combine", "--encoder", "maps/nordland_demo",
            "--images", folders["summer", "train"], "--descriptions", csvs["summer", "train"],
            "--images", folders["winter", "train"], "--descriptions", csvs["winter", "train"],
            "--sequence-spacing", 10, "--steps", args.steps, "--out", fused)
        common = ["--database", folders["summer", "eval"], "--queries", folders["winter", "eval"],
                  "--sequence-spacing", 10, "--frame-tolerance", 2]
        image_only = run(log, "eval", "--encoder", "maps/nordland_demo", *common)
        fused_eval = run(log, "eval", "--encoder", fused, *common,
                         "--database-descriptions", csvs["summer", "eval"],
                         "--query-descriptions", csvs["winter", "eval"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"cpu": cpu_model(), "train_frames": TRAIN, "eval_frames": EVAL, "steps": args.steps, "runs": log}
    (out / "combiner.json").write_text(json.dumps(report, indent=2))
    text = f"CPU: {cpu_model()}\n\nimage encoder alone:\n{image_only}\nfused encoder:\n{fused_eval}"
    (out / "combiner.md").write_text("```\n" + text + "```\n")
    print(text)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
