"""The records a map holds: `Keyframe` (where a descriptor was seen) and `Match` (a search result)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
import math

NAN = float("nan")


@dataclass
class Keyframe:
    """One keyframe of a map. Unknown values are NaN (stamp 0 when unknown).

    Position: WGS84 `lat`/`lon`/`alt`, UTM `utm_east`/`utm_north` in the map frame's zone, and `x`/`y`/`z` in the
    map frame (metres; x east, y north, z up). `heading`: degrees clockwise from north. `qx..qw`: orientation in the
    map frame; the identity when the heading is unknown. `synthetic`: the position was made up (e.g. frames of a
    coordinate-free sequence placed on a line), not measured. `id` < 0 asks `MapDatabase.add` to assign one.
    `address` / `caption`: optional text about the place (docs/language.md); "" when the map has none.
    """

    id: int = -1
    label: str = ""
    stamp_ns: int = 0
    lat: float = NAN
    lon: float = NAN
    alt: float = NAN
    utm_east: float = NAN
    utm_north: float = NAN
    heading: float = NAN
    x: float = NAN
    y: float = NAN
    z: float = NAN
    qx: float = 0.0
    qy: float = 0.0
    qz: float = 0.0
    qw: float = 1.0
    source: str = ""
    synthetic: bool = False
    address: str = ""
    caption: str = ""

    @property
    def has_geotag(self) -> bool:
        return math.isfinite(self.lat) and math.isfinite(self.lon)

    @property
    def has_position(self) -> bool:
        return math.isfinite(self.x) and math.isfinite(self.y)

    def replace(self, **changes) -> "Keyframe":
        return replace(self, **changes)


KEYFRAME_FIELDS = tuple(f.name for f in fields(Keyframe))
# Text columns added after the first maps were written: a keyframes.sqlite without them reads as "" (no format bump)
TEXT_FIELDS = ("address", "caption")
FLOAT_FIELDS = tuple(f.name for f in fields(Keyframe) if f.type == "float")


@dataclass
class Match:
    """A search result: the keyframe and the inner product of the L2-normalised descriptors (cosine similarity)."""

    keyframe: Keyframe
    similarity: float


def quaternion_from_heading(heading_deg: float) -> tuple[float, float, float, float]:
    """(qx, qy, qz, qw) of a yaw-only orientation in an ENU frame, from a compass heading (clockwise from north).
    ENU yaw is counter-clockwise from east: yaw = 90 deg - heading. Unknown heading -> the identity."""
    if not math.isfinite(heading_deg):
        return 0.0, 0.0, 0.0, 1.0
    yaw = math.radians(90.0 - heading_deg)
    return 0.0, 0.0, math.sin(yaw / 2.0), math.cos(yaw / 2.0)


def heading_from_quaternion(qx: float, qy: float, qz: float, qw: float) -> float:
    """Compass heading (degrees clockwise from north, in [0, 360)) of an ENU orientation's yaw."""
    yaw = math.atan2(2.0 * (qw * qz + qx * qy), 1.0 - 2.0 * (qy * qy + qz * qz))
    return (90.0 - math.degrees(yaw)) % 360.0


def keyframe_from_geoimage(image, source: str = "", stamp_ns: int = 0) -> Keyframe:
    """A Keyframe for a `geoloc_ros.datasets.GeoImage` (the map fills in x/y/z when it is added)."""
    q = quaternion_from_heading(image.heading)
    return Keyframe(label=image.label, stamp_ns=stamp_ns, lat=image.lat, lon=image.lon, alt=image.alt,
                    utm_east=image.utm_east, utm_north=image.utm_north, heading=image.heading,
                    qx=q[0], qy=q[1], qz=q[2], qw=q[3], source=source, synthetic=image.synthetic)
