"""`geoloc demo` end to end: a vpr_node process, a rosbag2 replayed through DDS, the summary and the plot.

On a map and bag written here from real Nordland frames (small random encoder, the same frames replayed, so
Recall@1 must be ~100%), and on the bundled demo map once it exists (first 60 frames)."""

import json

import pytest

pytest.importorskip("rclpy")

from geoloc_ros.cli import main as geoloc_main  # noqa: E402
from geoloc_ros.cli.demo import find_bag, run_demo  # noqa: E402
from geoloc_ros.datasets import read_image  # noqa: E402
from geoloc_ros.mapping.bag import write_image_bag  # noqa: E402
from geoloc_ros.mapping.builders import add_dataset, new_map_for  # noqa: E402
from geoloc_ros.model import nordland, save_encoder  # noqa: E402
from geoloc_ros.model.testing import tiny_encoder  # noqa: E402
from geoloc_ros.resources import resource  # noqa: E402


def test_demo_on_a_small_map(shared_data, tmp_path):
    enc = tiny_encoder()
    recs = nordland.split(shared_data / "nordland64", frames=(19210, 19700), seasons=("summer",))
    db = new_map_for(enc, "demo_test")
    add_dataset(db, enc, [r for r in recs if not nordland.is_blank(read_image(r.path))], progress=False)
    db.attach_encoder(save_encoder(enc, tmp_path / "enc"))
    db.save(tmp_path / "map")
    t0 = 1_700_000_000 * 10**9
    write_image_bag(tmp_path / "map" / "bag", [(t0 + i * 10**8, read_image(r.path), (r.lat, r.lon, 0.0))
                                              for i, r in enumerate(recs)])
    assert find_bag(tmp_path / "map") == tmp_path / "map" / "bag"
    # A random encoder's margins are tiny, so its closures stay under the default confidence threshold: this test
    # checks the demo's plumbing with every closure published (test_loop_closures.py checks the threshold).
    rc = geoloc_main(["demo", "--map", str(tmp_path / "map"), "--out", str(tmp_path / "out"), "--device", "cpu",
                      "--param", "consistency_mode:=sequence", "--param", "loop_closure_min_confidence:=0.0"])
    assert rc == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["frames_sent"] == len(recs) and s["replay_rate_hz"] == pytest.approx(10.0)
    assert s["frames_answered"] + s["frames_rejected"] + s["frames_dropped"] >= len(recs) - 1
    assert s["recall_at_1"] >= 0.95 and s["loop_closure_precision"] >= 0.95
    assert s["geopose_error_m_p50"] < 10.0
    assert (tmp_path / "out" / "demo.png").stat().st_size > 10_000


BUNDLED = resource("maps", "nordland_demo")


@pytest.mark.skipif(not (BUNDLED / "manifest.json").is_file(), reason="the bundled map maps/nordland_demo is not built")
def test_bundled_demo_first_frames(tmp_path):
    s = run_demo(BUNDLED, find_bag(BUNDLED), out_dir=tmp_path, device="cpu", limit=60, verbose=False)
    assert s["frames_answered"] > 0 and s["recall_at_1"] == s["recall_at_1"]  # answers, and a number
    print(f"\nbundled demo, first 60 frames: Recall@1 {s['recall_at_1']:.1%}, latency p50 {s['latency_ms_p50']:.1f} ms")
