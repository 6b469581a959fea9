"""`geoloc eval --loop-closures`: the precision-recall curve of ~/loop_closures over the closure confidence.

Per split (LABEL=LO:HI, frame numbers of the file names): a map of the database frames of the split built by
`geoloc map build` (the product's own command), the query frames of the same split replayed in order through the
Localizer (what vpr_node runs, without DDS) once per consistency mode, every other parameter at its default
(config defaults, plus --param overrides). Prints a table, saves OUT/loop_closures.png and OUT/loop_closures.json
(curves, operating point at the default loop_closure_min_confidence, every closure with its evidence).

    geoloc eval --loop-closures --encoder maps/nordland_demo/encoder.safetensors \\
        --database ../shared/data/nordland64/summer --queries ../shared/data/nordland64/winter \\
        --sequence-spacing 10 --split tuning=19210:21600 --split held-out=21610:24000 --out runs/loop_closures
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path


def add_arguments(p):
    g = p.add_argument_group("--loop-closures")
    g.add_argument("--loop-closures", action="store_true",
                   help="precision-recall of ~/loop_closures over the confidence, replayed through the Localizer")
    g.add_argument("--split", action="append", default=None, metavar="LABEL=LO:HI",
                   help="a stretch to build a map of and replay (frame numbers, inclusive); repeatable "
                        "(default: one split from --frames)")
    g.add_argument("--modes", nargs="+", default=["sequence", "consecutive"], choices=("sequence", "consecutive"),
                   help="consistency modes to evaluate (default both)")
    g.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="node parameter override (YAML value), repeatable; default: every parameter at its default")
    g.add_argument("--tolerance", type=float, default=25.0, help="a closure is correct within this (m, default 25)")
    g.add_argument("--out", type=Path, default=Path("runs/loop_closures"), help="folder for maps, PNG and JSON")


def run(args):
    from geoloc_ros.localization import closure_eval as E
    from geoloc_ros.node import params

    if not (args.encoder and args.database and args.queries and args.sequence_spacing):
        raise SystemExit("geoloc eval --loop-closures: give --encoder, --database, --queries and --sequence-spacing")
    splits = _splits(args)
    base = _settings(args)
    summaries, runs = {}, {}
    for label, (lo, hi) in splits.items():
        map_dir = _build_map(args, label, lo, hi)
        queries = _records(args.queries, args.sequence_spacing, lo, hi)
        for mode in args.modes:
            s = replace(base, map_path=[str(map_dir)], consistency_mode=mode)
            rows = E.replay(params.localizer_config(s), queries, blank_threshold=s.blank_threshold)
            key = f"{label} {lo}..{hi}, {mode}"
            summaries[key] = E.summarise(rows, base.loop_closure_min_confidence, args.tolerance)
            runs[key] = {"map": str(map_dir), "rows": rows}
            _print_one(key, summaries[key])
    title = (f"~/loop_closures precision-recall over the confidence\n(winter queries, summer map; correct within "
             f"{args.tolerance:g} m); dots: default threshold {base.loop_closure_min_confidence:g}")
    E.plot(summaries, args.out / "loop_closures.png", title)
    print("\n" + E.format_table(summaries))
    E.write_json(args.out / "loop_closures.json", {
        "command": getattr(args, "command_line", ""), "threshold": base.loop_closure_min_confidence,
        "params": args.param, "tolerance_m": args.tolerance, "summaries": summaries, "runs": runs})
    print(f"wrote {args.out / 'loop_closures.png'} and {args.out / 'loop_closures.json'}")
    return 0


def _print_one(key, s):
    op = s["operating_point"]
    print(f"{key}: {s['curve']['closures']} closures over {s['curve']['frames']} frames; at the default "
          f"threshold {op['threshold']:g}: precision {op['precision']:.3f}, recall {op['recall']:.3f}; recall at "
          f"99 % precision {s['recall_at_99']:.3f}, at 100 % {s['recall_at_100']:.3f}", flush=True)


def _splits(args) -> dict:
    given = args.split or ([f"frames={args.frames}"] if args.frames else [])
    if not given:
        raise SystemExit("geoloc eval --loop-closures: give --split LABEL=LO:HI (or --frames LO:HI)")
    out = {}
    for s in given:
        label, _, rng = s.rpartition("=")
        try:
            lo, hi = (int(v) for v in rng.split(":"))
        except ValueError:
            raise SystemExit(f"geoloc eval --loop-closures: --split {s!r}: expected LABEL=LO:HI") from None
        out[label or rng] = (lo, hi)
    return out


def _settings(args):
    import yaml

    from geoloc_ros.node import params

    values = {**params.defaults(), "device": args.device}
    for p in args.param:
        name, sep, raw = p.partition(":=")
        if not sep or name not in values:
            raise SystemExit(f"geoloc eval --loop-closures: --param {p!r}: expected NAME:=VALUE of a node parameter")
        try:
            values[name] = params.check(name, yaml.safe_load(raw))
        except params.ParameterError as e:
            raise SystemExit(f"geoloc eval --loop-closures: {e}") from None
    return params.Settings(**{**values, "encoder_path": str(_encoder_file(args.encoder))})


def _encoder_file(path) -> Path:
    p = Path(path)
    return p / "encoder.safetensors" if p.is_dir() else p


def _records(folder, spacing, lo, hi):
    from geoloc_ros.datasets import load_dataset
    from geoloc_ros.model.nordland import frame_number

    recs = [r for r in load_dataset(folder, sequence_spacing=spacing) if lo <= frame_number(r.path) <= hi]
    if not recs:
        raise SystemExit(f"geoloc eval --loop-closures: no images in {folder} within frames {lo}..{hi}")
    return recs


def _build_map(args, label, lo, hi) -> Path:
    """`geoloc map build` of the database frames lo..hi (by index range, so positions are the sequence's)."""
    from geoloc_ros.cli import main
    from geoloc_ros.datasets import load_dataset
    from geoloc_ros.model.nordland import frame_number

    recs = load_dataset(args.database, sequence_spacing=args.sequence_spacing)
    idx = [i for i, r in enumerate(recs) if lo <= frame_number(r.path) <= hi]
    if not idx:
        raise SystemExit(f"geoloc eval --loop-closures: no images in {args.database} within frames {lo}..{hi}")
    out = args.out / "maps" / "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)
    argv = ["map", "build", "--encoder", str(_encoder_file(args.encoder)), "--images", str(args.database),
            "--sequence-spacing", f"{args.sequence_spacing:g}", "--range", f"{idx[0]}:{idx[-1] + 1}",
            "--name", out.name, "--out", str(out), "--device", args.device, "--quiet", "--force"]
    if main(argv) not in (0, None):
        raise SystemExit(f"geoloc eval --loop-closures: geoloc {' '.join(argv)} failed")
    return out
