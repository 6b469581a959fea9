"""Write the pose graph as a g2o file (gtsam.writeG2o), atomically, and only over g2o files this module wrote.

The first line is a comment that marks the file as ours; g2o readers (g2o_viewer, gtsam.readG2o) skip it. The
target must be a regular file or absent: a FIFO would block the writer and a device such as /dev/zero never ends.
"""

from __future__ import annotations

import os
from pathlib import Path
import stat
import tempfile

import gtsam

from geoloc_ros.slam.graph import PoseGraph
from geoloc_ros.slam.noise import gaussian

MARKER = "# geoloc_pose_graph g2o"


class G2oError(RuntimeError):
    """The graph could not be written where asked (nothing was changed there)."""


def check_path(path) -> Path:
    """`path` expanded, when it names a regular file (a link to one included) or nothing yet; G2oError when it is
    a directory, FIFO, device or socket."""
    path = Path(path).expanduser()
    if not str(path).strip() or path.name in ("", ".", ".."):
        raise G2oError(f"g2o_path {str(path)!r} names no file")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as e:
        raise G2oError(f"{path}: {e.strerror}") from e
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, device or socket)"
        raise G2oError(f"{path} is {kind}")
    return path


def is_ours(path: Path) -> bool:
    """Whether the regular file at `path` starts with our marker (reads at most one short line)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline(len(MARKER) + 1).startswith(MARKER)
    except OSError:
        return False


def write_g2o(graph: PoseGraph, path) -> str:
    """Write every pose node (VERTEX_SE3:QUAT, optimised) and every odometry and loop-closure edge
    (EDGE_SE3:QUAT, measurement and information) to `path`; returns a one-line summary."""
    path = check_path(path)
    if path.exists() and not is_ours(path):
        raise G2oError(f"{path} exists and is not a g2o file written by geoloc_pose_graph; refusing to overwrite")
    if not len(graph):
        raise G2oError("the graph has no poses yet")
    graph.flush()  # batched odometry nodes into iSAM2 first, so edges and estimate agree
    factors, values = gtsam.NonlinearFactorGraph(), gtsam.Values()
    estimate = graph.estimate
    # g2o ids are plain integers (gtsam.writeG2o keeps only a Symbol's index, so two robots' X(0) would collide):
    # the keys in order, numbered from 0 (a single robot's X(i) is vertex i).
    vertex = {key: n for n, key in enumerate(sorted(estimate.keys()))}
    for e in graph.edges:
        factors.add(gtsam.BetweenFactorPose3(vertex[e.key_from], vertex[e.key_to], e.measured, gaussian(e.covariance)))
    for key, n in vertex.items():
        values.insert(n, estimate.atPose3(key))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, raw = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".raw", dir=path.parent)
    os.close(fd)
    tmp = raw[: -len(".raw")] + ".tmp"
    try:
        gtsam.writeG2o(factors, values, raw)
        with open(raw, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
            dst.write(f"{MARKER}: {len(graph)} poses, {graph.closures} loop closures, "
                      f"{graph.absolute_factors} absolute factors (not in g2o)\n")
            dst.write(src.read())
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, path)
    finally:
        for leftover in (raw, tmp):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return f"wrote {len(graph)} poses and {len(graph.edges)} edges to {path}"
