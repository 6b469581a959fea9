#!/usr/bin/env python3
"""Where the node's per-message time goes (docs/node.md, "Where the time goes").

Part 1, in this process, no DDS: what each step costs per frame, for 640x480 and 1280x720 camera frames, raw (rgb8)
and JPEG: rclpy's CDR deserialisation of the message into Python (what the executor does before the callback),
serialisation (what a publisher does), decoding the message to RGB (geoloc_ros.imaging), the zero-copy view
(geoloc_ros.imaging.image_view), the bundled encoder at 64x128 (resize included), and building + serialising one
PlaceRecognition result.
Part 2: the vpr_node process fed at 10 Hz from this one, sampled by py-spy (all threads, `--idle` off, so only
running code counts): the share of samples in each part of the node.

    tools/venv.sh python tools/profile_node.py [--seconds 20] [--out runs/profile_node] [--no-pyspy]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys
import time

import numpy as np

SIZES = {"640x480": (480, 640), "1280x720": (720, 1280)}


def camera_frame(h: int, w: int) -> np.ndarray:
    """A real street photo (toy_streets) resized to the camera size, so JPEG sizes are realistic."""
    import cv2

    from geoloc_ros.bench.encoder_speed import bench_images

    return cv2.resize(bench_images(1)[0], (w, h), interpolation=cv2.INTER_LINEAR)


def messages(rgb: np.ndarray, stamp_ns: int = 1):
    import cv2
    from sensor_msgs.msg import CompressedImage

    from geoloc_ros.replay import image_message

    raw = image_message(rgb, stamp_ns)
    jpg = CompressedImage(format="jpeg")
    jpg.header = raw.header
    jpg.data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    return {"raw": raw, "jpeg": jpg}


def stream(size: str, kind: str, n: int) -> list:
    """`n` messages of one frame with distinct stamps (latency is keyed by stamp)."""
    import copy

    first = messages(camera_frame(*SIZES[size]))[kind]
    out = []
    for i in range(n):
        m = copy.copy(first)
        m.header = copy.deepcopy(first.header)
        m.header.stamp.sec = i + 1
        out.append(m)
    return out


def median_ms(fn, repeats: int = 30) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(1000 * float(np.median(times)), 3)


def steps(encoder, sizes=tuple(SIZES), kinds=("raw", "jpeg")) -> dict:
    from rclpy.serialization import deserialize_message, serialize_message

    from geoloc_msgs.msg import PlaceCandidate, PlaceRecognition
    from geoloc_ros.imaging import image_view, message_to_rgb

    out = {}
    for size in sizes:
        rgb = camera_frame(*SIZES[size])
        for kind, msg in messages(rgb).items():
            if kind not in kinds:
                continue
            wire = serialize_message(msg)
            row = {"wire_bytes": len(wire),
                   "deserialize_ms": median_ms(lambda: deserialize_message(wire, type(msg))),
                   "serialize_ms": median_ms(lambda: serialize_message(msg)),
                   "decode_to_rgb_ms": median_ms(lambda: message_to_rgb(msg, 3.0))}
            if kind == "raw":
                row["zero_copy_view_ms"] = median_ms(lambda: image_view(msg))
                row["encode_from_view_ms"] = median_ms(lambda: encoder.encode([image_view(msg)]), 20)
            img = message_to_rgb(msg)
            row["encode_ms"] = median_ms(lambda: encoder.encode([img]), 20)
            out[f"{size} {kind}"] = row

    def result():
        pr = PlaceRecognition(camera_topic="/camera/image_raw", encode_ms=1.0, search_ms=0.1)
        pr.candidates = [PlaceCandidate(keyframe_id=i, similarity=0.5) for i in range(5)]
        return serialize_message(pr)

    out["PlaceRecognition (5 candidates) build + serialize"] = {"ms": median_ms(result)}
    return out


def classify(stack: str) -> str:
    """The node part one py-spy sample (a ';'-joined stack, outermost first) belongs to."""
    rules = [("diagnostics (timer: percentiles + publish)", ("publish_diagnostics",)),
             ("encode (resize + network)", ("encode (geoloc_ros/model/encoder.py", "_encode_batch", "resize_batch")),
             ("search", ("search (geoloc_ros/mapping",)),
             ("decode to RGB + blank check", ("message_to_rgb", "image_to_rgb", "compressed_to_rgb")),
             ("publish ~/pose, ~/geopose, ~/fix", ("_publish_pose",)),
             ("publish ~/place_recognition, ~/loop_closures", ("Publisher.publish",)),
             ("take + deserialise", ("_take_subscription", "take_message")),
             ("callback: park frame, notify worker", ("_on_image",)),
             ("executor: wait set, dispatch", ("_wait_for_ready_callbacks", "spin_once")),
             ("worker: wake-up", ("VprNode._work",))]
    for part, needles in rules:
        if any(n in stack for n in needles):
            return part
    return "other"


def pyspy_profile(encoder_path, seconds: float, out: Path, frames, backend: str = "auto") -> dict:
    """Run vpr_node, feed it `frames` (rclpy messages) at 10 Hz, and sample it with py-spy meanwhile."""
    from geoloc_ros.replay import node_process

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {"error": "py-spy is not installed (pip install py-spy)"}
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    raw = out / "pyspy_raw.txt"
    params = [f"map_path:=['{encoder_path}']", "device:=cpu", f"encoder_backend:={backend}"]
    with node_process(params, out / "vpr_node.log", name="geoloc_profile") as h:
        if not h.wait_for_subscriber(timeout=120):
            return {"error": f"vpr_node did not start; see {out / 'vpr_node.log'}"}
        h.play(frames[:5], 5)
        h.wait_quiet(quiet_s=1.0, timeout=20, expect=5)
        spy_p = subprocess.Popen([spy, "record", "--pid", str(h.process.pid), "--duration", str(int(seconds)),
                                  "--rate", "500", "--format", "raw", "--output", str(raw), "--nonblocking"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        h.play(frames[5:], 10)
        spy_p.wait(timeout=seconds + 60)
        lat = h.data.latencies_ms()
    counts = collections.Counter()
    for line in raw.read_text().splitlines() if raw.is_file() else []:
        stack, _, num = line.rpartition(" ")
        counts[classify(stack)] += int(num)
    total = sum(counts.values()) or 1
    return {"samples": total, "sample_rate_hz": 500, "seconds": seconds,
            "share_of_busy_samples": {k: round(v / total, 3) for k, v in counts.most_common()},
            "busy_ms_per_frame": {k: round(1000 * v / 500 / (10 * seconds), 2) for k, v in counts.most_common()},
            "e2e_ms_p50": round(float(np.median(lat)), 2) if len(lat) else None}


ECHO = """
import sys, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from geoloc_ros.imaging import image_view
rclpy.init()
node = rclpy.create_node("geoloc_echo")
pub = node.create_publisher(Header, "/geoloc_echo/out", 10)
def on(msg):
    if hasattr(msg, "encoding"):
        image_view(msg)
    pub.publish(msg.header)
node.create_subscription(Image, "/geoloc_echo/in", on, qos_profile_sensor_data)
node.create_subscription(CompressedImage, "/geoloc_echo/in/compressed", on, qos_profile_sensor_data)
if sys.argv[1] == "events":
    from rclpy.experimental import EventsExecutor
    ex = EventsExecutor()
else:
    from rclpy.executors import SingleThreadedExecutor
    ex = SingleThreadedExecutor()
ex.add_node(node)
try:
    ex.spin()
except KeyboardInterrupt:
    pass
"""


def echo_latency(executor: str, frames, rate_hz: float = 10.0) -> dict:
    """Round trip through DDS to a subscriber process that only takes the frame (viewing its pixels) and answers
    with its header: what transport, deserialisation and the executor cost, with no encoder in the way."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Header

    proc = subprocess.Popen([sys.executable, "-c", ECHO, executor])
    ctx = Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("geoloc_echo_player", context=ctx)
    got, sent = {}, {}
    node.create_subscription(Header, "/geoloc_echo/out", lambda m: got.setdefault(m.stamp.sec, time.perf_counter()),
                             10)
    compressed = hasattr(frames[0], "format")
    pub = node.create_publisher(CompressedImage if compressed else Image,
                                "/geoloc_echo/in" + ("/compressed" if compressed else ""), qos_profile_sensor_data)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    try:
        deadline = time.monotonic() + 60
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.05)
        t0 = time.perf_counter()
        for i, msg in enumerate(frames):
            while time.perf_counter() < t0 + i / rate_hz:
                ex.spin_once(timeout_sec=0.002)
            sent[msg.header.stamp.sec] = time.perf_counter()
            pub.publish(msg)
        end = time.monotonic() + 2
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)
    finally:
        proc.send_signal(2)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:     # EventsExecutor's spin does not always return on SIGINT
            proc.kill()
            proc.wait()
        ex.shutdown()
        node.destroy_node()
        ctx.try_shutdown()
    lat = [1000 * (got[k] - sent[k]) for k in sent if k in got and k > 5]     # the first 5 warm up discovery
    return {"executor": executor, "answered": len(lat), "sent": len(frames) - 5,
            "round_trip_ms_p50": round(float(np.median(lat)), 2) if lat else None,
            "round_trip_ms_p95": round(float(np.percentile(lat, 95)), 2) if lat else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--out", default="runs/profile_node")
    ap.add_argument("--no-pyspy", action="store_true")
    ap.add_argument("--no-echo", action="store_true")
    ap.add_argument("--no-steps", action="store_true")
    ap.add_argument("--sizes", nargs="+", default=["640x480", "1280x720"])
    ap.add_argument("--backend", default="auto", help="the node's encoder_backend, and the encoder of part 1")
    ap.add_argument("--kinds", nargs="+", default=["raw", "jpeg"])
    args = ap.parse_args(argv)
    import rclpy  # noqa: F401 - the message modules need rclpy importable

    from geoloc_ros.deploy import open_encoder
    from geoloc_ros.machine import machine_info
    from geoloc_ros.model.testing import bundled_encoder_path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = open_encoder(bundled_encoder_path(), backend=args.backend, device="cpu", half=False)
    result = {"machine": machine_info(), "backend": args.backend, "encoder": repr(encoder),
              "steps": {} if args.no_steps else steps(encoder, args.sizes, args.kinds), "node": {}, "echo": {}}
    print(json.dumps(result["steps"], indent=1))
    if not args.no_echo:
        for size in args.sizes:
            for kind in args.kinds:
                for executor in ("single-threaded", "events"):
                    r = echo_latency(executor, stream(size, kind, 105))
                    result["echo"][f"{size} {kind} {executor}"] = r
                    print(size, kind, r)
    if not args.no_pyspy:
        map_dir = bundled_encoder_path().parent
        for size in args.sizes:
            for kind in args.kinds:
                r = pyspy_profile(map_dir, args.seconds, out, stream(size, kind, int(10 * args.seconds) + 5),
                                  args.backend)
                result["node"][f"{size} {kind}"] = r
                print(size, kind, json.dumps(r, indent=1))
    (out / "profile_node.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out / 'profile_node.json'}")


if __name__ == "__main__":
    main()
