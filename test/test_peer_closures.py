"""When an inter-robot closure is published: the run test (consistency.PeerRun: the last frames' best peer matches
on one stretch of one peer session, spaced as this robot's odometry travelled) and the margin test against the peer
session's keyframes elsewhere (PeerMap.elsewhere), on their own, then on three robots driving Nordland stretches
through ROS-free Localizers that hand each other their session keyframes (geoloc_ros.bench.multi_robot.offline, the
demo without DDS): at the defaults no wrong closure is published, with both tests off some are."""

import numpy as np
import pytest

from geoloc_ros.localization import peers as P
from geoloc_ros.localization.consistency import PeerRun
from geoloc_ros.localization.frames import Candidate


def peer_kf(kid, x=None, robot="b", session="s1"):
    pose = None if x is None else (float(x), 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    return P.PeerKeyframe(id=kid, source="peer", robot_id=robot, session_id=session, odom_pose=pose)


def cand(kf, sim=0.8):
    return Candidate(P.PEER_MAP_PREFIX + kf.robot_id, kf.robot_id, kf, sim, source="peer", robot_id=kf.robot_id)


def drive(run, matches, step_m=10.0):
    """Feed one frame per match (a PeerKeyframe or None), the robot 10 m further each frame; the run's answers."""
    return [run.update("cam", None if kf is None else cand(kf), (i * step_m, 0.0, 0.0))
            for i, kf in enumerate(matches)]


def test_a_run_along_the_peer_trajectory_is_believed_from_its_kth_frame():
    run = PeerRun(k=3, tolerance_m=20.0)
    assert drive(run, [peer_kf(i, 100 + 10 * i) for i in range(5)]) == [False, False, True, True, True]
    assert drive(PeerRun(k=3, tolerance_m=20.0), [peer_kf(i // 2, 5 * (i // 2) * 2) for i in range(4)])[-1]  # denser
    backwards = PeerRun(k=3, tolerance_m=20.0)  # the peer drove the other way: the spacing still matches
    assert drive(backwards, [peer_kf(i, 500 - 10 * i) for i in range(4)])[-1]


@pytest.mark.parametrize("matches", [
    [peer_kf(1, 10)] * 4,  # stuck on one keyframe while the robot drives on
    [peer_kf(6, 60), peer_kf(16, 160), peer_kf(8, 80)],  # jumps
    [peer_kf(1, 10), peer_kf(2, 20, session="s2"), peer_kf(3, 30)],  # another session: another odometry frame
    [peer_kf(1, 10), peer_kf(2, 20, robot="c"), peer_kf(3, 30)],
    [peer_kf(1, 10), None, peer_kf(3, 30)],  # a frame whose best match was not a peer's
])
def test_matches_that_do_not_follow_the_drive_are_not_a_run(matches):
    assert not any(drive(PeerRun(k=3, tolerance_m=20.0), matches, step_m=15.0)[2:])


def test_without_odometry_ids_must_lie_within_the_window():
    run = PeerRun(k=2, id_window=5)
    assert run.update("cam", cand(peer_kf(10)), None) is False
    assert run.update("cam", cand(peer_kf(14)), None) is True
    assert run.update("cam", cand(peer_kf(30)), None) is False


def test_elsewhere_is_the_best_other_place_of_the_anchors_session_only():
    store = P.PeerStore(P.Expectation("a", "sa", 4, "f"), 100)
    m = store.maps["b"] = P.PeerMap("b", 4, 100)
    eye = np.eye(4, dtype=np.float32)
    m.add(peer_kf(0, 0.0), eye[0])
    m.add(peer_kf(1, 10.0), eye[1])
    assert store.elsewhere(eye[0], peer_kf(0, 0.0), 50.0, 5) is None  # one place only: nothing to beat
    m.add(peer_kf(0, 0.0, session="s2"), eye[2])  # a restart's keyframe far off in its own frame: not counted
    assert store.elsewhere(eye[0], peer_kf(0, 0.0), 50.0, 5) is None
    m.add(peer_kf(9, 90.0), (eye[0] + eye[3]) / np.sqrt(2))
    best, spread = store.elsewhere(eye[0], peer_kf(0, 0.0), 50.0, 5)
    assert best == pytest.approx(1 / np.sqrt(2)) and spread > 0
    assert store.elsewhere(eye[0], peer_kf(0, robot="z"), 50.0, 5) is None


def test_three_robots_on_nordland_publish_no_wrong_inter_robot_closure(shared_data):
    """The test stretches of test_multi_robot_demo.py: a (summer) meets b (winter), b meets c (summer)."""
    from geoloc_ros.bench.multi_robot import offline

    stretches = {"a": "summer:12010:12300", "b": "winter:12160:12450", "c": "summer:12360:12650"}
    data = shared_data / "nordland64"
    s = offline(stretches, data)
    assert s["published"] == s["right"] and len(s["right"]) >= 10, s["published"]
    assert {(p[0], p[2]) for p in s["right"]} >= {("a", "b"), ("b", "c")}
    unfiltered = offline(stretches, data, peer_consistency_k=1, peer_loop_margin=0.0)
    assert len(unfiltered["right"]) < len(unfiltered["published"])  # the look-alikes the two tests refuse
