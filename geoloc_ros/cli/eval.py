"""`geoloc eval`: Recall@N of an encoder (and the raw-pixel baselines) on a database / queries pair.

Protocols: positives within `--radius` metres (default 25 m, the standard VPR protocol) and, for sequences,
within `--frame-tolerance` frames (frame numbers read from the file names). `--protocol ours` (default) or `vg`
(the VG benchmark's exact rules; docs/model.md, "Evaluation").

    geoloc eval --encoder maps/nordland_demo --database DB --queries Q [--sequence-spacing 10] \\
        [--frames 19210:24000] [--frame-tolerance 2] [--baselines] [--json out.json]
    geoloc eval --encoder progeo_rn50.safetensors --dataset pitts30k/images/test --protocol vg --resize native
    geoloc eval --nordland-report [--encoder maps/nordland_demo] [--json out.json]
    geoloc eval --loop-closures --encoder ENC --database DB --queries Q --sequence-spacing 10 \\
        --split tuning=19210:21600 --split held-out=21610:24000   (geoloc_ros/cli/eval_closures.py)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from geoloc_ros.cli import eval_closures


def add_parser(sub):
    p = sub.add_parser("eval", help="Recall@N of an encoder on a database/queries pair (25 m radius and frame "
                                    "tolerance protocols)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default=None, help="checkpoint file or directory holding encoder.safetensors")
    p.add_argument("--database", help="database images: VG folder, CSV image,lat,lon[,alt,heading] or sequence "
                                      "folder (with --sequence-spacing)")
    p.add_argument("--queries", help="query images, same layouts")
    p.add_argument("--sequence-spacing", type=float, default=None,
                   help="metres between frames of coordinate-free sequences (positions are synthetic)")
    p.add_argument("--frames", default=None, metavar="LO:HI",
                   help="keep only frames whose file-name number lies in LO..HI (inclusive)")
    p.add_argument("--dataset", default=None, metavar="DIR",
                   help="a VG-benchmark dataset folder: DIR/database and DIR/queries (SF-XL, Pitts30k, Tokyo 24/7, "
                        "MSLS after the VG tooling); or give --database and --queries")
    p.add_argument("--protocol", choices=("ours", "vg"), default="ours",
                   help="ours (default): queries without a positive left out, positives < radius, inner product on "
                        "L2-normalised descriptors; vg: the VG benchmark's (ProGEO's test.py): every query counts, "
                        "positives <= radius, L2 search on the network's raw descriptors")
    p.add_argument("--resize", choices=("stretch", "native"), default="stretch",
                   help="stretch (default): every image to the encoder's input size; native: each image at its own "
                        "resolution, as the VG benchmark feeds ResNets (ViTs cannot)")
    p.add_argument("--radius", type=float, default=25.0, help="positive radius in metres (default 25)")
    p.add_argument("--frame-tolerance", type=int, default=None,
                   help="also report the frame-tolerance protocol: positives within K frames")
    p.add_argument("--ns", type=int, nargs="+", default=[1, 5, 10, 20], help="N of Recall@N")
    p.add_argument("--baselines", action="store_true",
                   help="also evaluate normalised raw pixels (whole image and SeqSLAM 8x8 patch normalisation)")
    p.add_argument("--nordland-report", action="store_true",
                   help="the bundled-encoder report: nordland64 validation stretch, winter queries vs summer "
                        "database, +-2 frames: raw pixels, untrained and trained encoder")
    p.add_argument("--data", default=None, help="nordland64 folder for --nordland-report (default "
                                                 "../shared/data/nordland64)")
    p.add_argument("--database-descriptions", default=None, metavar="FILE.csv",
                   help="scene descriptions of the database images (`geoloc describe`), for an encoder with a "
                        "feature combiner: it is evaluated with them and on the image-only path")
    p.add_argument("--query-descriptions", default=None, metavar="FILE.csv",
                   help="scene descriptions of the query images (`geoloc describe`)")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write the results as JSON to this file")
    eval_closures.add_arguments(p)
    p.set_defaults(func=run)


def run(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.loop_closures:
        return eval_closures.run(args)
    if args.nordland_report:
        from geoloc_ros.model.nordland_report import report

        result = report(encoder_path=args.encoder or "maps/nordland_demo", data=args.data, device=args.device)
        print(result["table"])
        if args.json:
            _write_json(args.json, result)
        return 0
    if args.dataset:
        from pathlib import Path

        args.database = args.database or str(Path(args.dataset) / "database")
        args.queries = args.queries or str(Path(args.dataset) / "queries")
    if not (args.database and args.queries and (args.encoder or args.baselines)):
        raise SystemExit("geoloc eval: give --database, --queries and --encoder (or --baselines), "
                         "or --nordland-report")

    from geoloc_ros.datasets import read_image
    from geoloc_ros.model import evaluation as E
    from geoloc_ros.model.nordland import frame_number

    db, q = _records(args, args.database), _records(args, args.queries)
    db_img = [read_image(r.path) for r in db]
    q_img = [read_image(r.path) for r in q]
    vg = args.protocol == "vg"
    # JSON keys: "25 m" as before for ours (strictly closer), "<= 25 m" for the VG protocol
    protocols = {f"{'<= ' if vg else ''}{args.radius:g} m": E.positives_by_radius(
        [(r.utm_east, r.utm_north) for r in db], [(r.utm_east, r.utm_north) for r in q], args.radius, inclusive=vg)}
    if args.frame_tolerance is not None:
        dbf = np.array([frame_number(r.path) for r in db])
        qf = np.array([frame_number(r.path) for r in q])
        step = int(np.median(np.diff(np.sort(dbf)))) if len(dbf) > 1 else 1
        protocols[f"+-{args.frame_tolerance} frames"] = E.positives_by_frame(dbf, qf, args.frame_tolerance * step)

    methods = _methods(args, db_img, q_img, vg, [r.label for r in db], [r.label for r in q])

    results = {"database": args.database, "queries": args.queries, "database_size": len(db), "queries_size": len(q),
               "protocol": args.protocol, "resize": args.resize,
               "synthetic_positions": bool(any(r.synthetic for r in db + q)), "protocols": {}}
    recall = E.vg_recall_at_n if vg else E.recall_at_n
    for pname, pos in protocols.items():
        rows = {m: recall(d, qd, pos, args.ns) for m, (d, qd) in methods.items()}
        results["protocols"][pname] = rows
        counted = len(q) if vg else len(q) - int(sum(len(p) == 0 for p in pos))
        print(f"\nRecall@N ({args.protocol} protocol), positives within {pname}  ({counted} of {len(q)} queries "
              f"counted, {len(db)} database images" + (", synthetic positions" if results["synthetic_positions"]
                                                       else "") + ")")
        print(E.format_table(rows, args.ns))
    if args.json:
        _write_json(args.json, results)
    return 0


def _records(args, path):
    """The dataset at `path`, within --frames; refuses an empty one."""
    from geoloc_ros.datasets import load_dataset
    from geoloc_ros.model.nordland import frame_number

    recs = load_dataset(path, sequence_spacing=args.sequence_spacing)
    if args.frames:
        lo, hi = (int(v) for v in args.frames.split(":"))
        recs = [r for r in recs if lo <= frame_number(r.path) <= hi]
    if not recs:
        raise SystemExit(f"geoloc eval: no images in {path}" + (f" within frames {args.frames}" if args.frames
                                                                else ""))
    return recs


def _methods(args, db_img, q_img, vg, db_labels, q_labels) -> dict:
    """method name -> (database descriptors, query descriptors): the baselines and the encoder asked for (a fused
    encoder with the descriptions and on its image-only path)."""
    from geoloc_ros.model import evaluation as E
    from geoloc_ros.model.fused_encoder import FusedEncoder

    methods = {}
    if args.baselines:
        methods["raw pixels (normalised)"] = (E.raw_pixel_descriptors(db_img), E.raw_pixel_descriptors(q_img))
        methods["raw pixels (SeqSLAM patch-norm)"] = (E.raw_pixel_descriptors(db_img, patch=8),
                                                      E.raw_pixel_descriptors(q_img, patch=8))
    if args.encoder:
        from geoloc_ros.model import load_encoder

        enc = load_encoder(args.encoder, device=args.device)
        if isinstance(enc, FusedEncoder):
            return {**methods, **_fused_methods(args, enc, db_img, q_img, vg, db_labels, q_labels)}
        options = {"batch_size": args.batch_size, "raw": vg, "native_size": args.resize == "native"}
        try:
            methods[f"encoder {enc.arch.get('name')} ({enc.fingerprint[:8]})"] = (
                enc.encode(db_img, **options), enc.encode(q_img, **options))
        except ValueError as e:
            raise SystemExit(f"geoloc eval: {e}")
    return methods


def _fused_methods(args, enc, db_img, q_img, vg, db_labels, q_labels) -> dict:
    from geoloc_ros.language.describe import read_descriptions

    if vg or args.resize == "native":
        raise SystemExit("geoloc eval: an encoder with a feature combiner runs with --protocol ours --resize stretch")
    db_base = enc.base.encode(db_img, batch_size=args.batch_size)
    q_base = enc.base.encode(q_img, batch_size=args.batch_size)
    name = f"encoder {enc.arch.get('name')} + combiner ({enc.fingerprint[:8]})"
    methods = {f"{name}, image only": (enc.fuse(db_base), enc.fuse(q_base))}
    def texts(path, labels):
        described = read_descriptions(path)
        return [described[label].text if label in described else "" for label in labels]

    if args.database_descriptions:
        db_fused = enc.fuse(db_base, texts(args.database_descriptions, db_labels))
        methods[f"{name}, described map, image-only queries"] = (db_fused, methods[f"{name}, image only"][1])
        if args.query_descriptions:
            methods[f"{name}, with descriptions"] = (db_fused, enc.fuse(q_base, texts(args.query_descriptions,
                                                                                    q_labels)))
    return methods


def _write_json(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    print(f"wrote {path}")
