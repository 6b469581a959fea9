"""geoloc_ros.model.losses: the training losses as nn.Modules, computed in fp32 even under bf16 autocast."""

import pytest
import torch

from geoloc_ros.model.losses import CosFace, ImageToTextLoss, PairInfoNCE, SupConLoss, pair_infonce

torch.set_num_threads(1)


def test_pair_loss_rewards_partners_and_its_temperature_sharpens_it():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(8, 32), dim=1)
    partners = pair_infonce(torch.cat([a, a]), 0.1)
    strangers = pair_infonce(torch.cat([a, a.roll(1, 0)]), 0.1)
    assert partners < 0.01 < 1.0 < strangers  # low when each row meets its partner, high when paired wrongly
    assert pair_infonce(torch.cat([a, a.roll(1, 0)]), 1.0) < strangers  # the temperature sharpens it


def test_cosface_takes_the_margin_off_the_true_class_only():
    loss = CosFace(16, 5, s=30.0, m=0.4, generator=torch.Generator().manual_seed(0))
    x, labels = torch.randn(4, 16), torch.tensor([0, 1, 2, 3])
    plain = 30.0 * torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(loss.weight, dim=1).t()
    diff = plain - loss.logits(x, labels)
    torch.testing.assert_close(diff, 30.0 * 0.4 * torch.nn.functional.one_hot(labels, 5).float())


def _losses():
    """Each stage-2 loss as a function of (descriptors, labels); with its own fixed parameters."""
    gen = torch.Generator().manual_seed(0)
    cosface = CosFace(32, 6, generator=gen)
    text = torch.randn(6, 32, generator=gen)
    return {"CosFace": cosface,
            "image-to-text": lambda d, y: ImageToTextLoss(0.1)(d, text, y),
            "pair InfoNCE": lambda d, y: PairInfoNCE(0.1)(d),
            "SupCon": lambda d, y: SupConLoss(1.0)(d, text[y], y, y)}


@pytest.mark.parametrize("name", list(_losses()))
def test_losses_are_computed_in_fp32_under_bf16_autocast(name):
    """Under CPU bf16 autocast (emulated where the CPU has no native bf16) a loss of bf16 descriptors is
    float32 and equal, bit for bit, to the same loss of the same values computed with autocast off: nothing in
    it ran in bf16 (a bf16 matmul inside would round the logits and change the value)."""
    fn = _losses()[name]
    torch.manual_seed(1)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    layer = torch.nn.Linear(48, 32)
    x = torch.randn(8, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = layer(x)
        assert d.dtype == torch.bfloat16  # the network's output is bf16 ...
        loss = fn(d, labels)
    assert loss.dtype == torch.float32  # ... the loss is fp32
    reference = fn(d.detach().float(), labels)
    assert torch.equal(loss.detach(), reference.detach()), (loss, reference)
    loss.backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
