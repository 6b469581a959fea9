"""One immutable snapshot of what the localizer searches with: the encoder, the maps (each identified by its
directory) and the LocalizerConfig. Built whole by `load_snapshot` at configure time and by `with_maps` on reload, so a
reader holding a snapshot never sees half of an old one and half of a new one."""

from __future__ import annotations

from dataclasses import dataclass, replace
import os
from pathlib import Path

import numpy as np


class LoadError(RuntimeError):
    """Why the encoder or a map could not be loaded; the node shows it in the log and on /diagnostics."""


@dataclass(frozen=True)
class MapEntry:
    """A loaded map: `id` is its absolute directory (unique even when two maps share a name)."""

    id: str
    db: object  # geoloc_ros.mapping.MapDatabase
    descriptors: np.ndarray  # in row (capture) order, for sequence matching
    row_ids: np.ndarray  # keyframe id of each row

    @property
    def name(self) -> str:
        return self.db.name


@dataclass(frozen=True)
class Snapshot:
    encoder: object
    maps: tuple  # MapEntry, in map_path order
    config: object  # geoloc_ros.localization.config.LocalizerConfig
    encoder_file: str  # the checkpoint the encoder came from (attached to a saved session map)

    @property
    def primary_frame(self):
        """The first geotagged map's frame: poses from other maps are expressed in it."""
        return next((m.db.frame for m in self.maps if m.db.frame is not None), None)

    def entry(self, map_id: str) -> MapEntry | None:
        return next((m for m in self.maps if m.id == map_id), None)

    def with_maps(self, maps, map_paths) -> Snapshot:
        """A new snapshot with other maps (reload_map); the encoder and the rest of the config stay."""
        return replace(self, maps=tuple(maps), config=replace(self.config, maps=tuple(map_paths)))

    def placed(self, c):
        """Candidate `c` with its keyframe's position in the node's map frame (primary_frame, the frame of
        ~/pose). Session keyframes are already in it; a keyframe of a map this snapshot does not hold keeps its
        own map's coordinates."""
        k = c.keyframe
        if not k.has_position:
            return replace(c, position=None)
        entry = self.entry(c.map_id)
        x, y = reexpress(float(k.x), float(k.y), entry.db.frame if entry is not None else None, self.primary_frame)
        return replace(c, position=(x, y, float(k.z)))


def reexpress(x: float, y: float, frame, target) -> tuple[float, float]:
    """(x, y) of map frame `frame` in map frame `target` (geodesy.MapFrame, through WGS84); unchanged when either
    is unknown or they are the same frame."""
    if frame is None or target is None or frame == target:
        return x, y
    lat, lon, _ = frame.to_wgs84(x, y, 0.0)
    tx, ty, _ = target.to_local(lat, lon, 0.0)
    return float(tx), float(ty)


def map_id(path) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))


def load_maps(paths, encoder=None) -> list[MapEntry]:
    """Load the map directories `paths` (checked against `encoder` when given); LoadError names the bad one."""
    from geoloc_ros.mapping import MapDatabase, MapError

    entries = []
    for p in paths:
        if not Path(p).exists():
            raise LoadError(f"map_path {p!r}: no such map directory")
        try:
            db = MapDatabase.load(p, encoder=encoder)
        except (MapError, OSError, ValueError) as e:
            raise LoadError(f"map {p!r}: {e}") from None
        entries.append(MapEntry(map_id(p), db, np.asarray(db.descriptors), np.asarray(db.column("id"))))
    return entries


def load_snapshot(s) -> Snapshot:
    """Encoder + maps for `s` (a LocalizerConfig); LoadError with the reason when anything is wrong."""
    from geoloc_ros.mapping import MapError
    from geoloc_ros.mapping.database import check_encoder

    if s.device not in ("auto", "cpu", "cuda") and not s.device.startswith("cuda:"):
        raise LoadError(f"device {s.device!r}: expected auto, cpu, cuda or cuda:N")
    maps = load_maps(s.maps)
    first = maps[0].db if maps else None
    enc_path = s.encoder_path or (str(first.encoder_path) if first is not None and first.encoder_path else "")
    if not enc_path:
        raise LoadError("no encoder: set encoder_path" + (f" (map {s.maps[0]!r} carries none)" if maps else
                                                          " (no map_path given either)"))
    encoder = open_encoder(enc_path, s)
    for p, m in zip(s.maps, maps):
        try:
            check_encoder(p, m.db.dim, m.db.fingerprint, encoder)
        except MapError as e:
            raise LoadError(f"{e} (encoder {enc_path!r}), or set encoder_path to the map's") from None
    return Snapshot(encoder, tuple(maps), s, enc_path)


def open_encoder(path: str, s):
    """The encoder at `path` on the device and backend that `s` asks for."""
    import torch

    device = s.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LoadError(f"device {s.device!r}: CUDA is not available on this machine")
    # `auto` takes half_precision as a permission and checks reduced precision against fp32 itself, so bf16 may
    # run on a CPU that computes it natively; the named backends keep fp32 on a CPU.
    half = bool(s.half_precision) and (device.startswith("cuda") or s.encoder_backend == "auto")
    if s.inference_threads > 0:
        torch.set_num_threads(s.inference_threads)
    if s.encoder_backend != "torch":
        try:
            from geoloc_ros.deploy import open_encoder as open_backend
        except ImportError:
            raise LoadError(f"encoder_backend {s.encoder_backend!r}: only 'torch' is available here "
                            f"(geoloc_ros.deploy.open_encoder is not installed)") from None
        try:
            return open_backend(path, s.encoder_backend, device, half, threads=s.inference_threads or None)
        except (OSError, ValueError, RuntimeError) as e:
            raise LoadError(f"encoder {path!r} on backend {s.encoder_backend!r}: {e}") from None
    from geoloc_ros.model import load_encoder

    try:
        return load_encoder(path, device=device, half=half)
    except (OSError, ValueError) as e:
        raise LoadError(f"encoder {path!r}: {e}") from None


def describe_encoder(encoder) -> str:
    if encoder is None:
        return "none"
    choice = getattr(encoder, "backend_choice", None)
    return f"{getattr(encoder, 'fingerprint', '?')[:12]} dim {encoder.dim} on {getattr(encoder, 'device', '?')}" + (
        " fp16" if getattr(encoder, "half", False) else "") + (f" ({choice})" if choice else "")


def carries_checkpoint(encoder_file: str) -> bool:
    """Whether a session map can carry `encoder_file`: a PyTorch checkpoint can be attached (every backend, auto
    included, keeps its fingerprint); an ONNX file given to onnxruntime / tensorrt cannot."""
    return bool(encoder_file) and not str(encoder_file).lower().endswith(".onnx")


def backend_values(encoder) -> dict:
    """/diagnostics values of the inference path: `backend` (auto's choice, e.g. "onnxruntime", or the named backend)
    and `backend_reason` (why auto chose it; empty for a named backend)."""
    if encoder is None:
        return {"backend": "none", "backend_reason": ""}
    return {"backend": getattr(encoder, "backend_choice", None) or getattr(encoder, "backend", None) or "torch",
            "backend_reason": getattr(encoder, "backend_reason", "")}
