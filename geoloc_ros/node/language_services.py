"""geoloc_vpr's places-in-words outputs (docs/language.md): `~/address` (std_msgs/String, reliable: the best
candidate's address), `~/find_place` (geoloc_msgs/FindPlace: text -> places), `~/geolocate` (geoloc_msgs/Geolocate:
Img2Loc-style coarse position, also published on `~/geolocation`, sensor_msgs/NavSatFix) and their /diagnostics
values.

The services run in callback groups of their own, so under the node's MultiThreadedExecutor (vpr_node.main and
replay.InProcessNode) a slow model server holds one executor thread while the camera subscriptions (the default,
mutually exclusive group: still one callback at a time, as before) keep being served. The text index and
the geolocator are built once per Localizer snapshot (a reload_map gives new ones).
"""

from __future__ import annotations

import math
import threading

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import NavSatFix, NavSatStatus
from std_msgs.msg import String

from geoloc_msgs.srv import FindPlace, Geolocate

ADDRESS_QOS = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)


class LanguageServices:
    def __init__(self, node):
        self.node = node
        self._lock = threading.Lock()
        self._tools_lock = threading.Lock()  # the two services may build the per-snapshot tools at once
        self._latest_rgb = None
        self.last_address = ""
        self.counts = {"find_place_calls": 0, "geolocate_calls": 0}
        self._per_snapshot = (None, None, None)  # (snapshot, TextSearch, Geolocator)
        self._client = None
        self._reference = (None, None)  # (path, MapEntry)
        node.stats.sources.append(self.diagnostics)
        self.address_pub = node.create_publisher(String, "~/address", ADDRESS_QOS)
        self.geolocation_pub = node.create_publisher(NavSatFix, "~/geolocation", ADDRESS_QOS)
        node.create_service(FindPlace, "~/find_place", self._on_find_place,
                            callback_group=MutuallyExclusiveCallbackGroup())
        node.create_service(Geolocate, "~/geolocate", self._on_geolocate,
                            callback_group=MutuallyExclusiveCallbackGroup())

    # -- per frame (the node's worker thread) ---------------------------------------------------------------
    def on_result(self, result):
        """Keep the frame for ~/geolocate and publish the best candidate's address when it has one."""
        with self._lock:
            self._latest_rgb = result.frame.rgb
        best = result.candidates[0] if result.candidates else None
        address = best.keyframe.address if best is not None else ""
        if address:
            self.last_address = address
            self.address_pub.publish(String(data=address))

    def diagnostics(self) -> dict:
        client = self._client
        return {"address": self.last_address, **self.counts, **(client.snapshot() if client is not None else {})}

    # -- what the services search ---------------------------------------------------------------------------
    def _tools(self):
        """(TextSearch, Geolocator, Snapshot) for the current snapshot, or raise RuntimeError saying why there is
        none."""
        localizer = self.node._localizer
        if localizer is None:
            raise RuntimeError(f"not configured ({self.node.lifecycle_state}): {self.node.last_error}")
        snapshot = localizer.snapshot
        with self._tools_lock:
            return (*self._tools_for(snapshot), snapshot)

    def _tools_for(self, snapshot):
        from geoloc_ros.language.geolocate import GeolocateSettings, Geolocator
        from geoloc_ros.language.text_search import text_search_for

        if self._per_snapshot[0] is not snapshot:
            s = self.node.settings
            maps = [(m.id, m.name, m.db) for m in snapshot.maps]
            search = text_search_for(maps, snapshot.encoder, snapshot.encoder_file)
            reference = self._reference_map(s, snapshot.encoder)
            settings = GeolocateSettings(s.geolocate_k, s.covariance_floor_m, s.geolocate_region_min_m,
                                         s.geolocate_lmm_sigma_m)
            geolocator = Geolocator(snapshot.encoder, maps + reference, settings, self._lmm_client(s))
            self._per_snapshot = (snapshot, search, geolocator)
        return self._per_snapshot[1], self._per_snapshot[2]

    def _reference_map(self, s, encoder) -> list:
        from geoloc_ros.localization.snapshot import load_maps

        if not s.geolocate_reference_map:
            return []
        if self._reference[0] != s.geolocate_reference_map:
            entry = load_maps([s.geolocate_reference_map], encoder=encoder)[0]  # LoadError names what is wrong
            self._reference = (s.geolocate_reference_map, entry)
        entry = self._reference[1]
        return [(entry.id, entry.name, entry.db)]

    def _lmm_client(self, s):
        from geoloc_ros.language.lmm_client import LmmClient

        if not s.lmm_url:
            self._client = None
        elif self._client is None or self._client.url != s.lmm_url:
            self._client = LmmClient(s.lmm_url, s.lmm_model, s.lmm_timeout_s, s.lmm_retries)
        return self._client

    # -- services ---------------------------------------------------------------------------------------------
    def _on_find_place(self, request, response):
        from geoloc_ros.node.messages import candidate_message

        self.counts["find_place_calls"] += 1
        try:
            search, _, snapshot = self._tools()
            answer = search.find(request.text, request.max_results)
        except Exception as e:  # noqa: BLE001 - a service call must never take the node down
            response.success, response.message = False, f"find_place failed: {type(e).__name__}: {e}"
            return response
        response.success, response.message, response.method = answer.success, answer.message, answer.method
        response.places = [candidate_message(snapshot.placed(c)) for c in answer.places]
        return response

    def _on_geolocate(self, request, response):
        from geoloc_ros.node.messages import candidate_message

        self.counts["geolocate_calls"] += 1
        try:
            _, geolocator, snapshot = self._tools()
            rgb = self._image_of(request.image)
            estimate = geolocator.geolocate(rgb)
        except Exception as e:  # noqa: BLE001
            response.success, response.message = False, f"geolocate failed: {type(e).__name__}: {e}"
            return response
        response.success, response.message, response.method = estimate.success, estimate.message, estimate.method
        response.neighbours = [candidate_message(snapshot.placed(c)) for c in estimate.neighbours]
        if estimate.success:
            response.fix = self._fix(estimate)
            self.geolocation_pub.publish(response.fix)
        return response

    def _image_of(self, msg):
        from geoloc_ros.node.images import message_to_rgb

        if msg.width > 0 and len(msg.data) > 0:
            return message_to_rgb(msg, self.node.settings.blank_threshold)
        with self._lock:
            rgb = self._latest_rgb
        if rgb is None:
            raise RuntimeError("no image given and no camera frame received yet")
        return rgb

    def _fix(self, estimate) -> NavSatFix:
        fix = NavSatFix(latitude=float(estimate.lat), longitude=float(estimate.lon), altitude=math.nan)
        fix.header.frame_id = self.node.settings.base_frame
        fix.header.stamp = self.node.get_clock().now().to_msg()
        fix.status.status = NavSatStatus.STATUS_FIX
        fix.position_covariance = [float(v) for v in estimate.covariance]
        fix.position_covariance_type = NavSatFix.COVARIANCE_TYPE_APPROXIMATED
        return fix
