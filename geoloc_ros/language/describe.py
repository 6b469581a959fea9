"""Scene descriptions of images, for the feature combiner (model/combiner.py): from an OpenAI-compatible multimodal
chat-completions endpoint (vLLM, Ollama, llama.cpp serving LLaVA, Qwen-VL, ...), or from the deterministic
colour-layout stand-in when no model server is at hand.

The descriptions file is a CSV with the header `image,caption,reason`: `image` is the keyframe label (the path
relative to the image folder, as `geoloc map build` labels keyframes), `caption` the description (empty when
none could be had) and `reason` why it is empty. It is written one row at a time and flushed, so an interrupted
run resumes where it stopped: images already in the file are not asked again, except rows left empty by a
failure that may pass (a timeout or a server error), which are asked again.
"""

from __future__ import annotations

from collections import Counter
import csv
from dataclasses import dataclass
from pathlib import Path
import re
import threading
import time

import numpy as np

from geoloc_ros.datasets import read_image
from geoloc_ros.language.geolocate import image_data_url
from geoloc_ros.language.lmm_client import LmmError

# The paper's kind of prompt: the static, place-specific content, in words that survive season and light.
PROMPT = ("Describe the place shown in this image so that it can be recognised again in another season or light: "
          "the buildings, road or track layout, vegetation, terrain, landmarks and signs. Leave out people, "
          "vehicles, weather, season and lighting. Answer in one or two plain sentences.")
MAX_CHARS = 400  # a description longer than this is cut at a word boundary (the combiner reads 32 tokens)
COLUMNS = ("image", "caption", "reason")
_PRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]+")
_SPACE = re.compile(r"\s+")
# failures that may pass (the model client's words for a timeout, a connection error, HTTP 429 or 5xx): asked again
RETRYABLE = ("no complete answer", "no answer", "cannot reach", "HTTP 429", "HTTP 5")


@dataclass(frozen=True)
class Description:
    text: str  # "" when none could be had
    reason: str = ""  # why text is empty ("" when it is not)


def clean(answer, max_chars: int = MAX_CHARS) -> Description:
    """An endpoint's answer -> a usable description, or an empty one with the reason. Linear in the answer's
    length, and the answer is cut to a bounded size before any pattern runs on it."""
    if not isinstance(answer, str):
        return Description("", f"not text ({type(answer).__name__})")
    text = _SPACE.sub(" ", _PRINTABLE.sub(" ", answer[: 4 * max_chars])).strip()
    if not text:
        return Description("", "empty answer")
    if len(text) > max_chars:
        cut = text[:max_chars]
        text = cut[: cut.rfind(" ")] if " " in cut else cut
    return Description(text)


def describe_with(client, rgb: np.ndarray, prompt: str = PROMPT, max_chars: int = MAX_CHARS) -> Description:
    """Ask `client` (language.lmm_client.LmmClient) to describe one RGB image; never raises for the endpoint's
    failures: they come back as an empty description with the reason."""
    messages = [{"role": "user", "content": [{"type": "text", "text": prompt},
                                             {"type": "image_url", "image_url": {"url": image_data_url(rgb)}}]}]
    try:
        return clean(client.chat(messages), max_chars)
    except LmmError as e:
        return Description("", str(e)[:200])


_HUES = ((15, "red"), (45, "orange"), (70, "yellow"), (160, "green"), (200, "cyan"), (260, "blue"),
         (320, "purple"), (360, "red"))
_ROWS, _COLS = ("top", "bottom"), ("left", "middle", "right")


_TONES = ((50, "black"), (100, "dark"), (150, "mid"), (200, "light"), (256, "bright"))


def _colour_name(rgb) -> str:
    """'light green', 'dark grey', ...: the tone of the mean colour, and its hue unless it is a grey."""
    r, g, b = (float(v) / 255.0 for v in rgb)
    hi, lo = max(r, g, b), min(r, g, b)
    tone = next(name for limit, name in _TONES if 255.0 * (r + g + b) / 3.0 < limit)
    if hi - lo < 0.08:
        return f"{tone} grey"
    if hi == r:
        hue = (60 * (g - b) / (hi - lo)) % 360
    elif hi == g:
        hue = 60 * (b - r) / (hi - lo) + 120
    else:
        hue = 60 * (r - g) / (hi - lo) + 240
    return f"{tone} " + next(name for limit, name in _HUES if hue < limit)


def colour_layout(rgb: np.ndarray) -> Description:
    """A deterministic stand-in for an LVLM's description, from the image alone: the tone and colour of each cell
    of a 2x3 grid and the overall brightness ("top left light green, ..., a dark scene"). It carries far less about the
    place than a model's description; it exists so that the whole path runs, in tests and offline."""
    a = np.asarray(rgb, dtype=np.float32)
    if a.ndim != 3 or a.shape[2] < 3 or min(a.shape[:2]) < 2:
        return Description("", f"not an RGB image (shape {a.shape})")
    h, w = a.shape[:2]
    words = []
    for i, row in enumerate(_ROWS):
        for j, col in enumerate(_COLS):
            cell = a[i * h // 2:(i + 1) * h // 2, j * w // 3:(j + 1) * w // 3, :3]
            words.append(f"{row} {col} {_colour_name(cell.reshape(-1, 3).mean(axis=0))}")
    light = a[..., :3].mean()
    words.append("a bright scene" if light > 170 else "a dark scene" if light < 70 else "a scene in daylight")
    return Description(", ".join(words))


def read_descriptions(path) -> dict[str, Description]:
    """label -> Description from a descriptions CSV; a missing file is empty. A malformed last row (an interrupted
    write) is ignored; so is any row without a label."""
    path = Path(path)
    if not path.is_file():
        return {}
    out = {}
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for row in csv.DictReader(f):
            label = (row.get("image") or "").strip()
            if label:
                out[label] = Description((row.get("caption") or "").strip(), (row.get("reason") or "").strip())
    return out


def describe_folder(images, out_csv, describe, rate_hz: float = 0.0, log=print) -> Counter:
    """Describe every (label, path) in `images` with `describe(rgb) -> Description` into `out_csv`, resuming a
    previous run; at most `rate_hz` requests per second (0: no limit). Returns counts: described, kept (already
    in the file), failed, and one count per failure reason."""
    out_csv = Path(out_csv)
    done = read_descriptions(out_csv)
    keep = {label: d for label, d in done.items() if d.text or not any(r in d.reason for r in RETRYABLE)}
    counts = Counter(kept=0, described=0, failed=0)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(out_csv.name + ".tmp")
    # The kept rows go into a new file that then replaces the old one (a crash loses no row); new answers are
    # appended through the same open file, one flushed row each.
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for label, d in keep.items():
            writer.writerow([label, d.text, d.reason])
        f.flush()
        tmp.replace(out_csv)
        last = 0.0
        for label, path in images:
            if label in keep:
                counts["kept"] += 1
                continue
            if rate_hz > 0:
                time.sleep(max(0.0, last + 1.0 / rate_hz - time.monotonic()))
            last = time.monotonic()
            try:
                d = describe(read_image(path))
            except (OSError, ValueError) as e:
                d = Description("", f"unreadable image ({e})"[:200])
            counts["described" if d.text else "failed"] += 1
            if d.reason:
                counts[f"reason: {d.reason.split(' (')[0][:80]}"] += 1
                log(f"{label}: no description ({d.reason})")
            writer.writerow([label, d.text, d.reason])
            f.flush()
    return counts


class FrameDescriber:
    """Scene descriptions of a live camera stream, off the camera path: `offer` keeps the newest frame (and never
    waits); a thread of its own describes the newest offered frame at most every `period_s` with `describe(rgb)
    -> Description`; `for_stamp` gives a frame the description of the described frame nearest its stamp, if
    that one is within `max_age_s`, else "". Thread-safe."""

    def __init__(self, describe, period_s: float, max_age_s: float, keep: int = 8):
        self._describe = describe
        self._period_s = float(period_s)
        self._max_age_ns = int(max_age_s * 1e9)
        self._keep = int(keep)
        self._cv = threading.Condition()
        self._newest = None  # (stamp_ns, rgb) waiting to be described
        self._described = []  # (stamp_ns, text), oldest first, at most `keep`
        self.counts = Counter(descriptions=0, description_failures=0, descriptions_used=0)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="geoloc_describe", daemon=True)
        self._thread.start()

    def offer(self, stamp_ns: int, rgb) -> None:
        with self._cv:
            self._newest = (int(stamp_ns), rgb)
            self._cv.notify()

    def for_stamp(self, stamp_ns: int) -> str:
        with self._cv:
            near = [(abs(stamp_ns - s), text) for s, text in self._described if abs(stamp_ns - s) <= self._max_age_ns]
            if not near:
                return ""
            self.counts["descriptions_used"] += 1
            return min(near, key=lambda item: item[0])[1]

    def snapshot(self) -> dict:
        with self._cv:
            return dict(self.counts)

    def close(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout)

    def _run(self):
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._newest is not None or self._stop)
                if self._stop:
                    return
                stamp, rgb = self._newest
                self._newest = None
            started = time.monotonic()
            try:
                d = self._describe(rgb)
            except Exception as e:  # noqa: BLE001 - a broken describer must not end the thread
                d = Description("", f"{type(e).__name__}: {e}"[:200])
            with self._cv:
                if d.text:
                    self.counts["descriptions"] += 1
                    self._described = (self._described + [(stamp, d.text)])[-self._keep:]
                else:
                    self.counts["description_failures"] += 1
                    key = f"description_failed: {d.reason.split(' (')[0][:60]}"
                    self.counts[key] = self.counts.get(key, 0) + 1
                self._cv.wait_for(lambda: self._stop, timeout=max(0.0, started + self._period_s - time.monotonic()))
