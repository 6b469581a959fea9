"""Merging maps built with the same encoder into one (keyframe ids renumbered, positions re-expressed in the
first geotagged map's frame): `merge_maps` re-indexes the descriptors, `merge_parts` merges the codes of parts
filled from one trained IVF index as they are, into an on-disk map."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geoloc_ros.mapping import large, storage
from geoloc_ros.mapping.database import MapDatabase
from geoloc_ros.mapping.storage import MapError


def _check_mergeable(maps: list[MapDatabase]):
    """Same encoder everywhere, and positions that can share one frame; returns the merged map's frame."""
    if not maps:
        raise MapError("nothing to merge")
    first = maps[0]
    for m in maps[1:]:
        if m.dim != first.dim or m.fingerprint != first.fingerprint:
            raise MapError(f"map {m.name!r} was built with another encoder (dim {m.dim}, fingerprint "
                           f"{m.fingerprint[:12]}...) "
                           f"than {first.name!r} (dim {first.dim}, {first.fingerprint[:12]}...)")
    geo = [m for m in maps if m.frame is not None]
    local = [m for m in maps if m.frame is None and (m.positions() == m.positions()).any()]
    if geo and local:
        raise MapError(f"cannot merge geotagged maps with map {local[0].name!r}, whose positions have no geotags")
    if len(local) > 1:
        raise MapError("cannot merge several maps whose positions have no geotags (their frames are unrelated)")
    return geo[0].frame if geo else None


def _renumbered(maps: list[MapDatabase]) -> list:
    keyframes = []
    for m in maps:
        for k in m.keyframes():
            # Geotagged keyframes get x/y/z again from lat/lon in the merged frame; ids are renumbered.
            keyframes.append(k.replace(id=-1) if m.frame is None else
                             k.replace(id=-1, x=float("nan"), y=float("nan"), z=float("nan")))
    return keyframes


def merge_maps(maps: list[MapDatabase], name: str, index_factory: str | None = None) -> MapDatabase:
    frame = _check_mergeable(maps)
    first = maps[0]
    factory = index_factory or first.index_factory
    merged = MapDatabase.create(name, first.dim, first.fingerprint, frame, factory,
                                first.search_params if factory == first.index_factory else None, first.rerank)
    carrier = next((m for m in maps if m.encoder_path is not None), None)
    if carrier is not None:
        merged.attach_encoder(carrier.encoder_path)
    descriptors = np.concatenate([m.descriptors for m in maps], axis=0)
    new_ids = merged.add(descriptors, _renumbered(maps))
    from geoloc_ros.mapping.features import merged_store

    merged.local_features = merged_store(maps, new_ids)
    return merged


def merge_parts(maps: list[MapDatabase], name: str, work_dir: Path, quantiser_from: MapDatabase | None = None
                ) -> MapDatabase:
    """Parts of one map, whose IVF indexes were filled from one trained index (mapping/large.py): their codes
    are merged as they are, never re-encoded, into an on-disk map (inverted lists in `work_dir`/index.ivfdata,
    descriptors in `work_dir`/descriptors.npy until the map is saved, which links them in). Parts with another
    encoder, a non-IVF index or another quantiser are refused with the reason. `quantiser_from`: an IVF map
    whose trained quantiser the parts share; a part that does not (any index kind) has its stored descriptors
    coded with it instead (the image encoder never runs again)."""
    frame = _check_mergeable(maps)
    first = quantiser_from or maps[0]
    if (first.dim, first.fingerprint) != (maps[0].dim, maps[0].fingerprint):
        raise MapError(f"map {first.name!r} was built with another encoder (dim {first.dim}, fingerprint "
                       f"{first.fingerprint[:12]}...) than {maps[0].name!r}")
    if large.ivf_of(first.index) is None:
        raise MapError(f"map {first.name!r} has a {first.index_factory!r} index, not an IVF index: its quantiser "
                       f"cannot code the parts")
    digest = large.quantiser_digest(first.index)
    indexes = []
    for m in maps:
        if large.ivf_of(m.index) is not None and large.quantiser_digest(m.index) == digest:
            indexes.append(m.index)
        elif quantiser_from is not None:
            indexes.append(large.fill_part(large.empty_like(first.index), m.descriptors, 0))
        elif large.ivf_of(m.index) is None:
            raise MapError(f"map {m.name!r} has a {m.index_factory!r} index, not an IVF index: only IVF parts "
                           f"filled from one trained index merge without re-encoding (--quantiser-from codes "
                           f"such parts with one map's quantiser; merge without --parts re-indexes)")
        else:
            raise MapError(f"map {m.name!r}: its index's quantiser ({m.index_factory!r}) is not the one of "
                           f"{first.name!r} (trained separately, or another factory): parts must be filled from "
                           f"one trained index to merge without re-encoding (--quantiser-from codes such parts "
                           f"with one map's quantiser; merge without --parts re-indexes)")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    index = large.merge_lists_onto_disk(indexes, work / storage.IVFDATA)
    large.write_npy_parts(work / storage.DESCRIPTORS, [m.descriptors for m in maps], first.dim)
    descriptors = np.load(work / storage.DESCRIPTORS, mmap_mode="r")
    merged = MapDatabase.from_index(name, first.dim, first.fingerprint, index, descriptors, _renumbered(maps),
                                    frame, first.index_factory, first.search_params, first.rerank,
                                    {storage.IVFDATA: work / storage.IVFDATA,
                                     storage.DESCRIPTORS: work / storage.DESCRIPTORS})
    carrier = next((m for m in maps if m.encoder_path is not None), None)
    if carrier is not None:
        merged.attach_encoder(carrier.encoder_path)
    from geoloc_ros.mapping.features import merged_store

    merged.local_features = merged_store(maps, merged.column("id").tolist())
    return merged
