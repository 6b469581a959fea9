"""What keyframe exchange between robots costs on the wire, and what compression costs in recall
(docs/benchmarks.md, "Keyframe exchange between robots"):

- serialized bytes of one geoloc_msgs/Keyframe per descriptor encoding (float32, float16, pq);
- serialized bytes of a KeyframeFeatures request and answer (real SIFT / ORB features of a street photo at the
  node's default verification_max_keypoints), i.e. the bytes of one verified inter-robot closure;
- Recall@1 of winter queries (the robot's own float32 descriptors) against the summer frames of the same stretch
  as a peer sends them (decoded from each encoding): what compression loses.

    python -m geoloc_ros.bench.peer_bandwidth --frames 19210:24000 --out docs/benchmarks/peer_bandwidth
    python -m geoloc_ros.bench.peer_bandwidth --train-codebook maps/nordland_demo/encoder.pq.faiss --frames 10:16000

The second form trains the PQ codebook shipped beside the bundled encoder (summer and winter frames of the
training stretch, never the measured one) and saves it."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
import platform
import subprocess

import numpy as np

SWARM_SLAM = [  # what Swarm-SLAM (cslam) sends per keyframe for place recognition: float32 lists (4 B a value)
    {"system": "Swarm-SLAM, CosPlace (cslam_experiments config/realsense_rgbd.yaml: descriptor_dim 64)", "dim": 64},
    {"system": "Swarm-SLAM, NetVLAD after its PCA (cslam/vpr/netvlad.py; 128 values, the size of its stand-in)",
     "dim": 128},
    {"system": "Swarm-SLAM, CosPlace at 2048 dimensions (descriptor_dim set to CosPlace's largest)", "dim": 2048},
    {"system": "Swarm-SLAM, NetVLAD without PCA (64 clusters x 512, cslam/vpr/netvlad.py)", "dim": 64 * 512},
]


def stretch(data: Path, season: str, lo: int, hi: int) -> list[Path]:
    from geoloc_ros.model.nordland import frame_number

    return [p for p in sorted((data / season).glob("*.png")) if lo <= frame_number(p) <= hi]


def encode(encoder, paths, batch: int = 256) -> np.ndarray:
    from geoloc_ros.datasets import read_image

    out = [encoder.encode([read_image(p) for p in paths[i:i + batch]]) for i in range(0, len(paths), batch)]
    return np.concatenate(out).astype(np.float32)


def train_codebook(args, encoder) -> None:
    from geoloc_ros.localization.peers import Codebook

    lo, hi = (int(v) for v in args.frames.split(":"))
    paths = stretch(args.data, "summer", lo, hi) + stretch(args.data, "winter", lo, hi)
    book = Codebook.train(encode(encoder, paths), m=args.pq_m)
    book.save(args.train_codebook)
    print(f"PQ codebook {book.id}: {args.pq_m} x 8 bits ({book.code_size} bytes a descriptor), trained on "
          f"{len(paths)} descriptors of frames {lo}..{hi}, saved to {args.train_codebook}")


def keyframe_bytes(encoding: str, desc: np.ndarray, fingerprint: str, codebook) -> int:
    """Serialized size (CDR, as DDS sends it) of a Keyframe with every field filled as vpr_node fills it."""
    from rclpy.serialization import serialize_message

    from geoloc_msgs.msg import Keyframe
    from geoloc_ros.localization.peers import ENCODING_CODES, encode_descriptor

    m = Keyframe(robot_id="robot_a", session_id="0" * 32, keyframe_id=1234, encoder_fingerprint=fingerprint,
                 descriptor_encoding=ENCODING_CODES[encoding], descriptor_dim=len(desc),
                 codebook_id=codebook.id if encoding == "pq" else "",
                 descriptor=encode_descriptor(desc, encoding, codebook), has_odom_pose=True,
                 odom_frame_id="robot_a/odom", has_geotag=True, latitude=63.4, longitude=10.4, altitude=20.0)
    return len(serialize_message(m))


def features_bytes(photo: Path, detector: str, max_keypoints: int) -> dict:
    """Serialized sizes of a KeyframeFeatures request and of its answer for `photo`'s features."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CameraInfo

    from geoloc_msgs.srv import KeyframeFeatures
    from geoloc_ros.datasets import read_image
    from geoloc_ros.geometry import PinholeCamera, detect
    from geoloc_ros.node.peer_exchange import _floats

    rgb = read_image(photo)
    f = detect(rgb, detector, max_keypoints)
    h, w = rgb.shape[:2]
    response = KeyframeFeatures.Response(found=True, message="ok", detector=detector, count=len(f),
                                         descriptor_dim=int(f.descriptors.shape[1]), keypoints=_floats(f.keypoints),
                                         descriptors=f.descriptors.tobytes())
    PinholeCamera(0.8 * w, 0.8 * w, w / 2, h / 2, w, h).to_camera_info(response.camera)
    request = KeyframeFeatures.Request(robot_id="robot_a", session_id="0" * 32, keyframe_id=1234)
    assert isinstance(response.camera, CameraInfo)
    return {"detector": detector, "keypoints": len(f), "request_bytes": len(serialize_message(request)),
            "answer_bytes": len(serialize_message(response)), "image": f"{photo.name} ({w}x{h})"}


def recall_at_1(db: np.ndarray, queries: np.ndarray, db_frames, query_frames, tolerance_frames: int = 20) -> float:
    best = np.argmax(queries @ db.T, axis=1)
    hits = np.abs(np.asarray(db_frames)[best] - np.asarray(query_frames)) <= tolerance_frames
    return float(hits.mean())


def main(argv=None) -> int:
    from geoloc_ros.localization.peers import Codebook, codebook_path, decode_descriptor, encode_descriptor
    from geoloc_ros.machine import cpu_model
    from geoloc_ros.model import load_encoder
    from geoloc_ros.model.nordland import frame_number, is_blank

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", default="maps/nordland_demo/encoder.safetensors")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/nordland64"))
    ap.add_argument("--frames", default="16010:19200", metavar="LO:HI")
    ap.add_argument("--photo", type=Path, default=Path("../shared/data/toy_streets/database"),
                    help="a folder of camera photos: the first one gives the features answer's size")
    ap.add_argument("--max-keypoints", type=int, default=2000)
    ap.add_argument("--train-codebook", type=Path, default=None, metavar="OUT")
    ap.add_argument("--pq-m", type=int, default=32, help="PQ sub-quantizers (bytes per code) for --train-codebook")
    ap.add_argument("--out", type=Path, default=Path("runs/peer_bandwidth"))
    args = ap.parse_args(argv)
    encoder = load_encoder(args.encoder, device="cpu")
    if args.train_codebook is not None:
        train_codebook(args, encoder)
        return 0
    book_file = codebook_path(args.encoder)
    codebook = Codebook.load(book_file) if book_file.is_file() else None
    lo, hi = (int(v) for v in args.frames.split(":"))
    from geoloc_ros.datasets import read_image

    summer = stretch(args.data, "summer", lo, hi)
    winter = [p for p in stretch(args.data, "winter", lo, hi) if not is_blank(read_image(p))]
    db, queries = encode(encoder, summer), encode(encoder, winter)
    db_frames, query_frames = [frame_number(p) for p in summer], [frame_number(p) for p in winter]
    encodings = ["float32", "float16"] + (["pq"] if codebook is not None else [])
    rows = []
    for encoding in encodings:
        sent = np.stack([decode_descriptor(encode_descriptor(d, encoding, codebook), encoding, encoder.dim, codebook)
                         for d in db])
        rows.append({"encoding": encoding, "descriptor_bytes": len(encode_descriptor(db[0], encoding, codebook)),
                     "keyframe_message_bytes": keyframe_bytes(encoding, db[0], encoder.fingerprint, codebook),
                     "recall_at_1": recall_at_1(sent, queries, db_frames, query_frames)})
    photo = sorted(p for p in args.photo.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[0] \
        if args.photo.is_dir() else args.photo
    features = [features_bytes(photo, d, args.max_keypoints) for d in ("sift", "orb")]
    swarm = [{**s, "descriptor_bytes": 4 * s["dim"]} for s in SWARM_SLAM]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    record = {"command": "python -m geoloc_ros.bench.peer_bandwidth " + " ".join(argv or __import__("sys").argv[1:]),
              "cpu": cpu_model(), "python": platform.python_version(), "commit": commit,
              "encoder": args.encoder, "encoder_dim": encoder.dim, "frames": f"{lo}..{hi}",
              "codebook": {"file": str(book_file), "id": codebook.id, "bytes": codebook.code_size}
              if codebook is not None else None,
              "queries": len(winter), "database": len(summer), "tolerance_m": 25.0,
              "keyframes": rows, "features": features, "swarm_slam_descriptors": swarm}
    print(f"CPU: {record['cpu']}; encoder dim {encoder.dim}; Nordland frames {lo}..{hi}: {len(winter)} winter "
          f"queries (own float32) against {len(summer)} summer keyframes as a peer sends them")
    print(f"{'encoding':10s} {'descriptor B':>13s} {'Keyframe msg B':>15s} {'Recall@1':>9s}")
    for r in rows:
        print(f"{r['encoding']:10s} {r['descriptor_bytes']:13d} {r['keyframe_message_bytes']:15d} "
              f"{r['recall_at_1']:9.3f}")
    for f in features:
        closure = f["request_bytes"] + f["answer_bytes"]
        print(f"features {f['detector']}: {f['keypoints']} keypoints of {f['image']}: request {f['request_bytes']} B, "
              f"answer {f['answer_bytes']} B -> {closure} B per verified inter-robot closure")
    for s in swarm:
        print(f"{s['system']}: {s['descriptor_bytes']} B of descriptor per keyframe")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"peer_bandwidth_{lo}_{hi}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {path}")
    return 0 if all(math.isfinite(r["recall_at_1"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
