"""The border of shift-averaged Grad-CAM: why ``"partial"`` heats it (hot strip, stair steps, a ghost band) and how
``"complete"`` (every copy keeps every pixel, every pixel averaged over every copy) removes it; and the border band
that notebook 06's outside-lung share can leave out."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from utils.explain.gradcam import (
    SHIFT_ALIGN,
    SHIFT_BORDER,
    average_unshifted,
    gradcam,
    shift_averaged_gradcam,
    shift_grid,
    shift_images,
    shifted_size,
)
from utils.explain.localisation import border_band, border_share, outside_fraction, outside_lung_fractions

SHIFTS = shift_grid((0, 8))
SIZE = 32
BAND = 2


class Frame(nn.Module):
    """A feature map that is a band along the frame of whatever the layer is given — a CNN's response to its own
    zero padding, made exact. It ignores the content, so any border structure in the averaged map is the averaging's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        band = torch.from_numpy(border_band(h, w, BAND).astype(np.float32))
        return x[:, :1] * 0 + band


class FrameModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frame = Frame()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.frame(x).mean(dim=(1, 2, 3))
        return torch.stack([-s, s], dim=1)


class Pixelwise(nn.Module):
    """A model whose feature map is the image's brightness, pixel by pixel: its map moves exactly with the image."""

    def __init__(self) -> None:
        super().__init__()
        self.fine = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU())
        with torch.no_grad():
            self.fine[0].weight.fill_(1 / 3)
            self.fine[0].bias.fill_(3.0)  # positive everywhere: the ReLU keeps every pixel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fine(x).mean(dim=(1, 2, 3))
        return torch.stack([-s, s], dim=1)


def _x(n: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0)).expand(-1, 3, -1, -1).contiguous()


def test_the_default_border_is_the_complete_one():
    """A caller that does not choose gets no border artefact."""
    assert SHIFT_BORDER == "complete"
    default, _ = shift_averaged_gradcam(Pixelwise().eval(), _x(), "fine", 1, SHIFTS)
    complete, _ = shift_averaged_gradcam(Pixelwise().eval(), _x(), "fine", 1, SHIFTS, border="complete")
    np.testing.assert_array_equal(default, complete)
    x = _x()
    torch.testing.assert_close(shift_images(x, SHIFTS), shift_images(x, SHIFTS, "complete"))


def test_partial_averaging_makes_a_hot_strip_a_stair_and_a_ghost_band():
    """Every copy's map is the frame band. Averaged back with ``"partial"``: the bottom strip counts only the copies
    that did not move down (both carry the band there) → full strength; the top strip gets the band from those copies
    and nothing from the moved ones → half; and the moved copies' bottom band lands 8 px inside the image → a ghost."""
    maps, _ = shift_averaged_gradcam(FrameModel(), _x(1), "frame", 1, SHIFTS, border="partial")
    m = maps[0]
    col = m[:, SIZE // 2]  # a column far from the left/right bands
    np.testing.assert_allclose(col[-BAND:], 1.0)  # bottom strip: full strength
    np.testing.assert_allclose(col[:BAND], 0.5)  # top strip: half
    np.testing.assert_allclose(col[SIZE - 8 - BAND:SIZE - 8], 0.5)  # the ghost of the moved copies' bottom band
    assert m[-1, -1] == pytest.approx(1.0) and m[0, 0] == pytest.approx(0.75)  # opposite corners differ
    assert not np.allclose(m, np.rot90(m, 2))  # the border is not treated alike on opposite sides


def test_complete_averaging_treats_every_border_alike():
    """Every copy sits inside a canvas padded on all four sides (the span rounded up to SHIFT_ALIGN, split between
    the sides): a frame response narrower than that margin never reaches the image — no strip, no stair, no ghost."""
    copies = shift_images(_x(1), SHIFTS, "complete")
    pad = (copies.shape[-1] - SIZE - 8) // 2  # per side, beyond the shift itself
    assert copies.shape[-1] % SHIFT_ALIGN == 0 and pad >= BAND
    maps, _ = shift_averaged_gradcam(FrameModel(), _x(1), "frame", 1, SHIFTS, border="complete")
    np.testing.assert_allclose(maps[0], 0.0, atol=1e-7)


def test_complete_copies_keep_every_pixel_and_average_back_exactly():
    x = torch.rand(2, 1, 12, 10, generator=torch.Generator().manual_seed(1))
    shifts = [(0, 0), (3, -2), (-4, 5), (1, 1)]
    copies = shift_images(x, shifts, "complete")
    assert copies.shape[-2:] == shifted_size((12, 10), shifts, "complete") == (12 + 32, 10 + 32)  # spans 7, 7 → 32
    assert shifted_size((12, 10), shifts, "partial") == (12, 10)
    top, left = 4 + (32 - 7) // 2, 2 + (32 - 7) // 2  # -min(dy), -min(dx), plus half the rounding
    for k, (dy, dx) in enumerate(shifts):
        torch.testing.assert_close(copies[2 * k:2 * k + 2, :, top + dy:top + dy + 12, left + dx:left + dx + 10], x)
    back = average_unshifted(copies[:, 0], shifts, "complete")
    torch.testing.assert_close(back, x[:, 0])  # a mean of equal values: exact
    with pytest.raises(ValueError, match="unknown border"):
        shift_images(x, shifts, "wrap")


def test_complete_equals_the_plain_map_when_the_model_has_no_border_effect():
    model, x = Pixelwise().eval(), _x()
    plain, logits = gradcam(model, x, "fine", 1)
    maps, logits_c = shift_averaged_gradcam(model, x, "fine", 1, SHIFTS, border="complete")
    np.testing.assert_allclose(maps, plain, atol=1e-6)
    torch.testing.assert_close(logits_c, logits)  # the logits of the images themselves, not of a padded copy


def test_complete_on_a_resnet_layer3():
    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=2).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    maps, logits = shift_averaged_gradcam(model, x, "layer3", None, SHIFTS, border="complete")
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))


def test_border_share_and_outside_fraction_without_the_band():
    lung = np.zeros((20, 20), bool)
    lung[5:15, 3:9] = True
    on_band = np.zeros((20, 20))
    on_band[0, :] = 1.0  # all mass on the top row
    inside = np.zeros((20, 20))
    inside[8, 5] = 1.0
    assert border_share(on_band, 2) == 1.0 and border_share(inside, 2) == 0.0
    assert border_share(np.ones((20, 20)), 2) == pytest.approx(border_band(20, 20, 2).mean())  # uniform = band area
    assert np.isnan(border_share(np.zeros((20, 20)), 2))
    both = on_band + inside
    assert outside_fraction(both, lung) == pytest.approx(20 / 21)  # the border strip reads as "outside the lungs"
    assert outside_fraction(both, lung, ignore_border_px=2) == 0.0  # ... unless the band is left out
    assert np.isnan(outside_fraction(on_band, lung, ignore_border_px=2))  # nothing left to score
    fr, _, _ = outside_lung_fractions(np.stack([both, inside]), np.stack([lung, lung]), ignore_border_px=2)
    np.testing.assert_allclose(fr, [0.0, 0.0])
