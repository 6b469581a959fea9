"""keyframes.sqlite: the keyframe metadata of a map, one row per keyframe, `row` = its row in the descriptors
and the index."""

from __future__ import annotations

import math
from pathlib import Path
import sqlite3

import numpy as np

from geoloc_ros.mapping.errors import MapError
from geoloc_ros.mapping.keyframe import FLOAT_FIELDS, KEYFRAME_FIELDS, TEXT_FIELDS

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
            as_py = {c: (columns[c].tolist() if hasattr(columns[c], "tolist") else list(columns[c]))
                     for c in KEYFRAME_FIELDS}
            for r in range(n):
                yield (r,) + tuple(_to_sql(c, as_py[c][r]) for c in KEYFRAME_FIELDS)

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
    file's bytes already read (and verified), parsed in memory instead of reading `path` again."""
    if data is None:
        con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    else:
        con = sqlite3.connect(":memory:")
    try:
        if data is not None:
            con.deserialize(bytes(data))
        present = {r[1] for r in con.execute("PRAGMA table_info(keyframes)")}
        # maps written before the text columns existed have none: they read as '' (docs/language.md)
        selected = [c if c in present or c not in TEXT_FIELDS else "''" for c in KEYFRAME_FIELDS]
        cur = con.execute(f"SELECT row, {', '.join(selected)} FROM keyframes ORDER BY row")
        data = cur.fetchall()
    except sqlite3.DatabaseError as e:
        raise MapError(f"{path}: not a readable keyframe database ({e})") from None
    finally:
        con.close()
    rows = np.array([r[0] for r in data], dtype=np.int64)
    if not np.array_equal(rows, np.arange(len(rows))):
        raise MapError(f"{path}: keyframe rows are not 0..N-1")
    cols = {}
    for j, name in enumerate(KEYFRAME_FIELDS, start=1):
        values = [r[j] for r in data]
        if name in FLOAT_FIELDS:
            cols[name] = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
        elif name in ("id", "stamp_ns"):
            cols[name] = np.array(values, dtype=np.int64)
        elif name == "synthetic":
            cols[name] = np.array(values, dtype=bool)
        else:
            cols[name] = np.array(values, dtype=object)
    return cols
