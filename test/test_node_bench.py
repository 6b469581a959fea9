"""geoloc_ros/bench/node_latency.py end to end on camera-sized frames: the vpr_node process and its floor, the echo
node (geoloc_ros/bench/echo_node.py), both answer frames published from this process through the Fast DDS profile
vpr.launch.py exports; the environment is left as it was. Figures are reported, never asserted."""

import math
import os

PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"


def test_node_benchmark_measures_the_node_and_its_echo_floor(tmp_path, monkeypatch):
    from geoloc_ros.bench.node_latency import format_result, run_node_benchmark

    monkeypatch.delenv(PROFILE_ENV, raising=False)
    r = run_node_benchmark(encoder=None, rates=(10,), duration_s=3, out_dir=tmp_path, quick=True, map_size=30,
                           image_size=(640, 480), kind="raw")
    x = r["rates"]["10"]
    assert x["sent"] == 30 and x["answered"] >= 1 and math.isfinite(x["latency_ms_p50"])
    assert math.isfinite(x["floor_ms_p50"]) and math.isfinite(x["beyond_floor_ms"])
    assert r["bare"]["at_rate_ms_p50"]["10.0"] > 0 and math.isfinite(x["overhead_ratio_at_rate"])
    assert r["dds_profile"].endswith("fastdds_large_frames.xml") and PROFILE_ENV not in os.environ
    assert r["frames"] == "640x480 raw" and r["node_backend"] != "?"
    assert (tmp_path / "node_latency.json").is_file() and (tmp_path / "echo_node.log").is_file()
    assert "echo floor" in format_result(r) and "bare at camera rate" in format_result(r)
