"""Replaying a rosbag2 into the node through DDS, and collecting what it answers: shared by `geoloc demo`, the
node tests and the node latency benchmark.

Bags are read with `rosbags` (pure Python; rosbag2 itself is not installable here) and their messages turned into
rclpy messages field by field. Publish times are recorded per image stamp, so receive - publish is the end-to-end
latency through DDS and the node.
"""

from __future__ import annotations

from array import array
from contextlib import contextmanager
from dataclasses import dataclass, field
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from geoloc_ros.imaging import rgb_to_image_fields
from geoloc_ros.stamps import set_stamp, stamp_ns

NODE_TOPICS = ("place_recognition", "loop_closures", "geopose", "fix", "pose")


@dataclass
class BagFrame:
    stamp_ns: int
    image: object  # rclpy sensor_msgs/Image or CompressedImage, ready to publish
    fix: tuple | None = None  # (lat, lon, alt) ground truth recorded with the frame, if any


def read_bag(path, image_topic="/camera/image_raw", fix_topic="/gnss/fix") -> list[BagFrame]:
    """Image (or CompressedImage) messages of `image_topic`, in recording order, each with the ground-truth fix of
    the same stamp on `fix_topic` (None when there is none)."""
    from rosbags.highlevel import AnyReader

    images, fixes = [], {}
    with AnyReader([_path(path)]) as reader:
        conns = [c for c in reader.connections if c.topic in (image_topic, fix_topic)]
        if not any(c.topic == image_topic for c in conns):
            topics = sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections})
            raise ValueError(f"{path}: no topic {image_topic}; the bag holds {', '.join(topics)}")
        for conn, t, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = stamp_ns(msg.header.stamp) or int(t)
            if conn.topic == image_topic:
                images.append((stamp, to_rclpy(msg, conn.msgtype)))
            else:
                fixes[stamp] = (float(msg.latitude), float(msg.longitude), float(msg.altitude))
    return [BagFrame(s, m, fixes.get(s)) for s, m in images]


def _path(p):
    from pathlib import Path

    return Path(p)


def to_rclpy(msg, msgtype: str):
    """A rosbags sensor_msgs Image / CompressedImage -> the rclpy message."""
    from sensor_msgs.msg import CompressedImage, Image

    if msgtype.endswith("CompressedImage"):
        out = CompressedImage(format=msg.format)
    else:
        out = Image(height=int(msg.height), width=int(msg.width), encoding=msg.encoding,
                    is_bigendian=int(msg.is_bigendian), step=int(msg.step))
    out.header.stamp.sec, out.header.stamp.nanosec = int(msg.header.stamp.sec), int(msg.header.stamp.nanosec)
    out.header.frame_id = msg.header.frame_id
    out.data = array("B", np.asarray(msg.data, dtype=np.uint8).tobytes())
    return out


def image_message(rgb: np.ndarray, stamp: int, frame_id: str = "camera", encoding: str = "rgb8"):
    """An rclpy sensor_msgs/Image of `rgb`."""
    from sensor_msgs.msg import Image

    f = rgb_to_image_fields(rgb, encoding)
    msg = Image(height=f["height"], width=f["width"], encoding=f["encoding"], is_bigendian=0, step=f["step"])
    msg.data = array("B", f["data"].tobytes())
    set_stamp(msg.header.stamp, stamp)
    msg.header.frame_id = frame_id
    return msg


def wait_for(predicate, timeout: float = 30.0) -> bool:
    """Poll `predicate` every 50 ms until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


class SpinThread:
    """Spins `executor` in a daemon thread until stop(). An exception after stop() (the context shut down under
    us at the end) ends the thread quietly; one before it is raised."""

    def __init__(self, executor):
        self.executor = executor
        self._running = True
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while self._running:
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001
                if self._running:
                    raise
                return

    def stop(self, timeout: float = 5.0):
        self._running = False
        self._thread.join(timeout=timeout)


@dataclass
class Collected:
    """What came back from the node, keyed by image stamp (ns)."""

    published: dict = field(default_factory=dict)  # stamp -> perf_counter at publish
    results: dict = field(default_factory=lambda: {t: {} for t in NODE_TOPICS})  # topic -> stamp -> message
    received: dict = field(default_factory=dict)  # stamp -> perf_counter when ~/place_recognition arrived
    diagnostics: list = field(default_factory=list)  # DiagnosticStatus of the node, latest last

    def latencies_ms(self) -> np.ndarray:
        return np.array([(self.received[s] - self.published[s]) * 1e3 for s in self.received if s in self.published])


class Harness:
    """A player + collector node in the caller's rclpy context, spun by its own executor in a thread. Publishes
    camera frames (reliable, like most drivers and rosbag2 replay: matches the node's default image_qos, and
    `image_qos:=sensor_data` too) and records the node's outputs and /diagnostics."""

    def __init__(self, context, node_name: str = "geoloc_vpr", image_topic: str = "/camera/image_raw",
                 namespace: str = ""):
        from diagnostic_msgs.msg import DiagnosticArray
        from geographic_msgs.msg import GeoPoseWithCovarianceStamped
        from geometry_msgs.msg import PoseWithCovarianceStamped
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, QoSReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image, NavSatFix

        from geoloc_msgs.msg import PlaceRecognition

        self.node = rclpy.create_node("geoloc_replay", context=context)
        self.data = Collected()
        self._lock = threading.Lock()
        self.node_name = node_name
        self.namespace = namespace
        self.context = context
        prefix = f"{namespace.rstrip('/')}/{node_name}" if namespace else f"/{node_name}"
        camera = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
        self.image_pub = self.node.create_publisher(Image, image_topic, camera)
        self.compressed_pub = self.node.create_publisher(CompressedImage, image_topic.rstrip("/") + "/compressed",
                                                         camera)
        reliable = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE)
        types = {"place_recognition": PlaceRecognition, "loop_closures": PlaceRecognition,
                 "geopose": GeoPoseWithCovarianceStamped, "fix": NavSatFix, "pose": PoseWithCovarianceStamped}
        self._result_subs = {topic: self.node.create_subscription(t, f"{prefix}/{topic}",
                                                                  lambda m, k=topic: self._on_result(k, m), reliable)
                             for topic, t in types.items()}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._spinner = SpinThread(self.executor)

    def _on_result(self, topic, msg):
        now = time.perf_counter()
        s = stamp_ns(msg.header.stamp)
        with self._lock:
            self.data.results[topic][s] = msg
            if topic == "place_recognition" and s not in self.data.received:
                self.data.received[s] = now

    def _on_diag(self, msg):
        for st in msg.status:
            if st.name.startswith(self.node_name):
                with self._lock:
                    self.data.diagnostics.append(st)

    def diag_values(self) -> dict:
        with self._lock:
            if not self.data.diagnostics:
                return {}
            st = self.data.diagnostics[-1]
        return {"level": st.level, "message": st.message, **{kv.key: kv.value for kv in st.values}}

    def ready(self) -> bool:
        """The node subscribes to the camera and its ~/place_recognition has matched this harness: frames played
        from now on are answered where the harness hears it (an answer published before the match is lost)."""
        return self.image_pub.get_subscription_count() > 0 and \
            self._result_subs["place_recognition"].get_publisher_count() > 0

    def wait_for_subscriber(self, timeout: float = 30.0) -> bool:
        """Wait until `ready()`."""
        return wait_for(self.ready, timeout)

    def publish(self, msg):
        """Publish an Image or CompressedImage now, recording the publish time under its stamp."""
        with self._lock:
            self.data.published[stamp_ns(msg.header.stamp)] = time.perf_counter()
        (self.compressed_pub if hasattr(msg, "format") else self.image_pub).publish(msg)

    def play(self, messages, rate_hz: float):
        """Publish `messages` at `rate_hz`, on `paced`'s schedule (a slow subscriber cannot slow the camera)."""
        for msg in paced(messages, rate_hz):
            self.publish(msg)

    def wait_quiet(self, quiet_s: float = 1.0, timeout: float = 30.0, expect: int | None = None):
        """Wait until `expect` results arrived, or nothing new came for `quiet_s`."""
        deadline = time.monotonic() + timeout
        last, last_t = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = len(self.data.received)
            if expect is not None and n >= expect:
                return
            if n != last:
                last, last_t = n, time.monotonic()
            elif time.monotonic() - last_t > quiet_s:
                return
            time.sleep(0.05)

    def wait_for(self, predicate, timeout: float = 30.0) -> bool:
        return wait_for(predicate, timeout)

    def close(self):
        self._spinner.stop()
        self.executor.shutdown()
        self.node.destroy_node()


class InProcessNode:
    """A VprNode in `context`, spun by its own executor thread (tests and the benchmark): start, use, close."""

    def __init__(self, context, parameters: dict, autostart: bool = True):
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.parameter import Parameter

        from geoloc_ros.vpr_node import VprNode, start

        overrides = [Parameter(k, value=v) for k, v in {"autostart": autostart, **parameters}.items()]
        self.node = VprNode(context=context, parameter_overrides=overrides)
        self.active = start(self.node) if autostart else False
        self.executor = MultiThreadedExecutor(context=context)  # as vpr_node's main: services in their own groups
        self.executor.add_node(self.node)
        self._spinner = SpinThread(self.executor)

    def close(self):
        self._spinner.stop()
        self.node._stop_worker()
        self.node._release()
        self.executor.shutdown()
        self.node.destroy_node()


def paced(items, rate_hz: float):
    """Yield `items` as a camera at `rate_hz` would send them: on a fixed schedule, and when late (this process was
    not scheduled) still at least half a period after the one before. A camera does not send two frames at once,
    and the node's newest-wins would drop the first."""
    period = 1.0 / rate_hz
    t0 = last = time.perf_counter()
    for i, item in enumerate(items):
        due = t0 + i * period
        if i:
            due = max(due, last + period / 2)
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        last = time.perf_counter()
        yield item


@contextmanager
def node_process(params, log_path, name: str = "geoloc_replay", params_file=None,
                 module: str = "geoloc_ros.vpr_node"):
    """Run vpr_node as a process in a namespace of its own (so two runs, or a robot on the same DDS domain, stay
    apart), with its camera topic set, and yield a Harness talking to it (its `process` attribute is the
    Popen). On exit the harness closes and the node gets SIGINT, then SIGKILL after 30 s.

    `params` are extra ``name:=value`` parameters, applied after `params_file`; `module`: what runs as the node
    (the benchmark's floor runs geoloc_ros.bench.echo_node in its place)."""
    import rclpy
    from rclpy.context import Context

    ns = f"/{name}_{os.getpid()}"
    camera = f"{ns}/camera/image_raw"
    cmd = [sys.executable, "-m", module, "--ros-args", "-r", f"__ns:={ns}"]
    if params_file and Path(params_file).is_file():
        cmd += ["--params-file", str(params_file)]
    overrides = [f"image_topics:=['{camera}']", "diagnostics_period_s:=0.5", *params]
    cmd += [a for p in overrides for a in ("-p", p)] + ["--log-level", "geoloc_vpr:=warn"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        context = Context()
        rclpy.init(context=context)
        harness = Harness(context, image_topic=camera, namespace=ns)
        harness.process = process
        try:
            yield harness
        finally:
            harness.close()
            context.try_shutdown()
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
