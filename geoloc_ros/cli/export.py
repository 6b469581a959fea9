"""`geoloc export --onnx OUT`: the encoder as one self-describing ONNX file (ONNX Runtime, TensorRT on Jetson)."""

import numpy as np

TRTEXEC_HINT = ("TensorRT engine (on the Jetson, with the TensorRT of its JetPack):\n"
                "  trtexec --onnx={onnx} --saveEngine={engine} --fp16 \\\n"
                "          --minShapes=images:1x3x{h}x{w} --optShapes=images:1x3x{h}x{w} "
                "--maxShapes=images:16x3x{h}x{w}")


def add_parser(sub):
    p = sub.add_parser("export", help="export the encoder to ONNX (for ONNX Runtime and TensorRT)",
                       description="Export the encoder network to ONNX with a dynamic batch axis; the file carries the "
                                   "checkpoint's fingerprint, dimension and preprocessing as metadata. After writing, "
                                   "runs it in ONNX Runtime against the PyTorch encoder and prints the worst cosine.")
    p.add_argument("--onnx", required=True, metavar="OUT", help="output .onnx file")
    p.add_argument("--encoder", metavar="PATH", default=None,
                   help="checkpoint file or directory holding encoder.safetensors (default: the bundled encoder)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17: TensorRT 8.6+ and ONNX Runtime)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    p.set_defaults(func=run)


def run(args):
    from geoloc_ros.deploy import DEFAULT_OPSET, export_onnx, open_encoder
    from geoloc_ros.model import CheckpointError, load_encoder
    from geoloc_ros.model.testing import bundled_encoder_path

    source = args.encoder or bundled_encoder_path()
    try:
        enc = load_encoder(source, device="cpu", half=False)
    except CheckpointError as e:
        raise SystemExit(f"geoloc export: {e}")
    out = export_onnx(enc, args.onnx, opset=args.opset or DEFAULT_OPSET)
    h, w = enc.image_size
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {enc.arch.get('name')} {h}x{w} -> {enc.dim}-d, "
          f"opset {args.opset or DEFAULT_OPSET}, fingerprint {enc.fingerprint[:16]}")
    if not args.no_check:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(4)]
        ref = enc.encode(images)
        got = open_encoder(out, backend="onnxruntime", device="cpu").encode(images)
        print(f"onnxruntime vs PyTorch fp32: worst cosine {float((ref * got).sum(1).min()):.6f} over 4 images")
    print(TRTEXEC_HINT.format(onnx=out, engine=out.with_suffix(".engine"), h=h, w=w))
    return 0
