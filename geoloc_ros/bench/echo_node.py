"""The floor under the node benchmark: a stand-in geoloc_vpr that answers every camera frame at once.

It subscribes like vpr_node (the same `image_qos` profile, Image and CompressedImage, through the same
node/intake.py CameraIntake beside a node spun by a MultiThreadedExecutor) and publishes an empty
~/place_recognition carrying the frame's header, so the benchmark's harness times it exactly as it times the real
node: what remains is DDS both ways, rclpy's conversion of the frame into Python and the executor; no decoding,
encoder or search.

    python -m geoloc_ros.bench.echo_node --ros-args -r __ns:=/bench -p image_topics:="['/bench/camera/image_raw']"
"""

from __future__ import annotations

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from geoloc_msgs.msg import PlaceRecognition
from geoloc_ros.node.intake import CameraIntake
from geoloc_ros.node.params import image_qos_profile
from geoloc_ros.vpr_node import RESULT_QOS


class EchoNode(Node):
    def __init__(self):
        super().__init__("geoloc_vpr")
        topics = self.declare_parameter("image_topics", ["/camera/image_raw"]).value
        qos = image_qos_profile(self.declare_parameter("image_qos", "reliable").value)
        self.pub = self.create_publisher(PlaceRecognition, "~/place_recognition", RESULT_QOS)
        self.intake = CameraIntake(self)
        self.intake.subscribe(topics, True, qos, self._on_image, lambda topic, event: None)

    def _on_image(self, msg, camera, topic):
        self.pub.publish(PlaceRecognition(header=msg.header))


def main(args=None):
    rclpy.init(args=args)
    node = EchoNode()
    try:
        rclpy.spin(node, executor=MultiThreadedExecutor())
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.intake.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
