"""Driving a Trip through geoloc_vpr and geoloc_pose_graph over real DDS (the ROS half of `geoloc demo --slam`).

geoloc_vpr runs as a process (`node_process`, its own namespace), geoloc_pose_graph in this process on an
executor thread of its own, in the same namespace, with `loop_closures` remapped to geoloc_vpr's, as
slam.launch.py does. A player publishes, per step, the simulated wheel odometry (nav_msgs/Odometry on
<ns>/odom, to both nodes) and then the frame's image at that stamp; unimaged steps get odometry only. What comes
back: geoloc_vpr's ~/loop_closures, geoloc_pose_graph's ~/path (the optimised trajectory) and /diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import threading
import time

import numpy as np

from geoloc_ros.stamps import set_stamp, stamp_ns

POSE_GRAPH_NAME = "geoloc_pose_graph"


@dataclass
class Drive:
    """What the two nodes answered."""

    path: dict = field(default_factory=dict)  # stamp -> (x, y, z) of the last ~/path
    closures: dict = field(default_factory=dict)  # query stamp -> geoloc_msgs/PlaceRecognition (~/loop_closures)
    graph_diag: dict = field(default_factory=dict)  # last /diagnostics values of geoloc_pose_graph
    vpr_diag: dict = field(default_factory=dict)
    images_sent: int = 0
    answered: int = 0
    wall_s: float = 0.0


class _Back:
    """The pose-graph node and a listener to its ~/path and /diagnostics, spun on one executor thread."""

    def __init__(self, context, namespace: str):
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import Path
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from geoloc_ros.replay import SpinThread
        from geoloc_ros.slam.pose_graph_node import PATH_QOS, PoseGraphNode

        self.node = PoseGraphNode(context=context, namespace=namespace,
                                  cli_args=["--ros-args", "-r", f"loop_closures:={namespace}/geoloc_vpr/loop_closures"])
        self.listener = rclpy.create_node("geoloc_demo_slam_listener", context=context)
        self.path, self.diag, self._lock = None, {}, threading.Lock()
        self.listener.create_subscription(Path, f"{namespace}/{POSE_GRAPH_NAME}/path", self._on_path, PATH_QOS)
        self.listener.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.executor = SingleThreadedExecutor(context=context)
        for n in (self.node, self.listener):
            self.executor.add_node(n)
        self._spinner = SpinThread(self.executor)

    def _on_path(self, msg):
        with self._lock:
            self.path = {stamp_ns(p.header.stamp): (p.pose.position.x, p.pose.position.y, p.pose.position.z)
                         for p in msg.poses}

    def _on_diag(self, msg):
        for st in msg.status:
            if st.name.startswith(POSE_GRAPH_NAME):
                with self._lock:
                    self.diag = {kv.key: kv.value for kv in st.values}

    def close(self):
        self._spinner.stop()
        self.executor.shutdown()
        self.listener.destroy_node()
        self.node.destroy_node()


def odometry_message(stamp: int, pose):
    """nav_msgs/Odometry of a gtsam.Pose3 in `odom`, covariance left zero (the back end's documented default)."""
    from nav_msgs.msg import Odometry

    msg = Odometry()
    set_stamp(msg.header.stamp, stamp)
    msg.header.frame_id, msg.child_frame_id = "odom", "base_link"
    p, q = pose.translation(), pose.rotation().toQuaternion()
    msg.pose.pose.position.x, msg.pose.pose.position.y, msg.pose.pose.position.z = (float(v) for v in p)
    o = msg.pose.pose.orientation
    o.x, o.y, o.z, o.w = q.x(), q.y(), q.z(), q.w()
    return msg


def drive(trip, vpr_params: list[str], log_path, rate_hz: float = 8.0, config=None, say=print) -> Drive:
    """Run `trip` through a vpr_node process (extra `vpr_params`, after `config`) and an in-process
    geoloc_pose_graph at its default parameters; returns what came back. Give geoloc_vpr `odom_topic:=odom`:
    relative, it resolves to <ns>/odom, where the player publishes."""
    from nav_msgs.msg import Odometry
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from geoloc_ros.datasets import read_image
    from geoloc_ros.replay import image_message, node_process

    out = Drive()
    with node_process(vpr_params, log_path, name="geoloc_demo_slam", params_file=config) as h:
        ns = h.namespace
        back = _Back(h.context, ns)
        odom_pub = h.node.create_publisher(Odometry, f"{ns}/odom", QoSProfile(depth=200,
                                                                                reliability=ReliabilityPolicy.RELIABLE))
        try:
            _wait_started(h, odom_pub, log_path)
            say(f"  {trip.name}: nodes up; driving {len(trip.steps)} steps ({trip.images} images) at {rate_hz:g} Hz")
            t0 = time.monotonic()
            _play(h, odom_pub, trip, rate_hz, read_image, image_message)
            out.images_sent = trip.images
            h.wait_quiet(quiet_s=3.0, timeout=60, expect=trip.images)
            _wait_for_path(back, trip.steps[-1].stamp_ns)
            out.wall_s = time.monotonic() - t0
            time.sleep(1.5)  # a diagnostics period of each node, so their counters include the last frames
            with back._lock:
                out.path, out.graph_diag = dict(back.path or {}), dict(back.diag)
            out.closures = dict(h.data.results["loop_closures"])
            out.answered = len(h.data.received)
            out.vpr_diag = h.diag_values()
        finally:
            back.close()
    return out


def _wait_started(h, odom_pub, log_path, timeout: float = 180.0):
    t0 = time.monotonic()
    while not h.ready() or odom_pub.get_subscription_count() < 2:
        if h.process.poll() is not None or time.monotonic() - t0 > timeout:
            raise SystemExit(f"geoloc demo --slam: the nodes did not start (see {log_path}):\n"
                             + log_path.read_text()[-3000:])
        time.sleep(0.1)


def _play(h, odom_pub, trip, rate_hz, read_image, image_message):
    """Odometry then image per step, on a fixed schedule: `rate_hz` for imaged steps, 4x that on unimaged ones
    (nothing to encode there, and the back end's odometry queue is 200 deep)."""
    due = time.perf_counter()
    for step, pose in zip(trip.steps, trip.odometry):
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        odom_pub.publish(odometry_message(step.stamp_ns, pose))
        if step.image is not None:
            time.sleep(0.005)  # the odometry first, so geoloc_vpr's session keyframe gets this step's position
            h.publish(image_message(np.asarray(read_image(step.image)), step.stamp_ns))
        due += 1.0 / (rate_hz if step.image is not None else 4 * rate_hz)


def _wait_for_path(back, last_stamp: int, timeout: float = 60.0):
    """Until ~/path holds the last step and has stopped changing for 2 s (closures still being optimised)."""
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        with back._lock:
            path = back.path
        if path is not None and last_stamp in path:
            if path is not last:
                last, since = path, time.monotonic()
            elif time.monotonic() - since > 2.0:
                return
        time.sleep(0.1)
