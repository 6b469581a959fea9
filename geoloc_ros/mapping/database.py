"""`MapDatabase`: geotagged keyframes + their descriptors + a FAISS index, one directory on disk.

Search is FAISS inner product on L2-normalised descriptors (cosine similarity), through an index chosen per map
with an index factory string: "Flat" (exact; the default), "HNSW32", "IVF1024,PQ64", ... Rows of the index are
rows of the descriptor matrix and of the keyframe table; keyframe ids map to rows.
"""

from __future__ import annotations

from dataclasses import asdict
import datetime as _dt
import math
from pathlib import Path
import shutil

import faiss
import numpy as np

from geoloc_ros.geodesy import MapFrame, to_utm
from geoloc_ros.mapping import large, schema, storage
from geoloc_ros.mapping.fingerprint import carried_encoder, check_encoder, read_encoder_fingerprint
from geoloc_ros.mapping.keyframe import FLOAT_FIELDS, KEYFRAME_FIELDS, Keyframe, Match
from geoloc_ros.mapping.rows import Growable, as_matrix, column_dtype, normalised, rerank_exact
from geoloc_ros.mapping.storage import MapError
from geoloc_ros.model.checkpoint import find_checkpoint

# A radius-filtered search scores the keyframes inside the radius exactly (faiss.knn over their stored
# descriptors) when there are at most this many; beyond that it asks the index with an ID selector.
EXACT_SUBSET_MAX = 50_000


def default_search_params(index_factory: str) -> str:
    """Search-time settings for a factory string, as faiss.ParameterSpace reads them."""
    params = []
    if "IVF" in index_factory:
        params.append("nprobe=16")
    if "HNSW" in index_factory:
        params.append("quantizer_efSearch=64" if "IVF" in index_factory else "efSearch=64")
    return ",".join(params)


class MapDatabase:
    """A map of keyframes. Create with `create`, open with `load`, fill with `add`, query with `search`."""

    def __init__(self, name: str, dim: int, fingerprint: str, frame: MapFrame | None = None,
                 index_factory: str = "Flat", search_params: str | None = None, index=None, columns=None,
                 descriptors=None, encoder_path: Path | None = None, created: str | None = None, rerank: int = 0,
                 disk_files: dict | None = None):
        self.name = str(name)
        self.dim = int(dim)
        self.fingerprint = str(fingerprint)
        self.frame = frame
        self.index_factory = index_factory
        self.search_params = default_search_params(index_factory) if search_params is None else search_params
        self.created = created or _now()
        self.map_id = schema.new_map_id()  # `load` sets the stored one: a map keeps its id across saves
        # rerank > 0: the index proposes that many candidates and the stored (memory-mapped) descriptors score them
        # exactly, so compressed indexes (PQ) keep little in memory yet rank like exact search.
        self.rerank = int(rerank)
        self._index = index if index is not None else self._new_index()
        self._apply_search_params()
        cols = columns or {}
        self._cols = {f: Growable(column_dtype(f), data=cols.get(f)) for f in KEYFRAME_FIELDS}
        self._desc = Growable(np.float32, self.dim, descriptors)
        self._encoder_path = Path(encoder_path) if encoder_path else None
        # On-disk maps (mapping/large.py): storage name -> the file that holds the inverted lists (IVFDATA) and
        # the descriptors (memory-mapped); a save links or copies them into the new map.
        self._disk_files = {k: Path(v) for k, v in (disk_files or {}).items()}
        self._sidecars = {}  # storage.ENCODER_SIDECARS name -> path: files that travel with the encoder
        self._id_order = None  # argsort of ids, rebuilt lazily after adds
        self.local_features = None  # a mapping.features.LocalFeatureStore when the map keeps local features
        self.structure = None  # a mapping.structure.MapStructure when keyframes carry camera poses and 3D points
        if self._index.ntotal != len(self) or self._desc.n != len(self):
            raise MapError(f"map {self.name!r}: index has {self._index.ntotal} rows, descriptors {self._desc.n}, "
                           f"keyframes {len(self)}")

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def create(cls, name: str, dim: int, fingerprint: str, frame: MapFrame | None = None,
               index_factory: str = "Flat", search_params: str | None = None, rerank: int = 0) -> "MapDatabase":
        """An empty map in memory. `index_factory`: a FAISS index factory string (inner product metric).
        `rerank`: re-score this many index candidates exactly with the stored descriptors (0: off)."""
        if int(dim) <= 0:
            raise MapError(f"descriptor dimension must be positive, got {dim}")
        return cls(name, dim, fingerprint, frame, index_factory, search_params, rerank=rerank)

    @classmethod
    def from_index(cls, name: str, dim: int, fingerprint: str, index, descriptors, keyframes,
                   frame: MapFrame | None = None, index_factory: str = "Flat", search_params: str | None = None,
                   rerank: int = 0, disk_files: dict | None = None) -> "MapDatabase":
        """A map around an `index` that already holds `descriptors` as its rows 0..N-1, in the order of
        `keyframes` (placed and given ids as `add` does): parts merged without re-encoding (mapping/merge.py).
        `disk_files`: {storage.IVFDATA: the index's on-disk lists, storage.DESCRIPTORS: the .npy that
        `descriptors` maps}, which a save links into the map."""
        db = cls.create(name, dim, fingerprint, frame, index_factory, search_params, rerank)
        keyframes = db._place(list(keyframes))
        ids = db._assign_ids(keyframes)
        columns = {f: np.asarray([ids[i] if f == "id" else getattr(k, f) for i, k in enumerate(keyframes)],
                                 dtype=column_dtype(f)) for f in KEYFRAME_FIELDS}
        out = cls(name, dim, fingerprint, db.frame, index_factory, search_params, index, columns, descriptors,
                  rerank=rerank, disk_files=disk_files)
        out.map_id = db.map_id
        return out

    @classmethod
    def load(cls, path, encoder=None) -> "MapDatabase":
        """Open the map directory `path`, verifying the manifest (every field's type), every file's size and
        sha256, and (when `encoder` is given) that its dimension and fingerprint are those the map was built with.
        Descriptors, index and keyframes are read into memory once each and parsed from the verified bytes.
        Raises MapError."""
        folder = Path(path)
        manifest = storage.read_manifest(folder)
        schema.check_manifest(folder, manifest)
        dim, fingerprint = manifest["dim"], manifest["encoder_fingerprint"]
        if encoder is not None:
            check_encoder(folder, dim, fingerprint, encoder)
        files = manifest["files"]
        for required in (storage.KEYFRAMES, storage.DESCRIPTORS, storage.INDEX):
            if required not in files:
                raise MapError(f"{folder / required}: missing from the manifest")
        on_disk = manifest.get("on_disk", False)
        if on_disk and storage.IVFDATA not in files:
            raise MapError(f"{folder / storage.IVFDATA}: missing from the manifest of an on-disk map")
        # on-disk maps: descriptors and lists are checked by streaming, then memory-mapped (never read whole)
        parts = (storage.KEYFRAMES, storage.DESCRIPTORS, storage.INDEX)
        if manifest.get("local_features") is not None:  # read (and verified) once, by features.attach_on_load
            parts += (storage.LOCAL_FEATURES, storage.CAMERAS)
        storage.verify_files(folder, manifest, skip=parts)
        encoder_path = carried_encoder(folder, files, fingerprint)
        columns = storage.read_keyframes(folder / storage.KEYFRAMES,
                                         storage.read_verified(folder, manifest, storage.KEYFRAMES))
        if on_disk:
            descriptors = storage.map_verified_npy(folder, manifest, storage.DESCRIPTORS)
        else:
            descriptors = storage.parse_npy(folder / storage.DESCRIPTORS,
                                            storage.read_verified(folder, manifest, storage.DESCRIPTORS))
        if descriptors.dtype != np.float32 or descriptors.ndim != 2 or descriptors.shape[1] != dim:
            raise MapError(f"{folder / storage.DESCRIPTORS}: expected float32 (N, {dim}), got {descriptors.dtype} "
                           f"{descriptors.shape}")
        if not on_disk and not np.isfinite(descriptors).all():
            raise MapError(f"{folder / storage.DESCRIPTORS}: holds NaN or infinite values")
        index = storage.parse_faiss_index(folder / storage.INDEX,
                                          storage.read_verified(folder, manifest, storage.INDEX),
                                          faiss.IO_FLAG_SKIP_IVF_DATA if on_disk else 0)
        if on_disk:
            large.attach_disk_lists(folder / storage.INDEX, index, folder / storage.IVFDATA)
        elif large.has_disk_lists(index):
            raise MapError(f"{folder / storage.INDEX}: an index with on-disk inverted lists in a map whose "
                           f"manifest does not say 'on_disk'")
        if index.d != dim:
            raise MapError(f"{folder / storage.INDEX}: index dimension {index.d}, the manifest says {dim}")
        count = manifest["count"]
        if not (len(columns["id"]) == len(descriptors) == index.ntotal == count):
            raise MapError(f"{folder}: counts disagree (manifest {count}, keyframes {len(columns['id'])}, "
                           f"descriptors {len(descriptors)}, index {index.ntotal})")
        large.check_ivf_rows(folder / storage.INDEX, index, count)
        frame = MapFrame(**manifest["frame"]) if manifest.get("frame") else None
        db = cls(manifest["name"], dim, fingerprint, frame, manifest["index_factory"],
                 manifest.get("search_params"), index, columns, descriptors, encoder_path, manifest.get("created"),
                 manifest.get("rerank", 0),
                 {storage.IVFDATA: folder / storage.IVFDATA, storage.DESCRIPTORS: folder / storage.DESCRIPTORS}
                 if on_disk else None)
        db.map_id = schema.map_id_of(folder, manifest)
        db._sidecars = {name: folder / name for name in storage.ENCODER_SIDECARS if name in files}
        from geoloc_ros.mapping.features import attach_on_load

        attach_on_load(db, folder, manifest)
        from geoloc_ros.mapping.structure import attach_on_load as attach_structure

        attach_structure(db, folder, manifest)
        return db

    # -- identity --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._cols["id"].n

    def __repr__(self):
        return (f"MapDatabase(name={self.name!r}, keyframes={len(self)}, dim={self.dim}, "
                f"index={self.index_factory!r}, fingerprint={self.fingerprint[:12]})")

    @property
    def on_disk(self) -> bool:
        """True when the inverted lists and descriptors stay in their files, memory-mapped (large maps)."""
        return bool(self._disk_files)

    @property
    def encoder_path(self) -> Path | None:
        """The encoder checkpoint the map carries (or will carry once saved), or None."""
        return self._encoder_path

    def attach_encoder(self, checkpoint) -> None:
        """Carry the encoder checkpoint file `checkpoint` in the map (copied in on `save`). Its fingerprint must be
        the map's."""
        path = find_checkpoint(checkpoint)
        fp = read_encoder_fingerprint(path)
        if fp != self.fingerprint:
            raise MapError(f"{path}: encoder fingerprint {fp[:12]}... is not the map's {self.fingerprint[:12]}...")
        self._encoder_path = Path(path)
        beside = {name: Path(path).parent / name for name in storage.ENCODER_SIDECARS}
        self._sidecars = {name: p for name, p in beside.items() if p.is_file()}

    @property
    def index(self):
        """The FAISS index (read-only use, please: rows must stay aligned with the keyframes)."""
        return self._index

    @property
    def descriptors(self) -> np.ndarray:
        """(N, dim) float32, row order (a view; do not modify)."""
        return self._desc.array

    # -- keyframes -------------------------------------------------------------------------------------------
    def column(self, name: str) -> np.ndarray:
        """One keyframe field for all keyframes, in row order (e.g. column("x"))."""
        return self._cols[name].array

    def positions(self) -> np.ndarray:
        """(N, 2) map-frame x, y of every keyframe (NaN where unknown)."""
        return np.stack([self.column("x"), self.column("y")], axis=1)

    def keyframe(self, id: int) -> Keyframe:
        """The keyframe with this id; KeyError when there is none."""
        return self._keyframe_at(self._row_of(int(id)))

    def keyframes(self):
        """All keyframes, in row order."""
        return (self._keyframe_at(r) for r in range(len(self)))

    def _row_of(self, id: int) -> int:
        ids = self.column("id")
        if self._id_order is None:
            self._id_order = np.argsort(ids, kind="stable")
        pos = np.searchsorted(ids, id, sorter=self._id_order)
        if pos < len(ids) and ids[self._id_order[pos]] == id:
            return int(self._id_order[pos])
        raise KeyError(f"map {self.name!r} has no keyframe with id {id}")

    def _keyframe_at(self, row: int) -> Keyframe:
        values = {f: self._cols[f].array[row] for f in KEYFRAME_FIELDS}
        values = {f: (float(v) if f in FLOAT_FIELDS else bool(v) if f == "synthetic" else
                      int(v) if f in ("id", "stamp_ns") else str(v)) for f, v in values.items()}
        return Keyframe(**values)

    # -- adding ----------------------------------------------------------------------------------------------
    def add(self, descriptors, keyframes) -> list[int]:
        """Append keyframes with their (N, dim) descriptors (L2-normalised here if they are not). Keyframes with
        id < 0 get fresh ids. Geotagged keyframes get UTM (in the map frame's zone) and map-frame x/y/z from
        lat/lon/alt; the first geotagged keyframe of a map without a frame sets its origin. Keyframes with only a
        map-frame position get lat/lon from it when the map has a frame. Returns the ids."""
        if self.on_disk:
            raise MapError(f"map {self.name!r} keeps its index and descriptors on disk; it takes no keyframes one "
                           f"by one (build parts from its trained index and `geoloc map merge --parts` them)")
        keyframes = list(keyframes)
        x = as_matrix(descriptors, self.dim, "descriptors")
        if len(x) != len(keyframes):
            raise MapError(f"{len(x)} descriptors for {len(keyframes)} keyframes")
        if not keyframes:
            return []
        x = normalised(x)
        keyframes = self._place(keyframes)
        ids = self._assign_ids(keyframes)
        self._ensure_trained(x)
        self._index.add(x)
        self._desc.extend(x)
        for f in KEYFRAME_FIELDS:
            self._cols[f].extend([ids[i] if f == "id" else getattr(k, f) for i, k in enumerate(keyframes)])
        self._id_order = None
        return ids

    def _assign_ids(self, keyframes) -> list[int]:
        existing = self.column("id")
        given = [int(k.id) for k in keyframes if k.id >= 0]
        next_id = max([int(existing.max()) if len(existing) else -1] + given) + 1
        ids = []
        for k in keyframes:
            ids.append(int(k.id) if k.id >= 0 else next_id)
            next_id += k.id < 0
        clash = set(given) & set(existing.tolist())
        if clash or len(set(given)) != len(given):
            raise MapError(f"keyframe ids already in map {self.name!r} or repeated: {sorted(clash)[:5] or given[:5]}")
        return ids

    def _place(self, keyframes) -> list[Keyframe]:
        """Fill in the coordinate fields the map derives (UTM, map-frame pose, lat/lon) and set the frame."""
        geo = [k for k in keyframes if k.has_geotag]
        if geo and self.frame is None:
            has_local = np.isfinite(self.column("x")).any() or \
                any(k.has_position for k in keyframes if not k.has_geotag)
            if has_local:
                raise MapError(f"map {self.name!r} holds positions without geotags (no map frame); cannot add "
                               f"geotagged keyframes to it")
            self.frame = MapFrame.at(geo[0].lat, geo[0].lon, geo[0].alt)
        out = []
        frame = self.frame
        lat = np.array([k.lat for k in keyframes], dtype=np.float64)
        lon = np.array([k.lon for k in keyframes], dtype=np.float64)
        ok = np.isfinite(lat) & np.isfinite(lon)
        east = np.full(len(keyframes), math.nan)
        north = np.full(len(keyframes), math.nan)
        if ok.any():
            e, n, _ = to_utm(lat[ok], lon[ok], frame.zone)
            east[ok], north[ok] = e, n
        for i, k in enumerate(keyframes):
            if ok[i]:
                z = k.alt - frame.origin_alt if math.isfinite(k.alt) else 0.0
                k = k.replace(utm_east=float(east[i]), utm_north=float(north[i]), x=float(east[i] - frame.origin_east),
                              y=float(north[i] - frame.origin_north), z=float(z))
            elif k.has_position and frame is not None:
                la, lo, al = frame.to_wgs84(k.x, k.y, k.z if math.isfinite(k.z) else 0.0)
                k = k.replace(lat=float(la), lon=float(lo), alt=float(al) if math.isfinite(k.z) else math.nan,
                              utm_east=k.x + frame.origin_east, utm_north=k.y + frame.origin_north)
            out.append(k)
        return out

    def _ensure_trained(self, x: np.ndarray) -> None:
        if self._index.is_trained:
            return
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None and hasattr(ivf, "do_polysemous_training"):
            # Polysemous training (an annealing of PQ code order, used only with polysemous_ht at search time,
            # which maps never set) makes "IVF...,PQ..." training take minutes instead of seconds.
            ivf.do_polysemous_training = False
        try:
            self._index.train(x)
        except RuntimeError as e:
            raise MapError(f"index {self.index_factory!r} cannot be trained on {len(x)} descriptors "
                           f"({str(e).splitlines()[0]}); use 'Flat' for small maps or add more keyframes at "
                           f"once") from None
        self._apply_search_params()

    # -- search ----------------------------------------------------------------------------------------------
    def search(self, descriptors, k: int, near=None) -> list[list[Match]]:
        """For each query row, up to `k` matches, best (highest similarity) first. `near=(x, y, radius_m)` keeps
        only keyframes within that radius of (x, y) in the map frame."""
        q = normalised(as_matrix(descriptors, self.dim, "query descriptors"))
        k = int(k)
        if k <= 0 or len(self) == 0 or len(q) == 0:
            return [[] for _ in range(len(q))]
        if near is None:
            sims, rows = self._index.search(q, min(max(k, self.rerank), len(self)))
            if self.rerank:
                sims, rows = rerank_exact(q, rows, self.descriptors, min(k, len(self)))
        else:
            cx, cy, radius = (float(v) for v in near)
            pos = self.positions()
            inside = np.flatnonzero(((pos[:, 0] - cx) ** 2 + (pos[:, 1] - cy) ** 2) <= radius * radius)
            if len(inside) == 0:
                return [[] for _ in range(len(q))]
            sims, rows = self._search_subset(q, min(k, len(inside)), inside)
        return [[Match(self._keyframe_at(int(r)), float(s)) for s, r in zip(srow, rrow) if r >= 0]
                for srow, rrow in zip(sims, rows)]

    def _search_subset(self, q, k, rows):
        if len(rows) <= EXACT_SUBSET_MAX:
            sims, local = faiss.knn(q, np.ascontiguousarray(self.descriptors[rows]), k,
                                    metric=faiss.METRIC_INNER_PRODUCT)
            return sims, np.where(local >= 0, rows[np.maximum(local, 0)], -1)
        selector = faiss.IDSelectorBatch(rows.astype(np.int64))
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
        elif isinstance(self._index, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=self._index.hnsw.efSearch)
        else:
            params = faiss.SearchParameters(sel=selector)
        sims, found = self._index.search(q, max(k, self.rerank), params=params)
        return rerank_exact(q, found, self.descriptors, k) if self.rerank else (sims, found)

    # -- saving ----------------------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the map to the directory `path` atomically (temporary sibling directory, fsync, rename): an
        interrupted save leaves the previous map at `path` untouched. Other entries of an existing `path` (a
        README, a recording) are kept. Returns `path`."""
        target = storage.refuse_foreign_target(path)
        tmp = storage.temporary_sibling(target)
        try:
            self._write(tmp)
            storage.carry_over_extras(target, tmp)
            storage.fsync_tree(tmp)
            storage.replace_directory(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.on_disk:
            self._disk_files = {name: target / name for name in self._disk_files}
        if self._encoder_path is not None:
            self._encoder_path = target / storage.ENCODER
            self._sidecars = {name: target / name for name in self._sidecars}
        return target

    def _write(self, folder: Path) -> None:
        storage.write_keyframes(folder / storage.KEYFRAMES, {f: self._cols[f].array for f in KEYFRAME_FIELDS})
        if self.on_disk:
            for name, source in self._disk_files.items():
                storage.link_or_copy(source, folder / name)
        else:
            np.save(folder / storage.DESCRIPTORS, np.ascontiguousarray(self.descriptors))
        faiss.write_index(self._index, str(folder / storage.INDEX))
        if self._encoder_path is not None:
            shutil.copyfile(self._encoder_path, folder / storage.ENCODER)
            for name, path in self._sidecars.items():
                shutil.copyfile(path, folder / name)
        if self.local_features is not None:
            self.local_features.write(folder)
        if self.structure is not None:
            self.structure.write(folder)
        (folder / storage.MANIFEST).write_bytes(storage.manifest_bytes(self.manifest(storage.describe_files(folder))))

    def manifest(self, files: dict | None = None) -> dict:
        synthetic = self.column("synthetic")
        extra = {"local_features": self.local_features.manifest_entry()} if self.local_features is not None else {}
        if self.structure is not None:
            extra["structure"] = self.structure.manifest_entry()
        if self.on_disk:
            extra["on_disk"] = True
        return {**extra,
            "format": storage.FORMAT,
            "format_version": storage.FORMAT_VERSION,
            "name": self.name,
            "map_id": self.map_id,
            "created": self.created,
            "count": len(self),
            "synthetic_positions": int(synthetic.sum()),
            "dim": self.dim,
            "encoder_fingerprint": self.fingerprint,
            "metric": "inner_product",
            "index_factory": self.index_factory,
            "search_params": self.search_params,
            "rerank": self.rerank,
            "crs": "EPSG:4326 (WGS84 lat/lon/alt); UTM easting/northing in the map frame's zone; map frame ENU metres",
            "frame": asdict(self.frame) if self.frame else None,
            "files": files or {},
        }

    # -- internals -------------------------------------------------------------------------------------------
    def _new_index(self):
        try:
            return faiss.index_factory(self.dim, self.index_factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise MapError(f"bad FAISS index factory string {self.index_factory!r} for dimension {self.dim} "
                           f"({str(e).splitlines()[0]})") from None

    def _apply_search_params(self):
        if self.search_params and self._index.is_trained:
            try:
                faiss.ParameterSpace().set_index_parameters(self._index, self.search_params)
            except RuntimeError as e:
                raise MapError(f"search parameters {self.search_params!r} do not apply to index "
                               f"{self.index_factory!r} ({str(e).splitlines()[0]})") from None

    def rebuilt(self, index_factory: str, search_params: str | None = None, name: str | None = None) -> "MapDatabase":
        """A copy of this map with a different index (trained on all of its descriptors)."""
        other = MapDatabase.create(name or self.name, self.dim, self.fingerprint, self.frame, index_factory,
                                   search_params, self.rerank)
        other._encoder_path = self._encoder_path
        other._sidecars = dict(self._sidecars)
        other.map_id = self.map_id  # the same keyframes, only indexed differently
        other.local_features = self.local_features.copy() if self.local_features is not None else None
        other.structure = self.structure.copy() if self.structure is not None else None
        other.add(self.descriptors, list(self.keyframes()))
        return other


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
