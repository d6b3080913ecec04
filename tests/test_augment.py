"""utils.data.augment: seeded, plausible radiograph augmentation; masks follow the image; no mirror by default."""
from __future__ import annotations

import torch

from utils.data.augment import AugmentSpec, augment, augment_pair

NONE = AugmentSpec(rotation=0.0, scale=(1.0, 1.0), shift=0.0, brightness=0.0, contrast=(1.0, 1.0))


def _images(n=16, size=32, seed=0):
    return torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _left_bright(n=32, size=32):
    x = torch.full((n, 1, size, size), 40, dtype=torch.uint8)
    x[..., : size // 2] = 220  # the left half bright: a mirror image is the right half bright
    return x


def test_no_transform_returns_the_image_in_unit_range():
    x = _images()
    out = augment(x, torch.Generator().manual_seed(0), NONE)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, x.float() / 255, atol=1e-6, rtol=0)  # identity warp samples pixel centres


def test_seeded_by_the_generator_and_within_unit_range():
    x = _images()
    a = augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(2)))
    assert a.min() >= 0 and a.max() <= 1


def test_masks_move_with_the_same_geometry():
    x = _images()
    geometry_only = AugmentSpec(brightness=0.0, contrast=(1.0, 1.0))
    out, masks = augment_pair(x, x.float() / 255, torch.Generator().manual_seed(3), geometry_only)
    torch.testing.assert_close(masks, out)  # without exposure changes, image and mask warp identically
    assert not torch.allclose(out, x.float() / 255)  # and the geometry did change something


def test_no_horizontal_flip_by_default_and_flips_when_asked():
    x = _left_bright()
    half = x.shape[-1] // 2

    def left_brighter(out):
        return out[..., :half].mean(dim=(1, 2, 3)) > out[..., half:].mean(dim=(1, 2, 3))

    assert left_brighter(augment(x, torch.Generator().manual_seed(4))).all()  # anatomy keeps its side
    flipped = ~left_brighter(augment(x, torch.Generator().manual_seed(4), AugmentSpec(hflip=True)))
    assert 0 < int(flipped.sum()) < len(x)  # each image flipped with probability 1/2 (seeded draw)


def test_exposure_changes_stay_within_their_ranges():
    x = torch.full((64, 1, 16, 16), 128, dtype=torch.uint8)
    spec = AugmentSpec(rotation=0.0, scale=(1.0, 1.0), shift=0.0, brightness=0.08, contrast=(0.85, 1.15))
    shift = augment(x, torch.Generator().manual_seed(5), spec).mean(dim=(1, 2, 3)) - 128 / 255
    assert shift.abs().max() <= 0.08 + 1e-6  # a flat image: contrast has no effect, brightness moves it
    assert shift.std() > 0.02  # and it does move, by a different amount per image
