"""The geoloc_vpr node on a real DDS graph: a rosbag2 file written here from real Nordland frames is replayed into
it, and what it publishes is checked against the frames' keyframes and positions. Also: lifecycle transitions,
bad maps, a stream of bad frames, a 100 Hz flood, the session map and the services, and the `vpr_node` process.

The map is built from real summer frames with a small random encoder and the SAME frames are replayed, so the
expected top candidate of every frame is its own keyframe (a wiring test; the recognition quality of the trained
encoder is what `geoloc demo` measures)."""

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from geoloc_ros.datasets import read_image  # noqa: E402
from geoloc_ros.mapping import MapDatabase  # noqa: E402
from geoloc_ros.mapping.bag import write_image_bag  # noqa: E402
from geoloc_ros.mapping.builders import add_dataset, new_map_for  # noqa: E402
from geoloc_ros.model import nordland, save_encoder  # noqa: E402
from geoloc_ros.model.testing import tiny_encoder  # noqa: E402
from geoloc_ros.replay import Harness, image_message, read_bag  # noqa: E402

T0 = 1_700_000_000 * 10**9


@pytest.fixture(scope="module")
def world(shared_data, tmp_path_factory):
    """A map of 40 real summer frames (tiny encoder carried in the map) and a bag of the same frames."""
    tmp = tmp_path_factory.mktemp("node")
    enc = tiny_encoder()
    recs = nordland.split(shared_data / "nordland64", frames=(19210, 19800), seasons=("summer",))
    recs = [r for r in recs if not nordland.is_blank(read_image(r.path))][:40]
    db = new_map_for(enc, "nordland_test")
    add_dataset(db, enc, recs, progress=False)
    db.attach_encoder(save_encoder(enc, tmp / "encoder"))
    db.save(tmp / "map")
    frames = [(T0 + i * 100_000_000, read_image(r.path), (r.lat, r.lon, 0.0)) for i, r in enumerate(recs)]
    bag = write_image_bag(tmp / "replay_bag", frames)
    other = tiny_encoder(seed=1)
    return {"tmp": tmp, "map": str(tmp / "map"), "encoder": str(tmp / "encoder"), "bag": bag, "records": recs,
            "other_encoder": str(save_encoder(other, tmp / "other_encoder")), "db": MapDatabase.load(tmp / "map")}


def trigger(h, service: str):
    """A function calling the std_srvs/Trigger `service` from the harness node; returns the response."""
    from std_srvs.srv import Trigger

    client = h.node.create_client(Trigger, service)
    assert client.wait_for_service(timeout_sec=10)

    def call():
        fut = client.call_async(Trigger.Request())
        assert h.wait_for(fut.done, timeout=20)
        return fut.result()
    return call


def metres(lat1, lon1, lat2, lon2):
    from geoloc_ros.geodesy import to_utm

    e1, n1, z = to_utm(lat1, lon1)
    e2, n2, _ = to_utm(lat2, lon2, z)
    return math.hypot(e1 - e2, n1 - n2)


def test_replayed_bag_matches_expected_keyframes_and_positions(world, graph):
    start, h = graph
    node = start({"map_path": [world["map"]], "top_k": 3, "consistency_k": 2, "loop_closure_min_confidence": 0.0})
    assert node.active, node.node.last_error
    assert h.wait_for_subscriber()
    frames = read_bag(world["bag"])
    assert len(frames) == len(world["records"]) and all(f.fix for f in frames)
    h.play([f.image for f in frames], rate_hz=10)
    h.wait_quiet(expect=len(frames))
    d = h.data
    assert len(d.received) == len(frames)
    by_label = {k.label: k for k in world["db"].keyframes()}
    pose_errors = []
    for f, rec in zip(frames, world["records"]):
        pr = d.results["place_recognition"][f.stamp_ns]
        assert pr.header.frame_id == "camera" and pr.camera_topic == "/camera/image_raw"
        assert 1 <= len(pr.candidates) <= 3 and pr.encode_ms > 0
        best = pr.candidates[0]
        assert best.keyframe_label == rec.label and best.map_name == "nordland_test" and best.rank == 0
        assert [c.similarity for c in pr.candidates] == sorted((c.similarity for c in pr.candidates), reverse=True)
        kf = by_label[rec.label]
        assert best.keyframe_id == kf.id and best.pose.position.y == pytest.approx(kf.y, abs=1e-6)
        assert metres(best.latitude, best.longitude, *f.fix[:2]) < 0.01
        geo = d.results["geopose"].get(f.stamp_ns)
        if geo is not None:
            pose_errors.append(metres(geo.pose.pose.position.latitude, geo.pose.pose.position.longitude, *f.fix[:2]))
            assert geo.header.frame_id == "map" and geo.pose.covariance[0] >= 25.0  # 5 m floor
            fix, pose = d.results["fix"][f.stamp_ns], d.results["pose"][f.stamp_ns]
            assert fix.latitude == geo.pose.pose.position.latitude and fix.header.frame_id == "base_link"
            assert pose.header.frame_id == "map" and pose.pose.covariance[0] == geo.pose.covariance[0]
    # Consistency k=2: every frame but the first closes a loop with its own keyframe.
    assert len(d.results["loop_closures"]) >= len(frames) - 2
    # Each closure's confidence travels in PlaceCandidate.confidence; ~/place_recognition candidates carry 0.
    assert all(0.0 < c.confidence <= 1.0 for m in d.results["loop_closures"].values() for c in m.candidates)
    assert all(c.confidence == 0.0 for m in d.results["place_recognition"].values() for c in m.candidates)
    assert len(pose_errors) >= len(frames) - 2
    # The fused position is the best keyframe's, pulled at most a little by agreeing neighbours (10 m apart).
    assert np.median(pose_errors) < 10.0 and max(pose_errors) < 30.0
    assert h.wait_for(lambda: h.diag_values().get("frames_processed") == str(len(frames)), timeout=5)
    diag = h.diag_values()
    assert diag["state"] == "active" and diag["map_keyframes"] == "40" and diag["device"] == "cpu"
    # the default encoder_backend is auto: what it chose, and why, are on /diagnostics
    assert diag["backend"] == node.node.encoder.backend_choice and diag["backend_reason"].startswith("auto on cpu")


def test_lifecycle_transitions(world, graph):
    from lifecycle_msgs.srv import GetState
    from rclpy.lifecycle import TransitionCallbackReturn as R

    start, h = graph
    n = start({"map_path": [world["map"]]}, autostart=False)
    node = n.node
    client = h.node.create_client(GetState, "/geoloc_vpr/get_state")
    assert client.wait_for_service(timeout_sec=10)

    def remote_state():
        fut = client.call_async(GetState.Request())
        assert h.wait_for(fut.done, timeout=10)
        return fut.result().current_state.label

    img = image_message(read_image(world["records"][0].path), T0)
    assert remote_state() == "unconfigured" and node.encoder is None
    assert node.trigger_configure() == R.SUCCESS and remote_state() == "inactive"
    assert node.encoder is not None and h.image_pub.get_subscription_count() == 0  # inactive: not listening
    assert node.trigger_activate() == R.SUCCESS and remote_state() == "active"
    assert h.wait_for_subscriber()
    h.publish(img)
    assert h.wait_for(lambda: T0 in h.data.received)
    assert node.trigger_deactivate() == R.SUCCESS and remote_state() == "inactive"
    h.publish(image_message(read_image(world["records"][1].path), T0 + 1))
    time.sleep(0.5)
    assert T0 + 1 not in h.data.received
    assert node.trigger_cleanup() == R.SUCCESS and remote_state() == "unconfigured"
    assert node.encoder is None and node.maps == []
    assert node.trigger_configure() == R.SUCCESS and node.trigger_activate() == R.SUCCESS
    assert h.wait_for_subscriber()
    h.publish(image_message(read_image(world["records"][2].path), T0 + 2))
    assert h.wait_for(lambda: T0 + 2 in h.data.received)


@pytest.mark.parametrize("case", ["missing", "mismatched_encoder", "corrupt", "no_encoder"])
def test_bad_map_leaves_node_unconfigured_with_reason(case, world, graph, tmp_path):
    import shutil

    start, h = graph
    p = {"map_path": [world["map"]]}
    if case == "missing":
        p["map_path"], expect = [str(tmp_path / "nowhere")], "no such map directory"
    elif case == "mismatched_encoder":
        p["encoder_path"], expect = world["other_encoder"], "was built with encoder"
    elif case == "corrupt":
        shutil.copytree(world["map"], tmp_path / "map")
        with open(tmp_path / "map" / "descriptors.npy", "r+b") as f:
            f.seek(200)
            f.write(b"\x00garbage\x00")
        p["map_path"], expect = [str(tmp_path / "map")], "descriptors.npy"
    else:
        p["map_path"], expect = [""], "no encoder"
    n = start(p)
    assert not n.active and n.node.lifecycle_state == "unconfigured"
    assert expect in n.node.last_error
    assert h.wait_for(lambda: h.diag_values().get("message", "").startswith("configure failed"), timeout=10)
    d = h.diag_values()
    assert d["level"] == b"\x02" and expect in d["message"] and d["state"] == "unconfigured"


def test_bad_frames_are_counted_and_the_node_keeps_running(world, graph, shared_data):
    import cv2
    from sensor_msgs.msg import CompressedImage

    start, h = graph
    n = start({"map_path": [world["map"]]})
    assert n.active and h.wait_for_subscriber()
    good = read_image(world["records"][5].path)
    t = [T0]

    def stamp(msg):
        t[0] += 1_000_000
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t[0], 1_000_000_000)
        return msg

    bad = []
    m = image_message(good, 0)
    m.data = bytes(m.data)[:50]  # truncated data
    bad.append(m)
    m = image_message(good, 0)
    m.step = 7  # wrong step
    bad.append(m)
    m = image_message(good, 0)
    m.height = m.width = m.step = 0
    m.data = b""
    bad.append(m)
    m = image_message(good, 0)
    m.encoding = "yuv422_yuy2"
    bad.append(m)
    bad.append(image_message(read_image(shared_data / "nordland64" / "summer" / "images-00010.png"), 0))  # blank
    bad.append(CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0\x00\x10JFIF" + os.urandom(500)))
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(good, cv2.COLOR_RGB2BGR))
    ok, png = cv2.imencode(".png", cv2.cvtColor(good, cv2.COLOR_RGB2BGR))
    goods = [image_message(good, 0, encoding="bgr8"), image_message(good, 0, encoding="mono8"),
             CompressedImage(format="jpeg", data=jpg.tobytes()), CompressedImage(format="png", data=png.tobytes())]
    sent_good = []
    for msg in bad + goods + bad:
        stamp(msg)
        h.publish(msg)
        if msg in goods:
            sent_good.append(t[0])
        time.sleep(0.15)  # one at a time, so newest-wins drops none of them
    assert h.wait_for(lambda: all(s in h.data.received for s in sent_good), timeout=10)
    for s in sent_good:  # colour, grey and compressed versions of one frame all find it
        assert h.data.results["place_recognition"][s].candidates[0].keyframe_label == world["records"][5].label
    assert h.wait_for(lambda: int(h.diag_values().get("frames_rejected", 0)) == 2 * len(bad), timeout=5), \
        h.diag_values()
    d = h.diag_values()
    assert (d["rejected_corrupt"], d["rejected_empty"], d["rejected_encoding"], d["rejected_blank"]) == \
        ("6", "2", "2", "2"), d
    assert d["state"] == "active" and n.node._worker.is_alive()


def test_flood_at_100hz_still_answers_newest_frame(world, graph):
    start, h = graph
    n = start({"map_path": [world["map"]]})
    assert n.active and h.wait_for_subscriber()
    images = [read_image(r.path) for r in world["records"]]
    msgs = [image_message(images[i % len(images)], T0 + i * 10_000_000) for i in range(300)]
    t0 = time.perf_counter()
    h.play(msgs, rate_hz=100)
    # Newest wins: whatever was dropped, the last frame published is always processed.
    assert h.wait_for(lambda: T0 + 299 * 10_000_000 in h.data.received, timeout=15)
    lat = h.data.latencies_ms()
    d = h.diag_values()
    print(f"\nflood: 300 frames at 100 Hz in {time.perf_counter() - t0:.1f} s; answered {len(lat)}, "
          f"latency p50 {np.percentile(lat, 50):.1f} ms p95 {np.percentile(lat, 95):.1f} ms; diagnostics: "
          f"dropped {d.get('frames_dropped')}, processed {d.get('frames_processed')}")
    assert n.node.lifecycle_state == "active"


def test_a_burst_of_frames_is_received_whole_and_what_is_dropped_is_counted(world, graph):
    """Frames published back to back (a driver flushing its buffer): DDS holds them all for the camera intake
    (depth params.IMAGE_QUEUE_DEPTH), so each one is counted as received, and each is then answered or counted as
    dropped by newest-wins. With depth 1 DDS overwrote the first of two untaken frames and nothing counted it."""
    from geoloc_ros.node.params import IMAGE_QUEUE_DEPTH

    start, h = graph
    n = start({"map_path": [world["map"]]})
    assert n.active and h.wait_for_subscriber()
    images = [read_image(r.path) for r in world["records"]]
    sent = 0
    for burst in range(4):
        for i in range(IMAGE_QUEUE_DEPTH):
            h.publish(image_message(images[i], T0 + (burst * 10 + i) * 10_000_000))
            sent += 1
        last = T0 + (burst * 10 + IMAGE_QUEUE_DEPTH - 1) * 10_000_000
        assert h.wait_for(lambda: last in h.data.received, timeout=15)  # newest wins: the last one is answered
        time.sleep(0.3)
    assert h.wait_for(lambda: h.diag_values().get("frames_received") == str(sent), timeout=5), h.diag_values()
    d = h.diag_values()
    assert int(d["frames_processed"]) + int(d["frames_dropped"]) == sent and int(d["frames_rejected"]) == 0, d
    assert len(h.data.received) == int(d["frames_processed"])


def test_session_map_exclusion_window_and_services(world, graph, tmp_path):
    start, h = graph
    n = start({"map_path": [""], "encoder_path": world["encoder"], "session_map": True, "session_min_interval_s": 0.5,
               "session_exclusion_window_s": 5.0, "session_map_path": str(tmp_path / "session"),
               "consistency_k": 1, "loop_closure_min_confidence": 0.0,
               # the revisit test is test_session_loops.py's; here lap 2 repeats lap 1's frames exactly
               "session_loop_margin": 0.0, "session_loop_support": 0})
    assert n.active, n.node.last_error
    assert h.wait_for_subscriber()
    images = [read_image(r.path) for r in world["records"][:15]]
    lap1 = [image_message(im, T0 + i * 1_000_000_000) for i, im in enumerate(images)]
    lap2 = [image_message(im, T0 + (100 + i) * 1_000_000_000) for i, im in enumerate(images)]
    h.play(lap1, rate_hz=10)
    h.wait_quiet(expect=len(lap1))
    h.play(lap2, rate_hz=10)
    h.wait_quiet(expect=len(lap1) + len(lap2))
    pr = h.data.results["place_recognition"]
    for m in lap1:  # the robot never matches its own last 5 s
        s = m.header.stamp.sec * 10**9
        assert all(abs(s - (c.keyframe_stamp.sec * 10**9 + c.keyframe_stamp.nanosec)) >= 5 * 10**9
                   for c in pr[s].candidates)
    for i, m in enumerate(lap2):  # the second lap closes loops with the first
        best = pr[m.header.stamp.sec * 10**9].candidates[0]
        assert best.map_name == "session" and best.keyframe_label == f"/camera/image_raw@{T0 + i * 10**9}"
        assert best.similarity == pytest.approx(1.0, abs=1e-4)
    assert len(h.data.results["loop_closures"]) >= len(lap2)

    r = trigger(h, "/geoloc_vpr/save_session_map")()
    assert r.success, r.message
    saved = MapDatabase.load(tmp_path / "session")
    assert len(saved) == len(n.node.session) >= len(lap1) and saved.encoder_path is not None


def test_reload_map_service(world, graph, tmp_path):
    from rclpy.parameter import Parameter

    start, h = graph
    n = start({"map_path": [world["map"]]})
    call = trigger(h, "/geoloc_vpr/reload_map")

    r = call()
    assert r.success and "40 keyframes" in r.message
    n.node.set_parameters([Parameter("map_path", value=[str(tmp_path / "gone")])])
    r = call()
    assert not r.success and "keeping the old maps" in r.message
    assert [m.name for m in n.node.maps] == ["nordland_test"]


def test_vpr_node_process_autostarts_and_shuts_down_cleanly(world, rclpy_context):
    """The console entry point, as `ros2 run` / launch start it: parameters from the command line, a namespace,
    autostart, and a clean exit on SIGINT."""
    cmd = [sys.executable, "-m", "geoloc_ros.vpr_node", "--ros-args", "-r", "__ns:=/robot",
           "-p", f"map_path:=['{world['map']}']", "-p", "device:=cpu", "-p", "diagnostics_period_s:=0.2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    h = Harness(rclpy_context, namespace="/robot")
    try:
        assert h.wait_for_subscriber(timeout=60), "vpr_node never subscribed to /camera/image_raw"
        for i in range(3):
            h.publish(image_message(read_image(world["records"][i].path), T0 + i))
            time.sleep(0.3)
        assert h.wait_for(lambda: T0 + 2 in h.data.received, timeout=20)
        assert h.data.results["place_recognition"][T0 + 2].candidates[0].keyframe_label == world["records"][2].label
    finally:
        h.close()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "active: listening on /camera/image_raw" in out


@pytest.mark.parametrize("backend", ["torch-tuned", "onnxruntime", "no-such-backend"])
def test_encoder_backends(backend, world, graph):
    """encoder_backend other than torch goes through geoloc_ros.deploy.open_encoder; same map, same answers."""
    pytest.importorskip("geoloc_ros.deploy.api", reason="geoloc_ros.deploy (deployment backends) is not installed")
    start, h = graph
    n = start({"map_path": [world["map"]], "encoder_backend": backend})
    if backend == "no-such-backend":
        assert not n.active and "no-such-backend" in n.node.last_error
        return
    assert n.active, n.node.last_error
    assert h.wait_for_subscriber()
    msgs = [image_message(read_image(r.path), T0 + i) for i, r in enumerate(world["records"][:8])]
    for m in msgs:
        h.publish(m)
        time.sleep(0.1)
    assert h.wait_for(lambda: all(T0 + i in h.data.received for i in range(len(msgs))), timeout=30)
    for i, r in enumerate(world["records"][:8]):
        assert h.data.results["place_recognition"][T0 + i].candidates[0].keyframe_label == r.label


def test_reload_map_refuses_no_map_and_survives_a_bad_manifest(world, graph, tmp_path):
    """map_path [''] is refused with the reason; a manifest whose dim is not a number fails the call (not the
    node); the old maps stay in use either way."""
    import json
    import shutil

    from rclpy.parameter import Parameter

    from geoloc_ros.mapping.storage import manifest_bytes

    start, h = graph
    n = start({"map_path": [world["map"]]})
    assert n.active, n.node.last_error
    call = trigger(h, "/geoloc_vpr/reload_map")

    n.node.set_parameters([Parameter("map_path", value=[""])])
    r = call()
    assert not r.success and "names no map" in r.message
    shutil.copytree(world["map"], tmp_path / "map")
    manifest = tmp_path / "map" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["dim"] = "abc"
    manifest.write_bytes(manifest_bytes(m))  # checksums redone: only the value is wrong
    n.node.set_parameters([Parameter("map_path", value=[str(tmp_path / "map")])])
    r = call()
    assert not r.success and "abc" in r.message, r.message
    assert [m.name for m in n.node.maps] == ["nordland_test"] and n.node.lifecycle_state == "active"
    n.node.set_parameters([Parameter("map_path", value=[world["map"]])])
    assert call().success


def test_bad_navsatfix_is_ignored_and_counted(world, graph, tmp_path):
    """Latitude 95, a NaN longitude and STATUS_NO_FIX never geotag a session keyframe; /diagnostics counts them."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import NavSatFix, NavSatStatus

    start, h = graph
    n = start({"map_path": [world["map"]], "session_map": True, "fix_topic": "/gnss/fix",
               "session_min_interval_s": 0.0})
    assert n.active, n.node.last_error
    pub = h.node.create_publisher(NavSatFix, "/gnss/fix", qos_profile_sensor_data)
    assert h.wait_for(lambda: pub.get_subscription_count() > 0, timeout=10)
    bad = [NavSatFix(latitude=95.0, longitude=13.0), NavSatFix(latitude=65.0, longitude=float("nan")),
           NavSatFix(latitude=65.0, longitude=13.0)]
    good = NavSatFix(latitude=66.5, longitude=14.25, altitude=float("nan"))
    for msg in bad + [good]:  # the message's default status is STATUS_UNKNOWN, refused like NO_FIX
        msg.status.status = NavSatStatus.STATUS_FIX
    bad[2].status.status = NavSatStatus.STATUS_NO_FIX
    for msg in bad + [good]:
        pub.publish(msg)
        time.sleep(0.1)
    assert h.wait_for(lambda: h.diag_values().get("fixes_ignored") == "3", timeout=10), h.diag_values()
    d = h.diag_values()
    assert (d["fixes_ignored_no_fix"], d["fixes_ignored_not_finite"], d["fixes_ignored_out_of_range"]) == \
        ("1", "1", "1")
    assert h.wait_for(lambda: n.node._fix is not None, timeout=5)
    assert h.wait_for_subscriber()
    h.publish(image_message(read_image(world["records"][0].path), T0))
    assert h.wait_for(lambda: T0 in h.data.received, timeout=20)
    kf = n.node.session.db.keyframe(0)
    assert (kf.lat, kf.lon) == (66.5, 14.25) and math.isfinite(kf.x) and math.isfinite(kf.y)


def test_session_keyframes_take_the_odometry_published_just_before_their_frame(world, graph):
    """Odometry and frames are taken on one intake thread, odometry first: a pose published right before its frame
    (no pause between them) positions that frame's session keyframe, every time."""
    from nav_msgs.msg import Odometry
    from rclpy.qos import qos_profile_sensor_data

    start, h = graph
    n = start({"map_path": [""], "encoder_path": world["encoder"], "session_map": True, "odom_topic": "/odom",
               "session_min_interval_s": 0.0, "session_min_spacing_m": 1.0})
    assert n.active, n.node.last_error
    odom = h.node.create_publisher(Odometry, "/odom", qos_profile_sensor_data)
    assert h.wait_for_subscriber() and h.wait_for(lambda: odom.get_subscription_count() > 0, 10)
    images = [read_image(r.path) for r in world["records"][:12]]
    for i, im in enumerate(images):
        pose = Odometry()
        pose.header.stamp.sec = 1_700_000_000 + i
        pose.pose.pose.position.x = 2.0 * i  # 2 m per frame: every frame is far enough for a keyframe
        odom.publish(pose)
        h.publish(image_message(im, T0 + i * 10**9))
        assert h.wait_for(lambda: len(h.data.received) > i, timeout=10)
        time.sleep(0.05)
    kfs = sorted(n.node.session.db.keyframes(), key=lambda k: k.stamp_ns)
    assert [k.x for k in kfs] == [2.0 * i for i in range(len(images))]
