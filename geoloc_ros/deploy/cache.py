"""Where exported artefacts (ONNX files, TensorRT engines) and the checks made on them live.

An artefact goes beside the encoder it came from, in ``<encoder folder>/geoloc_cache/``, so it travels with a map
and is built once per map. When that folder cannot be written (a map installed in share/, a read-only mount, an
Encoder object with no file), the user cache takes it: ``$XDG_CACHE_HOME/geoloc_ros`` (default
``~/.cache/geoloc_ros``). ``$GEOLOC_CACHE`` set: that directory alone is used (tests, shared caches).

Every name carries what the artefact depends on (the encoder fingerprint, the exporter or engine version, the
device), so a changed encoder or library makes a new name rather than reusing a stale file. Files are written to a
temporary name and renamed into place, so a crash never leaves a half-written artefact under its real name; nothing
here deletes a file other than its own temporary one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import re

BESIDE = "geoloc_cache"


def user_cache_dir() -> Path:
    explicit = os.environ.get("GEOLOC_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "geoloc_ros"


def encoder_folder(source) -> Path | None:
    """The folder of a checkpoint path (the directory itself for a map / checkpoint directory); None otherwise."""
    if not isinstance(source, (str, Path)):
        return None
    p = Path(source)
    return p if p.is_dir() else p.parent


def cache_dirs(source) -> list[Path]:
    """Where to look for and write artefacts of `source`, in order."""
    if os.environ.get("GEOLOC_CACHE"):
        return [user_cache_dir()]
    folder = encoder_folder(source)
    return ([folder / BESIDE] if folder is not None else []) + [user_cache_dir()]


def slug(text: str) -> str:
    """A file-name-safe form of a version or device name."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", str(text)).strip("_") or "none"


def find(source, name: str) -> Path | None:
    for d in cache_dirs(source):
        if (d / name).is_file():
            return d / name
    return None


def write_atomic(source, name: str, write) -> Path:
    """Call `write(tmp_path)` for a temporary file in the first writable cache folder, then rename it to `name`.
    Returns the final path. A folder that cannot be written (read-only, no permission) passes to the next one."""
    errors = []
    for d in cache_dirs(source):
        tmp = d / f".{name}.{os.getpid()}.tmp"
        try:
            d.mkdir(parents=True, exist_ok=True)
            write(tmp)
            os.replace(tmp, d / name)
            return d / name
        except OSError as e:
            errors.append(f"{d}: {e.strerror or e}")
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
    raise OSError(f"no writable cache folder for {name} ({'; '.join(errors)})")


def read_record(source, name: str) -> dict | None:
    """A JSON record written by `write_record`, or None when absent or unreadable (then it is rebuilt)."""
    path = find(source, name)
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_record(source, name: str, record: dict) -> Path | None:
    """Best effort: a record that cannot be written only costs a repeated check next time."""
    try:
        return write_atomic(source, name, lambda tmp: tmp.write_text(json.dumps(record, indent=1, sort_keys=True)))
    except OSError:
        return None
