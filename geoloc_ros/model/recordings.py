"""Training data from robot recordings: rosbag2 images placed by odometry, NavSatFix or a poses file, a held-out
part chosen by position, and its revisits as validation queries.

Positions (for CosPlace's classes and groups, geoloc_ros.model.grouping):
- `--odom-topic` (nav_msgs/Odometry: x east, y north in the odometry frame; heading from the orientation's yaw)
  and `--fix-topic` (sensor_msgs/NavSatFix -> UTM with geoloc_ros.geodesy; heading from the direction of motion)
  are read by geoloc_ros.mapping.bag.BagKeyframes, exactly as `geoloc map build --bag` reads them;
- `--poses FILE`: a CSV with a header naming its columns: `stamp` (seconds; or `stamp_ns`), `x`, `y` (metres,
  x east, y north) or `lat`, `lon` (WGS84, -> UTM), optional `z`, and either `heading` (degrees clockwise from
  north) or the orientation `qx`, `qy`, `qz`, `qw` (ENU); a headerless file is read as the TUM trajectory format
  `stamp x y z qx qy qz qw` (commas or spaces). The heading is taken from the motion where the file has none.
Each image's header stamp is matched to the position track the same way for all three: linear interpolation
between the two samples around it, kept only when those are at most `max_gap_s` apart (an image outside the track
or in a longer gap is dropped and counted). Frames that cannot be decoded and blank frames are dropped and counted.
Odometry from several bags is taken to share one frame (e.g. a robot localised in one map); NavSatFix and
lat/lon poses are projected into the UTM zone of the first position.

Held-out part (`spatial_split`): the recording's places are projected on their principal axis; the last
`val_fraction` of frames along it (at the end where the recording ends) are held out, and training frames closer
than `gap` metres to that stretch along the axis are dropped, so that no training frame lies within `gap` metres
of a held-out one. Validation (`revisit_queries`): a held-out frame is a query when its place (within 25 m) was
seen before -- in an earlier bag, or at least `min_revisit_s` earlier in the same bag; the other held-out frames
are the database.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
import logging
import math
from pathlib import Path

import numpy as np

from geoloc_ros.datasets import NAN, GeoImage, is_number
from geoloc_ros.geodesy import from_utm, to_utm
from geoloc_ros.mapping.bag import BagKeyframes, Track
from geoloc_ros.mapping.keyframe import heading_from_quaternion
from geoloc_ros.mapping.storage import MapError

log = logging.getLogger("geoloc.train")
TUM_COLUMNS = ("stamp", "x", "y", "z", "qx", "qy", "qz", "qw")


class RecordingError(ValueError):
    """A recording (or poses file) that gives no training data: the message says which file and why."""


# -- the poses file ----------------------------------------------------------------------------------------------
@dataclass
class PoseTrack:
    """Positions over time from a poses file: a mapping.bag.Track plus what the file said about heading."""

    track: Track
    heading: np.ndarray | None  # per sample, degrees clockwise from north; None: from the motion
    zone: str | None  # UTM zone when the file gave lat/lon


def read_poses(path, max_gap_s: float) -> PoseTrack:
    """The positions of a poses CSV (module doc); raises RecordingError naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RecordingError(f"{path}: cannot read the poses file ({e})") from None
    rows = [r for r in (_split_row(line) for line in text.splitlines()) if r and not r[0].startswith("#")]
    if not rows:
        raise RecordingError(f"{path}: the poses file holds no rows")
    header = None if is_number(rows[0][0]) else [h.strip().lower() for h in rows[0]]
    names = header or list(TUM_COLUMNS)
    body = rows[1:] if header else rows
    stamp_col = "stamp_ns" if "stamp_ns" in names else "stamp"
    geo = "lat" in names and "lon" in names
    need = [stamp_col] + (["lat", "lon"] if geo else ["x", "y"])
    missing = [n for n in need if n not in names]
    if missing:
        raise RecordingError(f"{path}: poses file without column(s) {missing}; expected stamp,x,y[,z][,heading | "
                             f"qx,qy,qz,qw] or stamp,lat,lon[,...] with a header, or headerless TUM "
                             f"'stamp x y z qx qy qz qw'")
    col = {n: i for i, n in enumerate(names)}
    has_quat = all(q in col for q in ("qx", "qy", "qz", "qw"))
    stamps, xyz, heading = [], [], []
    for line_no, row in enumerate(body, start=2 if header else 1):
        try:
            def get(name, default=NAN):
                return float(row[col[name]]) if name in col and col[name] < len(row) and row[col[name]] else default

            t = get(stamp_col)
            a, b = get("lat" if geo else "x"), get("lon" if geo else "y")
            z = get("z", 0.0)
            h = get("heading") if "heading" in col else (
                heading_from_quaternion(get("qx"), get("qy"), get("qz"), get("qw")) if has_quat else NAN)
        except ValueError as e:
            raise RecordingError(f"{path}:{line_no}: {e}") from None
        if not (math.isfinite(t) and math.isfinite(a) and math.isfinite(b)):
            raise RecordingError(f"{path}:{line_no}: stamp and position must be numbers, got {row}")
        stamps.append(int(t) if stamp_col == "stamp_ns" else int(round(t * 1e9)))
        xyz.append((a, b, z))
        heading.append(h)
    xyz = np.array(xyz, dtype=np.float64)
    zone = None
    if geo:
        east, north, zone = to_utm(xyz[:, 0], xyz[:, 1])
        xyz = np.stack([east, north, xyz[:, 2]], axis=1)
    heading = np.array(heading, dtype=np.float64)
    order = np.argsort(stamps, kind="stable")
    track = Track(stamps, xyz, zone=zone, max_gap_s=max_gap_s)
    return PoseTrack(track, heading[order] if np.isfinite(heading).any() else None, zone)


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if not line:
        return []
    return [c.strip() for c in (next(csv.reader([line])) if "," in line else line.split())]


# -- reading the bags --------------------------------------------------------------------------------------------
@dataclass
class Recording:
    """Training frames of one or more bags: records (GeoImage, positions in metres), their images (resized to the
    training size), bag index and stamp of each, and how many frames were dropped, by reason."""

    records: list = field(default_factory=list)
    images: list = field(default_factory=list)
    bag_index: list = field(default_factory=list)
    stamps: list = field(default_factory=list)
    dropped: dict = field(default_factory=lambda: {"no position": 0, "undecodable": 0, "blank": 0})
    examples: list = field(default_factory=list)  # a few messages about dropped frames, for the log

    def xy(self) -> np.ndarray:
        return np.array([(r.utm_east, r.utm_north) for r in self.records], dtype=np.float64).reshape(-1, 2)


def read_recordings(bags, image_topic, odom_topic=None, fix_topic=None, poses=None, max_gap_s: float = 0.5,
                    size=None, progress: bool = True) -> Recording:
    """Every image of `image_topic` in `bags` (in order) that has a position, decoded (and resized to `size`
    (H, W) when given). Exactly one of odom_topic, fix_topic, poses. Raises RecordingError / MapError with a clear
    message for a missing bag or topic, a topic of the wrong type, no positions, or no usable frame at all."""
    if sum(x is not None for x in (odom_topic, fix_topic, poses)) != 1:
        raise RecordingError("give exactly one source of positions: an odometry topic, a NavSatFix topic or a "
                             "poses file")
    pose_track = read_poses(poses, max_gap_s) if poses is not None else None
    out = Recording()
    zone = pose_track.zone if pose_track is not None else None
    for b, bag in enumerate(bags):
        try:
            zone = _read_bag(out, b, bag, image_topic, odom_topic, fix_topic, pose_track, max_gap_s, size, zone,
                             progress)
        except (MapError, RecordingError):
            raise
        except Exception as e:  # noqa: BLE001 - rosbags raises its own errors on damaged files
            raise RecordingError(f"{bag}: cannot read the recording ({type(e).__name__}: {e})") from None
    if not out.records:
        raise RecordingError(f"no usable frame on {image_topic!r} in {', '.join(str(b) for b in bags)} "
                             f"(dropped: {format_dropped(out.dropped)})")
    return out


def _read_bag(out, b, bag, image_topic, odom_topic, fix_topic, pose_track, max_gap_s, size, zone, progress):
    """Append the frames of bag number `b` to `out`; returns the UTM zone in use (None for odometry)."""
    from geoloc_ros.model.encoder import resize_batch
    from geoloc_ros.model.loop import progress as bar
    from geoloc_ros.model.nordland import is_blank

    frames = BagKeyframes(bag, image_topic, fix_topic=fix_topic, odom_topic=odom_topic, max_gap_s=max_gap_s)
    out.dropped["no position"] += frames.skipped
    taken = 0
    for kf, image in bar(frames, f"reading {Path(bag).name}", progress):
        if pose_track is not None:
            placed = _place_by_poses(pose_track, kf.stamp_ns)
            if placed is None:
                out.dropped["no position"] += 1
                continue
            east, north, heading = placed
        elif fix_topic is not None:
            zone = zone or frames.fix.zone
            east, north, _ = to_utm(kf.lat, kf.lon, zone)
            heading = kf.heading
        else:
            east, north, heading = kf.x, kf.y, kf.heading
        if is_blank(image):
            out.dropped["blank"] += 1
            continue
        lat, lon = from_utm(east, north, zone) if zone else (NAN, NAN)
        out.records.append(GeoImage(Path(bag), kf.label, float(lat), float(lon), NAN, float(east), float(north),
                                    zone or "", float(heading), False, len(out.records)))
        out.images.append(resize_batch([image], size)[0] if size is not None else image)
        out.bag_index.append(b)
        out.stamps.append(int(kf.stamp_ns))
        taken += 1
    out.dropped["undecodable"] += len(frames.unreadable)
    out.examples += frames.unreadable[:3]
    log.info("%s: %d frames with positions taken", bag, taken)
    return zone


def _place_by_poses(poses: PoseTrack, stamp: int):
    """(east, north, heading) of the poses file at `stamp`, or None outside the track or in a gap."""
    track = poses.track
    if not track.covers(stamp):
        return None
    east, north, _ = track.at(stamp)
    if poses.heading is None:
        heading = track.heading_at(stamp)
    else:
        i = int(np.argmin(np.abs(track.t - stamp)))
        heading = poses.heading[i]
    return east, north, heading


def format_dropped(dropped: dict) -> str:
    return ", ".join(f"{n} {k}" for k, n in dropped.items())


# -- held-out part by position -----------------------------------------------------------------------------------
def spatial_split(xy, val_fraction: float, gap: float, last=None):
    """(training indices, held-out indices, indices dropped in the gap): the last `val_fraction` of the frames
    along the principal axis of the positions `xy` (N, 2) are held out, oriented so that the frame `last`
    (default: the last one) falls on the held-out side; training frames within `gap` metres of the cut along the
    axis are dropped. Every training frame is at least `gap` metres from every held-out one (projection onto an
    axis never lengthens a distance)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"the held-out fraction must lie in (0, 1), got {val_fraction}")
    if len(xy) < 2:
        raise RecordingError(f"{len(xy)} frame(s) with positions: too few to hold any part out")
    centred = xy - xy.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axis = vt[0]
    s = centred @ axis
    last = len(xy) - 1 if last is None else last
    if s[last] < np.median(s):
        s = -s
    cut = float(np.quantile(s, 1.0 - val_fraction))
    val = np.flatnonzero(s >= cut)
    train = np.flatnonzero(s < cut - gap)
    gap_idx = np.flatnonzero((s < cut) & (s >= cut - gap))
    if not len(train):
        span = float(s.max() - s.min())
        raise RecordingError(f"the recording spans {span:.0f} m along its main direction: nothing is left to train "
                             f"on after holding out {val_fraction:.0%} of it with a {gap:.0f} m gap (lower "
                             f"--val-fraction or --val-gap, or record a longer route)")
    return train, val, gap_idx


def revisit_queries(xy, bag_index, stamps, min_revisit_s: float, radius: float = 25.0):
    """(database indices, query indices) of the frames `xy`: a query's place was seen before (within `radius`
    metres) in an earlier bag, or at least `min_revisit_s` earlier in the same bag."""
    from geoloc_ros.model.evaluation import positives_by_radius

    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    bag_index = np.asarray(bag_index)
    stamps = np.asarray(stamps, dtype=np.int64)
    near = positives_by_radius(xy, xy, radius)
    queries = []
    for i, nb in enumerate(near):
        earlier = (bag_index[nb] < bag_index[i]) | ((bag_index[nb] == bag_index[i])
                                                    & (stamps[i] - stamps[nb] >= min_revisit_s * 1e9))
        if earlier.any():
            queries.append(i)
    queries = np.array(queries, dtype=np.int64)
    database = np.setdiff1d(np.arange(len(xy)), queries)
    return database, queries


@dataclass
class Split:
    """The frames of a recording, split for training and validation (indices into the Recording)."""

    train: np.ndarray
    database: np.ndarray
    queries: np.ndarray
    gap: np.ndarray

    def summary(self) -> dict:
        return {"train": int(len(self.train)), "val_database": int(len(self.database)),
                "val_queries": int(len(self.queries)), "dropped_in_gap": int(len(self.gap))}


def split_recording(rec: Recording, val_fraction: float, gap: float, min_revisit_s: float) -> Split:
    """Training frames, and the held-out frames as validation database and revisit queries."""
    xy = rec.xy()
    train, val, gap_idx = spatial_split(xy, val_fraction, gap)
    db, q = revisit_queries(xy[val], np.asarray(rec.bag_index)[val], np.asarray(rec.stamps)[val], min_revisit_s)
    if not len(q):
        raise RecordingError(f"the held-out {val_fraction:.0%} of the route ({len(val)} frames) is never revisited "
                             f"(no frame within 25 m of an earlier one, {min_revisit_s:g} s before or in an earlier "
                             f"bag): nothing to validate with. Record the route twice, or give several bags of it")
    return Split(train, val[db], val[q], gap_idx)


def validation(rec: Recording, split: Split):
    """encoder -> Recall@N of the held-out revisits against the held-out first visits (25 m radius)."""
    from geoloc_ros.model import evaluation as E

    xy = rec.xy()
    pos = E.positives_by_radius(xy[split.database], xy[split.queries])
    db_images = [rec.images[i] for i in split.database]
    q_images = [rec.images[i] for i in split.queries]

    def val_fn(enc):
        return E.recall_at_n(enc.encode(db_images), enc.encode(q_images), pos)

    return val_fn
