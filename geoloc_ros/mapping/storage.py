"""The on-disk map: one directory, written atomically, verified on load.

    MAP/manifest.json        format, version, name, counts, encoder dim + fingerprint, coordinate reference,
                             index factory, and the size + sha256 of every other file; it checksums itself too
    MAP/keyframes.sqlite     keyframe metadata, one row per keyframe, `row` = its row in the descriptors/index
    MAP/descriptors.npy      float32 (N, dim), L2-normalised, in row order
    MAP/index.faiss          the FAISS index over those rows (inner product)
    MAP/encoder.safetensors  optional: the encoder checkpoint the map was built with
    MAP/features.npz, MAP/cameras.json  optional: keyframes' local features and camera models (mapping/features.py)

A map is written into a temporary sibling directory, every file and the directory are fsynced, and the
directory is then renamed over the old one (swapped atomically where the kernel offers renameat2), so a crash
at any moment leaves either the old map or the new one, never a mixture.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import math
import os
from pathlib import Path
import shutil
import sqlite3
import tempfile

import numpy as np

from geoloc_ros.mapping.keyframe import FLOAT_FIELDS, KEYFRAME_FIELDS

FORMAT = "geoloc_ros.map"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KEYFRAMES = "keyframes.sqlite"
DESCRIPTORS = "descriptors.npy"
INDEX = "index.faiss"
ENCODER = "encoder.safetensors"
LOCAL_FEATURES = "features.npz"  # optional: per-keyframe local features (mapping/features.py)
CAMERAS = "cameras.json"  # optional: the keyframes' camera models (mapping/features.py)
_SELF_CHECKSUM = "manifest_sha256"


class MapError(ValueError):
    """A map that cannot be used; the message names the file and the reason."""


# -- checksums and the manifest -------------------------------------------------------------------------------

def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _canonical(obj) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=1, allow_nan=False) + "\n").encode()


def manifest_bytes(manifest: dict) -> bytes:
    """The exact bytes of manifest.json: canonical JSON that carries the sha256 of itself without that field."""
    body = {k: v for k, v in manifest.items() if k != _SELF_CHECKSUM}
    return _canonical({**body, _SELF_CHECKSUM: hashlib.sha256(_canonical(body)).hexdigest()})


def read_manifest(folder: Path) -> dict:
    """Parse and verify MAP/manifest.json: it must be byte for byte the canonical form of itself with a matching
    self-checksum (so any altered byte is caught), of this format and of a version this code reads."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise MapError(f"{folder}: no such map directory")
    if not path.is_file():
        raise MapError(f"{path}: missing (not a geoloc_ros map directory, or an interrupted copy)")
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw.decode("utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise MapError(f"{path}: not valid JSON ({e}); the file is truncated or altered") from None
    if manifest.get("format") != FORMAT:
        raise MapError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise MapError(f"{path}: map format version {version!r} is not supported (this geoloc_ros reads version "
                       f"{FORMAT_VERSION}); rebuild the map or update geoloc_ros")
    if raw != manifest_bytes(manifest):
        raise MapError(f"{path}: checksum mismatch, the manifest was altered or truncated")
    return manifest


def verify_files(folder: Path, manifest: dict) -> None:
    """Every file the manifest lists exists with its recorded size and sha256."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise MapError(f"{folder / MANIFEST}: lists no files")
    for name, expect in sorted(files.items()):
        path = folder / name
        if Path(name).name != name:
            raise MapError(f"{folder / MANIFEST}: bad file name {name!r}")
        if not path.is_file():
            raise MapError(f"{path}: missing (the manifest lists it)")
        size = path.stat().st_size
        if size != expect["bytes"]:
            raise MapError(f"{path}: {size} bytes, the manifest says {expect['bytes']} (truncated or altered)")
        if sha256_file(path) != expect["sha256"]:
            raise MapError(f"{path}: checksum mismatch (sha256 differs from the manifest), the file was altered")


def describe_files(folder: Path) -> dict:
    """Size and sha256 of the map's own files (extras such as a README are not part of the map)."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name in MAP_FILES and p.name != MANIFEST}


# -- keyframe metadata in SQLite --------------------------------------------------------------------------------

_SQL_TYPES = {"id": "INTEGER PRIMARY KEY", "label": "TEXT NOT NULL", "stamp_ns": "INTEGER NOT NULL",
              "source": "TEXT NOT NULL", "synthetic": "INTEGER NOT NULL"}


def write_keyframes(path: Path, columns: dict) -> None:
    """`columns`: name -> sequence (all KEYFRAME_FIELDS), in row order. NaN is stored as NULL (SQLite has no NaN)."""
    cols = ("row",) + KEYFRAME_FIELDS
    schema = ", ".join(f"{c} {_SQL_TYPES.get(c, 'REAL') if c != 'row' else 'INTEGER NOT NULL UNIQUE'}" for c in cols)
    n = len(columns["id"])
    con = sqlite3.connect(str(path))
    try:
        con.execute("PRAGMA journal_mode=OFF")  # the file lives in a temporary directory until it is complete
        con.execute(f"CREATE TABLE keyframes ({schema})")

        def rows():
            as_py = {c: (columns[c].tolist() if hasattr(columns[c], "tolist") else list(columns[c]))
                     for c in KEYFRAME_FIELDS}
            for r in range(n):
                yield (r,) + tuple(_to_sql(c, as_py[c][r]) for c in KEYFRAME_FIELDS)

        con.executemany(f"INSERT INTO keyframes VALUES ({', '.join('?' * len(cols))})", rows())
        con.commit()
    finally:
        con.close()


def _to_sql(column, value):
    if column in FLOAT_FIELDS:
        return None if value is None or math.isnan(value) else float(value)
    if column == "synthetic":
        return int(bool(value))
    return value


def read_keyframes(path: Path) -> dict:
    """name -> numpy column (floats with NaN for NULL; label/source as object arrays), in row order."""
    con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        cur = con.execute(f"SELECT row, {', '.join(KEYFRAME_FIELDS)} FROM keyframes ORDER BY row")
        data = cur.fetchall()
    except sqlite3.DatabaseError as e:
        raise MapError(f"{path}: not a readable keyframe database ({e})") from None
    finally:
        con.close()
    rows = np.array([r[0] for r in data], dtype=np.int64)
    if not np.array_equal(rows, np.arange(len(rows))):
        raise MapError(f"{path}: keyframe rows are not 0..N-1")
    cols = {}
    for j, name in enumerate(KEYFRAME_FIELDS, start=1):
        values = [r[j] for r in data]
        if name in FLOAT_FIELDS:
            cols[name] = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
        elif name in ("id", "stamp_ns"):
            cols[name] = np.array(values, dtype=np.int64)
        elif name == "synthetic":
            cols[name] = np.array(values, dtype=bool)
        else:
            cols[name] = np.array(values, dtype=object)
    return cols


# -- atomic directory replacement -------------------------------------------------------------------------------

def fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_sibling(target: Path) -> Path:
    """A fresh directory beside `target` (same filesystem, so that rename is atomic), named after this process.
    Leftovers of saves whose process died (killed mid-save) are removed first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*-*"):
        pid = stale.name[len(f".{target.name}.tmp-"):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    # mkdtemp makes the directory private (0700); the map takes the old map's mode, or the umask's default
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, target.stat().st_mode & 0o7777 if target.is_dir() else 0o777 & ~umask)
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    return False  # e.g. EINVAL on filesystems without exchange support: fall back


MAP_FILES = (MANIFEST, KEYFRAMES, DESCRIPTORS, INDEX, ENCODER, LOCAL_FEATURES, CAMERAS)


def carry_over_extras(old: Path, tmp: Path) -> None:
    """Entries of an existing map directory that are not map files (a README, a demo recording) go into the new
    version too, as hard links (no copying; a fallback copy across filesystems)."""
    if not old.is_dir():
        return
    for entry in old.iterdir():
        if entry.name in MAP_FILES or entry.name.startswith("."):
            continue
        dest = tmp / entry.name
        if dest.exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, dest, copy_function=_link_or_copy, symlinks=True)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), dest)
        else:
            _link_or_copy(entry, dest)


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def replace_directory(tmp: Path, target: Path) -> None:
    """Make the complete, fsynced directory `tmp` appear at `target`, replacing what was there."""
    if target.exists() and not target.is_dir():
        raise MapError(f"{target}: exists and is not a directory; not replacing it")
    if not target.exists():
        os.rename(tmp, target)
    elif _renameat2_exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # `tmp` now holds the old map
    else:
        # No atomic swap: move the old map aside first. A crash between the two renames leaves the old map
        # complete in the `.old-` directory beside the target.
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(target.parent)
