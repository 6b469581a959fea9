"""`geoloc geolocate IMAGE --map MAP [--map MAP2 ...] [--reference MAP] [--lmm-url URL]`: where was this photo
taken? Retrieval over the maps (Img2Loc's k nearest and k farthest keyframes), then the retrieval-weighted
position, or with --lmm-url a multimodal model's answer checked against the neighbours (docs/language.md)."""

from __future__ import annotations

import json
import math


def add_parser(sub):
    p = sub.add_parser("geolocate", help="coarse geolocation of an image from the maps (and a model server)",
                       description=__doc__)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--map", action="append", required=True, help="map directory (repeatable)")
    p.add_argument("--reference", help="a large geotagged reference map built with the same encoder")
    p.add_argument("--encoder", help="encoder checkpoint (default: the one the first map carries)")
    p.add_argument("-k", type=int, default=5, help="nearest and farthest keyframes (each; default 5)")
    p.add_argument("--lmm-url", help="OpenAI-compatible chat-completions endpoint (vLLM, Ollama, llama.cpp server)")
    p.add_argument("--lmm-model", default="", help="model name sent to --lmm-url")
    p.add_argument("--lmm-timeout", type=float, default=30.0, help="seconds per attempt (default 30)")
    p.add_argument("--lmm-retries", type=int, default=1, help="further attempts (default 1)")
    p.add_argument("--region-min-m", type=float, default=5000.0,
                   help="a model answer is refused beyond max(2 x the neighbours' spread, this) (default 5000 m)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args):
    from geoloc_ros.datasets import read_image
    from geoloc_ros.language.geolocate import GeolocateSettings, Geolocator
    from geoloc_ros.language.lmm_client import LmmClient
    from geoloc_ros.localization.snapshot import LoadError, load_maps
    from geoloc_ros.model import CheckpointError, load_encoder

    paths = list(args.map) + ([args.reference] if args.reference else [])
    try:
        entries = load_maps(paths)
        checkpoint = args.encoder or entries[0].db.encoder_path
        if checkpoint is None:
            raise SystemExit(f"geoloc geolocate: {paths[0]} carries no encoder; give --encoder")
        encoder = load_encoder(checkpoint, device=args.device)
        entries = load_maps(paths, encoder=encoder)  # refuses maps of another encoder
        client = LmmClient(args.lmm_url, args.lmm_model, args.lmm_timeout, args.lmm_retries) if args.lmm_url else None
    except (LoadError, CheckpointError, ValueError) as e:
        raise SystemExit(f"geoloc geolocate: {e}") from None
    settings = GeolocateSettings(k=args.k, region_min_m=args.region_min_m)
    geolocator = Geolocator(encoder, [(m.id, m.name, m.db) for m in entries], settings, client)
    failed = 0
    for path in args.images:
        try:
            estimate = geolocator.geolocate(read_image(path))
        except (OSError, ValueError) as e:
            raise SystemExit(f"geoloc geolocate: {e}") from None
        failed += not estimate.success
        _print(path, estimate, args.json)
    if client is not None and not args.json:
        print("model server: " + ", ".join(f"{k} {v}" for k, v in client.snapshot().items()))
    return 1 if failed else 0


def _print(path, e, as_json: bool):
    sd = math.sqrt(max(e.covariance[0], e.covariance[4])) if e.success else math.nan
    if as_json:
        print(json.dumps({"image": str(path), "success": e.success, "method": e.method, "message": e.message,
                          "latitude": e.lat if e.success else None, "longitude": e.lon if e.success else None,
                          "sigma_m": sd if e.success else None,
                          "neighbours": [{"map": c.map_name, "id": c.keyframe.id, "similarity": c.similarity,
                                          "latitude": c.keyframe.lat, "longitude": c.keyframe.lon}
                                         for c in e.neighbours]}))
        return
    print(path)
    if not e.success:
        print(f"  no estimate: {e.message}")
        return
    print(f"  {e.method}: lat {e.lat:.6f} lon {e.lon:.6f}  sigma {sd:.0f} m  ({e.message})")
    for c in e.neighbours:
        print(f"    {c.rank + 1}. sim {c.similarity:.4f}  {c.map_name} id {c.keyframe.id}  lat {c.keyframe.lat:.6f} "
              f"lon {c.keyframe.lon:.6f}" + (f"  {c.keyframe.address!r}" if c.keyframe.address else ""))
