"""Keyframe exchange between robots over real DDS: robot B (vpr_node in a process of its own) sees street photos and
publishes them as keyframes; robot A (vpr_node in this process) recognises B's place, asks B for the keyframe's
local features and publishes a verified inter-robot closure, and never matches its own keyframes. Then broken and
hostile peers (test/keyframe_publisher.py, another process): refused and counted, and the node lives."""

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from geoloc_ros.datasets import read_image  # noqa: E402
from geoloc_ros.localization.peers import encode_descriptor  # noqa: E402
from geoloc_ros.replay import image_message, node_process  # noqa: E402

T0 = 1_700_000_000 * 10**9
PUBLISHER = __file__.rsplit("/", 1)[0] + "/keyframe_publisher.py"


@pytest.fixture
def photos(street_map):
    folder, _, map_dir = street_map
    return [read_image(p) for p in sorted(folder.glob("*"))[:3]], map_dir


def peer_params(map_dir, **more):
    """A robot localising against the session map and its peers alone, every closure published (the peer run and
    margin tests need a drive: test_peer_closures.py)."""
    return {"map_path": [""], "encoder_path": str(map_dir), "session_map": True, "consistency_k": 1,
            "peer_consistency_k": 1, "peer_loop_margin": 0.0, "loop_closure_min_confidence": 0.0, "top_k": 3, **more}


def test_a_peer_keyframe_of_the_same_place_becomes_a_verified_inter_robot_closure(photos, graph, tmp_path):
    """...and A's own keyframe goes out with its odometry pose, and comes back refused as its own."""
    from nav_msgs.msg import Odometry

    from geoloc_msgs.msg import Keyframe, PlaceCandidate
    from geoloc_ros.node.peer_exchange import KEYFRAME_QOS

    images, map_dir = photos
    b_params = {**peer_params(map_dir), "robot_id": "robot_b", "verification": True, "session_min_interval_s": 0.0,
                "device": "cpu"}
    args = [f"{k}:={json.dumps(v) if not isinstance(v, str) else v}".replace('"', "'") for k, v in b_params.items()]
    with node_process(args, tmp_path / "robot_b.log", name="robot_b") as b:
        assert b.wait_for_subscriber(60), (tmp_path / "robot_b.log").read_text()
        for i, rgb in enumerate(images):
            b.publish(image_message(rgb, T0 + i * 10**9))
            assert b.wait_for(lambda: len(b.data.received) > i, 30)
        b_topic = f"{b.namespace}/geoloc_vpr/keyframes"
        start, h = graph
        a = start(peer_params(map_dir, verification=True, peer_keyframe_topics=[b_topic, "/geoloc_vpr/keyframes"],
                              odom_topic="/odom"))
        assert a.active, a.node.last_error
        store = a.node.peers.store
        assert h.wait_for(lambda: len(store) == 3, 30), store.diagnostics()  # transient local: B's history
        assert h.wait_for_subscriber()
        own = []
        h.node.create_subscription(Keyframe, "/geoloc_vpr/keyframes", own.append, KEYFRAME_QOS)
        odom_pub = h.node.create_publisher(Odometry, "/odom", 10)
        odom = Odometry()
        odom.header.frame_id = "robot/odom"
        odom.pose.pose.position.x, odom.pose.pose.orientation.z, odom.pose.pose.orientation.w = 7.0, 0.6, 0.8
        assert h.wait_for(lambda: odom_pub.publish(odom) or a.node._odom is not None, 10)
        for i in range(2):  # B's keyframe 1, seen by A; A's own keyframe of it comes back on A's own topic
            h.publish(image_message(images[1], T0 + (10 + i) * 10**9))
            assert h.wait_for(lambda: len(h.data.results["place_recognition"]) > i, 30)
        assert h.wait_for(lambda: h.data.results["loop_closures"], 30), a.node.peers.diagnostics()
        first = h.data.results["place_recognition"][T0 + 10 * 10**9].candidates[0]
        assert (first.source, first.robot_id, first.map_id) == (PlaceCandidate.SOURCE_PEER, "robot_b", "peer:robot_b")
        closure = next(iter(h.data.results["loop_closures"].values())).candidates[0]
        assert (closure.source, closure.robot_id, closure.keyframe_id) == (PlaceCandidate.SOURCE_PEER, "robot_b", 1)
        assert closure.keyframe_stamp.sec * 10**9 + closure.keyframe_stamp.nanosec == T0 + 10**9
        assert closure.verified and closure.inliers >= 15 and not closure.has_position
        assert h.wait_for(lambda: store.counts["refused_own"] >= 1 and own, 20), store.diagnostics()
        k = own[0]  # A's own keyframe as its peers receive it
        assert (k.robot_id, k.session_id, k.keyframe_id, k.descriptor_encoding, k.descriptor_dim, len(k.descriptor)) \
            == ("robot", a.node.peers.session_id, 0, Keyframe.DESCRIPTOR_FLOAT16, 64, 128)
        assert k.stamp.sec * 10**9 + k.stamp.nanosec == T0 + 10 * 10**9
        assert k.encoder_fingerprint == a.node.encoder.fingerprint
        assert k.has_odom_pose and k.odom_frame_id == "robot/odom" and k.odom_pose.position.x == 7.0
        assert (k.odom_pose.orientation.z, k.odom_pose.orientation.w) == pytest.approx((0.6, 0.8))
        assert not k.has_geotag and math.isnan(k.latitude)
        for rec in h.data.results["place_recognition"].values():
            assert all(c.robot_id in ("", "robot_b") for c in rec.candidates)
        values = a.node.peers.diagnostics()
        assert values["peer_features_answered"] >= 1 and values["robot_id"] == "robot"
        assert b.process.poll() is None


def test_hostile_peers_are_refused_and_counted_and_the_node_lives(photos, graph, tmp_path):
    from geoloc_ros.model import load_encoder

    images, map_dir = photos
    enc = load_encoder(str(map_dir / "encoder.safetensors"), device="cpu")
    good = {"fingerprint": enc.fingerprint, "encoding": 1, "dim": enc.dim}
    rng = np.random.default_rng(0)

    def kf(topic, robot, session, kid, stamp_s, desc, **over):
        return {"topic": f"/hostile/{topic}/keyframes", "robot_id": robot, "session_id": session, "keyframe_id": kid,
                "stamp_ns": T0 + stamp_s * 10**9, "descriptor_hex": encode_descriptor(desc, "float16").hex(),
                **good, **over}

    def noise():
        v = rng.standard_normal(enc.dim)
        return v / np.linalg.norm(v)

    silent = enc.encode([images[0]])[0]
    nan = np.full(enc.dim, np.nan, np.float32)
    messages = [kf("bad", "bad", "s", 0, 0, noise(), dim=enc.dim + 1),
                kf("bad", "bad", "s", 1, 1, noise(), fingerprint="0" * 64),
                kf("bad", "bad", "s", 2, 2, nan),
                kf("bad", "robot", "s", 3, 3, noise()),  # claims to be the listening robot itself
                *[kf("flood", "flood", "s", i, i, noise()) for i in range(50)],
                *[kf("twin", "twin", "xy"[i % 2], i, i, noise()) for i in range(4)],  # two sessions at once
                kf("silent", "silent", "s", 0, 0, silent)]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"messages": messages, "silent": ["/hostile/silent/keyframes"]}))
    peer = subprocess.Popen([sys.executable, PUBLISHER, str(spec)], stdout=subprocess.PIPE, text=True)
    try:
        assert peer.stdout.readline().startswith("ready")
        start, h = graph
        topics = [f"/hostile/{t}/keyframes" for t in ("bad", "flood", "twin", "silent")]
        a = start(peer_params(map_dir, verification=True, peer_keyframe_topics=topics, peer_max_keyframes=20,
                              peer_feature_timeout_s=0.5))
        assert a.active, a.node.last_error
        store = a.node.peers.store
        assert h.wait_for(lambda: store.counts["accepted"] >= 50 + 3 + 1, 30), store.diagnostics()
        counts = store.diagnostics()
        assert {k: counts[f"peer_refused_{k}"] for k in ("dimension", "fingerprint", "not_finite", "own")} == \
            {"dimension": 1, "fingerprint": 1, "not_finite": 1, "own": 1}
        assert counts["peer_dropped"] == 30 and len(store.maps["flood"]) == 20
        assert counts["peer_refused_conflict"] >= 1 and counts["peer_conflicting_robot_ids"] == "twin"
        assert h.wait_for_subscriber()
        h.publish(image_message(images[0], T0))
        assert h.wait_for(lambda: h.data.results["loop_closures"], 30), a.node.peers.diagnostics()
        closure = h.data.results["loop_closures"][T0].candidates[0]
        assert closure.robot_id == "silent" and not closure.verified  # the peer never answered: unverified
        values = a.node.peers.diagnostics()
        assert values["peer_features_timeout"] == 1 and values["peer_closures_unverified"] == 1
        h.publish(image_message(images[1], T0 + 10**9))  # the node goes on
        assert h.wait_for(lambda: len(h.data.results["place_recognition"]) == 2, 30)
        assert a.node.lifecycle_state == "active" and a.node._worker.is_alive()
        assert h.wait_for(lambda: h.diag_values().get("peer_refused_fingerprint") == "1", 10), h.diag_values()
    finally:
        peer.kill()
        peer.wait(timeout=10)
        time.sleep(0)
