"""Geotagged image collections: the layouts the training, evaluation and map tools read.

- VG-benchmark folders (SF-XL, Pitts30k, Tokyo 24/7, MSLS in gmberton's tooling): the position is in the
  file name, ``@utm_east@utm_north@zone_number@zone_letter@lat@lon@pano_id@tile@heading@pitch@roll@...``.
- A raw MSLS city side (``<city>/query`` or ``<city>/database``): ``raw.csv`` + ``images/<key>.jpg``.
- A CSV file of ``image,lat,lon[,alt,heading]`` (a header row is optional; image paths are relative to
  the CSV file).
- A folder of photos with GPS in their EXIF (phones, action cameras, Mapillary/OpenSfM's Lund set): read with
  Pillow's GPS IFD; picked automatically when the names carry no VG coordinates but every image has a GPS fix.
- A coordinate-free image sequence (Nordland-style): frames in file-name order, placed on a straight line
  ``spacing`` metres apart, as the VG tooling does. These positions are flagged ``synthetic``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
import math
from pathlib import Path

import cv2
import numpy as np

from geoloc_ros.geodesy import from_utm, to_utm

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
NAN = float("nan")


@dataclass(frozen=True)
class GeoImage:
    """One geotagged image. Unknown values are NaN; `synthetic` marks positions that were made up."""

    path: Path
    label: str  # the file name, or the path relative to the dataset root
    lat: float
    lon: float
    alt: float = NAN
    utm_east: float = NAN
    utm_north: float = NAN
    utm_zone: str = ""
    heading: float = NAN  # degrees clockwise from north
    synthetic: bool = False
    index: int = 0  # position in the dataset's order (frame number order for sequences)


def read_image(path) -> np.ndarray:
    """HxWx3 uint8 RGB; raises ValueError naming the file when it cannot be decoded."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def list_images(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such directory")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def is_vg_name(name: str) -> bool:
    return name.startswith("@") and name.count("@") >= 7


def read_vg_folder(folder) -> list[GeoImage]:
    folder = Path(folder)
    images = []
    for i, path in enumerate(list_images(folder)):
        f = path.name.split("@")
        try:
            east, north = float(f[1]), float(f[2])
            zone = f"{int(f[3])}{f[4].upper()}"
            lat, lon = float(f[5]), float(f[6])
            heading = float(f[9]) if len(f) > 9 and f[9] else NAN
        except (IndexError, ValueError) as e:
            raise ValueError(f"{path}: not a VG-benchmark file name ({e})") from None
        images.append(GeoImage(path, str(path.relative_to(folder)), lat, lon, NAN, east, north, zone, heading,
                               False, i))
    return images


_GPS_IFD = 0x8825  # EXIF tag of the GPS sub-directory (GPSInfo)


class UnreadableImage(ValueError):
    """An image file that cannot be opened at all; the message names it and the reason."""


def exif_gps(path) -> tuple[float, float, float, float] | None:
    """(lat, lon, alt, heading) from an image's EXIF GPS tags (NaN where a tag is absent), or None without a fix.
    Raises ValueError naming the file when the tags are present but malformed."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            gps = im.getexif().get_ifd(_GPS_IFD)
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for damaged files (and DecompressionBombError)
        raise UnreadableImage(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    if 2 not in gps or 4 not in gps:
        return None
    try:
        lat = _dms(gps[2]) * (-1.0 if str(gps.get(1, "N")).upper().startswith("S") else 1.0)
        lon = _dms(gps[4]) * (-1.0 if str(gps.get(3, "E")).upper().startswith("W") else 1.0)
        alt = float(gps[6]) * (-1.0 if gps.get(5) in (1, b"\x01") else 1.0) if 6 in gps else NAN
        heading = float(gps[17]) if 17 in gps else NAN  # GPSImgDirection (true or magnetic north, GPSImgDirectionRef)
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ValueError(f"{path}: malformed EXIF GPS tags ({e})") from None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError(f"{path}: EXIF GPS position out of range (lat {lat}, lon {lon})")
    return lat, lon, alt, heading


def _dms(value) -> float:
    """EXIF degrees/minutes/seconds rationals (or one number) -> decimal degrees."""
    if isinstance(value, (tuple, list)):
        parts = [float(v) for v in value] + [0.0, 0.0]
        return parts[0] + parts[1] / 60.0 + parts[2] / 3600.0
    return float(value)


def read_exif_folder(folder, unreadable: list | None = None) -> list[GeoImage]:
    """Every image of `folder` (recursively, in name order) placed by its EXIF GPS fix; an image without one is an
    error naming it (a position cannot be made up). An image that cannot be read at all (truncated, not an image,
    a decompression bomb) is skipped and its reason appended to `unreadable`; without that list it is an error."""
    folder = Path(folder)
    images = []
    for path in list_images(folder):
        try:
            fix = exif_gps(path)
        except UnreadableImage as e:
            if unreadable is None:
                raise
            unreadable.append(str(e))
            continue
        if fix is None:
            raise ValueError(f"{path}: no GPS position in its EXIF")
        lat, lon, alt, heading = fix
        east, north, zone = to_utm(lat, lon)
        images.append(GeoImage(path, str(path.relative_to(folder)), lat, lon, alt, east, north, zone, heading, False,
                               len(images)))
    return images


def read_msls_folder(folder) -> list[GeoImage]:
    """A raw Mapillary SLS city side (``train_val/<city>/query`` or ``.../database``): ``raw.csv`` (key, lon, lat,
    ca = compass angle, captured_at, pano) beside ``images/<key>.jpg``; rows in the CSV's order."""
    folder = Path(folder)
    csv_path = folder / "raw.csv"
    images = []
    with open(csv_path, newline="") as f:
        for line_no, row in enumerate(csv.DictReader(f), start=2):
            try:
                key, lat, lon = row["key"].strip(), float(row["lat"]), float(row["lon"])
                heading = float(row["ca"]) if (row.get("ca") or "").strip() else NAN
            except (KeyError, ValueError, AttributeError) as e:
                raise ValueError(f"{csv_path}:{line_no}: expected MSLS columns key,lon,lat,ca ({e!r})") from None
            path = folder / "images" / f"{key}.jpg"
            east, north, zone = to_utm(lat, lon)
            images.append(GeoImage(path, f"images/{key}.jpg", lat, lon, NAN, east, north, zone, heading, False,
                                   len(images)))
    return images


# Header names of CSV columns that hold text (docs/language.md), never read as alt / heading.
TEXT_COLUMNS = ("address", "caption")


def _optional_columns(header) -> tuple[int | None, int | None]:
    """Positions of alt and heading: columns 3 and 4, or, with a header row, the columns named so (a header
    image,lat,lon,address has neither)."""
    if header is None:
        return 3, 4
    names = [h.strip().lower() for h in header]

    def find(aliases, position):
        named = [i for i, n in enumerate(names) if n in aliases]
        if named:
            return named[0]
        known = set(TEXT_COLUMNS) | {"alt", "altitude", "heading"}
        return position if position < len(names) and names[position] not in known else None
    return find(("alt", "altitude"), 3), find(("heading",), 4)


def read_csv(csv_path) -> list[GeoImage]:
    csv_path = Path(csv_path)
    images = []
    alt_col, heading_col = 3, 4
    with open(csv_path, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or row[0].lstrip().startswith("#"):
                continue
            if line_no == 1 and not is_number(row[1] if len(row) > 1 else ""):
                alt_col, heading_col = _optional_columns(row)
                continue  # header row
            if len(row) < 3:
                raise ValueError(f"{csv_path}:{line_no}: expected image,lat,lon[,alt,heading], got {row}")
            try:
                lat, lon = float(row[1]), float(row[2])
                alt = _optional_float(row, alt_col)
                heading = _optional_float(row, heading_col)
            except ValueError as e:
                raise ValueError(f"{csv_path}:{line_no}: {e}") from None
            east, north, zone = to_utm(lat, lon)
            path = (csv_path.parent / row[0].strip()).resolve()
            images.append(GeoImage(path, row[0].strip(), lat, lon, alt, east, north, zone, heading, False,
                                   len(images)))
    return images


def read_sequence(folder, spacing: float, origin=(0.0, 0.0), heading: float = 0.0) -> list[GeoImage]:
    """Frames in file-name order on a straight line from `origin` (lat, lon) towards `heading` (degrees
    clockwise from north), `spacing` metres apart. All positions are synthetic."""
    if not spacing > 0:
        raise ValueError(f"sequence spacing must be > 0 metres, got {spacing}")
    folder = Path(folder)
    east0, north0, zone = to_utm(*origin)
    de, dn = math.sin(math.radians(heading)), math.cos(math.radians(heading))
    images = []
    for i, path in enumerate(list_images(folder)):
        east, north = east0 + i * spacing * de, north0 + i * spacing * dn
        lat, lon = from_utm(east, north, zone)
        images.append(GeoImage(path, str(path.relative_to(folder)), lat, lon, NAN, east, north, zone, heading,
                               True, i))
    return images


def load_dataset(path, sequence_spacing: float | None = None, unreadable: list | None = None,
                 **sequence_options) -> list[GeoImage]:
    """Read any of the layouts: a .csv file, a VG-named folder, a raw MSLS city side, a folder of EXIF-geotagged
    photos, or (with `sequence_spacing`) a coordinate-free sequence folder. `unreadable`: a list that collects
    the images of an EXIF folder that cannot be read (skipped), as `encode_into` does for the other layouts."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_csv(path)
    if sequence_spacing is not None:
        return read_sequence(path, sequence_spacing, **sequence_options)
    if (path / "raw.csv").is_file() and (path / "images").is_dir():
        return read_msls_folder(path)
    images = list_images(path)
    if not images:
        raise ValueError(f"{path}: no images found")
    if all(is_vg_name(p.name) for p in images):
        return read_vg_folder(path)
    if _first_readable_fix(images) is not None:
        return read_exif_folder(path, unreadable)
    raise ValueError(f"{path}: file names carry no VG-benchmark coordinates and the images no EXIF GPS; give a CSV "
                     f"of image,lat,lon or a sequence spacing in metres for a coordinate-free sequence")


def _first_readable_fix(images):
    """The EXIF GPS fix of the first image that can be read (None: none can, or that one has no fix)."""
    for path in images:
        try:
            return exif_gps(path)
        except UnreadableImage:
            continue
    return None


def positions_utm(images: list[GeoImage]) -> np.ndarray:
    """(N, 2) float64 easting/northing, for the 25 m positive-radius protocol."""
    return np.array([(g.utm_east, g.utm_north) for g in images], dtype=np.float64)


def subset(images: list[GeoImage], keep) -> list[GeoImage]:
    """The images for which keep(image) is true, re-indexed in order."""
    return [replace(g, index=i) for i, g in enumerate(x for x in images if keep(x))]


def _optional_float(row, column: int | None) -> float:
    return float(row[column]) if column is not None and len(row) > column and row[column].strip() else NAN


def is_number(text: str) -> bool:
    """Whether `text` reads as a float (a CSV header cell does not)."""
    try:
        float(text)
        return True
    except ValueError:
        return False
