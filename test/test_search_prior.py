"""The position prior on the search (search_prior): a look-alike place far away that would win without the prior
is refused with it, counted; without a prior the search is unchanged. The ROS-free Localizer, a real FAISS map of
real Nordland frames, the bundled encoder; and the node on a real DDS graph with the robot's TF tree published from
another process (test/tf_publisher.py)."""

from dataclasses import replace
import math
from pathlib import Path
import subprocess
import sys
import time

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from geoloc_ros.datasets import read_image
from geoloc_ros.localization import Frame, Localizer, load_snapshot
from geoloc_ros.localization.prior import CHI2_2D_99, SearchPrior
from geoloc_ros.localization.transforms import Transform, TransformBuffer
from geoloc_ros.mapping import MapDatabase
from geoloc_ros.mapping.builders import add_dataset, new_map_for
from geoloc_ros.model import load_encoder, nordland
from geoloc_ros.model.testing import bundled_encoder_path
from geoloc_ros.node import params

T0 = 1_700_000_000 * 10**9


@pytest.fixture(scope="module")
def lookalike_map(shared_data, tmp_path_factory):
    """Winter frame 19500 placed 5 km north of the stretch (the look-alike: the query itself), and the summer
    frames 19400..19600 where they belong (the true place: the same place in another season)."""
    enc = load_encoder(bundled_encoder_path(), device="cpu")
    summer = nordland.split(shared_data / "nordland64", frames=(19400, 19600), seasons=("summer",))
    winter = nordland.split(shared_data / "nordland64", frames=(19500, 19500), seasons=("winter",))[0]
    far = replace(winter, lat=winter.lat + 0.045, label="far-lookalike")  # ~5 km north
    db = new_map_for(enc, "prior")
    add_dataset(db, enc, summer + [far], progress=False)
    db.attach_encoder(bundled_encoder_path())
    path = tmp_path_factory.mktemp("prior") / "map"
    db.save(path)
    return str(path), winter


def localizer(path, **overrides):
    s = params.localizer_config(params.settings(**{"device": "cpu", "map_path": [path], **overrides}))
    return Localizer(load_snapshot(s))


def query(winter, covariance=(100.0, 0.0, 100.0)):
    return Frame(camera="/cam", topic="/cam", stamp_ns=T0, frame_id="camera", rgb=read_image(winter.path),
                 fix=(winter.lat, winter.lon, math.nan), fix_covariance=covariance)


def test_a_far_lookalike_wins_without_the_prior_and_is_refused_with_it(lookalike_map):
    path, winter = lookalike_map
    plain = localizer(path).process([query(winter)])[0]
    assert plain.candidates[0].keyframe.label == "far-lookalike"
    loc = localizer(path, search_prior="fix")
    got = loc.process([query(winter)])[0]
    assert got.candidates and all(c.keyframe.label != "far-lookalike" for c in got.candidates)
    d = loc.prior.diagnostics()
    assert d["search_prior"] == "fix" and d["prior_searches"] == 1 and d["prior_refused_best"] == 1
    assert d["prior_refused_candidates"] >= 1  # the look-alike, and summer frames more than 50 m along the line


def test_a_wide_covariance_lets_the_far_place_back_in(lookalike_map):
    path, winter = lookalike_map
    loc = localizer(path, search_prior="fix")
    got = loc.process([query(winter, covariance=(4000.0**2, 0.0, 4000.0**2))])[0]  # 4 km sd: bound ~12 km
    assert got.candidates[0].keyframe.label == "far-lookalike" and loc.prior.refused_best == 0


def test_no_fix_or_no_prior_leaves_the_search_unchanged(lookalike_map):
    path, winter = lookalike_map
    loc = localizer(path, search_prior="fix")
    got = loc.process([replace(query(winter), fix=None)])[0]
    assert got.candidates[0].keyframe.label == "far-lookalike" and loc.prior.frames == 0
    assert localizer(path).prior.diagnostics() == {}


def test_the_bound_is_the_99_percent_ellipse_never_below_the_floor():
    p = SearchPrior("fix", 50.0)
    assert p.radius(None) == 50.0 and p.radius((1.0, 0.0, 1.0)) == 50.0
    assert p.radius((100.0**2, 0.0, 10.0**2)) == pytest.approx(100.0 * math.sqrt(CHI2_2D_99))
    assert p.radius((math.nan, 0.0, 1.0)) == 50.0
    with pytest.raises(ValueError, match="search_prior"):
        SearchPrior("gps", 1.0)


@given(cov=st.tuples(st.floats(), st.floats(), st.floats()), floor=st.floats(0.0, 1e6))
@settings(max_examples=100, deadline=None)
def test_any_fix_covariance_gives_a_bound_at_least_the_floor(cov, floor):
    r = SearchPrior("fix", floor).radius(cov)
    assert r >= floor and not math.isnan(r)


# -- search_prior tf / metric: a position in the node's map frame ---------------------------------------------------
def true_place(path, winter) -> tuple:
    """Where the winter query truly is, in the map's frame (the node's map frame: the map is its only one)."""
    x, y, _ = MapDatabase.load(path).frame.to_local(winter.lat, winter.lon, 0.0)
    return float(x), float(y)


@pytest.mark.parametrize("kind", ["tf", "metric"])
def test_a_map_frame_position_refuses_the_far_lookalike(lookalike_map, kind):
    path, winter = lookalike_map
    loc = localizer(path, search_prior=kind)
    x, y = true_place(path, winter)
    got = loc.process([replace(query(winter), fix=None, position_prior=(x, y, (100.0, 0.0, 100.0)))])[0]
    assert got.candidates and all(c.keyframe.label != "far-lookalike" for c in got.candidates)
    assert loc.prior.refused_best == 1 and loc.prior.missing == 0
    unbounded = loc.process([replace(query(winter), position_prior=None)])[0]  # the fix is not this prior's source
    assert unbounded.candidates[0].keyframe.label == "far-lookalike" and loc.prior.missing == 1


def chain(buffer, map_to_odom_stamp, odom_to_base_stamp, static_map=False):
    yaw90 = (0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4))
    buffer.update(Transform("map", "odom", map_to_odom_stamp, (100.0, 200.0, 0.0), yaw90, static_map))
    buffer.update(Transform("/odom", "base_link", odom_to_base_stamp, (5.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))


def test_transforms_compose_from_the_robot_up_to_the_map():
    b = TransformBuffer()
    chain(b, T0, T0)
    (x, y, z), outcome = b.position("map", "base_link", T0, 10**9)
    assert outcome == "ok" and (x, y, z) == pytest.approx((100.0, 205.0, 0.0))
    assert b.position("map", "camera", T0, 10**9) == (None, "unavailable")
    assert b.position("earth", "base_link", T0, 10**9) == (None, "unavailable")


def test_a_stale_transform_is_not_used():
    """The moving link nearest the robot must be younger than the allowed age; a correction above it (map ->
    odom) may be older, and static links never age."""
    b = TransformBuffer()
    chain(b, T0, T0 - 3 * 10**9)
    assert b.position("map", "base_link", T0, 10**9) == (None, "stale")
    chain(b, T0 - 60 * 10**9, T0)
    assert b.position("map", "base_link", T0, 10**9)[1] == "ok"
    only_static = TransformBuffer()
    only_static.update(Transform("map", "base_link", T0 - 3600 * 10**9, (1.0, 2.0, 0.0), (0, 0, 0, 1), True))
    assert only_static.position("map", "base_link", T0, 10**9)[1] == "ok"


def test_an_older_transform_does_not_replace_a_newer_one_and_a_cycle_ends():
    b = TransformBuffer()
    b.update(Transform("map", "base_link", T0, (1.0, 0.0, 0.0), (0, 0, 0, 1)))
    b.update(Transform("map", "base_link", T0 - 10**9, (9.0, 0.0, 0.0), (0, 0, 0, 1)))
    assert b.position("map", "base_link", T0, 10**9)[0] == pytest.approx((1.0, 0.0, 0.0))
    b.update(Transform("a", "b", T0, (0, 0, 0), (0, 0, 0, 1)))
    b.update(Transform("b", "a", T0, (0, 0, 0), (0, 0, 0, 1)))
    assert b.position("map", "a", T0, 10**9) == (None, "unavailable")


@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=7, max_size=7),
       parent=st.text(max_size=4), child=st.text(max_size=4), stamp=st.integers(-2**62, 2**62))
@settings(max_examples=100, deadline=None)
def test_any_transform_is_kept_or_refused_never_raises(values, parent, child, stamp):
    b = TransformBuffer()
    b.update(Transform(parent, child, stamp, tuple(values[:3]), tuple(values[3:])))
    position, outcome = b.position(parent, child, stamp, 10**9)
    assert outcome in ("ok", "stale", "unavailable")
    assert position is None or all(math.isfinite(v) for v in position) or max(abs(v) for v in values[:3]) > 1e300


def run_tf_publisher(x, y, age=0.0):
    script = Path(__file__).with_name("tf_publisher.py")
    proc = subprocess.Popen([sys.executable, str(script), "--x", str(x), "--y", str(y), "--age", str(age)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "publishing"
    return proc


@pytest.mark.parametrize("age", [0.0, 5.0], ids=["fresh", "stale"])
def test_node_with_the_tf_prior_refuses_the_far_lookalike_unless_the_transform_is_stale(lookalike_map, graph, age):
    """search_prior tf: map -> odom -> base_link from another process. Fresh: the look-alike 5 km away is refused;
    the odometry link 5 s old (max age 1 s): the prior is not used and the look-alike wins, counted stale."""
    from geoloc_ros.replay import image_message

    path, winter = lookalike_map
    start, h = graph
    n = start({"map_path": [path], "search_prior": "tf", "search_prior_max_age_s": 1.0,
               "encoder_backend": "torch"})
    assert n.active, n.node.last_error
    proc = run_tf_publisher(*true_place(path, winter), age=age)
    try:
        prior = n.node._prior
        assert h.wait_for(lambda: prior.transforms.position("map", "base_link", time.time_ns(), 10**12)[1] == "ok",
                          timeout=20)
        assert h.wait_for_subscriber()
        stamp = time.time_ns()
        h.publish(image_message(read_image(winter.path), stamp))
        assert h.wait_for(lambda: stamp in h.data.results["place_recognition"], timeout=30)
        labels = [c.keyframe_label for c in h.data.results["place_recognition"][stamp].candidates]
        key = "prior_positions" if age == 0.0 else "prior_stale"
        assert h.wait_for(lambda: h.diag_values().get(key) == "1", timeout=10), h.diag_values()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    d = h.diag_values()
    if age == 0.0:
        assert labels and "far-lookalike" not in labels and d["prior_refused_best"] == "1"
    else:
        assert labels[0] == "far-lookalike" and d["prior_searches"] == "0" and d["prior_missing"] == "1"


def test_the_metric_prior_is_the_last_metric_pose_with_its_covariance_while_recent():
    from geoloc_ros.localization import Pose
    from geoloc_ros.node.position_prior import PositionPrior

    prior = PositionPrior(params.settings(search_prior="metric", search_prior_max_age_s=1.0))
    covariance = [0.0] * 36
    covariance[0], covariance[1], covariance[7] = 4.0, 1.0, 9.0
    pose = Pose(10.0, 20.0, 0.0, (0.0, 0.0, 0.0, 1.0), covariance)
    assert prior.for_frame(T0) is None  # no metric pose yet
    assert prior.for_frame(T0 + 10**9 // 2, (T0, pose)) == (10.0, 20.0, (4.0, 1.0, 9.0))
    assert prior.for_frame(T0 + 2 * 10**9, (T0, pose)) is None
    assert prior.diagnostics() == {"prior_positions": 1, "prior_stale": 1, "prior_unavailable": 1}
    assert PositionPrior(params.settings(search_prior="fix")).diagnostics() == {}
