"""The three-robot demo end to end, shortened (geoloc_ros.bench.multi_robot on 30-frame stretches): three vpr_node
processes exchanging keyframes over DDS on real Nordland frames (a summer, b winter overlapping a, c summer
overlapping b only; session maps, no prior map) and the team pose_graph_node process. After the run the three
trajectories are in one frame: each robot's ATE under one team alignment is well below its odometry's, and the
inter-robot closures the back end took as factors join the same places."""

import pytest

pytest.importorskip("rclpy")


def test_three_robots_on_nordland_end_in_one_frame(shared_data, tmp_path):
    from geoloc_ros.bench.multi_robot import run

    stretches = {"a": "summer:12010:12300", "b": "winter:12160:12450", "c": "summer:12360:12650"}
    s = run(stretches, tmp_path, rate=3.0, data=shared_data / "nordland64", say=lambda *a: None)
    assert s["backend_alive"]
    assert all(s["backend"][f"{r}.anchored"] == "True" for r in "abc"), s["backend"]
    for r, v in s["robots"].items():
        assert v["path_poses"] >= 0.9 * v["steps"], (r, v)  # odometry is best effort
        assert v["ate_ratio"] <= 0.25, (r, v)
    assert s["inter_robot_closures"] >= 10
    assert s["graph_saved"] and s["accepted_inter_robot"] >= 10
    assert s["accepted_inter_robot_precision"] >= 0.99, s
    assert (tmp_path / "team.png").stat().st_size > 0
