"""geoloc_ros.model.stage1_images: stage 1 embeds as ProGEO does (native CLIP size, BatchNorm mode, features on the
CPU) and leaves the network as it found it. Real networks, real Nordland frames; nothing mocked."""

from pathlib import Path

import pytest
import torch

from geoloc_ros.model.archs import arch_config
from geoloc_ros.model.stage1_images import frozen_image_embeddings, native_positions, stage1_mode, stage1_size

torch.set_num_threads(1)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_nordland = pytest.mark.skipif(not (DATA / "nordland64" / "summer").is_dir(),
                                    reason="../shared/data/nordland64 not present")


def test_progeo_backbones_embed_at_clip_native_224_small_archs_at_the_training_size():
    for name in ("RN50", "RN101", "ViT-B-16", "ViT-B-32"):
        assert stage1_size(arch_config(name, 512), (512, 512)) == (224, 224)
    assert stage1_size(arch_config("RN-nano", [64, 128]), (64, 128)) == (64, 128)


def test_vit_stage1_mode_swaps_in_the_native_positional_table_and_puts_everything_back():
    from geoloc_ros.model.training import TrainConfig, init_model

    _, _, _, net = init_model(TrainConfig(arch="ViT-nano", image_size=64, device="cpu"))
    visual = net.backbone
    before = visual.positional_embedding.data.clone()
    assert before.shape[0] == 8 * 8 + 1
    with stage1_mode(net, net.cfg, (32, 32), "eval"):
        assert visual.positional_embedding.shape[0] == 4 * 4 + 1 and not net.training
        net.clip_image_embedding(torch.zeros(1, 3, 32, 32))  # the tower runs at the other grid
    assert torch.equal(visual.positional_embedding.data, before) and net.training
    # a table kept from pretrained weights (pretrained.load_pretrained_clip) is used as it is when it fits
    visual.native_positional_embedding = torch.arange(17 * before.shape[1], dtype=torch.float32).view(17, -1)
    assert torch.equal(native_positions(visual, (32, 32)), visual.native_positional_embedding)


@needs_nordland
def test_train_mode_batchnorm_uses_batch_statistics_and_restores_the_running_ones(tmp_path):
    from test_training import _one_group_trainer

    t = _one_group_trainer(tmp_path, batch_size_stage1=8)
    running = {k: v.clone() for k, v in t.net.state_dict().items() if "running_" in k}
    t.cfg.stage1_batchnorm = "eval"
    eval_feats, eval_labels = frozen_image_embeddings(t)
    t.cfg.stage1_batchnorm = "train"
    train_feats, train_labels = frozen_image_embeddings(t)
    assert eval_feats[0].device.type == "cpu" and eval_feats[0].dtype == torch.float32  # kept off the device
    assert torch.equal(eval_labels[0], train_labels[0]) and eval_feats[0].shape == train_feats[0].shape
    assert not torch.allclose(eval_feats[0], train_feats[0])  # batch statistics, not the running ones
    for k, v in t.net.state_dict().items():
        if k in running:
            assert torch.equal(v, running[k]), k  # stage 2 starts from the untouched statistics
    with pytest.raises(ValueError, match="stage1_batchnorm"):
        t.cfg.stage1_batchnorm = "frozen"
        frozen_image_embeddings(t)
