"""`geoloc describe --images DIR --out FILE.csv (--lmm-url URL [--lmm-model M] | --colour-layout)`: one scene
description per image, for maps with descriptions and the feature combiner (docs/language.md).

The CSV (`image,caption,reason`) feeds `geoloc map build --descriptions FILE.csv` and `geoloc train-combiner`.
Re-running the same command resumes: described images are not asked again."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("describe", help="scene descriptions of images from a multimodal model server (resumable)",
                       description=__doc__)
    p.add_argument("--images", required=True, help="an image folder (labels: paths relative to it)")
    p.add_argument("--out", required=True, help="the descriptions CSV to write (or resume)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--lmm-url", help="OpenAI-compatible chat-completions endpoint (vLLM, Ollama, llama.cpp)")
    source.add_argument("--colour-layout", action="store_true",
                        help="no model server: the deterministic colour-layout stand-in (for trying the path)")
    p.add_argument("--lmm-model", default="", help="model name sent to --lmm-url")
    p.add_argument("--lmm-timeout", type=float, default=60.0, help="seconds per attempt (default 60)")
    p.add_argument("--lmm-retries", type=int, default=2, help="further attempts per image (default 2)")
    p.add_argument("--rate-hz", type=float, default=0.0, help="at most this many requests per second (0: no limit)")
    p.add_argument("--prompt", default=None, help="the instruction sent with each image (default: docs/language.md)")
    p.set_defaults(func=run)


def run(args):
    from geoloc_ros.datasets import list_images
    from geoloc_ros.language import describe as descriptions
    from geoloc_ros.language.lmm_client import LmmClient

    folder = Path(args.images)
    if not folder.is_dir():
        raise SystemExit(f"geoloc describe: {folder} is not a folder of images")
    images = [(str(path.relative_to(folder)), path) for path in list_images(folder)]
    if not images:
        raise SystemExit(f"geoloc describe: no images in {folder}")
    if args.colour_layout:
        def describe(rgb):
            return descriptions.colour_layout(rgb)
    else:
        try:
            client = LmmClient(args.lmm_url, args.lmm_model, timeout_s=args.lmm_timeout, retries=args.lmm_retries)
        except ValueError as e:
            raise SystemExit(f"geoloc describe: {e}") from None
        prompt = args.prompt or descriptions.PROMPT

        def describe(rgb):
            return descriptions.describe_with(client, rgb, prompt)
    counts = descriptions.describe_folder(images, args.out, describe, rate_hz=args.rate_hz)
    print(f"geoloc describe: {counts['described']} described, {counts['kept']} kept from the last run, "
          f"{counts['failed']} without a description -> {args.out}")
    for key, n in sorted(counts.items()):
        if key.startswith("reason: "):
            print(f"  {n:5d}  {key[len('reason: '):]}")
    return 1 if counts["described"] + counts["kept"] == 0 else 0
