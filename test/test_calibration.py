"""`geoloc calibrate` and the per-encoder calibration the Localizer loads: the command on real Nordland frames with
the bundled encoder (a copy, so the file lands beside it), the file's contents, and which coefficients a snapshot
uses for which encoder."""

import json
import math
import shutil

from hypothesis import HealthCheck, given
from hypothesis import settings as settings_
from hypothesis import strategies as st
import pytest

from geoloc_ros.cli import main
from geoloc_ros.localization import calibration as C
from geoloc_ros.localization import load_snapshot
from geoloc_ros.localization.confidence import COEFFICIENTS
from geoloc_ros.model import save_encoder
from geoloc_ros.model.testing import bundled_encoder_path, tiny_encoder
from geoloc_ros.node import params


def settings(encoder):
    return params.localizer_config(params.settings(**{"device": "cpu", "encoder_path": str(encoder),
                                                      "map_path": [""], "session_map": True}))


@pytest.fixture(scope="module")
def calibrated(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calibrate")
    encoder = tmp / "mine" / "encoder.safetensors"
    encoder.parent.mkdir()
    shutil.copy(bundled_encoder_path(), encoder)
    nordland = shared_data / "nordland64"
    rc = main(["calibrate", "--encoder", str(encoder), "--database", str(nordland / "summer"), "--queries",
               str(nordland / "winter"), "--sequence-spacing", "10", "--frames", "19210:20800", "--work",
               str(tmp / "work")])
    assert rc == 0
    return encoder, tmp


def test_calibrate_writes_the_coefficients_beside_the_encoder_with_what_they_were_fitted_on(calibrated):
    encoder, tmp = calibrated
    doc = json.loads((encoder.parent / "encoder.calibration.json").read_text())
    assert doc["format"] == C.FORMAT and doc["encoder_fingerprint"] == C.BUNDLED_FINGERPRINT
    assert doc["fitted_on"]["frames"] == [19210, 20800] and doc["date"]
    assert doc["operating_point"]["threshold"] == 0.96 and doc["operating_point"]["precision_target"] == 0.99
    for mode in ("sequence", "consecutive"):
        w = doc["coefficients"][mode]
        assert all(math.isfinite(v) for v in w.values()) and all(w[f] >= 0 for f in C.FEATURES)
        # on the data it was fitted on, the default threshold keeps the precision it was placed at
        assert doc["operating_point"]["at_threshold"][mode]["precision"] >= 0.99
    assert (tmp / "work" / "calibration.png").stat().st_size > 0


def test_the_snapshot_uses_the_calibration_fitted_for_its_encoder(calibrated):
    encoder, _ = calibrated
    snap = load_snapshot(settings(encoder))
    assert snap.calibration.calibrated and snap.calibration.source == str(encoder.parent / "encoder.calibration.json")
    assert snap.calibration.coefficients != COEFFICIENTS


def test_another_encoder_runs_uncalibrated_and_says_what_it_means(calibrated, tmp_path):
    encoder, _ = calibrated
    other = save_encoder(tiny_encoder(), tmp_path / "other")
    shutil.copy(encoder.parent / "encoder.calibration.json", C.path_for(other))  # fitted for another encoder
    snap = load_snapshot(settings(other))
    assert not snap.calibration.calibrated and snap.calibration.coefficients == COEFFICIENTS
    assert "UNCALIBRATED" in snap.calibration.describe() and "loop_closure_min_confidence" in \
        snap.calibration.describe()


def test_the_bundled_encoder_keeps_its_coefficients_and_a_broken_file_is_ignored(tmp_path):
    assert load_snapshot(settings(bundled_encoder_path())).calibration.source in ("bundled",
                                                                                    str(C.path_for(bundled_encoder_path())))
    other = save_encoder(tiny_encoder(seed=3), tmp_path / "broken")
    C.path_for(other).write_text("{not json")
    assert not C.for_encoder(other, "abc").calibrated
    C.path_for(other).write_text(json.dumps({"format": C.FORMAT, "encoder_fingerprint": "abc",
                                             "coefficients": {"sequence": {"bias": "nan"}}}))
    assert not C.for_encoder(other, "abc").calibrated


def test_the_node_warns_in_the_log_and_diagnostics_that_closures_are_uncalibrated(street_map, graph):
    """A map built with an encoder nobody calibrated: /diagnostics turns WARN and says what it means for
    loop_closure_min_confidence; with the threshold at 0 (every closure published) nothing rests on it."""
    from geoloc_ros.datasets import read_image
    from geoloc_ros.replay import image_message

    start, h = graph
    n = start({"map_path": [str(street_map[2])]})
    assert n.active, n.node.last_error
    assert h.wait_for_subscriber()
    h.publish(image_message(read_image(street_map[1][0].path), 1_700_000_000 * 10**9))
    assert h.wait_for(lambda: "uncalibrated" in h.diag_values().get("message", ""), timeout=15), h.diag_values()
    d = h.diag_values()
    assert d["level"] == b"\x01" and d["closure_confidence"].startswith("UNCALIBRATED")
    assert "loop_closure_min_confidence" in d["closure_confidence"]


@given(doc=st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                            st.sampled_from(["format", "encoder_fingerprint", "coefficients", "sequence",
                                             "consecutive", "bias", *C.FEATURES]), inner, max_size=4),
                        max_leaves=12))
@settings_(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_calibration_file_is_read_or_ignored_never_a_crash(tmp_path, doc):
    encoder = tmp_path / "encoder.safetensors"
    if isinstance(doc, dict) and doc.get("format") is not None:
        doc = {**doc, "format": C.FORMAT, "encoder_fingerprint": "abc"}
    C.path_for(encoder).write_text(json.dumps(doc))
    got = C.for_encoder(encoder, "abc")
    assert got.calibrated == (got.source == str(C.path_for(encoder)))
    assert set(got.coefficients) == set(COEFFICIENTS)


# -- from a rosbag2 recording: revisits told from the positions -------------------------------------------------
@pytest.fixture(scope="module")
def two_lap_bag(shared_data, tmp_path_factory):
    """120 places of nordland64 (frames 21610..22800) round an ellipse twice, summer lap then winter lap, with
    odometry (the `geoloc train --bag` test's recording)."""
    from geoloc_ros.bench.train_bag import nordland_laps, write_route_bag

    bag = tmp_path_factory.mktemp("calibrate_bag") / "route.mcap"
    write_route_bag(bag, nordland_laps(shared_data / "nordland64", 21610, 120))
    return bag


def test_calibrate_from_a_bag_maps_the_first_visits_and_fits_on_the_revisits(two_lap_bag, tmp_path):
    encoder = tmp_path / "mine" / "encoder.safetensors"
    encoder.parent.mkdir()
    shutil.copy(bundled_encoder_path(), encoder)
    rc = main(["calibrate", "--encoder", str(encoder), "--bag", str(two_lap_bag), "--image-topic",
               "/camera/image_raw", "--odom-topic", "/odom", "--work", str(tmp_path / "work")])
    assert rc == 0
    doc = json.loads(C.path_for(encoder).read_text())
    data = doc["fitted_on"]
    assert data["bags"] == [str(two_lap_bag)] and data["positions"]["odom_topic"] == "/odom"
    # lap 2 revisits lap 1; lap 1's last places also revisit its first (the ellipse closes, 60 s later)
    assert 80 <= data["revisits"] <= 140 and data["map_frames"] + data["revisits"] == data["frames"]
    assert data["closures"]["sequence"] >= 50
    # Measured: sequence 95 closures, 93 right; at the calibrated 0.96 precision 1.000, recall 0.716. Required: the
    # operating point keeps the precision target on the data it was fitted on, and publishes something.
    op = doc["operating_point"]["at_threshold"]["sequence"]
    assert op["precision"] >= 0.99 and op["recall"] >= 0.3
    assert C.for_encoder(encoder, doc["encoder_fingerprint"]).source == str(C.path_for(encoder))


def test_calibrate_from_a_bag_without_revisits_or_positions_says_why(shared_data, tmp_path, capsys):
    from geoloc_ros.bench.train_bag import nordland_laps, write_route_bag

    once = tmp_path / "once.mcap"
    write_route_bag(once, nordland_laps(shared_data / "nordland64", 21610, 40, seasons=("summer",)))  # 20 s
    base = ["calibrate", "--encoder", str(bundled_encoder_path()), "--bag", str(once), "--work", str(tmp_path),
            "--out", str(tmp_path / "c.json")]
    with pytest.raises(SystemExit, match="needs revisits|no frame of the recording revisits"):
        main(base + ["--image-topic", "/camera/image_raw", "--odom-topic", "/odom"])
    with pytest.raises(SystemExit, match="--bag needs --image-topic and positions"):
        main(base + ["--image-topic", "/camera/image_raw"])
    with pytest.raises(SystemExit, match="no topic ./nope.; the recording has"):
        main(base + ["--image-topic", "/nope", "--odom-topic", "/odom"])
    assert not (tmp_path / "c.json").exists()
