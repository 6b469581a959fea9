"""The SLAM demo's plot: truth, odometry and the optimised trajectory in the map frame (top view)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_trajectories(path, truth, odometry, optimised, title: str = "", closures=()) -> Path:
    """Save a top view (x east, y north) of the three N x 2+ position arrays; `closures`: (i, j) index pairs
    drawn as thin lines on the optimised trajectory. The PNG is written beside and renamed over `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 6))
    for xy, label, style in ((truth, "truth", "k-"), (odometry, "odometry", "r--"), (optimised, "pose graph", "b-")):
        xy = np.asarray(xy, float)
        ax.plot(xy[:, 0], xy[:, 1], style, lw=1.2, label=label)
    opt = np.asarray(optimised, float)
    for i, j in closures:
        ax.plot([opt[i, 0], opt[j, 0]], [opt[i, 1], opt[j, 1]], color="tab:green", lw=0.5, alpha=0.6)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x east (m)")
    ax.set_ylabel("y north (m)")
    ax.set_title(title)
    ax.legend(loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path
