"""`geoloc map build --engine ray`: the options, and the build's frames handed to geoloc_ros.mapping.ray_build
(docs/maps.md, "Building on Ray")."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm


def add_args(p):
    g = p.add_argument_group("engine (docs/maps.md, \"Building on Ray\")")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: Ray Data actors, on this machine or a cluster")
    g.add_argument("--ray-address", help="Ray cluster to run on (default: RAY_ADDRESS when set, else a local Ray)")
    g.add_argument("--ray-workers", type=int, default=2,
                   help="encoder actors (and CPUs of a local Ray; one GPU each where the cluster has GPUs; default 2)")
    g.add_argument("--ray-part-size", type=int, default=256,
                   help="frames per batch and per part written to the work folder (default 256)")


def require(args) -> None:
    """With --engine ray: exit naming the extra when Ray is not installed, before any work."""
    if args.engine == "ray":
        from geoloc_ros.mapping import MapError, ray_build

        try:
            ray_build.import_ray()
        except MapError as e:
            raise SystemExit(f"geoloc map: {e}") from None
        if args.ray_workers < 1 or args.ray_part_size < 1:
            raise SystemExit("geoloc map: --ray-workers and --ray-part-size must be positive")


def encode(db, args, plans, unreadable) -> list[list[int]]:
    """Encode the planned inputs on Ray into `db`; returns the ids added per input. The parts of an interrupted
    run of the same build are kept and skipped; the work folder is removed once the map is saved."""
    from geoloc_ros.mapping import ray_build

    if any(getattr(a, "depth_topic", None) for a, _, _ in plans):
        raise SystemExit("geoloc map: --depth-topic is not available with --engine ray")
    items, inputs = [], []
    for n, (_, input_items, opts) in enumerate(plans):
        annotate = opts.get("annotate")
        for keyframe, source in input_items:
            items.append((annotate(keyframe) if annotate is not None else keyframe, source))
            inputs.append(n)
    rows = ray_build.plan_rows(items, inputs)
    store = db.local_features
    detector = store.detector if store is not None else None
    max_keypoints = store.max_keypoints if store is not None else 0
    work_dir = ray_build.work_dir_for(args.out)
    key = ray_build.build_key(rows, db.fingerprint, detector, max_keypoints)
    ray_build.init_ray(args.ray_address, args.ray_workers)
    with tqdm(total=len(rows), desc="encoding on Ray", unit="img", disable=args.quiet, mininterval=1.0) as bar:
        ray_build.encode_parts(rows, args.encoder, work_dir, key, workers=args.ray_workers, detector=detector,
                               max_keypoints=max_keypoints, batch_size=args.batch_size, part_size=args.ray_part_size,
                               progress=bar.update)
    cameras = [opts.get("camera_for") for _, _, opts in plans]

    def camera_for(slot):
        lookup = cameras[inputs[slot]]
        return lookup(*items[slot]) if lookup is not None else None

    ids = ray_build.assemble(db, items, work_dir, camera_for, unreadable)
    args.ray_work_dir = work_dir  # run_build removes it once the map is saved
    per_input = [[] for _ in plans]
    for slot, kid in ids.items():
        per_input[inputs[slot]].append(kid)
    return per_input


def remove_work_dir(args) -> None:
    work_dir = getattr(args, "ray_work_dir", None)
    if work_dir is not None:
        from geoloc_ros.mapping import ray_build

        ray_build.remove_work_dir(Path(work_dir))
