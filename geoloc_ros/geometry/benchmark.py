"""Relative-pose accuracy, feature size and detection time on ../shared/data/geometry (and toy_streets).

    python -m geoloc_ros.geometry.benchmark [--data DIR] [--detectors sift,orb,akaze] [--json OUT]

Prints a Markdown table per detector (every pair's rotation / translation-direction / metric errors) and a
detector comparison (accuracy, bytes per keyframe, ms per image); docs/geometry.md holds its output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import statistics
import time

import numpy as np
from scipy.spatial.transform import Rotation

from geoloc_ros.geometry.camera import PinholeCamera
from geoloc_ros.geometry.features import DEFAULT_MAX_KEYPOINTS, DETECTORS, available_detectors, detect
from geoloc_ros.geometry.relative_pose import solve
from geoloc_ros.machine import cpu_model as cpu_name  # the CPU a figure came from, as lscpu names it

KITTI_CAMERA = PinholeCamera(707.0912, 707.0912, 601.8873, 183.1104, 1226, 370)
KITTI_BASELINE_M = 379.8145 / 707.0912
RGBD_CAMERA = PinholeCamera(518.0, 519.0, 325.5, 253.5, 640, 480)
# (image a, image b): consecutive frames, two and five frames apart, and the stereo pair (left -> right)
KITTI_PAIRS = [("12", "13"), ("435", "436"), ("12-color", "13-color"), ("12-color", "14-color"),
               ("13-color", "14-color"), ("12-color", "17-color"), ("14-color", "17-color"),
               ("12-color", "12-R-color")]
# (frame a, frame b, which side has depth)
RGBD_PAIRS = [(1, 2, "a"), (2, 3, "a"), (3, 4, "a"), (4, 5, "a"), (1, 3, "a"), (2, 1, "b"), (3, 2, "b"),
              (5, 4, "b"), (3, 5, "b")]


def default_data() -> Path:
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def read_rgb(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"{path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_depth(path: Path) -> np.ndarray:
    import cv2

    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None or d.dtype != np.uint16:
        raise FileNotFoundError(f"{path}: not a 16-bit depth image")
    return d


def kitti_poses(folder: Path) -> dict:
    poses = {}
    for line in (folder / "poses.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            v = line.split()
            T = np.eye(4)
            T[:3, :] = np.array([float(x) for x in v[1:13]]).reshape(3, 4)
            poses[v[0]] = T
    return poses


def rgbd_poses(folder: Path) -> dict:
    poses = {}
    for n, line in enumerate((folder / "poses.txt").read_text().split("\n"), start=1):
        if line.strip():
            v = [float(x) for x in line.split()]
            T = np.eye(4)
            T[:3, :3] = Rotation.from_quat(v[3:7]).as_matrix()
            T[:3, 3] = v[:3]
            poses[n] = T
    return poses


def errors(T_est: np.ndarray, T_true: np.ndarray) -> dict:
    """Rotation error (deg), translation-direction error (deg), metric translation error (m)."""
    dR = T_est[:3, :3].T @ T_true[:3, :3]
    rot = np.degrees(np.linalg.norm(Rotation.from_matrix(dR).as_rotvec()))
    te, tt = T_est[:3, 3], T_true[:3, 3]
    cosang = te @ tt / max(np.linalg.norm(te) * np.linalg.norm(tt), 1e-12)
    return {"rotation_deg": float(rot), "direction_deg": float(np.degrees(np.arccos(np.clip(cosang, -1, 1)))),
            "translation_m": float(np.linalg.norm(te - tt)), "true_distance_m": float(np.linalg.norm(tt))}


def kitti_cases(data: Path):
    """(name, image a, camera a, depth a, image b, camera b, depth b, T_ab true) for each KITTI pair."""
    folder = data / "geometry" / "kitti06"
    poses = kitti_poses(folder)
    for a, b in KITTI_PAIRS:
        fa, fb = a.split("-")[0], b.split("-")[0]
        if b.endswith("-R-color"):
            T = np.eye(4)
            T[0, 3] = KITTI_BASELINE_M  # rectified stereo: the right camera is baseline metres along +x
        else:
            T = np.linalg.inv(poses[fa]) @ poses[fb]
        yield (f"kitti06 {a} -> {b}", read_rgb(folder / f"kitti06-{a}.png"), KITTI_CAMERA, None,
               read_rgb(folder / f"kitti06-{b}.png"), KITTI_CAMERA, None, T)


def rgbd_cases(data: Path):
    folder = data / "geometry" / "rgbd_desk"
    poses = rgbd_poses(folder)
    for a, b, side in RGBD_PAIRS:
        da = read_depth(folder / "depth" / f"{a}.pgm") if side == "a" else None
        db = read_depth(folder / "depth" / f"{b}.pgm") if side == "b" else None
        yield (f"rgbd_desk {a} -> {b} (depth {side})", read_rgb(folder / "color" / f"{a}.png"), RGBD_CAMERA, da,
               read_rgb(folder / "color" / f"{b}.png"), RGBD_CAMERA, db, np.linalg.inv(poses[a]) @ poses[b])


def run_pairs(cases, detector: str, timings: list, max_keypoints: int = DEFAULT_MAX_KEYPOINTS) -> list[dict]:
    rows = []
    for name, ia, ca, da, ib, cb, db, T_true in cases:
        t0 = time.perf_counter()
        fa = detect(ia, detector, max_keypoints, depth=da)
        t1 = time.perf_counter()
        fb = detect(ib, detector, max_keypoints, depth=db)
        timings.extend([(t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3])
        r = solve(fa, ca, fb, cb)
        row = {"pair": name, "kind": r.kind, "inliers": r.inliers, "matches": r.matches,
               **errors(r.T_ab, T_true), "sigma_rotation_deg": float(np.degrees(np.sqrt(np.trace(r.covariance[3:,
                                                                                    3:]) / 3)))}
        if r.kind == "metric":
            row["sigma_translation_m"] = float(np.sqrt(np.trace(r.covariance[:3, :3]) / 3))
        rows.append(row)
    return rows


def feature_sizes(data: Path, detector: str, timings: list, max_keypoints: int = DEFAULT_MAX_KEYPOINTS) -> list[int]:
    """Blob bytes of every toy_streets image (and times detection into `timings`)."""
    sizes = []
    for path in sorted((data / "toy_streets").rglob("*.jpg")):
        img = read_rgb(path)
        t0 = time.perf_counter()
        f = detect(img, detector, max_keypoints)
        timings.append((time.perf_counter() - t0) * 1e3)
        sizes.append(len(f.to_bytes()))
    return sizes


def _fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def pair_table(rows) -> str:
    lines = ["| pair | kind | inliers / matches | rotation err (deg) | direction err (deg) | metric err (m) | "
             "true distance (m) | sigma rot (deg) | sigma t (m) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        metric = r["translation_m"] if r["kind"] == "metric" else None
        lines.append(f"| {r['pair']} | {r['kind']} | {r['inliers']} / {r['matches']} | {_fmt(r['rotation_deg'])} | "
                     f"{_fmt(r['direction_deg'])} | {_fmt(metric, 3)} | {_fmt(r['true_distance_m'], 3)} | "
                     f"{_fmt(r['sigma_rotation_deg'], 3)} | {_fmt(r.get('sigma_translation_m'), 3)} |")
    return "\n".join(lines)


def summary(detector, kitti, rgbd, timings, sizes) -> dict:
    ok_k = [r for r in kitti if r["kind"] != "none"]
    ok_r = [r for r in rgbd if r["kind"] == "metric"]
    return {"detector": detector,
            "kitti_solved": f"{len(ok_k)}/{len(kitti)}",
            "kitti_max_rotation_deg": max((r["rotation_deg"] for r in ok_k), default=None),
            "kitti_max_direction_deg": max((r["direction_deg"] for r in ok_k), default=None),
            "rgbd_metric": f"{len(ok_r)}/{len(rgbd)}",
            "rgbd_max_translation_m": max((r["translation_m"] for r in ok_r), default=None),
            "rgbd_max_rotation_deg": max((r["rotation_deg"] for r in ok_r), default=None),
            "bytes_per_keyframe": int(statistics.mean(sizes)) if sizes else None,
            "ms_per_image": statistics.median(timings) if timings else None}


def comparison_table(summaries) -> str:
    lines = ["| detector | KITTI solved | KITTI max rot (deg) | KITTI max dir (deg) | RGB-D metric | "
             "RGB-D max t err (m) | RGB-D max rot (deg) | bytes / keyframe (toy_streets) | ms / image (median) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['detector']} | {s['kitti_solved']} | {_fmt(s['kitti_max_rotation_deg'])} | "
                     f"{_fmt(s['kitti_max_direction_deg'])} | {s['rgbd_metric']} | "
                     f"{_fmt(s['rgbd_max_translation_m'], 3)} | {_fmt(s['rgbd_max_rotation_deg'])} | "
                     f"{s['bytes_per_keyframe']} | {_fmt(s['ms_per_image'], 1)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m geoloc_ros.geometry.benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=default_data(), help="the shared data folder (default ../shared/data)")
    p.add_argument("--detectors", default=",".join(DETECTORS))
    p.add_argument("--max-keypoints", type=int, default=DEFAULT_MAX_KEYPOINTS)
    p.add_argument("--json", type=Path, help="also write every figure here")
    args = p.parse_args(argv)
    import cv2

    cv2.setRNGSeed(0)  # RANSAC sampling: the same figures on every run of one machine
    print(f"CPU: {cpu_name()}; OpenCV {cv2.__version__}; at most {args.max_keypoints} keypoints per image; timings "
          f"share the CPU with whatever else runs\n")
    results, summaries = {}, []
    for det in args.detectors.split(","):
        if det not in available_detectors():
            print(f"## {det}\n\nnot in this OpenCV build ({cv2.__version__}); skipped\n")
            continue
        timings = []
        kitti = run_pairs(kitti_cases(args.data), det, timings, args.max_keypoints)
        rgbd = run_pairs(rgbd_cases(args.data), det, timings, args.max_keypoints)
        sizes = feature_sizes(args.data, det, timings, args.max_keypoints)
        results[det] = {"kitti": kitti, "rgbd": rgbd}
        summaries.append(summary(det, kitti, rgbd, timings, sizes))
        print(f"## {det}\n\n{pair_table(kitti + rgbd)}\n")
    print(f"## detectors\n\n{comparison_table(summaries)}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "pairs": results, "summary": summaries}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
