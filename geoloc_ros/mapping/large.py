"""Maps of millions of keyframes: an IVF index trained once on a sample, filled part by part, its inverted lists
merged into one file that stays on disk (FAISS's recipe: `faiss.contrib.ondisk.merge_ondisk` over
`OnDiskInvertedLists`), and the checks a loaded IVF index must pass before it is searched.

    trained = train_empty("IVF1024,PQ64", 512, sample)        # once, on a sample of the descriptors
    part = fill_part(trained, descriptors_of_part, first_row)  # per part, anywhere (ids = map rows)
    faiss.write_index(part, "part-000.faiss"); ...
    index = merge_onto_disk(trained, ["part-000.faiss", ...], "MAP/index.ivfdata")

Parts made from the same trained index share its coarse quantiser and encoder, so their codes are merged as they
are, never re-encoded; `quantiser_digest` tells parts that do not share them apart.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import faiss
import numpy as np

from geoloc_ros.mapping.errors import MapError

_ID_BYTES = 8  # FAISS stores one int64 id beside every code in an inverted list


def ivf_of(index):
    """The IVF index inside `index` (itself or under a pre-transform), or None."""
    return faiss.try_extract_index_ivf(index)


def train_empty(factory: str, dim: int, sample: np.ndarray):
    """An empty IVF index of `factory` (inner product), trained on `sample` (L2-normalised float32 rows)."""
    try:
        index = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise MapError(f"bad FAISS index factory string {factory!r} for dimension {dim} "
                       f"({str(e).splitlines()[0]})") from None
    ivf = ivf_of(index)
    if ivf is None:
        raise MapError(f"index {factory!r} is not an IVF index; parts can only be filled into IVF indexes")
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False  # minutes of training that only polysemous search (never used) needs
    try:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    except RuntimeError as e:
        raise MapError(f"index {factory!r} cannot be trained on {len(sample)} descriptors "
                       f"({str(e).splitlines()[0]})") from None
    return index


def fill_part(trained, descriptors: np.ndarray, first_row: int):
    """A copy of the trained empty index holding `descriptors` as map rows first_row, first_row + 1, ..."""
    part = faiss.clone_index(trained)
    if part.ntotal:
        raise MapError("fill_part needs the trained index empty")
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    part.add_with_ids(x, np.arange(first_row, first_row + len(x), dtype=np.int64))
    return part


def merge_onto_disk(trained, part_paths, ivfdata: Path):
    """The trained empty index with the inverted lists of the part index files (built from it) merged into the
    file `ivfdata`, which stays on disk (memory-mapped on search). FAISS's `merge_ondisk`."""
    from faiss.contrib.ondisk import merge_ondisk

    index = faiss.clone_index(trained)
    merge_ondisk(index, [str(p) for p in part_paths], str(ivfdata))
    return index


def empty_like(index):
    """A copy of the IVF `index` with its trained quantisers and no entries (its own lists are not copied)."""
    ivf = ivf_of(index)
    lists, own, ntotal = ivf.invlists, ivf.own_invlists, index.ntotal
    blank = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.own_invlists = False
    ivf.invlists = blank
    index.ntotal = ivf.ntotal = 0
    try:
        return faiss.clone_index(index)
    finally:
        ivf.invlists, ivf.own_invlists = lists, own
        index.ntotal = ivf.ntotal = ntotal


def merge_lists_onto_disk(indexes, ivfdata: Path):
    """One index holding the entries of the IVF `indexes` (sharing one trained quantiser, see quantiser_digest),
    their codes copied as they are into the on-disk lists file `ivfdata` (FAISS's merge_from_multiple, as
    merge_ondisk); each part's ids (its rows) are shifted so that the rows of the second follow those of the
    first, and so on."""
    index = empty_like(indexes[0])
    ivf = ivf_of(index)
    out = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivfdata))
    sources = faiss.InvertedListsPtrVector()
    parts = [ivf_of(part).invlists for part in indexes]
    for lists in parts:
        sources.push_back(lists)
    # merge_from_multiple's own shift_ids does not shift by the sizes of the parts before: shifted here
    ntotal = out.merge_from_multiple(sources.data(), sources.size(), False)
    offsets = np.cumsum([0] + [part.ntotal for part in indexes[:-1]])
    for i in range(ivf.nlist):
        n = out.list_size(i)
        if n:
            ids, at = faiss.rev_swig_ptr(out.get_ids(i), n), 0  # a view of the mapped file: written in place
            for lists, offset in zip(parts, offsets):
                k = lists.list_size(i)
                ids[at:at + k] += offset
                at += k
    index.ntotal = ivf.ntotal = ntotal
    ivf.replace_invlists(out, True)
    out.this.disown()
    return index


def write_npy_parts(path: Path, arrays, dim: int) -> None:
    """float32 (rows, dim) arrays written one after the other as one .npy file, never concatenated in memory."""
    arrays = list(arrays)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (sum(len(a) for a in arrays), int(dim))})
        for a in arrays:
            for lo in range(0, len(a), 65536):
                f.write(np.ascontiguousarray(a[lo:lo + 65536], dtype=np.float32).tobytes())


def quantiser_digest(index) -> str:
    """sha256 of what turns a descriptor into a code of `index` (the IVF class, coarse centroids, the code
    book, any pre-transform): two IVF indexes with equal digests hold codes that can be merged as they are."""
    ivf = ivf_of(index)
    if ivf is None:
        raise MapError(f"a {type(index).__name__} index has no IVF quantiser")
    h = hashlib.sha256()
    h.update(f"{type(faiss.downcast_index(ivf)).__name__} d={ivf.d} nlist={ivf.nlist} code_size={ivf.code_size} "
             f"by_residual={getattr(ivf, 'by_residual', None)} metric={ivf.metric_type}".encode())
    h.update(faiss.serialize_index(ivf.quantizer).tobytes())
    for name in ("pq", "sq", "rabitq", "aq"):
        q = getattr(faiss.downcast_index(ivf), name, None)
        if q is not None:
            for field in ("centroids", "trained", "codebooks"):
                if hasattr(q, field):
                    h.update(faiss.vector_to_array(getattr(q, field)).tobytes())
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            vt = faiss.downcast_VectorTransform(index.chain.at(i))
            h.update(type(vt).__name__.encode())
            for field in ("A", "b"):
                if hasattr(vt, field):
                    h.update(faiss.vector_to_array(getattr(vt, field)).tobytes())
    return h.hexdigest()


def bytes_per_keyframe(index) -> float:
    """What an IVF index holds per keyframe in its inverted lists: code + 8-byte id, over the entries its lists
    have room for (capacity, so the slack of growing lists is counted too)."""
    ivf = ivf_of(index)
    if ivf is None or not index.ntotal:
        return float("nan")
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if isinstance(lists, faiss.OnDiskInvertedLists):
        return lists.totsize / index.ntotal
    return (ivf.code_size + _ID_BYTES) * ivf.invlists.compute_ntotal() / index.ntotal


def has_disk_lists(index) -> bool:
    ivf = ivf_of(index)
    return ivf is not None and isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)


# -- checks of a loaded index -------------------------------------------------------------------------------------

def attach_disk_lists(where: Path, index, ivfdata: Path) -> None:
    """`index` was read with faiss.IO_FLAG_SKIP_IVF_DATA and its inverted lists live in the map file `ivfdata`:
    check that every list lies inside that file (a list table pointing past its end would have FAISS read beyond
    the mapping), then map it read-only. The file name stored in the index is never used: a map's lists are
    always its own `ivfdata`."""
    ivf = ivf_of(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        raise MapError(f"{where}: the manifest says the inverted lists are on disk, the index holds "
                       f"{type(lists).__name__ if lists is not None else 'no IVF index'}")
    size = os.stat(ivfdata).st_size
    entry = lists.code_size + _ID_BYTES
    if lists.code_size != ivf.code_size or lists.nlist != ivf.nlist or lists.totsize != size:
        raise MapError(f"{where}: on-disk list table (code size {lists.code_size}, {lists.nlist} lists, "
                       f"{lists.totsize} bytes) does not match the index ({ivf.code_size}, {ivf.nlist}) and "
                       f"{ivfdata.name} ({size} bytes)")
    table = lists.lists
    if table.size() != ivf.nlist:
        raise MapError(f"{where}: {table.size()} list entries for {ivf.nlist} lists")
    for i in range(ivf.nlist):
        one = table.at(i)
        if one.size > one.capacity or one.offset + one.capacity * entry > size:
            raise MapError(f"{where}: inverted list {i} (offset {one.offset}, {one.size} of {one.capacity} "
                           f"entries) lies outside {ivfdata.name} ({size} bytes)")
    lists.filename = str(ivfdata)
    lists.read_only = True
    try:
        lists.do_mmap()
    except RuntimeError as e:
        raise MapError(f"{ivfdata}: cannot be mapped ({str(e).splitlines()[0]})") from None


def check_ivf_rows(where: Path, index, count: int) -> None:
    """An IVF index's ids must be the map rows 0..count-1, each once (search results index the keyframe table
    with them). Non-IVF indexes number their rows themselves."""
    ivf = ivf_of(index)
    if ivf is None:
        return
    parts = []
    lists = ivf.invlists
    for i in range(ivf.nlist):
        n = lists.list_size(i)
        if n:
            ptr = lists.get_ids(i)
            parts.append(faiss.rev_swig_ptr(ptr, n).copy())
            lists.release_ids(i, ptr)
    ids = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    if len(ids) != count or (count and (ids.min() < 0 or ids.max() >= count
                                        or (np.bincount(ids, minlength=count) != 1).any())):
        raise MapError(f"{where}: the index's ids are not the map's rows 0..{count - 1} each once "
                       f"({len(ids)} entries)")
