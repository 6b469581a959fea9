"""The on-disk map: one directory, written atomically, verified on load.

    MAP/manifest.json        format, version, name, counts, encoder dim + fingerprint, coordinate reference,
                             index factory, and the size + sha256 of every other file; it checksums itself too
    MAP/keyframes.sqlite     keyframe metadata, one row per keyframe, `row` = its row in the descriptors/index
    MAP/descriptors.npy      float32 (N, dim), L2-normalised, in row order
    MAP/index.faiss          the FAISS index over those rows (inner product)
    MAP/index.ivfdata        on-disk maps only: the IVF index's inverted lists (FAISS OnDiskInvertedLists)
    MAP/encoder.safetensors  optional: the encoder checkpoint the map was built with
    MAP/features.npz, MAP/cameras.json  optional: keyframes' local features and camera models (mapping/features.py)
    MAP/text_tower.safetensors  optional: the encoder's CLIP text tower (language/text_tower.py)
    MAP/combiner.safetensors    optional: the encoder's feature combiner for descriptions (model/fused_encoder.py)
    MAP/structure.npz        optional: keyframes' camera poses and 3D points (mapping/structure.py)

A map is written into a temporary sibling directory, every file and the directory are fsynced, and the
directory is then renamed over the old one (swapped atomically where the kernel offers renameat2), so a crash
at any moment leaves either the old map or the new one, never a mixture.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import json
import math
import os
from pathlib import Path
import shutil
import tempfile

import numpy as np

from geoloc_ros.mapping.errors import MapError
from geoloc_ros.mapping.keyframe_table import read_keyframes, write_keyframes  # noqa: F401 - storage's API

FORMAT = "geoloc_ros.map"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KEYFRAMES = "keyframes.sqlite"
DESCRIPTORS = "descriptors.npy"
INDEX = "index.faiss"
IVFDATA = "index.ivfdata"  # on-disk maps: the inverted lists, memory-mapped on search (mapping/large.py)
ENCODER = "encoder.safetensors"
LOCAL_FEATURES = "features.npz"  # optional: per-keyframe local features (mapping/features.py)
CAMERAS = "cameras.json"  # optional: the keyframes' camera models (mapping/features.py)
TEXT_TOWER = "text_tower.safetensors"  # optional: the encoder's CLIP text tower (language/text_tower.py)
COMBINER = "combiner.safetensors"  # optional: the encoder's feature combiner (model/fused_encoder.py)
ENCODER_SIDECARS = (TEXT_TOWER, COMBINER)  # files that travel beside the encoder checkpoint, and with it
STRUCTURE = "structure.npz"  # optional: keyframes' camera poses and 3D points (mapping/structure.py)
_SELF_CHECKSUM = "manifest_sha256"


# -- targets: never write over what is not ours -------------------------------------------------------------

def is_map_of_ours(folder: Path) -> bool:
    """True when `folder` holds a manifest.json of this format (a map we wrote, intact or not)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def refuse_foreign_target(path) -> Path:
    """A map writer's target must be absent, an empty directory, or a map of ours; anything else (a home
    directory, a repository, a file) is refused with MapError naming it and a few of its entries, so that the
    atomic replace of a save never swaps away files it did not write. Returns the path."""
    target = Path(path).expanduser()
    if not target.exists() and not target.is_symlink():
        return target
    if not target.is_dir():
        raise MapError(f"{target}: exists and is not a directory; not writing a map over it")
    if is_map_of_ours(target):
        return target
    entries = sorted(e.name for e in target.iterdir())
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise MapError(f"{target}: not a geoloc_ros map (no {MANIFEST} of ours) and not empty ({shown}); refusing "
                       f"to write a map over it. Choose a new or empty directory")
    return target


# What `geoloc train` writes into its --run-dir (geoloc_ros/model/training.py, cli/train.py)
TRAINING_OUTPUTS = ("stage1.pt", "stage2.pt", "encoder.safetensors", "encoder_last.safetensors",
                    "encoder.tmp.safetensors", "config.json", TEXT_TOWER, COMBINER)


def safe_output_dir(path, own_names) -> Path:
    """An output folder for a writer that puts files named `own_names` into it (training: stage1.pt, ...).
    Created when absent; an existing one must hold nothing but such files (a previous run's), else MapError
    names the foreign entries. Files are never deleted here. Returns the path. For `geoloc train --run-dir`:
    safe_output_dir(run_dir, TRAINING_OUTPUTS)."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise MapError(f"{folder}: exists and is not a directory")
    own = set(own_names) | {f"{n}.tmp" for n in own_names}  # NAME.tmp: an atomic write of ours cut short
    if folder.is_dir():
        foreign = sorted(e.name for e in folder.iterdir() if e.name not in own)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise MapError(f"{folder}: holds files this writer did not write ({shown}); refusing to write into it. "
                           f"Choose a new or empty directory")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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
    try:
        canonical = manifest_bytes(manifest)
    except (TypeError, ValueError) as e:  # NaN or Infinity, which canonical JSON does not allow
        raise MapError(f"{path}: not canonical JSON ({e})") from None
    if raw != canonical:
        raise MapError(f"{path}: checksum mismatch, the manifest was altered or truncated")
    return manifest


def verify_files(folder: Path, manifest: dict, skip=()) -> None:
    """Every file the manifest lists (but those in `skip`, read with `read_verified`) exists with its recorded
    size and sha256."""
    for name in sorted(manifest["files"]):
        if name not in skip:
            read_verified(folder, manifest, name, keep=False)


def read_verified(folder: Path, manifest: dict, name: str, keep: bool = True):
    """The bytes of the map file `name` as a uint8 array, read once into memory and checked against the
    manifest's size and sha256: what is parsed is exactly what was verified, and nothing stays memory-mapped
    (a map file overwritten with `cp` under a running node used to kill it with SIGBUS). keep=False only checks."""
    expect = manifest["files"][name]
    path = folder / name
    if Path(name).name != name:
        raise MapError(f"{folder / MANIFEST}: bad file name {name!r}")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != expect["bytes"]:
                raise MapError(f"{path}: {size} bytes, the manifest says {expect['bytes']} (truncated or altered)")
            buf = np.empty(size if keep else 0, dtype=np.uint8)
            if keep:
                done = _read_into(f, memoryview(buf))
                digest = hashlib.sha256(buf).hexdigest()
            else:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
                done = f.tell()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise MapError(f"{path}: missing (the manifest lists it)") from None
    if done != size:
        raise MapError(f"{path}: changed while it was read ({done} of {size} bytes)")
    if digest != expect["sha256"]:
        raise MapError(f"{path}: checksum mismatch (sha256 differs from the manifest), the file was altered")
    return buf


def _read_into(f, view: memoryview) -> int:
    done = 0
    while done < len(view) and (n := f.readinto(view[done:])):
        done += n
    return done


def parse_faiss_index(path: Path, raw: np.ndarray, io_flags: int = 0):
    """A FAISS index held in memory (`raw`, uint8) -> the index, read through a callback in 1 MiB pieces
    (faiss.deserialize_index would first copy all of `raw` into a std::vector: one more copy of the index at
    the peak of a load). `io_flags`: faiss.IO_FLAG_SKIP_IVF_DATA for an index whose lists are on disk."""
    import faiss

    _check_flat_layout(path, raw)
    view, pos = memoryview(raw), 0

    def read(n: int) -> bytes:
        nonlocal pos
        chunk = view[pos:pos + n].tobytes()
        pos += len(chunk)
        return chunk

    try:
        index = faiss.read_index(faiss.PyCallbackIOReader(read), io_flags)
    except (RuntimeError, MemoryError, ValueError, TypeError) as e:  # FAISS's C++ exceptions arrive as these
        raise MapError(f"{path}: not a readable FAISS index ({(str(e).splitlines() or [''])[0][:200]})") from None
    if pos != raw.size:
        raise MapError(f"{path}: {raw.size - pos} bytes after the end of the FAISS index (altered)")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise MapError(f"{path}: the FAISS index does not use the inner product metric")
    return index


def _check_flat_layout(path: Path, raw: np.ndarray) -> None:
    """A flat index (the default "Flat" factory) is checked byte for byte before FAISS reads it: FAISS sizes its
    buffers from counts in the file, so a crafted count would have it allocate (and zero) far more than the file
    holds. Header: fourcc, d (int32), ntotal, two int64s, is_trained (uint8), metric (int32, + float argument
    for metrics > 1), then the float count of the codes (uint64) and the codes."""
    head = raw[:64].tobytes()
    if head[:4] not in (b"IxFI", b"IxF2") or len(head) < 45:
        return  # other index kinds: FAISS's own checks (counts below 2^40)
    d = int.from_bytes(head[4:8], "little", signed=True)
    ntotal = int.from_bytes(head[8:16], "little", signed=True)
    metric = int.from_bytes(head[33:37], "little", signed=True)
    at = 37 + (4 if metric > 1 else 0)
    floats = int.from_bytes(head[at:at + 8], "little")
    if d <= 0 or ntotal < 0 or floats != d * ntotal or raw.size != at + 8 + 4 * floats:
        raise MapError(f"{path}: a flat FAISS index whose header (d {d}, ntotal {ntotal}, {floats} floats) does not "
                       f"describe its {raw.size} bytes (truncated or altered)")


def map_verified_npy(folder: Path, manifest: dict, name: str, chunk: int = 1 << 26) -> np.ndarray:
    """The map file `name`, a .npy of finite float32 values, checked in one streaming pass against the manifest's
    size and sha256 (and every value finite), then memory-mapped read-only: for descriptors that stay on disk.
    Unlike `read_verified`, the bytes used later are the file's, not a verified copy."""
    path = folder / name
    expect = manifest["files"][name]
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != expect["bytes"]:
                raise MapError(f"{path}: {size} bytes, the manifest says {expect['bytes']} (truncated or altered)")
            head = f.read(min(size, 4096))
            array = parse_npy(path, np.frombuffer(head, dtype=np.uint8), header_only=size)
            offset = size - math.prod(array.shape) * array.dtype.itemsize
            if array.dtype != np.float32 or offset % 4:
                raise MapError(f"{path}: expected a float32 array, got {array.dtype}")
            f.seek(0)
            h, done, finite = hashlib.sha256(), 0, True
            while block := f.read(chunk):
                h.update(block)
                start = max(offset - done, 0)
                body = block[start:start + (len(block) - start) // 4 * 4]
                finite = finite and bool(np.isfinite(np.frombuffer(body, dtype=np.float32)).all())
                done += len(block)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise MapError(f"{path}: missing (the manifest lists it)") from None
    if done != size:
        raise MapError(f"{path}: changed while it was read ({done} of {size} bytes)")
    if h.hexdigest() != expect["sha256"]:
        raise MapError(f"{path}: checksum mismatch (sha256 differs from the manifest), the file was altered")
    if not finite:
        raise MapError(f"{path}: holds NaN or infinite values")
    return random_access(np.memmap(path, dtype=np.float32, mode="r", offset=offset, shape=array.shape))


def random_access(array: np.memmap) -> np.memmap:
    """Tell the kernel that `array` (memory-mapped) is read a few rows at a time, at random: a page fault then
    reads its page, not a read-ahead window around it (re-ranking 300 rows of a 20 GB file read ~40 MB a
    query with the default)."""
    import mmap

    if getattr(array, "_mmap", None) is not None and hasattr(mmap, "MADV_RANDOM"):
        array._mmap.madvise(mmap.MADV_RANDOM)
    return array


def parse_npy(path: Path, raw: np.ndarray, header_only: int | None = None) -> np.ndarray:
    """A .npy file held in memory (`raw`, uint8) -> its array, a view of `raw` (no second copy). The header's
    shape and type must describe exactly the bytes that follow it."""
    fp = io.BytesIO(raw[:4096].tobytes())
    try:
        version = np.lib.format.read_magic(fp)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(fp)
    except Exception as e:  # noqa: BLE001 - numpy's header parser raises ValueError, SyntaxError, TokenError...
        raise MapError(f"{path}: not a readable .npy array ({type(e).__name__}: {str(e)[:200]})") from None
    if fortran or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.itemsize == 0:
        raise MapError(f"{path}: not a C-ordered plain numeric .npy array ({dtype})")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise MapError(f"{path}: bad array shape {shape}")
    if header_only is not None:  # `raw` is the file's start, `header_only` its size: an empty array of the shape
        if header_only - fp.tell() != math.prod(shape) * dtype.itemsize:
            raise MapError(f"{path}: {header_only - fp.tell()} data bytes for an array of shape {shape} {dtype}")
        return np.lib.stride_tricks.as_strided(np.empty(1, dtype=dtype), shape=shape, strides=(0,) * len(shape))
    body = raw[fp.tell():]
    if body.size != math.prod(shape) * dtype.itemsize:  # Python integers: a crafted shape cannot overflow
        raise MapError(f"{path}: {body.size} data bytes for an array of shape {shape} {dtype}")
    return body.view(dtype).reshape(shape)


def parse_npz(path: Path, raw: np.ndarray, names) -> dict:
    """An uncompressed .npz held in memory (`raw`, uint8) -> {name: array} for `names`, every one required (the
    archive is read in place, each array copied out once). Members must be stored, not compressed (numpy's
    `savez` stores them), so nothing is inflated beyond the file's own size, and each member's CRC is checked.
    Raises MapError naming the file."""
    import zipfile
    import zlib

    try:
        with zipfile.ZipFile(_ArrayFile(raw)) as z:
            members = {info.filename: info for info in z.infolist()}
    except Exception as e:  # noqa: BLE001 - zipfile raises many types for damaged archives (BadZipFile, EOFError...)
        raise MapError(f"{path}: not a readable .npz archive ({type(e).__name__}: {str(e)[:200]})") from None
    out = {}
    for name in names:
        info = members.get(f"{name}.npy")
        if info is None:
            raise MapError(f"{path}: no array {name!r} (it holds {sorted(members)[:10]})")
        where = Path(f"{path}:{info.filename}")
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise MapError(f"{where}: compressed ({info.compress_size} bytes that inflate to {info.file_size}); "
                           f"only stored members are read")
        local = raw[info.header_offset:info.header_offset + 30].tobytes()
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise MapError(f"{where}: no local header where the directory says")
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + \
            int.from_bytes(local[28:30], "little")
        if start + info.file_size > raw.size:
            raise MapError(f"{where}: {info.file_size} bytes past the end of the file")
        member = raw[start:start + info.file_size]
        if zlib.crc32(member) != info.CRC:
            raise MapError(f"{where}: CRC mismatch (altered)")
        out[name] = parse_npy(where, member).copy()  # aligned arrays of their own (members start at any byte)
    return out


class _ArrayFile(io.RawIOBase):
    """A read-only, seekable file over a uint8 array, for zipfile to read the archive directory without a copy."""

    def __init__(self, raw: np.ndarray):
        self._view, self._pos = memoryview(raw).cast("B"), 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def readinto(self, buffer):
        chunk = self._view[self._pos:self._pos + len(buffer)]
        buffer[:len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def describe_files(folder: Path) -> dict:
    """Size and sha256 of the map's own files (extras such as a README are not part of the map)."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name in MAP_FILES and p.name != MANIFEST}


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


MAP_FILES = (MANIFEST, KEYFRAMES, DESCRIPTORS, INDEX, IVFDATA, ENCODER, LOCAL_FEATURES, CAMERAS, *ENCODER_SIDECARS,
             STRUCTURE)


def carry_over_extras(old: Path, tmp: Path) -> None:
    """Entries of an existing map directory that are not map files (a README, a demo recording) go into the new
    version too, as hard links (no copying; a fallback copy across filesystems)."""
    if not old.is_dir():
        return
    for entry in old.iterdir():
        if entry.name in MAP_FILES:
            continue  # hidden entries (.git, .env) are kept too: a save never drops what it did not write
        dest = tmp / entry.name
        if dest.exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, dest, copy_function=_link_or_copy, symlinks=True)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), dest)
        else:
            _link_or_copy(entry, dest)


def link_or_copy(src, dst):
    """A hard link of `src` at `dst` (no copying; a copy across filesystems)."""
    _link_or_copy(src, dst)


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
