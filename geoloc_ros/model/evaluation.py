"""Recall@N evaluation with FAISS: the 25 m positive-radius protocol and the frame-tolerance protocol.

Ours (`recall_at_n`): fraction of queries (with at least one positive in the database) whose N nearest database
descriptors (inner product on L2-normalised descriptors, faiss.IndexFlatIP) contain a positive; positives closer
than 25 m. The VG benchmark's (`vg_recall_at_n` with ``positives_by_radius(..., inclusive=True)``): every query in
the denominator, positives at <= 25 m, L2 search on the raw descriptors (docs/model.md, "Evaluation").
"""

from __future__ import annotations

import numpy as np

from geoloc_ros.model.encoder import to_rgb_uint8

DEFAULT_NS = (1, 5, 10, 20)
POSITIVE_RADIUS_M = 25.0  # the standard VPR protocol (ProGEO/CosPlace --positive_dist_threshold 25)


def positives_by_radius(db_xy, q_xy, radius=POSITIVE_RADIUS_M, inclusive: bool = False) -> list[np.ndarray]:
    """Per query, the database indices closer than `radius` metres (UTM easting/northing, same zone); with
    `inclusive`, also those at exactly `radius` (the VG benchmark's sklearn radius_neighbors counts <= radius).
    FAISS finds the candidates in float32 with a margin; the decision is taken on float64 distances."""
    import faiss

    db_xy = np.asarray(db_xy, dtype=np.float64).reshape(-1, 2)
    q_xy = np.asarray(q_xy, dtype=np.float64).reshape(-1, 2)
    origin = db_xy.mean(axis=0) if len(db_xy) else np.zeros(2)
    index = faiss.IndexFlatL2(2)
    index.add(np.ascontiguousarray(db_xy - origin, dtype=np.float32))
    margin = float(radius) + 1.0 + 1e-6 * float(radius)
    lims, _, ids = index.range_search(np.ascontiguousarray(q_xy - origin, dtype=np.float32), margin ** 2)
    out = []
    for i in range(len(q_xy)):
        cand = ids[lims[i]:lims[i + 1]].astype(np.int64)
        d = np.sqrt(((db_xy[cand] - q_xy[i]) ** 2).sum(axis=1))
        out.append(np.sort(cand[d <= radius if inclusive else d < radius]))
    return out


def positives_by_frame(db_frames, q_frames, tolerance: int) -> list[np.ndarray]:
    """Per query, the database indices whose frame number is within `tolerance` frames of the query's."""
    db_frames = np.asarray(db_frames, dtype=np.int64)
    order = np.argsort(db_frames, kind="stable")
    sorted_frames = db_frames[order]
    out = []
    for f in np.asarray(q_frames, dtype=np.int64):
        lo = np.searchsorted(sorted_frames, f - tolerance, side="left")
        hi = np.searchsorted(sorted_frames, f + tolerance, side="right")
        out.append(np.sort(order[lo:hi]))
    return out


def search(db_desc, q_desc, k: int):
    """(similarities, indices), each (Nq, k), best first; exact inner-product search."""
    import faiss

    db_desc = np.ascontiguousarray(db_desc, dtype=np.float32)
    q_desc = np.ascontiguousarray(q_desc, dtype=np.float32)
    index = faiss.IndexFlatIP(db_desc.shape[1])
    index.add(db_desc)
    return index.search(q_desc, min(k, len(db_desc)))


def recall_at_n(db_desc, q_desc, positives, ns=DEFAULT_NS) -> dict:
    """{"R@1": %, ..., "queries": n_evaluated, "queries_without_positives": m}. Percentages 0-100."""
    ns = tuple(int(n) for n in ns)
    has_pos = np.array([len(p) > 0 for p in positives], dtype=bool)
    result = {"queries": int(has_pos.sum()), "queries_without_positives": int((~has_pos).sum()),
              "database": int(len(db_desc))}
    if not has_pos.any():
        result.update({f"R@{n}": float("nan") for n in ns})
        return result
    _, pred = search(db_desc, np.asarray(q_desc)[has_pos], max(ns))
    pos = [p for p, h in zip(positives, has_pos) if h]
    hits = np.zeros((len(pos), pred.shape[1]), dtype=bool)
    for i, (row, p) in enumerate(zip(pred, pos)):
        hits[i] = np.isin(row, p)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), np.iinfo(np.int64).max)
    for n in ns:
        result[f"R@{n}"] = float(100.0 * np.mean(first < n))
    return result


def vg_recall_at_n(db_desc, q_desc, positives, ns=DEFAULT_NS) -> dict:
    """The VG benchmark's Recall@N (ProGEO's and CosPlace's test.py, gmberton/VPR-methods-evaluation): exact L2
    search (faiss.IndexFlatL2) on the descriptors as given, and every query in the denominator, so a query with no
    positive in the database counts as a miss. Same keys as `recall_at_n`; "queries" counts all queries."""
    import faiss

    ns = tuple(int(n) for n in ns)
    db_desc = np.ascontiguousarray(db_desc, dtype=np.float32)
    q_desc = np.ascontiguousarray(q_desc, dtype=np.float32)
    n_without = int(sum(len(p) == 0 for p in positives))
    result = {"queries": int(len(q_desc)), "queries_without_positives": n_without, "database": int(len(db_desc))}
    if not len(q_desc) or not len(db_desc):
        result.update({f"R@{n}": float("nan") for n in ns})
        return result
    index = faiss.IndexFlatL2(db_desc.shape[1])
    index.add(db_desc)
    _, pred = index.search(q_desc, min(max(ns), len(db_desc)))
    for n in ns:
        hits = [np.isin(row[:n], p).any() for row, p in zip(pred, positives)]
        result[f"R@{n}"] = float(100.0 * np.mean(hits))
    return result


# ---- the classic raw-pixel baselines ---------------------------------------------------------------------------
def raw_pixel_descriptors(images, size=(32, 64), patch: int | None = None) -> np.ndarray:
    """Normalised raw pixels: grey, resized to `size` (H, W), zero-mean / unit-variance (whole image, or per
    `patch` x `patch` block as SeqSLAM's patch normalisation), flattened and L2-normalised (so the inner product is
    the normalised cross-correlation)."""
    import cv2

    h, w = size
    out = np.empty((len(images), h * w), dtype=np.float32)
    for i, img in enumerate(images):
        g = cv2.cvtColor(to_rgb_uint8(img), cv2.COLOR_RGB2GRAY)
        if g.shape != (h, w):
            g = cv2.resize(g, (w, h), interpolation=cv2.INTER_AREA)
        g = g.astype(np.float32)
        if patch:
            ph, pw = h // patch, w // patch
            blocks = g[:ph * patch, :pw * patch].reshape(ph, patch, pw, patch)
            spread = blocks.std(axis=(1, 3), keepdims=True) + 1e-6
            blocks = (blocks - blocks.mean(axis=(1, 3), keepdims=True)) / spread
            g = np.zeros_like(g)
            g[:ph * patch, :pw * patch] = blocks.reshape(ph * patch, pw * patch)
        else:
            g = (g - g.mean()) / (g.std() + 1e-6)
        v = g.reshape(-1)
        out[i] = v / (np.linalg.norm(v) + 1e-12)
    return out


def format_table(rows: dict, ns=(1, 5, 10)) -> str:
    """rows: {name: recall dict} -> a plain-text table."""
    name_w = max([len("method")] + [len(k) for k in rows])
    head = f"{'method':<{name_w}} | " + " | ".join(f"R@{n:<4}" for n in ns)
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        lines.append(f"{name:<{name_w}} | " + " | ".join(f"{r.get(f'R@{n}', float('nan')):6.1f}" for n in ns))
    return "\n".join(lines)
