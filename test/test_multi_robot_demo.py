"""The three-robot demo end to end, shortened (geoloc_ros.bench.multi_robot on 30-frame stretches): three vpr_node
processes exchanging keyframes over DDS on real Nordland frames (a summer, b winter overlapping a, c summer
overlapping b only; session maps, no prior map) and the team pose_graph_node process. Midway, b's vpr_node process
is killed and started again (a new session, keyframe ids from 0) while the others and the back end run. After the
run the three trajectories are in one frame: each robot's ATE under one team alignment is well below its
odometry's, and the inter-robot closures the vpr_nodes published, and those the back end took as factors, join the
same places; the peers took b's new session as such, and the restart cost the others nothing."""

import pytest

pytest.importorskip("rclpy")

RESTART_STEP = 8


def test_three_robots_on_nordland_end_in_one_frame_and_a_restart_corrupts_nothing(shared_data, tmp_path):
    from geoloc_ros.bench.multi_robot import run

    stretches = {"a": "summer:12010:12300", "b": "winter:12160:12450", "c": "summer:12360:12650"}
    s = run(stretches, tmp_path, rate=3.0, data=shared_data / "nordland64", say=lambda *a: None,
            restart=("b", RESTART_STEP))
    assert s["backend_alive"]
    assert all(s["backend"][f"{r}.anchored"] == "True" for r in "abc"), s["backend"]
    for r, v in s["robots"].items():
        assert v["path_poses"] >= 0.9 * v["steps"], (r, v)  # odometry is best effort
        assert v["ate_ratio"] <= 0.25, (r, v)
    assert s["inter_robot_closures"] >= 10
    assert s["inter_robot_precision"] >= 0.95, s["inter_robot_list"]  # what the vpr_nodes publish
    assert s["graph_saved"] and s["accepted_inter_robot"] >= 10
    assert s["accepted_inter_robot_precision"] >= 0.99, s
    assert (tmp_path / "team.png").stat().st_size > 0
    # the restart: b's odometry went on (one segment), no storm of refusals, b's peers saw a new session of b, not
    # two robots claiming one id, and matched it; the restarted node closed loops with c
    assert s["backend"]["b.segments"] == "1" and int(s["backend"]["inter_robot_rejected"]) <= 2, s["backend"]
    for r in "ac":
        peer = s["peer_diagnostics"][r]
        assert peer["peer_conflicts"] == "0" and "peer_refused_conflict" not in peer, peer
    b_first = 12160 + 10 * RESTART_STEP  # b's first frame after the restart
    assert any(c["query"] == "a" and c["owner"] == "b" and c["keyframe_frame"] >= b_first and c["right"]
               for c in s["inter_robot_list"]), s["inter_robot_list"]
    assert any(c["query"] == "b" and c["query_frame"] >= b_first and c["right"] for c in s["inter_robot_list"])
