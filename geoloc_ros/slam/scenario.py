"""The two trips of `geoloc demo --slam` on real Nordland frames (ROS-free; docs/slam.md "The SLAM demo").

A trip is a list of steps 10 m apart (one Nordland frame spacing; positions synthetic: the frames lie on a
straight line), each with its stamp, true position, and the image shown there (None on an unimaged stretch),
plus simulated wheel odometry (geoloc_ros.slam.simulate) of the whole trip.

- relocalization: the winter frames of the stretch, driven through a map of the summer frames; the truth is the
  map-frame position of the summer keyframe with the same frame number (the same place).
- two laps: lap 1 summer frames north along the stretch, an unimaged return leg (east `return_offset_m`, south
  the length of the stretch, west back to the start), then lap 2 winter frames along the stretch again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geoloc_ros.model.nordland import FRAME_SPACING_M, frame_number
from geoloc_ros.slam.simulate import OdometryDrift, simulate_odometry, truth_poses

STEP_S = 1.0  # stamp time per 10 m step (10 m/s): every frame passes the node's 1 s session keyframe interval
START_NS = 1_700_000_000 * 10**9


@dataclass
class Step:
    stamp_ns: int
    truth: np.ndarray  # (3,) metres, map frame
    image: Path | None  # the frame shown at this step; None on an unimaged stretch
    frame: int | None = None  # Nordland frame number
    lap: int = 1


@dataclass
class Trip:
    name: str
    steps: list[Step]
    odometry: list = field(default_factory=list)  # gtsam.Pose3 per step, odom frame (starts at the identity)
    drift: OdometryDrift = OdometryDrift()

    def truth(self) -> np.ndarray:
        return np.array([s.truth for s in self.steps])

    def odometry_positions(self) -> np.ndarray:
        return np.array([p.translation() for p in self.odometry])

    def index_of_stamp(self) -> dict:
        return {s.stamp_ns: i for i, s in enumerate(self.steps)}

    def same_place_pairs(self) -> list[tuple[int, int]]:
        """(lap-1 step, lap-2 step) showing the same Nordland frame."""
        first = {s.frame: i for i, s in enumerate(self.steps) if s.lap == 1 and s.frame is not None}
        return [(first[s.frame], i) for i, s in enumerate(self.steps) if s.lap == 2 and s.frame in first]

    @property
    def images(self) -> int:
        return sum(s.image is not None for s in self.steps)


def _stamp(i: int) -> int:
    return START_NS + int(i * STEP_S * 1e9)


def _with_odometry(trip: Trip) -> Trip:
    trip.odometry = simulate_odometry(truth_poses(trip.truth()), trip.drift)
    return trip


def line_positions(keyframes) -> tuple[np.ndarray, np.ndarray]:
    """(position of frame number 0, displacement per frame number) of a Nordland map, fitted by least squares
    to its keyframes (x, y, z, label): the synthetic positions lie exactly on a line, so this reproduces every
    keyframe and also places the frames the map does not hold (blank frames skipped by the builder)."""
    rows = [(frame_number(label), (x, y, z)) for x, y, z, label in keyframes]
    if len(rows) < 2:
        raise ValueError("the prior map holds fewer than 2 Nordland keyframes")
    n = np.array([r[0] for r in rows], float)
    xyz = np.array([r[1] for r in rows], float)
    design = np.stack([np.ones_like(n), n], 1)
    (origin, per_frame), *_ = np.linalg.lstsq(design, xyz, rcond=None)
    return origin, per_frame


def relocalization_trip(winter, keyframes, drift: OdometryDrift = OdometryDrift()) -> Trip:
    """The winter `records` (GeoImage, in frame order) driven through a prior map with `keyframes`."""
    origin, per_frame = line_positions(keyframes)
    steps = [Step(_stamp(i), origin + frame_number(r.path) * per_frame, Path(r.path), frame_number(r.path))
             for i, r in enumerate(winter)]
    return _with_odometry(Trip("prior_map", steps, drift=drift))


def two_lap_trip(summer, winter, return_offset_m: float = 200.0, drift: OdometryDrift = OdometryDrift()) -> Trip:
    """Lap 1 over the `summer` records, the unimaged return leg, lap 2 over the `winter` records (same frames)."""
    frames = [frame_number(r.path) for r in summer]
    if frames != [frame_number(r.path) for r in winter]:
        raise ValueError("the two laps must show the same frame numbers")
    lap = [np.array([0.0, (f - frames[0]) / 10 * FRAME_SPACING_M, 0.0]) for f in frames]
    end = lap[-1][1]
    leg = [np.array([x, end, 0.0]) for x in _ticks(0.0, return_offset_m)[1:]]
    leg += [np.array([return_offset_m, y, 0.0]) for y in _ticks(end, 0.0)[1:]]
    leg += [np.array([x, 0.0, 0.0]) for x in _ticks(return_offset_m, 0.0)[1:-1]]
    steps = [Step(0, p, Path(r.path), f, 1) for p, r, f in zip(lap, summer, frames)]
    steps += [Step(0, p, None, None, 0) for p in leg]
    steps += [Step(0, p, Path(r.path), f, 2) for p, r, f in zip(lap, winter, frames)]
    for i, s in enumerate(steps):
        s.stamp_ns = _stamp(i)
    return _with_odometry(Trip("two_laps", steps, drift=drift))


def _ticks(a: float, b: float) -> list[float]:
    """a, a +- 10 m, ..., b (both ends included; the last tick is b even when the distance is no multiple)."""
    n = max(1, int(round(abs(b - a) / FRAME_SPACING_M)))
    return list(np.linspace(a, b, n + 1))
