"""Row arrays of a map: a growable numpy buffer, descriptor matrices checked and L2-normalised, and exact
re-scoring of index candidates against the stored descriptors."""

from __future__ import annotations

import faiss
import numpy as np

from geoloc_ros.mapping.keyframe import FLOAT_FIELDS
from geoloc_ros.mapping.storage import MapError


class Growable:
    """A numpy array that grows by doubling, so that adding one keyframe at a time stays cheap."""

    def __init__(self, dtype, width: int | None = None, data=None):
        self.width = width
        shape = (0,) if width is None else (0, width)
        self._buf = np.empty(shape, dtype=dtype) if data is None else data
        self.n = len(self._buf)

    def extend(self, values):
        values = np.asarray(values, dtype=self._buf.dtype)
        need = self.n + len(values)
        if need > len(self._buf) or not self._buf.flags.writeable:
            cap = max(need, 2 * len(self._buf), 16)
            buf = np.empty((cap,) + self._buf.shape[1:], dtype=self._buf.dtype)
            buf[:self.n] = self._buf[:self.n]
            self._buf = buf
        self._buf[self.n:need] = values
        self.n = need

    @property
    def array(self) -> np.ndarray:
        return self._buf[:self.n]


def rerank_exact(q: np.ndarray, candidates: np.ndarray, descriptors: np.ndarray, k: int):
    """Re-score each query's candidate rows (-1 = none) exactly against `descriptors` (possibly memory-mapped);
    returns (similarities, rows) of the best k, padded with (-inf, -1) as FAISS does."""
    sims = np.full((len(q), k), -np.inf, dtype=np.float32)
    rows = np.full((len(q), k), -1, dtype=np.int64)
    for i, cand in enumerate(candidates):
        cand = np.unique(cand[cand >= 0])  # sorted: sequential reads from a memory-mapped file
        if len(cand) == 0:
            continue
        kk = min(k, len(cand))
        s, local = faiss.knn(q[i:i + 1], np.ascontiguousarray(descriptors[cand]), kk, metric=faiss.METRIC_INNER_PRODUCT)
        sims[i, :kk], rows[i, :kk] = s[0], cand[local[0]]
    return sims, rows


def column_dtype(field: str):
    if field in FLOAT_FIELDS:
        return np.float64
    if field in ("id", "stamp_ns"):
        return np.int64
    if field == "synthetic":
        return bool
    return object


def as_matrix(x, dim: int, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise MapError(f"{what}: expected shape (N, {dim}), got {x.shape}")
    return x


def normalised(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if len(x):
        faiss.normalize_L2(x)
    return x
