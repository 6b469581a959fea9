"""Loop-closure confidence and its operating point: the confidence is in [0, 1] and never falls as the evidence
grows; at the default loop_closure_min_confidence a closure to one of two identical places (a look-alike: it may
name the wrong one) is dropped and a closure to a unique place is kept (Localizer, real FAISS maps on disk, the
bundled encoder, real Nordland frames); `geoloc eval --loop-closures` runs on a tiny stretch."""

from dataclasses import replace
import json

import pytest

from geoloc_ros.cli import main as geoloc_main
from geoloc_ros.datasets import read_image
from geoloc_ros.localization import Frame, Localizer, load_snapshot
from geoloc_ros.localization.confidence import AGREEMENT_MAX, Evidence, confidence
from geoloc_ros.mapping.builders import add_dataset, new_map_for
from geoloc_ros.model import load_encoder, nordland
from geoloc_ros.node import params
from geoloc_ros.node.images import is_blank
from geoloc_ros.resources import resource

ENCODER = resource("maps", "nordland_demo") / "encoder.safetensors"
LOOK_ALIKE_OFFSET_DEG = 0.05  # the copy of the look-alike stretch lies ~5 km north of the original


@pytest.mark.parametrize("mode", ["sequence", "consecutive"])
def test_confidence_in_unit_interval_and_monotone_in_the_evidence(mode):
    base = Evidence(similarity_margin=0.05, agreement=2, sequence_margin=1.1 if mode == "sequence" else None)
    more = {"similarity_margin": [-2.0, -0.2, 0.0, 0.1, 0.5, 2.0], "agreement": list(range(AGREEMENT_MAX + 3)),
            "inliers": [0, 15, 30, 300]}
    if mode == "sequence":
        more["sequence_margin"] = [1.0, 1.05, 1.2, 2.0, 10.0]
    for field, values in more.items():
        confs = [confidence(replace(base, **{field: v}), mode) for v in values]
        assert all(0.0 <= c <= 1.0 for c in confs)
        assert confs == sorted(confs), (field, confs)
    assert confidence(replace(base, odometry_consistent=False), mode) < confidence(base, mode) \
        == confidence(replace(base, odometry_consistent=True), mode)
    extreme = [Evidence(m, a, s) for m in (-2.0, 2.0) for a in (0, AGREEMENT_MAX) for s in (1.0, 100.0)]
    assert all(0.0 <= confidence(e, mode) <= 1.0 for e in extreme)


@pytest.fixture(scope="module")
def look_alike_map(shared_data, tmp_path_factory):
    """Summer frames 19210..19500 (stretch A), 19510..19800 (B), then A's images again ~5 km on (A'): two places
    that look exactly alike, and one unique one. Built as `geoloc map build` builds (add_dataset), rows in capture
    order as sequence matching expects."""
    encoder = load_encoder(ENCODER, device="cpu")
    recs = [r for r in nordland.split(shared_data / "nordland64", frames=(19210, 19800), seasons=("summer",))
            if not nordland.is_blank(read_image(r.path))]
    a = [r for r in recs if nordland.frame_number(r.path) <= 19500]
    b = [r for r in recs if nordland.frame_number(r.path) > 19500]
    copy = [replace(r, lat=r.lat + LOOK_ALIKE_OFFSET_DEG, label="copy-" + r.label) for r in a]
    db = new_map_for(encoder, "look_alike")
    add_dataset(db, encoder, a + b + copy, progress=False)
    db.attach_encoder(ENCODER)
    path = tmp_path_factory.mktemp("closures") / "map"
    db.save(path)
    return str(path), a, b


def _replay(map_path, records, mode, **overrides):
    s = params.localizer_config(params.settings(**{"device": "cpu", "map_path": [map_path],
                                                   "consistency_mode": mode, **overrides}))
    loc = Localizer(load_snapshot(s))
    frames = [Frame("/cam", "/cam", (i + 1) * 10**9, "camera", read_image(r.path)) for i, r in enumerate(records)]
    return loc.process(frames)


@pytest.mark.parametrize("mode", ["sequence", "consecutive"])
def test_default_threshold_drops_a_look_alike_closure_and_keeps_a_unique_one(look_alike_map, mode):
    map_path, a, b = look_alike_map
    # Unthresholded, the look-alike stretch does give closures, each naming A or its copy A' (equally alike).
    everything = _replay(map_path, a, mode, loop_closure_min_confidence=0.0)
    rated = [r for r in everything if r.closures]
    assert len(rated) >= len(a) // 2
    assert all(r.closures[0].confidence < params.defaults()["loop_closure_min_confidence"] for r in rated)
    # At the defaults they are all dropped ...
    assert not any(r.closures for r in _replay(map_path, a, mode))
    # ... while the unique stretch B closes loops with the right keyframes, confidently.
    kept = [(r, rec) for r, rec in zip(_replay(map_path, b, mode), b) if r.closures]
    assert len(kept) >= len(b) // 2
    for r, rec in kept:
        c = r.closures[0]
        assert c.keyframe.label == rec.label and c.confidence >= params.defaults()["loop_closure_min_confidence"]
        assert all(x.confidence == c.confidence for x in r.closures)
        assert r.evidence is not None and r.evidence.similarity_margin > 0


def test_eval_loop_closures_on_a_tiny_stretch(shared_data, tmp_path):
    data = shared_data / "nordland64"
    rc = geoloc_main(["eval", "--loop-closures", "--encoder", str(ENCODER), "--database", str(data / "summer"),
                      "--queries", str(data / "winter"), "--sequence-spacing", "10", "--split", "tiny=19210:19400",
                      "--device", "cpu", "--out", str(tmp_path / "out")])
    assert rc == 0
    result = json.loads((tmp_path / "out" / "loop_closures.json").read_text())
    winter = nordland.split(data, frames=(19210, 19400), seasons=("winter",))
    answered = sum(not is_blank(read_image(r.path)) for r in winter)  # the node refuses blank frames
    assert (tmp_path / "out" / "loop_closures.png").stat().st_size > 10_000
    assert result["threshold"] == params.defaults()["loop_closure_min_confidence"]
    assert set(result["summaries"]) == {"tiny 19210..19400, sequence", "tiny 19210..19400, consecutive"}
    for key, s in result["summaries"].items():
        rows = result["runs"][key]["rows"]
        assert s["curve"]["frames"] == len(rows) == answered
        c = s["curve"]
        assert c["precision"] and all(0.0 <= v <= 1.0 for v in c["precision"] + c["recall"])
        assert c["thresholds"] == sorted(c["thresholds"], reverse=True)
        assert c["recall"] == sorted(c["recall"])  # lowering the threshold never loses a correct closure
        assert 0.0 <= s["recall_at_100"] <= s["recall_at_99"] <= 1.0
        assert s["curve"]["closures"] == sum(r["closure"] is not None for r in rows)
    assert (tmp_path / "out" / "maps" / "tiny" / "manifest.json").is_file()  # built by `geoloc map build`


def test_agreement_and_odometry_evidence_of_the_closure_history():
    """Agreement counts preceding closures of the same stretch (sequence mode: only those on another keyframe);
    odometry is consistent when the keyframes' distance matches the distance travelled."""
    from geoloc_ros.localization import Candidate
    from geoloc_ros.localization.confidence import ClosureHistory
    from geoloc_ros.localization.consistency import ConsistencyFilter
    from geoloc_ros.mapping import Keyframe

    same_place = ConsistencyFilter(radius_m=50.0).same_place

    def at(i, y):
        return Candidate("/maps/a", "a", Keyframe(id=i, x=0.0, y=float(y)), 0.5)

    moving, stuck = (ClosureHistory(same_place, 50.0, must_advance=True) for _ in range(2))
    for i in range(AGREEMENT_MAX + 2):  # the camera advances 10 m a frame; one closure follows it, one is stuck
        m, m_odom = moving.update("/cam", at(i, 10 * i), (0.0, 10.0 * i, 0.0))
        s, s_odom = stuck.update("/cam", at(0, 0), (0.0, 10.0 * i, 0.0))
    assert (m, m_odom) == (AGREEMENT_MAX, True)
    assert (s, s_odom) == (0, True)  # stuck: no agreement; 10 m of odometry still within the 50 m tolerance
    far = moving.update("/cam", at(99, 10 * (AGREEMENT_MAX + 2)), (0.0, 10.0 * (AGREEMENT_MAX + 2) + 500.0, 0.0))
    assert far == (AGREEMENT_MAX, False)  # the keyframe moved 10 m, odometry 510 m: inconsistent
    assert moving.update("/cam", None, None) == (0, None) and moving.update("/cam", at(5, 0), None)[1] is None
