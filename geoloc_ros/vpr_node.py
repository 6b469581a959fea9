"""The lifecycle node geoloc_vpr (executable vpr_node): camera frames in; place-recognition and loop-closure
candidates, a GeoPose, a NavSatFix, a map-frame pose and diagnostics out.

    vpr_node --ros-args -p map_path:="['maps/nordland_demo']" -p image_topics:="['/camera/image_raw']"

Lifecycle: configure loads the encoder and the maps (a failure leaves the node unconfigured and says why, in the
log and on /diagnostics); activate subscribes and starts the worker; deactivate stops both; cleanup releases the
encoder (and the GPU memory it held). With `autostart` (default) the node configures and activates itself.

Threading: subscription callbacks only park the newest message per camera (an older one still waiting is dropped
and counted) and wake the worker thread; decoding, encoding (batched across cameras), search and publishing run in
the worker, so the executor never blocks and the node never falls behind the camera.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geographic_msgs.msg import GeoPoseWithCovarianceStamped
from geoloc_msgs.msg import PlaceCandidate, PlaceRecognition
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CompressedImage, Image, NavSatFix, NavSatStatus
from std_srvs.srv import Trigger

from geoloc_ros.node import params
from geoloc_ros.node.consistency import ConsistencyFilter, SequenceMatcher
from geoloc_ros.node.diagnostics import NodeStats
from geoloc_ros.node.fusion import covariance6, fuse
from geoloc_ros.node.images import FrameError, message_to_rgb

NODE_NAME = "geoloc_vpr"
SESSION_MAP_NAME = "session"
# Outputs are results a SLAM back end must not lose: reliable, a short queue.
RESULT_QOS = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)


class ConfigureError(RuntimeError):
    """Why configure failed; shown in the log and on /diagnostics."""


class VprNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        params.declare(self)
        self.stats = NodeStats()
        self.last_error = ""
        self.settings: params.Settings | None = None
        self.encoder = None
        self.maps = []  # MapDatabase, in map_path order
        self.session = None  # MapDatabase of keyframes added during this run
        self._session_images = {}  # session keyframe id -> features for verification
        self._last_session = None  # (stamp_ns, x, y) of the last session keyframe
        self._odom = None  # latest (x, y, z) from odom_topic
        self._fix = None  # latest (lat, lon, alt) from fix_topic
        self._map_lock = threading.Lock()  # maps/session swapped by reload_map while the worker searches
        self._cv = threading.Condition()
        self._pending = {}  # camera topic -> (message, camera, actual topic, monotonic receive time)
        self._worker = None
        self._stop = True
        self._subs = []
        self._pubs = {}
        self._warned = set()
        self._verifier = None
        self._consistency = ConsistencyFilter()
        self._sequence = None  # SequenceMatcher in consistency_mode 'sequence'
        self._map_rows = {}  # map name -> (descriptors in row order, keyframe ids in row order), for sequences
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(self.get_parameter("diagnostics_period_s").value,
                                             self.publish_diagnostics)
        self.create_service(Trigger, "~/reload_map", self._on_reload_map)
        self.create_service(Trigger, "~/save_session_map", self._on_save_session_map)

    # -- lifecycle ----------------------------------------------------------------------------------------------
    @property
    def lifecycle_state(self) -> str:
        return self._state_machine.current_state[1]

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            s = params.read(self)
            self._load(s)
        except Exception as e:  # noqa: BLE001 - any failure leaves the node unconfigured with the reason
            self.last_error = f"configure failed: {e}"
            self.get_logger().error(self.last_error)
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.settings, self.last_error = s, ""
        self._consistency = ConsistencyFilter(s.consistency_k, s.consistency_radius_m, s.consistency_id_window)
        if s.consistency_mode not in ("consecutive", "sequence"):
            self.last_error = f"configure failed: consistency_mode {s.consistency_mode!r}: expected consecutive or sequence"
            self.get_logger().error(self.last_error)
            self._release()
            return TransitionCallbackReturn.FAILURE
        self._sequence = SequenceMatcher(s.sequence_window, min_margin=s.sequence_min_margin) \
            if s.consistency_mode == "sequence" else None
        if s.verification:
            from geoloc_ros.node.verification import GeometricVerifier

            self._verifier = GeometricVerifier(s.verification_features, s.verification_min_inliers)
        self._pubs = {
            "pr": self.create_lifecycle_publisher(PlaceRecognition, "~/place_recognition", RESULT_QOS),
            "lc": self.create_lifecycle_publisher(PlaceRecognition, "~/loop_closures", RESULT_QOS),
            "geopose": self.create_lifecycle_publisher(GeoPoseWithCovarianceStamped, "~/geopose", RESULT_QOS),
            "fix": self.create_lifecycle_publisher(NavSatFix, "~/fix", RESULT_QOS),
            "pose": self.create_lifecycle_publisher(PoseWithCovarianceStamped, "~/pose", RESULT_QOS),
        }
        sizes = ", ".join(f"{m.name} ({len(m)} keyframes)" for m in self.maps) or "none"
        self.get_logger().info(f"configured: encoder {self.encoder_description()}; maps: {sizes}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        s = self.settings
        for topic in s.image_topics:
            self._subs.append(self.create_subscription(
                Image, topic, lambda m, t=topic: self._on_image(m, t, t), qos_profile_sensor_data))
            if s.subscribe_compressed:
                ct = topic.rstrip("/") + "/compressed"
                self._subs.append(self.create_subscription(
                    CompressedImage, ct, lambda m, t=topic, c=ct: self._on_image(m, t, c), qos_profile_sensor_data))
        if s.odom_topic:
            self._subs.append(self.create_subscription(Odometry, s.odom_topic, self._on_odom, qos_profile_sensor_data))
        if s.fix_topic:
            self._subs.append(self.create_subscription(NavSatFix, s.fix_topic, self._on_fix, qos_profile_sensor_data))
        self._stop = False
        self._worker = threading.Thread(target=self._work, name="geoloc_vpr_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(f"active: listening on {', '.join(s.image_topics)}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._empty_gpu_cache()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_worker(self):
        with self._cv:
            self._stop = True
            self._pending.clear()
            self._cv.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=10.0)
        self._worker = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []

    def _release(self):
        """Drop the encoder and maps; the GPU memory they held goes back to the driver."""
        self.encoder, self.maps, self.session = None, [], None
        self._session_images.clear()
        self._empty_gpu_cache()

    @staticmethod
    def _empty_gpu_cache():
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- loading ------------------------------------------------------------------------------------------------
    def _load(self, s: params.Settings):
        from geoloc_ros.mapping import MapDatabase, MapError
        from geoloc_ros.mapping.database import check_encoder

        if s.device not in ("auto", "cpu", "cuda") and not s.device.startswith("cuda:"):
            raise ConfigureError(f"device {s.device!r}: expected auto, cpu, cuda or cuda:N")
        if not s.image_topics:
            raise ConfigureError("image_topics is empty: nothing to listen to")
        maps = []
        for p in s.maps:
            if not Path(p).exists():
                raise ConfigureError(f"map_path {p!r}: no such map directory")
            try:
                maps.append(MapDatabase.load(p))
            except MapError as e:
                raise ConfigureError(f"map {p!r}: {e}") from None
        enc_path = s.encoder_path or (str(maps[0].encoder_path) if maps and maps[0].encoder_path else "")
        if not enc_path:
            raise ConfigureError("no encoder: set encoder_path" + (f" (map {s.maps[0]!r} carries none)" if maps else
                                                                  " (no map_path given either)"))
        encoder = self._open_encoder(enc_path, s)
        for p, m in zip(s.maps, maps):
            try:
                check_encoder(p, m.dim, m.fingerprint, encoder)
            except MapError as e:
                raise ConfigureError(f"{e} (encoder {enc_path!r}), or set encoder_path to the map's") from None
        session = None
        if s.session_map:
            frame = next((m.frame for m in maps if m.frame is not None), None)
            session = MapDatabase.create(SESSION_MAP_NAME, encoder.dim, encoder.fingerprint, frame=frame)
        with self._map_lock:
            self.encoder, self.maps, self.session = encoder, maps, session
            self._encoder_file = enc_path
            self._map_rows = _rows_of(maps)
        self._session_images.clear()
        self._last_session = None

    def _open_encoder(self, path: str, s: params.Settings):
        import torch

        device = s.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigureError(f"device {s.device!r}: CUDA is not available on this machine")
        half = bool(s.half_precision) and device.startswith("cuda")
        if s.inference_threads > 0:
            torch.set_num_threads(s.inference_threads)
        if s.encoder_backend != "torch":
            try:
                from geoloc_ros.deploy import open_encoder
            except ImportError:
                raise ConfigureError(f"encoder_backend {s.encoder_backend!r}: only 'torch' is available here "
                                     f"(geoloc_ros.deploy.open_encoder is not installed)") from None
            try:
                return open_encoder(path, s.encoder_backend, device, half, threads=s.inference_threads or None)
            except (OSError, ValueError, RuntimeError) as e:
                raise ConfigureError(f"encoder {path!r} on backend {s.encoder_backend!r}: {e}") from None
        from geoloc_ros.model import load_encoder

        try:
            return load_encoder(path, device=device, half=half)
        except (OSError, ValueError) as e:
            raise ConfigureError(f"encoder {path!r}: {e}") from None

    def encoder_description(self) -> str:
        e = self.encoder
        if e is None:
            return "none"
        return f"{getattr(e, 'fingerprint', '?')[:12]} dim {e.dim} on {getattr(e, 'device', '?')}" + (
            " fp16" if getattr(e, "half", False) else "")

    # -- inputs -------------------------------------------------------------------------------------------------
    def _on_image(self, msg, camera: str, topic: str):
        self.stats.on_receive(topic)
        with self._cv:
            if camera in self._pending:
                self.stats.on_drop()  # newest wins: the worker was busy, the older frame is stale anyway
            self._pending[camera] = (msg, camera, topic, time.monotonic())
            self._cv.notify()

    def _on_odom(self, msg: Odometry):
        p = msg.pose.pose.position
        self._odom = (p.x, p.y, p.z)

    def _on_fix(self, msg: NavSatFix):
        if msg.status.status >= NavSatStatus.STATUS_FIX and math.isfinite(msg.latitude):
            self._fix = (msg.latitude, msg.longitude, msg.altitude)

    # -- the worker ---------------------------------------------------------------------------------------------
    def _work(self):
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending or self._stop, timeout=0.5)
                if self._stop:
                    return
                batch = list(self._pending.values())
                self._pending.clear()
            if not batch:
                continue
            try:
                self._process(batch)
            except Exception as e:  # noqa: BLE001 - a bad batch must never kill the worker
                self.stats.on_reject("error")
                self.get_logger().error(f"processing failed: {type(e).__name__}: {e}")

    def _decode(self, msg, topic):
        try:
            return message_to_rgb(msg, self.settings.blank_threshold)
        except FrameError as e:
            self.stats.on_reject(e.kind)
            if (topic, e.kind) not in self._warned:  # once per topic and kind: a bad stream must not flood the log
                self._warned.add((topic, e.kind))
                self.get_logger().warning(f"{topic}: dropping frame: {e} (further '{e.kind}' frames are only "
                                          f"counted in /diagnostics)")
        except Exception as e:  # noqa: BLE001
            self.stats.on_reject("corrupt")
            if (topic, "corrupt") not in self._warned:
                self._warned.add((topic, "corrupt"))
                self.get_logger().warning(f"{topic}: dropping frame: {type(e).__name__}: {e}")
        return None

    def _process(self, batch):
        frames = []
        for msg, camera, topic, t_recv in batch:
            rgb = self._decode(msg, topic)
            if rgb is not None:
                frames.append((msg, camera, topic, t_recv, rgb))
        if not frames:
            return
        s = self.settings
        with self._map_lock:
            encoder, maps, session = self.encoder, list(self.maps), self.session
        if encoder is None:
            return
        t0 = time.perf_counter()
        desc = encoder.encode([f[4] for f in frames])
        t1 = time.perf_counter()
        results = self._search(desc, frames, maps, session, s)
        t2 = time.perf_counter()
        encode_ms = (t1 - t0) * 1e3 / len(frames)
        search_ms = (t2 - t1) * 1e3 / len(frames)
        for i, (msg, camera, topic, t_recv, rgb) in enumerate(frames):
            self._publish_frame(msg, camera, topic, rgb, desc[i], results[i], encode_ms, search_ms, s)
            self.stats.on_processed(encode_ms, search_ms, (time.monotonic() - t_recv) * 1e3)
            if session is not None:
                self._maybe_add_session(session, desc[i], msg, topic, rgb, s)

    def _search(self, desc, frames, maps, session, s):
        """Per frame: [(map_name, Match)] best first, at most top_k, all >= min_similarity."""
        merged = [[] for _ in frames]
        for m in maps:
            for i, matches in enumerate(m.search(desc, s.top_k)):
                merged[i].extend((m.name, x) for x in matches)
        if session is not None and len(session):
            window_ns = int(s.session_exclusion_window_s * 1e9)
            # Ask for more than top_k: the youngest session keyframes (the robot's own recent path) are removed.
            k = min(len(session), s.top_k + 64)
            for i, matches in enumerate(session.search(desc, k)):
                stamp = _stamp_ns(frames[i][0].header.stamp)
                kept = [x for x in matches if abs(stamp - x.keyframe.stamp_ns) >= window_ns]
                merged[i].extend((SESSION_MAP_NAME, x) for x in kept[: s.top_k])
        return [sorted((c for c in cands if c[1].similarity >= s.min_similarity),
                       key=lambda c: -c[1].similarity)[: s.top_k] for cands in merged]

    def _publish_frame(self, msg, camera, topic, rgb, desc, cands, encode_ms, search_ms, s):
        """Publish ~/place_recognition; then, per camera (raw and compressed topics of one camera share the
        history), consistency or sequence matching decides on ~/loop_closures and the pose outputs."""
        pr = PlaceRecognition(header=msg.header, camera_topic=topic, encode_ms=float(encode_ms),
                              search_ms=float(search_ms))
        pr.candidates = [_candidate(name, m, rank) for rank, (name, m) in enumerate(cands)]
        self._pubs["pr"].publish(pr)

        if self._sequence is not None and self.maps:
            closures = self._sequence_closures(camera, desc, cands)
        else:
            best = (cands[0][0], cands[0][1].keyframe) if cands else None
            if not self._consistency.update(camera, best):
                return
            closures = [(name, m, pc) for (name, m), pc in zip(cands, pr.candidates)
                        if self._consistency.agree(best, (name, m.keyframe))]
        if not closures:
            return
        if self._verifier is not None:
            closures = self._verify(rgb, closures)
            if not closures:
                return
        lc = PlaceRecognition(header=msg.header, camera_topic=topic, encode_ms=float(encode_ms),
                              search_ms=float(search_ms), candidates=[pc for _, _, pc in closures])
        self._pubs["lc"].publish(lc)
        self.stats.on_loop_closure()
        self._publish_pose(msg.header, closures, s)

    def _sequence_closures(self, camera, desc, cands):
        """Sequence mode: the end of the best-scoring run of map rows, then the frame's own candidates that agree
        with it (same map, within consistency_radius_m)."""
        from geoloc_ros.mapping import Match

        self._sequence.push(camera, desc)
        best = None
        with self._map_lock:
            maps, rows = list(self.maps), dict(self._map_rows)
        for m in maps:
            found = self._sequence.best(camera, rows[m.name][0])
            if found is not None and (best is None or found[1] > best[1][1]):
                best = (m, found)
        if best is None or best[1][2] < self._sequence.min_margin:
            return []
        m, (row, score, margin) = best
        descs, ids = rows[m.name]
        kf = m.keyframe(int(ids[row]))
        anchor = (m.name, kf)
        picked = [(m.name, Match(kf, float(np.dot(desc, descs[row]))))]
        picked += [(n, x) for n, x in cands if n == m.name and x.keyframe.id != kf.id
                   and self._consistency.agree(anchor, (n, x.keyframe))]
        return [(n, x, _candidate(n, x, rank)) for rank, (n, x) in enumerate(picked)]

    def _verify(self, rgb, closures):
        query = self._verifier.features(rgb)
        kept = []
        for name, m, pc in closures:
            feats = self._keyframe_features(name, m.keyframe)
            ok, n = self._verifier.verify(query, feats) if feats is not None else (False, 0)
            pc.verified, pc.inliers = bool(ok), int(n)
            if ok:
                kept.append((name, m, pc))
        return kept

    def _keyframe_features(self, map_name, kf):
        if map_name == SESSION_MAP_NAME:
            return self._session_images.get(kf.id)
        root = self.settings.verification_image_dir
        if not root:
            return None
        from geoloc_ros.datasets import read_image

        try:
            return self._verifier.features(read_image(Path(root) / kf.label))
        except (OSError, ValueError):
            return None

    def _publish_pose(self, header, closures, s):
        name = closures[0][0]
        db = self.session if name == SESSION_MAP_NAME else next((m for m in self.maps if m.name == name), None)
        same_map = [(m.keyframe, m.similarity) for n, m, _ in closures if n == name]
        est = fuse([k for k, _ in same_map], [w for _, w in same_map], s.agreement_radius_m, s.covariance_floor_m,
                   s.covariance_scale, s.yaw_floor_deg)
        if est is None:
            return
        from geoloc_ros.mapping import quaternion_from_heading

        qx, qy, qz, qw = quaternion_from_heading(est.heading)
        cov = covariance6(est)
        pose = PoseWithCovarianceStamped()
        pose.header.stamp, pose.header.frame_id = header.stamp, s.map_frame
        frame = db.frame if db is not None else None
        x, y = est.x, est.y
        primary = next((m.frame for m in self.maps if m.frame is not None), None)
        if frame is not None and primary is not None and frame != primary:  # express in the first map's frame
            lat, lon, _ = frame.to_wgs84(x, y, 0.0)
            x, y, _ = primary.to_local(lat, lon, 0.0)
        p = pose.pose.pose
        p.position.x, p.position.y, p.position.z = float(x), float(y), float(est.z)
        p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = qx, qy, qz, qw
        pose.pose.covariance = cov
        self._pubs["pose"].publish(pose)
        if frame is None:
            return  # a map without geotags has no WGS84 position to give
        lat, lon, alt = frame.to_wgs84(est.x, est.y, est.z)
        geo = GeoPoseWithCovarianceStamped()
        geo.header.stamp, geo.header.frame_id = header.stamp, s.map_frame
        geo.pose.pose.position.latitude, geo.pose.pose.position.longitude = float(lat), float(lon)
        geo.pose.pose.position.altitude = float(alt)
        o = geo.pose.pose.orientation
        o.x, o.y, o.z, o.w = qx, qy, qz, qw
        geo.pose.covariance = cov
        self._pubs["geopose"].publish(geo)
        fix = NavSatFix(latitude=float(lat), longitude=float(lon), altitude=float(alt))
        fix.header.stamp, fix.header.frame_id = header.stamp, s.base_frame
        fix.status.status = NavSatStatus.STATUS_FIX
        fix.position_covariance = [cov[0], 0.0, 0.0, 0.0, cov[7], 0.0, 0.0, 0.0, cov[14]]
        fix.position_covariance_type = NavSatFix.COVARIANCE_TYPE_DIAGONAL_KNOWN
        self._pubs["fix"].publish(fix)

    def _maybe_add_session(self, session, desc, msg, topic, rgb, s):
        from geoloc_ros.mapping import Keyframe

        stamp = _stamp_ns(msg.header.stamp)
        odom = self._odom
        if self._last_session is not None:
            last_stamp, lx, ly = self._last_session
            if abs(stamp - last_stamp) < s.session_min_interval_s * 1e9:
                return
            if odom is not None and lx is not None and s.session_min_spacing_m > 0 and \
                    math.hypot(odom[0] - lx, odom[1] - ly) < s.session_min_spacing_m:
                return
        kf = Keyframe(label=f"{topic}@{stamp}", stamp_ns=stamp, source="session")
        if self._fix is not None:
            kf.lat, kf.lon, kf.alt = self._fix
        elif odom is not None:
            kf.x, kf.y, kf.z = odom
        with self._map_lock:
            kid = session.add(desc[None, :], [kf])[0]
        self._last_session = (stamp, odom[0] if odom else None, odom[1] if odom else None)
        if self._verifier is not None:
            self._session_images[kid] = self._verifier.features(rgb)

    # -- services -----------------------------------------------------------------------------------------------
    def _on_reload_map(self, request, response):
        if self.encoder is None:
            response.success, response.message = False, f"not configured ({self.lifecycle_state}): {self.last_error}"
            return response
        from geoloc_ros.mapping import MapDatabase, MapError

        s = params.read(self)
        try:
            maps = [MapDatabase.load(p, encoder=self.encoder) for p in s.maps]
        except (MapError, OSError) as e:
            response.success, response.message = False, f"reload failed, keeping the old maps: {e}"
            self.get_logger().error(response.message)
            return response
        with self._map_lock:
            self.maps = maps
            self._map_rows = _rows_of(maps)
            self.settings.map_path = s.map_path
        self._consistency.reset()
        if self._sequence is not None:
            self._sequence.reset()
        response.success = True
        response.message = "reloaded " + ", ".join(f"{m.name} ({len(m)} keyframes)" for m in maps)
        self.get_logger().info(response.message)
        return response

    def _on_save_session_map(self, request, response):
        session = self.session
        if session is None:
            response.success, response.message = False, "no session map (set session_map: true and configure)"
            return response
        path = Path(self.settings.session_map_path or Path.home() / ".ros" / "geoloc_session_map").expanduser()
        try:
            with self._map_lock:
                if session.encoder_path is None and self.settings.encoder_backend == "torch":
                    session.attach_encoder(self._encoder_file)
                session.save(path)
        except Exception as e:  # noqa: BLE001
            response.success, response.message = False, f"saving the session map to {path} failed: {e}"
            return response
        response.success, response.message = True, f"saved {len(session)} keyframes to {path}"
        return response

    # -- diagnostics --------------------------------------------------------------------------------------------
    def publish_diagnostics(self):
        state = self.lifecycle_state
        st = DiagnosticStatus(name=f"{self.get_name()}: place recognition", hardware_id=self.encoder_description())
        snap = self.stats.snapshot()
        if self.last_error:
            st.level, st.message = DiagnosticStatus.ERROR, self.last_error
        elif state != "active":
            st.level, st.message = DiagnosticStatus.WARN, f"{state}"
        elif snap["frames_received"] == 0:
            st.level, st.message = DiagnosticStatus.WARN, "active, no images received yet"
        else:
            st.level, st.message = DiagnosticStatus.OK, f"active, {snap['processed_rate_hz']:.1f} frames/s"
        values = {"state": state, "device": str(getattr(self.encoder, "device", "none")),
                  "maps": ", ".join(m.name for m in self.maps),
                  "map_keyframes": sum(len(m) for m in self.maps),
                  "session_keyframes": len(self.session) if self.session is not None else 0, **snap}
        st.values = [KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(arr)


def _rows_of(maps) -> dict:
    """Per map: descriptors and keyframe ids in row (capture) order, for sequence matching."""
    return {m.name: (np.asarray(m.descriptors), np.asarray(m.column("id"))) for m in maps}


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _candidate(map_name, match, rank) -> PlaceCandidate:
    k = match.keyframe
    c = PlaceCandidate(map_name=map_name, keyframe_id=int(k.id), keyframe_label=k.label, rank=rank,
                       similarity=float(match.similarity), latitude=float(k.lat), longitude=float(k.lon),
                       altitude=float(k.alt))
    c.keyframe_stamp.sec, c.keyframe_stamp.nanosec = divmod(int(k.stamp_ns), 1_000_000_000)
    if k.has_position:
        c.pose.position.x, c.pose.position.y = float(k.x), float(k.y)
        c.pose.position.z = float(k.z) if math.isfinite(k.z) else 0.0
    c.pose.orientation.x, c.pose.orientation.y = float(k.qx), float(k.qy)
    c.pose.orientation.z, c.pose.orientation.w = float(k.qz), float(k.qw)
    return c


def start(node: VprNode) -> bool:
    """configure + activate (what `autostart` does); True when the node ends up active."""
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        return False
    return node.trigger_activate() == TransitionCallbackReturn.SUCCESS


def main(args=None):
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = VprNode()
    try:
        if node.get_parameter("autostart").value:
            start(node)  # on failure the node stays unconfigured; a lifecycle manager may retry
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node._stop_worker()
        node._release()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
