"""keyframes.sqlite: the keyframe metadata of a map, one row per keyframe, `row` = its row in the descriptors
and the index."""

from __future__ import annotations

import math
from pathlib import Path
import sqlite3

import numpy as np

from geoloc_ros.mapping.errors import MapError
from geoloc_ros.mapping.keyframe import FLOAT_FIELDS, KEYFRAME_FIELDS, TEXT_FIELDS

_BATCH = 100_000  # rows converted between SQLite and numpy at a time

_SQL_TYPES = {"id": "INTEGER PRIMARY KEY", "label": "TEXT NOT NULL", "stamp_ns": "INTEGER NOT NULL",
              "source": "TEXT NOT NULL", "synthetic": "INTEGER NOT NULL",
              **{c: "TEXT NOT NULL DEFAULT ''" for c in TEXT_FIELDS}}


def write_keyframes(path: Path, columns: dict) -> None:
    """`columns`: name -> sequence (all KEYFRAME_FIELDS), in row order. NaN is stored as NULL (SQLite has no NaN)."""
    cols = ("row",) + KEYFRAME_FIELDS
    schema = ", ".join(f"{c} {_SQL_TYPES.get(c, 'REAL') if c != 'row' else 'INTEGER NOT NULL UNIQUE'}" for c in cols)
    n = len(columns["id"])
    con = sqlite3.connect(str(path))
    try:
        con.execute("PRAGMA journal_mode=OFF")  # the file lives in a temporary directory until it is complete
        con.execute(f"CREATE TABLE keyframes ({schema})")

        def rows():
            for lo in range(0, n, _BATCH):  # Python objects for one batch at a time: maps of millions of rows
                as_py = {c: (columns[c][lo:lo + _BATCH].tolist() if hasattr(columns[c], "tolist")
                             else list(columns[c][lo:lo + _BATCH])) for c in KEYFRAME_FIELDS}
                for r in range(len(as_py["id"])):
                    yield (lo + r,) + tuple(_to_sql(c, as_py[c][r]) for c in KEYFRAME_FIELDS)

        con.executemany(f"INSERT INTO keyframes VALUES ({', '.join('?' * len(cols))})", rows())
        con.commit()
    finally:
        con.close()


def _to_sql(column, value):
    if column in FLOAT_FIELDS:
        return None if value is None or math.isnan(value) else float(value)
    if column == "synthetic":
        return int(bool(value))
    return value


def read_keyframes(path: Path, data=None) -> dict:
    """name -> numpy column (floats with NaN for NULL; label/source as object arrays), in row order. `data`: the
    file's bytes already read (and verified), parsed in memory instead of reading `path` again. Every value is
    checked (a table, not a view; no generated columns; integers, finite-or-NULL reals, text) and a file that is
    not such a table is refused with MapError naming it and the reason."""
    if data is None:
        con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        size = Path(path).stat().st_size if Path(path).is_file() else 0
    else:
        con = sqlite3.connect(":memory:")
        size = len(data)
    # what a crafted file could ask of SQLite is bounded: no value larger than the file, a step budget per query
    con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max(size, 1 << 16))
    steps = [0]

    def budget():
        steps[0] += 1
        return steps[0] > 1000 + size // 8  # 1000 steps per call: far more than a table scan of this file needs

    con.set_progress_handler(budget, 1000)
    try:
        if data is not None:
            if len(data) == 0:
                raise MapError(f"{path}: empty")
            con.deserialize(bytes(data))
        kind = con.execute("SELECT type FROM sqlite_master WHERE name = 'keyframes'").fetchone()
        if kind is None or kind[0] != "table":
            raise MapError(f"{path}: no keyframes table")
        info = con.execute("PRAGMA table_xinfo(keyframes)").fetchall()
        if any(r[6] != 0 for r in info):
            raise MapError(f"{path}: the keyframes table has generated or hidden columns")
        present = {r[1] for r in info}
        missing = [c for c in ("row",) + KEYFRAME_FIELDS if c not in present and c not in TEXT_FIELDS]
        if missing:
            raise MapError(f"{path}: the keyframes table has no column {', '.join(missing)}")
        # maps written before the text columns existed have none: they read as '' (docs/language.md)
        selected = [c if c in present or c not in TEXT_FIELDS else "''" for c in KEYFRAME_FIELDS]
        cur = con.execute(f"SELECT row, {', '.join(selected)} FROM keyframes ORDER BY row")
        batches = []
        while data := cur.fetchmany(_BATCH):  # one batch of Python row tuples at a time, then numpy columns
            batches.append(_checked_columns(path, data, _BATCH * len(batches)))
    except MapError:
        raise
    except (sqlite3.Error, MemoryError, ValueError) as e:  # ValueError: text that is not UTF-8
        raise MapError(f"{path}: not a readable keyframe database ({type(e).__name__}: {e})") from None
    finally:
        con.close()
    cols = {name: np.concatenate([b[name] for b in batches]) if batches else _checked_columns(path, [], 0)[name]
            for name in KEYFRAME_FIELDS}
    if len(np.unique(cols["id"])) != len(cols["id"]) or np.any(cols["id"] < 0):
        raise MapError(f"{path}: keyframe ids repeat or are negative")
    return cols


def _checked_columns(path: Path, data: list, first_row: int) -> dict:
    try:
        return _columns(path, data, first_row)
    except (ValueError, TypeError, OverflowError) as e:
        raise MapError(f"{path}: a keyframe value of the wrong type ({type(e).__name__}: {str(e)[:200]})") from None


def _columns(path: Path, data: list, first_row: int) -> dict:
    """Columns of rows first_row, first_row + 1, ... (`data`: SQLite row tuples), every value checked."""
    rows = [r[0] for r in data]
    if not all(type(r) is int for r in rows) or rows != list(range(first_row, first_row + len(rows))):
        raise MapError(f"{path}: keyframe rows are not 0..N-1")
    cols = {}
    for j, name in enumerate(KEYFRAME_FIELDS, start=1):
        values = [r[j] for r in data]
        if name in FLOAT_FIELDS:
            if not all(v is None or type(v) in (int, float) for v in values):
                raise MapError(f"{path}: column {name} holds values that are not numbers")
            cols[name] = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
            if np.isinf(cols[name]).any():
                raise MapError(f"{path}: column {name} holds infinite values")
        elif name in ("id", "stamp_ns", "synthetic"):
            if not all(type(v) is int for v in values):
                raise MapError(f"{path}: column {name} holds values that are not integers")
            cols[name] = np.array(values, dtype=bool if name == "synthetic" else np.int64)
        else:
            if not all(v is None or type(v) is str for v in values):
                raise MapError(f"{path}: column {name} holds values that are not text")
            cols[name] = np.array(["" if v is None else v for v in values], dtype=object).reshape(len(values))
    lat, lon = cols["lat"], cols["lon"]
    if np.any(np.abs(lat) > 90) or np.any(np.abs(lon) > 180):
        raise MapError(f"{path}: a latitude or longitude out of range")
    return cols
