"""geoloc_ros.model: encoder API, checkpoints (round trip, refusal of wrong/corrupt files, ProGEO layout),
evaluation, CosPlace grouping and a real (tiny) two-stage training run on Nordland frames. Nothing is mocked and
nothing is downloaded: models are random-initialised or loaded from checkpoints written here."""

from pathlib import Path

import numpy as np
import pytest
import torch

from geoloc_ros.model import CheckpointError, build_encoder, load_encoder, read_header, save_encoder
from geoloc_ros.model.testing import (bundled_encoder_path, nordland_records, nordland_root, tiny_encoder,
                                      write_progeo_checkpoint)

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


# ---- training --------------------------------------------------------------------------------------------------
@needs_nordland
def test_tiny_training_lowers_loss_raises_recall_and_resumes(tmp_path):
    """Both stages on 48 Nordland places x 2 seasons (real frames): the stage-2 loss falls, winter->summer
    recall beats the untrained network by a margin that holds on any x86-64 CPU, and an interrupted run resumes to
    the identical result."""
    from geoloc_ros.model import evaluation as E
    from geoloc_ros.model import nordland as N
    from geoloc_ros.model.training import Trainer, TrainConfig, untrained_encoder

    recs = nordland_records((10, 480))
    imgs = N.read_images(recs)
    summer = [i for i, r in enumerate(recs) if "summer" in str(r.path)]
    winter = [i for i, r in enumerate(recs) if "winter" in str(r.path)]
    frames = np.array([N.frame_number(r.path) for r in recs])
    pos = E.positives_by_frame(frames[summer], frames[winter], 20)

    def recall(enc):
        return E.recall_at_n(enc.encode([imgs[i] for i in summer]), enc.encode([imgs[i] for i in winter]), pos)

    # Pair batches (16 places x their summer and winter frame) with the image-to-image loss train exactly the
    # winter->summer comparison the recall measures, on these same 48 places: a task learnt by a wide margin,
    # whatever rounding the CPU's kernels do (fp32 throughout: bf16 off, no fp16).
    cfg = TrainConfig(arch="RN-pico", dim=64, image_size=[32, 64], M=10, N=2, groups_num=2, min_images_per_class=2,
                      epochs_stage1=20, batch_size_stage1=64, epochs=6, iterations_per_epoch=40, batch_size=32,
                      pair_weight=1.0, lr=2e-3, classifiers_lr=0.05, random_resized_crop=0.2, hue=0.1, seed=3,
                      bf16=False, use_amp16=False, device="cpu")
    t = Trainer(cfg, recs, tmp_path / "full", images=imgs, progress=False)
    t.run()
    for stage in (1, 2):  # each group's loss falls between its first and its last epoch
        for g in range(cfg.groups_num):
            losses = [h["loss"] for h in t.history if h["stage"] == stage and h["group"] == g]
            assert losses[-1] < losses[0], (stage, g, losses)
    trained = load_encoder(tmp_path / "full", device="cpu")
    before, after = recall(untrained_encoder(cfg)), recall(trained)
    print("untrained", before, "trained", after, t.history)
    # Measured (Intel(R) Xeon(R) Processor with AMX, torch 2.14.1, fp32): R@1 14.6 -> 39.6 at this seed, 8.3 -> 50.0
    # at seed 0; the old recipe (one image per class, batch 16) gained 22.9 here but 8.3 on an AMD EPYC and -6.3 to
    # +18.8 across seeds here. Required: a gain of 10 points, less than half of the smallest gain measured.
    assert after["R@1"] >= before["R@1"] + 10 and after["R@5"] > before["R@5"], (before, after)
    assert trained.metadata["config"]["seed"] == 3  # training metadata travels with the weights

    # interrupted after 3 stage-2 epochs, then resumed: same weights as the uninterrupted run
    import dataclasses

    Trainer(dataclasses.replace(cfg, epochs=3), recs, tmp_path / "resumed", images=imgs, progress=False).run()
    resumed = Trainer(cfg, recs, tmp_path / "resumed", images=imgs, progress=False)
    resumed.run()
    assert [h["epoch"] for h in resumed.history if h["stage"] == 2] == list(range(cfg.epochs))
    assert load_encoder(tmp_path / "resumed").fingerprint == trained.fingerprint

    # learned whitening after stage 2: one pair per place (its summer and winter frame), folded in once
    t.cfg = dataclasses.replace(cfg, whiten=True)
    t.whiten()
    whitened = load_encoder(tmp_path / "full", device="cpu")
    assert whitened.metadata["whitening"]["pairs"] == sum(len(g) for g in t.groups)
    assert whitened.fingerprint != trained.fingerprint
    t.whiten()  # already done: the checkpoint is left as it is
    assert load_encoder(tmp_path / "full").fingerprint == whitened.fingerprint


def _one_group_trainer(run_dir, **options):
    """A Trainer on 20 Nordland places x 2 seasons in one CosPlace group, with the given TrainConfig options."""
    from geoloc_ros.model import nordland as N
    from geoloc_ros.model.training import Trainer, TrainConfig

    recs = nordland_records((10, 200))
    cfg = TrainConfig(arch="RN-pico", dim=32, image_size=[32, 64], M=10, N=2, groups_num=1, min_images_per_class=2,
                      device="cpu", **options)
    return Trainer(cfg, recs, run_dir, images=N.read_images(recs), progress=False)


@needs_nordland
def test_same_class_cutmix_pastes_the_other_season_at_the_same_place(tmp_path):
    t = _one_group_trainer(tmp_path, same_class_cutmix=1.0)
    group = t.groups[0]
    classes = np.arange(len(group))
    idx = [group.images[c][0] for c in classes]
    plan = t._cutmix_plan(group, classes, idx, np.random.default_rng(0))
    assert len(plan) == len(classes)  # probability 1: every row gets a patch
    plain, mixed = t._batch(idx, False), t._batch(idx, False, plan)
    for row, other, top, left, h, w in plan:
        assert other in group.images[classes[row]] and other != idx[row]  # same place, the other image
        inside = (slice(top, top + h), slice(left, left + w))
        torch.testing.assert_close(mixed[row][:, inside[0], inside[1]], t._batch([other], False)[0][:, inside[0],
                                                                                                  inside[1]])
        outside = mixed[row].clone()
        outside[:, inside[0], inside[1]] = plain[row][:, inside[0], inside[1]]
        torch.testing.assert_close(outside, plain[row])


@needs_nordland
def test_pair_batches_hold_each_place_twice_and_the_pair_loss_rewards_partners(tmp_path):
    from geoloc_ros.model.training import pair_infonce

    t = _one_group_trainer(tmp_path, pair_weight=1.0)
    group = t.groups[0]
    classes = np.arange(8)
    labels, idx = t._draw(group, classes, np.random.default_rng(0))
    assert list(labels) == list(classes) * 2
    for k, c in enumerate(classes):  # the halves are two different images of the same place, row by row
        assert idx[k] in group.images[c] and idx[8 + k] in group.images[c] and idx[k] != idx[8 + k]

    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(8, 32), dim=1)
    partners = pair_infonce(torch.cat([a, a]), 0.1)
    strangers = pair_infonce(torch.cat([a, a.roll(1, 0)]), 0.1)
    assert partners < 0.01 < 1.0 < strangers  # low when each row meets its partner, high when paired wrongly
    assert pair_infonce(torch.cat([a, a.roll(1, 0)]), 1.0) < strangers  # the temperature sharpens it


def test_batched_augmentation_matches_torchvision_per_image():
    """The batch-at-once augmentation does what torchvision's per-image ColorJitter + RandomResizedCrop do."""
    from torchvision.transforms.v2 import functional as TF

    from geoloc_ros.model.training import TrainConfig, _blend, augment

    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 64)
    off = TrainConfig(brightness=0, contrast=0, saturation=0, hue=0, random_resized_crop=0)
    assert torch.equal(augment(x.clone(), off), x)  # nothing asked, nothing changed
    grey = (x * torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    f = torch.linspace(0.5, 1.5, 8)
    for i in range(8):  # the per-image blends are torchvision's contrast and saturation
        torch.testing.assert_close(_blend(x, grey.mean(dim=(2, 3), keepdim=True), f)[i],
                                   TF.adjust_contrast(x[i], float(f[i])))
        torch.testing.assert_close(_blend(x, grey, f)[i], TF.adjust_saturation(x[i], float(f[i])))
    crop = TrainConfig(brightness=0, contrast=0, saturation=0, hue=0, random_resized_crop=0.5)
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(8, 3, 32, 64).contiguous()
    out = augment(ramp.clone(), crop)
    assert out.shape == ramp.shape
    assert (out.diff(dim=3) >= -1e-6).all()  # a crop + resize of a ramp is still a ramp...
    assert not torch.allclose(out[0], out[1])  # ...with its own window per image
    full = TrainConfig(random_resized_crop=0.5)  # ProGEO's jitter, hue included
    out = augment(torch.rand(8, 3, 32, 64), full)
    assert out.min() >= 0 and out.max() <= 1


def test_horizontal_flip_mirrors_the_rows_it_draws():
    from geoloc_ros.model.training import TrainConfig, augment

    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 16)
    out = augment(x.clone(), TrainConfig(brightness=0, contrast=0, saturation=0, hue=0, random_resized_crop=0,
                                         hflip=0.5))
    flipped = [bool(torch.equal(out[i], x[i].flip(2))) for i in range(64)]
    kept = [bool(torch.equal(out[i], x[i])) for i in range(64)]
    assert all(f != k for f, k in zip(flipped, kept))  # each row is either mirrored or left alone
    assert 16 < sum(flipped) < 48


def test_histogram_swap_gives_a_frame_another_frames_grey_levels_in_its_own_layout():
    from geoloc_ros.model.training import histogram_swap

    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 16)
    assert torch.equal(histogram_swap(x, 0.0), x)
    out = histogram_swap(x, 0.5)
    swapped = 0
    for i in range(64):
        if torch.equal(out[i], x[i]):
            continue
        swapped += 1
        levels = out[i].flatten(1).sort(1).values
        donors = [j for j in range(64) if torch.equal(levels, x[j].flatten(1).sort(1).values)]
        assert donors and i not in donors  # another frame's grey levels ...
        assert torch.equal(out[i].flatten(1).argsort(1), x[i].flatten(1).argsort(1))  # ... in this frame's order
    assert 16 < swapped < 48


@needs_nordland
def test_weight_average_decay_and_pairs_resume_to_the_same_weights(tmp_path):
    """With `ema_decay` the epochs save the moving average (not the raw network), and its state is part of the
    resumable checkpoint: an interrupted run (here with pair batches too) ends with the same weights as an
    uninterrupted one."""
    import dataclasses

    from geoloc_ros.model import nordland as N
    from geoloc_ros.model.training import Trainer, TrainConfig

    recs = nordland_records((10, 200))
    imgs = N.read_images(recs)
    cfg = TrainConfig(arch="RN-pico", dim=32, image_size=[32, 64], M=10, N=2, groups_num=1, min_images_per_class=2,
                      epochs_stage1=2, epochs=2, iterations_per_epoch=4, batch_size=8, lr=1e-3, ema_decay=0.9,
                      weight_decay=0.05, hflip=0.5, pair_weight=1.0, device="cpu")
    full = Trainer(cfg, recs, tmp_path / "full", images=imgs, progress=False)
    full.run()
    saved = load_encoder(tmp_path / "full")
    raw = full.encoder.encode(imgs[:4])
    assert saved.fingerprint != full.encoder.fingerprint and not np.allclose(saved.encode(imgs[:4]), raw)
    Trainer(dataclasses.replace(cfg, epochs=1), recs, tmp_path / "resumed", images=imgs, progress=False).run()
    Trainer(cfg, recs, tmp_path / "resumed", images=imgs, progress=False).run()
    assert load_encoder(tmp_path / "resumed").fingerprint == saved.fingerprint


@needs_nordland
def test_bf16_training_where_native_else_fp32_and_resnets_train_channels_last(tmp_path):
    """`bf16` autocasts training where the CPU has native bf16 (else the run stays fp32) and says which in the
    checkpoint; the loss still falls, the saved encoder is an ordinary fp32 one and an interrupted run resumes to
    the same weights. ResNets train channels-last."""
    from geoloc_ros.model.encoder import cpu_has_bf16

    options = dict(bf16=True, epochs_stage1=2, epochs=3, iterations_per_epoch=12, batch_size=16, lr=2e-3,
                   classifiers_lr=0.05)
    t = _one_group_trainer(tmp_path / "full", **options)
    assert t.net.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    t.run()
    losses = [h["loss"] for h in t.history if h["stage"] == 2]
    assert losses[-1] < losses[0], losses
    saved = load_encoder(tmp_path / "full")
    _one_group_trainer(tmp_path / "resumed", **{**options, "epochs": 1}).run()
    _one_group_trainer(tmp_path / "resumed", **options).run()
    assert load_encoder(tmp_path / "resumed").fingerprint == saved.fingerprint
    assert saved.metadata["precision"] == ("bf16" if cpu_has_bf16() else "fp32")
    assert all(v.dtype == torch.float32 for v in saved.net.state_dict().values() if v.is_floating_point())
    d = saved.encode([np.zeros((32, 64, 3), np.uint8), np.full((40, 70, 3), 200, np.uint8)])
    assert d.dtype == np.float32 and np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
    assert _one_group_trainer(tmp_path / "fp32").precision == "fp32"


def test_cosine_schedule_decays_stage2_rates_and_constant_keeps_them():
    from geoloc_ros.model.training import TrainConfig, stage2_lr_scale

    assert [stage2_lr_scale(TrainConfig(epochs=4), e) for e in range(4)] == [1.0] * 4
    cos = [stage2_lr_scale(TrainConfig(epochs=4, lr_schedule="cosine"), e) for e in range(4)]
    assert cos[0] == 1.0 and all(a > b for a, b in zip(cos, cos[1:])) and cos[-1] > 0
    with pytest.raises(ValueError, match="lr_schedule"):
        stage2_lr_scale(TrainConfig(lr_schedule="step"), 0)


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
        pytest.skip("maps/nordland_demo/encoder.safetensors not committed yet")
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
        pytest.skip("maps/nordland_demo/encoder.safetensors not committed yet")
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
