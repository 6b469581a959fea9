"""`geoloc train`: ProGEO two-stage training (stage 1 prompt learning, stage 2 CosFace + image-to-text).

    geoloc train --train-set DATA [--train-set DATA2 ...] --run-dir runs/x [--arch RN50] [--pretrained openai]
    geoloc train --nordland --run-dir runs/nordland            # the bundled encoder's recipe (docs/model.md)
    geoloc train --bag BAG [--bag BAG2 ...] --image-topic T (--odom-topic T | --fix-topic T | --poses CSV) --run-dir R

DATA is a VG-benchmark folder, a CSV of image,lat,lon[,alt,heading] or, with --sequence-spacing, a
coordinate-free sequence folder. BAG is a rosbag2 recording (geoloc_ros/model/recordings.py): its held-out part
is chosen by position and its revisits validate. Defaults are ProGEO's published hyperparameters
(Chain-Mao/ProGEO parser.py).
Re-running the same command resumes an interrupted run from its last finished epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from geoloc_ros.cli.recording_args import add_recording_arguments
from geoloc_ros.model.config import TrainConfig, config_fields, load_recipe

_GROUPS = {"model": "model", "hyperparameters": "hyperparameters (defaults: ProGEO/CosPlace)", "run": "run"}


def add_config_flags(p):
    """One flag per TrainConfig field, from the field's metadata (help text, argparse options). Every flag
    defaults to None: only what is given overrides the recipe and the TrainConfig defaults."""
    groups = {k: p.add_argument_group(title) for k, title in _GROUPS.items()}
    for f in config_fields():
        if not f.metadata.get("flag", False):
            continue
        options = dict(f.metadata["argparse"])
        default = f.default
        if options.pop("action", None) == "boolean_optional":
            options["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, bool):
            options["action"] = "store_true"
        elif "type" not in options:
            options["type"] = {"float": float, "int": int, "str": str}[f.type]
        groups[f.metadata["group"]].add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                                                 help=f"{f.metadata['help']} (default {default!r})", **options)


def add_parser(sub):
    p = sub.add_parser("train", help="train a ProGEO encoder (two stages, resumable)",
                       description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("data")
    g.add_argument("--train-set", action="append", default=[], help="training images (repeatable)")
    g.add_argument("--sequence-spacing", type=float, default=None, help="metres between frames of sequences")
    g.add_argument("--frames", default=None, metavar="LO:HI", help="keep frames numbered LO..HI (file names)")
    g.add_argument("--index-cache", default=None, metavar="DIR",
                   help="where the scans of --train-set are cached (default ~/.cache/geoloc/file_index; 'none': "
                        "scan every time)")
    g.add_argument("--val-database", default=None, help="validation database (selects the best epoch)")
    g.add_argument("--val-queries", default=None, help="validation queries")
    g.add_argument("--val-frames", default=None, metavar="LO:HI")
    g.add_argument("--val-frame-tolerance", type=int, default=None,
                   help="frame-tolerance protocol for validation (default: 25 m radius)")
    g.add_argument("--nordland", action="store_true",
                   help="the bundled recipe (geoloc_ros/model/recipes/nordland.yaml): nordland64 training stretch "
                        "(frames 10..19200), both seasons, RN-nano at 64x128; other flags override it")
    g.add_argument("--data", default=None, help="nordland64 folder for --nordland (default ../shared/data/nordland64)")
    b = p.add_argument_group("rosbag2 recordings (docs/model.md, \"Training from your own recordings\")")
    add_recording_arguments(b)
    b.add_argument("--val-fraction", type=float, default=0.2, help="share of the route held out (default 0.2)")
    b.add_argument("--val-gap", type=float, default=None, metavar="M",
                   help="metres between training and held-out places (default (N+1)*M: beyond a CosPlace group)")
    b.add_argument("--min-revisit-s", type=float, default=30.0,
                   help="a held-out frame validates as a query when its place was seen this long before, or in an "
                        "earlier bag (default 30)")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="fine-tune from an encoder checkpoint (encoder.safetensors, a map folder, a ProGEO .pth): "
                        "its arch, dim, input size and weights")
    p.add_argument("--run-dir", required=True, help="output folder: stage1.pt, stage2.pt, encoder.safetensors")
    p.add_argument("--output", default=None, help="also copy the final encoder.safetensors here (file or folder)")
    add_config_flags(p)
    a = p.add_argument_group("AddressCLIP stage (optional, off by default; docs/language.md)")
    a.add_argument("--address-csv", help="after stage 2: image CSV with address[,caption] columns; trains the "
                                         "descriptors with a CLIP text tower (image-address, image-caption "
                                         "contrast, geographic matching) and writes text_tower.safetensors")
    a.add_argument("--address-steps", type=int, default=50, help="optimisation steps of the stage (default 50)")
    a.add_argument("--address-lr", type=float, default=1e-4, help="its learning rate (default 1e-4)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args):
    import torch

    from geoloc_ros.datasets import read_image
    from geoloc_ros.mapping.storage import TRAINING_OUTPUTS, MapError, safe_output_dir
    from geoloc_ros.model.eta import EtaTrainer

    try:  # before any work: a run directory holding anything but a previous run's files is refused, untouched
        safe_output_dir(args.run_dir, TRAINING_OUTPUTS)
    except MapError as e:
        raise SystemExit(f"geoloc train: {e}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = None
    try:
        if args.init_from:
            from geoloc_ros.model.finetune import checkpoint_config

            fixed, start = checkpoint_config(args.init_from)
        cfg = _config(args, fixed if start is not None else {})
        if args.bag:
            records, images, val_fn, metadata = _recording_data(args, cfg)
        else:
            records, metadata = _training_records(args)
            # with DataLoader workers the images stay on disk (read by path per batch); else decoded once into memory
            images = None if cfg.data_workers else [read_image(r.path) for r in records]
            val_fn = _validation_fn(args)
        if start is not None:
            metadata["init_from"] = str(args.init_from)
        trainer = EtaTrainer(cfg, records, args.run_dir, images=images, val_fn=val_fn,
                             progress=not args.no_progress, metadata=metadata)
        if start is not None:
            from geoloc_ros.model.finetune import load_weights

            load_weights(trainer, start, args.init_from)
    except (MapError, ValueError) as e:  # bad recordings, checkpoints, too few places: a clear message, no trace
        raise SystemExit(f"geoloc train: {e}") from None
    if args.bag:
        print(f"held-out recall before training: {_recall_text(val_fn(trainer.encoder))}", flush=True)
    (Path(args.run_dir) / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    final = trainer.run()
    if args.bag:
        from geoloc_ros.model import load_encoder as _load

        print(f"held-out recall after training:  {_recall_text(val_fn(_load(final, device='cpu', half=False)))}")
    if args.address_csv:
        from geoloc_ros.language.address_training import train_from_csv

        final, history = train_from_csv(final, args.address_csv, args.address_steps, lr=args.address_lr,
                                        clip=trainer.clip, device=str(trainer.device))
        print(f"address stage: total loss {history[0]['total']:.4f} -> {history[-1]['total']:.4f}")
    print(f"encoder: {final}")
    if args.output:
        from geoloc_ros.model import load_encoder, save_encoder

        enc = load_encoder(final, device="cpu")
        print(f"copied to {save_encoder(enc, args.output)}")
    return 0


def _config(args, fixed=None) -> TrainConfig:
    """The recipe (--nordland) under the flags given; a small CPU architecture brings its own input size. `fixed`:
    what an --init-from checkpoint sets (its arch and dim must not be overridden; its input size may)."""
    values = load_recipe("nordland") if args.nordland else {}
    for k, v in (fixed or {}).items():
        given = getattr(args, k, None)
        if k in ("arch", "dim", "pool_grid") and given is not None and given != v:
            raise ValueError(f"--{k.replace('_', '-')} {given} contradicts the --init-from checkpoint ({v})")
        values[k] = v
    for f in config_fields():
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    if "image_size" not in values and values.get("arch") and values["arch"] not in ("RN50", "RN101", "ViT-B-16",
                                                                                        "ViT-B-32"):
        from geoloc_ros.model.archs import arch_config

        values["image_size"] = arch_config(values["arch"])["vision_cfg"]["image_size"]
    return TrainConfig(**values)


def _frames_filter(recs, spec):
    """The records whose frame number lies in "LO:HI" (all of them without a spec)."""
    from geoloc_ros.model.nordland import frame_number

    if not spec:
        return recs
    lo, hi = (int(v) for v in spec.split(":"))
    return [r for r in recs if lo <= frame_number(r.path) <= hi]


def _training_records(args):
    """(training records, the metadata that says where they came from)."""
    from geoloc_ros.datasets import load_dataset
    from geoloc_ros.model.loader import cached_dataset

    if args.nordland:
        from geoloc_ros.model import nordland as N

        records = N.split(args.data, frames=N.TRAIN_FRAMES)
        return records, {"data": {"dataset": "nordland64 (NRK / Suenderhauf et al. 2013, TimQuelch/seqslam copy)",
                                  "frames": list(N.TRAIN_FRAMES), "seasons": list(N.SEASONS),
                                  "positions": "synthetic: straight line, 10 m per frame"}}
    if not args.train_set:
        raise SystemExit("geoloc train: give --train-set (repeatable) or --nordland")
    records = []
    for ts in args.train_set:
        if args.index_cache == "none":
            scanned = load_dataset(ts, sequence_spacing=args.sequence_spacing)
        else:
            scanned, _ = cached_dataset(ts, args.index_cache, sequence_spacing=args.sequence_spacing)
        records += _frames_filter(scanned, args.frames)
    return records, {"data": {"train_sets": args.train_set, "frames": args.frames}}


def _validation_fn(args):
    """encoder -> Recall@N on --val-database/--val-queries (positives by frame tolerance or by radius), or None."""
    if not (args.val_database and args.val_queries):
        return None
    from geoloc_ros.datasets import load_dataset, read_image
    from geoloc_ros.model import evaluation as E
    from geoloc_ros.model.nordland import frame_number

    db = _frames_filter(load_dataset(args.val_database, sequence_spacing=args.sequence_spacing), args.val_frames)
    q = _frames_filter(load_dataset(args.val_queries, sequence_spacing=args.sequence_spacing), args.val_frames)
    dbi, qi = [read_image(r.path) for r in db], [read_image(r.path) for r in q]
    if args.val_frame_tolerance is not None:
        dbf = np.array([frame_number(r.path) for r in db])
        step = int(np.median(np.diff(np.sort(dbf)))) if len(dbf) > 1 else 1
        pos = E.positives_by_frame(dbf, [frame_number(r.path) for r in q], args.val_frame_tolerance * step)
    else:
        pos = E.positives_by_radius([(r.utm_east, r.utm_north) for r in db], [(r.utm_east, r.utm_north) for r in q])

    def val_fn(enc):
        return E.recall_at_n(enc.encode(dbi), enc.encode(qi), pos)

    return val_fn


def _recall_text(r: dict) -> str:
    return (f"R@1 {r['R@1']:.1f}  R@5 {r['R@5']:.1f}  R@10 {r['R@10']:.1f}  ({r['queries']} revisit queries, "
            f"{r['database']} database frames)")


def _recording_data(args, cfg):
    """(records, images, validation function, metadata) of --bag: the frames with positions, the training part,
    and the held-out part's revisits for validation (geoloc_ros.model.recordings)."""
    import logging

    from geoloc_ros.model import recordings as R
    from geoloc_ros.model.archs import hw

    if not args.image_topic:
        raise ValueError("--bag needs --image-topic")
    if not (args.odom_topic or args.fix_topic or args.poses):
        raise ValueError("--bag needs positions: --odom-topic, --fix-topic or --poses")
    if args.train_set or args.nordland:
        raise ValueError("--bag trains on recordings alone: leave out --train-set and --nordland")
    if cfg.data_workers:
        logging.getLogger("geoloc.train").info("--bag: frames are decoded into memory; --data-workers unused")
    rec = R.read_recordings(args.bag, args.image_topic, odom_topic=args.odom_topic, fix_topic=args.fix_topic,
                            poses=args.poses, max_gap_s=args.max_gap, size=hw(cfg.image_size),
                            progress=not args.no_progress)
    gap = args.val_gap if args.val_gap is not None else (cfg.N + 1) * cfg.M
    split = R.split_recording(rec, args.val_fraction, gap, args.min_revisit_s)
    print(f"frames: {len(rec.records)} with positions; dropped: {R.format_dropped(rec.dropped)}", flush=True)
    for line in rec.examples:
        print(f"  dropped: {line}")
    print("split by position ({:g} m gap): {}".format(gap, ", ".join(f"{k} {v}" for k, v in split.summary().items())),
          flush=True)
    records = [rec.records[i] for i in split.train]
    images = [rec.images[i] for i in split.train]
    metadata = {"data": {"bags": [str(b) for b in args.bag], "image_topic": args.image_topic,
                         "positions": {"odom_topic": args.odom_topic, "fix_topic": args.fix_topic,
                                       "poses": args.poses, "max_gap_s": args.max_gap},
                         "dropped": rec.dropped, "split": {**split.summary(), "val_fraction": args.val_fraction,
                                                           "gap_m": gap, "min_revisit_s": args.min_revisit_s}}}
    return records, images, R.validation(rec, split), metadata
