"""The manifest's fields and their types, checked before any value is used.

A manifest whose checksum is right can still carry a wrong value (written by hand with the checksums redone, or
by a bug): `dim: "abc"` used to surface as a bare ValueError deep inside the load and kill the node on
~/reload_map. Every field is checked here and refused with MapError naming it.
"""

from __future__ import annotations

from pathlib import Path
import re
import uuid

from geoloc_ros.mapping.storage import MANIFEST, MapError

_HEX64 = re.compile(r"[0-9a-f]{64}")
_FRAME_FIELDS = {"zone": str, "origin_east": float, "origin_north": float, "origin_alt": float}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# field -> (check, what it must be, required)
_FIELDS = {
    "name": (lambda v: isinstance(v, str), "a string", True),
    "created": (lambda v: v is None or isinstance(v, str), "a string or null", False),
    "count": (lambda v: _is_int(v) and v >= 0, "an integer >= 0", True),
    "synthetic_positions": (lambda v: _is_int(v) and v >= 0, "an integer >= 0", False),
    "dim": (lambda v: _is_int(v) and v > 0, "an integer > 0", True),
    "encoder_fingerprint": (lambda v: isinstance(v, str) and v != "", "a non-empty string", True),
    "metric": (lambda v: v == "inner_product", "'inner_product'", False),
    "index_factory": (lambda v: isinstance(v, str) and v != "", "a non-empty string (a FAISS factory)", True),
    "search_params": (lambda v: v is None or isinstance(v, str), "a string or null", False),
    "rerank": (lambda v: _is_int(v) and v >= 0, "an integer >= 0", False),
    "crs": (lambda v: isinstance(v, str), "a string", False),
    "map_id": (lambda v: isinstance(v, str) and v != "", "a non-empty string", False),
    "on_disk": (lambda v: isinstance(v, bool), "true or false", False),
}


def check_manifest(folder: Path, manifest: dict) -> None:
    """Raise MapError naming the first field of `manifest` that is missing or of the wrong type or range."""
    where = Path(folder) / MANIFEST
    for field, (ok, expected, required) in _FIELDS.items():
        if field not in manifest:
            if required:
                raise MapError(f"{where}: field {field!r} is missing")
            continue
        if not ok(manifest[field]):
            raise MapError(f"{where}: field {field!r} must be {expected}, got {manifest[field]!r}")
    if manifest.get("synthetic_positions", 0) > manifest["count"]:
        raise MapError(f"{where}: field 'synthetic_positions' exceeds 'count'")
    _check_frame(where, manifest.get("frame"))
    _check_files(where, manifest.get("files"))


def _check_frame(where: Path, frame) -> None:
    if frame is None:
        return
    if not isinstance(frame, dict) or set(frame) != set(_FRAME_FIELDS):
        raise MapError(f"{where}: field 'frame' must be null or an object with {', '.join(_FRAME_FIELDS)}, "
                       f"got {frame!r}")
    for key, kind in _FRAME_FIELDS.items():
        good = isinstance(frame[key], str) and frame[key] != "" if kind is str else _is_number(frame[key])
        if not good:
            raise MapError(f"{where}: field 'frame.{key}' must be {'a string' if kind is str else 'a number'}, "
                           f"got {frame[key]!r}")


def _check_files(where: Path, files) -> None:
    if not isinstance(files, dict):
        raise MapError(f"{where}: field 'files' must be an object (file name -> bytes, sha256), got {files!r}")
    for name, entry in files.items():
        if not isinstance(entry, dict) or not _is_int(entry.get("bytes")) or entry["bytes"] < 0 \
                or not isinstance(entry.get("sha256"), str) or not _HEX64.fullmatch(entry["sha256"]):
            raise MapError(f"{where}: field 'files.{name}' must be {{\"bytes\": integer >= 0, \"sha256\": 64 hex "
                           f"digits}}, got {entry!r}")


def new_map_id() -> str:
    """A fresh map id: a random UUID. A map keeps its id across `map add` and in-place saves; `map build` and
    `map merge` make new maps with new ids."""
    return str(uuid.uuid4())


def map_id_of(folder: Path, manifest: dict) -> str:
    """The manifest's map_id; maps written before ids existed get one derived from their resolved path (stable
    for that directory, different for /siteA/map and /siteB/map), which the next save writes into the manifest."""
    if "map_id" in manifest:
        return manifest["map_id"]
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "file://" + str(Path(folder).resolve())))
