"""Session-map loop closures on a route driven once and on one driven twice: the ROS-free Localizer with the
bundled encoder on real Nordland frames (../shared/data), every parameter at its default unless a test says.

The stretch is the held-out one (19210..24000: frames the bundled encoder was never trained on; the session-map
tests' margin and support were chosen on winter 10..9000, docs/node.md). Frames are sent one per second, as a
drive at 10 m/s with a keyframe every 10 m. A closure is false when its keyframe's place is more than 25 m from
the frame's (places: the frame numbers on a line 10 m apart, the project's convention)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from geoloc_ros.datasets import read_image
from geoloc_ros.localization import Frame, Localizer, SessionMap, load_snapshot
from geoloc_ros.localization import closure_eval as E
from geoloc_ros.localization.revisit import RevisitTest
from geoloc_ros.mapping import Keyframe
from geoloc_ros.model.nordland import frame_number
from geoloc_ros.node import params

ENCODER = Path(__file__).resolve().parents[1] / "maps" / "nordland_demo" / "encoder.safetensors"
T0 = 1_700_000_000 * 10**9


def settings(**overrides):
    return params.localizer_config(params.settings(**{"device": "cpu", "encoder_path": str(ENCODER),
                                                      "map_path": [""], "session_map": True, **overrides}))


def drive(shared_data, lo, hi, season="winter"):
    files = sorted((shared_data / "nordland64" / season).glob("*.png"))
    return [(f, float(frame_number(f))) for f in files if lo <= frame_number(f) <= hi]


def published(rows, s):
    return [r["closure"] for r in rows if r["closure"] and r["closure"]["confidence"] >= s.loop_closure_min_confidence]


def odometry(route):
    """x = the place (10 m per frame); a second lap jumps back, which odometry counts as travelled path."""
    return [(place, 0.0, 0.0) for _, place in route]


@pytest.fixture(scope="module")
def once(shared_data):
    return drive(shared_data, 19210, 20800)  # 160 frames, about 150 not blank


@pytest.mark.parametrize("with_odometry", [False, True])
def test_a_route_driven_once_closes_no_loop(once, with_odometry):
    s = settings()
    rows = E.replay_session(s, once, odometry(once) if with_odometry else None)
    false = [c for c in published(rows, s) if c["error_m"] > 25]
    assert len(rows) > 140 and len(false) <= 1, false


def test_without_the_revisit_test_the_same_route_closes_false_loops(once):
    """What the test guards against: the recent past, just outside the 30 s window, taken for a loop."""
    s = settings(session_loop_margin=0.0, session_loop_support=0)
    rows = E.replay_session(s, once)
    false = [c for c in published(rows, s) if c["error_m"] > 25]
    assert len(false) >= 10
    assert min(c["frames_back"] for c in false) == 30  # the youngest keyframe the window lets through


@pytest.mark.parametrize("with_odometry", [False, True])
def test_a_second_lap_closes_its_loops(shared_data, with_odometry):
    """Lap 1 in winter, lap 2 the same stretch in summer: the second lap closes loops with the first."""
    lap1, lap2 = drive(shared_data, 19210, 20400), drive(shared_data, 19210, 20400, "summer")
    route = lap1 + lap2
    s = settings()
    rows = E.replay_session(s, route, odometry(route) if with_odometry else None)
    closures = published(rows, s)
    second = [r for r in rows if r["frame"] >= len(lap1)]
    right = [r for r in second if r["closure"] in closures and r["closure"]["error_m"] <= 25]
    assert sum(c["error_m"] > 25 for c in closures) <= 1
    assert len(right) >= 0.1 * len(second), (len(right), len(second))  # 28 of 117 measured without odometry


def frames_standing_still(image, n, odom=None):
    return [Frame(camera="/cam", topic="/cam", stamp_ns=T0 + i * 10**9, frame_id="camera", rgb=image, odom=odom)
            for i in range(n)]


def test_a_robot_standing_still_closes_no_loop_with_itself(shared_data):
    image = read_image(drive(shared_data, 19500, 19500)[0][0])
    s = settings(consistency_k=1, loop_closure_min_confidence=0.0)
    for odom, spacing in ((None, 5.0), ((3.0, 4.0, 0.0), 0.0)):  # without odometry; with it (a keyframe a second)
        snap = load_snapshot(replace(s, session_min_spacing_m=spacing))
        loc = Localizer(snap, SessionMap(snap.encoder))
        results = [loc.process([f])[0] for f in frames_standing_still(image, 45, odom)]
        assert not any(r.closures for r in results)
        if odom is not None:  # no travel: every keyframe is recent past, never a candidate
            assert not any(r.candidates for r in results)
    # the same frames without the revisit test: the frame 30 s back is taken for a loop
    snap = load_snapshot(replace(s, session_loop_margin=0.0, session_loop_support=0))
    loc = Localizer(snap, SessionMap(snap.encoder))
    assert any(loc.process([f])[0].closures for f in frames_standing_still(image, 45))


def test_with_odometry_the_recent_past_is_measured_in_travelled_metres(once):
    """10 m per frame and session_exclusion_distance_m 50: keyframes 5 frames back (5 s, well inside the 30 s
    window) are candidates, none closer; without odometry the 30 s window holds."""
    s = settings(session_exclusion_distance_m=50.0)
    snap = load_snapshot(s)
    route = once[:60]
    for with_odometry in (True, False):
        loc = Localizer(snap, SessionMap(snap.encoder))
        lags = []
        for i, (path, place) in enumerate(route):
            f = Frame(camera="/cam", topic="/cam", stamp_ns=T0 + i * 10**9, frame_id="camera", rgb=read_image(path),
                      odom=(place, 0.0, 0.0) if with_odometry else None)
            r = loc.process([f])[0]
            lags += [(f.stamp_ns - c.keyframe.stamp_ns) / 1e9 for c in r.candidates]
        if with_odometry:
            assert min(lags) >= 5 and min(lags) < 30
        else:
            assert min(lags) >= 30


def kf(i):
    return Keyframe(id=i, label=str(i))


class Anchor:
    def __init__(self, i, similarity):
        self.key, self.similarity = ("session", kf(i)), similarity


def agree_ids(a, b):
    return abs(a[1].id - b[1].id) <= 5


def test_revisit_test_needs_the_margin_over_the_recent_past_and_support():
    t = RevisitTest(agree_ids, margin=1.0, support=2)
    # 0.6 vs a recent past at 0.55 with spread 0.1: 0.5 sd, refused
    assert not t.check("cam", Anchor(10, 0.6), 0.55, 0.1) and t.refused_recent == 1
    # beats the recent past by 2 sd but has no support yet, then one, then two agreeing predecessors
    assert [t.check("cam", Anchor(10 + i, 0.8), 0.6, 0.1) for i in range(4)] == [False, False, True, True]
    assert t.refused_support == 2
    # another camera keeps its own history; no recent past: only support counts
    assert not t.check("other", Anchor(10, 0.8), None, 0.1)
    off = RevisitTest(agree_ids, margin=0.0, support=0)
    assert off.check("cam", Anchor(10, 0.1), 0.9, 0.1)


def test_recent_past_mask_uses_time_without_odometry_and_path_with_it():
    enc = type("E", (), {"dim": 4, "fingerprint": "f"})()
    session = SessionMap(enc)
    s = settings(session_exclusion_window_s=30.0, session_exclusion_distance_m=50.0)
    for i in range(10):
        f = Frame(camera="/c", topic="/c", stamp_ns=T0 + i * 10 * 10**9, frame_id="c", rgb=None, odom=(i * 20.0, 0, 0))
        session.observe(f)
        session.add(f, np.eye(4, dtype=np.float32)[i % 4])
    now = Frame(camera="/c", topic="/c", stamp_ns=T0 + 95 * 10**9, frame_id="c", rgb=None, odom=(190.0, 0, 0))
    session.observe(now)
    # path 190 m: keyframes at 180 and 160 m (< 50 m back) are recent; the time window would have said 3 (< 30 s)
    assert session.recent(now, s).tolist() == [False] * 8 + [True] * 2
    assert session.recent(replace(now, odom=None), s).tolist() == [False] * 7 + [True] * 3


def test_the_recent_past_follows_the_nodes_travelled_path_not_the_chord_between_frames():
    """Frames 100 s apart on a 200 m circle: their odometry positions are close, but the node summed 200 m of
    odometry in between (Frame.travelled_m), so the old keyframe is no longer recent past."""
    enc = type("E", (), {"dim": 4, "fingerprint": "f"})()
    session = SessionMap(enc)
    s = settings(session_exclusion_distance_m=50.0)
    first = Frame(camera="/c", topic="/c", stamp_ns=T0, frame_id="c", rgb=None, odom=(0.0, 0.0, 0), travelled_m=0.0)
    session.observe(first)
    session.add(first, np.eye(4, dtype=np.float32)[0])
    lap2 = replace(first, stamp_ns=T0 + 100 * 10**9, odom=(1.0, 0.0, 0), travelled_m=200.0)
    session.observe(lap2)
    assert session.recent(lap2, s).tolist() == [False]
    chord = replace(lap2, travelled_m=None)  # summed from frame to frame instead: 1 m
    fresh = SessionMap(enc)
    fresh.observe(first)
    fresh.add(first, np.eye(4, dtype=np.float32)[0])
    fresh.observe(chord)
    assert fresh.recent(chord, s).tolist() == [True]
