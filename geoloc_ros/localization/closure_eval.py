"""Loop-closure precision-recall over the confidence: a query sequence replayed through the Localizer (no DDS) on a
map built by `geoloc map build`, every closure kept (loop_closure_min_confidence 0) and the threshold swept.

A closure is correct when its first candidate's keyframe lies within `tolerance_m` of the query's position (25 m:
Nordland frames are placed on a straight line, `--sequence-spacing` metres apart, as the rest of the project
does; a recording placed by odometry compares positions in the odometry frame). Recall counts correct closures
over every query frame the node would answer (blank frames, which the node refuses, are left out); precision
counts them over the closures published at that threshold."""

from __future__ import annotations

from dataclasses import asdict, replace
import json
from pathlib import Path

import numpy as np

from geoloc_ros.imaging import is_blank

T0_NS = 1_700_000_000 * 10**9


def replay(config, queries, blank_threshold: float = 3.0, batch_size: int = 32, odometry=None,
           fixes=None, images=None) -> list[dict]:
    """Each query record (geoloc_ros.datasets.GeoImage) through a Localizer on `config` (a LocalizerConfig: its
    maps, encoder, consistency mode...), closures unthresholded: one row per frame that is not blank by
    `blank_threshold` (the node's parameter). `odometry`: an optional (x, y, z) per record, given to the frames as
    the node's odom_topic would; `fixes`: an optional ((lat, lon, alt), (east var, east-north cov, north var)) per
    record, as the node's fix_topic would; `images`: the decoded RGB image per record (a recording held in memory)
    instead of reading `rec.path`."""
    from geoloc_ros.datasets import read_image
    from geoloc_ros.geodesy import to_utm
    from geoloc_ros.localization import Frame, Localizer, load_snapshot

    localizer = Localizer(load_snapshot(replace(config, loop_closure_min_confidence=0.0)))
    rows, batch = [], []

    def flush():
        for (rec, _), result in zip(batch, localizer.process([f for _, f in batch])):
            row = {"query": rec.label, "closure": None}
            if result.closures:
                c = result.closures[0]
                if rec.utm_zone:
                    east, north, _ = to_utm(float(c.keyframe.lat), float(c.keyframe.lon), rec.utm_zone)
                else:  # positions without a geotag (odometry): the map's x/y are the recording's own
                    east, north = float(c.keyframe.x), float(c.keyframe.y)
                error = float(np.hypot(east - rec.utm_east, north - rec.utm_north))
                row["closure"] = {"keyframe": c.keyframe.label, "error_m": error, "confidence": c.confidence,
                                  "features": result.evidence.features(), "evidence": asdict(result.evidence)}
            rows.append(row)
        batch.clear()

    for i, rec in enumerate(queries):
        rgb = read_image(rec.path) if images is None else images[i]
        if is_blank(rgb, blank_threshold):
            continue
        odom = None if odometry is None else tuple(odometry[i])
        fix, covariance = (None, None) if fixes is None else fixes[i]
        batch.append((rec, Frame(camera="/camera/image_raw", topic="/camera/image_raw", stamp_ns=T0_NS + i * 10**9,
                                 frame_id="camera", rgb=rgb, odom=odom, fix=fix, fix_covariance=covariance)))
        if len(batch) >= batch_size:
            flush()
    flush()
    return rows


def curve(rows, tolerance_m: float = 25.0) -> dict:
    """Precision and recall at every distinct confidence (closures with confidence >= t published)."""
    closures = [r["closure"] for r in rows if r["closure"] is not None]
    conf = np.array([c["confidence"] for c in closures])
    ok = np.array([c["error_m"] <= tolerance_m for c in closures], dtype=bool)
    order = np.argsort(-conf, kind="stable")
    conf, ok = conf[order], ok[order]
    tp = np.cumsum(ok)
    published = np.arange(1, len(ok) + 1)
    last = np.r_[conf[1:] != conf[:-1], True] if len(conf) else np.zeros(0, bool)  # ties published together
    thresholds, precision = conf[last], tp[last] / published[last]
    recall = tp[last] / max(len(rows), 1)
    return {"thresholds": thresholds.tolist(), "precision": precision.tolist(), "recall": recall.tolist(),
            "frames": len(rows), "closures": len(closures), "correct": int(ok.sum())}


def recall_at_precision(c: dict, target: float) -> tuple[float, float | None]:
    """(best recall with precision >= target, the lowest threshold giving it; None when no threshold does)."""
    best, at = 0.0, None
    for t, p, r in zip(c["thresholds"], c["precision"], c["recall"]):
        if p >= target and r > best:
            best, at = r, t
    return best, at


def at_threshold(c: dict, threshold: float) -> dict:
    """Published closures, precision and recall at one threshold (the operating point)."""
    idx = [i for i, t in enumerate(c["thresholds"]) if t >= threshold]
    if not idx:
        return {"threshold": threshold, "published": 0, "precision": float("nan"), "recall": 0.0}
    i = idx[-1]
    published = round(c["recall"][i] * c["frames"] / c["precision"][i]) if c["precision"][i] > 0 else None
    return {"threshold": threshold, "published": published, "precision": c["precision"][i], "recall": c["recall"][i]}


def summarise(rows, threshold: float, tolerance_m: float = 25.0) -> dict:
    c = curve(rows, tolerance_m)
    r99, t99 = recall_at_precision(c, 0.99)
    r100, t100 = recall_at_precision(c, 1.0)
    unthresholded = at_threshold(c, 0.0)
    return {"curve": c, "operating_point": at_threshold(c, threshold), "all_closures": unthresholded,
            "recall_at_99": r99, "threshold_at_99": t99, "recall_at_100": r100, "threshold_at_100": t100}


def plot(summaries: dict, path, title: str):
    """One precision-recall curve per entry of `summaries` (label -> summarise()), operating points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    for label, s in summaries.items():
        c, op = s["curve"], s["operating_point"]
        ax.plot(c["recall"], c["precision"], "-", lw=1.2, label=label)
        ax.plot([op["recall"]], [op["precision"]], "o", ms=6, color=ax.lines[-1].get_color())
    ax.axhline(0.99, color="grey", lw=0.8, ls="--", label="precision 0.99")
    ax.set_xlabel("recall (correct closures / answered frames)")
    ax.set_ylabel("precision of ~/loop_closures")
    ax.set_xlim(0, 1)
    ax.set_ylim(0.5, 1.005)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(summaries: dict) -> str:
    lines = ["| run | frames | closures (all) | precision (all) | at default: published | precision | recall | "
             "recall @ 99 % | recall @ 100 % |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, s in summaries.items():
        a, op = s["all_closures"], s["operating_point"]
        lines.append(f"| {label} | {s['curve']['frames']} | {s['curve']['closures']} | {a['precision']:.3f} | "
                     f"{op['published']} | {op['precision']:.3f} | {op['recall']:.3f} | {s['recall_at_99']:.3f} | "
                     f"{s['recall_at_100']:.3f} |")
    return "\n".join(lines)


def write_json(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=1, default=float) + "\n")


def replay_session(config, drive, odometry=None, camera: str = "/camera/image_raw",
                   blank_threshold: float = 3.0) -> list[dict]:
    """A drive through a Localizer on the session map alone (no prior map; `config` a LocalizerConfig), one frame
    per second, closures unthresholded: one row per frame that is not blank by `blank_threshold`. `drive`: (image
    path, place in metres along the route) per frame, in driving order; a closure is judged by the places of its
    frame and of its keyframe's frame. `odometry`: an optional (x, y, z) per frame, given to the frames as the
    node's odom_topic would."""
    from geoloc_ros.datasets import read_image
    from geoloc_ros.localization import Frame, Localizer, SessionMap, load_snapshot

    snapshot = load_snapshot(replace(config, maps=(), loop_closure_min_confidence=0.0))
    localizer = Localizer(snapshot, SessionMap(snapshot.encoder))
    place_at, rows = {}, []
    for i, (path, place) in enumerate(drive):
        rgb = read_image(path)
        if is_blank(rgb, blank_threshold):
            continue
        stamp = T0_NS + i * 10**9
        place_at[stamp] = (i, float(place))
        odom = None if odometry is None else tuple(odometry[i])
        result = localizer.process([Frame(camera=camera, topic=camera, stamp_ns=stamp, frame_id="camera", rgb=rgb,
                                          odom=odom)])[0]
        row = {"frame": i, "image": str(path), "place_m": float(place), "closure": None}
        if result.closures:
            c = result.closures[0]
            k, k_place = place_at[int(c.keyframe.stamp_ns)]
            row["closure"] = {"keyframe_frame": k, "frames_back": i - k, "error_m": abs(k_place - place),
                              "confidence": c.confidence, "similarity": c.similarity,
                              "features": result.evidence.features(), "evidence": asdict(result.evidence)}
        rows.append(row)
    return rows
