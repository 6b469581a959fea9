"""Building maps with `geoloc map` from real images: sequence folders, CSV, VG names, rosbag2 recordings
(written here with rosbags), merging, querying, and an interrupted build leaving the previous map intact."""

import math
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from geoloc_ros.cli import main as geoloc
from geoloc_ros.datasets import read_image
from geoloc_ros.mapping import MapDatabase

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A small random encoder checkpoint: enough to tell real images from each other, and to recognise one under
    mild pixel noise (random weights know nothing of places: test_map_demo.py checks retrieval across seasons
    with the trained encoder)."""
    from geoloc_ros.model import build_encoder, save_encoder

    return save_encoder(build_encoder("RN-pico", dim=32, image_size=(32, 64), seed=0, device="cpu"),
                        tmp_path_factory.mktemp("enc"))


@pytest.fixture(scope="module")
def encoder(encoder_file):
    from geoloc_ros.model import load_encoder

    return load_encoder(encoder_file, device="cpu")


def nordland(shared_data, season, first, count):
    """Paths of `count` consecutive frames of a season, starting at frame number `first`."""
    return [shared_data / "nordland64" / season / f"images-{n:05d}.png" for n in range(first, first + 10 * count, 10)]


def top1_labels(db, encoder, images):
    return [r[0].keyframe.label for r in db.search(encoder.encode(images), 1)]


def test_build_from_sequence_folder_and_query(tmp_path, shared_data, encoder_file, encoder, capsys):
    out = tmp_path / "seq"
    geoloc(["map", "build", "--encoder", str(encoder_file), "--images", str(shared_data / "nordland64" / "summer"),
            "--sequence-spacing", "10", "--range", "1920:1980", "--out", str(out), "--quiet", "--device", "cpu"])
    db = MapDatabase.load(out, encoder=encoder)
    assert len(db) == 60 and db.encoder_path == out / "encoder.safetensors"
    first = db.keyframe(0)
    assert first.label == "images-19210.png" and first.synthetic
    assert math.hypot(db.keyframe(59).x - first.x, db.keyframe(59).y - first.y) == pytest.approx(590.0, abs=0.5)
    # Real frames with mild pixel noise: each finds its own keyframe.
    paths = nordland(shared_data, "summer", 19210, 60)[::6]
    rng = np.random.default_rng(0)
    altered = [np.clip(read_image(p) + rng.integers(-3, 4, (32, 64, 3)), 0, 255).astype(np.uint8) for p in paths]
    assert top1_labels(db, encoder, altered) == [p.name for p in paths]
    geoloc(["map", "query", str(out), str(paths[3]), "-k", "2", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert f"1. sim 1.0000  id 18  {paths[3].name}" in printed
    with pytest.raises(SystemExit, match="no VG-benchmark coordinates"):
        geoloc(["map", "build", "--encoder", str(encoder_file), "--images",
                str(shared_data / "toy_streets" / "queries"), "--out", str(tmp_path / "nogeo")])
    with pytest.raises(SystemExit, match="exists; pass --force"):
        geoloc(["map", "build", "--encoder", str(encoder_file), "--images", str(out), "--out", str(out)])


def test_build_from_csv_and_vg_names(tmp_path, shared_data, encoder_file, encoder):
    streets = sorted((shared_data / "toy_streets" / "database").glob("*.jpg"))[:8]
    csv = tmp_path / "survey.csv"
    rows = ["image,lat,lon,alt,heading"] + [f"{p},{45.0 + i * 1e-4:.7f},{7.0:.7f},{200 + i},{90}"
                                             for i, p in enumerate(streets)]
    csv.write_text("\n".join(rows) + "\n")
    geoloc(["map", "build", "--encoder", str(encoder_file), "--images", str(csv), "--out", str(tmp_path / "csv"),
            "--quiet", "--device", "cpu"])
    db = MapDatabase.load(tmp_path / "csv", encoder=encoder)
    assert len(db) == 8 and not db.keyframe(3).synthetic
    k3 = db.keyframe(3)
    assert (k3.lat, k3.lon, k3.alt, k3.heading) == pytest.approx((45.0003, 7.0, 203.0, 90.0))
    assert k3.y == pytest.approx(33.4, abs=0.3) and k3.z == pytest.approx(3.0)  # origin = first row, alt 200
    assert top1_labels(db, encoder, [read_image(p) for p in streets]) == [str(p) for p in streets]

    # The same images under VG-benchmark names (position in the file name)
    vg = tmp_path / "vg"
    vg.mkdir()
    for i, p in enumerate(streets):
        name = f"@{500000 + i * 20:.2f}@{5000000:.2f}@32@T@{45.1:.5f}@{7.1 + i * 2.5e-4:.5f}@x@@{180}@@@.jpg"
        (vg / name).symlink_to(p)
    geoloc(["map", "build", "--encoder", str(encoder_file), "--images", str(vg), "--out", str(tmp_path / "vgmap"),
            "--quiet", "--device", "cpu", "--index", "HNSW8"])
    db = MapDatabase.load(tmp_path / "vgmap", encoder=encoder)
    assert db.index_factory == "HNSW8" and db.keyframe(0).heading == 180.0
    assert db.keyframe(4).x == pytest.approx(4 * 2.5e-4 * 111_320 * math.cos(math.radians(45.1)), rel=0.01)


def write_survey_bag(path, shared_data, storage, compressed=False, frames=40):
    """A survey drive written with rosbags: camera at 4 Hz (header stamps), NavSatFix at 1 Hz moving north at
    10 m/s, Odometry at 20 Hz (x east, y north). Returns the image stamps (ns)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    Image, CompressedImage = T["sensor_msgs/msg/Image"], T["sensor_msgs/msg/CompressedImage"]
    NavSatFix, NavSatStatus = T["sensor_msgs/msg/NavSatFix"], T["sensor_msgs/msg/NavSatStatus"]
    Odometry = T["nav_msgs/msg/Odometry"]
    Pose, PoseWithCovariance = T["geometry_msgs/msg/Pose"], T["geometry_msgs/msg/PoseWithCovariance"]
    Point, Quaternion = T["geometry_msgs/msg/Point"], T["geometry_msgs/msg/Quaternion"]
    Twist, TwistWithCovariance = T["geometry_msgs/msg/Twist"], T["geometry_msgs/msg/TwistWithCovariance"]
    Vector3 = T["geometry_msgs/msg/Vector3"]
    t0 = 1_600_000_000 * 10**9

    def header(t_ns, frame_id):
        return Header(stamp=Time(sec=t_ns // 10**9, nanosec=t_ns % 10**9), frame_id=frame_id)

    from geoloc_ros.geodesy import MapFrame

    frame = MapFrame.at(60.0, 10.0)
    q_north = Quaternion(x=0.0, y=0.0, z=math.sin(math.pi / 4), w=math.cos(math.pi / 4))  # yaw 90 deg: north
    stamps = []
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    duration_ns = frames * 250_000_000
    with Writer(path, version=9, storage_plugin=plugin) as w:
        img_type = CompressedImage if compressed else Image
        cam = w.add_connection("/camera/image_raw" + ("/compressed" if compressed else ""), img_type.__msgtype__,
                               typestore=ts)
        gnss = w.add_connection("/gnss/fix", NavSatFix.__msgtype__, typestore=ts)
        odom = w.add_connection("/odom", Odometry.__msgtype__, typestore=ts)
        events = [(t0 + i * 250_000_000, "cam", i) for i in range(frames)]
        events += [(t0 - 500_000_000 + j * 1_000_000_000, "fix", j) for j in range(duration_ns // 10**9 + 2)]
        events += [(t0 + j * 50_000_000, "odom", j) for j in range(duration_ns // 50_000_000)]
        for t, kind, i in sorted(events):
            north = (t - t0) / 1e9 * 10.0
            if kind == "cam":
                rgb = read_image(nordland(shared_data, "summer", 19210, frames)[i])
                if compressed:
                    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                    msg = CompressedImage(header=header(t, "camera"), format="png", data=png.reshape(-1))
                else:
                    msg = Image(header=header(t, "camera"), height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8",
                                is_bigendian=0, step=rgb.shape[1] * 3, data=rgb.reshape(-1))
                w.write(cam, t + 3_000_000, ts.serialize_cdr(msg, img_type.__msgtype__))  # recorded 3 ms later
                stamps.append(t)
            elif kind == "fix":
                lat, lon, alt = frame.to_wgs84(0.0, north, 12.0)
                msg = NavSatFix(header=header(t, "gnss"), status=NavSatStatus(status=0, service=1), latitude=lat,
                                longitude=lon, altitude=alt, position_covariance=np.zeros(9),
                                position_covariance_type=0)
                w.write(gnss, t, ts.serialize_cdr(msg, NavSatFix.__msgtype__))
            else:
                pose = PoseWithCovariance(pose=Pose(position=Point(x=0.0, y=north, z=0.0), orientation=q_north),
                                          covariance=np.zeros(36))
                twist = TwistWithCovariance(twist=Twist(linear=Vector3(x=10.0, y=0.0, z=0.0),
                                                        angular=Vector3(x=0.0, y=0.0, z=0.0)), covariance=np.zeros(36))
                msg = Odometry(header=header(t, "odom"), child_frame_id="base_link", pose=pose, twist=twist)
                w.write(odom, t, ts.serialize_cdr(msg, Odometry.__msgtype__))
    return frame, stamps


@pytest.mark.parametrize("storage,compressed", [("mcap", False), ("sqlite3", True)])
def test_build_from_bag_with_fix(tmp_path, shared_data, encoder_file, encoder, storage, compressed):
    bag = tmp_path / "survey"
    frame, stamps = write_survey_bag(bag, shared_data, storage, compressed)
    topic = "/camera/image_raw" + ("/compressed" if compressed else "")
    out = tmp_path / "bagmap"
    geoloc(["map", "build", "--encoder", str(encoder_file), "--bag", str(bag), "--image-topic", topic,
            "--fix-topic", "/gnss/fix", "--every-metres", "5", "--out", str(out), "--quiet", "--device", "cpu"])
    db = MapDatabase.load(out, encoder=encoder)
    # 40 images 2.5 m apart: every second one is a keyframe.
    assert len(db) == 20
    kf = [db.keyframe(i) for i in range(len(db))]
    assert [k.stamp_ns for k in kf] == stamps[::2]
    for k in kf:  # fixes come at 1 Hz half a second off the camera: positions are interpolated to the stamp
        lat, lon, alt = frame.to_wgs84(0.0, (k.stamp_ns - stamps[0]) / 1e9 * 10.0, 12.0)
        assert (k.lat, k.lon, k.alt) == pytest.approx((lat, lon, alt), abs=1e-7)
        assert k.heading == pytest.approx(0.0, abs=0.5) or k.heading == pytest.approx(360.0, abs=0.5)
        assert not k.synthetic and k.source == "survey"
    assert math.hypot(kf[-1].x - kf[0].x, kf[-1].y - kf[0].y) == pytest.approx(95.0, abs=0.1)
    images = [read_image(p) for p in nordland(shared_data, "summer", 19210, 40)[::2]]
    assert [r[0].keyframe.id for r in db.search(encoder.encode(images), 1)] == list(range(20))


def test_build_from_bag_with_odometry_only_and_time_selection(tmp_path, shared_data, encoder_file, encoder):
    bag = tmp_path / "survey"
    _, stamps = write_survey_bag(bag, shared_data, "mcap")
    out = tmp_path / "odom"
    geoloc(["map", "build", "--encoder", str(encoder_file), "--bag", str(bag), "--image-topic", "/camera/image_raw",
            "--odom-topic", "/odom", "--every-seconds", "1", "--out", str(out), "--quiet", "--device", "cpu"])
    db = MapDatabase.load(out)
    # Odometry covers t0 .. t0 + 9.95 s: images up to 9.75 s, one per second.
    assert [k.stamp_ns for k in db.keyframes()] == stamps[::4]
    assert db.frame is None and math.isnan(db.keyframe(1).lat)
    assert (db.keyframe(1).x, db.keyframe(1).y) == pytest.approx((0.0, 10.0))
    assert db.keyframe(1).heading == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(SystemExit, match="no topic '/nope'"):
        geoloc(["map", "build", "--encoder", str(encoder_file), "--bag", str(bag), "--image-topic", "/nope",
                "--out", str(tmp_path / "x"), "--quiet"])


def test_add_merge_info(tmp_path, shared_data, encoder_file, encoder, capsys):
    summer = shared_data / "nordland64" / "summer"
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--encoder", str(encoder_file), "--images", str(summer), "--sequence-spacing", "10", "--quiet",
              "--device", "cpu"]
    geoloc(["map", "build", *common, "--range", "1920:1940", "--out", str(a)])
    geoloc(["map", "build", *common, "--range", "1940:1950", "--out", str(b)])
    geoloc(["map", "add", str(a), "--images", str(summer), "--sequence-spacing", "10", "--range", "1950:1955",
            "--quiet", "--device", "cpu"])
    assert len(MapDatabase.load(a)) == 25
    geoloc(["map", "merge", str(a), str(b), "--out", str(tmp_path / "ab")])
    ab = MapDatabase.load(tmp_path / "ab", encoder=encoder)
    assert len(ab) == 35 and ab.frame == MapDatabase.load(a).frame
    by_label = {k.label: k for k in ab.keyframes()}
    assert by_label["images-19410.png"].y - by_label["images-19210.png"].y == pytest.approx(200.0, abs=0.1)
    capsys.readouterr()
    geoloc(["map", "info", str(tmp_path / "ab")])
    info = capsys.readouterr().out
    assert "keyframes  35 (35 with synthetic positions)" in info and "checksums match" in info
    other = tmp_path / "other-encoder"
    from geoloc_ros.model import build_encoder, save_encoder

    save_encoder(build_encoder("RN-pico", dim=32, image_size=(32, 64), seed=5), other)
    with pytest.raises(SystemExit, match="fingerprint"):
        geoloc(["map", "add", str(a), "--encoder", str(other), "--images", str(summer), "--sequence-spacing", "10",
                "--range", "0:2", "--quiet"])


def test_killed_build_leaves_previous_map_intact(tmp_path, shared_data, encoder_file):
    """SIGKILL a `geoloc map build --force` over an existing map, once while encoding and then at moments around
    the save; the old map (or the complete new one) must load every time."""
    summer = shared_data / "nordland64" / "summer"
    out = tmp_path / "m"
    geoloc(["map", "build", "--encoder", str(encoder_file), "--images", str(summer), "--sequence-spacing", "10",
            "--range", "0:30", "--out", str(out), "--quiet", "--device", "cpu"])
    cmd = [str(Path(sys.executable).parent / "geoloc"), "map", "build", "--encoder", str(encoder_file), "--images",
           str(summer), "--sequence-spacing", "10", "--range", "0:600", "--out", str(out), "--force",
           "--device", "cpu", "--batch-size", "25"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Kill while encoding (the progress bar on stderr shows batches going by).
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=REPO)
    seen = b""
    while not re.search(rb" [1-9][0-9]{1,2}/600 ", seen) and proc.poll() is None:
        seen += proc.stderr.read1(4096)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, seen.decode(errors="replace")[-500:]
    assert len(MapDatabase.load(out)) == 30
    # Let one build finish, timing it, then kill later ones near their end, where the save happens.
    started = time.monotonic()
    subprocess.run(cmd, capture_output=True, env=env, cwd=REPO, check=True)
    duration = time.monotonic() - started
    assert len(MapDatabase.load(out)) == 600
    for fraction in (0.95, 1.0):
        geoloc(["map", "build", "--encoder", str(encoder_file), "--images", str(summer), "--sequence-spacing", "10",
                "--range", "0:30", "--out", str(out), "--quiet", "--force", "--device", "cpu"])
        proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env, cwd=REPO)
        time.sleep(fraction * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(MapDatabase.load(out)) in (30, 600)  # the old map or the new one, never a broken one
    # A killed save may leave its temporary directory beside the map; the next save removes it.
    MapDatabase.load(out).save(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.")] == []
