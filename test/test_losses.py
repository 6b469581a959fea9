"""geoloc_ros.model.losses: the training losses as nn.Modules."""

import torch

from geoloc_ros.model.losses import CosFace, pair_infonce

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
