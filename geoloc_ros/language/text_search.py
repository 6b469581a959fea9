"""Text queries over maps: words -> ranked keyframes, and which method answered (docs/language.md).

- "clip_text": the encoder has a CLIP text tower (language/text_tower.py): the text is embedded into the
  descriptor space and every map is searched with it like an image descriptor; the score is the cosine.
- "fts5": no text tower: SQLite FTS5 (porter stemming, unicode61 tokens, in memory, built once per set of maps)
  over the keyframes' stored address and caption text; the words are OR-ed and ranked by FTS5's bm25, and the
  score is -bm25 / (1 - bm25), in [0, 1), higher is better.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import re
import sqlite3

from geoloc_ros.localization.frames import Candidate

DEFAULT_RESULTS = 5


@dataclass
class TextAnswer:
    method: str  # "clip_text" | "fts5" | "" (nothing could run)
    message: str
    places: list = field(default_factory=list)  # Candidate, best first (similarity = the score)
    success: bool = True


class TextSearch:
    """Over `maps`: (map_id, map_name, MapDatabase) triples. `tower`: a TextTower or None; `why_no_tower`: the
    reason there is none, repeated in every FTS5 answer."""

    def __init__(self, maps, tower=None, why_no_tower: str = ""):
        self.maps = list(maps)
        self.tower = tower
        self.why_no_tower = why_no_tower
        self._fts = None

    def find(self, text: str, max_results: int = 0) -> TextAnswer:
        k = int(max_results) or DEFAULT_RESULTS
        text = (text or "").strip()
        if not text:
            return TextAnswer("", "empty text: nothing to look for", success=False)
        if not self.maps:
            return TextAnswer("", "no map loaded", success=False)
        if self.tower is not None:
            return self._clip(text, k)
        return self._text(text, k)

    def _clip(self, text: str, k: int) -> TextAnswer:
        q = self.tower.encode_text([text])
        found = []
        for map_id, name, db in self.maps:
            if db.dim != q.shape[1]:
                continue
            found += [Candidate(map_id, name, m.keyframe, m.similarity) for m in db.search(q, k)[0]]
        places = _ranked(found, k)
        return TextAnswer("clip_text", f"CLIP text tower ({self.tower.source.name if self.tower.source else 'given'}):"
                                       f" {len(places)} place(s) by cosine similarity to the text embedding", places)

    def _text(self, text: str, k: int) -> TextAnswer:
        words = re.findall(r"\w+", text.lower())
        if not words:
            return TextAnswer("fts5", "no words in the text", success=False)
        con = self._index()
        query = " OR ".join(f'"{w}"' for w in words)
        rows = con.execute("SELECT map_index, row, bm25(places) FROM places WHERE places MATCH ? "
                           "ORDER BY bm25(places) LIMIT ?", (query, k)).fetchall()
        places = []
        for map_index, row, rank in rows:
            map_id, name, db = self.maps[map_index]
            keyframe = db.keyframe(int(db.column("id")[row]))
            places.append(Candidate(map_id, name, keyframe, float(-rank / (1.0 - rank))))
        places = _ranked(places, k)
        why = f" ({self.why_no_tower})" if self.why_no_tower else ""
        stored = con.execute("SELECT count(*) FROM places").fetchone()[0]
        return TextAnswer("fts5", f"full-text match (SQLite FTS5, bm25) on the stored address/caption text of "
                                  f"{stored} keyframe(s), no CLIP text tower{why}: {len(places)} place(s)", places)

    def _index(self) -> sqlite3.Connection:
        if self._fts is None:
            con = sqlite3.connect(":memory:", check_same_thread=False)
            con.execute("CREATE VIRTUAL TABLE places USING fts5(address, caption, map_index UNINDEXED, "
                        "row UNINDEXED, tokenize='porter unicode61 remove_diacritics 2')")
            for i, (_, _, db) in enumerate(self.maps):
                address, caption = db.column("address"), db.column("caption")
                con.executemany("INSERT INTO places VALUES (?, ?, ?, ?)",
                                ((str(a), str(c), i, r) for r, (a, c) in enumerate(zip(address, caption)) if a or c))
            self._fts = con
        return self._fts


def _ranked(candidates, k: int) -> list:
    best = sorted(candidates, key=lambda c: -c.similarity)[:k]
    return [replace(c, rank=rank) for rank, c in enumerate(best)]


def text_search_for(maps, encoder, checkpoint=None) -> TextSearch:
    """A TextSearch over `maps` with the encoder's text tower when it carries one."""
    from geoloc_ros.language.text_tower import find_text_tower

    tower, why = find_text_tower(encoder, checkpoint) if encoder is not None else (None, "no encoder")
    return TextSearch(maps, tower, why)
