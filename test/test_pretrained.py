"""Pretrained CLIP weights for ProGEO's backbones: files written here from random weights by open_clip itself
(nothing downloads) load exactly, and the descriptor is what ProGEO's stage-2 head computes from them."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")


def _random_clip(name, seed=0):
    torch.manual_seed(seed)
    return open_clip.create_model(name, pretrained=None, force_quick_gelu=True).eval()


def _images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _assert_same_visual(enc_net, visual, skip=()):
    """Every tensor of the encoder's backbone equals the source tower's (same names, same values)."""
    ours = {k[len("backbone."):]: v for k, v in enc_net.state_dict().items() if k.startswith("backbone.")}
    theirs = {k: v for k, v in visual.state_dict().items() if not k.startswith("attnpool.") and k not in skip}
    assert set(theirs) <= set(ours) and set(ours) - set(theirs) <= set(skip)
    for k, v in theirs.items():
        assert torch.equal(ours[k], v), k


def _progeo_resnet_head(visual, linear, x):
    """ProGEO's GeoLocalizationNet for CLIP ResNets: backbone(x, stage=2) = layer4 map, then L2Norm over
    channels, GeM (p=3, eps=1e-6), Flatten, Linear, L2Norm (cosplace_network_stage2.py / layers.py)."""
    v = visual
    x = v.act3(v.bn3(v.conv3(v.act2(v.bn2(v.conv2(v.act1(v.bn1(v.conv1(x)))))))))
    x = v.layer4(v.layer3(v.layer2(v.layer1(v.avgpool(x)))))
    x = F.normalize(x, p=2.0, dim=1)
    x = F.avg_pool2d(x.clamp(min=1e-6).pow(3.0), (x.size(-2), x.size(-1))).pow(1.0 / 3.0)[:, :, 0, 0]
    return F.normalize(linear(x), p=2.0, dim=1)


def test_rn50_open_clip_file_loads_exactly_and_gives_progeo_descriptor(tmp_path):
    """The issue's failing case: build_encoder(arch="RN50", dim=1024, pretrained=<open_clip RN50 file>) at 512."""
    from geoloc_ros.model.encoder import build_encoder
    from geoloc_ros.model.network import attnpool_any_size, build_clip

    clip = _random_clip("RN50")
    file = tmp_path / "rn50_open_clip.pt"
    torch.save(clip.state_dict(), file)
    enc = build_encoder(arch="RN50", dim=1024, pretrained=str(file), device="cpu")
    assert enc.image_size == (512, 512) and enc.dim == 1024
    _assert_same_visual(enc.net, clip.visual)
    # Stage 1's attention pool keeps its native 7x7 grid and every weight; it adapts to 512 px (16x16) at run time.
    loaded = build_clip(enc.arch, str(file))
    for k, v in clip.visual.attnpool.state_dict().items():
        assert torch.equal(loaded.visual.attnpool.state_dict()[k], v), k
    assert loaded.visual.attnpool.positional_embedding.shape == (50, 2048)
    images = _images(2, 512)
    x = enc.to_tensor(images)
    with torch.inference_mode():
        ref = _progeo_resnet_head(clip.visual, enc.net.aggregation[3], x).numpy()
        pooled = attnpool_any_size(loaded.visual.attnpool, enc.net.feature_map(x))
    got = enc.encode(images)
    assert float((got * ref).sum(1).min()) >= 0.9999
    assert pooled.shape == (2, 1024) and torch.isfinite(pooled).all()


def _progeo_vit_positions(pos, grid):
    """ProGEO's clip.build_model(image_size=512) resamples the ViT's positional table: bicubic, aligned corners."""
    side = round((pos.shape[0] - 1) ** 0.5)
    img = pos[1:].T.reshape(1, -1, side, side)
    img = F.interpolate(img, size=grid, mode="bicubic", align_corners=True).reshape(pos.shape[1], -1).T
    return torch.cat([pos[:1], img], dim=0)


def test_vit_safetensors_file_loads_and_gives_progeo_descriptor(tmp_path):
    """ViT-B-32 from an open_clip-layout .safetensors file at 256 px (8x8 patches; 512 works the same, slower):
    every tensor equal, the positional table resampled as ProGEO does, the descriptor = CLIP's projected token."""
    from safetensors.torch import save_file

    from geoloc_ros.model.encoder import build_encoder

    clip = _random_clip("ViT-B-32", seed=1)
    file = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(file))
    enc = build_encoder(arch="ViT-B-32", pretrained=str(file), image_size=256, device="cpu")
    assert enc.dim == 512
    _assert_same_visual(enc.net, clip.visual, skip=("positional_embedding",))
    want = _progeo_vit_positions(clip.visual.positional_embedding.detach(), (8, 8))
    assert torch.equal(enc.net.backbone.positional_embedding.detach(), want)
    clip.visual.positional_embedding = torch.nn.Parameter(want)
    images = _images(2, 256, seed=2)
    with torch.inference_mode():
        ref = F.normalize(clip.visual(enc.to_tensor(images)), dim=1).numpy()
    assert float((enc.encode(images) * ref).sum(1).min()) >= 0.9999


def test_openai_torchscript_file_loads_through_open_clip(tmp_path):
    """OpenAI's original release format (a TorchScript archive, fp16-rounded weights), read by open_clip's
    load_openai_model; a small CLIP ResNet keeps it fast. A file for another architecture is refused by name."""
    from geoloc_ros.model.archs import arch_config
    from geoloc_ros.model.encoder import build_encoder
    from geoloc_ros.model.pretrained import is_torchscript, native_clip

    torch.manual_seed(3)
    clip = native_clip(arch_config("RN-nano")).eval().half().float()  # OpenAI's files hold fp16 weights
    clip.attn_mask = clip._buffers.pop("attn_mask")  # OpenAI's CLIP keeps the mask as a plain attribute
    file = tmp_path / "RN-nano.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(clip, (torch.zeros(1, 3, 64, 64), torch.zeros(1, 16, dtype=torch.long)),
                        check_trace=False).save(str(file))
    assert is_torchscript(file)
    enc = build_encoder(arch="RN-nano", pretrained=str(file), device="cpu")
    _assert_same_visual(enc.net, clip.visual)
    with pytest.raises(ValueError, match="do not fit RN-pico"):
        build_encoder(arch="RN-pico", pretrained=str(file), device="cpu")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    from geoloc_ros.model.encoder import build_encoder

    with pytest.raises(ValueError, match="no such weights file"):
        build_encoder(arch="RN-nano", pretrained=str(tmp_path / "absent.pt"), device="cpu")


def test_train_rn50_from_open_clip_file_on_lund_exif_photos(tmp_path, shared_data):
    """`geoloc train --arch RN50 --dim 1024 --pretrained FILE` on the Lund street photos (positions from their EXIF
    GPS), from an open_clip-layout RN50 file written here; tiny: 64 px, one stage-1 and one stage-2 iteration.
    The trained encoder starts from the file: the frozen stem and layer1-2 (ProGEO --freeze_cnn 2) keep its weights."""
    from geoloc_ros.cli import main
    from geoloc_ros.model import load_encoder

    clip = _random_clip("RN50", seed=4)
    weights = tmp_path / "rn50.pt"
    torch.save(clip.state_dict(), weights)
    del clip
    run = tmp_path / "run"
    assert main(["train", "--train-set", str(shared_data / "geometry" / "lund_street"), "--run-dir", str(run),
                 "--arch", "RN50", "--dim", "1024", "--pretrained", str(weights), "--image-size", "64",
                 "--M", "30", "--N", "1", "--L", "1", "--groups-num", "1", "--min-images-per-class", "2",
                 "--epochs-stage1", "1", "--batch-size-stage1", "8", "--epochs", "1", "--iterations-per-epoch", "1",
                 "--batch-size", "4", "--device", "cpu", "--no-progress"]) == 0
    enc = load_encoder(run / "encoder.safetensors", device="cpu")
    assert enc.arch["name"] == "RN50" and enc.dim == 1024 and enc.image_size == (64, 64)
    source = torch.load(weights, weights_only=True)
    frozen = [k for k, _ in enc.net.named_parameters()
              if k.startswith(("backbone.conv1.", "backbone.bn1.", "backbone.layer1.", "backbone.layer2."))]
    assert frozen
    for k in frozen:  # weights only: BatchNorm statistics move in train mode, as in ProGEO
        assert torch.equal(enc.net.state_dict()[k], source["visual." + k[len("backbone."):]]), k
    d = enc.encode([np.zeros((64, 64, 3), np.uint8)])
    assert d.shape == (1, 1024) and np.isfinite(d).all()
