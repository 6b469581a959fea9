"""geoloc_ros.model.training / stage2: a real (tiny) two-stage training run on Nordland frames, resume, batch draws,
precision and schedules. Nothing is mocked; nothing is downloaded."""

from pathlib import Path

import numpy as np
import pytest
import torch

from geoloc_ros.model import load_encoder
from geoloc_ros.model.data import cutmix_plan, draw_batch
from geoloc_ros.model.testing import nordland_records

torch.set_num_threads(1)  # the CI/dev machines are small and shared; one thread is fastest there
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_nordland = pytest.mark.skipif(not (DATA / "nordland64" / "summer").is_dir(),
                                    reason="../shared/data/nordland64 not present")


@needs_nordland
def test_tiny_training_lowers_loss_raises_recall_and_resumes(tmp_path):
    """Both stages on 48 Nordland places x 2 seasons (real frames): the stage-2 loss falls, winter->summer
    recall beats the untrained network by a margin that holds on any x86-64 CPU, and an interrupted run resumes to
    the identical result."""
    from geoloc_ros.model import evaluation as E
    from geoloc_ros.model import nordland as N
    from geoloc_ros.model.training import TrainConfig, Trainer, untrained_encoder

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
    # Measured (Intel(R) Xeon(R) Processor with AMX, torch 2.14.1, fp32): R@1 14.6 -> 39.6 at this seed,
    # 8.3 -> 50.0 at seed 0, 10.4 -> 60.4 at seed 1; the old recipe (one image per class, batch 16) gained 22.9
    # here but 8.3 on an AMD EPYC and -6.3 to +18.8 across seeds here. Required: a gain of 10 points, less than
    # half of the smallest gain measured.
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
    from geoloc_ros.model.training import TrainConfig, Trainer

    recs = nordland_records((10, 200))
    # skip_blank off: the blank-frame rule flags some of these first frames, and these tests need all 20 places
    cfg = TrainConfig(arch="RN-pico", dim=32, image_size=[32, 64], M=10, N=2, groups_num=1, min_images_per_class=2,
                      device="cpu", **{"skip_blank": False, **options})
    return Trainer(cfg, recs, run_dir, images=N.read_images(recs), progress=False)


@needs_nordland
def test_same_class_cutmix_pastes_the_other_season_at_the_same_place(tmp_path):
    t = _one_group_trainer(tmp_path, same_class_cutmix=1.0)
    group = t.groups[0]
    classes = np.arange(len(group))
    idx = [group.images[c][0] for c in classes]
    plan = cutmix_plan(group, classes, idx, np.random.default_rng(0), 1.0, t.size)
    assert len(plan) == len(classes)  # probability 1: every row gets a patch
    plain, mixed = t.batch(idx, False), t.batch(idx, False, plan)
    for row, other, top, left, h, w in plan:
        assert other in group.images[classes[row]] and other != idx[row]  # same place, the other image
        inside = (slice(top, top + h), slice(left, left + w))
        torch.testing.assert_close(mixed[row][:, inside[0], inside[1]], t.batch([other], False)[0][:, inside[0],
                                                                                                  inside[1]])
        outside = mixed[row].clone()
        outside[:, inside[0], inside[1]] = plain[row][:, inside[0], inside[1]]
        torch.testing.assert_close(outside, plain[row])


@needs_nordland
def test_pair_batches_hold_each_place_twice(tmp_path):
    t = _one_group_trainer(tmp_path, pair_weight=1.0)
    group = t.groups[0]
    classes = np.arange(8)
    labels, idx = draw_batch(group, classes, np.random.default_rng(0), pairs=True)
    assert list(labels) == list(classes) * 2
    for k, c in enumerate(classes):  # the halves are two different images of the same place, row by row
        assert idx[k] in group.images[c] and idx[8 + k] in group.images[c] and idx[k] != idx[8 + k]


@needs_nordland
def test_weight_average_decay_and_pairs_resume_to_the_same_weights(tmp_path):
    """With `ema_decay` the epochs save the moving average (not the raw network), and its state is part of the
    resumable checkpoint: an interrupted run (here with pair batches too) ends with the same weights as an
    uninterrupted one."""
    import dataclasses

    from geoloc_ros.model import nordland as N
    from geoloc_ros.model.training import TrainConfig, Trainer

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
    from geoloc_ros.model.config import TrainConfig
    from geoloc_ros.model.loop import stage2_lr_scale

    assert [stage2_lr_scale(TrainConfig(epochs=4), e) for e in range(4)] == [1.0] * 4
    cos = [stage2_lr_scale(TrainConfig(epochs=4, lr_schedule="cosine"), e) for e in range(4)]
    assert cos[0] == 1.0 and all(a > b for a, b in zip(cos, cos[1:])) and cos[-1] > 0
    with pytest.raises(ValueError, match="lr_schedule"):
        stage2_lr_scale(TrainConfig(lr_schedule="step"), 0)


@needs_nordland
def test_an_all_nan_validation_still_writes_the_encoder(tmp_path):
    """A validation whose queries have no positive scores NaN every epoch: the run ends as one without
    validation would (encoder.safetensors is the last epoch's) instead of writing none."""
    from geoloc_ros.model import evaluation as E

    t = _one_group_trainer(tmp_path, epochs_stage1=1, epochs=2, iterations_per_epoch=2, batch_size=8)
    probe = t.records[:4]
    nowhere = [np.array([], dtype=np.int64) for _ in probe]  # no query has a positive: R@1 is 0/0

    def val_fn(enc):
        d = enc.encode([t.bank.get([i])[0] for i in range(len(probe))])
        return E.recall_at_n(d, d, nowhere)

    t.val_fn = val_fn
    t.run()
    vals = [h["val"]["R@1"] for h in t.history if h["stage"] == 2]
    assert len(vals) == 2 and all(np.isnan(v) for v in vals)
    saved = load_encoder(tmp_path / "encoder.safetensors")
    assert saved.metadata["stage2_epochs_done"] == 2
    assert saved.fingerprint == load_encoder(tmp_path / "encoder_last.safetensors").fingerprint


def test_vit_fine_tuning_freezes_what_progeo_freezes():
    """ProGEO's get_backbone freezes conv1, ln_pre and the first freeze_trans blocks of a pretrained ViT; the class
    and positional embeddings, the later blocks, ln_post and proj train."""
    import dataclasses

    from geoloc_ros.model.stage2 import freeze_pretrained_layers
    from geoloc_ros.model.training import TrainConfig, init_model

    cfg = TrainConfig(arch="ViT-nano", image_size=(32, 32), freeze_trans=1)
    arch, _, _, net = init_model(cfg)  # random weights; the freezing rule only asks whether the run is pretrained
    freeze_pretrained_layers(net, arch, dataclasses.replace(cfg, pretrained="weights.pt"))
    b = net.backbone
    assert not any(p.requires_grad for m in (b.conv1, b.ln_pre, b.transformer.resblocks[0]) for p in m.parameters())
    assert b.class_embedding.requires_grad and b.positional_embedding.requires_grad
    assert all(p.requires_grad for p in b.transformer.resblocks[1].parameters())
    assert all(p.requires_grad for p in b.ln_post.parameters()) and b.proj.requires_grad
