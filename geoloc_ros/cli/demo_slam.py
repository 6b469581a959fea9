"""`geoloc demo --slam`: geoloc_vpr and geoloc_pose_graph on real Nordland frames, with simulated wheel odometry,
in two situations (docs/slam.md "The SLAM demo"):

  prior_map  relocalization in a prebuilt map: `geoloc map build` makes a map of the summer frames of the
             stretch; the winter frames are driven through vpr_node (map_path, odom_topic) and pose_graph_node,
             whose prior-map candidates become absolute factors in the map frame;
  two_laps   loop closure in one session: lap 1 summer, an unimaged return leg (odometry only), lap 2 winter, with
             the session map alone (session_map:=true, no prior map).

Prints ATE (evo APE, translation, Umeyama-aligned) of the odometry and of the optimised ~/path, and for two_laps
the mean distance between the lap-1 and lap-2 poses of the same frame; saves <out>/<situation>.png and
<out>/summary.json. Every node parameter is at its default except those listed in the summary.
"""

from __future__ import annotations

from collections import Counter
import json
import os
from pathlib import Path

import numpy as np

from geoloc_ros.machine import cpu_model
from geoloc_ros.resources import resource

SITUATIONS = ("prior_map", "two_laps")
# The bundled encoder was trained on frames 00010..19200; 21610..24000 is the part of the validation stretch that
# no parameter was tuned on (loop-closure confidence is fitted on 19210..21600), and 240 places keep the demo short.
DEFAULT_FRAMES = "21610:24000"
TOLERANCE_M = 25.0  # a closure is right when its two ends lie within 25 m (the usual Nordland tolerance)
VPR_COMMON = ["consistency_mode:=sequence", "odom_topic:=odom"]  # one frame per keyframe spacing; the player's odom


def add_args(p):
    p.add_argument("--slam", action="store_true", help="the SLAM demo: geoloc_vpr + pose_graph_node on Nordland "
                                                       "frames with simulated odometry (docs/slam.md)")
    g = p.add_argument_group("--slam options")
    g.add_argument("--situation", choices=(*SITUATIONS, "both"), default="both")
    g.add_argument("--frames", default=DEFAULT_FRAMES, help=f"Nordland frame numbers START:STOP (default "
                                                           f"{DEFAULT_FRAMES}, held out from the encoder's training)")
    g.add_argument("--encoder", type=Path, default=None,
                   help="encoder checkpoint (default: the bundled maps/nordland_demo/encoder.safetensors)")
    g.add_argument("--data", type=Path, default=None, help="nordland64 folder (default: ../shared/data/nordland64)")
    g.add_argument("--scale-error", type=float, default=0.03, help="odometry scale error (default 0.03)")
    g.add_argument("--heading-sigma", type=float, default=0.005,
                   help="odometry heading random walk, rad per sqrt(m) (default 0.005)")
    g.add_argument("--seed", type=int, default=0, help="odometry noise seed (default 0)")


def run(args):
    from geoloc_ros.slam.simulate import OdometryDrift

    lo, _, hi = args.frames.partition(":")
    situations = SITUATIONS if args.situation == "both" else (args.situation,)
    summary = run_slam_demo(situations, frames=(int(lo), int(hi)), out_dir=args.out or Path("runs/demo_slam"),
                            encoder=args.encoder, data=args.data, device=args.device,
                            rate=args.rate or 8.0, config=args.config,
                            drift=OdometryDrift(args.scale_error, args.heading_sigma, args.seed))
    print_summary(summary)
    return 0


def run_slam_demo(situations=SITUATIONS, frames=(21610, 24000), out_dir="runs/demo_slam", encoder=None, data=None,
                  device="auto", rate=8.0, config=resource("config", "vpr.yaml"), drift=None, verbose=True) -> dict:
    """Both (or the named) situations end to end; returns the summary (also written to out_dir/summary.json)."""
    from geoloc_ros.model import nordland
    from geoloc_ros.slam.simulate import OdometryDrift

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    say = print if verbose else (lambda *a, **k: None)
    out_dir, drift = Path(out_dir), drift or OdometryDrift()
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = Path(encoder or resource("maps", "nordland_demo", "encoder.safetensors"))
    data = Path(data or nordland.default_root())
    summer = nordland.split(data, frames=frames, seasons=("summer",))
    winter = nordland.split(data, frames=frames, seasons=("winter",))
    if len(summer) < 10 or len(summer) != len(winter):
        raise SystemExit(f"geoloc demo --slam: frames {frames} select {len(summer)} summer and {len(winter)} winter "
                         f"images in {data}; need the same >= 10 of each")
    summary = {"frames": list(frames), "places": len(summer), "encoder": str(encoder), "replay_rate_hz": rate,
               "drift": {"scale_error": drift.scale_error, "heading_sigma_per_sqrt_m": drift.heading_sigma_per_sqrt_m,
                         "seed": drift.seed}, "cpu": cpu_model(), "situations": {}}
    for name in situations:
        say(f"geoloc demo --slam: {name}, Nordland frames {frames[0]}..{frames[1]} ({len(summer)} places)")
        result = _situation(name, summer, winter, encoder, data, device, rate, config, drift, out_dir, say)
        summary["situations"][name] = result
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return summary


def _situation(name, summer, winter, encoder, data, device, rate, config, drift, out_dir, say) -> dict:
    from geoloc_ros.slam import scenario
    from geoloc_ros.slam.drive import drive

    if name == "prior_map":
        map_dir = build_prior_map(encoder, data, summer, out_dir / "summer_map", device)
        trip = scenario.relocalization_trip(winter, map_keyframes(map_dir), drift)
        params = [f"map_path:=['{map_dir.resolve()}']"]
    else:
        trip = scenario.two_lap_trip(summer, winter, drift=drift)
        params = ["map_path:=['']", f"encoder_path:={encoder.resolve()}", "session_map:=true"]
    params += VPR_COMMON
    d = drive(trip, [*params, f"device:={device}"], out_dir / f"{name}_vpr_node.log", rate, config, say)
    result = evaluate(trip, d)
    result.update(vpr_node_params=params, pose_graph_params="defaults (config/pose_graph.yaml)",
                  plot=str(out_dir / f"{name}.png"))
    plot(trip, d, result, out_dir / f"{name}.png")
    return result


def build_prior_map(encoder: Path, data: Path, summer, out: Path, device: str) -> Path:
    """`geoloc map build` of the summer frames (a coordinate-free sequence 10 m apart, sliced by --range)."""
    from geoloc_ros.cli import main as geoloc_main
    from geoloc_ros.model.nordland import FRAME_SPACING_M

    names = sorted(p.name for p in (data / "summer").iterdir() if p.suffix == ".png")
    first = names.index(Path(summer[0].path).name)
    argv = ["map", "build", "--encoder", str(encoder), "--images", str(data / "summer"), "--sequence-spacing",
            f"{FRAME_SPACING_M:g}", "--range", f"{first}:{first + len(summer)}", "--name", out.name, "--out", str(out),
            "--device", device, "--quiet"]
    if (out / "manifest.json").is_file():
        argv.append("--force")  # a map this demo wrote before (--force replaces only a map)
    if geoloc_main(argv):
        raise SystemExit(f"geoloc demo --slam: `geoloc {' '.join(argv)}` failed")
    return out


def map_keyframes(map_dir: Path) -> list[tuple]:
    from geoloc_ros.mapping import MapDatabase

    return [(k.x, k.y, k.z, k.label) for k in MapDatabase.load(map_dir).keyframes()]


def evaluate(trip, d) -> dict:
    """ATE of odometry and ~/path on the steps the path holds; closure correctness; the lap gap for two laps."""
    from geoloc_ros.slam.evaluate import ate, same_place_distance

    steps = [i for i, s in enumerate(trip.steps) if s.stamp_ns in d.path]
    if len(steps) < 3:
        raise SystemExit(f"geoloc demo --slam: ~/path holds {len(steps)} of the {len(trip.steps)} steps")
    truth, odom = trip.truth()[steps], trip.odometry_positions()[steps]
    opt = np.array([d.path[trip.steps[i].stamp_ns] for i in steps])
    right, wrong, wrong_by_lap = _closures(trip, d)
    r = {"steps": len(trip.steps), "images": trip.images, "path_poses": len(steps), "frames_answered": d.answered,
         "ate_odometry_m": ate(truth, odom)["rmse"], "ate_pose_graph_m": ate(truth, opt)["rmse"],
         "loop_closures": right + wrong, "loop_closures_right": right,
         "loop_closure_precision": right / (right + wrong) if right + wrong else float("nan"),
         "wrong_closures_by_lap": wrong_by_lap,
         "graph": {k: d.graph_diag.get(k) for k in ("closures_accepted", "closures_rejected", "loop_closure_factors",
                                                    "absolute_factors", "aligned_to_map")},
         "drive_wall_s": d.wall_s}
    r["ate_ratio"] = r["ate_pose_graph_m"] / r["ate_odometry_m"]
    if trip.name == "prior_map":
        r["ate_pose_graph_map_frame_m"] = ate(truth, opt, align=False)["rmse"]
    pairs = [(steps.index(i), steps.index(j)) for i, j in trip.same_place_pairs() if i in steps and j in steps]
    if pairs:
        r["same_place_pairs"] = len(pairs)
        r["lap_gap_odometry_m"] = same_place_distance(odom, pairs)
        r["lap_gap_pose_graph_m"] = same_place_distance(opt, pairs)
        r["lap_gap_ratio"] = r["lap_gap_pose_graph_m"] / r["lap_gap_odometry_m"]
    return r


def _closures(trip, d) -> tuple[int, int, dict]:
    """Right and wrong ~/loop_closures (best candidate): its place within TOLERANCE_M of the query's truth; and
    the wrong ones by "query lap->keyframe lap" (session keyframes; "map" for a prior-map keyframe)."""
    from geoloc_ros.stamps import stamp_ns

    index, truth = trip.index_of_stamp(), trip.truth()
    right, wrong = 0, Counter()
    for stamp, msg in d.closures.items():
        if stamp not in index or not msg.candidates:
            continue
        c, step = msg.candidates[0], trip.steps[index[stamp]]
        j = index.get(stamp_ns(c.keyframe_stamp)) if c.map_name == "session" else None
        if c.map_name == "session":
            place = truth[j] if j is not None else np.full(3, np.inf)
        else:
            place = np.array([c.pose.position.x, c.pose.position.y, c.pose.position.z])
        if np.linalg.norm((truth[index[stamp]] - place)[:2]) <= TOLERANCE_M:
            right += 1
        else:
            wrong[f"{step.lap}->{trip.steps[j].lap if j is not None else 'map'}"] += 1
    return right, sum(wrong.values()), dict(wrong)


def plot(trip, d, r, path):
    from geoloc_ros.slam.evaluate import aligned
    from geoloc_ros.slam.plot import plot_trajectories

    steps = [i for i, s in enumerate(trip.steps) if s.stamp_ns in d.path]
    truth, odom = trip.truth()[steps], trip.odometry_positions()[steps]
    opt = np.array([d.path[trip.steps[i].stamp_ns] for i in steps])
    if trip.name == "prior_map":  # the graph is in the map frame; the odometry frame starts anywhere
        title = (f"prior map: ATE odometry {r['ate_odometry_m']:.1f} m, pose graph {r['ate_pose_graph_m']:.1f} m "
                 f"(aligned); odometry drawn aligned")
    else:
        opt = aligned(truth, opt)
        title = (f"two laps: lap gap odometry {r['lap_gap_odometry_m']:.1f} m, pose graph "
                 f"{r['lap_gap_pose_graph_m']:.1f} m; both drawn aligned")
    pairs = [(steps.index(i), steps.index(j)) for i, j in trip.same_place_pairs() if i in steps and j in steps]
    plot_trajectories(path, truth, aligned(truth, odom), opt, title, closures=pairs[::10])


def print_summary(s: dict):
    print(f"\ngeoloc demo --slam summary: Nordland frames {s['frames'][0]}..{s['frames'][1]} ({s['places']} places, "
          f"10 m apart, synthetic line), odometry drift {s['drift']['scale_error']:.0%} scale + "
          f"{s['drift']['heading_sigma_per_sqrt_m']} rad/sqrt(m) heading, CPU {s['cpu']}")
    for name, r in s["situations"].items():
        print(f"  {name:9s} ATE (evo APE, aligned) odometry {r['ate_odometry_m']:.1f} m -> pose graph "
              f"{r['ate_pose_graph_m']:.1f} m (x{r['ate_ratio']:.2f}); ~/loop_closures {r['loop_closures']}, "
              f"precision {r['loop_closure_precision']:.1%}; graph accepted {r['graph']['closures_accepted']}, "
              f"rejected {r['graph']['closures_rejected']}")
        if "lap_gap_ratio" in r:
            print(f"  {'':9s} same place lap 1 vs lap 2: odometry {r['lap_gap_odometry_m']:.1f} m -> pose graph "
                  f"{r['lap_gap_pose_graph_m']:.1f} m (x{r['lap_gap_ratio']:.2f}, {r['same_place_pairs']} places)")
        print(f"  {'':9s} plot {r['plot']}")
