"""`geoloc calibrate`: fit the loop-closure confidence (localization/confidence.py's logistic) for one encoder.

A map of the database images of a stretch is built with `geoloc map build`, the query images of the same stretch
(another pass: other season, other day) are replayed through the Localizer (what vpr_node runs, without DDS), and
every closure is labelled right or wrong from the positions (within --tolerance metres: self-supervised, no
hand labels). A logistic (weights >= 0) is fitted per consistency mode and its bias shifted so that the lowest
threshold keeping --precision on this data becomes --threshold (the node's loop_closure_min_confidence default):
the default threshold is then the calibrated operating point. Writes the coefficients beside the checkpoint
(`encoder.calibration.json`) with the encoder's fingerprint, the data, the date and the operating point, which
the node then uses for that encoder; prints and plots the precision-recall curve.

From a rosbag2 recording (`--bag`, read as `geoloc train --bag` reads it: geoloc_ros/model/recordings.py), the
revisits are told from the positions: a frame whose place (within 25 m) was seen in an earlier bag, or at least
--min-revisit-s earlier in the same one, is a query; the other frames are the map.

    geoloc calibrate --encoder maps/nordland_demo/encoder.safetensors \\
        --database ../shared/data/nordland64/summer --queries ../shared/data/nordland64/winter \\
        --sequence-spacing 10 --frames 19210:21600 --work runs/calibrate
    geoloc calibrate --encoder run/encoder.safetensors --bag lap1.mcap --bag lap2.mcap \\
        --image-topic /camera/image_raw --odom-topic /odom --work runs/calibrate
"""

from __future__ import annotations

from argparse import Namespace
from dataclasses import replace
from pathlib import Path

from geoloc_ros.cli.recording_args import add_recording_arguments


def add_parser(sub):
    p = sub.add_parser("calibrate", help="fit the loop-closure confidence for an encoder from images with positions",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", required=True, help="checkpoint file or directory holding encoder.safetensors")
    f = p.add_argument_group("image folders (two drives over the same places)")
    f.add_argument("--database", help="images of the first drive (a map is built of them): VG folder, "
                                      "CSV image,lat,lon or sequence folder (with --sequence-spacing)")
    f.add_argument("--queries", help="images of the second drive over the same places, same layouts")
    f.add_argument("--sequence-spacing", type=float, default=None,
                   help="metres between frames of coordinate-free sequences (positions are synthetic)")
    f.add_argument("--frames", metavar="LO:HI",
                   help="the stretch: frames whose file-name number lies in LO..HI (inclusive)")
    b = p.add_argument_group("rosbag2 recordings (instead of image folders; read as `geoloc train --bag` reads them)")
    add_recording_arguments(b)
    b.add_argument("--min-revisit-s", type=float, default=30.0,
                   help="a frame is a revisit (a query) when its place was seen this long before, or in an earlier "
                        "bag (default 30)")
    p.add_argument("--precision", type=float, default=0.99, help="precision the operating point keeps (0.99)")
    p.add_argument("--threshold", type=float, default=None,
                   help="the confidence the operating point is placed at (default: loop_closure_min_confidence's "
                        "default)")
    p.add_argument("--tolerance", type=float, default=25.0, help="a closure is right within this (m, default 25)")
    p.add_argument("--out", type=Path, default=None,
                   help="calibration file (default: encoder.calibration.json beside the checkpoint)")
    p.add_argument("--work", type=Path, default=Path("runs/calibrate"), help="folder for the map, PNG and JSON")
    p.add_argument("--device", default="cpu", help="inference device (default cpu)")
    p.set_defaults(func=run)


def replay_modes(encoder, database, queries, spacing, lo, hi, work, device, label="calibration"):
    """closure_eval rows per consistency mode for the stretch lo..hi: (settings, {mode: rows})."""
    from geoloc_ros.cli import eval_closures
    from geoloc_ros.localization import closure_eval as E
    from geoloc_ros.node import params

    args = Namespace(encoder=str(encoder), database=str(database), queries=str(queries), sequence_spacing=spacing,
                     out=Path(work), device=device, param=[])
    base = eval_closures._settings(args)
    map_dir = eval_closures._build_map(args, label, lo, hi)
    records = eval_closures._records(queries, spacing, lo, hi)
    rows = {mode: E.replay(params.localizer_config(replace(base, map_path=[str(map_dir)], consistency_mode=mode)),
                           records, blank_threshold=base.blank_threshold)
            for mode in ("sequence", "consecutive")}
    return base, rows


def rescored(rows, coefficients, mode):
    """Rows with every closure's confidence recomputed under `coefficients` (the evidence is kept in the rows)."""
    from geoloc_ros.localization.confidence import Evidence, confidence

    out = []
    for r in rows:
        c = r["closure"]
        if c is not None:
            c = {**c, "confidence": confidence(Evidence(**c["evidence"]), mode, coefficients)}
        out.append({**r, "closure": c})
    return out


def replay_recording(encoder_file, rec, min_revisit_s, work, device):
    """closure_eval rows per consistency mode for a Recording (geoloc_ros.model.recordings): a map of its first
    visits, its revisits replayed as queries. (settings, {mode: rows}, what was used)."""
    from geoloc_ros.cli import eval_closures
    from geoloc_ros.localization import closure_eval as E
    from geoloc_ros.mapping.builders import encode_into, new_map_for
    from geoloc_ros.mapping.keyframe import keyframe_from_geoimage
    from geoloc_ros.model import load_encoder
    from geoloc_ros.model import recordings as R
    from geoloc_ros.node import params

    database, queries = R.revisit_queries(rec.xy(), rec.bag_index, rec.stamps, min_revisit_s)
    if not len(queries):
        raise SystemExit(f"geoloc calibrate: no frame of the recording revisits a place (within 25 m of a frame "
                         f"{min_revisit_s:g} s earlier or in an earlier bag): calibration needs revisits. Record the "
                         f"route twice, or give several bags of it")

    def keyframe(i):  # odometry positions have no geotag: they are the map's own x/y
        k = keyframe_from_geoimage(rec.records[i], source="calibration", stamp_ns=int(rec.stamps[i]))
        return k if k.has_geotag else k.replace(x=rec.records[i].utm_east, y=rec.records[i].utm_north, z=0.0)

    encoder = load_encoder(encoder_file, device=device)
    db = new_map_for(encoder, "calibration")
    encode_into(db, encoder, ((keyframe(i), rec.images[i]) for i in database), total=len(database),
                desc="encoding the first visits")
    map_dir = db.save(Path(work) / "maps" / "calibration")
    args = Namespace(encoder=str(encoder_file), device=device, param=[])
    base = eval_closures._settings(args)
    records, images = [rec.records[i] for i in queries], [rec.images[i] for i in queries]
    rows = {mode: E.replay(params.localizer_config(replace(base, map_path=[str(map_dir)], consistency_mode=mode)),
                           records, blank_threshold=base.blank_threshold, images=images)
            for mode in ("sequence", "consecutive")}
    return base, rows, {"frames": len(rec.records), "map_frames": len(database), "revisits": len(queries),
                        "min_revisit_s": min_revisit_s, "dropped": rec.dropped}


def _bag_rows(args, encoder_file):
    from geoloc_ros.mapping.storage import MapError
    from geoloc_ros.model import recordings as R

    if not args.image_topic or not (args.odom_topic or args.fix_topic or args.poses):
        raise SystemExit("geoloc calibrate: --bag needs --image-topic and positions: --odom-topic, --fix-topic or "
                         "--poses")
    if args.database or args.queries or args.frames:
        raise SystemExit("geoloc calibrate: give either --bag or --database/--queries/--frames, not both")
    try:
        rec = R.read_recordings(args.bag, args.image_topic, odom_topic=args.odom_topic, fix_topic=args.fix_topic,
                                poses=args.poses, max_gap_s=args.max_gap)
    except (MapError, ValueError) as e:
        raise SystemExit(f"geoloc calibrate: {e}") from None
    base, rows, used = replay_recording(encoder_file, rec, args.min_revisit_s, args.work, args.device)
    print(f"recording: {used['frames']} frames with positions (dropped: {R.format_dropped(rec.dropped)}); "
          f"map of the first visits {used['map_frames']}, revisits replayed {used['revisits']}", flush=True)
    data = {"bags": [str(b) for b in args.bag], "image_topic": args.image_topic,
            "positions": {"odom_topic": args.odom_topic, "fix_topic": args.fix_topic, "poses": args.poses,
                          "max_gap_s": args.max_gap}, **used}
    return base, rows, data, f"{len(args.bag)} recording(s)"


def _folder_rows(args, encoder_file):
    if not (args.database and args.queries and args.frames):
        raise SystemExit("geoloc calibrate: give --database, --queries and --frames (image folders), or --bag")
    try:
        lo, hi = (int(v) for v in args.frames.split(":"))
    except ValueError:
        raise SystemExit(f"geoloc calibrate: --frames {args.frames!r}: expected LO:HI") from None
    base, rows = replay_modes(encoder_file, args.database, args.queries, args.sequence_spacing, lo, hi, args.work,
                              args.device)
    data = {"database": str(args.database), "queries": str(args.queries), "frames": [lo, hi],
            "sequence_spacing": args.sequence_spacing}
    return base, rows, data, f"frames {lo}..{hi}"


def run(args):
    from geoloc_ros.localization import calibration as C
    from geoloc_ros.localization import closure_eval as E
    from geoloc_ros.model import load_encoder

    encoder_file = Path(args.encoder) / "encoder.safetensors" if Path(args.encoder).is_dir() else Path(args.encoder)
    fingerprint = load_encoder(encoder_file, device="cpu").fingerprint
    base, rows, data, what = (_bag_rows if args.bag else _folder_rows)(args, encoder_file)
    threshold = base.loop_closure_min_confidence if args.threshold is None else args.threshold
    coefficients, fitted, summaries = {}, {}, {}
    for mode, mode_rows in rows.items():
        closures = [r["closure"] for r in mode_rows if r["closure"] is not None]
        try:
            theta, safe = C.fit_mode(closures, args.tolerance, args.precision)
        except ValueError as e:
            raise SystemExit(f"geoloc calibrate: {mode} mode: {e}") from None
        coefficients[mode] = C.aligned(theta, safe, threshold)
        fitted[mode] = safe
        if safe >= 1.0:
            print(f"WARNING: {mode} mode: no threshold keeps precision {args.precision:g} on this data (the best "
                  f"closures are already wrong): calibrated, the default threshold publishes nothing. The encoder "
                  f"does not tell these places apart; train it on them (docs/robot.md) or use another.")
    for mode, mode_rows in rows.items():
        s = E.summarise(rescored(mode_rows, coefficients, mode), threshold, args.tolerance)
        summaries[f"{mode} (calibrated)"] = s
        op = s["operating_point"]
        print(f"{mode}: {s['curve']['closures']} closures over {s['curve']['frames']} frames, "
              f"{s['curve']['correct']} right; at threshold {threshold:g}: precision {op['precision']:.3f}, "
              f"recall {op['recall']:.3f}; coefficients {coefficients[mode]}")
        print("  precision-recall: " + ", ".join(f"{t:.3f}:{p:.3f}/{r:.3f}" for t, p, r in list(
            zip(s["curve"]["thresholds"], s["curve"]["precision"], s["curve"]["recall"]))[::max(1, len(
                s["curve"]["thresholds"]) // 12)]) + "  (threshold:precision/recall)")
    out = args.out or C.path_for(encoder_file)
    point = {"threshold": threshold, "precision_target": args.precision, "tolerance_m": args.tolerance,
             "fitted_safe_threshold": fitted,
             "at_threshold": {m: summaries[f"{m} (calibrated)"]["operating_point"] for m in rows}}
    data["closures"] = {m: sum(r["closure"] is not None for r in v) for m, v in rows.items()}
    C.write(out, fingerprint, coefficients, point, data, getattr(args, "command_line", ""))
    E.plot(summaries, args.work / "calibration.png",
           f"calibration of {fingerprint[:12]} on {what}; dots: threshold {threshold:g}")
    E.write_json(args.work / "calibration.json", {"coefficients": coefficients, "operating_point": point,
                                                  "summaries": summaries})
    print(f"wrote {out} (encoder {fingerprint[:12]}), {args.work / 'calibration.png'} and "
          f"{args.work / 'calibration.json'}")
    return 0
