"""backend="auto" and the artefact cache (geoloc_ros.deploy.auto, cache.py), and the TensorRT backend where it can
run. Real networks, real ONNX Runtime, real files; nothing stood in for."""

import json
import os

import numpy as np
import pytest

from geoloc_ros.deploy import auto, open_encoder
from geoloc_ros.deploy.cache import BESIDE
from geoloc_ros.model import build_encoder, save_encoder
from geoloc_ros.model.encoder import cpu_has_bf16


@pytest.fixture
def images(shared_data):
    from geoloc_ros.datasets import read_image

    files = sorted((shared_data / "toy_streets").rglob("*.jpg"))[:3]
    files += sorted((shared_data / "nordland64" / "winter").glob("*.png"))[100:102]
    return [read_image(f) for f in files]


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    """A small encoder saved in a folder, with the user cache redirected into tmp_path (no GEOLOC_CACHE)."""
    monkeypatch.delenv("GEOLOC_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    enc = build_encoder("RN-pico", image_size=(32, 64), dim=48, device="cpu", seed=7)
    save_encoder(enc, tmp_path / "map")
    return enc, tmp_path / "map"


def cosine(a, b):
    return float((a * b).sum(axis=1).min())


def test_auto_on_cpu_keeps_the_descriptors_and_says_why(checkpoint, images):
    ref, folder = checkpoint
    enc = open_encoder(folder, backend="auto", device="cpu")
    assert enc.fingerprint == ref.fingerprint and enc.dim == ref.dim and enc.device.type == "cpu"
    assert cosine(enc.encode(images), ref.encode(images)) >= 0.999
    first = "torch-tuned bf16" if cpu_has_bf16() else "onnxruntime"
    assert enc.backend_choice == first                   # a random network keeps its descriptors in bf16
    assert enc.backend_reason.startswith(f"auto on cpu: {first}")
    # the check was recorded beside the encoder, and the next start reads it instead of measuring again
    records = sorted((folder / BESIDE).glob("check-*.json"))
    assert records and all(json.loads(p.read_text())["fingerprint"] == ref.fingerprint for p in records)
    again = open_encoder(folder, backend="auto", device="cpu")
    assert again.backend_choice == first and "on record" in again.backend_reason


def test_auto_with_half_false_stays_fp32(checkpoint, images):
    ref, folder = checkpoint
    enc = open_encoder(folder, backend="auto", device="cpu", half=False)
    assert "bf16" not in enc.backend_reason and getattr(enc, "precision", "fp32") == "fp32"
    assert (folder / BESIDE).is_dir() and any((folder / BESIDE).glob("encoder-*.onnx"))


def test_auto_refuses_every_candidate_below_the_threshold_with_the_reasons(checkpoint, monkeypatch):
    _, folder = checkpoint
    monkeypatch.setattr(auto, "MIN_COSINE", 1.0 + 1e-3)   # no real path reaches it: every one must be refused
    with pytest.raises(RuntimeError, match="no candidate kept the fp32 descriptors") as err:
        open_encoder(folder, backend="auto", device="cpu")
    assert "torch-tuned fp32: refused" in str(err.value)


def test_unwritable_encoder_folder_falls_back_to_the_user_cache(checkpoint, tmp_path):
    ref, folder = checkpoint
    if os.geteuid() == 0:
        # root writes through permission bits: block the cache folder with a file of its name instead
        (folder / BESIDE).write_text("not ours")
    else:
        os.chmod(folder, 0o555)
    try:
        enc = open_encoder(folder, backend="onnxruntime", device="cpu")
    finally:
        os.chmod(folder, 0o755)
    assert enc.path.startswith(str(tmp_path / "xdg" / "geoloc_ros"))
    assert enc.fingerprint == ref.fingerprint
    if os.geteuid() == 0:
        assert (folder / BESIDE).read_text() == "not ours"        # a file we did not write is left alone


def test_a_stale_export_is_rebuilt_and_foreign_files_are_kept(checkpoint, images):
    ref, folder = checkpoint
    first = open_encoder(folder, backend="onnxruntime", device="cpu")
    cached = folder / BESIDE / os.path.basename(first.path)
    foreign = folder / BESIDE / "notes.txt"
    foreign.write_text("mine")
    cached.write_bytes(cached.read_bytes()[:100])                 # truncated, as a crash of another tool would
    again = open_encoder(folder, backend="onnxruntime", device="cpu")
    assert again.path == str(cached) and cosine(again.encode(images), ref.encode(images)) >= 0.999
    assert foreign.read_text() == "mine"
    assert not list((folder / BESIDE).glob(".*.tmp"))            # no temporary file left behind


def test_check_images_are_deterministic_camera_frames():
    a, b = auto.check_images(), auto.check_images()
    assert len(a) == 6 and all(x.shape == (480, 640, 3) and x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_tensorrt_backend(checkpoint, images):
    """Needs a CUDA device and the tensorrt wheel; the fp16 engine must keep the fp32 descriptors."""
    from geoloc_ros.deploy.tensorrt_backend import available

    ok, why = available()
    if not ok:
        pytest.skip(f"TensorRT backend not testable here: {why}")
    ref, folder = checkpoint
    enc = open_encoder(folder, backend="tensorrt", max_batch=4)
    assert enc.fingerprint == ref.fingerprint and enc.device.type == "cuda"
    want = ref.encode(images)
    for bs in (1, 3, len(images)):                                # dynamic batch, and slices past max_batch
        assert cosine(enc.encode(images, batch_size=bs), want) >= 0.999
    engine = enc.engine_path
    assert engine.parent == folder / BESIDE
    assert open_encoder(folder, backend="tensorrt", max_batch=4).engine_path == engine   # reused, not rebuilt
