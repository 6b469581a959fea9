"""Filling a map: frames (files, recorded messages or decoded arrays) -> batched encoding -> `MapDatabase.add`, with a
progress bar (the single-process engine; `ray_build` is the distributed one)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from geoloc_ros.mapping.batch import detect_features, encode_images, read_frames
from geoloc_ros.mapping.database import MapDatabase
from geoloc_ros.mapping.keyframe import Keyframe, keyframe_from_geoimage


def encode_into(db: MapDatabase, encoder, items: Iterable[tuple[Keyframe, object]], batch_size: int = 64,
                total: int | None = None, desc: str = "encoding", progress: bool = True,
                unreadable: list | None = None, camera_for=None, depth_for=None, annotate=None) -> list[int]:
    """Encode each (keyframe, frame source) pair, where the source is an HxWx3 uint8 RGB array, an image file path
    or a `bag.BagFrame`, in batches of `batch_size`, and add them to `db`. Returns the ids added. A source that
    cannot be decoded (corrupt, zero bytes) is skipped and its reason appended to `unreadable`; without that list
    it raises MapError, before anything of its batch is added. When `db.local_features` is set, each keyframe's
    local features are stored too, with the camera model `camera_for(keyframe, source)` gives (source as given: a
    path keeps its EXIF) and the keypoint depth from the aligned depth image `depth_for(keyframe)` gives (None: no
    depth). `annotate(keyframe) -> keyframe` sets address / caption text (geoloc_ros.language.annotate); a
    FusedEncoder fuses each keyframe's caption (its scene description) into the descriptor. The per-batch steps
    are those of `geoloc_ros.mapping.batch`, which the Ray engine runs too."""
    ids: list[int] = []
    pending: list[tuple[Keyframe, object]] = []

    def flush():
        images = read_frames([source for _, source in pending], unreadable)
        kept = [(keyframe, source, image) for (keyframe, source), image in zip(pending, images) if image is not None]
        pending.clear()
        if not kept:
            return
        keyframes = [annotate(k) if annotate is not None else k for k, _, _ in kept]
        decoded = [image for _, _, image in kept]
        added = db.add(encode_images(encoder, decoded, [k.caption for k in keyframes], batch_size), keyframes)
        store = db.local_features
        if store is not None:
            depths = [depth_for(k) if depth_for is not None else None for k, _, _ in kept]
            features = detect_features(decoded, store.detector, store.max_keypoints, depths, added)
            for kid, (keyframe, source, _), feats in zip(added, kept, features):
                store.add(kid, feats, camera_for(keyframe, source) if camera_for is not None else None)
        ids.extend(added)

    for item in tqdm(items, total=total, desc=desc, unit="img", disable=not progress, mininterval=1.0):
        pending.append(item)
        if len(pending) >= batch_size:
            flush()
    flush()
    return ids


def dataset_items(images, source: str = "") -> list[tuple[Keyframe, Path]]:
    """(keyframe, image path) of each `geoloc_ros.datasets.GeoImage`."""
    return [(keyframe_from_geoimage(g, source=source), g.path) for g in images]


def add_dataset(db: MapDatabase, encoder, images, source: str = "", **options) -> list[int]:
    """Add a list of `geoloc_ros.datasets.GeoImage` (VG folder, CSV or synthetic sequence) to `db`."""
    items = dataset_items(images, source)
    return encode_into(db, encoder, items, total=len(images), desc=f"encoding {source or 'images'}", **options)


def add_bag(db: MapDatabase, encoder, bag, image_topic: str, fix_topic: str | None = None,
            odom_topic: str | None = None, every_metres: float | None = None, every_seconds: float | None = None,
            **options) -> list[int]:
    """Add the keyframes of a rosbag2 recording (see geoloc_ros.mapping.bag.bag_keyframes)."""
    from geoloc_ros.mapping.bag import bag_keyframes

    items = bag_keyframes(bag, image_topic, fix_topic, odom_topic, every_metres, every_seconds).references()
    return encode_into(db, encoder, items, total=len(items), desc=f"encoding {Path(bag).name}", **options)


def unique_labels(inputs: list[list[tuple[Keyframe, object]]], names: list[str]) -> list[list[tuple[Keyframe, object]]]:
    """The (keyframe, source) lists of several inputs of one build, with labels unique across them: unchanged when
    no label occurs in two inputs, else every label becomes `NAME/label`, NAME the input's name (`names`; a name
    given twice is numbered NAME#2, NAME#3, ...)."""
    seen: dict[str, int] = {}
    clash = False
    for n, items in enumerate(inputs):
        for keyframe, _ in items:
            clash = clash or seen.setdefault(keyframe.label, n) != n
    if not clash:
        return inputs
    unique, count = [], {}
    for name in names:
        count[name] = count.get(name, 0) + 1
        unique.append(name if count[name] == 1 else f"{name}#{count[name]}")
    return [[(k.replace(label=f"{prefix}/{k.label}"), source) for k, source in items]
            for prefix, items in zip(unique, inputs)]


def new_map_for(encoder, name: str, index_factory: str = "Flat", search_params: str | None = None,
                rerank: int = 0) -> MapDatabase:
    return MapDatabase.create(name, encoder.dim, encoder.fingerprint, index_factory=index_factory,
                              search_params=search_params, rerank=rerank)
