"""Training images at scale: a cached scan of the training sets (CosPlace caches its dataset scan) and a torch
DataLoader over image PATHS that decodes and resizes in worker processes, prefetches, and pins memory on CUDA.

The training loop draws each batch's image indices itself (CosPlace sampling, data.draw_batch) and hands the
epoch's index lists to `batches`, which yields the (B, H, W, 3) uint8 images in the same order; with
`workers == 0` or images held in memory (ImageBank.array, the Nordland recipe) it reads them in the main process
exactly as before. What the loop holds grows only with the path index, never with decoded images.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
import pickle

import numpy as np
import torch

from geoloc_ros.datasets import read_image
from geoloc_ros.model.encoder import resize_batch

log = logging.getLogger("geoloc.train")
INDEX_VERSION = 2


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "geoloc" / "file_index"


def source_key(source, options: dict) -> str:
    """A key that changes when the training set changes: its path as given (the records carry paths under it, so a
    set reached through another link is another index) and resolved, size and mtime, those of the folders directly
    inside it (a VG / MSLS layout), and the reader options."""
    path = Path(source).resolve()
    stats = [(str(Path(source).absolute()), str(path), path.stat().st_mtime_ns, path.stat().st_size)]
    if path.is_dir():
        with os.scandir(path) as entries:
            stats += sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries if e.is_dir())
    text = repr((INDEX_VERSION, stats, sorted(options.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cached_dataset(source, cache_dir=None, **options):
    """datasets.load_dataset(source, **options), from `cache_dir` when this very set was scanned before. The scan
    is written atomically (a crash leaves no half-written index); returns (records, True when read from cache)."""
    from geoloc_ros.datasets import load_dataset

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"{source_key(source, options)}.pkl"
    if path.is_file():
        try:
            with open(path, "rb") as f:
                return pickle.load(f), True
        except (OSError, pickle.UnpicklingError, EOFError) as e:  # unreadable: scan again and rewrite it
            log.warning("file index %s unreadable (%s): scanning %s again", path, e, source)
    records = load_dataset(source, **options)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(records, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    log.info("file index of %s (%d images) cached in %s", source, len(records), path)
    return records, False


class PathImages(torch.utils.data.Dataset):
    """Image i of a path index, decoded and resized to `size` (H, W) as uint8 (H, W, 3). The paths are one numpy
    bytes array, so forked workers share it without copying (no per-path Python object to reference-count)."""

    def __init__(self, paths, size):
        self.paths = np.array([os.fsencode(str(p)) for p in paths]) if not isinstance(paths, np.ndarray) else paths
        self.size = tuple(size)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = read_image(os.fsdecode(self.paths[i]))
        return torch.from_numpy(resize_batch([image], self.size)[0])


def batches(bank, index_lists, workers: int, pin_memory: bool = False, prefetch: int = 4):
    """The images of each index list in turn, (B, H, W, 3) uint8 tensors: from memory when `bank` holds them or
    `workers` is 0, else through a DataLoader with `workers` processes, `prefetch` batches ahead per worker."""
    if bank.array is not None or workers <= 0:
        for idx in index_lists:
            yield torch.from_numpy(bank.get(idx))
        return
    dataset = bank.dataset if getattr(bank, "dataset", None) is not None else PathImages(
        [r.path for r in bank.records], bank.size)
    bank.dataset = dataset
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[list(i) for i in index_lists], num_workers=workers,
                                         pin_memory=pin_memory, prefetch_factor=prefetch)
    yield from loader
