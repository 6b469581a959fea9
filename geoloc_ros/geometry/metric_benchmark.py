"""Metric localization accuracy and cost on ../shared/data/geometry, through `geoloc map build` and the localizer.

    python -m geoloc_ros.geometry.metric_benchmark [--data DIR] [--skip-sfm] [--repeats N] [--json OUT]

    rgbd_desk  a map of frames 1, 3, 5 with depth (`--poses` + `--depth`), frames 2 and 4 localized
    kitti06    a map of frames 12 and 13 triangulated from poses.txt (`--poses`), frame 14 localized
    lund       an SfM map (`--sfm`) of 24 of the 29 photos georegistered by EXIF GPS; 01..29 but 03, 09, 15, 21, 27,
               which are localized against the 3 keyframes nearest their own GPS fix (the tiny random encoder the
               benchmark builds maps with cannot retrieve); their error is measured against their GPS, beside the
               GPS's own noise as the map photos show it (RMS of their centres against their GPS after the fit)
    cost       features, matching and PnP per 640x480 desk frame against the top 3 candidates, for SIFT and ORB
               maps (median of --repeats runs per frame)

Prints Markdown tables and saves every figure with --json; docs/geometry.md ("Metric localization") holds its output.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
from pathlib import Path
import statistics
import tempfile
import time

import numpy as np
from scipy.spatial.transform import Rotation

from geoloc_ros.bench.machine import cpu_model as cpu_name
from geoloc_ros.geometry import benchmark as bench

LUND_HELD_OUT = ("03", "09", "15", "21", "27")
RGBD_CAMERA = "518,519,325.5,253.5"
KITTI_CAMERA = "707.0912,707.0912,601.8873,183.1104"


def write_poses_csv(path: Path, poses: dict) -> Path:
    rows = ["image,tx,ty,tz,qx,qy,qz,qw"]
    for name, T in poses.items():
        q = Rotation.from_matrix(T[:3, :3]).as_quat()
        rows.append(",".join([name, *(repr(float(v)) for v in T[:3, 3]), *(repr(float(v)) for v in q)]))
    path.write_text("\n".join(rows) + "\n")
    return path


def build(encoder: Path, out: Path, *args) -> str:
    """`geoloc map build` (its stderr summary lines returned)."""
    from geoloc_ros.cli import main as geoloc

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        geoloc(["map", "build", "--encoder", str(encoder), "--out", str(out), "--quiet", "--device", "cpu",
                "--force", *args])
    return "\n".join(line for line in err.getvalue().splitlines() if line.startswith("geoloc map:"))


def localizer(out: Path):
    from geoloc_ros.localization.metric import MetricLocalizer
    from geoloc_ros.mapping import MapDatabase

    return MetricLocalizer(MapDatabase.load(out))


def row(name, result, T_true=None) -> dict:
    r = {"case": name, "kind": result.kind, "inliers": result.inliers, "correspondences": result.correspondences,
         "sigma_m": float(math.sqrt(max(np.linalg.eigvalsh(result.covariance[:3, :3]).max(), 0.0))),
         "sigma_deg": float(math.degrees(math.sqrt(max(np.diag(result.covariance)[3:].max(), 0.0)))),
         **{f"ms_{k}": v for k, v in result.milliseconds.items()}}
    if T_true is not None:
        e = bench.errors(result.T_map_camera, T_true)
        r.update(position_error_m=e["translation_m"], rotation_error_deg=e["rotation_deg"])
    return r


def rgbd(data: Path, encoder: Path, tmp: Path, detector: str = "sift") -> tuple[list, Path]:
    folder = data / "geometry" / "rgbd_desk"
    poses = bench.rgbd_poses(folder)
    csv = write_poses_csv(tmp / "rgbd.csv", {f"{n}.png": poses[n] for n in (1, 3, 5)})
    out = tmp / f"rgbd_{detector}"
    build(encoder, out, "--images", str(folder / "color"), "--poses", str(csv), "--depth", str(folder / "depth"),
          "--camera", RGBD_CAMERA, "--local-features", detector)
    loc = localizer(out)
    ids = [int(i) for i in loc.db.column("id")]
    return [row(f"rgbd_desk {n} ({detector})", loc.localize(bench.read_rgb(folder / "color" / f"{n}.png"),
                                                            bench.RGBD_CAMERA, ids), poses[n]) for n in (2, 4)], out


def kitti(data: Path, encoder: Path, tmp: Path) -> list:
    folder = data / "geometry" / "kitti06"
    poses = bench.kitti_poses(folder)
    csv = write_poses_csv(tmp / "kitti.csv", {f"kitti06-{n}-color.png": poses[n] for n in ("12", "13")})
    build(encoder, tmp / "kitti", "--images", str(folder), "--poses", str(csv), "--camera", KITTI_CAMERA)
    loc = localizer(tmp / "kitti")
    result = loc.localize(bench.read_rgb(folder / "kitti06-14-color.png"), bench.KITTI_CAMERA,
                          [int(i) for i in loc.db.column("id")])
    return [row("kitti06 14", result, poses["14"])]


def lund(data: Path, encoder: Path, tmp: Path) -> tuple[list, dict]:
    from geoloc_ros.datasets import exif_gps
    from geoloc_ros.geometry.camera import PinholeCamera

    folder = data / "geometry" / "lund_street"
    images = tmp / "lund_images"
    images.mkdir()
    for p in sorted(folder.glob("*.jpg")):
        if p.stem not in LUND_HELD_OUT:
            (images / p.name).symlink_to(p)
    t0 = time.perf_counter()
    log = build(encoder, tmp / "lund", "--images", str(images), "--sfm")
    info = {"build_s": time.perf_counter() - t0, "log": log}
    loc = localizer(tmp / "lund")
    db = loc.db
    info["map_keyframes"], info["georegistered"] = len(db), bool(db.structure and db.structure.georegistered)
    if db.frame is None:
        return [], info
    # the GPS's own noise: the map photos' camera centres against their GPS after the similarity fit
    gps_map = np.array([db.frame.to_local(*exif_gps(images / k.label)[:2]) for k in db.keyframes()])[:, :2]
    centres = np.array([(k.x, k.y) for k in db.keyframes()])
    info["gps_noise_rms_m"] = float(np.sqrt(np.mean(np.sum((centres - gps_map) ** 2, axis=1))))
    rows, ids, xy = [], db.column("id"), db.positions()
    for stem in LUND_HELD_OUT:
        path = folder / f"{stem}.jpg"
        lat, lon, _, _ = exif_gps(path)
        gx, gy, _ = db.frame.to_local(lat, lon)
        near = [int(ids[i]) for i in np.argsort(np.hypot(xy[:, 0] - gx, xy[:, 1] - gy))[:3]]
        result = loc.localize(bench.read_rgb(path), PinholeCamera.from_exif(path), near)
        r = row(f"lund {stem}", result)
        r["gps_error_m"] = float(math.hypot(result.T_map_camera[0, 3] - gx, result.T_map_camera[1, 3] - gy))
        rows.append(r)
    return rows, info


def cost(data: Path, maps: dict, repeats: int) -> list:
    """Median milliseconds per stage for a 640x480 desk frame against the top 3 candidates."""
    folder = data / "geometry" / "rgbd_desk"
    out = []
    for detector, path in maps.items():
        loc = localizer(path)
        ids = [int(i) for i in loc.db.column("id")]
        times = {"features": [], "matching": [], "pnp": []}
        for _ in range(repeats):
            for n in (2, 4):
                ms = loc.localize(bench.read_rgb(folder / "color" / f"{n}.png"), bench.RGBD_CAMERA, ids).milliseconds
                for k in times:
                    times[k].append(ms[k])
        med = {k: statistics.median(v) for k, v in times.items()}
        out.append({"detector": detector, **{f"ms_{k}": v for k, v in med.items()}, "ms_total": sum(med.values()),
                    "runs": len(times["pnp"])})
    return out


def _f(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def accuracy_table(rows) -> str:
    lines = ["| case | kind | inliers / 2D-3D | position err (m) | rotation err (deg) | GPS err (m) | sigma (m) | "
             "sigma (deg) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['kind']} | {r['inliers']} / {r['correspondences']} | "
                     f"{_f(r.get('position_error_m'))} | {_f(r.get('rotation_error_deg'), 2)} | "
                     f"{_f(r.get('gps_error_m'), 2)} | {_f(r['sigma_m'])} | {_f(r['sigma_deg'], 3)} |")
    return "\n".join(lines)


def cost_table(rows) -> str:
    lines = ["| map detector | features (ms) | matching (ms) | PnP (ms) | total (ms) | runs |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['detector']} | {r['ms_features']:.1f} | {r['ms_matching']:.1f} | {r['ms_pnp']:.1f} | "
                     f"{r['ms_total']:.1f} | {r['runs']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m geoloc_ros.geometry.metric_benchmark",
                                description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=bench.default_data())
    p.add_argument("--skip-sfm", action="store_true", help="leave out the Lund SfM map (minutes of CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write every figure here")
    args = p.parse_args(argv)
    import cv2

    from geoloc_ros.model import save_encoder
    from geoloc_ros.model.testing import tiny_encoder

    cv2.setRNGSeed(0)
    print(f"CPU: {cpu_name()}; OpenCV {cv2.__version__}; timings share the CPU with whatever else runs\n")
    results = {"cpu": cpu_name()}
    with tempfile.TemporaryDirectory(prefix="geoloc_metric_bench_") as work:
        tmp = Path(work)
        encoder = save_encoder(tiny_encoder(), tmp / "encoder")
        rows, sift_map = rgbd(args.data, encoder, tmp, "sift")
        orb_rows, orb_map = rgbd(args.data, encoder, tmp, "orb")
        rows += orb_rows + kitti(args.data, encoder, tmp)
        if not args.skip_sfm:
            lund_rows, info = lund(args.data, encoder, tmp)
            rows += lund_rows
            results["lund"] = info
            print(f"Lund SfM map: {info['map_keyframes']} keyframes, georegistered {info['georegistered']}, built in "
                  f"{info['build_s']:.0f} s; GPS noise (map photos' centres vs their GPS, RMS) "
                  f"{_f(info.get('gps_noise_rms_m'), 2)} m\n{info['log']}\n")
        results["accuracy"] = rows
        print(f"## accuracy\n\n{accuracy_table(rows)}\n")
        results["cost"] = cost(args.data, {"sift": sift_map, "orb": orb_map}, args.repeats)
        print(f"## cost per 640x480 frame (top 3 candidates)\n\n{cost_table(results['cost'])}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
