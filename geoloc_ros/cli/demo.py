"""`geoloc demo`: the bundled demo. Starts the geoloc_vpr node (a `vpr_node` process) on maps/nordland_demo,
replays the bundled winter bag into it through DDS at camera rate, and prints what came back against the bag's
ground truth: Recall@1 of ~/place_recognition and ~/loop_closures, GeoPose error, latency, dropped frames. Saves a
plot of the matches along the route and a JSON summary (default runs/demo/). No network, no GPU needed.

Ground truth: Nordland frames lie on a straight line 10 m apart (synthetic positions), and the bag's /gnss/fix
carries each winter frame's position; a candidate is correct when its keyframe lies within 25 m of it (about
+-2 frames, the usual Nordland tolerance).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import time

import numpy as np

from geoloc_ros.cli import demo_slam
from geoloc_ros.resources import resource

TOLERANCE_M = 25.0
# The Nordland bag has one frame per 10 m, the map one keyframe per 10 m: the stream sequence matching expects.
DEMO_PARAMS = ["consistency_mode:=sequence"]


def add_parser(sub):
    p = sub.add_parser("demo", help="replay the bundled winter bag into the node and report recall, error, latency",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--map", type=Path, default=None, help="map directory (default: the bundled maps/nordland_demo)")
    p.add_argument("--bag", type=Path, default=None,
                   help="rosbag2 to replay (default: the bag inside the map directory, see docs/maps.md)")
    p.add_argument("--image-topic", default="/camera/image_raw", help="image topic in the bag")
    p.add_argument("--fix-topic", default="/gnss/fix", help="ground-truth NavSatFix topic in the bag")
    p.add_argument("--rate", type=float, default=None,
                   help="replay rate in frames/s (default: the bag's own timing, i.e. camera rate)")
    p.add_argument("--device", default="auto", help="node device: auto, cpu, cuda")
    p.add_argument("--config", type=Path, default=resource("config", "vpr.yaml"),
                   help="node parameter file (default: the shipped config/vpr.yaml)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the plot and summary.json (default runs/demo; with --slam runs/demo_slam)")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N frames")
    p.add_argument("--param", action="append", default=None, metavar="NAME:=VALUE",
                   help="node parameter override, repeatable (default: consistency_mode:=sequence, since the bag "
                        "holds one frame per map keyframe spacing)")
    demo_slam.add_args(p)
    p.set_defaults(func=run)


def find_bag(map_dir: Path) -> Path:
    """The rosbag2 shipped with a map: a sub-directory holding metadata.yaml (or an .mcap / .db3 file)."""
    found = sorted(p.parent for p in map_dir.rglob("metadata.yaml"))
    if not found:
        found = sorted(map_dir.rglob("*.mcap")) + sorted(map_dir.rglob("*.db3"))
    if not found:
        raise SystemExit(f"geoloc demo: no rosbag2 in {map_dir} (give one with --bag)")
    return found[0]


def run(args):
    if args.slam:
        return demo_slam.run(args)
    map_dir = args.map or resource("maps", "nordland_demo")
    if not (map_dir / "manifest.json").is_file():
        raise SystemExit(f"geoloc demo: {map_dir} is not a built map (no manifest.json); build it with `geoloc map` "
                         f"or pass --map")
    bag = args.bag or find_bag(map_dir)
    summary = run_demo(map_dir, bag, out_dir=args.out or Path("runs/demo"), rate=args.rate, device=args.device,
                       image_topic=args.image_topic, fix_topic=args.fix_topic, limit=args.limit, config=args.config,
                       extra_params=args.param if args.param is not None else DEMO_PARAMS)
    print_summary(summary)
    return 0


def run_demo(map_dir, bag, out_dir="runs/demo", rate=None, device="auto", image_topic="/camera/image_raw",
             fix_topic="/gnss/fix", limit=None, verbose=True, config=resource("config", "vpr.yaml"),
             extra_params=None) -> dict:
    """Run the demo end to end; returns the summary dict (also written to out_dir/summary.json)."""
    from geoloc_ros.replay import node_process, read_bag

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)
    frames = read_bag(bag, image_topic, fix_topic)[:limit]
    if not frames:
        raise SystemExit(f"geoloc demo: {bag} holds no {image_topic} messages")
    if rate is None:
        gaps = np.diff([f.stamp_ns for f in frames]) / 1e9
        rate = 1.0 / float(np.median(gaps)) if len(gaps) and np.median(gaps) > 0 else 10.0
    params = [f"map_path:=['{Path(map_dir).resolve()}']", f"device:={device}", *(extra_params or [])]
    node_log = out_dir / "vpr_node.log"
    say(f"geoloc demo: map {map_dir}, bag {bag} ({len(frames)} frames, replayed at {rate:.1f} Hz)")
    say("  starting: -m geoloc_ros.vpr_node --ros-args ...")
    # The shipped parameters (config), then the map, topic and device of this run.
    with node_process(params, node_log, name="geoloc_demo", params_file=config) as h:
        t0 = time.monotonic()
        while not h.ready():
            if h.process.poll() is not None or time.monotonic() - t0 > 120:
                raise SystemExit(f"geoloc demo: the node did not start (see {node_log}):\n"
                                 + node_log.read_text()[-3000:])
            time.sleep(0.1)
        say(f"  node active after {time.monotonic() - t0:.1f} s; replaying ...")
        h.play([f.image for f in frames], rate)
        h.wait_quiet(quiet_s=2.0, timeout=60, expect=len(frames))
        time.sleep(1.2)  # one more diagnostics period, so its counters include the last frames
        diag = h.diag_values()
    summary = evaluate(frames, h.data, diag, rate)
    summary.update(map=str(map_dir), bag=str(bag), plot=str(out_dir / "demo.png"), node_params=list(extra_params or []))
    plot(frames, h.data, summary, out_dir / "demo.png")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return summary


def _route(frames):
    """UTM of each frame's ground truth, and the along-track distance of any point (projection on the line)."""
    from geoloc_ros.geodesy import to_utm

    lat = np.array([f.fix[0] for f in frames])
    lon = np.array([f.fix[1] for f in frames])
    e, n, zone = to_utm(lat, lon)
    e, n = np.asarray(e), np.asarray(n)
    origin = np.array([e[0], n[0]])
    d = np.array([e[-1], n[-1]]) - origin
    d = d / (np.linalg.norm(d) or 1.0)

    def along(lat2, lon2):
        ee, nn, _ = to_utm(np.atleast_1d(lat2), np.atleast_1d(lon2), zone)
        return (np.stack([ee, nn], 1) - origin) @ d

    def dist(lat2, lon2, i):
        ee, nn, _ = to_utm(lat2, lon2, zone)
        return float(np.hypot(ee - e[i], nn - n[i]))

    return along, dist


def evaluate(frames, data, diag, rate) -> dict:
    frames = [f for f in frames if f.fix is not None]
    _, dist = _route(frames)
    pr, lc, geo = (data.results[k] for k in ("place_recognition", "loop_closures", "geopose"))
    answered = [i for i, f in enumerate(frames) if f.stamp_ns in pr]
    with_cands = [i for i in answered if pr[frames[i].stamp_ns].candidates]

    def correct(msg, i):
        c = msg.candidates[0]
        return dist(c.latitude, c.longitude, i) <= TOLERANCE_M

    pr_hits = sum(correct(pr[frames[i].stamp_ns], i) for i in with_cands)
    lc_idx = [i for i in answered if frames[i].stamp_ns in lc]
    lc_hits = sum(correct(lc[frames[i].stamp_ns], i) for i in lc_idx)
    geo_err = np.array([dist(geo[frames[i].stamp_ns].pose.pose.position.latitude,
                             geo[frames[i].stamp_ns].pose.pose.position.longitude, i)
                        for i in answered if frames[i].stamp_ns in geo])
    lat = data.latencies_ms()
    rejected = int(diag.get("frames_rejected", 0) or 0)
    n = len(answered)

    def pct(a, q):
        return float(np.percentile(a, q)) if len(a) else float("nan")

    return {
        "frames_sent": len(frames), "frames_answered": n, "frames_rejected": rejected,
        "frames_dropped": int(diag.get("frames_dropped", 0) or 0), "replay_rate_hz": round(rate, 2),
        "recall_at_1": pr_hits / n if n else float("nan"),
        "loop_closures": len(lc_idx), "loop_closure_precision": lc_hits / len(lc_idx) if lc_idx else float("nan"),
        "loop_closure_recall": lc_hits / n if n else float("nan"),
        "geopose_count": int(len(geo_err)), "geopose_error_m_p50": pct(geo_err, 50),
        "geopose_error_m_p95": pct(geo_err, 95),
        "latency_ms_p50": pct(lat, 50), "latency_ms_p95": pct(lat, 95),
        "encode_ms_p50": float(diag.get("encode_ms_p50", "nan")),
        "search_ms_p50": float(diag.get("search_ms_p50", "nan")),
        "device": diag.get("device", "?"), "tolerance_m": TOLERANCE_M,
    }


def print_summary(s: dict):
    config = " ".join(s["node_params"]) or "shipped config"
    print(f"""
geoloc demo summary ({s['frames_sent']} bag frames against the map, correct = within {s['tolerance_m']:.0f} m)
  ~/place_recognition  Recall@1 {s['recall_at_1']:.1%} of {s['frames_answered']} answered frames
  ~/loop_closures      ({config}) {s['loop_closures']} published, precision {s['loop_closure_precision']:.1%}, \
recall {s['loop_closure_recall']:.1%}
  ~/geopose            {s['geopose_count']} poses, error p50 {s['geopose_error_m_p50']:.1f} m, \
p95 {s['geopose_error_m_p95']:.1f} m
  latency              publish -> ~/place_recognition p50 {s['latency_ms_p50']:.1f} ms, \
p95 {s['latency_ms_p95']:.1f} ms (encode p50 {s['encode_ms_p50']:.1f} ms, search {s['search_ms_p50']:.2f} ms, \
{s['device']})
  frames               {s['frames_dropped']} dropped (newest wins), {s['frames_rejected']} rejected (blank or bad), \
replayed at {s['replay_rate_hz']} Hz
  plot                 {s['plot']}""")


def plot(frames, data, summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    frames = [f for f in frames if f.fix is not None]
    along, dist = _route(frames)
    pr, lc, geo = (data.results[k] for k in ("place_recognition", "loop_closures", "geopose"))
    q = along([f.fix[0] for f in frames], [f.fix[1] for f in frames])
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for i, f in enumerate(frames):
        m = pr.get(f.stamp_ns)
        if m is not None and m.candidates:
            c = m.candidates[0]
            ok = dist(c.latitude, c.longitude, i) <= TOLERANCE_M
            ax.plot(q[i], along(c.latitude, c.longitude)[0], ".", color="tab:green" if ok else "tab:red", ms=3)
        m = lc.get(f.stamp_ns)
        if m is not None and m.candidates:  # where the loop closure itself points
            c = m.candidates[0]
            ok = dist(c.latitude, c.longitude, i) <= TOLERANCE_M
            ax.plot(q[i], along(c.latitude, c.longitude)[0], "o", mfc="none", ms=6, mew=0.7,
                    color="tab:blue" if ok else "tab:orange")
    ax.plot(q, q, "-", color="grey", lw=0.8, label="ground truth")
    ax.plot([], [], ".", color="tab:green", label="~/place_recognition top-1 correct (<= 25 m)")
    ax.plot([], [], ".", color="tab:red", label="~/place_recognition top-1 wrong")
    ax.plot([], [], "o", mfc="none", color="tab:blue", label="~/loop_closures correct")
    ax.plot([], [], "o", mfc="none", color="tab:orange", label="~/loop_closures wrong")
    ax.set_ylabel("matched summer keyframe, metres along the route")
    ax.set_title(f"geoloc demo: ~/place_recognition Recall@1 {summary['recall_at_1']:.1%}, "
                 f"~/loop_closures precision {summary['loop_closure_precision']:.1%}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    gi = [i for i, f in enumerate(frames) if f.stamp_ns in geo]
    ax2.semilogy([q[i] for i in gi], [max(dist(geo[frames[i].stamp_ns].pose.pose.position.latitude,
                                               geo[frames[i].stamp_ns].pose.pose.position.longitude, i), 0.1)
                                      for i in gi], ".", ms=3)
    ax2.axhline(TOLERANCE_M, color="grey", lw=0.8, ls="--")
    ax2.set_ylabel("GeoPose error (m)")
    ax2.set_xlabel("winter frame, metres along the route (synthetic: frames 10 m apart)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return np.asarray(q)
