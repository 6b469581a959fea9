"""WGS84 <-> UTM <-> local map frame, through pyproj.

The map frame of a map database is the UTM grid of its origin's zone, shifted so that the origin is
(0, 0, 0): x east, y north, z up (REP-105 ENU, as robot_localization's navsat_transform does it).
"""

from dataclasses import dataclass
from functools import lru_cache
import math

from pyproj import Transformer

_BANDS = "CDEFGHJKLMNPQRSTUVWXX"  # MGRS latitude bands, 8 degrees each from 80S; X spans 72N..84N


def utm_zone(lat: float, lon: float) -> str:
    """UTM zone of a WGS84 position as '<number><band>', e.g. '33W' (Norway/Svalbard exceptions included)."""
    number = int((lon + 180.0) // 6.0) % 60 + 1
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        number = 32
    elif 72.0 <= lat < 84.0 and 0.0 <= lon < 42.0:
        number = {0: 31, 1: 33, 2: 33, 3: 35, 4: 35, 5: 37, 6: 37}[int(lon // 6.0)]
    band = _BANDS[min(max(int((lat + 80.0) // 8.0), 0), len(_BANDS) - 1)]
    return f"{number}{band}"


def _epsg(zone: str) -> int:
    number, band = int(zone[:-1]), zone[-1].upper()
    return (32600 if band >= "N" else 32700) + number


@lru_cache(maxsize=64)
def _to_utm(zone: str) -> Transformer:
    return Transformer.from_crs(4326, _epsg(zone), always_xy=True)


@lru_cache(maxsize=64)
def _from_utm(zone: str) -> Transformer:
    return Transformer.from_crs(_epsg(zone), 4326, always_xy=True)


def to_utm(lat, lon, zone: str | None = None):
    """(easting, northing, zone). Arrays are accepted; `zone` forces one zone for all of them."""
    zone = zone or utm_zone(float(lat if _scalar(lat) else lat[0]), float(lon if _scalar(lon) else lon[0]))
    east, north = _to_utm(zone).transform(lon, lat)
    return east, north, zone


def from_utm(east, north, zone: str):
    """(lat, lon) of UTM coordinates in `zone`."""
    lon, lat = _from_utm(zone).transform(east, north)
    return lat, lon


def _scalar(x) -> bool:
    return not hasattr(x, "__len__")


@dataclass(frozen=True)
class MapFrame:
    """A local metric frame: the UTM grid of `zone`, origin at (origin_east, origin_north, origin_alt)."""

    zone: str
    origin_east: float
    origin_north: float
    origin_alt: float = 0.0

    @classmethod
    def at(cls, lat: float, lon: float, alt: float = 0.0) -> "MapFrame":
        east, north, zone = to_utm(lat, lon)
        return cls(zone, float(east), float(north), 0.0 if math.isnan(alt) else float(alt))

    def to_local(self, lat, lon, alt=0.0):
        east, north, _ = to_utm(lat, lon, self.zone)
        return east - self.origin_east, north - self.origin_north, alt - self.origin_alt

    def to_wgs84(self, x, y, z=0.0):
        lat, lon = from_utm(x + self.origin_east, y + self.origin_north, self.zone)
        return lat, lon, z + self.origin_alt
