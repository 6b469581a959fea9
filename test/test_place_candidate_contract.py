"""The loop-closure contract between geoloc_vpr's localizer and geoloc_pose_graph, over real DDS: a PlaceCandidate
says which map (map_id), what kind of keyframe (source), whether it has a position, and gives that position in
the node's map frame. Two prior maps built apart (each with its own origin), the second in a folder called
`session`, give the back end one consistent frame. Real Nordland frames, a small random encoder, real FAISS maps
and a real GTSAM back end."""

import math

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from geoloc_msgs.msg import PlaceCandidate  # noqa: E402
from geoloc_ros.datasets import read_image  # noqa: E402
from geoloc_ros.localization import Frame, Localizer, load_snapshot  # noqa: E402
from geoloc_ros.mapping import MapDatabase  # noqa: E402
from geoloc_ros.mapping.builders import add_dataset, new_map_for  # noqa: E402
from geoloc_ros.model import nordland, save_encoder  # noqa: E402
from geoloc_ros.model.testing import tiny_encoder  # noqa: E402
from geoloc_ros.node import messages, params  # noqa: E402
from geoloc_ros.replay import wait_for  # noqa: E402

T0 = 1_700_000_000 * 10**9


@pytest.fixture(scope="module")
def maps_built_apart(shared_data, tmp_path_factory):
    """Two maps of consecutive stretches of one Nordland route, built separately, so each took its own origin
    from its first keyframe; the second lives in a folder called `session` and is named `session` too."""
    tmp = tmp_path_factory.mktemp("contract")
    enc = tiny_encoder()
    recs = nordland.split(shared_data / "nordland64", frames=(19210, 19800), seasons=("summer",))
    recs = [r for r in recs if not nordland.is_blank(read_image(r.path))][:40]
    checkpoint = save_encoder(enc, tmp / "encoder")
    paths = []
    for folder, name, part in (("north/map", "map", recs[:20]), ("south/session", "session", recs[20:])):
        db = new_map_for(enc, name)
        add_dataset(db, enc, part, progress=False)
        db.attach_encoder(checkpoint)
        db.save(tmp / folder)
        paths.append(str(tmp / folder))
    return {"paths": paths, "records": recs}


def closure_messages(maps_built_apart):
    """geoloc_vpr's ~/loop_closures for a drive along both stretches (frame i at T0 + i s), and the frames."""
    config = params.localizer_config(params.settings(
        device="cpu", map_path=maps_built_apart["paths"], consistency_k=1, top_k=3, loop_closure_min_confidence=0.0))
    localizer = Localizer(load_snapshot(config))
    out = []
    for i, rec in enumerate(maps_built_apart["records"]):
        frame = Frame(camera="/cam", topic="/cam", stamp_ns=T0 + i * 10**9, frame_id="camera",
                      rgb=read_image(rec.path))
        (result,) = localizer.process([frame])
        assert result.closures, rec.label
        out.append(messages.recognition_message(result, result.closures))
    return out, localizer.snapshot


def test_candidates_say_their_map_source_and_position_in_the_node_map_frame(maps_built_apart):
    north, south = (MapDatabase.load(p) for p in maps_built_apart["paths"])
    assert north.frame != south.frame  # built apart: two origins
    msgs, snapshot = closure_messages(maps_built_apart)
    assert snapshot.primary_frame == north.frame
    for msg, rec in zip(msgs, maps_built_apart["records"]):
        c = msg.candidates[0]
        assert c.source == PlaceCandidate.SOURCE_PRIOR_MAP and c.robot_id == "" and c.has_position
        assert c.map_id in maps_built_apart["paths"]
        x, y, _ = north.frame.to_local(c.latitude, c.longitude)
        assert (c.pose.position.x, c.pose.position.y) == pytest.approx((x, y), abs=1e-3)
        assert math.hypot(x - north.frame.to_local(rec.lat, rec.lon)[0],
                          y - north.frame.to_local(rec.lat, rec.lon)[1]) < 1.0  # the query's own keyframe
    south_ids = [m.candidates[0] for m in msgs if m.candidates[0].map_id == maps_built_apart["paths"][1]]
    assert len(south_ids) >= 15 and all(c.map_name == "session" for c in south_ids)
    own = south.keyframe(int(south_ids[0].keyframe_id))  # the same keyframe in its own map's frame lies elsewhere
    assert math.hypot(own.x - south_ids[0].pose.position.x, own.y - south_ids[0].pose.position.y) > 50.0


def test_a_keyframe_without_position_says_so(maps_built_apart):
    from geoloc_ros.localization import Candidate
    from geoloc_ros.mapping import Keyframe

    m = messages.candidate_message(Candidate("/maps/x", "x", Keyframe(id=3), 0.5))
    assert not m.has_position and m.source == PlaceCandidate.SOURCE_PRIOR_MAP and m.map_id == "/maps/x"
    m = messages.candidate_message(Candidate("session", "session", Keyframe(id=4), 0.5, source="session"))
    assert m.source == PlaceCandidate.SOURCE_SESSION


def test_two_prior_maps_built_apart_give_the_back_end_one_frame(maps_built_apart, rclpy_context):
    """Over DDS: odometry in a frame of its own (rotated and shifted) and the closures of both maps; the back end
    places the whole drive in the first map's frame, accepts every keyframe of the map in the `session` folder as
    a prior-map position, and ~/path lies on the route."""
    import gtsam
    from test_pose_graph_node import Backend

    north = MapDatabase.load(maps_built_apart["paths"][0])
    recs = maps_built_apart["records"]
    truth = np.array([north.frame.to_local(r.lat, r.lon)[:2] for r in recs])
    yaw, shift = 0.7, np.array([-300.0, 120.0])  # the odometry frame in the map frame, unknown to the back end
    rot = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
    odom = [(T0 + i * 10**9, gtsam.Pose3(gtsam.Rot3(), np.r_[rot.T @ (p - shift), 0.0])) for i, p in enumerate(truth)]
    msgs, _ = closure_messages(maps_built_apart)
    b = Backend(rclpy_context, parameters={"keyframe_distance_m": 0.0, "keyframe_angle_deg": 0.0})
    try:
        b.publish_odometry(odom)
        for m in msgs:
            b.lc_pub.publish(m)
        graph = b.node.graph
        assert wait_for(lambda: sum(v for k, v in b.node.counts.items() if k.startswith("closure_")) == len(msgs), 30)
        assert graph.aligned and graph.absolute_rejected == 0, dict(b.node.counts)
        assert graph.closures_accepted == 0 and graph.absolute_factors == len(msgs)  # none taken for a session one
        n = len(graph)

        def path_errors():
            estimate = {p.header.stamp.sec * 10**9 + p.header.stamp.nanosec: (p.pose.position.x, p.pose.position.y)
                        for p in b.paths[-1].poses}
            return [math.hypot(*(np.array(estimate[s]) - truth[i])) for i, (s, _) in enumerate(odom)]

        # the newest path: a path published before the last closures were taken may still be in flight
        assert wait_for(lambda: b.paths and len(b.paths[-1].poses) == n and max(path_errors()) < 5.0, 10)
        errors = path_errors()
        assert max(errors) < 5.0, errors  # the prior-map sigma; a second origin would put the south ~km off
        assert b.paths[-1].header.frame_id == "map"
    finally:
        b.close()


def test_the_back_end_classifies_by_source_and_has_position_never_by_name(rclpy_context):
    """Whatever the name, id, source byte and position flag, a candidate is a session closure, a prior-map
    position, no position, or an unsupported source, and the callback never raises."""
    import gtsam
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from test_pose_graph_node import odometry_message

    from geoloc_msgs.msg import PlaceRecognition
    from geoloc_ros.slam.pose_graph_node import PoseGraphNode

    node = PoseGraphNode(context=rclpy_context)
    for k in range(5):
        node._on_odom(odometry_message(T0 + k * 10**8, gtsam.Pose3(gtsam.Rot3(), [float(k), 0.0, 0.0])))

    @settings(max_examples=40, deadline=None)
    @given(name=st.sampled_from(["session", "map", ""]), map_id=st.sampled_from(["session", "/maps/session", ""]),
           source=st.integers(0, 255), has_position=st.booleans(),
           xy=st.tuples(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4)))
    def check(name, map_id, source, has_position, xy):
        c = PlaceCandidate(map_name=name, map_id=map_id, source=source, has_position=has_position, confidence=1.0)
        c.pose.position.x, c.pose.position.y = xy
        msg = PlaceRecognition(candidates=[c])
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(T0 + 2 * 10**8, 10**9)
        before = dict(node.counts)
        node._on_closures(msg)
        (verdict,) = [k for k, v in node.counts.items() if v != before.get(k, 0)]
        if source == PlaceCandidate.SOURCE_SESSION:
            assert verdict in ("closure_no_pose", "closure_same_node", "closure_accepted", "closure_rejected")
        elif source != PlaceCandidate.SOURCE_PRIOR_MAP:
            assert verdict == "closure_unsupported_source"
        elif not has_position:
            assert verdict == "closure_no_position"
        else:
            assert verdict in ("closure_pending", "closure_accepted", "closure_rejected")

    try:
        check()
    finally:
        node.destroy_node()
