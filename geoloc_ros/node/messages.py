"""Messages <-> the localizer's types: camera and NavSatFix messages in, FrameResults out as ROS messages."""

from __future__ import annotations

import math

from geographic_msgs.msg import GeoPoseWithCovarianceStamped
from geometry_msgs.msg import PoseWithCovarianceStamped
import numpy as np
from sensor_msgs.msg import NavSatFix, NavSatStatus
from std_msgs.msg import Header

from geoloc_msgs.msg import PlaceCandidate, PlaceRecognition
from geoloc_ros.imaging import MAX_IMAGE_PIXELS, check_blank, check_size, image_view, message_to_rgb
from geoloc_ros.localization import Frame
from geoloc_ros.stamps import set_stamp, stamp_ns


# -- inputs -----------------------------------------------------------------------------------------------------
def to_frame(msg, camera: str, topic: str, received_ns: int, received_mono: float, blank_threshold: float,
             odom=None, fix=None, max_pixels: int | None = MAX_IMAGE_PIXELS, mono16_max: int = 0, camera_model=None,
             depth=None, fix_covariance=None, travelled_m=None) -> Frame:
    """A decoded Frame of an Image / CompressedImage; FrameError (with its diagnostics kind) when unusable.
    `max_pixels` and `mono16_max`: the node's max_image_pixels and mono16_max (see imaging.message_to_rgb);
    `camera_model`: the camera's PinholeCamera (CameraInfo) or None; `depth`: its paired depth image or None."""
    rgb = pixels(msg, blank_threshold, max_pixels=max_pixels, mono16_max=mono16_max)
    return Frame(camera=camera, topic=topic, stamp_ns=stamp_ns(msg.header.stamp), frame_id=msg.header.frame_id,
                 rgb=rgb, received_ns=received_ns, received_mono=received_mono, odom=odom, fix=fix,
                 camera_model=camera_model, depth=depth, fix_covariance=fix_covariance,
                 travelled_m=travelled_m)


def pixels(msg, blank_threshold: float, max_pixels: int | None = MAX_IMAGE_PIXELS, mono16_max: int = 0) -> np.ndarray:
    """HxWx3 RGB of a camera message. An unpadded rgb8 Image is viewed in place (no copy: the encoder only reads
    its input, and the Frame holds the message's buffer while it is processed), with the same size and blank
    checks; everything else takes the checked, converting path (imaging.message_to_rgb)."""
    view = image_view(msg) if not hasattr(msg, "format") else None
    if view is None or view.ndim != 3:
        return message_to_rgb(msg, blank_threshold, max_pixels=max_pixels, mono16_max=mono16_max)
    check_size(view.shape[1], view.shape[0], max_pixels)
    check_blank(view, blank_threshold)
    return view


def fix_problem(msg) -> str | None:
    """Why a NavSatFix cannot geotag a keyframe (None: it can): 'no_fix' (STATUS_NO_FIX, or STATUS_UNKNOWN, the
    message's default), 'not_finite', 'out_of_range' (beyond WGS84 latitude/longitude). Altitude may be NaN (ROS:
    no altitude known)."""
    if msg.status.status < NavSatStatus.STATUS_FIX:
        return "no_fix"
    lat, lon, alt = float(msg.latitude), float(msg.longitude), float(msg.altitude)
    if not (math.isfinite(lat) and math.isfinite(lon)) or math.isinf(alt):
        return "not_finite"
    if abs(lat) > 90.0 or abs(lon) > 180.0:
        return "out_of_range"
    return None


def orientation_or_none(q) -> tuple | None:
    """(qx, qy, qz, qw) of a geometry_msgs/Quaternion, normalised; None when it is not finite or has no length."""
    v = (float(q.x), float(q.y), float(q.z), float(q.w))
    norm = math.sqrt(sum(c * c for c in v))
    if not (math.isfinite(norm) and norm > 1e-9):
        return None
    return tuple(c / norm for c in v)


# -- outputs ----------------------------------------------------------------------------------------------------
def header_of(frame: Frame, frame_id: str | None = None) -> Header:
    h = Header(frame_id=frame.frame_id if frame_id is None else frame_id)
    set_stamp(h.stamp, frame.stamp_ns)
    return h


SOURCES = {"prior_map": PlaceCandidate.SOURCE_PRIOR_MAP, "session": PlaceCandidate.SOURCE_SESSION,
           "peer": PlaceCandidate.SOURCE_PEER}


def candidate_message(c) -> PlaceCandidate:
    """The PlaceCandidate of a localization Candidate; its pose is `c.position` (Snapshot.placed: the node's
    map frame)."""
    k = c.keyframe
    lat, lon, alt = _wgs84_or_unknown(k.lat, k.lon, k.alt)
    m = PlaceCandidate(map_name=c.map_name, map_id=c.map_id, source=SOURCES[c.source], robot_id=c.robot_id,
                       keyframe_id=int(k.id), keyframe_label=k.label, rank=int(c.rank),
                       similarity=float(c.similarity), latitude=lat, longitude=lon,
                       altitude=alt, verified=bool(c.verified), inliers=int(c.inliers),
                       confidence=float(c.confidence), address=k.address, has_position=c.position is not None)
    set_stamp(m.keyframe_stamp, k.stamp_ns)
    if c.position is not None:
        x, y, z = c.position
        m.pose.position.x, m.pose.position.y = float(x), float(y)
        m.pose.position.z = float(z) if math.isfinite(z) else 0.0
    m.pose.orientation.x, m.pose.orientation.y = float(k.qx), float(k.qy)
    m.pose.orientation.z, m.pose.orientation.w = float(k.qz), float(k.qw)
    fill_relative_pose(m, c.relative_pose)
    return m


def _wgs84_or_unknown(lat, lon, alt) -> tuple[float, float, float]:
    """A keyframe's geotag as the message carries it: NaN (unknown) unless it is a WGS84 position (a keyframe
    placed from an implausible odometry position can convert to an infinite latitude)."""
    lat, lon, alt = float(lat), float(lon), float(alt)
    if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90.0 and abs(lon) <= 180.0):
        return math.nan, math.nan, math.nan
    return lat, lon, alt if math.isfinite(alt) else math.nan


RELATIVE_POSE_KINDS = {"none": PlaceCandidate.RELATIVE_POSE_NONE, "direction": PlaceCandidate.RELATIVE_POSE_DIRECTION,
                       "metric": PlaceCandidate.RELATIVE_POSE_METRIC}


def fill_relative_pose(m: PlaceCandidate, relative) -> None:
    """relative_pose and relative_pose_kind of a PlaceCandidate from a geometry.RelativePose (None: kind NONE,
    identity, zero covariance -- the message's defaults)."""
    m.relative_pose.pose.orientation.w = 1.0
    if relative is None or relative.kind == "none":
        m.relative_pose_kind = PlaceCandidate.RELATIVE_POSE_NONE
        return
    from geoloc_ros.geometry import pose_message_fields

    (x, y, z), (qx, qy, qz, qw), cov = pose_message_fields(relative.T_ab, relative.covariance)
    p = m.relative_pose.pose
    p.position.x, p.position.y, p.position.z = x, y, z
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = qx, qy, qz, qw
    m.relative_pose.covariance = cov
    m.relative_pose_kind = RELATIVE_POSE_KINDS[relative.kind]


def recognition_message(result, candidates) -> PlaceRecognition:
    """~/place_recognition (result.candidates) or ~/loop_closures (result.closures) of one frame."""
    return PlaceRecognition(header=header_of(result.frame), camera_topic=result.frame.topic,
                            camera_frame_id=result.frame.frame_id,
                            encode_ms=float(result.encode_ms), search_ms=float(result.search_ms),
                            candidates=[candidate_message(c) for c in candidates])


def pose_messages(result, map_frame: str, base_frame: str):
    """(~/pose, ~/geopose or None, ~/fix or None) of a result with a pose; geo outputs need a geotagged map."""
    pose, frame = result.pose, result.frame
    qx, qy, qz, qw = pose.quaternion
    out = PoseWithCovarianceStamped(header=header_of(frame, map_frame))
    p = out.pose.pose
    p.position.x, p.position.y, p.position.z = pose.x, pose.y, pose.z
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = qx, qy, qz, qw
    out.pose.covariance = pose.covariance
    if pose.wgs84 is None:
        return out, None, None
    lat, lon, alt = pose.wgs84
    cov = pose.covariance
    geo = GeoPoseWithCovarianceStamped(header=header_of(frame, map_frame))
    geo.pose.pose.position.latitude, geo.pose.pose.position.longitude, geo.pose.pose.position.altitude = lat, lon, alt
    o = geo.pose.pose.orientation
    o.x, o.y, o.z, o.w = qx, qy, qz, qw
    geo.pose.covariance = cov
    fix = NavSatFix(header=header_of(frame, base_frame), latitude=lat, longitude=lon, altitude=alt)
    fix.status.status = NavSatStatus.STATUS_FIX
    fix.position_covariance = [cov[0], 0.0, 0.0, 0.0, cov[7], 0.0, 0.0, 0.0, cov[14]]
    fix.position_covariance_type = NavSatFix.COVARIANCE_TYPE_DIAGONAL_KNOWN
    return out, geo, fix
