"""`geoloc train --bag`: real rosbag2 recordings of nordland64 frames (two laps of one route, odometry, NavSatFix
or a poses file), run as a user runs them (the console script in a subprocess): the encoder learns places it never
saw, a killed run resumes to the same weights, hostile recordings get clear errors and dropped frames are counted.
Nothing is mocked."""

import math
import os
from pathlib import Path
import re
import signal
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from geoloc_ros.bench.train_bag import SPEED_MPS, T0_NS, nordland_laps, write_route_bag
from geoloc_ros.cli import main as geoloc
from geoloc_ros.model import load_encoder
from geoloc_ros.model import recordings as R

REPO = Path(__file__).resolve().parents[1]
GEOLOC = str(Path(sys.executable).parent / "geoloc")
PERIOD_NS = int(10.0 / SPEED_MPS * 1e9)
# A small run: RN-pico at 32x64, 4 CosPlace groups of 10 m cells, pair batches; fp32, one thread (deterministic).
TINY = ["--arch", "RN-pico", "--dim", "64", "--image-size", "32x64", "--M", "10", "--N", "2", "--L", "1",
        "--groups-num", "4", "--min-images-per-class", "2", "--epochs-stage1", "20", "--batch-size-stage1", "64",
        "--batch-size", "32", "--pair-weight", "1", "--lr", "2e-3", "--classifiers-lr", "0.05",
        "--random-resized-crop", "0.2", "--hue", "0.1", "--no-bf16", "--device", "cpu", "--threads", "1",
        "--no-progress", "--seed", "3"]


def train_cmd(bag, run_dir, *extra):
    return [GEOLOC, "train", "--bag", str(bag), "--image-topic", "/camera/image_raw", "--odom-topic", "/odom",
            "--run-dir", str(run_dir), *TINY, *extra]


def recalls(stdout):
    found = {w: float(re.search(rf"recall {w} training:\s+R@1 ([\d.]+)", stdout).group(1)) for w in ("before", "after")}
    return found["before"], found["after"]


@pytest.fixture(scope="module")
def route_bag(tmp_path_factory, shared_data):
    """160 consecutive places (frames 2010..3600) driven twice round an ellipse: summer lap, winter lap."""
    bag = tmp_path_factory.mktemp("route") / "route.mcap"
    write_route_bag(bag, nordland_laps(shared_data / "nordland64", 2010, 160))
    return bag


def test_training_on_a_recording_learns_unseen_places_and_resumes_after_a_kill(route_bag, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full = subprocess.run(train_cmd(route_bag, tmp_path / "full", "--epochs", "4", "--iterations-per-epoch", "40"),
                          capture_output=True, text=True, env=env, cwd=REPO)
    assert full.returncode == 0, full.stderr[-3000:]
    before, after = recalls(full.stdout)
    print(full.stdout)
    # the held-out stretch (by position, 30 m from any training frame) is validated by its winter lap against
    # its summer lap; blank frames of the recording are dropped and counted
    assert re.search(r"dropped: 0 no position, 0 undecodable, [1-9]\d* blank", full.stdout)
    assert re.search(r"split by position \(30 m gap\): train \d+, val_database \d+, val_queries [1-9]\d", full.stdout)
    # Measured (AMD EPYC, 2 shared cores, fp32): R@1 21.2 -> 48.5 (docs/model.md, "Training from your own
    # recordings"); required: a gain of 15 points, about half the measured one.
    assert after >= before + 15, (before, after)
    trained = load_encoder(tmp_path / "full")
    assert trained.metadata["data"]["split"]["gap_m"] == 30 and trained.metadata["data"]["image_topic"]

    # A shorter run, once uninterrupted, once killed after its first stage-2 epoch is saved and started again
    # with the same command: it resumes and ends with the weights of the uninterrupted run.
    short = ["--epochs", "3", "--iterations-per-epoch", "4"]
    assert subprocess.run(train_cmd(route_bag, tmp_path / "short", *short), capture_output=True, env=env,
                          cwd=REPO).returncode == 0
    cmd = train_cmd(route_bag, tmp_path / "resumed", *short)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=REPO)
    seen = b""
    while b"stage 2: epoch 1/3" not in seen and proc.poll() is None:
        seen += proc.stderr.read1(4096)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, seen.decode(errors="replace")[-2000:]
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage 1 already done" in again.stderr and "stage 2: resuming at epoch" in again.stderr
    assert "stage 2 epoch 3:" in again.stderr and "stage 2 epoch 1:" not in again.stderr
    for name in ("encoder.safetensors", "encoder_last.safetensors"):
        assert load_encoder(tmp_path / "resumed" / name).fingerprint == \
            load_encoder(tmp_path / "short" / name).fingerprint


def test_fine_tuning_starts_from_the_bundled_encoder(route_bag, tmp_path, capsys):
    """--init-from: the run takes the checkpoint's architecture and input size, and starts from its weights (the
    recall before training is the bundled encoder's own)."""
    from geoloc_ros.model.testing import bundled_encoder_path

    geoloc(["train", "--bag", str(route_bag), "--image-topic", "/camera/image_raw", "--odom-topic", "/odom",
            "--run-dir", str(tmp_path / "ft"), "--init-from", str(bundled_encoder_path()), "--N", "2", "--L", "1",
            "--groups-num", "1", "--min-images-per-class", "2", "--epochs-stage1", "2", "--epochs", "1",
            "--iterations-per-epoch", "2", "--batch-size", "16", "--device", "cpu", "--no-progress", "--no-bf16"])
    out = capsys.readouterr().out
    bundled = load_encoder(bundled_encoder_path(), device="cpu")
    rec = R.read_recordings([route_bag], "/camera/image_raw", odom_topic="/odom", size=bundled.image_size,
                            progress=False)
    split = R.split_recording(rec, 0.2, 30.0, 30.0)
    expected = R.validation(rec, split)(bundled)
    assert f"recall before training: R@1 {expected['R@1']:.1f} " in out
    tuned = load_encoder(tmp_path / "ft")
    assert tuned.arch == bundled.arch and tuned.dim == bundled.dim and tuned.image_size == bundled.image_size
    assert tuned.metadata["init_from"] == str(bundled_encoder_path())
    with pytest.raises(SystemExit, match="contradicts the --init-from checkpoint"):
        geoloc(["train", "--bag", str(route_bag), "--image-topic", "/camera/image_raw", "--odom-topic", "/odom",
                "--run-dir", str(tmp_path / "x"), "--init-from", str(bundled_encoder_path()), "--arch", "RN-pico"])


def test_a_progeo_layout_checkpoint_is_a_starting_point(route_bag, tmp_path):
    from geoloc_ros.model.testing import write_progeo_checkpoint

    write_progeo_checkpoint(tmp_path / "progeo.pth", arch="RN-pico", image_size=64, dim=32)
    geoloc(["train", "--bag", str(route_bag), "--image-topic", "/camera/image_raw", "--odom-topic", "/odom",
            "--run-dir", str(tmp_path / "ft"), "--init-from", str(tmp_path / "progeo.pth"), "--image-size", "32x64",
            "--N", "2", "--L", "1", "--groups-num", "1", "--min-images-per-class", "2", "--epochs-stage1", "1",
            "--epochs", "1", "--iterations-per-epoch", "1", "--batch-size", "8", "--device", "cpu", "--no-progress",
            "--no-bf16"])
    tuned = load_encoder(tmp_path / "ft")
    assert tuned.dim == 32 and tuned.arch["name"] == "RN-pico"


# -- hostile recordings ------------------------------------------------------------------------------------------
def test_corrupt_frames_are_dropped_and_counted(shared_data, tmp_path, capsys):
    laps = nordland_laps(shared_data / "nordland64", 6010, 60)
    bag = tmp_path / "damaged.mcap"
    write_route_bag(bag, laps, corrupt={(0, 3), (1, 7), (1, 8)})
    geoloc(train_cmd(bag, tmp_path / "run", "--epochs", "1", "--iterations-per-epoch", "1", "--epochs-stage1",
                     "1")[1:] + ["--groups-num", "1", "--val-gap", "20", "--val-fraction", "0.3"])
    out = capsys.readouterr().out
    assert "dropped: 0 no position, 3 undecodable" in out
    assert out.count("  dropped: ") == 3 and "image at" in out


def test_missing_topics_positions_and_unreadable_bags_are_clear_errors(shared_data, tmp_path):
    laps = nordland_laps(shared_data / "nordland64", 6010, 20)
    no_odom = tmp_path / "no_odom.mcap"
    write_route_bag(no_odom, laps, odom=False)
    base = ["train", "--image-topic", "/camera/image_raw", "--run-dir", str(tmp_path / "r"), "--no-progress"]
    with pytest.raises(SystemExit, match=r"no topic '/odom'; the recording has: /camera/image_raw"):
        geoloc(base + ["--bag", str(no_odom), "--odom-topic", "/odom"])
    with pytest.raises(SystemExit, match="no topic '/cam'"):
        geoloc(["train", "--bag", str(no_odom), "--image-topic", "/cam", "--odom-topic", "/odom", "--run-dir",
                str(tmp_path / "r")])
    with pytest.raises(SystemExit, match="needs positions"):
        geoloc(base + ["--bag", str(no_odom)])
    with pytest.raises(SystemExit, match="carries sensor_msgs/msg/Image, expected sensor_msgs/msg/NavSatFix"):
        geoloc(base + ["--bag", str(no_odom), "--fix-topic", "/camera/image_raw"])
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"\x89MCAP0\r\n" + os.urandom(300))
    with pytest.raises(SystemExit, match="garbage.mcap: not a readable rosbag2 recording"):
        geoloc(base + ["--bag", str(garbage), "--odom-topic", "/odom"])
    with pytest.raises(SystemExit, match="no such rosbag2 recording"):
        geoloc(base + ["--bag", str(tmp_path / "absent"), "--odom-topic", "/odom"])
    # a poses file that covers none of the frames: every frame is dropped, and said so
    far = tmp_path / "far.csv"
    far.write_text("stamp,x,y\n1.0,0,0\n1.1,1,0\n")
    with pytest.raises(SystemExit, match=r"no usable frame .*dropped: 40 no position"):
        geoloc(base + ["--bag", str(no_odom), "--poses", str(far)])
    bad = tmp_path / "bad.csv"
    bad.write_text("stamp,x,y\n1.0,zero,0\n")
    with pytest.raises(SystemExit, match=r"bad.csv:2: .*zero"):
        geoloc(base + ["--bag", str(no_odom), "--poses", str(bad)])
    # a route driven once has nothing to validate with
    once = tmp_path / "once.mcap"
    write_route_bag(once, laps[:1])
    with pytest.raises(SystemExit, match="never revisited"):
        geoloc(base + ["--bag", str(once), "--odom-topic", "/odom", "--val-gap", "10"])
    assert not (tmp_path / "r" / "stage1.pt").exists()


# -- positions from a poses file, NavSatFix, several bags --------------------------------------------------------
def test_poses_file_places_frames_like_odometry(shared_data, tmp_path):
    laps = nordland_laps(shared_data / "nordland64", 6010, 20)
    bag = tmp_path / "cam.mcap"
    xy = write_route_bag(bag, laps, odom=False)
    by_odom = R.read_recordings([_with_odom(shared_data, tmp_path, laps)], "/camera/image_raw", odom_topic="/odom",
                                progress=False)
    # a SLAM trajectory at 1 sample per place, 30 ms off the camera; two rows missing -> a gap
    n = len(laps[0])
    rows = ["stamp,x,y,z,heading"]
    keep = [k for k in range(2 * n) if k not in (5, 6)]
    x, y = np.tile(xy[:, 0], 2), np.tile(xy[:, 1], 2)
    for k in keep:
        rows.append(f"{(T0_NS + k * PERIOD_NS + 30_000_000) / 1e9:.3f},{x[k]},{y[k]},0,{(k * 7) % 360}")
    csv = tmp_path / "poses.csv"
    csv.write_text("\n".join(rows) + "\n")
    rec = R.read_recordings([bag], "/camera/image_raw", poses=csv, max_gap_s=0.6, progress=False)
    # frame 0 precedes the track; frames 5, 6 fall in the 1.5 s gap (frame 4 at 2.0 s, after sample 4 at 2.03 s,
    # also in it): dropped and counted
    assert rec.dropped["no position"] == 4
    placed = {s: r for s, r in zip(rec.stamps, rec.records)}
    odom = {s: r for s, r in zip(by_odom.stamps, by_odom.records)}
    for s, r in placed.items():
        assert (r.utm_east, r.utm_north) == pytest.approx((odom[s].utm_east, odom[s].utm_north), abs=1.0)
    # TUM trajectory (headerless, spaces): heading from the orientation
    tum = tmp_path / "poses.tum"
    yaw = math.radians(30.0)
    tum.write_text("".join(f"{(T0_NS + k * PERIOD_NS) / 1e9:.3f} {x[k]} {y[k]} 0 0 0 {math.sin(yaw / 2)} "
                           f"{math.cos(yaw / 2)}\n" for k in range(2 * n)))
    rec = R.read_recordings([bag], "/camera/image_raw", poses=tum, max_gap_s=0.6, progress=False)
    assert rec.dropped["no position"] == 0 and len(rec.records) + rec.dropped["blank"] == 2 * n
    assert all(r.heading == pytest.approx(60.0) for r in rec.records)


def _with_odom(shared_data, tmp_path, laps):
    bag = tmp_path / "odom.mcap"
    write_route_bag(bag, laps)
    return bag


def test_navsatfix_positions_and_revisits_across_bags(shared_data, tmp_path):
    """Two drives of one street as two bags with NavSatFix (mapping.bag.write_image_bag): UTM positions, and the
    second drive's frames are revisits of the first's."""
    from geoloc_ros.geodesy import MapFrame
    from geoloc_ros.mapping.bag import write_image_bag

    frame = MapFrame.at(63.0, 11.0)
    bags = []
    for season in ("summer", "winter"):
        images = nordland_laps(shared_data / "nordland64", 8010, 12, seasons=(season,))[0]
        bag = tmp_path / f"{season}.mcap"
        write_image_bag(bag, [(T0_NS + i * 10**9, im, frame.to_wgs84(0.0, 10.0 * i, 5.0))
                              for i, im in enumerate(images)])
        bags.append(bag)
    rec = R.read_recordings(bags, "/camera/image_raw", fix_topic="/gnss/fix", progress=False)
    assert rec.bag_index == [0] * 12 + [1] * 12 and rec.records[0].utm_zone == "32V"
    north = np.array([r.utm_north for r in rec.records]) - frame.origin_north
    assert north == pytest.approx(np.tile(np.arange(12) * 10.0, 2), abs=0.01)
    assert all(r.heading == pytest.approx(0.0, abs=0.5) or r.heading == pytest.approx(360, abs=0.5)
               for r in rec.records)
    db, q = R.revisit_queries(rec.xy(), rec.bag_index, rec.stamps, min_revisit_s=30.0)
    assert list(db) == list(range(12)) and list(q) == list(range(12, 24))


# -- the split -----------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(-500, 500), st.floats(-500, 500)), min_size=5, max_size=60),
       st.floats(0.1, 0.5), st.floats(0.0, 80.0))
def test_no_training_frame_is_near_a_held_out_one(points, fraction, gap):
    xy = np.array(points)
    try:
        train, val, dropped = R.spatial_split(xy, fraction, gap)
    except R.RecordingError as e:
        assert "nothing is left to train on" in str(e)
        return
    assert len(train) and len(val)
    assert sorted(np.concatenate([train, val, dropped]).tolist()) == list(range(len(xy)))
    d = np.linalg.norm(xy[train][:, None] - xy[val][None], axis=2)
    assert d.min() >= gap - 1e-6


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.floats(0, 200), st.integers(0, 300)), min_size=1, max_size=40))
def test_a_query_is_a_place_seen_before(frames):
    bag = np.array([f[0] for f in frames])
    xy = np.array([(f[1], 0.0) for f in frames])
    stamps = np.array([f[2] for f in frames], dtype=np.int64) * 10**9
    db, q = R.revisit_queries(xy, bag, stamps, min_revisit_s=30.0)
    assert sorted(np.concatenate([db, q]).tolist()) == list(range(len(frames)))
    for i in range(len(frames)):
        seen = [(bag[j] < bag[i] or (bag[j] == bag[i] and stamps[i] - stamps[j] >= 30 * 10**9))
                and abs(xy[i, 0] - xy[j, 0]) < 25.0 for j in range(len(frames))]
        assert (i in q) == any(seen)
