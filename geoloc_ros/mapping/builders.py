"""Filling a map: images (files or decoded arrays) -> batched encoding -> `MapDatabase.add`, with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from geoloc_ros.mapping.database import MapDatabase
from geoloc_ros.mapping.keyframe import Keyframe, keyframe_from_geoimage
from geoloc_ros.mapping.storage import MapError
from geoloc_ros.model.fused_encoder import FusedEncoder


def encode_into(db: MapDatabase, encoder, items: Iterable[tuple[Keyframe, object]], batch_size: int = 64,
                total: int | None = None, desc: str = "encoding", progress: bool = True,
                unreadable: list | None = None, camera_for=None, depth_for=None, annotate=None) -> list[int]:
    """Encode each (keyframe, image) pair, where the image is an HxWx3 uint8 RGB array or an image file path,
    in batches of `batch_size`, and add them to `db`. Returns the ids added. An image file that cannot be read
    (corrupt, zero bytes) is skipped and its reason appended to `unreadable`; without that list it raises
    MapError, before anything of this call is added. When `db.local_features` is set, each keyframe's local
    features are stored too, with the camera model `camera_for(keyframe, image)` gives (image as given: a path
    keeps its EXIF) and the keypoint depth from the aligned depth image `depth_for(keyframe)` gives (None: no
    depth). `annotate(keyframe) -> keyframe` sets address / caption text (geoloc_ros.language.annotate); a
    FusedEncoder fuses each keyframe's caption (its scene description) into the descriptor."""
    from geoloc_ros.datasets import read_image

    ids, keyframes, images, cameras, depths = [], [], [], [], []

    def flush():
        if keyframes:
            if isinstance(encoder, FusedEncoder):  # keyframes are always encoded with their own descriptions
                descriptors = encoder.encode(images, texts=[k.caption for k in keyframes], batch_size=batch_size)
            else:
                descriptors = encoder.encode(images, batch_size=batch_size)
            added = db.add(descriptors, keyframes)
            if db.local_features is not None:
                for kid, image, camera, depth in zip(added, images, cameras, depths):
                    db.local_features.add_image(kid, image, camera, depth)
            ids.extend(added)
            keyframes.clear()
            images.clear()
            cameras.clear()
            depths.clear()

    for keyframe, source in tqdm(items, total=total, desc=desc, unit="img", disable=not progress, mininterval=1.0):
        image = source
        if isinstance(source, (str, Path)):
            try:
                image = read_image(source)
            except (OSError, ValueError) as e:  # read_image names the file
                if unreadable is None:
                    raise MapError(str(e)) from None
                unreadable.append(str(e))
                continue
        keyframes.append(annotate(keyframe) if annotate is not None else keyframe)
        keep = db.local_features is not None
        cameras.append(camera_for(keyframe, source) if keep and camera_for is not None else None)
        depths.append(depth_for(keyframe) if keep and depth_for is not None else None)
        images.append(np.asarray(image))
        if len(keyframes) >= batch_size:
            flush()
    flush()
    return ids


def add_dataset(db: MapDatabase, encoder, images, source: str = "", **options) -> list[int]:
    """Add a list of `geoloc_ros.datasets.GeoImage` (VG folder, CSV or synthetic sequence) to `db`."""
    items = ((keyframe_from_geoimage(g, source=source), g.path) for g in images)
    return encode_into(db, encoder, items, total=len(images), desc=f"encoding {source or 'images'}", **options)


def add_bag(db: MapDatabase, encoder, bag, image_topic: str, fix_topic: str | None = None,
            odom_topic: str | None = None, every_metres: float | None = None, every_seconds: float | None = None,
            **options) -> list[int]:
    """Add the keyframes of a rosbag2 recording (see geoloc_ros.mapping.bag.bag_keyframes)."""
    from geoloc_ros.mapping.bag import bag_keyframes

    frames = bag_keyframes(bag, image_topic, fix_topic, odom_topic, every_metres, every_seconds)
    ids = encode_into(db, encoder, frames, total=frames.count, desc=f"encoding {Path(bag).name}", **options)
    if frames.unreadable and options.get("unreadable") is None:
        raise MapError(frames.unreadable[0])
    if frames.unreadable:
        options["unreadable"].extend(frames.unreadable)
    return ids


def new_map_for(encoder, name: str, index_factory: str = "Flat", search_params: str | None = None,
                rerank: int = 0) -> MapDatabase:
    return MapDatabase.create(name, encoder.dim, encoder.fingerprint, index_factory=index_factory,
                              search_params=search_params, rerank=rerank)
