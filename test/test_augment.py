"""geoloc_ros.model.augment: the batched augmentation against torchvision's per-image transforms."""

import torch

torch.set_num_threads(1)


def test_batched_augmentation_matches_torchvision_per_image():
    """The batch-at-once augmentation does what torchvision's per-image ColorJitter + RandomResizedCrop do."""
    from torchvision.transforms.v2 import functional as TF

    from geoloc_ros.model.augment import _blend, augment
    from geoloc_ros.model.config import TrainConfig

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
    from geoloc_ros.model.augment import augment
    from geoloc_ros.model.config import TrainConfig

    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 16)
    out = augment(x.clone(), TrainConfig(brightness=0, contrast=0, saturation=0, hue=0, random_resized_crop=0,
                                         hflip=0.5))
    flipped = [bool(torch.equal(out[i], x[i].flip(2))) for i in range(64)]
    kept = [bool(torch.equal(out[i], x[i])) for i in range(64)]
    assert all(f != k for f, k in zip(flipped, kept))  # each row is either mirrored or left alone
    assert 16 < sum(flipped) < 48


def test_histogram_swap_gives_a_frame_another_frames_grey_levels_in_its_own_layout():
    from geoloc_ros.model.augment import histogram_swap

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
