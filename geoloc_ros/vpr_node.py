"""The lifecycle node geoloc_vpr (executable vpr_node): camera frames in; place-recognition and loop-closure
candidates, a GeoPose, a NavSatFix, a map-frame pose and diagnostics out.

    vpr_node --ros-args -p map_path:="['maps/nordland_demo']" -p image_topics:="['/camera/image_raw']"

A shell around the ROS-free Localizer (geoloc_ros/localization): it owns the ROS objects, turns messages into
Frames, calls `Localizer.process`, and publishes the FrameResults. Read top to bottom. Lifecycle: configure loads
the encoder and the maps into a Snapshot and builds the Localizer and the publishers (a failure leaves the node
unconfigured and says why, in the log and on /diagnostics); activate subscribes and starts the worker; deactivate
stops both; cleanup destroys the publishers and releases the encoder (and the GPU memory it held). With `autostart`
(default) the node configures and activates itself.

Threading: the camera callbacks (node/intake.py: a hidden node on an executor thread of their own, with odometry
and fix) only park the newest message per camera with the pose held then (an older one waiting is dropped and
counted) and wake the worker, which decodes, encodes, searches and publishes with one Localizer per batch;
~/find_place and ~/geolocate get executor threads of their own.
"""

from __future__ import annotations

from collections import Counter
import dataclasses
from dataclasses import replace
import math
from pathlib import Path
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geographic_msgs.msg import GeoPoseWithCovarianceStamped
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
import rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import NavSatFix
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from geoloc_msgs.msg import PlaceRecognition
from geoloc_ros.imaging import FrameError
from geoloc_ros.language.describe import FrameDescriber, describe_with
from geoloc_ros.language.lmm_client import LmmClient
from geoloc_ros.localization import SESSION_MAP_ID, LoadError, Localizer, SessionMap, load_snapshot, verification
from geoloc_ros.localization.metric_worker import COUNTERS as METRIC_COUNTERS
from geoloc_ros.localization.metric_worker import MetricPublisher
from geoloc_ros.localization.snapshot import backend_values, carries_checkpoint, describe_encoder, load_maps
from geoloc_ros.model.fused_encoder import FusedEncoder
from geoloc_ros.node import language_services, messages, params
from geoloc_ros.node.camera_inputs import CameraInputs
from geoloc_ros.node.camera_watch import CameraWatch
from geoloc_ros.node.diagnostics import NodeStats
from geoloc_ros.node.intake import CameraIntake
from geoloc_ros.node.peer_exchange import PeerExchange
from geoloc_ros.node.position_prior import PositionPrior
from geoloc_ros.node.services import empty_gpu_cache as _empty_gpu_cache
from geoloc_ros.node.services import service

NODE_NAME = "geoloc_vpr"
SESSION_MAP_NAME = SESSION_MAP_ID
ConfigureError = LoadError  # the name this module used before the localizer moved out
# Outputs are results a SLAM back end must not lose: reliable, a short queue.
RESULT_QOS = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
PUBLISHERS = {"pr": (PlaceRecognition, "~/place_recognition"), "lc": (PlaceRecognition, "~/loop_closures"),
              "geopose": (GeoPoseWithCovarianceStamped, "~/geopose"), "fix": (NavSatFix, "~/fix"),
              "pose": (PoseWithCovarianceStamped, "~/pose"), "markers": (MarkerArray, "~/loop_closure_markers")}


class VprNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        params.declare(self)
        self.stats = NodeStats()
        self.last_error = ""
        self.settings: params.Settings | None = None
        self._localizer: Localizer | None = None  # swapped whole by reload_map; read once per batch
        self._swap_lock = threading.Lock()
        self._odom = None  # latest (x, y, z) from odom_topic; a frame takes the one held when it arrives
        self._odom_orientation = None  # that odometry's (qx, qy, qz, qw), for the keyframes peers receive
        self._fix = None  # latest valid (lat, lon, alt) from fix_topic; likewise
        self._fix_covariance = None  # ENU (east, east-north, north) covariance of that fix, m^2 (None: unknown)
        self._travelled_m = 0.0  # odometry path length, summed over every odometry message
        self._cv = threading.Condition()
        # camera -> (message, topic, ROS receive time ns, monotonic receive time, odom, fix, fix covariance,
        # travelled path)
        self._pending = {}
        self._cameras: CameraInputs | None = None  # camera models and depth per camera, from configure
        self._markers = 0  # id of the next loop-closure marker
        self._worker = None
        self._metric = None  # the metric localization thread (localization/metric_worker.py), made at activate
        self._describer = None  # scene descriptions of the stream (language/describe.py), made at activate
        self._prior = None  # the robot's position for search_prior tf / metric (node/position_prior.py), at activate
        self._metric_counts = Counter({k: 0 for k in METRIC_COUNTERS})  # which pose was published, for /diagnostics
        self._stop = True
        self._subs = []
        self._intake = None  # the camera subscriptions' node, made at activate
        self.peers: PeerExchange | None = None  # keyframe exchange with other robots, made at configure
        self._pubs = {}
        self._warned = set()
        self._watch = CameraWatch([], 0.0, "")  # the camera topics' watch, made at activate
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(self.get_parameter("diagnostics_period_s").value,
                                             self.publish_diagnostics)
        self.create_service(Trigger, "~/reload_map", self._on_reload_map)
        self.create_service(Trigger, "~/save_session_map", self._on_save_session_map)
        self.language = language_services.LanguageServices(self)  # ~/address, ~/find_place, ~/geolocate

    # -- what the localizer holds (read-only views, for diagnostics and tests) -------------------------------
    @property
    def lifecycle_state(self) -> str:
        return self._state_machine.current_state[1]

    @property
    def encoder(self):
        return self._localizer.snapshot.encoder if self._localizer is not None else None

    @property
    def maps(self) -> list:
        """MapDatabase of each map, in map_path order."""
        return [m.db for m in self._localizer.snapshot.maps] if self._localizer is not None else []

    @property
    def session(self):
        return self._localizer.session if self._localizer is not None else None

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            s = params.read(self)
            self._localizer = self._build_localizer(s)
            self.peers = PeerExchange(self, s, self._localizer, self._publish_peer_closures)
            self._localizer.peers = self.peers.store  # not yet seen by the worker
        except Exception as e:  # noqa: BLE001 - any failure leaves the node unconfigured with the reason
            self.last_error = f"configure failed: {e}"
            self.get_logger().error(self.last_error)
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.settings, self.last_error, self._cameras = s, "", CameraInputs(s)
        self._pubs = {k: self.create_lifecycle_publisher(t, name, RESULT_QOS) for k, (t, name) in PUBLISHERS.items()
                      if k != "markers" or s.publish_markers}
        verifier = self._localizer.verifier
        for problem in verifier.problems() if verifier is not None else ():  # maps without stored features
            self.get_logger().warning(problem)
        calibration = self._localizer.snapshot.calibration
        if calibration is not None and not calibration.calibrated:  # another encoder's coefficients stand in
            self.get_logger().warning(calibration.describe())
        sizes = ", ".join(f"{m.name} ({len(m)} keyframes)" for m in self.maps) or "none"
        self.get_logger().info(f"configured: encoder {describe_encoder(self.encoder)}; maps: {sizes}")
        return TransitionCallbackReturn.SUCCESS

    @staticmethod
    def _build_localizer(s: params.Settings) -> Localizer:
        config = params.localizer_config(s)
        snapshot = load_snapshot(config)
        session = SessionMap(snapshot.encoder, frame=snapshot.primary_frame) if s.session_map else None
        return Localizer(snapshot, session, verification.build_verifier(config, snapshot, session))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        s = self.settings
        # frames on a thread and executor of their own: node/intake.py says why
        self._intake = CameraIntake(self, on_qos_change=self._on_qos_change)
        if s.odom_topic:  # before the cameras: a pose that came first is held when a frame is parked
            self._intake.subscribe_input(Odometry, s.odom_topic, self._on_odom, qos_profile_sensor_data)
        if s.fix_topic:
            self._intake.subscribe_input(NavSatFix, s.fix_topic, self._on_fix, qos_profile_sensor_data)
        self._prior = PositionPrior(s)
        self._prior.subscribe(self._intake)
        self._watch = CameraWatch([], s.no_frames_warn_s, s.image_qos)  # for a QoS change before the next line
        topics = self._intake.subscribe(s.image_topics, s.subscribe_compressed, s.image_qos, self._on_image,
                                        self._on_incompatible_qos)
        self._watch = CameraWatch(topics, s.no_frames_warn_s, s.image_qos, self._intake.qos.reliability)
        self._cameras.subscribe(self._intake.subscribe_camera)  # CameraInfo and depth: the cameras' QoS
        self.peers.activate()
        self._stop = False
        self._worker = threading.Thread(target=self._work, name="geoloc_vpr_worker", daemon=True)
        self._worker.start()
        self._metric = MetricPublisher(s, self._publish_pose, self._metric_counts)
        self._describer = self._frame_describer(s)
        self.get_logger().info(f"active: listening on {', '.join(s.image_topics)}")
        return super().on_activate(state)

    def _frame_describer(self, s) -> FrameDescriber | None:
        """Scene descriptions of the stream from lmm_url, when asked for and the encoder can fuse them."""
        if s.describe_period_s <= 0 or not s.lmm_url:
            return None
        if not isinstance(self.encoder, FusedEncoder):
            self.get_logger().warning("describe_period_s is set, but the encoder carries no feature combiner: "
                                      "no descriptions are asked for (docs/language.md)")
            return None
        client = LmmClient(s.lmm_url, s.lmm_model, s.lmm_timeout_s, s.lmm_retries)
        return FrameDescriber(lambda rgb: describe_with(client, rgb), s.describe_period_s, s.describe_max_age_s)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        _empty_gpu_cache()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        self._close_peers()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._close_peers()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._close_peers()
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
        if self._metric is not None:
            self._metric.stop()
            self._metric = None
        if self._describer is not None:
            self._describer.close()
            self._describer = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._intake is not None:
            self._intake.close()
            self._intake = None
        if self.peers is not None:
            self.peers.deactivate()

    def _close_peers(self):
        if self.peers is not None:
            self.peers.close()
            self.peers = None

    def _release(self):
        """Drop the localizer (encoder, maps, session); the GPU memory they held goes back to the driver."""
        with self._swap_lock:
            self._localizer = None
        _empty_gpu_cache()

    # -- inputs: park the newest message per camera -----------------------------------------------------------
    def _on_image(self, msg, camera: str, topic: str):
        self.stats.on_receive(topic)
        self._watch.on_frame(topic, messages.stamp_ns(msg.header.stamp))
        received_ns = self.get_clock().now().nanoseconds
        with self._cv:
            if camera in self._pending:
                self.stats.on_drop()  # newest wins: the worker was busy, the older frame is stale anyway
            self._pending[camera] = (msg, topic, received_ns, time.monotonic(), self._odom, self._fix,
                                     self._fix_covariance, self._travelled_m, self._odom_orientation)
            self._cv.notify()

    def _on_incompatible_qos(self, topic: str, event):
        self.get_logger().warning(self._watch.on_incompatible_qos(topic, event))

    def _on_qos_change(self, topic: str, reliability: str):
        self._watch.on_qos_change(topic)
        self.get_logger().info(f"{topic}: image_qos auto now subscribes {reliability} (the publishers' QoS)")

    def _on_odom(self, msg: Odometry):
        p = msg.pose.pose.position
        if not (math.isfinite(p.x) and math.isfinite(p.y) and math.isfinite(p.z)):
            self.stats.on_ignored_odom()  # a NaN position would enter the session map and its spacing test
            return
        if self._odom is not None:  # every message counts: frames alone would cut the corners of the path
            self._travelled_m += math.hypot(p.x - self._odom[0], p.y - self._odom[1])
        self._odom = (p.x, p.y, p.z)
        self._odom_orientation = messages.orientation_or_none(msg.pose.pose.orientation)
        if self.peers is not None:
            self.peers.odom_frame_id = msg.header.frame_id

    def _on_fix(self, msg: NavSatFix):
        problem = messages.fix_problem(msg)
        if problem is not None:  # a bad fix must not geotag keyframes (x/y = inf saved into the session map)
            self.stats.on_ignored_fix(problem)
            return
        self._fix = (float(msg.latitude), float(msg.longitude), float(msg.altitude))
        c = msg.position_covariance  # ENU, row-major 3x3; unknown: the search prior keeps its radius floor
        self._fix_covariance = None if msg.position_covariance_type == NavSatFix.COVARIANCE_TYPE_UNKNOWN else (
            float(c[0]), float(c[1]), float(c[4]))

    # -- the worker: frames -> Localizer -> publications ------------------------------------------------------
    def _work(self):
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending or self._stop, timeout=0.5)
                if self._stop:
                    return
                batch = list(self._pending.items())
                self._pending.clear()
            if not batch:
                continue
            try:
                self._process(batch)
            except Exception as e:  # noqa: BLE001 - a bad batch must never kill the worker
                self.stats.on_reject("error")
                self.get_logger().error(f"processing failed: {type(e).__name__}: {e}")

    def _process(self, batch):
        with self._swap_lock:
            localizer = self._localizer  # one snapshot for the whole batch
        if localizer is None:
            return
        frames = [f for f in (self._decode(camera, *parked) for camera, parked in batch) if f is not None]
        describer = self._describer
        if describer is not None and frames:
            describer.offer(frames[-1].time_ns, frames[-1].rgb)
            frames = [replace(f, description=describer.for_stamp(f.time_ns)) for f in frames]
        for result in localizer.process(frames):
            self._publish(result, localizer.snapshot)
            peers = self.peers
            if peers is not None:
                peers.on_result(result, localizer)
            self.stats.on_processed(result.encode_ms, result.search_ms,
                                    (time.monotonic() - result.frame.received_mono) * 1e3)

    def _decode(self, camera, msg, topic, received_ns, received_mono, odom, fix, fix_covariance=None,
                travelled_m=None, odom_orientation=None):
        try:
            s = self.settings
            frame = messages.to_frame(msg, camera, topic, received_ns, received_mono, s.blank_threshold,
                                      odom=odom, fix=fix, max_pixels=s.max_image_pixels, mono16_max=s.mono16_max,
                                      depth=self._cameras.depth_for(camera, messages.stamp_ns(msg.header.stamp)),
                                      fix_covariance=fix_covariance,
                                      travelled_m=travelled_m if odom is not None else None)
            frame = replace(frame, odom_orientation=odom_orientation if odom is not None else None)
            model = self._cameras.model(camera, frame.rgb.shape[1], frame.rgb.shape[0])  # None: does not fit
            prior, metric = self._prior, self._metric
            if prior is not None and prior.active:
                frame = replace(frame, position_prior=prior.for_frame(
                    frame.time_ns, metric.last_metric if metric is not None else None))
            return replace(frame, camera_model=model) if model is not None else frame
        except FrameError as e:
            self.stats.on_reject(e.kind)
            self._warn_once(topic, e.kind, f"{e} (further '{e.kind}' frames are only counted in /diagnostics)")
        except Exception as e:  # noqa: BLE001
            self.stats.on_reject("corrupt")
            self._warn_once(topic, "corrupt", f"{type(e).__name__}: {e}")
        return None

    def _warn_once(self, topic, kind, text):
        """Once per topic and kind: a bad stream must not flood the log."""
        if (topic, kind) not in self._warned:
            self._warned.add((topic, kind))
            self.get_logger().warning(f"{topic}: dropping frame: {text}")

    def _publish(self, result, snapshot=None):
        """~/place_recognition always, first; the rest when the frame closed a loop and someone listens to it."""
        pubs = self._pubs
        pubs["pr"].publish(messages.recognition_message(result, result.candidates))
        self.language.on_result(result)
        if not result.closures:
            return
        self.stats.on_loop_closure()
        if pubs["lc"].get_subscription_count():
            pubs["lc"].publish(messages.recognition_message(result, result.closures))
        if "markers" in pubs and pubs["markers"].get_subscription_count():
            self._publish_markers(result)
        if result.pose is None or not any(pubs[k].get_subscription_count() for k in ("pose", "geopose", "fix")):
            return
        metric = self._metric
        if metric is not None and snapshot is not None and metric.wants(result, snapshot):
            metric.submit(result, snapshot)  # it publishes the metric pose, or this fused one
            return
        self._metric_counts["place_poses"] += 1
        self._publish_pose(result, result.pose)

    def _publish_peer_closures(self, result, closures):
        """Peer closures whose verification ended (peer_exchange.py), on ~/loop_closures with the frame's header."""
        pub = self._pubs.get("lc")
        if pub is not None:
            self.stats.on_loop_closure()
            pub.publish(messages.recognition_message(result, closures))

    def _publish_pose(self, result, pose):
        """~/pose, and ~/geopose + ~/fix when the pose is geotagged (called by the metric thread too)."""
        pubs = self._pubs
        pose, geo, fix = messages.pose_messages(dataclasses.replace(result, pose=pose), self.settings.map_frame,
                                                self.settings.base_frame)
        pubs["pose"].publish(pose)
        if geo is not None:
            pubs["geopose"].publish(geo)
            pubs["fix"].publish(fix)

    def _publish_markers(self, result):
        from geoloc_ros.node.markers import closure_markers

        markers = closure_markers(result, self.settings.map_frame, self._markers)
        if markers is not None:
            self._pubs["markers"].publish(markers)
            self._markers += 1

    # -- services -----------------------------------------------------------------------------------------------
    @service
    def _on_reload_map(self, request, response):
        localizer = self._localizer
        if localizer is None:
            response.success, response.message = False, f"not configured ({self.lifecycle_state}): {self.last_error}"
            return response
        s = params.read(self)
        if not s.maps:
            response.success = False
            response.message = "reload refused, keeping the old maps: map_path names no map (set map_path to one " \
                               "or more map directories)"
            return response
        try:
            maps = load_maps(s.maps, encoder=localizer.snapshot.encoder)
        except LoadError as e:
            response.success, response.message = False, f"reload failed, keeping the old maps: {e}"
            self.get_logger().error(response.message)
            return response
        verifier = localizer.verifier.with_maps(maps) if localizer.verifier is not None else None
        fresh = Localizer(localizer.snapshot.with_maps(maps, s.maps), localizer.session, verifier, localizer.peers)
        with self._swap_lock:
            self._localizer = fresh
        self.settings = replace(self.settings, map_path=s.map_path)
        response.success = True
        response.message = "reloaded " + ", ".join(f"{m.name} ({len(m.db)} keyframes)" for m in maps)
        self.get_logger().info(response.message)
        return response

    @service
    def _on_save_session_map(self, request, response):
        localizer = self._localizer
        session = localizer.session if localizer is not None else None
        if session is None:
            response.success, response.message = False, "no session map (set session_map: true and configure)"
            return response
        s = self.settings
        path = Path(s.session_map_path or Path.home() / ".ros" / "geoloc_session_map").expanduser()
        try:
            encoder_file = localizer.snapshot.encoder_file
            session.save(path, encoder_file, attach_encoder=carries_checkpoint(encoder_file))
        except Exception as e:  # noqa: BLE001
            response.success, response.message = False, f"saving the session map to {path} failed: {e}"
            return response
        response.success, response.message = True, f"saved {len(session)} keyframes to {path}"
        return response

    # -- diagnostics --------------------------------------------------------------------------------------------
    def publish_diagnostics(self):
        state = self.lifecycle_state
        encoder, maps, session = self.encoder, self.maps, self.session
        st = DiagnosticStatus(name=f"{self.get_name()}: place recognition", hardware_id=describe_encoder(encoder))
        snap = self.stats.snapshot()
        if self.last_error:
            st.level, st.message = DiagnosticStatus.ERROR, self.last_error
        elif state != "active":
            st.level, st.message = DiagnosticStatus.WARN, f"{state}"
        elif silent := self._watch.warnings((self._intake or self).count_publishers):
            st.level, st.message = DiagnosticStatus.WARN, "; ".join(silent)
        elif snap["frames_received"] == 0:
            st.level, st.message = DiagnosticStatus.WARN, "active, no images received yet"
        else:
            st.level, st.message = DiagnosticStatus.OK, f"active, {snap['processed_rate_hz']:.1f} frames/s"
        values = {"state": state, "device": str(getattr(encoder, "device", "none")),
                  "maps": ", ".join(m.name for m in maps), "map_keyframes": sum(len(m) for m in maps),
                  "session_keyframes": len(session) if session is not None else 0,
                  **backend_values(encoder), **snap,
                  **(self._intake.diagnostics() if self._intake is not None else {}), **self._watch.diagnostics(),
                  **(self._cameras.diagnostics() if self._cameras is not None else {}),
                  **verification.diagnostics(self._localizer.verifier if self._localizer is not None else None),
                  **dict(self._metric_counts),
                  **(self._localizer.prior.diagnostics() if self._localizer is not None else {}),
                  **(self._prior.diagnostics() if self._prior is not None else {}),
                  **(self._describer.snapshot() if self._describer is not None else {}),
                  **(self.peers.diagnostics() if self.peers is not None else {})}
        if self.peers is not None and self.peers.store is not None and self._localizer is not None:
            values.update({f"peer_closures_refused_{k}": v for k, v in self._localizer.peer_refused.items()})
        if st.level == DiagnosticStatus.OK and "verification_problems" in values:  # maps without stored features
            st.level, st.message = DiagnosticStatus.WARN, f"{st.message}; {values['verification_problems']}"
        calibration = self._localizer.snapshot.calibration if self._localizer is not None else None
        if calibration is not None:
            values["closure_confidence"] = calibration.describe()
            # a threshold of 0 publishes every closure: then nothing rests on the calibration
            if st.level == DiagnosticStatus.OK and not calibration.calibrated and \
                    self._localizer.config.loop_closure_min_confidence > 0:
                st.level, st.message = DiagnosticStatus.WARN, f"{st.message}; loop-closure confidence uncalibrated"
        st.values = [KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(arr)


def start(node: VprNode) -> bool:
    """configure + activate (what `autostart` does); True when the node ends up active."""
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        return False
    return node.trigger_activate() == TransitionCallbackReturn.SUCCESS


def main(args=None):
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    rclpy.init(args=args)
    node = VprNode()
    try:
        if node.get_parameter("autostart").value:
            start(node)  # on failure the node stays unconfigured; a lifecycle manager may retry
        rclpy.spin(node, executor=MultiThreadedExecutor())  # node/language_services.py says why
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node._stop_worker()
        node._release()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
