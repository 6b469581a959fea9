"""`geoloc model convert IN.pth OUT.safetensors`: a ProGEO checkpoint as this package's self-describing encoder file.
`geoloc model combine --encoder ENC --images DIR --descriptions FILE.csv [--images ... --descriptions ...] --out DIR`:
train a feature combiner that fuses scene descriptions into ENC's descriptors (docs/language.md)."""

from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("model", help="encoder checkpoint tools (convert ProGEO's released .pth files)",
                       description="Encoder checkpoint tools.")
    actions = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    c = actions.add_parser("convert", help="ProGEO .pth -> encoder.safetensors (prints its fingerprint)",
                           description="Read a ProGEO checkpoint (their GeoLocalizationNet state dict, plain or as "
                                       "util.save_checkpoint wraps it), infer its backbone and descriptor size from "
                                       "the tensor shapes, and write it as encoder.safetensors with the architecture, "
                                       "preprocessing (512x512, ImageNet statistics) and fingerprint in its header. "
                                       "The descriptors of the written file equal those of the input.")
    c.add_argument("input", metavar="IN", help="ProGEO checkpoint (.pth)")
    c.add_argument("output", metavar="OUT", help="output file (.safetensors) or directory (gets encoder.safetensors)")
    c.add_argument("--arch", default=None, help="expected backbone (RN50, RN101, ViT-B-16, ViT-B-32): refuse others")
    c.add_argument("--dim", type=int, default=None, help="expected descriptor size: refuse others")
    c.add_argument("--force", action="store_true", help="replace an existing OUT")
    c.set_defaults(func=run_convert)
    f = actions.add_parser("combine", help="train a feature combiner (image + description -> descriptor)",
                           description="Train the feature combiner of LVLM-empowered multimodal place recognition on "
                                       "ENC's frozen image descriptors and the images' descriptions (CosFace over "
                                       "CosPlace groups), and write OUT/encoder.safetensors with "
                                       "OUT/combiner.safetensors beside it: load_encoder(OUT) then fuses "
                                       "descriptions, and `geoloc map build --encoder OUT` builds maps with them.")
    f.add_argument("--encoder", required=True, help="the image encoder (checkpoint file or directory)")
    f.add_argument("--images", required=True, action="append",
                   help="training images: VG folder, CSV, or a sequence folder with --sequence-spacing (repeatable, "
                        "each with its --descriptions)")
    f.add_argument("--descriptions", required=True, action="append",
                   help="descriptions CSV of the --images before it (`geoloc describe`: image,caption)")
    f.add_argument("--sequence-spacing", type=float, default=None, help="metres between frames of sequences")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--steps", type=int, default=300)
    f.add_argument("--dim", type=int, default=None, help="fused descriptor size (default: the encoder's)")
    f.add_argument("--text-dropout", type=float, default=0.3, help="share of descriptions dropped in training")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=run_combine)


def run_convert(args):
    from geoloc_ros.model import CheckpointError, load_encoder, save_encoder
    from geoloc_ros.model.checkpoint import CHECKPOINT_NAME

    out = Path(args.output)
    target = out / CHECKPOINT_NAME if out.is_dir() else out
    if target.exists() and not args.force:
        raise SystemExit(f"geoloc model convert: {target} exists (give --force to replace it)")
    try:
        enc = load_encoder(args.input, device="cpu", half=False, arch=args.arch, dim=args.dim)
    except CheckpointError as e:
        raise SystemExit(f"geoloc model convert: {e}")
    written = save_encoder(enc, out, training={"converted_from": str(Path(args.input).resolve()),
                                               "command": getattr(args, "command_line", None)})
    h, w = enc.image_size
    print(f"wrote {written}: {enc.arch.get('name')} {h}x{w} -> {enc.dim}-d, fingerprint {enc.fingerprint}")
    return 0


def run_combine(args):
    from pathlib import Path

    from geoloc_ros.datasets import load_dataset, read_image
    from geoloc_ros.language.describe import read_descriptions
    from geoloc_ros.mapping.storage import MapError, safe_output_dir
    from geoloc_ros.model import CheckpointError, load_encoder, save_encoder
    from geoloc_ros.model.checkpoint import CHECKPOINT_NAME
    from geoloc_ros.model.combiner_training import CombinerSettings, train_combiner
    from geoloc_ros.model.fused_encoder import COMBINER_NAME, save_combiner

    if len(args.images) != len(args.descriptions):
        raise SystemExit("geoloc model combine: give one --descriptions for each --images")
    records, texts = [], []
    try:
        enc = load_encoder(args.encoder, device="cpu", half=False, combiner=False)
        for images, descriptions in zip(args.images, args.descriptions):
            part = load_dataset(images, sequence_spacing=args.sequence_spacing)
            described = read_descriptions(descriptions)
            records += part
            texts += [described[r.label].text if r.label in described else "" for r in part]
        out = safe_output_dir(args.out, (CHECKPOINT_NAME, COMBINER_NAME))
    except (CheckpointError, MapError, OSError, ValueError) as e:
        raise SystemExit(f"geoloc model combine: {e}") from None
    print(f"{len(records)} images, {sum(bool(t) for t in texts)} with a description; encoding with {enc!r}")
    descriptors = enc.encode([read_image(r.path) for r in records])
    settings = CombinerSettings(out_dim=args.dim, steps=args.steps, text_dropout=args.text_dropout, seed=args.seed)
    try:
        combiner, losses = train_combiner(descriptors, texts, records, settings, log=print)
    except ValueError as e:
        raise SystemExit(f"geoloc model combine: {e}") from None
    save_encoder(enc, Path(out) / CHECKPOINT_NAME)
    save_combiner(combiner, out, enc, training={"images": args.images, "descriptions": args.descriptions,
                                               "steps": args.steps, "first_loss": losses[0],
                                               "last_loss": losses[-1], "command": getattr(args, "command_line", None)})
    print(f"wrote {out}/{CHECKPOINT_NAME} and {COMBINER_NAME}: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return 0
