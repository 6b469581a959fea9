"""`geoloc map`: build, extend, merge, inspect and query map databases (see docs/maps.md).

    geoloc map build --encoder PATH --images DIR|CSV [--sequence-spacing M] --out MAP
    geoloc map build --encoder PATH --bag BAG --image-topic T [--fix-topic T] [--odom-topic T] --out MAP
    geoloc map build --encoder PATH --images DIR --poses CSV [--depth DIR] | --sfm | --colmap MODEL --out MAP
    geoloc map add MAP --images ...|--bag ...          append keyframes (encoder: the one the map carries)
    geoloc map merge --out MAP MAP1 MAP2 ...
    geoloc map info MAP
    geoloc map query MAP IMAGE... [-k 5]    |    geoloc map query MAP --text "words" [-k 5]
    geoloc map localize MAP IMAGE... [--camera FX,FY,CX,CY[,K1,K2,P1,P2]] [--json]   6-DoF pose in a 3D map
    geoloc map bag --images DIR --sequence-spacing M --out BAG   write an image sequence as a rosbag2 replay
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
import sys

import numpy as np

from geoloc_ros.cli import map_features, map_localize, map_ray, map_structure, map_text


def add_parser(sub):
    p = sub.add_parser("map", help="build, extend, merge, inspect and query map databases",
                       description="Map databases: geotagged keyframes, their descriptors and a FAISS index, in one "
                                   "directory (docs/maps.md).")
    msub = p.add_subparsers(dest="map_command", required=True, metavar="ACTION")

    b = msub.add_parser("build", help="build a map from images or a rosbag2 recording")
    b.add_argument("--encoder", required=True, help="encoder checkpoint (file, or a directory holding one)")
    _source_args(b)
    b.add_argument("--out", required=True, help="map directory to write (replaced atomically with --force)")
    b.add_argument("--name", help="map name (default: the output directory's name)")
    b.add_argument("--index", default="Flat", help="FAISS index factory string (default Flat; e.g. HNSW32, "
                                                   "IVF1024,PQ64 for large maps)")
    b.add_argument("--search-params", help="FAISS search parameters, e.g. nprobe=32 or efSearch=128")
    b.add_argument("--rerank", type=int, default=0, help="re-score this many index candidates exactly with the "
                                                        "stored descriptors (for PQ indexes; default 0 = off)")
    b.add_argument("--no-encoder-copy", action="store_true", help="do not carry the encoder checkpoint in the map")
    b.add_argument("--force", action="store_true", help="replace an existing map at --out (only a map: any other "
                                                        "non-empty directory is refused)")
    map_features.add_args(b)
    map_structure.add_args(b)
    map_text.add_args(b)
    _encode_args(b)
    map_ray.add_args(b)
    b.set_defaults(func=run_build)

    a = msub.add_parser("add", help="append keyframes to a map (saved atomically in place, or to --out)")
    a.add_argument("map")
    a.add_argument("--encoder", help="encoder checkpoint (default: the one the map carries)")
    _source_args(a)
    map_text.add_args(a)
    a.add_argument("--out", help="write the result here instead of over MAP (new, empty, or a map)")
    _encode_args(a)
    a.set_defaults(func=run_add)

    m = msub.add_parser("merge", help="merge maps built with the same encoder into a new map")
    m.add_argument("maps", nargs="+")
    m.add_argument("--out", required=True)
    m.add_argument("--name")
    m.add_argument("--index", help="index factory of the result (default: the first map's)")
    m.add_argument("--parts", action="store_true",
                   help="the maps are parts filled from one trained IVF index: merge their codes as they are (no "
                        "re-encoding) into a map whose inverted lists and descriptors stay on disk "
                        "(docs/large_maps.md)")
    m.add_argument("--quantiser-from", metavar="MAP",
                   help="with --parts: the IVF map whose trained quantiser codes every part that does not share "
                        "it (from its stored descriptors; the encoder never runs again)")
    m.add_argument("--force", action="store_true", help="replace an existing map at --out (only a map: any other "
                                                        "non-empty directory is refused)")
    m.set_defaults(func=run_merge)

    i = msub.add_parser("info", help="verify a map and describe it")
    i.add_argument("map")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=run_info)

    q = msub.add_parser("query", help="look images (or, with --text, words) up in a map")
    q.add_argument("map")
    q.add_argument("images", nargs="*")
    q.add_argument("--text", help="find places from words: the encoder's CLIP text tower when it carries one, "
                                  "else a full-text match on stored address/caption text (docs/language.md)")
    q.add_argument("-k", type=int, default=5, help="candidates per image (default 5)")
    q.add_argument("--encoder", help="encoder checkpoint (default: the one the map carries)")
    q.add_argument("--near", help="X,Y,RADIUS: only keyframes within RADIUS metres of (X, Y) in the map frame")
    q.add_argument("--device", default="auto")
    q.set_defaults(func=run_query)

    map_localize.add_parser(msub)

    g = msub.add_parser("bag", help="write an image sequence (with its positions) as a rosbag2 recording")
    g.add_argument("--images", required=True, help="image folder or CSV")
    g.add_argument("--sequence-spacing", type=float, help="metres between frames of a coordinate-free sequence")
    g.add_argument("--origin", default="0,0", help="LAT,LON of the first frame of a sequence (default 0,0)")
    g.add_argument("--heading", type=float, default=0.0, help="direction of a sequence, degrees from north")
    g.add_argument("--range", help="START:STOP slice of the images in file-name order (positions kept)")
    g.add_argument("--rate", type=float, default=10.0, help="camera rate in Hz for the stamps (default 10)")
    g.add_argument("--start-sec", type=int, default=1_700_000_000, help="stamp of the first frame (s, default "
                                                                           "1700000000)")
    g.add_argument("--image-topic", default="/camera/image_raw")
    g.add_argument("--fix-topic", default="/gnss/fix")
    g.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    g.add_argument("--out", required=True)
    g.set_defaults(func=run_bag)


class _Input(argparse.Action):
    """--images / --bag: the last value as usual, and every one, in order, in `inputs` as (option, value)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.inputs = [*(getattr(namespace, "inputs", None) or []), (self.dest, values)]


def _source_args(p):
    s = p.add_argument_group("images (a VG-named folder, a CSV of image,lat,lon[,alt,heading], or a sequence)")
    s.add_argument("--images", action=_Input, help="image folder or CSV file (may be repeated, and mixed with --bag)")
    s.add_argument("--sequence-spacing", type=float, metavar="METRES",
                   help="coordinate-free sequence: frames in file-name order on a straight line, this far apart "
                        "(positions marked synthetic)")
    s.add_argument("--origin", default="0,0", help="LAT,LON of the first frame of a sequence (default 0,0)")
    s.add_argument("--heading", type=float, default=0.0, help="direction of a sequence, degrees from north")
    s.add_argument("--range", help="START:STOP slice of the images in file-name order (positions are those of the "
                                   "whole sequence)")
    r = p.add_argument_group("rosbag2 recording (sqlite3 or MCAP)")
    r.add_argument("--bag", action=_Input, help="rosbag2 directory or file (may be repeated)")
    r.add_argument("--image-topic", help="sensor_msgs/msg/Image or CompressedImage topic")
    r.add_argument("--fix-topic", help="sensor_msgs/msg/NavSatFix topic (geotags)")
    r.add_argument("--odom-topic", help="nav_msgs/msg/Odometry topic (map-frame poses when there is no fix)")
    r.add_argument("--every-metres", type=float, help="a keyframe each time this distance has been travelled")
    r.add_argument("--every-seconds", type=float, help="a keyframe each time this much time has passed")


def _encode_args(p):
    p.add_argument("--strict", action="store_true", help="write nothing and exit 1 when any image or frame is "
                                                         "unreadable (default: skip them, count and list them)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto (GPU when present), cuda, cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _fail(message: str):
    raise SystemExit(f"geoloc map: {message}")


def _load_images(args, unreadable=None):
    from geoloc_ros.datasets import load_dataset

    origin = tuple(float(v) for v in args.origin.split(","))
    options = {"origin": origin, "heading": args.heading} if args.sequence_spacing is not None else {}
    try:
        images = load_dataset(args.images, sequence_spacing=args.sequence_spacing, unreadable=unreadable, **options)
    except (ValueError, OSError) as e:  # the dataset readers name the file and what is wrong
        _fail(str(e))
    if args.range:
        start, _, stop = args.range.partition(":")
        images = images[slice(int(start) if start else None, int(stop) if stop else None)]
    if not images:
        _fail(f"{args.images}: no images selected")
    return images


def _inputs(args) -> list[argparse.Namespace]:
    """One namespace per --images / --bag input, in command-line order."""
    inputs = getattr(args, "inputs", None) or []
    if not inputs:
        _fail("give --images or --bag (each may be repeated)")
    return [argparse.Namespace(**{**vars(args), "images": value if option == "images" else None,
                                  "bag": value if option == "bag" else None}) for option, value in inputs]


def _plan(db, args, unreadable) -> list[tuple[argparse.Namespace, list, dict]]:
    """Per input: its namespace, its (keyframe, frame source) pairs (labels unique across inputs, see
    builders.unique_labels) and its builder options. Decodes no image."""
    from geoloc_ros.mapping.bag import bag_keyframes
    from geoloc_ros.mapping.builders import dataset_items, unique_labels

    plans, names = [], []
    for a in _inputs(args):
        opts = {**map_features.prepare(db, a), **map_text.prepare(a)}
        if a.images:
            items = dataset_items(_load_images(a, unreadable), source=Path(a.images).name)
        else:
            if not a.image_topic:
                _fail("--bag needs --image-topic")
            items = bag_keyframes(a.bag, a.image_topic, a.fix_topic, a.odom_topic, a.every_metres,
                                  a.every_seconds).references()
        plans.append((a, items, opts))
        names.append(Path(a.images or a.bag).name)
    labelled = unique_labels([items for _, items, _ in plans], names)
    return [(a, items, opts) for (a, _, opts), items in zip(plans, labelled)]


def _add_source(db, encoder, args):
    """Encode the images and bags of `args` into `db`; returns the ids added per input. Unreadable files or frames
    are skipped, counted and listed on stderr (--strict: nothing is written and the command exits 1)."""
    from geoloc_ros.mapping.builders import encode_into

    unreadable = []
    plans = _plan(db, args, unreadable)
    if getattr(args, "engine", "local") == "ray":
        ids = map_ray.encode(db, args, plans, unreadable)
    else:
        ids = [encode_into(db, encoder, items, total=len(items), desc=f"encoding {Path(a.images or a.bag).name}",
                           batch_size=args.batch_size, progress=not args.quiet, unreadable=unreadable, **opts)
               for a, items, opts in plans]
    if unreadable:
        print(f"geoloc map: skipped {len(unreadable)} unreadable image(s):", file=sys.stderr)
        for reason in unreadable[:20]:
            print(f"  {reason}", file=sys.stderr)
        if len(unreadable) > 20:
            print(f"  ... and {len(unreadable) - 20} more", file=sys.stderr)
        if args.strict:
            _fail(f"--strict: {len(unreadable)} unreadable image(s); nothing written")
    return ids


def _check_target(out) -> Path:
    """Refuse, before any work, an output that is not absent, empty or a map of ours (it is never replaced)."""
    from geoloc_ros.mapping import MapError
    from geoloc_ros.mapping.storage import refuse_foreign_target

    try:
        return refuse_foreign_target(out)
    except MapError as e:
        _fail(str(e))


def _load_encoder(path, device):
    from geoloc_ros.model import CheckpointError, load_encoder

    try:
        return load_encoder(path, device=device)
    except CheckpointError as e:
        _fail(str(e))


def _load_map(path, encoder=None):
    from geoloc_ros.mapping import MapDatabase, MapError

    try:
        return MapDatabase.load(path, encoder=encoder)
    except MapError as e:
        _fail(str(e))


def _load_map_and_encoder(args):
    """The map at args.map and the encoder to use with it: --encoder, else the one the map carries. A given
    --encoder that does not fit the map is refused."""
    from geoloc_ros.mapping import MapError
    from geoloc_ros.mapping.database import check_encoder

    db = _load_map(args.map)
    checkpoint = args.encoder or db.encoder_path
    if checkpoint is None:
        _fail(f"{args.map} carries no encoder; give --encoder")
    encoder = _load_encoder(checkpoint, args.device)
    try:
        check_encoder(args.map, db.dim, db.fingerprint, encoder)
    except MapError as e:
        _fail(str(e))
    return db, encoder


def run_build(args):
    from geoloc_ros.mapping import MapError
    from geoloc_ros.mapping.builders import new_map_for

    out = Path(args.out)
    if out.exists() and not args.force:
        _fail(f"{out} exists; pass --force to replace it (atomically: it stays intact until the new map is complete)")
    out = _check_target(out)
    map_ray.require(args)
    encoder = _load_encoder(args.encoder, args.device)
    try:
        db = new_map_for(encoder, args.name or out.name, args.index, args.search_params, args.rerank)
        if not args.no_encoder_copy:
            db.attach_encoder(args.encoder)
        if map_structure.wanted(args):
            if len(getattr(args, "inputs", None) or []) > 1 or args.engine == "ray":
                _fail("--poses, --sfm and --colmap take one --images input and the local engine")
            ids = map_structure.add(db, encoder, args)
        else:
            per_input = _add_source(db, encoder, args)
            for a, input_ids in zip(_inputs(args), per_input):
                map_structure.add_bag_depth(db, input_ids, a)
            ids = [i for input_ids in per_input for i in input_ids]
        if not ids:
            _fail("no keyframes selected: nothing written (with --bag: are the images inside the span of the "
                  "position topic?)")
        db.save(out)
        map_ray.remove_work_dir(args)
    except MapError as e:
        _fail(str(e))
    print(f"{out}: {len(ids)} keyframes, dim {db.dim}, index {db.index_factory}, encoder {db.fingerprint[:12]}")


def run_add(args):
    from geoloc_ros.mapping import MapError

    if args.out:
        _check_target(args.out)
    db, encoder = _load_map_and_encoder(args)
    before = len(db)
    if args.out and Path(args.out).resolve() != Path(args.map).resolve():
        from geoloc_ros.mapping.schema import new_map_id

        db.map_id = new_map_id()  # a copy that goes its own way: two directories never share an id
    try:
        ids = [i for input_ids in _add_source(db, encoder, args) for i in input_ids]
        if not ids:
            _fail("no keyframes added: nothing written")
        db.save(args.out or args.map)
    except MapError as e:
        _fail(str(e))
    print(f"{args.out or args.map}: {before} + {len(ids)} = {len(db)} keyframes")


def run_merge(args):
    from geoloc_ros.mapping import MapError
    from geoloc_ros.mapping.merge import merge_maps

    out = Path(args.out)
    if out.exists() and not args.force:
        _fail(f"{out} exists; pass --force to replace it")
    out = _check_target(out)
    maps = [_load_map(p) for p in args.maps]
    if args.parts and args.index:
        _fail("--parts keeps the parts' index; --index would re-encode (leave one out)")
    if args.quantiser_from and not args.parts:
        _fail("--quantiser-from goes with --parts")
    try:
        if args.parts:
            _merge_parts(maps, args.name or out.name, out,
                         _load_map(args.quantiser_from) if args.quantiser_from else None)
        else:
            merged = merge_maps(maps, name=args.name or out.name, index_factory=args.index)
            merged.save(out)
    except MapError as e:
        _fail(str(e))
    print(f"{out}: {sum(len(m) for m in maps)} keyframes from {len(maps)} maps")


def _merge_parts(maps, name, out: Path, quantiser_from):
    import shutil
    import tempfile

    from geoloc_ros.mapping.merge import merge_parts

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.parts-", dir=out.parent))  # same filesystem: files link in
    try:
        merge_parts(maps, name, work, quantiser_from).save(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_info(args):
    db = _load_map(args.map)  # verifies every checksum
    manifest = db.manifest()
    if args.json:
        from geoloc_ros.mapping import storage

        print(json.dumps(storage.read_manifest(Path(args.map)), indent=1, sort_keys=True))
        return
    x, y = db.column("x"), db.column("y")
    stamps = db.column("stamp_ns")
    print(f"map        {args.map} (verified: format v{manifest['format_version']}, checksums match)")
    print(f"name       {db.name}, created {db.created}")
    print(f"keyframes  {len(db)} ({manifest['synthetic_positions']} with synthetic positions)")
    print(f"encoder    dim {db.dim}, fingerprint {db.fingerprint}"
          + (f", carried: {db.encoder_path.name}" if db.encoder_path else ", not carried"))
    print(f"index      {db.index_factory} ({db.search_params or 'default search parameters'}), inner product"
          + (f", exact re-ranking of {db.rerank} candidates" if db.rerank else "")
          + (", inverted lists and descriptors on disk (memory-mapped)" if db.on_disk else ""))
    if db.frame:
        f = db.frame
        lat, lon, alt = f.to_wgs84(0.0, 0.0)
        print(f"map frame  UTM {f.zone}, origin E {f.origin_east:.2f} N {f.origin_north:.2f} alt {f.origin_alt:.2f} "
              f"(lat {lat:.6f}, lon {lon:.6f})")
    else:
        print("map frame  none (no geotags)")
    known = ~(_isnan(x) | _isnan(y))
    if known.any():
        print(f"extent     x {x[known].min():.1f}..{x[known].max():.1f} m, "
              f"y {y[known].min():.1f}..{y[known].max():.1f} m")
    if len(stamps) and (stamps > 0).any():
        s = stamps[stamps > 0]
        print(f"stamps     {s.min() / 1e9:.3f}..{s.max() / 1e9:.3f} s")
    if db.structure is not None:
        st = db.structure
        print(f"structure  {st.source}: {st.point_count()} 3D points on {len(st)} keyframes"
              + (", georegistered" if st.georegistered else ""))
    sources = sorted(set(db.column("source").tolist()))
    print(f"sources    {', '.join(sources[:5]) + (' ...' if len(sources) > 5 else '') if sources else '-'}")


def _isnan(a):
    return np.isnan(a)


def run_query(args):
    from geoloc_ros.datasets import read_image

    if bool(args.text) == bool(args.images):
        _fail("give images or --text, not both and not neither")
    if args.text:
        return map_text.run_text_query(args, _load_map(args.map), _load_encoder)
    db, encoder = _load_map_and_encoder(args)
    near = tuple(float(v) for v in args.near.split(",")) if args.near else None
    try:
        descriptors = encoder.encode([read_image(p) for p in args.images])
    except ValueError as e:
        _fail(str(e))
    for path, matches in zip(args.images, db.search(descriptors, args.k, near=near)):
        print(path)
        if not matches:
            print("  (no candidates)")
        for rank, m in enumerate(matches, start=1):
            k = m.keyframe
            where = f"lat {k.lat:.6f} lon {k.lon:.6f}" if math.isfinite(k.lat) else "no geotag"
            print(f"  {rank}. sim {m.similarity:.4f}  id {k.id}  {k.label}  x {k.x:.1f} y {k.y:.1f}  {where}"
                  + ("  (synthetic)" if k.synthetic else ""))
    sys.stdout.flush()


def run_bag(args):
    from geoloc_ros.datasets import read_image
    from geoloc_ros.mapping.bag import write_image_bag

    images = _load_images(args)
    out = Path(args.out)
    if out.exists():
        _fail(f"{out} exists; remove it first")
    period_ns = int(round(1e9 / args.rate))
    start = args.start_sec * 1_000_000_000
    frames = ((start + i * period_ns, read_image(g.path),
               (g.lat, g.lon, 0.0 if math.isnan(g.alt) else g.alt) if math.isfinite(g.lat) else None)
              for i, g in enumerate(images))
    write_image_bag(out, frames, args.image_topic, args.fix_topic, args.storage)
    print(f"{out}: {len(images)} frames at {args.rate:g} Hz on {args.image_topic} (+ NavSatFix on {args.fix_topic})")
