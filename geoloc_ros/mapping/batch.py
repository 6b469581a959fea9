"""One batch of frames through map building: decode, encode, detect local features. Both build engines run these
functions, the single-process builder (`builders.encode_into`) and the Ray engine's actors (`ray_build`), so
decoding and encoding have one implementation.

A frame source is an HxWx3 uint8 RGB array, an image file path, or a `bag.BagFrame` (a reference to one image
message of a recording, decoded where it is used: pixels never travel between processes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geoloc_ros.geometry.features import Features, detect
from geoloc_ros.mapping.bag import BagFrame, read_bag_frames
from geoloc_ros.mapping.storage import MapError
from geoloc_ros.model.fused_encoder import FusedEncoder


def read_frames(sources, unreadable: list | None = None) -> list[np.ndarray | None]:
    """Each source decoded to HxWx3 uint8 RGB, in order; None where it cannot be (the reason, naming the file or
    message, appended to `unreadable`; without that list the first one raises MapError). Frames of one recording
    are decoded in one pass over the span they cover."""
    from geoloc_ros.datasets import read_image

    errors = [] if unreadable is None else unreadable
    images: list[np.ndarray | None] = [None] * len(sources)
    by_topic: dict[tuple[str, str], list[int]] = {}
    for i, source in enumerate(sources):
        if isinstance(source, BagFrame):
            by_topic.setdefault((source.bag, source.topic), []).append(i)
        elif isinstance(source, (str, Path)):
            try:
                images[i] = read_image(source)
            except (OSError, ValueError) as e:  # read_image names the file
                errors.append(str(e))
        else:
            images[i] = np.asarray(source)
    for (bag, topic), slots in by_topic.items():
        slot_of = {sources[i].time_ns: i for i in slots}
        for t, image in read_bag_frames(bag, topic, list(slot_of), errors):
            images[slot_of[t]] = image
    if unreadable is None and errors:
        raise MapError(errors[0])
    return images


def encode_images(encoder, images: list[np.ndarray], captions: list[str], batch_size: int = 64) -> np.ndarray:
    """(N, dim) float32 descriptors of decoded frames; a FusedEncoder fuses each frame's caption (its scene
    description) into the descriptor."""
    if isinstance(encoder, FusedEncoder):
        return encoder.encode(images, texts=list(captions), batch_size=batch_size)
    return encoder.encode(images, batch_size=batch_size)


def detect_features(images: list[np.ndarray], detector: str, max_keypoints: int, depths=None,
                    labels=None) -> list[Features]:
    """Local features of each decoded frame (`depths`: aligned depth images or None each); MapError naming the
    frame (its label) when detection fails."""
    out = []
    for n, image in enumerate(images):
        try:
            out.append(detect(image, detector, max_keypoints, depths[n] if depths is not None else None))
        except ValueError as e:
            raise MapError(f"keyframe {labels[n] if labels is not None else n}: {e}") from None
    return out
