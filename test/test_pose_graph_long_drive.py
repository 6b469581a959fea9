"""The long-drive benchmark (geoloc_ros.bench.long_drive) at a size CI affords: a pose_graph_node process fed
2,000 odometry messages over DDS at 1 m steps (straight, then laps of a circle), covariance zero, no closure,
stays alive with memory growing only with its poses; then same-place closures between the last lap and the first
pull the laps together. The benchmark itself runs 50,000 (docs/benchmarks/long_drive)."""

import pytest

pytest.importorskip("rclpy")


def test_a_long_drive_without_closures_then_closures(tmp_path):
    from geoloc_ros.bench.long_drive import run

    figures = run(messages=2000, lap=400, closures=5, say=lambda *_: None, workdir=tmp_path)
    assert figures["alive"] and figures["exit_code_on_sigint"] == 0, figures["log_tail"]
    assert figures["messages_received"] >= 0.99 * 2000 and figures["poses"] >= 0.99 * 2000
    counts = figures["node_counts_after_drive"]
    assert counts.get("odometry_refused", "0") == "0" and counts.get("update_failures", "0") == "0", counts
    assert figures["rss_after_drive_mib"] - figures["rss_start_mib"] < 100  # ~10 KiB a pose, not unbounded
    assert figures["closures_accepted"] == 5 and figures["closure_pairs_in_path"] == 5
    assert figures["lap_gap_pose_graph_m"] < 0.25 * figures["lap_gap_odometry_m"]
