"""Does an encoder belong with a map? Dimension and fingerprint checks, and the fingerprint an encoder.safetensors
carries, read from its header without loading weights (or torch)."""

from __future__ import annotations

from pathlib import Path

from geoloc_ros.mapping import storage
from geoloc_ros.mapping.storage import MapError
from geoloc_ros.model.checkpoint import read_safetensors_metadata


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
    """The fingerprint of the encoder in an encoder.safetensors, read from headers without loading weights (or
    torch): the fused encoder's when a feature combiner sits beside it (model/fused_encoder.py)."""
    path = Path(path)
    combiner = path.parent / storage.COMBINER
    if combiner.is_file():
        path = combiner
    try:
        return read_safetensors_metadata(path)["fingerprint"]
    except (OSError, ValueError, KeyError) as e:  # CheckpointError is a ValueError
        raise MapError(f"{path}: not an encoder checkpoint with a fingerprint ({e})") from None
