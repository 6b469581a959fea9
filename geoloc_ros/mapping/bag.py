"""rosbag2 recordings (sqlite3 or MCAP, read with `rosbags`) as map keyframes, and writing such recordings.

Reading: image messages (sensor_msgs/msg/Image or CompressedImage) on one topic; positions from
sensor_msgs/msg/NavSatFix (geotags) and/or nav_msgs/msg/Odometry (map-frame pose when there is no fix),
linearly interpolated to each image's header stamp. An image becomes a keyframe when the distance travelled
since the previous keyframe reaches `every_metres` or the time since it reaches `every_seconds` (either
threshold; every image when neither is given). Images outside the span of the position track, or in a gap
between position samples longer than `max_gap_s`, are skipped.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import math
from pathlib import Path

import numpy as np

from geoloc_ros.geodesy import from_utm, to_utm
from geoloc_ros.imaging import message_to_rgb
from geoloc_ros.mapping.keyframe import Keyframe, heading_from_quaternion, quaternion_from_heading
from geoloc_ros.mapping.storage import MapError
from geoloc_ros.stamps import stamp_ns

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
FIX_TYPE = "sensor_msgs/msg/NavSatFix"
ODOM_TYPE = "nav_msgs/msg/Odometry"


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def _stamp_ns(msg, bag_time_ns: int) -> int:
    """The header stamp; the recording time when the publisher left the stamp at zero."""
    ns = stamp_ns(msg.header.stamp)
    return ns if ns > 0 else int(bag_time_ns)


class Track:
    """Positions over time (UTM east/north/alt, or odometry x/y/z with orientation) that can be interpolated."""

    def __init__(self, t_ns, xyz, quat=None, zone: str | None = None, max_gap_s: float = 2.0):
        order = np.argsort(t_ns, kind="stable")
        self.t = np.asarray(t_ns, dtype=np.int64)[order]
        self.xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)[order]
        self.quat = None if quat is None else np.asarray(quat, dtype=np.float64).reshape(-1, 4)[order]
        self.zone = zone
        self.max_gap_ns = int(max_gap_s * 1e9)
        steps = np.linalg.norm(np.diff(self.xyz[:, :2], axis=0), axis=1)
        self.travelled = np.concatenate([[0.0], np.cumsum(steps)])  # metres along the track

    def __len__(self):
        return len(self.t)

    def covers(self, t: int) -> bool:
        if len(self.t) == 0 or t < self.t[0] or t > self.t[-1]:
            return False
        i = int(np.searchsorted(self.t, t))
        return self.t[i] == t or self.t[i] - self.t[i - 1] <= self.max_gap_ns

    def at(self, t: int) -> np.ndarray:
        tf = float(t - self.t[0])
        ts = (self.t - self.t[0]).astype(np.float64)
        return np.array([np.interp(tf, ts, self.xyz[:, j]) for j in range(3)])

    def distance_at(self, t: int) -> float:
        return float(np.interp(float(t - self.t[0]), (self.t - self.t[0]).astype(np.float64), self.travelled))

    def heading_at(self, t: int, window_ns: int = 500_000_000) -> float:
        """Compass heading of motion around t (from positions window_ns before and after); NaN when still."""
        a = self.at(max(t - window_ns, int(self.t[0])))
        b = self.at(min(t + window_ns, int(self.t[-1])))
        de, dn = b[0] - a[0], b[1] - a[1]
        if math.hypot(de, dn) < 0.05:
            return math.nan
        return math.degrees(math.atan2(de, dn)) % 360.0

    def quat_at(self, t: int):
        i = min(max(int(np.searchsorted(self.t, t)), 0), len(self.t) - 1)
        if i > 0 and abs(self.t[i - 1] - t) < abs(self.t[i] - t):
            i -= 1
        return tuple(float(v) for v in self.quat[i])


class BagKeyframes:
    """Iterable of (Keyframe, HxWx3 uint8 RGB image) from a recording; `count` = keyframes it will yield."""

    def __init__(self, bag, image_topic, fix_topic=None, odom_topic=None, every_metres=None, every_seconds=None,
                 max_gap_s: float = 2.0):
        from rosbags.highlevel import AnyReader

        self.bag = Path(bag)
        if not self.bag.exists():
            raise MapError(f"{self.bag}: no such rosbag2 recording")
        self.image_topic, self.fix_topic, self.odom_topic = image_topic, fix_topic, odom_topic
        self.every_metres, self.every_seconds = every_metres, every_seconds
        self.skipped = 0
        self.unreadable: list[str] = []  # frames that could not be decoded, with the reason (filled while iterating)
        self._reader_cls = AnyReader
        with self._open() as reader:
            self._image_conns = self._connections(reader, image_topic, IMAGE_TYPES)
            self.fix = self._read_fix(reader, max_gap_s) if fix_topic else None
            self.odom = self._read_odom(reader, max_gap_s) if odom_topic else None
            self._selected = self._select(reader)
        self.count = len(self._selected)

    @contextlib.contextmanager
    def _open(self):
        try:
            reader = self._reader_cls([self.bag], default_typestore=_typestore())
            reader.open()
        except Exception as e:  # noqa: BLE001 - rosbags raises reader-specific errors
            raise MapError(f"{self.bag}: not a readable rosbag2 recording ({e})") from None
        try:
            yield reader
        finally:
            reader.close()

    def _connections(self, reader, topic, types):
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            topics = ", ".join(sorted(f"{c.topic} ({c.msgtype})" for c in reader.connections))
            raise MapError(f"{self.bag}: no topic {topic!r}; the recording has: {topics}")
        bad = [c.msgtype for c in conns if c.msgtype not in types]
        if bad:
            raise MapError(f"{self.bag}: topic {topic!r} carries {bad[0]}, expected {' or '.join(types)}")
        return conns

    def _messages(self, reader, conns):
        for conn, t, raw in reader.messages(connections=conns):
            yield reader.deserialize(raw, conn.msgtype), t

    def _read_fix(self, reader, max_gap_s):
        stamps, lat, lon, alt = [], [], [], []
        for msg, t in self._messages(reader, self._connections(reader, self.fix_topic, (FIX_TYPE,))):
            if msg.status.status < 0 or not (math.isfinite(msg.latitude) and math.isfinite(msg.longitude)):
                continue  # STATUS_NO_FIX
            stamps.append(_stamp_ns(msg, t))
            lat.append(msg.latitude)
            lon.append(msg.longitude)
            alt.append(msg.altitude if math.isfinite(msg.altitude) else math.nan)
        if not stamps:
            raise MapError(f"{self.bag}: topic {self.fix_topic!r} has no valid NavSatFix")
        east, north, zone = to_utm(np.array(lat), np.array(lon))
        return Track(stamps, np.stack([east, north, np.array(alt)], axis=1), zone=zone, max_gap_s=max_gap_s)

    def _read_odom(self, reader, max_gap_s):
        stamps, xyz, quat = [], [], []
        for msg, t in self._messages(reader, self._connections(reader, self.odom_topic, (ODOM_TYPE,))):
            p, q = msg.pose.pose.position, msg.pose.pose.orientation
            stamps.append(_stamp_ns(msg, t))
            xyz.append((p.x, p.y, p.z))
            quat.append((q.x, q.y, q.z, q.w))
        if not stamps:
            raise MapError(f"{self.bag}: topic {self.odom_topic!r} has no Odometry messages")
        return Track(stamps, xyz, quat, max_gap_s=max_gap_s)

    def _select(self, reader) -> list[tuple[int, int]]:
        """(bag time, stamp) of the images that become keyframes; reads headers only, decodes no image."""
        track = self.fix or self.odom
        selected, last_t, last_s = [], None, None
        for msg, t in self._messages(reader, self._image_conns):
            stamp = _stamp_ns(msg, t)
            if track is not None and not track.covers(stamp):
                self.skipped += 1
                continue
            s = track.distance_at(stamp) if track is not None else 0.0
            take = last_t is None or (self.every_metres is None and self.every_seconds is None)
            # (the small tolerances keep evenly spaced samples from missing a threshold by rounding)
            take = take or (self.every_metres is not None and s - last_s >= self.every_metres - 1e-6)
            take = take or (self.every_seconds is not None and (stamp - last_t) >= self.every_seconds * 1e9 - 1000)
            if take:
                selected.append((t, stamp))
                last_t, last_s = stamp, s
        return selected

    def keyframe(self, stamp: int) -> Keyframe:
        kf = Keyframe(label=f"{self.image_topic}@{stamp}", stamp_ns=stamp, source=self.bag.name)
        if self.fix is not None:
            east, north, alt = self.fix.at(stamp)
            lat, lon = from_utm(east, north, self.fix.zone)
            heading = self.fix.heading_at(stamp)
            q = quaternion_from_heading(heading)
            return kf.replace(lat=float(lat), lon=float(lon), alt=float(alt), heading=heading,
                              qx=q[0], qy=q[1], qz=q[2], qw=q[3])
        if self.odom is not None:
            x, y, z = self.odom.at(stamp)
            q = self.odom.quat_at(stamp)
            return kf.replace(x=float(x), y=float(y), z=float(z), heading=heading_from_quaternion(*q),
                              qx=q[0], qy=q[1], qz=q[2], qw=q[3])
        return kf

    def __len__(self):
        return self.count

    def references(self) -> list[tuple[Keyframe, "BagFrame"]]:
        """(keyframe, reference to its image message) of every selected image, in recording order; decodes
        nothing (`geoloc_ros.mapping.batch.read_frames` decodes them)."""
        return [(self.keyframe(stamp), BagFrame(str(self.bag), self.image_topic, int(t)))
                for t, stamp in self._selected]

    def __iter__(self):
        stamps = dict(self._selected)
        for t, image in read_bag_frames(self.bag, self.image_topic, list(stamps), self.unreadable):
            yield self.keyframe(stamps[t]), image


@dataclass(frozen=True)
class BagFrame:
    """One image message of a recording, by its recording time: a frame reference that travels instead of pixels."""

    bag: str
    topic: str
    time_ns: int


def read_bag_frames(bag, topic: str, times, unreadable: list):
    """Decode the image messages of `topic` recorded at `times` (ns), in one pass over the span they cover: yields
    (time, HxWx3 uint8 RGB) in recording order. A frame that cannot be decoded is skipped and its reason appended
    to `unreadable`."""
    from rosbags.highlevel import AnyReader

    wanted = set(int(t) for t in times)
    if not wanted:
        return
    bag = Path(bag)
    try:
        reader = AnyReader([bag], default_typestore=_typestore())
        reader.open()
    except Exception as e:  # noqa: BLE001 - rosbags raises reader-specific errors
        raise MapError(f"{bag}: not a readable rosbag2 recording ({e})") from None
    try:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns or any(c.msgtype not in IMAGE_TYPES for c in conns):
            raise MapError(f"{bag}: no image topic {topic!r}")
        for conn, t, raw in reader.messages(connections=conns, start=min(wanted), stop=max(wanted) + 1):
            if t not in wanted:
                continue
            wanted.discard(t)
            try:
                image = message_to_rgb(reader.deserialize(raw, conn.msgtype))
            except Exception as e:  # noqa: BLE001 - a bad frame is skipped and counted, not fatal
                unreadable.append(f"{bag}: image at {t} ns on {topic!r}: {e}")
                continue
            yield t, image
    finally:
        reader.close()


def bag_keyframes(bag, image_topic, fix_topic=None, odom_topic=None, every_metres=None, every_seconds=None,
                  max_gap_s: float = 2.0) -> BagKeyframes:
    return BagKeyframes(bag, image_topic, fix_topic, odom_topic, every_metres, every_seconds, max_gap_s)


# -- writing ----------------------------------------------------------------------------------------------------

def write_image_bag(path, frames, image_topic="/camera/image_raw", fix_topic="/gnss/fix", storage="mcap",
                    camera_frame="camera", gnss_frame="gnss") -> Path:
    """Write a rosbag2 of `frames`: an iterable of (stamp_ns, HxWx3 uint8 RGB image, (lat, lon, alt) or None).
    Images go out as sensor_msgs/msg/Image rgb8; positions as sensor_msgs/msg/NavSatFix with the same stamp
    (status FIX, covariance unknown). Recording time = stamp. `storage`: "mcap" or "sqlite3". A `path` ending in
    .mcap or .db3 becomes a single storage file (rosbags and ros2 bag read those without metadata.yaml); any
    other path becomes a rosbag2 directory."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = _typestore()
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    Image, NavSatFix = T["sensor_msgs/msg/Image"], T["sensor_msgs/msg/NavSatFix"]
    NavSatStatus = T["sensor_msgs/msg/NavSatStatus"]
    path = Path(path)
    if path.suffix in (".mcap", ".db3"):
        import shutil
        import tempfile

        if path.exists():
            raise MapError(f"{path}: exists already")
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
            bag_dir = write_image_bag(Path(tmp) / "bag", frames, image_topic, fix_topic,
                                      "mcap" if path.suffix == ".mcap" else "sqlite3", camera_frame, gnss_frame)
            (storage_file,) = bag_dir.glob("*" + path.suffix)
            shutil.move(storage_file, path)
        return path
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        img_conn = writer.add_connection(image_topic, Image.__msgtype__, typestore=ts)
        fix_conn = writer.add_connection(fix_topic, NavSatFix.__msgtype__, typestore=ts) if fix_topic else None
        for stamp, image, position in frames:
            stamp = int(stamp)
            image = np.ascontiguousarray(image, dtype=np.uint8)
            h, w = image.shape[:2]
            t = Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000)
            msg = Image(header=Header(stamp=t, frame_id=camera_frame), height=h, width=w, encoding="rgb8",
                        is_bigendian=0, step=w * 3, data=image.reshape(-1))
            writer.write(img_conn, stamp, ts.serialize_cdr(msg, Image.__msgtype__))
            if fix_conn is not None and position is not None:
                lat, lon, alt = position
                fix = NavSatFix(header=Header(stamp=t, frame_id=gnss_frame),
                                status=NavSatStatus(status=NavSatStatus.STATUS_FIX, service=NavSatStatus.SERVICE_GPS),
                                latitude=float(lat), longitude=float(lon), altitude=float(alt),
                                position_covariance=np.zeros(9, dtype=np.float64),
                                position_covariance_type=NavSatFix.COVARIANCE_TYPE_UNKNOWN)
                writer.write(fix_conn, stamp, ts.serialize_cdr(fix, NavSatFix.__msgtype__))
    return path
