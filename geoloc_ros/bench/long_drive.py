"""pose_graph_node on a long drive without loop closures, over real DDS: alive, memory, time per message; then
true closures pull the drift in.

    python -m geoloc_ros.bench.long_drive [--messages 50000] [--closures 12] [--out docs/benchmarks/long_drive]

A `pose_graph_node` process (the console script's module, every parameter at its default but a faster
/diagnostics, in a namespace of its own) gets `--messages` nav_msgs/Odometry messages at 1 m steps from this
process: the first half straight, then laps of a circle (`--lap` steps each), simulated wheel odometry with a
1 % scale error and a heading random walk of 0.001 rad/sqrt(m), covariance left zero (the node's default model),
no closure. The publisher keeps at most WINDOW messages ahead of what the node has taken (its /diagnostics count
`odometry_received`), below the subscription's depth of 200, so the node sets the pace and nothing is dropped
by a full queue. Recorded per /diagnostics message: the node's own callback time per message (mean and max),
the poses, and the node process's resident memory (VmRSS from /proc). Then `--closures` same-place loop
closures tie the last lap to the first (geoloc_msgs/PlaceRecognition, as geoloc_vpr publishes them), and the
last ~/path gives the lap gap (mean distance between the two laps' poses of the same place) against odometry's.

Prints the figures and writes summary.json and summary.md under `--out`.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
import datetime
import json
import math
import os
from pathlib import Path
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from geoloc_ros.machine import cpu_model, load_average
from geoloc_ros.slam.drive import odometry_message
from geoloc_ros.slam.simulate import OdometryDrift, simulate_odometry, truth_poses

NODE = "geoloc_pose_graph"
T0_NS = 1_700_000_000 * 10**9
STEP_S = 0.1  # odometry stamps 0.1 s apart: 10 m/s at 1 m steps
WINDOW = 150  # messages published ahead of what the node has taken (its odometry queue is 200 deep)
CHUNK = 50
DRIFT = OdometryDrift(scale_error=0.01, heading_sigma_per_sqrt_m=0.001, seed=0)


def route(messages: int, lap: int) -> np.ndarray:
    """`messages` positions 1 m apart: the first half straight east, then laps of a circle of `lap` metres
    (tangent to the straight, turning left), each lap ending where it began."""
    straight = messages // 2
    xy = [(float(k), 0.0) for k in range(straight)]
    radius = lap / (2 * math.pi)
    x0 = straight - 1.0
    for k in range(1, messages - straight + 1):
        a = k / radius
        xy.append((x0 + radius * math.sin(a), radius - radius * math.cos(a)))
    return np.array(xy[:messages])


def closure_pairs(messages: int, lap: int, count: int) -> list[tuple[int, int]]:
    """(query, keyframe) message indices: `count` places of the last full lap, each with the same place on the
    first lap (a whole number of laps earlier)."""
    straight = messages // 2
    laps = (messages - straight - 1) // lap
    if laps < 2:
        raise ValueError(f"{messages} messages hold fewer than two laps of {lap} m after the straight half")
    first = straight + 1  # index of the first circle step
    last_lap_start = first + (laps - 1) * lap
    offsets = np.linspace(0, lap - 1, count, endpoint=False).astype(int)
    return [(last_lap_start + int(o), first + int(o)) for o in offsets]


def stamp(k: int) -> int:
    return T0_NS + k * int(STEP_S * 1e9)


def closure_message(query: int, keyframe: int):
    """A same-place session loop closure as geoloc_vpr publishes it (no relative pose)."""
    from geoloc_msgs.msg import PlaceCandidate, PlaceRecognition
    from geoloc_ros.stamps import set_stamp

    msg = PlaceRecognition(camera_topic="/camera/image_raw", camera_frame_id="camera")
    set_stamp(msg.header.stamp, stamp(query))
    msg.header.frame_id = "camera"
    c = PlaceCandidate(map_name="session", source=PlaceCandidate.SOURCE_SESSION, keyframe_id=keyframe,
                       similarity=0.9, confidence=1.0,
                       relative_pose_kind=PlaceCandidate.RELATIVE_POSE_NONE)
    set_stamp(c.keyframe_stamp, stamp(keyframe))
    msg.candidates = [c]
    return msg


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@contextmanager
def pose_graph_process(namespace: str, log_path, parameters: dict | None = None):
    """`python -m geoloc_ros.slam.pose_graph_node` in `namespace` with `parameters`, writing to `log_path`;
    SIGINT on exit (then SIGKILL after 30 s). Yields the Popen."""
    params = {"diagnostics_period_s": 0.2, **(parameters or {})}
    cmd = [sys.executable, "-m", "geoloc_ros.slam.pose_graph_node", "--ros-args", "-r", f"__ns:={namespace}"]
    cmd += [a for k, v in params.items() for a in ("-p", f"{k}:={_param(v)}")]
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _param(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v) if isinstance(v, list) else str(v)


class Client:
    """This process's side: odometry and closure publishers, listeners to the node's /diagnostics and ~/path."""

    def __init__(self, namespace: str):
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import Odometry, Path
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        from geoloc_msgs.msg import PlaceRecognition

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("geoloc_long_drive", context=self.context)
        reliable = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self.odom = self.node.create_publisher(Odometry, f"{namespace}/odom", reliable)
        self.closures = self.node.create_publisher(PlaceRecognition, f"{namespace}/loop_closures", reliable)
        self.lock = threading.Lock()
        self.diag, self.diag_at, self.path, self.path_at = {}, 0.0, None, 0.0
        self.history = []  # (monotonic time, diagnostics values)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(Path, f"{namespace}/{NODE}/path", self._on_path, latched)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - the context shut down under the spinner at close
            pass

    def _on_diag(self, msg):
        for st in msg.status:
            if st.name.startswith(NODE):
                values = {kv.key: kv.value for kv in st.values}
                with self.lock:
                    self.diag, self.diag_at = values, time.monotonic()
                    self.history.append((self.diag_at, values))

    def _on_path(self, msg):
        from geoloc_ros.stamps import stamp_ns

        poses = {stamp_ns(p.header.stamp): (p.pose.position.x, p.pose.position.y, p.pose.position.z)
                 for p in msg.poses}
        with self.lock:
            self.path, self.path_at = poses, time.monotonic()

    def value(self, key: str, default=0.0) -> float:
        with self.lock:
            v = self.diag.get(key)
        try:
            return float(v) if v is not None else default
        except ValueError:
            return default

    def wait(self, predicate, timeout: float, alive=None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if alive is not None and not alive():
                return False
            time.sleep(0.02)
        return False

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()
        self._thread.join(timeout=5)


def run(messages: int = 50000, lap: int = 2500, closures: int = 12, say=print, workdir=None) -> dict:
    """Drive `messages` odometry messages into a pose_graph_node process, then `closures` closures; returns the
    figures (see the module docstring)."""
    truth = truth_poses(route(messages, lap))
    odometry = simulate_odometry(truth, DRIFT)
    pairs = closure_pairs(messages, lap, closures) if closures else []
    namespace = f"/long_drive_{os.getpid()}"
    workdir = Path(workdir or tempfile.mkdtemp(prefix="long_drive_"))
    log = workdir / "pose_graph_node.log"
    out = {"messages": messages, "lap_m": lap, "closures_sent": len(pairs), "alive": False}
    with pose_graph_process(namespace, log) as process:
        client = Client(namespace)
        alive = lambda: process.poll() is None  # noqa: E731
        try:
            if not client.wait(lambda: client.odom.get_subscription_count() > 0 and client.diag, 60, alive):
                raise RuntimeError(f"pose_graph_node did not come up (see {log}):\n{log.read_text()[-2000:]}")
            rss_start = rss_mib(process.pid)
            samples = []  # (messages sent, received, poses, rss MiB)
            t0 = time.monotonic()
            sent = 0
            while sent < messages and alive():
                client.wait(lambda: client.value("odometry_received") >= sent + CHUNK - WINDOW, 600, alive)
                for k in range(sent, min(sent + CHUNK, messages)):
                    client.odom.publish(odometry_message(stamp(k), odometry[k]))
                sent = min(sent + CHUNK, messages)
                if sent % 500 == 0 or sent in (messages // 2, messages):
                    samples.append((sent, client.value("odometry_received"), client.value("poses"),
                                    rss_mib(process.pid)))
                if sent % 10000 == 0:
                    say(f"  {sent} sent, {client.value('poses'):.0f} poses, RSS {rss_mib(process.pid):.0f} MiB, "
                        f"{time.monotonic() - t0:.0f} s")
            _settle(client, lambda: client.value("odometry_received") >= messages, alive)
            drive_s = time.monotonic() - t0
            received = int(client.value("odometry_received"))
            poses = int(client.value("poses"))
            rss_drive = rss_mib(process.pid)
            with client.lock:
                history = list(client.history)
            out.update(_drive_figures(history, samples, messages, received, poses, drive_s, rss_start, rss_drive))
            out["node_counts_after_drive"] = _counts(history[-1][1]) if history else {}
            say(f"  drive: {received}/{messages} messages taken, {poses} poses in {drive_s:.0f} s, "
                f"RSS {rss_start:.0f} -> {rss_drive:.0f} MiB, alive {alive()}")
            if pairs:
                out.update(_closures(client, pairs, odometry, truth, alive, say))
            out["rss_end_mib"] = round(rss_mib(process.pid), 1)
            out["alive"] = alive()
        finally:
            client.close()
        out["exit_code_on_sigint"] = None
    out["exit_code_on_sigint"] = process.returncode
    out["log_tail"] = log.read_text()[-1500:]
    return out


def _settle(client, done, alive, quiet_s: float = 10.0):
    """Until `done()` holds, or the node's count of taken messages has not moved for `quiet_s` (some were
    lost on the way)."""
    last, since = None, time.monotonic()
    while alive() and not done() and time.monotonic() - since < quiet_s:
        now = client.value("odometry_received")
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.05)


def _counts(values: dict) -> dict:
    keep = ("odometry_received", "odometry_refused", "odometry_failed", "update_failures", "recoveries",
            "odometry_jumps", "closures_accepted", "closures_rejected", "pending", "path_build_ms", "last_error")
    return {k: values[k] for k in keep if k in values}


def _drive_figures(history, samples, messages, received, poses, drive_s, rss_start, rss_drive) -> dict:
    """Per-segment callback times from the node's /diagnostics (each message: mean and max of the callbacks
    since the previous one, with how many there were), memory from the samples."""
    segments = []
    prev = 0.0
    bounds = list(range(0, messages + 1, max(messages // 10, 1)))
    per = []  # (received at the end of the period, count, mean ms, max ms)
    for _, v in history:
        got = float(v.get("odometry_received", 0))
        n = got - prev
        if n > 0:
            per.append((got, n, float(v.get("odometry_ms_mean", 0)), float(v.get("odometry_ms_max", 0))))
        prev = got
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        rows = [r for r in per if lo < r[0] <= hi]
        if rows:
            n = sum(r[1] for r in rows)
            segments.append({"messages": f"{lo}-{hi}", "callback_ms_mean": round(sum(r[1] * r[2] for r in rows) / n, 3),
                             "callback_ms_max": round(max(r[3] for r in rows), 2)})
    step = max(messages // 10, 1)
    rss = [{"sent": s, "poses": p, "rss_mib": round(r, 1)} for s, _, p, r in samples if s % step == 0 or s == messages]
    half = [r for s, _, _, r in samples if s == messages // 2]
    growth = {"first_half_mib": round(half[0] - rss_start, 1), "second_half_mib": round(rss_drive - half[0], 1)} \
        if half else {}
    return {"messages_received": received, "poses": poses, "drive_s": round(drive_s, 1),
            "messages_per_s": round(received / drive_s, 1) if drive_s else None,
            "callback_ms": segments, "rss_start_mib": round(rss_start, 1), "rss_after_drive_mib": round(rss_drive, 1),
            "rss_kib_per_pose": round((rss_drive - rss_start) * 1024 / max(poses, 1), 2), "rss_growth": growth,
            "rss_samples": rss}


def _closures(client, pairs, odometry, truth, alive, say) -> dict:
    before = client.value("closures_accepted") + client.value("closures_rejected")
    t0 = time.monotonic()
    for q, k in pairs:
        client.closures.publish(closure_message(q, k))
        time.sleep(0.01)
    done = client.wait(lambda: client.value("closures_accepted") + client.value("closures_rejected")
                       >= before + len(pairs), 1800, alive)
    handled_at = time.monotonic()
    closures_s = handled_at - t0
    # the path republished after the last closure was handled (its rebuild waits 10x its last cost); it may also
    # have come before the /diagnostics that counted that closure, and is then the latest path already
    client.wait(lambda: client.path_at > handled_at + 0.5, 30, alive)
    with client.lock:
        path = dict(client.path or {})
    odom_gap = _gap([odometry[q].translation() for q, _ in pairs], [odometry[k].translation() for _, k in pairs])
    got = [(path.get(stamp(q)), path.get(stamp(k))) for q, k in pairs]
    got = [(a, b) for a, b in got if a is not None and b is not None]
    est_gap = _gap([a for a, _ in got], [b for _, b in got]) if got else float("nan")
    figures = {"closures_handled": done, "closures_accepted": int(client.value("closures_accepted")),
               "closures_rejected": int(client.value("closures_rejected")), "closures_s": round(closures_s, 1),
               "path_poses": len(path), "lap_gap_odometry_m": round(odom_gap, 2),
               "lap_gap_pose_graph_m": round(est_gap, 2),
               "closure_pairs_in_path": len(got), "path_build_ms": client.value("path_build_ms")}
    say(f"  closures: {figures['closures_accepted']} accepted, {figures['closures_rejected']} rejected in "
        f"{closures_s:.0f} s; lap gap odometry {odom_gap:.1f} m -> pose graph {est_gap:.2f} m")
    return figures


def _gap(a, b) -> float:
    return float(np.mean(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float), axis=1)))


def report(figures: dict, command: str) -> str:
    lines = [f"# pose_graph_node long drive ({figures['messages']} odometry messages, no closure, then "
             f"{figures['closures_sent']} closures)", "",
             f"Command: `{command}`  ", f"CPU: {figures['machine']['cpu']} ({figures['machine']['cores']} cores), "
             f"load average at start {figures['machine']['load_average_at_start']}, at end "
             f"{figures['machine']['load_average_at_end']}  ", f"UTC: {figures['machine']['utc']}", "",
             f"- alive after the drive and the closures: **{figures['alive']}** (exit code on SIGINT "
             f"{figures['exit_code_on_sigint']})",
             f"- messages taken: {figures['messages_received']} of {figures['messages']}; pose nodes "
             f"{figures['poses']}; {figures['drive_s']} s ({figures['messages_per_s']} messages/s, the node "
             f"setting the pace)",
             f"- resident memory of the node: {figures['rss_start_mib']} MiB at start, "
             f"{figures['rss_after_drive_mib']} MiB after the drive ({figures['rss_kib_per_pose']} KiB per pose; "
             f"first half +{figures['rss_growth'].get('first_half_mib')} MiB, second half "
             f"+{figures['rss_growth'].get('second_half_mib')} MiB)", "",
             "| messages | callback ms, mean | callback ms, max |", "|---|---|---|"]
    lines += [f"| {s['messages']} | {s['callback_ms_mean']} | {s['callback_ms_max']} |" for s in figures["callback_ms"]]
    if figures.get("closures_sent"):
        lines += ["", f"Closures (last lap to first lap, same place): {figures['closures_accepted']} accepted, "
                  f"{figures['closures_rejected']} rejected, handled in {figures['closures_s']} s; lap gap "
                  f"odometry {figures['lap_gap_odometry_m']} m -> pose graph {figures['lap_gap_pose_graph_m']} m "
                  f"({figures['closure_pairs_in_path']} places); last ~/path build {figures['path_build_ms']} ms "
                  f"for {figures['path_poses']} poses."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=50000)
    ap.add_argument("--lap", type=int, default=2500, help="metres per lap of the circle (second half)")
    ap.add_argument("--closures", type=int, default=12)
    ap.add_argument("--out", default="docs/benchmarks/long_drive")
    args = ap.parse_args(argv)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    # a DDS domain of its own (the node's /diagnostics status is named by node name, not namespace)
    os.environ.setdefault("ROS_DOMAIN_ID", str(101 + os.getpid() % 100))
    command = "python -m geoloc_ros.bench.long_drive " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "os": platform.platform(),
               "load_average_at_start": load_average(),
               "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    print(f"long drive: {args.messages} messages, {args.closures} closures, CPU {machine['cpu']}")
    figures = run(args.messages, args.lap, args.closures)
    machine["load_average_at_end"] = load_average()
    figures = {"command": command, "machine": machine, **figures}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(figures, indent=2) + "\n")
    text = report(figures, command)
    (out / "summary.md").write_text(text)
    print(text)
    return 0 if figures["alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
