"""Does an encoder belong with a map? Dimension and fingerprint checks, and the fingerprint an encoder.safetensors
carries, read from its header without loading weights (or torch)."""

from __future__ import annotations

import json
from pathlib import Path

from geoloc_ros.mapping import storage
from geoloc_ros.mapping.storage import MapError


def carried_encoder(folder: Path, files: dict, fingerprint: str) -> Path | None:
    if storage.ENCODER not in files:
        return None
    encoder_path = folder / storage.ENCODER
    carried = read_encoder_fingerprint(encoder_path)
    if carried != fingerprint:
        raise MapError(f"{encoder_path}: the carried encoder's fingerprint {carried[:12]}... is not the map's "
                       f"{fingerprint[:12]}...")
    return encoder_path


def check_encoder(folder, dim: int, fingerprint: str, encoder) -> None:
    """Refuse an encoder whose descriptors do not belong in this map."""
    if int(encoder.dim) != dim:
        raise MapError(f"{folder}: map descriptors have dimension {dim}, the encoder produces {encoder.dim}; "
                       f"rebuild the map with this encoder")
    if encoder.fingerprint != fingerprint:
        raise MapError(f"{folder}: map was built with encoder fingerprint {fingerprint[:12]}..., the given "
                       f"encoder's is {encoder.fingerprint[:12]}... (different weights or preprocessing); rebuild "
                       f"the map with this encoder")


def read_encoder_fingerprint(path) -> str:
    """The fingerprint in an encoder.safetensors header, read without loading weights (or torch)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100_000_000:
                raise ValueError("bad header length")
            meta = json.loads(f.read(n)).get("__metadata__", {})
        return meta["fingerprint"]
    except (OSError, ValueError, KeyError) as e:
        raise MapError(f"{path}: not an encoder checkpoint with a fingerprint ({e})") from None
