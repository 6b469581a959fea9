"""Keyframe exchange between robots, the ROS side (docs/node.md, "Keyframe exchange"): this robot's session
keyframes out on ~/keyframes, its keyframes' local features served on ~/keyframe_features, the peers' keyframes in
from peer_keyframe_topics (into localization/peers.py's PeerStore, which the Localizer searches), and the peers'
features asked for, only for candidates, when verification is on.

Nothing here blocks the camera path: the worker hands a peer closure to `PeerExchange.submit`, which sends one
asynchronous request per keyframe (later candidates of the same keyframe wait on it, answers are cached); the
answer is verified on an executor thread and published there, and a request unanswered after
peer_feature_timeout_s leaves its candidates unverified (published as such, counted)."""

from __future__ import annotations

import array
from collections import Counter
from dataclasses import dataclass, replace
import math
import threading
import time
import uuid

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from geoloc_msgs.msg import Keyframe
from geoloc_msgs.srv import KeyframeFeatures
from geoloc_ros.localization.peers import ENCODING_CODES, Expectation, PeerStore, encode_descriptor, find_codebook
from geoloc_ros.localization.session import FeatureStore
from geoloc_ros.stamps import set_stamp

# ~/keyframes: reliable (a lost keyframe is a place the peers never recognise), transient local with a deep
# history, so that a robot joining late, or restarting, receives the last KEYFRAME_HISTORY keyframes at once.
# 1000 keyframes are about 1.3 MB of float16 descriptors held by the publisher (docs/node.md, "Keyframe exchange").
KEYFRAME_HISTORY = 1000
KEYFRAME_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=KEYFRAME_HISTORY,
                          reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
MAX_WAITING = 16  # peer closures waiting for features at once; beyond, a closure is published unverified
MAX_ANSWER_KEYPOINTS = 100_000  # a features answer with more keypoints is refused
ANSWER_CACHE_BYTES = 64 * 1024 * 1024  # features of peer keyframes already answered, for the next frames


def robot_id_of(setting: str, namespace: str) -> str:
    """The robot_id parameter, or when empty the namespace without its leading slash ("robot" for "/")."""
    return setting or namespace.strip("/") or "robot"


def features_service_of(topic: str) -> str:
    """The KeyframeFeatures service beside a peer's keyframe topic: trailing 'keyframes' -> 'keyframe_features'."""
    head, sep, _ = topic.rpartition("keyframes")
    return head + "keyframe_features" if sep and topic.endswith("keyframes") else topic.rstrip("/") + \
        "/keyframe_features"


@dataclass
class _Waiting:
    """A peer closure waiting for its keyframe's features: the frame's result, its closures, their localizer."""

    result: object
    closures: list
    localizer: object


class PeerExchange:
    def __init__(self, node, settings, localizer, publish_closures):
        """`localizer`: the configured Localizer (its snapshot's encoder names what peers must match; its
        session map supplies ~/keyframe_features); `publish_closures(result, closures)`: publishes peer closures
        on ~/loop_closures once verified (or given up on)."""
        s, snapshot = settings, localizer.snapshot
        self.node, self.settings, self.publish_closures = node, s, publish_closures
        self.robot_id = robot_id_of(s.robot_id, node.get_namespace())
        self.session_id = uuid.uuid4().hex  # fresh per node start: keyframe ids start again with it
        encoder = snapshot.encoder
        self.codebook = find_codebook(snapshot.encoder_file)
        if s.peer_descriptor_encoding == "pq" and self.codebook is None:
            raise ValueError("peer_descriptor_encoding pq: no PQ codebook beside the encoder "
                             f"({snapshot.encoder_file}); train one with tools/train_pq_codebook.py, or use float16")
        self.fingerprint, self.dim = encoder.fingerprint, int(encoder.dim)
        self.topics = [t for t in s.peer_keyframe_topics if t]
        self.store = PeerStore(Expectation(self.robot_id, self.session_id, self.dim, self.fingerprint, self.codebook),
                               s.peer_max_keyframes) if self.topics else None
        self.counts = Counter()  # keyframes published, features served / asked / answered / timed out
        self.odom_frame_id = ""  # the odometry messages' header.frame_id (vpr_node sets it)
        self._lock = threading.Lock()
        self._waiting: dict[tuple, list[_Waiting]] = {}  # (robot, session, keyframe) -> closures waiting on it
        self._requests: dict[tuple, tuple] = {}  # the same key -> (client, future, deadline)
        self._answers = FeatureStore(ANSWER_CACHE_BYTES)
        self._clients: dict[str, object] = {}
        self._subs = []
        self._group = MutuallyExclusiveCallbackGroup()  # peer keyframes, features answers and timeouts
        self._serve_group = MutuallyExclusiveCallbackGroup()
        self.publisher = node.create_publisher(Keyframe, "~/keyframes", KEYFRAME_QOS)
        self.service = node.create_service(KeyframeFeatures, "~/keyframe_features", self._on_features_request,
                                           callback_group=self._serve_group)
        self._session = localizer.session
        self._timer = None

    # -- lifecycle: peers heard while active ---------------------------------------------------------------------
    def activate(self):
        for topic in self.topics:
            self._subs.append(self.node.create_subscription(Keyframe, topic, lambda m, t=topic: self.store.offer(m, t),
                                                            KEYFRAME_QOS, callback_group=self._group))
        if self.topics:
            self._timer = self.node.create_timer(0.1, self._expire, callback_group=self._group)

    def deactivate(self):
        for sub in self._subs:
            self.node.destroy_subscription(sub)
        self._subs = []
        if self._timer is not None:
            self.node.destroy_timer(self._timer)
            self._timer = None
        self._give_up_all("peer_features_abandoned")

    def close(self):
        self.deactivate()
        for client in self._clients.values():
            self.node.destroy_client(client)
        self._clients = {}
        self.node.destroy_service(self.service)
        self.node.destroy_publisher(self.publisher)

    # -- out: this robot's keyframes ---------------------------------------------------------------------------
    def on_result(self, result, localizer):
        """After a frame's publications (worker thread): its session keyframe out on ~/keyframes, its peer
        closures to the owner for features."""
        if result.session_keyframe is not None and result.descriptor is not None:
            self.publisher.publish(self.keyframe_message(result))
            self.counts["keyframes_published"] += 1
        if result.peer_pending:
            self.submit(result, result.peer_pending, localizer)

    def keyframe_message(self, result) -> Keyframe:
        f, s = result.frame, self.settings
        encoding = s.peer_descriptor_encoding
        msg = Keyframe(robot_id=self.robot_id, session_id=self.session_id, keyframe_id=int(result.session_keyframe),
                       encoder_fingerprint=self.fingerprint, descriptor_encoding=ENCODING_CODES[encoding],
                       descriptor_dim=self.dim, codebook_id=self.codebook.id if encoding == "pq" else "",
                       descriptor=encode_descriptor(result.descriptor, encoding, self.codebook))
        set_stamp(msg.stamp, f.time_ns)
        if f.odom is not None:
            msg.has_odom_pose, msg.odom_frame_id = True, self.odom_frame_id
            p, o = msg.odom_pose.position, msg.odom_pose.orientation
            p.x, p.y, p.z = (float(v) for v in f.odom)
            o.x, o.y, o.z, o.w = (float(v) for v in (f.odom_orientation or (0.0, 0.0, 0.0, 1.0)))
        msg.has_geotag = f.fix is not None
        msg.latitude, msg.longitude, msg.altitude = (float(v) for v in f.fix) if f.fix else (math.nan,) * 3
        return msg

    # -- out: this robot's keyframe features, for a peer's verification ------------------------------------------
    def _on_features_request(self, request, response):
        try:
            return self._answer(request, response)
        except Exception as e:  # noqa: BLE001 - a request must never take the node down
            response.found, response.message = False, f"keyframe_features failed: {type(e).__name__}: {e}"
            return response

    def _answer(self, request, response):
        self.counts["features_requests_served"] += 1
        if request.robot_id != self.robot_id or request.session_id != self.session_id:
            response.found = False
            response.message = (f"this is robot {self.robot_id!r}, session {self.session_id}: keyframes of "
                                f"{request.robot_id!r} session {request.session_id!r} are not held here")
            return response
        stored = self._session.features.get(int(request.keyframe_id)) if self._session is not None else None
        if stored is None:
            response.found = False
            response.message = f"no local features held for keyframe {request.keyframe_id} (evicted, unknown, or " \
                               "verification off)"
            return response
        features, camera = stored
        response.found, response.message, response.detector = True, "ok", features.detector
        response.count, response.descriptor_dim = len(features), int(features.descriptors.shape[1])
        response.keypoints = _floats(features.keypoints)
        response.descriptors = features.descriptors.tobytes()
        response.depth = _floats(features.depth) if features.depth is not None else []
        if camera is not None:
            camera.to_camera_info(response.camera)
        return response

    # -- in: a peer's features for a candidate -------------------------------------------------------------------
    def submit(self, result, closures, localizer):
        """Ask the owner of `closures`' keyframe for its features (at most one request per keyframe at a time);
        the closures are published once it answers, or unverified at the timeout. Never waits."""
        kf = closures[0].keyframe
        key = (kf.robot_id, kf.session_id, int(kf.id))
        waiting = _Waiting(result, closures, localizer)
        cached = self._answers.get(key)
        if cached is not None:
            self.counts["peer_features_cached"] += 1
            self._finish(waiting, cached)
            return
        with self._lock:
            if key in self._waiting:
                self._waiting[key].append(waiting)
                return
            busy = sum(len(w) for w in self._waiting.values()) >= MAX_WAITING
            topic = self.store.topic_of(kf.robot_id) if not busy else None
            if busy or topic is None:
                self.counts["peer_features_busy" if busy else "peer_features_no_topic"] += 1
                give_up = True
            else:
                give_up = False
                client = self._client(topic)
                request = KeyframeFeatures.Request(robot_id=kf.robot_id, session_id=kf.session_id,
                                                   keyframe_id=int(kf.id))
                self._waiting[key] = [waiting]
                self.counts["peer_features_requests"] += 1
                future = client.call_async(request)
                self._requests[key] = (client, future, time.monotonic() + self.settings.peer_feature_timeout_s)
        if give_up:
            self._unverified([waiting])
            return
        future.add_done_callback(lambda f, k=key: self._on_answer(k, f))

    def _client(self, topic: str):
        client = self._clients.get(topic)
        if client is None:
            client = self._clients[topic] = self.node.create_client(KeyframeFeatures, features_service_of(topic),
                                                                    callback_group=self._group)
        return client

    def _on_answer(self, key, future):
        with self._lock:
            waiting = self._waiting.pop(key, None)
            self._requests.pop(key, None)
        if waiting is None:  # it timed out already
            return
        try:
            stored = features_from_answer(future.result())
        except ValueError as e:
            self.counts["peer_features_refused"] += 1
            self.node.get_logger().warning(f"peer features for {key[0]} keyframe {key[2]} refused: {e}",
                                           throttle_duration_sec=10.0)
            stored = None
        except Exception:  # noqa: BLE001 - a cancelled or failed call: as unanswered
            stored = None
        if stored is None:
            self.counts["peer_features_not_found"] += 1
            self._unverified(waiting)
            return
        self.counts["peer_features_answered"] += 1
        self._answers.put(key, stored)
        for w in waiting:
            self._finish(w, stored)

    def _finish(self, waiting: _Waiting, stored):
        """Verify the closures against the owner's features; publish those that pass, confidence re-rated."""
        try:
            verifier, localizer = waiting.localizer.verifier, waiting.localizer
            checked = [verifier.verify_with(waiting.result.frame, c, stored) for c in waiting.closures]
            kept = localizer.rate_verified(waiting.result.evidence, [c for c in checked if c.verified])
        except Exception as e:  # noqa: BLE001 - bad features must never kill an executor thread
            self.counts["peer_verification_failed"] += 1
            self.node.get_logger().warning(f"peer verification failed: {type(e).__name__}: {e}",
                                           throttle_duration_sec=10.0)
            return
        self.counts["peer_closures_verified" if kept else "peer_closures_rejected"] += 1
        if kept:
            self.publish_closures(waiting.result, kept)

    def _unverified(self, waiting):
        """Closures whose features never came: published unverified when their confidence passes the threshold."""
        for w in waiting:
            floor = w.localizer.config.loop_closure_min_confidence
            kept = [replace(c, verified=False, inliers=0, relative_pose=None) for c in w.closures
                    if c.confidence >= floor]
            self.counts["peer_closures_unverified"] += 1
            if kept:
                self.publish_closures(w.result, kept)

    def _expire(self):
        now = time.monotonic()
        with self._lock:
            late = [k for k, (_, _, deadline) in self._requests.items() if deadline <= now]
            expired = []
            for key in late:
                client, future, _ = self._requests.pop(key)
                client.remove_pending_request(future)
                expired.extend(self._waiting.pop(key, []))
                self.counts["peer_features_timeout"] += 1
        self._unverified(expired)

    def _give_up_all(self, reason: str):
        with self._lock:
            waiting = [w for ws in self._waiting.values() for w in ws]
            for client, future, _ in self._requests.values():
                client.remove_pending_request(future)
            self._waiting.clear()
            self._requests.clear()
            self.counts[reason] += len(waiting)

    # -- diagnostics ---------------------------------------------------------------------------------------------
    def diagnostics(self) -> dict:
        values = {"robot_id": self.robot_id, "session_id": self.session_id,
                  "peer_descriptor_encoding": self.settings.peer_descriptor_encoding, **dict(self.counts)}
        if self.store is not None:
            values.update(self.store.diagnostics())
        return values


def features_from_answer(response):
    """(geometry.Features, PinholeCamera or None) of a KeyframeFeatures answer, None when it holds none;
    ValueError when its fields do not fit together (read by field names)."""
    from geoloc_ros.geometry import PinholeCamera
    from geoloc_ros.geometry.features import Features

    if not response.found:
        return None
    n, dim = int(response.count), int(response.descriptor_dim)
    if not 0 < n <= MAX_ANSWER_KEYPOINTS or not 0 < dim <= 1024:
        raise ValueError(f"{n} keypoints of {dim} bytes each")
    keypoints = np.asarray(response.keypoints, dtype=np.float32).reshape(-1)
    descriptors = np.frombuffer(bytes(response.descriptors), dtype=np.uint8)
    if keypoints.size != 2 * n or descriptors.size != n * dim:
        raise ValueError(f"count {n} but {keypoints.size} keypoint values and {descriptors.size} descriptor bytes")
    if not np.isfinite(keypoints).all():
        raise ValueError("non-finite keypoints")
    depth = np.asarray(response.depth, dtype=np.float32).reshape(-1) if len(response.depth) else None
    if depth is not None and depth.size != n:
        raise ValueError(f"{depth.size} depths for {n} keypoints")
    features = Features(keypoints.reshape(n, 2), descriptors.reshape(n, dim), str(response.detector), depth)
    camera = None
    if int(response.camera.width) > 0:
        try:
            camera = PinholeCamera.from_camera_info(response.camera)
        except (ValueError, TypeError, OverflowError):
            camera = None
    return features, camera


def _floats(values: np.ndarray) -> array.array:
    """A float32[] message field of an array, without a Python list on the way."""
    out = array.array("f")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float32).reshape(-1).tobytes())
    return out
