"""What reaches vpr_node (default parameters: image_qos auto) from a camera in another process, by the camera's QoS
and by which processes load config/fastdds_large_frames.xml. Prints one line per case and saves them as JSON.

    python test/measure_camera_qos.py [--count 20] [--rate 5] [--out runs/camera_qos.json]
    python test/measure_camera_qos.py --cameras 3 --rate 30 --seconds 20    # three cameras at once, both profiled

The camera is test/camera_publisher.py (a real photo resized, raw rgb8); the node is `python -m
geoloc_ros.vpr_node` on the bundled map; the counts are the node's /diagnostics (frames_received, frames_missing:
gaps in the header stamps, frames_dropped: newest wins in the node)."""

import argparse
import json
import os
from pathlib import Path
import platform
import subprocess
import sys
import time

REPO = Path(__file__).resolve().parents[1]
PUBLISHER = REPO / "test" / "camera_publisher.py"
PROFILE = str(REPO / "config" / "fastdds_large_frames.xml")
PHOTO = REPO.parent / "shared" / "data" / "geometry" / "lund_street" / "01.jpg"


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                platform.processor())


def publisher(topic, size, qos, count, rate, profile: bool):
    env = dict(os.environ)
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    if profile:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = PROFILE
    cmd = [sys.executable, str(PUBLISHER), topic, "--image", str(PHOTO), "--size", size, "--format", "raw", "--qos",
           qos, "--count", str(count), "--rate", str(rate)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def node_counts(h, topics) -> dict:
    d = h.diag_values()
    return {"received": int(d.get("frames_received", 0)), "processed": int(d.get("frames_processed", 0)),
            "dropped": int(d.get("frames_dropped", 0)), "missing": int(d.get("frames_missing", 0)),
            "qos": {t: d.get(f"image_qos {t}") for t in topics}}


def node(name, profile: bool, extra=()):
    from geoloc_ros.replay import node_process

    if profile:
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = PROFILE
    else:
        os.environ.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}.log"
    return node_process([f"map_path:=['{REPO / 'maps' / 'nordland_demo'}']", *extra], log, name=name)


def matrix(args) -> list[dict]:
    rows = []
    for node_profile in (False, True):
        with node(f"qos_matrix_{int(node_profile)}", node_profile) as h:
            assert h.wait_for(lambda: h.diag_values().get("state") == "active", timeout=120)
            camera = f"/qos_matrix_{int(node_profile)}_{os.getpid()}/camera/image_raw"
            for size in args.sizes:
                for qos in ("best_effort", "reliable"):
                    for pub_profile in (False, True):
                        before = node_counts(h, [camera])
                        p = publisher(camera, size, qos, args.count, args.rate, pub_profile)
                        out, err = p.communicate(timeout=300)
                        sent = json.loads(out.strip().splitlines()[-1]) if p.returncode == 0 else {"published": 0}
                        time.sleep(2.0)  # the last frames and one more /diagnostics
                        after = node_counts(h, [camera])
                        row = {"size": size, "publisher_qos": qos, "profile_publisher": pub_profile,
                               "profile_node": node_profile, "published": sent["published"],
                               **{k: after[k] - before[k] for k in ("received", "processed", "dropped", "missing")}}
                        rows.append(row)
                        print(f"{size} raw, {qos} publisher, profile in publisher {'yes' if pub_profile else 'no '}"
                              f" node {'yes' if node_profile else 'no '}: received {row['received']}/"
                              f"{row['published']}, processed {row['processed']}, stamp gaps {row['missing']}",
                              flush=True)
    return rows


def cameras(args) -> list[dict]:
    """N cameras at once into one node, all processes with the profile; the node subscribes to all of them."""
    count = int(args.seconds * args.rate)
    tag = f"qos_cams_{os.getpid()}"
    topics = [f"/{tag}/cam{i}/image_raw" for i in range(args.cameras)]
    listed = ", ".join(f"'{t}'" for t in topics)
    with node("qos_cams", True, [f"image_topics:=[{listed}]", "subscribe_compressed:=false"]) as h:
        assert h.wait_for(lambda: h.diag_values().get("state") == "active", timeout=120)
        procs = [publisher(t, "640x480", args.qos, count, args.rate, True) for t in topics]
        sent = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
        time.sleep(2.0)
        after = node_counts(h, topics)
        d = h.diag_values()
    row = {"cameras": args.cameras, "rate_hz": args.rate, "qos": args.qos,
           "published": sum(s["published"] for s in sent),
           **{k: after[k] for k in ("received", "processed", "dropped", "missing")},
           "missing_per_topic": {t: int(d.get(f"frames_missing {t}", 0)) for t in topics}}
    print(f"{args.cameras} cameras x {args.rate:g} Hz 640x480 raw {args.qos}, profile in all: published "
          f"{row['published']}, received {row['received']}, missing by stamps {row['missing']}, "
          f"unaccounted {row['published'] - row['received'] - row['missing']}, dropped in the node (newest wins) "
          f"{row['dropped']}, processed {row['processed']}", flush=True)
    return [row]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--sizes", nargs="+", default=["640x480", "1280x720"])
    ap.add_argument("--cameras", type=int, default=0, help="N cameras at once instead of the profile matrix")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--qos", default="reliable", choices=("reliable", "best_effort"))
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "camera_qos.json")
    args = ap.parse_args()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average {os.getloadavg()}", flush=True)
    rows = cameras(args) if args.cameras else matrix(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=1))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
