"""Where am I at all? Img2Loc-style geolocation (Zhou et al., SIGIR 2024) over the loaded maps (docs/language.md).

1. Retrieval: the image's descriptor against every map (and an optional large reference map): the k most similar
   geotagged keyframes ("nearest") and the k least similar ("farthest", searched with the negated descriptor).
2. Without a model server: the retrieval-weighted position, the neighbours' WGS84 positions averaged as unit
   vectors with softmax weights exp((s_i - s_max) / RETRIEVAL_TEMPERATURE); its covariance is the weighted
   spread of the neighbours in the local east/north plane (metres^2), floored at `floor_m`^2.
3. With `lmm_url`: the Img2Loc RAG prompt (the nearest and farthest coordinates + the image as a base64 JPEG data
   URL) to an OpenAI-compatible chat endpoint; the answer's latitude/longitude parsed (a JSON object, else the
   first "lat, lon" pair in the text) and accepted only inside the neighbours' region: within
   max(REGION_FACTOR x the farthest nearest-neighbour's distance from the retrieval estimate, `region_min_m`) of
   it. A refused or failed answer falls back to the retrieval estimate, and the answer says why. An accepted one
   carries a large covariance: max(`lmm_sigma_m`, its distance from the retrieval estimate)^2 on east and north.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace
import json
import math
import re

import numpy as np

from geoloc_ros.language.annotate import EARTH_RADIUS_M, haversine_m
from geoloc_ros.localization.frames import Candidate

RETRIEVAL_TEMPERATURE = 0.05  # cosine units: a neighbour 0.05 less similar weighs e times less
REGION_FACTOR = 2.0
UNKNOWN_ALTITUDE_VARIANCE = 1e6  # m^2: neither retrieval nor the model says anything about altitude
MAX_IMAGE_SIDE = 1024  # larger images are scaled down before they go into the prompt

PROMPT = ("You are an expert in image geolocation. Estimate where this photo was taken, to the coordinates "
          "level. For reference, photos that look similar were taken at these (latitude, longitude) coordinates: "
          "{nearest}. Photos that look dissimilar were taken at these coordinates, so the photo is probably not "
          "near them: {farthest}. Answer only with a JSON object {{\"latitude\": <degrees>, \"longitude\": "
          "<degrees>}}.")


@dataclass
class GeolocateSettings:
    k: int = 5  # nearest and farthest neighbours each
    floor_m: float = 10.0  # position standard deviation never below this (retrieval estimate)
    region_min_m: float = 5000.0  # the LMM answer's region radius never below this
    lmm_sigma_m: float = 25_000.0  # position standard deviation of an accepted LMM answer (Img2Loc: city level)


@dataclass
class GeoEstimate:
    success: bool
    method: str  # "retrieval" | "lmm" | ""
    message: str
    lat: float = math.nan
    lon: float = math.nan
    covariance: list = field(default_factory=lambda: [0.0] * 9)  # 3x3 row-major, east north up, m^2
    neighbours: list = field(default_factory=list)  # Candidate, nearest first
    farthest: list = field(default_factory=list)
    lmm_answer: str = ""


def retrieve(maps, descriptor: np.ndarray, k: int):
    """(nearest, farthest): the k most and the k least similar geotagged keyframes over `maps` ((map_id, name,
    MapDatabase) triples); similarity is the cosine in both lists."""
    q = np.asarray(descriptor, dtype=np.float32).reshape(1, -1)
    nearest, farthest = [], []
    for map_id, name, db in maps:
        if db.dim != q.shape[1] or len(db) == 0:
            continue
        want = min(len(db), 4 * k)  # room for keyframes without a geotag, which are skipped
        nearest += [Candidate(map_id, name, m.keyframe, m.similarity) for m in db.search(q, want)[0]
                    if m.keyframe.has_geotag]
        farthest += [Candidate(map_id, name, m.keyframe, -m.similarity) for m in db.search(-q, want)[0]
                     if m.keyframe.has_geotag]
    nearest = sorted(nearest, key=lambda c: -c.similarity)[:k]
    farthest = sorted(farthest, key=lambda c: c.similarity)[:k]
    return [replace(c, rank=rank) for rank, c in enumerate(nearest)], farthest


def _unit(lat, lon) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def weighted_position(lats, lons, weights, floor_m: float):
    """(lat, lon, 3x3 covariance): the weighted mean of unit vectors (right across the antimeridian too) and the
    weighted spread in the local east/north plane at it."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    p = _unit(np.asarray(lats), np.asarray(lons))
    m = (w[:, None] * p).sum(axis=0)
    m /= np.linalg.norm(m)
    lat, lon = math.degrees(math.asin(m[2])), math.degrees(math.atan2(m[1], m[0]))
    la, lo = math.radians(lat), math.radians(lon)
    east = np.array([-math.sin(lo), math.cos(lo), 0.0])
    north = np.array([-math.sin(la) * math.cos(lo), -math.sin(la) * math.sin(lo), math.cos(la)])
    en = EARTH_RADIUS_M * np.stack([p @ east, p @ north], axis=1)
    centred = en - (w[:, None] * en).sum(axis=0)
    cov2 = (w[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(axis=0) + np.eye(2) * floor_m ** 2
    cov = [cov2[0, 0], cov2[0, 1], 0.0, cov2[1, 0], cov2[1, 1], 0.0, 0.0, 0.0, UNKNOWN_ALTITUDE_VARIANCE]
    return lat, lon, [float(v) for v in cov]


def retrieval_estimate(nearest, settings: GeolocateSettings) -> GeoEstimate:
    if not nearest:
        return GeoEstimate(False, "", "no geotagged keyframe in any loaded map: nothing to geolocate against")
    sims = np.array([c.similarity for c in nearest])
    weights = np.exp((sims - sims.max()) / RETRIEVAL_TEMPERATURE)
    lat, lon, cov = weighted_position([c.keyframe.lat for c in nearest], [c.keyframe.lon for c in nearest],
                                      weights, settings.floor_m)
    sd = math.sqrt(max(cov[0], cov[4]))
    return GeoEstimate(True, "retrieval", f"retrieval-weighted position of {len(nearest)} neighbour(s) "
                                          f"(similarity {sims.max():.3f} best), standard deviation {sd:.0f} m",
                       lat, lon, cov, list(nearest))


def parse_coordinates(text: str):
    """(lat, lon) from a model's answer: a JSON object with latitude/longitude (or lat/lon/lng), else the first
    "number, number" pair in range; None when there is none."""
    for blob in re.findall(r"\{[^{}]*\}", text or ""):
        try:
            obj = json.loads(blob)
        except ValueError:
            continue
        lat = next((obj[k] for k in ("latitude", "lat") if k in obj), None)
        lon = next((obj[k] for k in ("longitude", "lon", "lng") if k in obj), None)
        try:
            lat, lon = float(lat), float(lon)
        except (TypeError, ValueError):
            continue
        if abs(lat) <= 90 and abs(lon) <= 180:
            return lat, lon
    for a, b in re.findall(r"(-?\d+(?:\.\d+)?)\s*°?\s*[NS]?\s*,\s*(-?\d+(?:\.\d+)?)", text or ""):
        lat, lon = float(a), float(b)
        if abs(lat) <= 90 and abs(lon) <= 180:
            return lat, lon
    return None


def image_data_url(rgb: np.ndarray) -> str:
    import cv2

    h, w = rgb.shape[:2]
    scale = MAX_IMAGE_SIDE / max(h, w)
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("the image could not be JPEG-encoded")
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii")


def img2loc_messages(rgb, nearest, farthest) -> list:
    def coords(cands):
        return ", ".join(f"({c.keyframe.lat:.6f}, {c.keyframe.lon:.6f})" for c in cands) or "none"

    text = PROMPT.format(nearest=coords(nearest), farthest=coords(farthest))
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": image_data_url(rgb)}}]}]


def region_radius_m(estimate: GeoEstimate, settings: GeolocateSettings) -> float:
    spread = max((float(haversine_m(estimate.lat, estimate.lon, c.keyframe.lat, c.keyframe.lon))
                  for c in estimate.neighbours), default=0.0)
    return max(REGION_FACTOR * spread, settings.region_min_m)


class Geolocator:
    """`geolocate(rgb)`: retrieval over `maps` with `encoder`, then the LMM when `client` (an LmmClient) is set."""

    def __init__(self, encoder, maps, settings: GeolocateSettings | None = None, client=None):
        self.encoder = encoder
        self.maps = list(maps)
        self.settings = settings or GeolocateSettings()
        self.client = client

    def geolocate(self, rgb: np.ndarray) -> GeoEstimate:
        descriptor = self.encoder.encode([rgb])[0]
        nearest, farthest = retrieve(self.maps, descriptor, self.settings.k)
        estimate = retrieval_estimate(nearest, self.settings)
        estimate.farthest = farthest
        if self.client is None or not estimate.success:
            return estimate
        return self._ask_model(rgb, estimate)

    def _ask_model(self, rgb, estimate: GeoEstimate) -> GeoEstimate:
        from geoloc_ros.language.lmm_client import LmmError

        try:
            answer = self.client.chat(img2loc_messages(rgb, estimate.neighbours, estimate.farthest))
        except LmmError as e:
            estimate.message = f"model failed ({e}); {estimate.message}"
            return estimate
        estimate.lmm_answer = answer
        found = parse_coordinates(answer)
        if found is None:
            self.client.count("refusals")
            estimate.message = f"model answer refused: no coordinates in {answer[:80]!r}; {estimate.message}"
            return estimate
        lat, lon = found
        distance = float(haversine_m(estimate.lat, estimate.lon, lat, lon))
        radius = region_radius_m(estimate, self.settings)
        if distance > radius:
            self.client.count("refusals")
            estimate.message = (f"model answer ({lat:.5f}, {lon:.5f}) refused: {distance / 1000:.1f} km from the "
                                f"neighbours, outside their region of {radius / 1000:.1f} km; {estimate.message}")
            return estimate
        self.client.count("accepted")
        var = max(self.settings.lmm_sigma_m, distance) ** 2
        return GeoEstimate(True, "lmm", f"model answer ({lat:.5f}, {lon:.5f}) accepted: {distance / 1000:.1f} km "
                                        f"from the retrieval estimate, inside the {radius / 1000:.1f} km region",
                           lat, lon, [var, 0.0, 0.0, 0.0, var, 0.0, 0.0, 0.0, UNKNOWN_ALTITUDE_VARIANCE],
                           estimate.neighbours, estimate.farthest, answer)
