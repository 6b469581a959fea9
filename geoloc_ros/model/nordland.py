"""The Nordland (nordland64) split used for the bundled encoder, and loading helpers.

Data: ../shared/data/nordland64/{summer,winter}/images-NNNNN.png, 2,400 frames per season (frame numbers
00010-24000 in steps of 10); the same frame number in both seasons is the same place. There are no coordinates:
frames are placed on a straight line 10 m apart (the VG tooling's convention), flagged synthetic, so 25 m is about
+-2 frames.

FIXED SPLIT (other parts of the project rely on it):
- training stretch:   frame numbers 00010..19200 (1,920 places), both seasons;
- validation stretch: frame numbers 19210..24000 (the last 480 places), never trained on.
For tuning, the last 320 places of the training stretch (16010..19200) are our own held-out part
(`tune_split`), so the validation stretch is only used for the final report.
"""

from __future__ import annotations

from pathlib import Path
import re

import numpy as np

from geoloc_ros.imaging import is_blank as blank_by_grey_spread

SEASONS = ("summer", "winter")
FRAME_SPACING_M = 10.0
TRAIN_FRAMES = (10, 19200)
VAL_FRAMES = (19210, 24000)
TUNE_TRAIN_FRAMES = (10, 16000)
TUNE_VAL_FRAMES = (16010, 19200)
FRAME_TOLERANCE = 2  # frames (+-20 m)


def default_root() -> Path:
    """../shared/data/nordland64 next to the repository root."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nordland64"


def frame_number(path) -> int:
    m = re.search(r"(\d+)\D*$", Path(path).stem)
    if not m:
        raise ValueError(f"{path}: no frame number in the file name")
    return int(m.group(1))


def load_season(root, season: str):
    """GeoImage records of one season (10 m apart on a straight line, synthetic=True)."""
    from geoloc_ros.datasets import load_dataset

    return load_dataset(Path(root) / season, sequence_spacing=FRAME_SPACING_M)


def select(records, frames):
    lo, hi = frames
    return [r for r in records if lo <= frame_number(r.path) <= hi]


def read_images(records) -> list[np.ndarray]:
    from geoloc_ros.datasets import read_image

    return [read_image(r.path) for r in records]


def is_blank(img, threshold: float = 3.0) -> bool:
    """Uniform frames (recording artefacts): the node's one blank-frame rule (geoloc_ros.imaging.grey_spread), so
    training, the reports and the node agree on what is blank. (A standard-deviation rule flags none of
    nordland64's 4,800 frames: their blank frames carry a few stray bright pixels.)"""
    return blank_by_grey_spread(np.asarray(img), threshold)


def split(root=None, frames=TRAIN_FRAMES, seasons=SEASONS):
    """Records of `seasons` whose frame number lies in `frames` (inclusive), in frame order, season after season."""
    root = Path(root) if root else default_root()
    out = []
    for s in seasons:
        out += select(load_season(root, s), frames)
    return out
