"""Metric localization accuracy and cost on ../shared/data/geometry, through `geoloc map build` and the localizer.

    python -m geoloc_ros.geometry.metric_benchmark [--data DIR] [--cases rgbd,kitti,lund,cost] [--repeats N]
                                                   [--json OUT]

    rgbd_desk  a map of frames 1, 3, 5 with depth (`--poses` + `--depth`), frames 2 and 4 localized
    kitti06    a map of frames 12 and 13 triangulated from poses.txt (`--poses`), frame 14 localized
    lund       an SfM map (`--sfm`) of 24 of the 29 photos georegistered by EXIF GPS; 01..29 but 03, 09, 15, 21, 27,
               which are localized against the 3 keyframes nearest their own GPS fix (the tiny random encoder the
               benchmark builds maps with cannot retrieve), with the camera the reconstruction calibrated; their
               error is measured against their GPS, beside the GPS's own noise as the map photos show it (RMS of
               their centres against their GPS after the fit)
    cost       features, matching and PnP per 640x480 desk frame against the top 3 candidates, for SIFT and ORB
               maps (median of --repeats runs per frame)
    posegraph  the pose graph on a simulated drifting lap with a prior-map closure every 10 m: mean position error
               with 6-DoF priors (metric closures) and with position-only factors at the keyframes, same run

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
        # the same phone took every photo: the camera the reconstruction calibrated (EXIF gives only a prior)
        result = loc.localize(bench.read_rgb(path), db.local_features.get(near[0])[1], near)
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


# -- the pose graph with metric prior-map closures (simulated; test/test_metric_pose_graph.py asserts on it) --------

LAP_RADIUS_M = 30.0


def drifting_lap(seed: int = 0):
    """(truth, odometry) base poses (gtsam.Pose3) of one lap of a circle at 1 m steps: odometry with a 3 % scale
    error and a heading random walk (0.006 rad per step, biased 0.0005 rad), inside the default noise model."""
    import gtsam

    rng = np.random.default_rng(seed)
    n = int(2 * math.pi * LAP_RADIUS_M)
    truth = [gtsam.Pose3(gtsam.Rot3.Yaw(k / LAP_RADIUS_M + math.pi / 2),
                         [LAP_RADIUS_M * math.cos(k / LAP_RADIUS_M), LAP_RADIUS_M * math.sin(k / LAP_RADIUS_M), 0.0])
             for k in range(n)]
    truth = [truth[0].inverse().compose(t) for t in truth]
    odom = [truth[0]]
    for k in range(1, n):
        step = truth[k - 1].between(truth[k])
        drift = gtsam.Rot3.Yaw(rng.normal(0.0005, 0.006))
        odom.append(odom[-1].compose(gtsam.Pose3(drift.compose(step.rotation()), step.translation() * 1.03)))
    return truth, odom


def metric_closure(map_from_base, rng, sigma_m: float = 0.02, sigma_rad: float = 0.003):
    """(keyframe body pose in the map, measured query-in-keyframe camera pose, ROS covariance) for a keyframe up to
    4 m from the query (default extrinsic on both), measured with `sigma_m` / `sigma_rad` noise."""
    import gtsam

    from geoloc_ros.slam.graph import BODY_TO_OPTICAL
    from geoloc_ros.slam.params import default_extrinsic

    e = default_extrinsic()
    query_cam = map_from_base.compose(e)
    keyframe_cam = query_cam.compose(gtsam.Pose3(gtsam.Rot3.Yaw(rng.normal(0, 0.1)),
                                                 [rng.uniform(-1, 1), 0.0, rng.uniform(-4, 4)]))
    rel = keyframe_cam.inverse().compose(query_cam)
    noisy = rel.compose(gtsam.Pose3.Expmap(np.r_[rng.normal(0, sigma_rad, 3), rng.normal(0, sigma_m, 3)]))
    cov = np.diag([sigma_m ** 2] * 3 + [sigma_rad ** 2] * 3).ravel()
    return keyframe_cam.compose(BODY_TO_OPTICAL.inverse()), noisy, cov


def pose_graph_comparison(seed: int = 3, every: int = 10) -> dict:
    """The same drifting lap and closures into two graphs: 6-DoF priors vs position-only factors at the keyframes."""
    import gtsam

    from geoloc_ros.slam import PoseGraph

    map_from_odom = gtsam.Pose3(gtsam.Rot3.Yaw(1.0), [500.0, 300.0, 0.0])
    truth, odom = drifting_lap()
    metric, position_only = PoseGraph(), PoseGraph()
    rng, verdicts = np.random.default_rng(seed), []
    for k in range(len(odom)):
        stamp = 1_700_000_000 * 10**9 + k * 100_000_000
        metric.add_odometry(stamp, odom[k])
        position_only.add_odometry(stamp, odom[k])
        if k % every == every // 2:
            kf_body, rel, cov = metric_closure(map_from_odom.compose(truth[k]), rng)
            verdicts.append(metric.add_prior_map_pose(stamp, kf_body, rel, cov))
            position_only.add_absolute(stamp, kf_body.translation(), position_only.prior_map_covariance())
    want = np.array([map_from_odom.compose(t).translation() for t in truth])

    def err(g):
        return float(np.linalg.norm(np.array([p.translation() for _, p in g.poses()]) - want, axis=1).mean())

    return {"lap_m": len(odom), "closures": len(verdicts), "verdicts": verdicts, "pose_priors": metric.pose_priors,
            "aligned": metric.aligned and position_only.aligned, "metric_mean_error_m": err(metric),
            "position_only_mean_error_m": err(position_only)}


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
    p.add_argument("--cases", default="rgbd,kitti,lund,cost,posegraph",
                   help="which parts to run (default all; lund is minutes of CPU)")
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
        cases, rows = set(args.cases.split(",")), []
        if cases & {"rgbd", "cost"}:
            sift_rows, sift_map = rgbd(args.data, encoder, tmp, "sift")
            orb_rows, orb_map = rgbd(args.data, encoder, tmp, "orb")
            rows += sift_rows + orb_rows if "rgbd" in cases else []
        if "kitti" in cases:
            rows += kitti(args.data, encoder, tmp)
        if "lund" in cases:
            lund_rows, info = lund(args.data, encoder, tmp)
            rows += lund_rows
            results["lund"] = info
            print(f"Lund SfM map: {info['map_keyframes']} keyframes, georegistered {info['georegistered']}, built in "
                  f"{info['build_s']:.0f} s; GPS noise (map photos' centres vs their GPS, RMS) "
                  f"{_f(info.get('gps_noise_rms_m'), 2)} m\n{info['log']}\n")
        results["accuracy"] = rows
        print(f"## accuracy\n\n{accuracy_table(rows)}\n")
        if "cost" in cases:
            results["cost"] = cost(args.data, {"sift": sift_map, "orb": orb_map}, args.repeats)
            print(f"## cost per 640x480 frame (top 3 candidates)\n\n{cost_table(results['cost'])}\n")
        if "posegraph" in cases:
            pg = pose_graph_comparison()
            results["posegraph"] = {k: v for k, v in pg.items() if k != "verdicts"}
            print(f"## pose graph: {pg['lap_m']} m drifting lap, {pg['closures']} prior-map closures\n\n"
                  f"mean position error: {pg['metric_mean_error_m']:.3f} m with 6-DoF priors "
                  f"({pg['pose_priors']} factors), {pg['position_only_mean_error_m']:.3f} m with position-only "
                  f"factors at the keyframes")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
