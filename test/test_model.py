"""geoloc_ros.model: encoder API, checkpoints (round trip, refusal of wrong/corrupt files, ProGEO layout),
evaluation, CosPlace grouping and a real (tiny) two-stage training run on Nordland frames. Nothing is mocked and
nothing is downloaded: models are random-initialised or loaded from checkpoints written here."""

from pathlib import Path

import numpy as np
import pytest
import torch

from geoloc_ros.model import CheckpointError, build_encoder, load_encoder, read_header, save_encoder
from geoloc_ros.model.testing import (
    bundled_encoder_path,
    nordland_records,
    nordland_root,
    tiny_encoder,
    write_progeo_checkpoint,
)

torch.set_num_threads(1)  # the CI/dev machines are small and shared; one thread is fastest there
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_nordland = pytest.mark.skipif(not (DATA / "nordland64" / "summer").is_dir(),
                                    reason="../shared/data/nordland64 not present")


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 64, 3), dtype=np.uint8) for _ in range(3)]


# ---- encoder ---------------------------------------------------------------------------------------------------
def test_encode_shapes_dtype_and_norm():
    enc = tiny_encoder(dim=64)
    d = enc.encode(_images())
    assert d.shape == (3, 64) and d.dtype == np.float32
    assert np.allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    assert enc.dim == 64 and enc.device.type == "cpu"
    assert isinstance(enc.fingerprint, str) and len(enc.fingerprint) == 64
    assert enc.encode([]).shape == (0, 64)


def test_encode_accepts_grey_rgba_odd_sizes():
    enc = tiny_encoder()
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (47, 91, 3), dtype=np.uint8)
    grey = rgb[:, :, 0].copy()
    inputs = [grey, grey[:, :, None], np.dstack([rgb, np.full((47, 91), 255, np.uint8)]), rgb,
              rng.integers(0, 256, (1, 1, 3), dtype=np.uint8), rng.integers(0, 256, (301, 7, 3), dtype=np.uint8),
              rng.random((33, 65, 3)).astype(np.float32)]
    d = enc.encode(inputs)
    assert d.shape == (len(inputs), enc.dim) and np.all(np.isfinite(d))
    assert np.allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    assert np.allclose(d[0], d[1], atol=1e-6)  # HxW and HxWx1 are the same grey image
    assert np.allclose(d[2], d[3], atol=1e-6)  # RGBA drops alpha
    assert np.allclose(enc.encode(rgb), enc.encode([rgb]))  # a single array is a batch of one
    with pytest.raises(ValueError):
        enc.encode([np.zeros((4, 4, 2), np.uint8)])


def test_all_backbone_families_build_small():
    for arch in ("RN-pico", "ViT-nano"):
        enc = build_encoder(arch, dim=32, image_size=(32, 64))
        d = enc.encode(_images())
        assert d.shape == (3, 32)


# ---- checkpoints -----------------------------------------------------------------------------------------------
def test_checkpoint_round_trip_identical(tmp_path):
    enc = tiny_encoder()
    imgs = _images()
    path = save_encoder(enc, tmp_path / "map", training={"note": "test"})
    assert path.name == "encoder.safetensors"
    for where in (path, tmp_path / "map"):  # the file, or the directory holding it
        back = load_encoder(where, device="cpu")
        assert np.array_equal(back.encode(imgs), enc.encode(imgs))
        assert back.fingerprint == enc.fingerprint and back.dim == enc.dim
    head = read_header(path)
    assert head["format"] == "geoloc_ros.encoder" and head["format_version"] == "1"
    assert head["arch"]["name"] == "RN-pico" and head["preprocess"]["image_size"] == [32, 64]
    assert head["training"]["note"] == "test" and head["fingerprint"] == enc.fingerprint


def test_regional_pooling_round_trips_and_keeps_where_features_sit(tmp_path):
    from geoloc_ros.model.training import TrainConfig, untrained_encoder

    enc = untrained_encoder(TrainConfig(arch="RN-pico", image_size=[32, 64], dim=64, pool_grid=[1, 2]))
    assert enc.net.aggregation[3].in_features == 512 * 3  # the whole map + its left and right halves
    imgs = _images()
    back = load_encoder(save_encoder(enc, tmp_path / "grid"), device="cpu")
    assert back.arch["pool_grid"] == [1, 2] and back.fingerprint == enc.fingerprint
    assert np.array_equal(back.encode(imgs), enc.encode(imgs))
    assert back.encode([np.zeros((17, 41, 3), np.uint8)]).shape == (1, 64)
    # a mirrored frame has the same global GeM but not the same halves: the descriptor tells them apart
    pool = enc.net.aggregation[1]
    fmap = torch.rand(1, 512, 2, 4) + 0.1
    a, b = pool(fmap).flatten(), pool(fmap.flip(3)).flatten()
    assert torch.allclose(a[:512], b[:512]) and not torch.allclose(a[512:], b[512:])
    assert torch.allclose(a[512:1024], b[1024:]) and torch.allclose(a[1024:], b[512:1024])
    with pytest.raises(ValueError, match="ViT"):  # a ViT's descriptor is its class token: no map to pool
        untrained_encoder(TrainConfig(arch="ViT-nano", pool_grid=[1, 2]))


def test_fingerprint_tracks_weights_and_preprocessing():
    a, b = tiny_encoder(seed=0), tiny_encoder(seed=0)
    assert a.fingerprint == b.fingerprint
    assert tiny_encoder(seed=1).fingerprint != a.fingerprint
    assert tiny_encoder(image_size=(32, 32)).fingerprint != a.fingerprint
    before = a.fingerprint
    with torch.no_grad():
        a.net.aggregation[3].bias.add_(1e-3)
    assert a.fingerprint != before
    b.preprocess["mean"] = [0.5, 0.5, 0.5]
    assert b.fingerprint != before


def test_wrong_architecture_refused_with_file_and_mismatch(tmp_path):
    path = save_encoder(tiny_encoder(), tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_encoder(path, arch="ViT-nano")
    assert str(path) in str(e.value) and "mismatch" in str(e.value) and "ViT-nano" in str(e.value)
    with pytest.raises(CheckpointError) as e:
        load_encoder(path, dim=128)
    assert str(path) in str(e.value) and "dimension mismatch" in str(e.value)
    # header claims one architecture, tensors belong to another
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    other = save_encoder(build_encoder("RN-nano", dim=64, image_size=(32, 64)), tmp_path / "b.safetensors")
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    forged = tmp_path / "forged.safetensors"
    save_file(load_file(str(other)), str(forged), metadata=header)
    with pytest.raises(CheckpointError) as e:
        load_encoder(forged)
    msg = str(e.value)
    assert str(forged) in msg and "architecture mismatch" in msg and "RN-pico" in msg and "shape" in msg


def test_corrupt_checkpoints_refused(tmp_path):
    path = save_encoder(tiny_encoder(), tmp_path / "good.safetensors")
    raw = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[: len(raw) // 2])
    flipped = tmp_path / "flipped.safetensors"
    b = bytearray(raw)
    b[-17] ^= 0x55
    flipped.write_bytes(bytes(b))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    for bad in (truncated, flipped, garbage):
        with pytest.raises(CheckpointError) as e:
            load_encoder(bad)
        assert str(bad) in str(e.value)
    with pytest.raises(CheckpointError) as e:
        load_encoder(flipped)
    assert "fingerprint mismatch" in str(e.value)
    with pytest.raises(CheckpointError) as e:
        load_encoder(tmp_path / "missing_dir")
    assert "missing_dir" in str(e.value)


def test_one_header_reader_serves_checkpoints_and_maps(tmp_path):
    """model.checkpoint.read_safetensors_metadata parses the header for both read_header and the map database's
    read_encoder_fingerprint, without torch; a file that is not safetensors is refused by both, named."""
    import subprocess
    import sys

    from geoloc_ros.mapping.database import read_encoder_fingerprint
    from geoloc_ros.mapping.storage import MapError
    from geoloc_ros.model.checkpoint import read_safetensors_metadata

    enc = tiny_encoder()
    path = save_encoder(enc, tmp_path / "enc.safetensors")
    assert read_safetensors_metadata(path)["fingerprint"] == read_header(path)["fingerprint"] == enc.fingerprint
    assert read_encoder_fingerprint(path) == enc.fingerprint
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        read_header(garbage)
    with pytest.raises(MapError, match="garbage.safetensors"):
        read_encoder_fingerprint(garbage)
    code = ("import sys; from geoloc_ros.mapping.database import read_encoder_fingerprint as r; "
            f"print(r({str(path)!r}), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [enc.fingerprint, "False"]


def test_progeo_checkpoint_layout_loads(tmp_path):
    for arch, wrap in (("RN-pico", True), ("ViT-nano", False)):
        f = tmp_path / f"progeo_{arch}.pth"
        sd = write_progeo_checkpoint(f, arch=arch, dim=96, wrap=wrap)
        enc = load_encoder(f, device="cpu")
        assert enc.dim == (96 if arch.startswith("RN") else sd["backbone.proj"].shape[1])
        # the weights are the file's, under the same names
        own = enc.net.state_dict()
        for k, v in sd.items():
            if k.startswith("backbone.") and not k.startswith("backbone.attnpool."):
                assert torch.equal(own[k], v), k
        d = enc.encode(_images())
        assert d.shape == (3, enc.dim) and np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
        # re-saved in our format, identical descriptors
        back = load_encoder(save_encoder(enc, tmp_path / f"ours_{arch}"), device="cpu")
        assert np.array_equal(back.encode(_images()), d)
    with pytest.raises(CheckpointError) as e:
        load_encoder(f, arch="RN50")
    assert str(f) in str(e.value) and "mismatch" in str(e.value)


# ---- evaluation and grouping -----------------------------------------------------------------------------------
def test_recall_protocols():
    from geoloc_ros.model.evaluation import positives_by_frame, positives_by_radius, recall_at_n

    db = np.eye(4, dtype=np.float32)
    q = np.array([[1, 0, 0, 0], [0, 0.9, 0.1, 0], [0, 0, 0, 1], [0, 1, 0, 0]], dtype=np.float32)
    pos = [np.array([0]), np.array([2]), np.array([3]), np.array([], dtype=np.int64)]
    r = recall_at_n(db, q, pos, ns=(1, 2))
    assert r["queries"] == 3 and r["queries_without_positives"] == 1
    assert r["R@1"] == pytest.approx(200 / 3) and r["R@2"] == pytest.approx(100.0)
    fp = positives_by_frame([10, 20, 30, 40, 50], [30, 60], 20)
    assert fp[0].tolist() == [0, 1, 2, 3, 4] and fp[1].tolist() == [3, 4]
    rp = positives_by_radius([(0, 0), (0, 10), (0, 30)], [(0, -20), (0, 24.9), (500, 0)], 25.0)
    assert [p.tolist() for p in rp] == [[0], [0, 1, 2], []]


def test_cosplace_groups_separate_neighbours():
    from geoloc_ros.datasets import GeoImage
    from geoloc_ros.model.grouping import class_and_group, make_groups

    recs = [GeoImage(Path(f"{e}_{n}_{h}"), "", 0, 0, utm_east=e, utm_north=n, heading=h)
            for e in np.arange(0, 100, 3.0) for n in np.arange(0, 100, 3.0) for h in (0.0, 45.0, 100.0)]
    groups = make_groups(recs, M=10, alpha=30, N=5, L=2, min_images_per_class=1)
    assert len(groups) == 5 * 5 * 2
    assert sum(g.images_num for g in groups) == len(recs)
    for g in groups:
        cells = {(c[0] // 10, c[1] // 10, c[2] // 30) for c in g.classes}
        for a in cells:  # two classes of one group are >= N cells or >= L heading bins apart on every axis
            for b in cells:
                if a != b:
                    assert all(abs(x - y) >= k for x, y, k in zip(a, b, (5, 5, 2)) if x != y)
    assert class_and_group(25.0, 7.0, 95.0, 10, 30, 5, 2) == ((20, 0, 90), (2, 0, 1))


# ---- learned whitening ------------------------------------------------------------------------------------------
def test_learned_whitening_suppresses_what_varies_within_a_place():
    """Pairs of one place differ strongly along a few 'season' directions: before whitening those swamp the
    place signal, after it matching the second image of each pair to the first works."""
    from geoloc_ros.model.whitening import fit_learned_whitening

    rng = np.random.default_rng(0)
    places = rng.normal(size=(400, 32))
    season = np.zeros((400, 32))
    season[:, :4] = rng.normal(scale=10.0, size=(400, 4))
    a, b = places + 0.1 * rng.normal(size=places.shape), places + season

    def top1(x, y):
        x, y = x / np.linalg.norm(x, axis=1, keepdims=True), y / np.linalg.norm(y, axis=1, keepdims=True)
        return float(np.mean((y @ x.T).argmax(1) == np.arange(len(x))))

    mu, p = fit_learned_whitening(a[:300], b[:300])  # fitted on 300 places, tested on the other 100
    before, after = top1(a[300:], b[300:]), top1((a[300:] - mu) @ p, (b[300:] - mu) @ p)
    assert before < 0.6 and after > 0.95, (before, after)


def _noise_images(n):
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (32, 64, 3), dtype=np.uint8) for _ in range(n)]


def test_whitening_folds_into_the_projection(tmp_path):
    from geoloc_ros.model.whitening import fit_learned_whitening, projection_outputs, whiten_encoder

    enc = tiny_encoder(dim=16)
    imgs = _noise_images(40)
    u = projection_outputs(enc, imgs)
    mu, p = fit_learned_whitening(u[:20], u[20:])
    expected = (u - mu) @ p
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    fp = enc.fingerprint
    info = whiten_encoder(enc, imgs[:20], imgs[20:])
    assert info["pairs"] == 20 and enc.fingerprint != fp
    np.testing.assert_allclose(enc.encode(imgs), expected, atol=1e-4)
    save_encoder(enc, tmp_path / "w.safetensors")
    np.testing.assert_array_equal(load_encoder(tmp_path / "w.safetensors").encode(imgs), enc.encode(imgs))


def test_whitening_folds_into_a_network_on_the_gpu():
    """`geoloc train --whiten --device cuda` whitens the network where it trained: folding once raised a device
    mismatch there (the fitted transform was a CPU tensor)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (none on this machine)")
    from geoloc_ros.model.whitening import whiten_encoder

    cpu = tiny_encoder(dim=16)
    gpu = cpu.on("cuda", half=False)
    imgs = _noise_images(40)
    whiten_encoder(cpu, imgs[:20], imgs[20:])
    whiten_encoder(gpu, imgs[:20], imgs[20:])
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.encode(imgs), cpu.encode(imgs), atol=1e-3)


# ---- the bundled encoder ---------------------------------------------------------------------------------------
def test_bundled_encoder_loads_and_encodes():
    path = bundled_encoder_path()
    if not path.exists():
        pytest.skip("no maps/nordland_demo/encoder.safetensors in this checkout")
    assert path.stat().st_size <= 10 * 1024 * 1024
    enc = load_encoder(path.parent, device="cpu")
    head = read_header(path)
    assert head["fingerprint"] == enc.fingerprint
    lo, hi = head["training"]["data"]["frames"]  # the fixed split: trained within the training stretch only
    assert 10 <= lo and hi <= 19200
    d = enc.encode(_images())
    assert d.shape == (3, enc.dim)


@needs_nordland
def test_half_precision_keeps_the_aggregation_in_fp32():
    """Encoder(half=True) runs the backbone in fp16 and the aggregation in fp32: GeM's cubes of channel-normalised
    activations underflow fp16 (the all-fp16 bundled encoder fell to cosine 0.984 on these frames). Run here on
    the CPU, whose fp16 kernels round like the GPU's; the CUDA path is checked in test_deploy."""
    import copy

    import torch

    from geoloc_ros.model import nordland as N

    path = bundled_encoder_path()
    if not path.exists():
        pytest.skip("no maps/nordland_demo/encoder.safetensors in this checkout")
    enc = load_encoder(path.parent, device="cpu")
    imgs = N.read_images(nordland_records((19210, 20400)))  # validation frames, winter white-outs included
    x = enc.to_tensor(imgs)
    ref = enc.encode(imgs)
    net = copy.deepcopy(enc.net).half_backbone()
    assert net.backbone.conv1.weight.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in net.aggregation.parameters())
    with torch.inference_mode():
        got = torch.nn.functional.normalize(net(x.half()).float(), dim=1).numpy()
    assert float((got * ref).sum(1).min()) >= 0.999


@needs_nordland
def test_eval_cli_runs_and_writes_json(tmp_path, capsys):
    from geoloc_ros.cli import main

    root = nordland_root()
    out = tmp_path / "r.json"
    enc = save_encoder(tiny_encoder(), tmp_path / "enc")
    rc = main(["eval", "--encoder", str(enc), "--database", str(root / "summer"), "--queries", str(root / "winter"),
               "--sequence-spacing", "10", "--frames", "23010:24000", "--frame-tolerance", "2", "--baselines",
               "--json", str(out), "--device", "cpu"])
    assert rc == 0 and out.exists()
    import json

    r = json.loads(out.read_text())
    assert r["synthetic_positions"] is True and r["database_size"] == 100
    assert set(r["protocols"]) == {"25 m", "+-2 frames"}
    assert "R@20" in r["protocols"]["25 m"]["raw pixels (normalised)"]
    assert "R@1" in capsys.readouterr().out
