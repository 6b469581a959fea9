"""Merging maps built with the same encoder into one (keyframe ids renumbered, positions re-expressed in the
first geotagged map's frame, index rebuilt)."""

from __future__ import annotations

import numpy as np

from geoloc_ros.mapping.database import MapDatabase
from geoloc_ros.mapping.storage import MapError


def merge_maps(maps: list[MapDatabase], name: str, index_factory: str | None = None) -> MapDatabase:
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
    factory = index_factory or first.index_factory
    merged = MapDatabase.create(name, first.dim, first.fingerprint, geo[0].frame if geo else None, factory,
                                first.search_params if factory == first.index_factory else None, first.rerank)
    carrier = next((m for m in maps if m.encoder_path is not None), None)
    if carrier is not None:
        merged.attach_encoder(carrier.encoder_path)
    descriptors = np.concatenate([m.descriptors for m in maps], axis=0)
    keyframes = []
    for m in maps:
        for k in m.keyframes():
            # Geotagged keyframes get x/y/z again from lat/lon in the merged frame; ids are renumbered.
            keyframes.append(k.replace(id=-1) if m.frame is None else
                             k.replace(id=-1, x=float("nan"), y=float("nan"), z=float("nan")))
    new_ids = merged.add(descriptors, keyframes)
    from geoloc_ros.mapping.features import merged_store

    merged.local_features = merged_store(maps, new_ids)
    return merged
