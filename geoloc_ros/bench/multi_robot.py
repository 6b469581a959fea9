"""Three robots, one map, over real DDS on Nordland frames: three vpr_node processes exchange keyframes
(robot_id a, b, c; peer_keyframe_topics the other two; session map only, no prior map) and one team
pose_graph_node (robots [a, b, c]) joins their trajectories from their inter-robot loop closures.

    python -m geoloc_ros.bench.multi_robot [--a summer:12010:12600] [--b winter:12310:12900] \\
        [--c summer:12710:13300] [--rate 2] [--out docs/benchmarks/multi_robot] [--restart ROBOT:STEP]
    python -m geoloc_ros.bench.multi_robot --offline [--lag 1] [--set NAME=VALUE ...]

Robot a drives the summer frames of one stretch, b the winter frames of an overlapping stretch, c the summer frames
of a third stretch that overlaps b's only. Each has its own simulated wheel odometry (geoloc_ros.slam.simulate: 3 %
scale error, heading random walk 0.005 rad/sqrt(m), its own seed), starting at the identity in its own odom frame;
positions are synthetic (Nordland has no GPS: frames on a straight line 10 m apart, docs/slam.md). All three drive at
once, one 10 m step per second of stamp time (the stamps of geoloc demo --slam), `--rate` steps per wall second:
per step odometry on <ns>/odom, then the image. The frames lie in the encoder's training range (the brief keeps
19210..24000, where the recipe was tuned, out of it), so recognition here is easier than on held-out frames.

Measured: each robot's ATE (evo APE, translation RMSE) after ONE rigid alignment of the whole team's estimate to the
truth, against its odometry's under the same single team alignment (its frames start at each robot's own origin) and
against its odometry aligned on its own (the best odometry can do); the precision of the inter-robot closures the
vpr_nodes published (best candidate within 25 m of the query's place); what the back end accepted. Prints the
figures and writes summary.json and team.png under --out. `--restart` kills a robot's vpr_node mid-run and starts it
again; `--offline` runs the vpr_nodes' part alone, without DDS (`offline`), and prints the inter-robot closures.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from dataclasses import dataclass, field
import json
import os
from pathlib import Path
import subprocess
import sys
import threading
import time

import numpy as np

from geoloc_ros.machine import cpu_model
from geoloc_ros.resources import resource

ROBOTS = ("a", "b", "c")
DEFAULT_STRETCHES = {"a": "summer:12010:12600", "b": "winter:12310:12900", "c": "summer:12710:13300"}
TOLERANCE_M = 25.0  # a closure is right when its two places lie within 25 m (the usual Nordland tolerance)
STEP_S = 1.0  # stamp time per 10 m step
START_NS = 1_700_000_000 * 10**9
VPR_PARAMS = ["map_path:=['']", "session_map:=true", "odom_topic:=odom", "consistency_mode:=sequence"]


@dataclass
class Robot:
    name: str
    season: str
    frames: tuple
    records: list = field(default_factory=list)  # GeoImage per step
    truth: np.ndarray = None  # N x 3, metres
    odometry: list = field(default_factory=list)  # gtsam.Pose3 per step, own odom frame
    stamps: list = field(default_factory=list)


def robots_of(stretches: dict, data: Path, drift_seed: int = 0) -> dict[str, Robot]:
    from geoloc_ros.model import nordland
    from geoloc_ros.slam.simulate import OdometryDrift, simulate_odometry, truth_poses

    out = {}
    for k, name in enumerate(ROBOTS):
        season, lo, hi = stretches[name].split(":")
        recs = nordland.split(data, frames=(int(lo), int(hi)), seasons=(season,))
        if len(recs) < 5:
            raise SystemExit(f"multi_robot: {stretches[name]} selects {len(recs)} frames in {data}")
        truth = np.array([[0.0, nordland.frame_number(r.path) / 10 * nordland.FRAME_SPACING_M, 0.0] for r in recs])
        odom = simulate_odometry(truth_poses(truth), OdometryDrift(seed=drift_seed + k))
        out[name] = Robot(name, season, (int(lo), int(hi)), recs, truth, odom,
                          [START_NS + int(i * STEP_S * 1e9) for i in range(len(recs))])
    return out


class TeamListener:
    """The team back end's ~/<robot>/path and /diagnostics, and each vpr_node's /diagnostics (by its robot_id),
    in one harness's context."""

    def __init__(self, node, backend_ns: str):
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import Path as PathMsg
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        from geoloc_ros.stamps import stamp_ns

        self._stamp_ns, self.lock = stamp_ns, threading.Lock()
        self.paths, self.diag, self.vpr_diag = {}, {}, {}
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        for r in ROBOTS:
            node.create_subscription(PathMsg, f"{backend_ns}/geoloc_pose_graph/{r}/path",
                                     lambda m, r=r: self._on_path(r, m), latched)
        name = f"{backend_ns}/geoloc_pose_graph: pose graph"
        node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self._on_diag(m, name), 10)

    def _on_path(self, robot, msg):
        with self.lock:
            self.paths[robot] = {self._stamp_ns(p.header.stamp): np.array(
                [p.pose.position.x, p.pose.position.y, p.pose.position.z]) for p in msg.poses}

    def _on_diag(self, msg, name):
        with self.lock:
            for st in msg.status:
                values = {kv.key: kv.value for kv in st.values}
                if st.name == name:
                    self.diag = values
                elif values.get("robot_id") in ROBOTS:  # every vpr_node's status has one name: geoloc_vpr's
                    self.vpr_diag[values["robot_id"]] = values

    def settled(self, quiet_s: float = 3.0, timeout: float = 60.0):
        """Until the diagnostics and the paths stopped changing for quiet_s."""
        last, since, deadline = None, time.monotonic(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                now = (dict(self.diag), {r: len(p) for r, p in self.paths.items()})
            if now != last:
                last, since = now, time.monotonic()
            elif now[0] and time.monotonic() - since > quiet_s:
                return
            time.sleep(0.1)


def run(stretches=None, out_dir="docs/benchmarks/multi_robot", rate=2.0, device="cpu", data=None, encoder=None,
        config=None, say=print, restart: tuple | None = None) -> dict:
    """The demo (module docstring). `restart` (robot, step): that robot's vpr_node process is killed (SIGKILL)
    before the step and started again (a new session, keyframe ids from 0); the drive waits for it, while the
    other vpr_nodes and the back end keep running. Its odometry goes on: the robot did not move."""
    from geoloc_ros.datasets import read_image
    from geoloc_ros.model import nordland
    from geoloc_ros.replay import image_message, node_process, wait_for
    from geoloc_ros.slam.drive import odometry_message

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stretches = {**DEFAULT_STRETCHES, **(stretches or {})}
    encoder = Path(encoder or resource("maps", "nordland_demo", "encoder.safetensors")).resolve()
    config = config or resource("config", "vpr.yaml")
    robots = robots_of(stretches, Path(data or nordland.default_root()))
    pid = os.getpid()
    ns = {r: f"/mr_{r}_{pid}" for r in ROBOTS}  # node_process's namespace for name mr_<r>
    backend_ns = f"/mr_team_{pid}"
    t_start = time.monotonic()
    restarted, before_restart = restart[0] if restart else None, {}
    keeper = next(r for r in ROBOTS if r != restarted)  # its harness node also carries the odometry and listener
    with ExitStack() as stack:
        harness, params, own = {}, {}, {}
        for r in ROBOTS:
            peers = ", ".join(f"'{ns[o]}/geoloc_vpr/keyframes'" for o in ROBOTS if o != r)
            params[r] = [*VPR_PARAMS, f"encoder_path:={encoder}", f"robot_id:={r}",
                         f"peer_keyframe_topics:=[{peers}]", f"device:={device}"]
            own[r] = stack.enter_context(ExitStack())  # closes one robot's node alone when it restarts
            harness[r] = own[r].enter_context(node_process(params[r], out_dir / f"vpr_{r}.log", name=f"mr_{r}",
                                                           params_file=config))
        log = stack.enter_context(open(out_dir / "pose_graph.log", "w"))
        backend = subprocess.Popen(
            [sys.executable, "-m", "geoloc_ros.slam.pose_graph_node", "--ros-args", "-r", f"__ns:={backend_ns}",
             "-p", f"robots:=[{', '.join(ROBOTS)}]",
             "-p", f"robot_odom_topics:=[{', '.join(f'{ns[r]}/odom' for r in ROBOTS)}]",
             "-p", f"robot_loop_closure_topics:=[{', '.join(f'{ns[r]}/geoloc_vpr/loop_closures' for r in ROBOTS)}]",
             "-p", "diagnostics_period_s:=0.5", "-p", f"g2o_path:={(out_dir / 'team.g2o').resolve()}"],
            stdout=log, stderr=subprocess.STDOUT)
        stack.callback(lambda: (backend.terminate(), backend.wait(timeout=30)))
        from nav_msgs.msg import Odometry
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        reliable = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        odom_pub = {r: harness[keeper].node.create_publisher(Odometry, f"{ns[r]}/odom", reliable) for r in ROBOTS}
        listener = TeamListener(harness[keeper].node, backend_ns)
        if not wait_for(lambda: all(harness[r].ready() and odom_pub[r].get_subscription_count() >= 2 for r in ROBOTS),
                        240):
            raise SystemExit(f"multi_robot: the nodes did not start (logs in {out_dir})")
        time.sleep(1.0)  # the peers' keyframe subscriptions match too
        startup_s = time.monotonic() - t_start
        steps = max(len(robots[r].records) for r in ROBOTS)
        say(f"multi_robot: nodes up after {startup_s:.0f} s; driving {steps} steps of 3 robots at {rate:g} Hz")
        t0, sent = time.monotonic(), {r: 0 for r in ROBOTS}
        due = time.perf_counter()
        for k in range(steps):
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if restart and k == restart[1]:
                harness[restarted], before_restart = _restart(harness[restarted], own[restarted],
                                                              lambda: node_process(params[restarted],
                                                                                   out_dir / f"vpr_{restarted}_2.log",
                                                                                   name=f"mr_{restarted}",
                                                                                   params_file=config))
                say(f"multi_robot: {restarted}'s vpr_node killed and started again before step {k}")
                due = time.perf_counter()
            for r in ROBOTS:
                if k < len(robots[r].records):
                    odom_pub[r].publish(odometry_message(robots[r].stamps[k], robots[r].odometry[k]))
            time.sleep(0.005)  # the odometry first, so each session keyframe gets this step's pose
            for r in ROBOTS:
                if k < len(robots[r].records):
                    rgb = np.asarray(read_image(robots[r].records[k].path))
                    harness[r].publish(image_message(rgb, robots[r].stamps[k]))
                    sent[r] += 1
            due += 1.0 / rate
        for r in ROBOTS:
            harness[r].wait_quiet(quiet_s=3.0, timeout=60)
        listener.settled()
        drive_s = time.monotonic() - t0
        with listener.lock:
            paths, diag = dict(listener.paths), dict(listener.diag)
        closures = {r: dict(harness[r].data.results["loop_closures"]) for r in ROBOTS}
        if restarted:
            closures[restarted] = {**before_restart, **closures[restarted]}
        with listener.lock:
            peer_diag = {r: {k: v for k, v in listener.vpr_diag.get(r, {}).items() if k.startswith("peer_")}
                         for r in ROBOTS}
        saved = save_graph(harness[keeper].node, backend_ns)
        answered = {r: len(harness[r].data.received) for r in ROBOTS}
        alive = backend.poll() is None
    summary = evaluate(robots, paths, closures)
    summary.update(accepted_closures(robots, paths, out_dir / "team.g2o") if saved else {"graph_saved": False})
    summary.update(restart={"robot": restarted, "before_step": restart[1]} if restart else None,
                   peer_diagnostics=peer_diag, stretches=stretches, rate_hz=rate, images_sent=sent,
                   frames_answered=answered, backend_alive=alive,
                   backend={k: v for k, v in diag.items() if not k.startswith("last_")},
                   startup_s=startup_s, drive_s=drive_s, wall_s=time.monotonic() - t_start, cpu=cpu_model(),
                   encoder=str(encoder), vpr_node_params=VPR_PARAMS + ["robot_id", "peer_keyframe_topics"],
                   pose_graph_params="defaults (config/pose_graph.yaml) + robots, robot_*_topics",
                   command="python -m geoloc_ros.bench.multi_robot " + " ".join(
                       f"--{r} {stretches[r]}" for r in ROBOTS) + f" --rate {rate:g} --out {out_dir}"
                   + (f" --restart {restart[0]}:{restart[1]}" if restart else ""))
    plot(robots, paths, summary, out_dir / "team.png")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return summary


def _restart(harness, own: ExitStack, start):
    """Kill a robot's vpr_node, close its harness, start it again (`start()`, a node_process) and wait until it is
    up and its peers' keyframe subscriptions matched: (the new harness, the old one's loop closures)."""
    from geoloc_ros.replay import wait_for

    before = dict(harness.data.results["loop_closures"])
    harness.process.kill()
    harness.process.wait(timeout=30)
    own.close()
    fresh = own.enter_context(start())
    if not wait_for(fresh.ready, 240):
        raise SystemExit("multi_robot: the restarted vpr_node did not come up")
    time.sleep(1.0)
    return fresh, before


def offline(stretches=None, data=None, lag: int = 1, encoder=None, **config) -> dict:
    """The vpr_nodes' part of the demo without DDS or a back end: three ROS-free Localizers (session map, peers, the
    demo's parameters; `config`: LocalizerConfig fields over them), one step at a time, each robot's session
    keyframes handed to its peers `lag` steps later (0: at once, so that robots later in ROBOTS see it in the same
    step). The inter-robot closures they
    publish: {"published": [(robot, step, owner, owner's step)], "right": those within TOLERANCE_M}."""
    from geoloc_ros.datasets import read_image
    from geoloc_ros.localization import Frame, Localizer, SessionMap, load_snapshot
    from geoloc_ros.localization.config import LocalizerConfig
    from geoloc_ros.localization.peers import Expectation, PeerKeyframe, PeerMap, PeerStore
    from geoloc_ros.model import nordland

    robots = robots_of({**DEFAULT_STRETCHES, **(stretches or {})}, Path(data or nordland.default_root()))
    encoder = Path(encoder or resource("maps", "nordland_demo", "encoder.safetensors")).resolve()
    snap = load_snapshot(LocalizerConfig(encoder_path=str(encoder), device="cpu", consistency_mode="sequence",
                                         **config))
    dim = snap.encoder.dim
    loc = {r: Localizer(snap, SessionMap(snap.encoder), None,
                        PeerStore(Expectation(r, r, dim, snap.encoder.fingerprint), 10000)) for r in ROBOTS}
    step_of = {r: {s: k for k, s in enumerate(robots[r].stamps)} for r in ROBOTS}
    published, made = [], []  # made: (step, owner, PeerKeyframe, descriptor)

    def hand_over(owner, kf, desc):
        for r in ROBOTS:
            if r != owner:
                loc[r].peers.maps.setdefault(owner, PeerMap(owner, dim, 10000)).add(kf, desc)

    for k in range(max(len(robots[r].records) for r in ROBOTS)):
        for _, owner, kf, desc in [m for m in made if lag > 0 and m[0] == k - lag]:
            hand_over(owner, kf, desc)
        for r in ROBOTS:
            if k >= len(robots[r].records):
                continue
            odom = tuple(float(v) for v in robots[r].odometry[k].translation())
            rgb = np.asarray(read_image(robots[r].records[k].path))
            res = loc[r].process([Frame("cam", "cam", robots[r].stamps[k], "camera", rgb, odom=odom)])[0]
            if res.session_keyframe is not None:
                kf = PeerKeyframe(id=res.session_keyframe, stamp_ns=robots[r].stamps[k], source="peer", robot_id=r,
                                  session_id=r, odom_pose=(*odom, 0.0, 0.0, 0.0, 1.0))
                made.append((k, r, kf, res.descriptor))
                if lag == 0:
                    hand_over(r, kf, res.descriptor)
            for c in res.closures[:1]:
                if c.source == "peer":
                    published.append((r, k, c.robot_id, step_of[c.robot_id][c.keyframe.stamp_ns]))
    right = [p for p in published
             if np.linalg.norm(robots[p[0]].truth[p[1]] - robots[p[2]].truth[p[3]]) <= TOLERANCE_M]
    return {"published": published, "right": right}


def save_graph(node, backend_ns: str) -> bool:
    """Ask the back end's ~/save_graph for its g2o file (the closures it took as factors)."""
    from std_srvs.srv import Trigger

    from geoloc_ros.replay import wait_for

    client = node.create_client(Trigger, f"{backend_ns}/geoloc_pose_graph/save_graph")
    if not client.wait_for_service(timeout_sec=10):
        return False
    future = client.call_async(Trigger.Request())
    return wait_for(future.done, 30) and future.result().success


def accepted_closures(robots: dict, paths: dict, g2o: Path) -> dict:
    """The inter-robot closures the back end took as factors (its g2o edges between two robots' vertices), and how
    many join places within TOLERANCE_M of each other. With one segment per robot, every pose anchored, and a pose
    node per 10 m step, the vertices are robot a's path stamps in order, then b's, then c's."""
    step_of = {r: {s: k for k, s in enumerate(robots[r].stamps)} for r in ROBOTS}
    owner = []  # g2o vertex -> (robot, step): write_g2o numbers the keys in order, robot after robot
    for r in ROBOTS:
        owner += [(r, step_of[r][s]) for s in sorted(paths.get(r, {}))]
    lines = g2o.read_text().splitlines()
    if sum(line.startswith("VERTEX_SE3:QUAT") for line in lines) != len(owner):  # a floating robot's poses
        return {"graph_saved": True, "accepted_inter_robot": 0, "accepted_inter_robot_right": 0,
                "accepted_inter_robot_precision": float("nan"), "note": "g2o vertices are not the paths' poses"}
    right = wrong = 0
    for line in lines:
        if not line.startswith("EDGE_SE3:QUAT"):
            continue
        ends = [owner[int(v)] for v in line.split()[1:3]]
        (r1, k1), (r2, k2) = ends
        if r1 == r2:
            continue
        ok = np.linalg.norm(robots[r1].truth[k1] - robots[r2].truth[k2]) <= TOLERANCE_M
        right, wrong = right + ok, wrong + (not ok)
    return {"graph_saved": True, "accepted_inter_robot": right + wrong, "accepted_inter_robot_right": right,
            "accepted_inter_robot_precision": right / (right + wrong) if right + wrong else float("nan")}


def evaluate(robots: dict, paths: dict, closures: dict) -> dict:
    """Team-aligned ATE per robot (estimate and odometry), own-aligned odometry ATE, closure precision."""
    from geoloc_ros.slam.evaluate import aligned, ate
    from geoloc_ros.stamps import stamp_ns

    rows = [(r, k) for r in ROBOTS for k, s in enumerate(robots[r].stamps) if s in paths.get(r, {})]
    out = {"robots": {}}
    if rows:
        truth = np.array([robots[r].truth[k] for r, k in rows])
        est = aligned(truth, np.array([paths[r][robots[r].stamps[k]] for r, k in rows]))
        odo = aligned(truth, np.array([robots[r].odometry[k].translation() for r, k in rows]))
        names = np.array([r for r, _ in rows])
    for r in ROBOTS:
        rob = robots[r]
        mine = names == r if rows else np.zeros(0, bool)
        own = ate(rob.truth, np.array([p.translation() for p in rob.odometry]))["rmse"]
        res = {"steps": len(rob.stamps), "path_poses": int(mine.sum()), "ate_odometry_own_alignment_m": own}
        if mine.sum():
            t = truth[mine]
            res["ate_team_m"] = float(np.sqrt(np.mean(np.sum((est[mine] - t) ** 2, axis=1))))
            res["ate_odometry_team_alignment_m"] = float(np.sqrt(np.mean(np.sum((odo[mine] - t) ** 2, axis=1))))
            res["ate_ratio"] = res["ate_team_m"] / res["ate_odometry_team_alignment_m"]
            res["ate_ratio_vs_own_aligned_odometry"] = res["ate_team_m"] / res["ate_odometry_own_alignment_m"]
        out["robots"][r] = res
    index = {r: {s: k for k, s in enumerate(robots[r].stamps)} for r in ROBOTS}
    right = wrong = session = 0
    by_pair, listed = {}, []
    for q in ROBOTS:
        for stamp, msg in closures[q].items():
            if stamp not in index[q] or not msg.candidates:
                continue
            c = msg.candidates[0]
            if not c.robot_id:
                session += 1
                continue
            k = index.get(c.robot_id, {}).get(stamp_ns(c.keyframe_stamp))
            ok = k is not None and np.linalg.norm(robots[q].truth[index[q][stamp]] - robots[c.robot_id].truth[k]) \
                <= TOLERANCE_M
            right, wrong = right + ok, wrong + (not ok)
            key = f"{q}->{c.robot_id}"
            by_pair[key] = by_pair.get(key, 0) + 1
            listed.append({"query": q, "query_frame": _frame(robots[q], index[q][stamp]), "owner": c.robot_id,
                           "keyframe_frame": _frame(robots[c.robot_id], k) if k is not None else None,
                           "confidence": float(c.confidence), "right": bool(ok)})
    out.update(inter_robot_closures=right + wrong, inter_robot_right=right,
               inter_robot_precision=right / (right + wrong) if right + wrong else float("nan"),
               inter_robot_by_pair=by_pair, session_closures=session, inter_robot_list=listed)
    return out


def _frame(robot: Robot, k: int) -> int:
    from geoloc_ros.model.nordland import frame_number

    return frame_number(robot.records[k].path)


def plot(robots, paths, summary, path: Path):
    """Along-track (north) against cross-track (east) position: truth, odometry (aligned per robot) and the team
    estimate (one alignment for the team)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geoloc_ros.slam.evaluate import aligned

    colours = dict(zip(ROBOTS, ("tab:blue", "tab:orange", "tab:green")))
    rows = [(r, k) for r in ROBOTS for k, s in enumerate(robots[r].stamps) if s in paths.get(r, {})]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    if rows:
        truth = np.array([robots[r].truth[k] for r, k in rows])
        est = aligned(truth, np.array([paths[r][robots[r].stamps[k]] for r, k in rows]))
        names = np.array([r for r, _ in rows])
        for r in ROBOTS:
            e = est[names == r]
            ax.plot(e[:, 1], e[:, 0], "-", color=colours[r], label=f"{r}: team estimate "
                    f"(ATE {summary['robots'][r].get('ate_team_m', float('nan')):.1f} m)")
    for r in ROBOTS:
        rob = robots[r]
        odo = aligned(rob.truth, np.array([p.translation() for p in rob.odometry]))
        ax.plot(odo[:, 1], odo[:, 0], ":", color=colours[r], label=f"{r}: odometry, aligned alone "
                f"(ATE {summary['robots'][r]['ate_odometry_own_alignment_m']:.1f} m)")
        ax.plot(rob.truth[:, 1], rob.truth[:, 0] + 0.0, "k-", lw=0.6)
    ax.set_xlabel("along the line (m)")
    ax.set_ylabel("across (m)")
    ax.set_title(f"three robots, one frame (black: truth). Inter-robot closures published "
                 f"{summary['inter_robot_closures']} (precision {summary['inter_robot_precision']:.2f}), taken by the "
                 f"back end {summary.get('accepted_inter_robot', 0)} (precision "
                 f"{summary.get('accepted_inter_robot_precision', float('nan')):.2f})", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(s: dict):
    print(f"multi_robot on {s['cpu']}: {s['wall_s']:.0f} s ({s['startup_s']:.0f} s start-up, {s['drive_s']:.0f} s "
          f"drive at {s['rate_hz']:g} Hz)")
    for r, v in s["robots"].items():
        print(f"  {r} ({s['stretches'][r]}): {v['path_poses']}/{v['steps']} poses; ATE team "
              f"{v.get('ate_team_m', float('nan')):.1f} m, "
              f"odometry {v.get('ate_odometry_team_alignment_m', float('nan')):.1f} m under the team alignment "
              f"(ratio {v.get('ate_ratio', float('nan')):.3f}), {v['ate_odometry_own_alignment_m']:.1f} m aligned "
              f"alone (ratio {v.get('ate_ratio_vs_own_aligned_odometry', float('nan')):.2f})")
    print(f"  inter-robot closures published {s['inter_robot_closures']} ({s['inter_robot_by_pair']}), right "
          f"{s['inter_robot_right']}, precision {s['inter_robot_precision']:.3f}; session closures "
          f"{s['session_closures']}")
    if s.get("graph_saved"):
        print(f"  taken as factors by the back end: {s['accepted_inter_robot']} inter-robot closures, right "
              f"{s['accepted_inter_robot_right']}, precision {s['accepted_inter_robot_precision']:.3f}")
    b = s["backend"]
    print(f"  back end: inter-robot accepted {b.get('inter_robot_accepted')}, rejected "
          f"{b.get('inter_robot_rejected')}, anchored {[b.get(f'{r}.anchored') for r in ROBOTS]}, "
          f"alive {s['backend_alive']}")


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for r in ROBOTS:
        ap.add_argument(f"--{r}", default=DEFAULT_STRETCHES[r], help=f"robot {r}'s SEASON:FIRST:LAST Nordland frames "
                                                                    f"(default {DEFAULT_STRETCHES[r]})")
    ap.add_argument("--rate", type=float, default=2.0, help="steps per wall second (each robot)")
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/multi_robot"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--offline", action="store_true", help="the vpr_nodes' part alone, without DDS or a back end: "
                    "ROS-free Localizers handing each other their keyframes; prints the inter-robot closures")
    ap.add_argument("--lag", type=int, default=1, help="--offline: steps before a keyframe reaches the peers")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="--offline: a LocalizerConfig field (e.g. peer_consistency_tolerance_m=10)")
    ap.add_argument("--restart", default=None, metavar="ROBOT:STEP",
                    help="kill ROBOT's vpr_node before STEP and start it again (e.g. b:20)")
    ap.add_argument("--data", type=Path, default=None, help="nordland64 folder (default ../shared/data/nordland64)")
    a = ap.parse_args(argv)
    if a.offline:
        config = {name: _number(value) for name, value in (item.split("=", 1) for item in a.set)}
        s = offline({r: getattr(a, r) for r in ROBOTS}, a.data, a.lag, **config)
        pairs = {}
        for q, _, owner, _ in s["published"]:
            pairs[f"{q}->{owner}"] = pairs.get(f"{q}->{owner}", 0) + 1
        print(f"offline, lag {a.lag}, {config or 'defaults'}: inter-robot closures published {len(s['published'])} "
              f"({pairs}), right {len(s['right'])}")
        return 0
    restart = (a.restart.split(":")[0], int(a.restart.split(":")[1])) if a.restart else None
    s = run({r: getattr(a, r) for r in ROBOTS}, a.out, a.rate, a.device, a.data, restart=restart)
    print_summary(s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
