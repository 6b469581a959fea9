"""What makes a frame unusable: `FrameError` (with the diagnostics counter it lands in), the size limit, and the
one blank-frame rule (`grey_spread`), shared by the node, map building, training data and closure evaluation."""

from __future__ import annotations

import numpy as np

# The node's default for its max_image_pixels parameter: above 8K (33 MP).
MAX_IMAGE_PIXELS = 40_000_000


class FrameError(ValueError):
    """A frame the node cannot use. `kind` is the diagnostics counter it lands in: 'encoding' (unsupported
    encoding or format), 'corrupt' (sizes disagree, undecodable bytes), 'empty' (zero-size), 'blank' (uniform),
    'too_large' (more pixels than max_image_pixels, refused before decoding), 'depth_encoding' and
    'depth_corrupt' (the same for a depth image)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def check_size(width: int, height: int, max_pixels: int | None, where: str = "") -> None:
    """FrameError 'too_large' when a `width` x `height` frame has more than `max_pixels` (None or 0: no limit)."""
    if max_pixels and width * height > max_pixels:
        raise FrameError("too_large", f"{where}{width}x{height} = {width * height} pixels is more than "
                                      f"max_image_pixels {max_pixels}")


def check_blank(img: np.ndarray, blank_threshold: float) -> None:
    """FrameError 'blank' when `blank_threshold` > 0 and the frame's `grey_spread` is below it."""
    if blank_threshold > 0.0 and (spread := grey_spread(img)) < blank_threshold:
        raise FrameError("blank", f"blank frame (grey levels span {spread:.1f} < {blank_threshold} from the "
                                  f"5th to the 95th percentile)")


def grey_spread(img: np.ndarray) -> float:
    """The one blank-frame rule: the span of grey levels from the 5th to the 95th percentile (on a subsample of
    about 128x128). Uniform frames (lens cap, dropped video, the blank frames of the Nordland recording) span
    almost nothing; a percentile spread rather than the standard deviation, because blank frames often carry a
    few stray bright pixels. Their descriptors match every other blank frame, so they can only mislead."""
    small = np.asarray(img)[:: max(1, img.shape[0] // 128), :: max(1, img.shape[1] // 128)]
    if small.dtype == np.uint8 and small.ndim == 3 and small.shape[2] == 3:
        return _uint8_rgb_spread(small)
    grey = small.mean(axis=2) if small.ndim == 3 else small
    lo, hi = np.percentile(grey, (5, 95))
    return float(hi - lo)


def _uint8_rgb_spread(small: np.ndarray) -> float:
    """`grey_spread` of a uint8 RGB subsample from a histogram of channel sums (0..765) instead of a float mean
    and a sort: the same order statistics and numpy's linear interpolation between them, several times faster
    (it runs on every frame the node receives; docs/node.md, "Where the time goes")."""
    total = small[..., 0].astype(np.uint16)
    total += small[..., 1]
    total += small[..., 2]
    cum = np.cumsum(np.bincount(total.ravel(), minlength=766))
    n = int(cum[-1])

    def percentile(q: float) -> float:
        pos = q / 100.0 * (n - 1)
        k = int(np.floor(pos))
        a, b = np.searchsorted(cum, [k, min(k + 1, n - 1)], side="right")
        return (a + (b - a) * (pos - k)) / 3.0

    return float(percentile(95) - percentile(5))


def is_blank(img: np.ndarray, threshold: float = 3.0) -> bool:
    """True for a blank frame by `grey_spread` (the node's blank_threshold default is 3.0)."""
    return grey_spread(img) < threshold
