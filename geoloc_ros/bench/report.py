"""Benchmark results -> JSON files, markdown tables and PNG plots (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


def machine_line(m: dict) -> str:
    v = m.get("versions", {})
    return (f"{m.get('cpu')} ({m.get('cores')} cores; {', '.join(m.get('cpu_flags') or []) or 'no AVX-512/AMX'}), "
            f"GPU: {m.get('gpu') or 'none (GPU figures not measured)'}; torch {v.get('torch')}, onnxruntime "
            f"{v.get('onnxruntime')}, Python {v.get('python')}, geoloc_ros {v.get('geoloc_ros_commit')}; "
            f"load average at start {m.get('load_average_at_start')}; {m.get('utc')}; command `{m.get('command')}`")


def _f(x, fmt="{:.1f}"):
    return "—" if x is None else fmt.format(x)


def encoder_table(result: dict) -> str:
    batches = [str(b) for b in result["batches"]]
    head = ["model (input)", "backend"]
    for b in batches:
        head += [f"ms/img b{b}", f"img/s b{b}", f"× eager b{b}"]
    head += ["load ΔRSS MB", f"peak ΔRSS b{batches[-1]} MB", "min cosine"]
    if result.get("device") == "cuda":
        head.append("GPU peak MB")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in result["models"]:
        h, w = m["input"]
        for label, r in m["variants"].items():
            row = [f"{m['model']} ({h}×{w})", f"**auto (default): {r['chose']}**" if r.get("chose") else label]
            if "error" in r:
                lines.append("| " + " | ".join(row + [f"not measured: {r['error'][:80]}"] +
                                               [""] * (len(head) - 3)) + " |")
                continue
            for b in batches:
                run = r["runs"].get(b, {})
                row += [_f(run.get("ms_per_image")), _f(run.get("images_per_s"), "{:.2f}"),
                        _f(run.get("ratio_vs_torch"), "{:.2f}")]
            row += [_f(r.get("load_rss_mb"), "{:.0f}"), _f(r["runs"].get(batches[-1], {}).get("peak_rss_during_mb"),
                                                          "{:.0f}"), _f(r.get("cosine_min_vs_fp32"), "{:.5f}")]
            if result.get("device") == "cuda":
                row.append(_f(r["runs"].get(batches[-1], {}).get("gpu_peak_allocated_mb"), "{:.0f}"))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def mapbuild_table(result: dict) -> str:
    if "error" in result:
        return result["error"]
    lines = [f"{result['images']} frames, {result['model']} ({result['weights']}), batch {result['batch_size']}; "
             f"{result['mode']}", "", "| backend | images/s | × eager | seconds |", "|---|---|---|---|"]
    for label, r in result["backends"].items():
        ratio = _f(r.get("ratio_vs_torch"), "{:.2f}")
        lines.append(f"| {label} | {r['images_per_s']:.1f} | {ratio} | {r['seconds']} |")
    return "\n".join(lines)


def plot_encoder(result: dict, path: Path, title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    batches = [str(b) for b in result["batches"]]
    models = result["models"]
    labels = []
    for m in models:
        labels += [k for k, r in m["variants"].items() if "error" not in r and k not in labels]
    if not labels:
        return None
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.2), squeeze=False)
    width = 0.8 / len(labels)
    for ax, b in zip(axes[0], batches):
        x = np.arange(len(models))
        for i, label in enumerate(labels):
            vals = [m["variants"].get(label, {}).get("runs", {}).get(b, {}).get("images_per_s", np.nan) for m in models]
            bars = ax.bar(x + (i - (len(labels) - 1) / 2) * width, vals, width, label=label)
            for bar, m in zip(bars, models):
                ratio = m["variants"].get(label, {}).get("runs", {}).get(b, {}).get("ratio_vs_torch")
                if ratio is not None:
                    ax.annotate(f"×{ratio:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_xticks(x, [f"{m['model']}\n{m['input'][0]}×{m['input'][1]}" for m in models], fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("images/s (log)")
        ax.set_title(f"batch {b}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def train_table(result: dict) -> str:
    if "error" in result:
        return result["error"]
    lines = [f"stage-2 steps of {result['recipe']}: {result['arch']} at {result['image_size'][0]}×"
             f"{result['image_size'][1]}, batch {result['batch_size']}, {result['steps_timed']} steps timed, "
             f"{result['threads']} threads", "", "| variant | s/step | images/s | × fp32 NCHW |", "|---|---|---|---|"]
    for label, r in result["variants"].items():
        if "error" in r:
            lines.append(f"| {label} | not measured: {r['error']} | | |")
        else:
            lines.append(f"| {label} | {r['s_per_step']:.3f} | {r['images_per_s']:.0f} | "
                         f"{_f(r.get('speedup_vs_fp32_nchw'), '{:.2f}')} |")
    return "\n".join(lines)


def plot_mapbuild(result: dict, path: Path, title: str) -> Path | None:
    if "error" in result or not result.get("backends"):
        return None
    return plot_images_per_s({n: r["images_per_s"] for n, r in result["backends"].items()}, path, title)


def plot_train(result: dict, path: Path, title: str) -> Path | None:
    rates = {n: r["images_per_s"] for n, r in result.get("variants", {}).items() if "images_per_s" in r}
    return plot_images_per_s(rates, path, title) if rates else None


def plot_images_per_s(rates: dict, path: Path, title: str) -> Path:
    """One bar per label: images/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    names = list(rates)
    ax.bar(names, [rates[n] for n in names], color="tab:green")
    ax.set_ylabel("images/s")
    ax.set_title(title, fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
