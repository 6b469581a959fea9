"""`geoloc bench [encoder|node|retrieval|mapbuild|train ...|all] [--quick]`: measure, print tables, write JSON + PNG.

Each part writes ``<out>/<part>.json`` (results + the machine, versions and command that made them) and its plots
(node and retrieval write their own ``node_latency.json`` / ``retrieval.json``; the run record beside them is
``<part>_run.json``);
``<out>/summary.md`` collects the tables of the parts run. Benchmarks report; nothing here asserts a figure.
"""

from pathlib import Path
import time

PARTS = ("encoder", "node", "retrieval", "mapbuild", "train")
# the parts this command measures itself: it writes their <part>.json, and their failure fails the run (node and
# retrieval belong to other modules, which write their own JSON)
OWN_PARTS = ("encoder", "mapbuild", "train")


def add_parser(sub):
    p = sub.add_parser("bench", help="benchmarks: encoder backends, node latency, retrieval, map build, training",
                       description="Measure and publish: prints tables, writes JSON + PNG under --out.")
    # (no argparse `choices`: Python 3.11 checks the empty list of a nargs="*" positional against them and fails)
    p.add_argument("parts", nargs="*", default=None, metavar="PART",
                   help=f"one or more of {', '.join(PARTS)}, or all (default)")
    p.add_argument("--quick", action="store_true", help="CI mode: small models, few repeats (under 2 minutes)")
    p.add_argument("--out", default=None, help="output folder (default docs/benchmarks, or docs/benchmarks/quick)")
    p.add_argument("--device", default="cpu", help="encoder device: cpu, cuda or auto (default cpu)")
    p.add_argument("--models", nargs="+", default=None,
                   help="encoder and node parts: bundled and/or architecture names (default: bundled RN50 ViT-B-32 "
                        "ViT-B-16 for the encoder part, bundled for the node part)")
    p.add_argument("--backends", nargs="+", default=None,
                   help="encoder part: only these backends or variant labels (torch is always the baseline)")
    p.add_argument("--repeats", type=int, default=None,
                   help="encoder part: timed calls per backend at batch 1 (default 5; a fifth of it at batch 16)")
    p.add_argument("--backend", default="auto", help="node part: the node's encoder_backend (default auto)")
    p.add_argument("--image-size", default=None, metavar="WxH",
                   help="node part: camera frame size, e.g. 640x480 (default: the Nordland frames' own size)")
    p.add_argument("--kinds", nargs="+", default=["raw"], choices=("raw", "jpeg"),
                   help="node part: frames as rgb8 Image (raw) and/or JPEG CompressedImage (default raw)")
    p.add_argument("--rates", nargs="+", type=float, default=None, help="node part: camera rates, Hz (default 10 30)")
    p.add_argument("--map-size", type=int, default=None, help="node part: map keyframes (default 480, quick 100)")
    p.add_argument("--keyframes", type=int, default=None,
                   help="retrieval part: one size of N keyframes built as large maps are (trained IVF filled part by "
                        "part, lists on disk), e.g. 10000000; writes OUT/retrieval_10m/ (docs/large_maps.md)")
    p.add_argument("--threads", type=int, default=None,
                   help="node part: CPU threads of the encoder in the node and in the bare figures (default: the "
                        "backend's, deploy.base.default_threads)")
    p.add_argument("--dds-profile", default=None, metavar="XML|none",
                   help="node part: FASTDDS_DEFAULT_PROFILES_FILE of both processes (default: "
                        "config/fastdds_large_frames.xml, what vpr.launch.py gives; none: the environment's)")
    p.set_defaults(func=run)


def _default_out(quick: bool):
    from geoloc_ros.model.testing import REPO_ROOT

    base = REPO_ROOT / "docs" / "benchmarks" if (REPO_ROOT / "docs").is_dir() else Path("geoloc_bench")
    return base / "quick" if quick else base


def _part_encoder(args, out, machine):
    from geoloc_ros.bench.encoder_speed import run_encoder_benchmark
    from geoloc_ros.bench.report import encoder_table, plot_encoder

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = "encoder" if device == "cpu" else f"encoder_{device}"
    r = run_encoder_benchmark(models=args.models, device=device, quick=args.quick, only=args.backends,
                              repeats_b1=getattr(args, "repeats", None))
    plot_encoder(r, out / f"{name}.png", f"encoder images/s ({device}); {machine['cpu']}, {machine['cores']} cores; "
                                         f"{machine['utc']}")
    return name, r, encoder_table(r)


def _part_node(args, out, machine):
    """One node run per model (--models; default bundled) and frame kind (--kinds); a single run writes into `out`
    itself, several each into out/node_<model>_<kind>."""
    from geoloc_ros.bench.node_latency import format_result, run_node_benchmark
    from geoloc_ros.model.testing import bundled_encoder_path

    size = tuple(int(v) for v in args.image_size.lower().split("x")) if args.image_size else None
    runs = [(m, k) for m in getattr(args, "models", None) or ["bundled"] for k in getattr(args, "kinds", ["raw"])]
    results, tables = {}, []
    for model, kind in runs:
        enc = model
        if model == "bundled":
            enc = str(bundled_encoder_path()) if bundled_encoder_path().is_file() else None
        where = out if len(runs) == 1 else out / f"node_{model}_{kind}".replace("/", "_")
        r = run_node_benchmark(encoder=enc, rates=tuple(args.rates or (10, 30)), duration_s=5 if args.quick else 20,
                               out_dir=str(where), quick=args.quick, backend=getattr(args, "backend", "auto"),
                               image_size=size, kind=kind, map_size=getattr(args, "map_size", None),
                               device=args.device, dds_profile=getattr(args, "dds_profile", None) or "default",
                               threads=getattr(args, "threads", None))
        results[f"{model} {kind}"] = r
        tables.append(format_result(r))
    if len(runs) == 1:
        return "node_run", results[next(iter(results))], tables[0]
    return "node_run", {"runs": results}, "\n\n".join(tables)


def _part_retrieval(args, out, machine):
    if args.keyframes:  # one large size, built as large maps are (bench/retrieval_large.py)
        from geoloc_ros.bench.retrieval_large import format_table, run_large_retrieval

        r = run_large_retrieval(args.keyframes, out_dir=str(Path(out) / f"retrieval_{_short(args.keyframes)}"))
        return "retrieval_large_run", r, format_table(r["rows"], r)
    from geoloc_ros.bench.retrieval import run_retrieval_benchmark

    sizes = (10_000,) if args.quick else (10_000, 100_000, 1_000_000)
    r = run_retrieval_benchmark(sizes=sizes, dim=512, out_dir=str(out), quick=args.quick)
    from geoloc_ros.bench.retrieval import format_table

    return "retrieval_run", r, format_table(r["rows"])


def _short(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _part_mapbuild(args, out, machine):
    from geoloc_ros.bench.mapbuild import run_mapbuild_benchmark
    from geoloc_ros.bench.report import mapbuild_table, plot_mapbuild

    r = run_mapbuild_benchmark(quick=args.quick)
    plot_mapbuild(r, out / "mapbuild.png", f"map build images/s; {machine['cpu']}, {machine['cores']} cores")
    return "mapbuild", r, mapbuild_table(r)


def _part_train(args, out, machine):
    from geoloc_ros.bench.report import plot_train, train_table
    from geoloc_ros.bench.train_step import run_train_benchmark

    r = run_train_benchmark(quick=args.quick, device=args.device)
    plot_train(r, out / "train.png", f"stage-2 training images/s; {machine['cpu']}, {machine['cores']} cores")
    return "train", r, train_table(r)


def run(args):
    from geoloc_ros.bench.report import machine_line, write_json
    from geoloc_ros.machine import load_average, machine_info

    out = (__import__("pathlib").Path(args.out) if args.out else _default_out(args.quick)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    unknown = [p for p in args.parts or () if p not in PARTS + ("all",)]
    if unknown:
        raise SystemExit(f"geoloc bench: unknown part {', '.join(unknown)}; choose from {', '.join(PARTS)} or all")
    parts = PARTS if not args.parts or "all" in args.parts else tuple(dict.fromkeys(args.parts))
    machine = machine_info(args.command_line)
    print(f"geoloc bench {' '.join(parts)} -> {out}\n  machine: {machine_line(machine)}")
    summary = [f"# geoloc bench{' --quick' if args.quick else ''}", "", f"Machine: {machine_line(machine)}", ""]
    failed = 0
    for part in parts:
        t = time.perf_counter()
        print(f"\n== {part}")
        try:
            name, result, table = globals()[f"_part_{part}"](args, out, machine)
            status = "measured"
        except Exception as e:  # noqa: BLE001 - a missing or failing part is reported, the others still run
            # node / retrieval write their own <part>.json; the wrapper beside it must not overwrite it
            name = part if part in OWN_PARTS else f"{part}_run"
            result = {"error": f"not measured: {type(e).__name__}: {e}"}
            table, status = result["error"], "not measured"
            failed += part in OWN_PARTS
        seconds = round(time.perf_counter() - t, 1)
        write_json(out / f"{name}.json", {"part": part, "status": status, "seconds": seconds,
                                          "machine": {**machine, "load_average_at_end": load_average()},
                                          "quick": args.quick, "result": result})
        print(table)
        print(f"  ({status}, {seconds} s, load average now {load_average()})")
        summary += [f"## {name} ({status}, {seconds} s)", "", table, ""]
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    print(f"\nwrote {out}/summary.md")
    return 1 if failed else 0
