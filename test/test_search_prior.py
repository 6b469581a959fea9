"""The position prior on the search (search_prior): a look-alike place far away that would win without the prior
is refused with it, counted; without a prior the search is unchanged. The ROS-free Localizer, a real FAISS map of
real Nordland frames, the bundled encoder."""

from dataclasses import replace
import math

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from geoloc_ros.datasets import read_image
from geoloc_ros.localization import Frame, Localizer, load_snapshot
from geoloc_ros.localization.prior import CHI2_2D_99, SearchPrior
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
