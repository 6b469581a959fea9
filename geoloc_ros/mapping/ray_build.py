"""Map building on Ray (`geoloc map build --engine ray`, docs/maps.md "Building on Ray").

The frames of a build (image files and recorded messages, as references: `plan_rows`) become a Ray Dataset; its
`map_batches` runs `FrameEncoder` actors (the encoder loaded once per actor, one GPU each where the cluster has
GPUs, else one CPU each), which decode, check, encode and detect local features with the functions of
`geoloc_ros.mapping.batch`, as the single-process builder does. Each batch that comes back is written as a part
in the build's work folder (`work_dir_for(out)`): `part-*.npz` (descriptors and features of its frames) and
`part-*.json` (its frames' slots, the inputs they come from, the reasons of frames that could not be decoded, the
npz's sha256). `assemble` adds the parts to the map in frame order, so the keyframes and their ids are those of
the single-process build. A rerun of the same build (same frames, encoder and detector: `build.json`) skips the
frames of every part whose checksum holds; a killed actor is restarted and its batch retried (`max_restarts`,
`max_task_retries`).

Ray is imported only here and only when a build asks for it (`pip install .[ray]`, requirements-ray.txt).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
import signal
import warnings

import numpy as np

from geoloc_ros.geometry.features import Features
from geoloc_ros.mapping.bag import BagFrame
from geoloc_ros.mapping.batch import detect_features, encode_images, read_frames
from geoloc_ros.mapping.storage import MapError

RAY_MISSING = ("--engine ray needs Ray, an optional extra: pip install 'geoloc_ros[ray]' (or pip install -r "
               "requirements-ray.txt)")
BUILD_FILE = "build.json"
RETRIES = 3  # restarts of a dead actor, and retries of the batch it was running
# Fault injection for the tests: an actor that finds this file removes it and kills its own process (once).
KILL_ONCE_ENV = "GEOLOC_RAY_KILL_ONCE"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is the extra's [data] part
    except ImportError:
        raise MapError(RAY_MISSING) from None
    return ray


def work_dir_for(out) -> Path:
    """The build's work folder: a hidden sibling of the map directory, removed once the map is saved."""
    out = Path(out).expanduser().resolve()
    return out.parent / f".{out.name}.ray-parts"


# -- the frames of a build as rows --------------------------------------------------------------------------------

def plan_rows(items, inputs) -> list[dict]:
    """One row per frame: `items` the (keyframe, source) pairs of the whole build in order, `inputs` the input
    number of each. A source is an image path or a BagFrame (arrays are not references: refused)."""
    rows = []
    for slot, ((keyframe, source), inp) in enumerate(zip(items, inputs)):
        row = {"slot": slot, "input": int(inp), "path": "", "bag": "", "topic": "", "time_ns": 0,
               "caption": keyframe.caption}
        if isinstance(source, BagFrame):
            row.update(bag=source.bag, topic=source.topic, time_ns=int(source.time_ns))
        elif isinstance(source, (str, Path)):
            row["path"] = str(Path(source).resolve())
        else:
            raise MapError(f"frame {slot}: the Ray engine takes image files and recordings, not decoded arrays")
        rows.append(row)
    return rows


def _row_source(path, bag, topic, time_ns):
    return BagFrame(str(bag), str(topic), int(time_ns)) if bag else str(path)


def build_key(rows, fingerprint: str, detector: str | None, max_keypoints: int) -> str:
    """What the parts of a work folder were computed from: another key means other parts."""
    doc = {"fingerprint": fingerprint, "detector": detector, "max_keypoints": max_keypoints,
           "rows": [[r["path"], r["bag"], r["topic"], r["time_ns"], r["caption"]] for r in rows]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# -- the actor ------------------------------------------------------------------------------------------------------

class FrameEncoder:
    """The `map_batches` actor: loads the encoder once, then turns batches of frame rows into descriptor rows."""

    def __init__(self, encoder_path: str, device: str, detector: str | None, max_keypoints: int, batch_size: int):
        from geoloc_ros.model import load_encoder

        self.encoder = load_encoder(encoder_path, device=device)
        self.detector, self.max_keypoints, self.batch_size = detector, int(max_keypoints), int(batch_size)

    def __call__(self, batch: dict) -> dict:
        _kill_once()
        slots = np.asarray(batch["slot"], dtype=np.int64)
        sources = [_row_source(*r) for r in zip(batch["path"], batch["bag"], batch["topic"], batch["time_ns"])]
        errors: list[str] = []
        images = read_frames(sources, errors)
        ok = np.array([im is not None for im in images], dtype=bool)
        decoded = [im for im in images if im is not None]
        captions = [str(c) for c, keep in zip(batch["caption"], ok) if keep]
        dim = int(self.encoder.dim)
        descriptors = np.zeros((len(slots), dim), np.float32)
        packed = [b""] * len(slots)
        if decoded:
            descriptors[ok] = encode_images(self.encoder, decoded, captions, self.batch_size)
            if self.detector:
                feats = detect_features(decoded, self.detector, self.max_keypoints, labels=slots[ok].tolist())
                for n, f in zip(np.flatnonzero(ok), feats):
                    packed[n] = _pack_features(f)
        # the reasons of the batch's undecodable frames ride on its first row
        reasons = [json.dumps(errors)] + ["[]"] * (len(slots) - 1)
        return {"slot": slots, "input": np.asarray(batch["input"], dtype=np.int64), "ok": ok,
                "descriptor": descriptors, "features": np.array(packed, dtype=object),
                "errors": np.array(reasons, dtype=object)}


def _kill_once():
    flag = os.environ.get(KILL_ONCE_ENV)
    if not flag:
        return
    try:
        os.unlink(flag)
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _pack_features(f: Features) -> bytes:
    w, h = f.image_size or (0, 0)
    head = np.array([len(f), f.descriptors.shape[1], w, h], dtype=np.int64)
    return head.tobytes() + f.keypoints.astype(np.float32).tobytes() + f.descriptors.astype(np.uint8).tobytes()


def _unpack_features(raw: bytes, detector: str) -> Features:
    n, width, w, h = (int(v) for v in np.frombuffer(raw[:32], dtype=np.int64))
    kp = np.frombuffer(raw[32:32 + 8 * n], dtype=np.float32).reshape(n, 2)
    desc = np.frombuffer(raw[32 + 8 * n:32 + 8 * n + n * width], dtype=np.uint8).reshape(n, width)
    return Features(kp, desc, detector, None, (w, h) if w and h else None)


# -- parts ----------------------------------------------------------------------------------------------------------

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_part(work_dir: Path, result: dict) -> str:
    """Write one batch of results as a part (npz, then the json that vouches for it); returns its name."""
    slots = np.asarray(result["slot"], dtype=np.int64)
    order = np.argsort(slots, kind="stable")
    slots = slots[order]
    ok = np.asarray(result["ok"], dtype=bool)[order]
    features = [result["features"][i] for i in order]
    packed = [bytes(f) if f is not None else b"" for f in features]
    sizes = np.array([len(p) for p in packed], dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, slot=slots, ok=ok, descriptor=np.asarray(result["descriptor"], dtype=np.float32)[order],
             feature_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
             feature_bytes=np.frombuffer(b"".join(packed), dtype=np.uint8))
    data = buf.getvalue()
    name = f"part-{int(slots[0]):09d}-{len(slots):06d}-{_sha256(slots.tobytes())[:8]}"
    errors = [e for raw in result["errors"] for e in json.loads(str(raw))]
    doc = {"slots": slots.tolist(), "inputs": sorted(set(np.asarray(result["input"]).tolist())),
           "frames": len(slots), "unreadable": errors, "sha256": _sha256(data)}
    _write_atomic(work_dir / f"{name}.npz", data)
    _write_atomic(work_dir / f"{name}.json", json.dumps(doc, sort_keys=True).encode())
    return name


def finished_parts(work_dir: Path) -> dict[str, dict]:
    """name -> part description of every part whose npz matches its checksum; parts that do not are removed."""
    parts = {}
    for doc_path in sorted(work_dir.glob("part-*.json")):
        npz = doc_path.with_suffix(".npz")
        try:
            doc = json.loads(doc_path.read_bytes())
            good = _is_part_doc(doc) and npz.is_file() and _sha256(npz.read_bytes()) == doc["sha256"]
        except (OSError, ValueError, RecursionError):
            good = False
        if good:
            parts[doc_path.stem] = doc
        else:
            doc_path.unlink(missing_ok=True)
            npz.unlink(missing_ok=True)
    return parts


def _is_part_doc(doc) -> bool:
    """Whether a part's json has the fields `write_part` writes, of their types (anything else: redo the part)."""
    def ints(v):
        return isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)

    return (isinstance(doc, dict) and ints(doc.get("slots")) and len(doc["slots"]) > 0 and ints(doc.get("inputs"))
            and isinstance(doc.get("unreadable"), list) and all(isinstance(e, str) for e in doc["unreadable"])
            and isinstance(doc.get("sha256"), str))


def prepare_work_dir(work_dir: Path, key: str) -> None:
    """Create the work folder, or keep the parts of an earlier run of the same build (`key`); the parts of another
    build are removed (only files this engine writes are ever touched)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp = work_dir / BUILD_FILE
    try:
        same = json.loads(stamp.read_text()).get("key") == key
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        for f in list(work_dir.glob("part-*.npz")) + list(work_dir.glob("part-*.json")) + \
                list(work_dir.glob("part-*.tmp")):
            f.unlink()
        _write_atomic(stamp, json.dumps({"key": key}).encode())


def remove_work_dir(work_dir: Path) -> None:
    for f in list(work_dir.glob("part-*")) + [work_dir / BUILD_FILE]:
        f.unlink(missing_ok=True)
    try:
        work_dir.rmdir()
    except OSError:
        pass  # something else was put there: left alone


# -- running --------------------------------------------------------------------------------------------------------

def init_ray(address: str | None = None, workers: int = 2):
    """Ray connected: an already initialised session as it is; `address` (or RAY_ADDRESS) a cluster; else a local
    Ray of `workers` CPUs."""
    ray = import_ray()
    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        elif os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(num_cpus=int(workers), include_dashboard=False)
    return ray


def encode_parts(rows: list[dict], encoder_path, work_dir: Path, key: str, *, workers: int = 2,
                 detector: str | None = None, max_keypoints: int = 0, batch_size: int = 64,
                 part_size: int = 256, progress=None) -> dict:
    """Encode every row not yet in a finished part of `work_dir` with `workers` FrameEncoder actors (Ray must be
    initialised: `init_ray`). Returns {"parts_written", "parts_kept", "frames_encoded"}."""
    ray = import_ray()
    prepare_work_dir(work_dir, key)
    finished = finished_parts(work_dir)
    done = {s for doc in finished.values() for s in doc["slots"]}
    kept = len(finished)
    pending = [r for r in rows if r["slot"] not in done]
    written = 0
    if pending:
        gpus = ray.cluster_resources().get("GPU", 0) > 0
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        blocks = max(int(workers), -(-len(pending) // part_size))  # every actor gets work
        ds = ray.data.from_items(pending, override_num_blocks=min(blocks, len(pending)))
        with warnings.catch_warnings():
            # bounded restarts (Ray Data's default restarts a dying actor forever) are still set as remote args
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
            ds = ds.map_batches(
                FrameEncoder, batch_size=part_size, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=int(workers)),
                fn_constructor_kwargs={"encoder_path": str(Path(encoder_path).resolve()),
                                       "device": "cuda" if gpus else "cpu", "detector": detector,
                                       "max_keypoints": max_keypoints, "batch_size": batch_size},
                max_restarts=RETRIES, max_task_retries=RETRIES, **resources)
        for result in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if len(result["slot"]):
                write_part(work_dir, result)
                written += 1
                if progress is not None:
                    progress(len(result["slot"]))
    return {"parts_written": written, "parts_kept": kept, "frames_encoded": len(pending)}


def assemble(db, items, work_dir: Path, camera_for=None, unreadable: list | None = None) -> dict[int, int]:
    """Add the parts of `work_dir` to `db` in frame order (`items`: the build's (keyframe, source) pairs, whose
    slot is their position): the keyframes, ids and features of the single-process build, each feature set with
    the camera model `camera_for(slot)`. Returns {slot: id added}; the reasons of undecodable frames go to
    `unreadable` (MapError without it)."""
    parts = sorted(finished_parts(work_dir).items(), key=lambda p: p[1]["slots"][0])
    covered = sorted(s for _, doc in parts for s in doc["slots"])
    if covered != list(range(len(items))):
        raise MapError(f"{work_dir}: the parts cover {len(covered)} of {len(items)} frames; rerun the build")
    store = db.local_features
    ids = {}
    for name, doc in parts:
        if doc["unreadable"]:
            if unreadable is None:
                raise MapError(doc["unreadable"][0])
            unreadable.extend(doc["unreadable"])
        path = work_dir / f"{name}.npz"
        try:
            with np.load(io.BytesIO(path.read_bytes())) as z:
                slots, ok, descriptors = z["slot"], z["ok"].astype(bool), z["descriptor"]
                offsets, blob = z["feature_offsets"], z["feature_bytes"].tobytes()
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise MapError(f"{path}: not a part of this engine ({type(e).__name__}: {e})") from None
        n = len(doc["slots"])
        if (slots.tolist() != doc["slots"] or ok.shape != (n,) or descriptors.shape != (n, db.dim)
                or offsets.shape != (n + 1,)):
            raise MapError(f"{path}: does not hold the frames its json lists; remove {work_dir} and rerun")
        keep = np.flatnonzero(ok)
        if not len(keep):
            continue
        added = db.add(descriptors[keep], [items[int(slots[i])][0] for i in keep])
        for kid, i in zip(added, keep):
            ids[int(slots[i])] = kid
            if store is not None:
                try:
                    feats = _unpack_features(blob[offsets[i]:offsets[i + 1]], store.detector)
                except ValueError as e:
                    raise MapError(f"{path}: frame {int(slots[i])}: features unreadable ({e})") from None
                store.add(kid, feats, camera_for(int(slots[i])) if camera_for is not None else None)
    return ids
