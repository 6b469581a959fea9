"""Address and caption text for map keyframes, from one of three sources (docs/language.md):

- a CSV column: the image CSV of `geoloc map build --images FILE.csv` with a header row naming `address` /
  `caption` columns (or the names given), matched to keyframes by the image column (the keyframe label);
- a rosbag2 std_msgs/String topic: the message nearest in time to the keyframe's stamp, within `max_gap_s`;
- an address table (GeoJSON FeatureCollection of Point / Polygon / MultiPolygon features, or a CSV of
  lat,lon,address): the polygon holding the keyframe, else the nearest point within `radius_m` metres.

Pure Python / numpy, no network. Each source is a callable keyframe -> keyframe (`Annotator`), which the map
builders apply before adding keyframes (`encode_into(..., annotate=...)`).
"""

from __future__ import annotations

import bisect
import csv
import json
import math
from pathlib import Path

import numpy as np

EARTH_RADIUS_M = 6_371_008.8


class AnnotationError(ValueError):
    """A text source that cannot be read: the message names the file and what is wrong."""


def haversine_m(lat1, lon1, lat2, lon2):
    """Great-circle distance in metres (numpy-broadcasting)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


# -- CSV columns ----------------------------------------------------------------------------------------------

def csv_text(csv_path, address_column: str | None = "address", caption_column: str | None = "caption") -> dict:
    """label (the CSV's first column, as `datasets.read_csv` labels keyframes) -> {"address": ..., "caption": ...}
    for the named columns that the header row has. A named column missing from the header is an error when it was
    asked for explicitly (pass None to skip a column)."""
    path = Path(csv_path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise AnnotationError(f"{path}: cannot read ({e})") from None
    rows = [r for r in rows if r and not r[0].lstrip().startswith("#")]
    if not rows:
        raise AnnotationError(f"{path}: empty")
    header = [h.strip().lower() for h in rows[0]]
    wanted = {field: name.lower() for field, name in (("address", address_column), ("caption", caption_column))
              if name}
    missing = [name for name in wanted.values() if name not in header]
    if missing:
        raise AnnotationError(f"{path}: no column {', '.join(missing)} in the header row {rows[0]}")
    where = {field: header.index(name) for field, name in wanted.items()}
    table = {}
    for row in rows[1:]:
        table[row[0].strip()] = {field: row[j].strip() if j < len(row) else "" for field, j in where.items()}
    return table


def label_annotator(table: dict):
    """Keyframe -> keyframe with the text of its label in `table` (from `csv_text`)."""
    def annotate(keyframe):
        text = table.get(keyframe.label)
        return keyframe.replace(**text) if text else keyframe
    return annotate


# -- a bag's string topic -------------------------------------------------------------------------------------

def bag_strings(bag, topic: str) -> list[tuple[int, str]]:
    """(stamp_ns, text) of every std_msgs/msg/String message on `topic` of a rosbag2 recording, by log time."""
    from rosbags.highlevel import AnyReader

    path = Path(bag)
    try:
        with AnyReader([path]) as reader:
            connections = [c for c in reader.connections if c.topic == topic]
            if not connections:
                topics = sorted({c.topic for c in reader.connections})
                raise AnnotationError(f"{path}: no topic {topic} (topics: {topics})")
            bad = [c.msgtype for c in connections if c.msgtype != "std_msgs/msg/String"]
            if bad:
                raise AnnotationError(f"{path}: topic {topic} is {bad[0]}, not std_msgs/msg/String")
            out = [(t, reader.deserialize(raw, c.msgtype).data) for c, t, raw in reader.messages(connections)]
    except AnnotationError:
        raise
    except Exception as e:  # noqa: BLE001 - rosbags raises several types for unreadable recordings
        raise AnnotationError(f"{path}: cannot read the recording ({e})") from None
    return sorted(out)


def nearest_stamp_annotator(messages: list[tuple[int, str]], field: str, max_gap_s: float):
    """Keyframe -> keyframe with `field` set to the message nearest its stamp, when within `max_gap_s`."""
    stamps = [t for t, _ in messages]
    max_gap = int(max_gap_s * 1e9)

    def annotate(keyframe):
        i = bisect.bisect_left(stamps, keyframe.stamp_ns)
        best = min((j for j in (i - 1, i) if 0 <= j < len(stamps)),
                   key=lambda j: abs(stamps[j] - keyframe.stamp_ns), default=None)
        if best is None or abs(stamps[best] - keyframe.stamp_ns) > max_gap:
            return keyframe
        return keyframe.replace(**{field: messages[best][1]})
    return annotate


# -- an address table matched by position ---------------------------------------------------------------------

class AddressTable:
    """Address points and polygons (lon/lat, WGS84). `lookup(lat, lon)`: the first polygon holding the point,
    else the nearest point within `radius_m`, else ""."""

    def __init__(self, points=(), polygons=(), radius_m: float = 30.0):
        self.points = list(points)  # (lat, lon, address)
        self.polygons = list(polygons)  # (list of rings as (N, 2) lon/lat arrays, address); ring 0 outer
        self.radius_m = float(radius_m)
        self._lat = np.array([p[0] for p in self.points], dtype=np.float64)
        self._lon = np.array([p[1] for p in self.points], dtype=np.float64)

    def __len__(self):
        return len(self.points) + len(self.polygons)

    def lookup(self, lat: float, lon: float) -> str:
        if not (math.isfinite(lat) and math.isfinite(lon)):
            return ""
        for rings, address in self.polygons:
            if _in_polygon(lon, lat, rings):
                return address
        if len(self._lat):
            d = haversine_m(lat, lon, self._lat, self._lon)
            i = int(np.argmin(d))
            if d[i] <= self.radius_m:
                return self.points[i][2]
        return ""

    def annotator(self):
        def annotate(keyframe):
            address = self.lookup(keyframe.lat, keyframe.lon)
            return keyframe.replace(address=address) if address else keyframe
        return annotate


def _in_ring(x: float, y: float, ring: np.ndarray) -> bool:
    """Even-odd ray casting."""
    xs, ys = ring[:, 0], ring[:, 1]
    xj, yj = np.roll(xs, 1), np.roll(ys, 1)
    crosses = (ys > y) != (yj > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = (xj - xs) * (y - ys) / (yj - ys) + xs
    return bool(np.count_nonzero(crosses & (x < x_at)) % 2)


def _in_polygon(x, y, rings) -> bool:
    return _in_ring(x, y, rings[0]) and not any(_in_ring(x, y, hole) for hole in rings[1:])


def read_address_table(path, radius_m: float = 30.0, property_name: str = "address") -> AddressTable:
    """A GeoJSON file (.geojson / .json: Point, Polygon, MultiPolygon features with the address in
    properties[property_name]) or a CSV with a header naming lat, lon and address columns. Every feature must
    have a WGS84 position (finite, in range) and an address that is text or a number; anything else (a NaN
    point, `"address": null`, JSON nested too deeply to read) is refused with AnnotationError naming the file,
    the feature and the reason."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return _read_address_csv(path, radius_m, property_name)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise AnnotationError(f"{path}: not a readable GeoJSON file ({e})") from None
    except RecursionError:
        raise AnnotationError(f"{path}: not a readable GeoJSON file (nested too deeply)") from None
    features = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(features, list):
        raise AnnotationError(f"{path}: not a GeoJSON FeatureCollection (no 'features' list)")
    points, polygons = [], []
    for n, feature in enumerate(features):
        try:
            properties = feature.get("properties") or {}
            address = _address_text(properties[property_name], property_name)
            geometry = feature["geometry"]
            kind, coords = geometry["type"], geometry["coordinates"]
            if kind == "Point":
                lat, lon = _position(float(coords[1]), float(coords[0]))
                points.append((lat, lon, address))
            elif kind in ("Polygon", "MultiPolygon"):
                for poly in ([coords] if kind == "Polygon" else coords):
                    polygons.append(([_ring(r) for r in poly], address))
            else:
                raise ValueError(f"geometry type {kind} (Point, Polygon, MultiPolygon are read)")
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as e:
            raise AnnotationError(f"{path}: feature {n}: {e!r}") from None
    return AddressTable(points, polygons, radius_m)


def _address_text(value, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)  # a house number
    raise ValueError(f"{name} is {json.dumps(value)[:60]}, not text")


def _position(lat: float, lon: float) -> tuple[float, float]:
    if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
        raise ValueError(f"point (lat {lat}, lon {lon}) is not a WGS84 position")
    return lat, lon


def _ring(coords) -> np.ndarray:
    ring = np.asarray(coords, dtype=np.float64)
    if ring.ndim != 2 or ring.shape[1] < 2 or len(ring) < 3:
        raise ValueError(f"a polygon ring of shape {ring.shape}, expected (N >= 3, 2)")
    ring = ring[:, :2]
    if not np.isfinite(ring).all() or np.any(np.abs(ring[:, 1]) > 90) or np.any(np.abs(ring[:, 0]) > 180):
        raise ValueError("a polygon ring with a vertex that is not a WGS84 position")
    return ring


def _read_address_csv(path: Path, radius_m: float, property_name: str) -> AddressTable:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise AnnotationError(f"{path}: cannot read ({e})") from None
    points = []
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if isinstance(v, (str, type(None)))}
        try:
            lat, lon = _position(float(row["lat"]), float(row["lon"]))
            points.append((lat, lon, row[property_name.lower()]))
        except (KeyError, ValueError) as e:
            raise AnnotationError(f"{path}:{line}: expected columns lat, lon, {property_name} ({e!r})") from None
    return AddressTable(points, (), radius_m)


def chain(annotators):
    """One annotator applying each of `annotators` in turn (None when there are none)."""
    annotators = [a for a in annotators if a is not None]
    if not annotators:
        return None

    def annotate(keyframe):
        for a in annotators:
            keyframe = a(keyframe)
        return keyframe
    return annotate
