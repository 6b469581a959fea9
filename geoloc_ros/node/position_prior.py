"""The robot's position for `search_prior: tf | metric`, attached to each frame (Frame.position_prior) as a position
in map_frame with a covariance. tf: map_frame -> base_frame through the latest /tf and /tf_static transforms
(localization/transforms.py), with search_prior_tf_covariance_m2 since TF carries none; metric: the node's last
metric pose (localization/metric_worker.py) with its covariance. A position older than search_prior_max_age_s at
the frame's stamp is not used. /diagnostics counts what each frame got."""

from __future__ import annotations

from collections import Counter

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from tf2_msgs.msg import TFMessage

from geoloc_ros.localization.transforms import Transform, TransformBuffer
from geoloc_ros.stamps import stamp_ns

# tf2's listener QoS: /tf reliable and volatile, /tf_static reliable and latched (transient local)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
TF_STATIC_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
OUTCOMES = ("prior_positions", "prior_stale", "prior_unavailable")


class PositionPrior:
    """`subscribe(intake)` at activation; `for_frame(time_ns, metric)` per frame; `diagnostics()`."""

    def __init__(self, settings):
        s = settings
        self.kind = s.search_prior
        self.map_frame, self.base_frame = s.map_frame, s.base_frame
        self.max_age_ns = int(s.search_prior_max_age_s * 1e9)
        self.tf_covariance = (float(s.search_prior_tf_covariance_m2), 0.0, float(s.search_prior_tf_covariance_m2))
        self.transforms = TransformBuffer() if self.kind == "tf" else None
        self.counts = Counter({k: 0 for k in OUTCOMES + (("tf_refused",) if self.kind == "tf" else ())})

    @property
    def active(self) -> bool:
        return self.kind in ("tf", "metric")

    def subscribe(self, intake):
        """/tf and /tf_static on the intake node (tf only)."""
        if self.transforms is not None:
            intake.subscribe_input(TFMessage, "/tf", lambda m: self.on_tf(m, static=False), TF_QOS)
            intake.subscribe_input(TFMessage, "/tf_static", lambda m: self.on_tf(m, static=True), TF_STATIC_QOS)

    def on_tf(self, msg, static: bool):
        for t in msg.transforms:
            tr, q = t.transform.translation, t.transform.rotation
            ok = self.transforms.update(Transform(t.header.frame_id, t.child_frame_id, stamp_ns(t.header.stamp),
                                                  (tr.x, tr.y, tr.z), (q.x, q.y, q.z, q.w), static))
            self.counts["tf_refused"] += not ok

    def for_frame(self, time_ns: int, metric=None) -> tuple | None:
        """(x, y, (xx, xy, yy)) in map_frame for a frame of `time_ns`, or None. `metric`: (time_ns, Pose) of the
        last metric pose, or None."""
        if not self.active:
            return None
        if self.kind == "tf":
            position, outcome = self.transforms.position(self.map_frame, self.base_frame, time_ns, self.max_age_ns)
            found = None if position is None else (position[0], position[1], self.tf_covariance)
        elif metric is None:
            found, outcome = None, "unavailable"
        else:
            at, pose = metric
            c = pose.covariance  # 6x6 row-major over x y z roll pitch yaw
            found = (pose.x, pose.y, (float(c[0]), float(c[1]), float(c[7])))
            outcome = "stale" if time_ns - at > self.max_age_ns else "ok"
            found = found if outcome == "ok" else None
        self.counts["prior_positions" if found is not None else f"prior_{outcome}"] += 1
        return found

    def diagnostics(self) -> dict:
        return dict(self.counts) if self.active else {}
