"""`geoloc model convert IN.pth OUT.safetensors`: a ProGEO checkpoint as this package's self-describing encoder file."""

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
