"""Camera intake: geoloc_vpr's image subscriptions on a hidden node of their own (`_geoloc_vpr_intake`), spun by
a SingleThreadedExecutor in a thread of its own; the callbacks only park the newest frame for the worker.

Why not on geoloc_vpr itself: that node is spun by a MultiThreadedExecutor, so that a slow model server behind
~/geolocate holds one executor thread and not the cameras (language_services.py), and that executor hands every
callback to a pool thread. For a 640x480 rgb8 frame the hand-off cost ~2 ms p50 and doubled p95: the benchmark's
echo floor (docs/node.md, "Where the time goes") was 6.3-6.7 ms under the MultiThreadedExecutor, 4.0-4.4 ms with
the subscriptions here. Odometry and NavSatFix, which tag the frames, are taken on the same thread, so a frame is
parked with the pose that arrived before it (on separate executors a pose could still be waiting when the frame
was processed, and a session keyframe then took the previous pose). Topic names are resolved by geoloc_vpr (its
remappings and namespace apply) and the intake node ignores the process's global arguments, so a `-r __node:=...`
cannot give two nodes one name. CameraInfo and depth are taken here too, with the images' image_qos; their
callbacks only store the message.
"""

from __future__ import annotations

import threading

from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image

from geoloc_ros.node.camera_qos import CameraSubscriptions


class CameraIntake:
    def __init__(self, owner: Node, on_qos_change=None):
        """`on_qos_change(topic, reliability)`: image_qos `auto` re-subscribed `topic` (node/camera_qos.py)."""
        self.node = Node(f"_{owner.get_name()}_intake", namespace=owner.get_namespace(), context=owner.context,
                         use_global_arguments=False, start_parameter_services=False, enable_rosout=False)
        self._resolve = owner.resolve_topic_name
        self._resolved = {}  # topic as the user named it -> the name subscribed
        self._on_qos_change = on_qos_change
        self.qos: CameraSubscriptions | None = None  # made by the first `subscribe`
        self._executor = SingleThreadedExecutor(context=owner.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name="geoloc_vpr_intake", daemon=True)
        self._thread.start()

    def subscribe(self, image_topics, compressed: bool, qos, on_image, on_incompatible_qos) -> list[str]:
        """Image (and with `compressed` CompressedImage on TOPIC/compressed) subscriptions; `qos` an image_qos
        word (auto, reliable, sensor_data, system_default) or a QoSProfile; `on_image(msg, camera, topic)`,
        `on_incompatible_qos(topic, event)`. Returns the topics subscribed, as the user named them. As
        image_transport does, /compressed follows the remapped image topic."""
        if self.qos is None:
            self.qos = CameraSubscriptions(self.node, qos, self._on_qos_change)
        cameras = [(Image, t, t, self._resolve(t)) for t in image_topics]
        if compressed:
            cameras += [(CompressedImage, t, t.rstrip("/") + "/compressed", self._resolve(t) + "/compressed")
                        for t in image_topics]
        for kind, camera, topic, resolved in cameras:
            self._resolved[topic] = resolved
            events = SubscriptionEventCallbacks(incompatible_qos=lambda e, t=topic: on_incompatible_qos(t, e))
            self.qos.create(topic, kind, resolved, lambda m, c=camera, t=topic: on_image(m, c, t), events)
        return [topic for _, _, topic, _ in cameras]

    def subscribe_camera(self, kind, topic: str, callback):
        """A subscription to a camera's CameraInfo or depth, with the images' image_qos (after `subscribe`)."""
        self.qos.create(topic, kind, self._resolve(topic), callback)

    def subscribe_input(self, kind, topic: str, callback, qos):
        """A subscription to a message the frames are tagged with (odometry, NavSatFix) on the same thread as the
        cameras. Call it before `subscribe`: an executor takes ready messages in the order their subscriptions
        were made, so a pose that arrived before a frame is always held when the frame is parked."""
        self.node.create_subscription(kind, self._resolve(topic), callback, qos)

    def count_publishers(self, topic: str) -> int:
        """Publishers of camera topic `topic` (as the user named it) on the name actually subscribed, remapped."""
        return self.node.count_publishers(self._resolved.get(topic, self._resolve(topic)))

    def diagnostics(self) -> dict:
        return self.qos.diagnostics() if self.qos is not None else {}

    def _spin(self):
        try:
            self._executor.spin()
        except ExternalShutdownException:
            pass

    def close(self):
        """Stop the thread and destroy the node and its subscriptions."""
        self._executor.shutdown(timeout_sec=5.0)
        if self.qos is not None:
            self.qos.close()
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
