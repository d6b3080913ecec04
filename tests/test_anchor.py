"""Where a map's cells are drawn: the library's evenly spread cells against receptive-field centres (spec ``anchor``).

A ResNet's cell j of a layer with total stride S is centred on input pixel S·j (every stride-2 convolution and
pooling pads "same" and is anchored at the top-left); the usual bilinear resize draws it at S·j + (S − 1)/2.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from utils.config import IMAGENET_MEAN, IMAGENET_STD
from utils.data.bundle import Split
from utils.explain import review
from utils.explain.gradcam import (
    CellGeometry,
    GradCAM,
    cam_steps,
    library_geometry,
    receptive_field_geometry,
    shift_grid,
    shifted_size,
    upsample_cells,
)
from utils.explain.maps import Explainer, candidate_maps, cell_geometry, explain, main_maps
from utils.explain.spec import (
    ANCHOR_NAMES,
    EXPLANATION_CANDIDATES,
    VIT_EXPLANATION_CANDIDATES,
    check_spec,
    make_spec,
)
from utils.explain.vit import VIT_GRADCAM_LAYER
from utils.train.model import preprocess
from utils.train.vit import build_vit, token_grid

SIZE = 128  # layer3: an 8 x 8 grid of 16-px cells


class _OneHot(nn.Module):
    """Replaces a feature map by one hot cell (every channel 1 there, 0 elsewhere); the grid is kept."""

    def __init__(self, cell: tuple[int, int]) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        hot = torch.zeros_like(a)
        r, c = self.cell
        if r < a.shape[-2] and c < a.shape[-1]:
            hot[..., r, c] = 1.0
        return hot + 0 * a


class HotCell(nn.Module):
    """A ResNet-18 trunk up to ``layer3`` whose output (``cells``) is one hot cell, read by a positive linear head:
    Grad-CAM on ``cells`` is exactly that cell, so the upsampled map's peak shows where the cell is drawn."""

    def __init__(self, cell: tuple[int, int]) -> None:
        super().__init__()
        torch.manual_seed(0)
        r = resnet18(weights=None, num_classes=2)
        self.trunk = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3)
        self.cells = _OneHot(cell)
        self.fc = nn.Linear(256, 2)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)
            self.fc.bias.zero_()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.cells(self.trunk(x)).mean(dim=(2, 3)))


def peak_centre(m: np.ndarray) -> np.ndarray:
    """The centre (row, column) of the pixels at the map's maximum (a plateau's middle)."""
    return np.argwhere(m == m.max()).mean(axis=0)


# ----------------------------------------------------------------------------------------- the geometry
def test_the_probe_finds_a_resnets_strides_and_top_left_centres():
    model = resnet18(weights=None, num_classes=2).eval()
    for layer, stride in (("conv1", 2), ("maxpool", 4), ("layer1", 4), ("layer2", 8), ("layer3", 16), ("layer4", 32)):
        assert receptive_field_geometry(model, layer) == CellGeometry((stride, stride), (0.0, 0.0)), layer


def test_the_probe_finds_offsets_of_unpadded_and_anisotropic_stacks():
    # a 3x3 stride-2 convolution without padding: cell j covers pixels 2j..2j+2, centred on 2j + 1
    assert receptive_field_geometry(nn.Conv2d(1, 1, 3, stride=2), "") == CellGeometry((2, 2), (1.0, 1.0))
    # rows: (3, stride 2) then 5 -> cell j covers 2j .. 2j + 2 + 2*4, centre 2j + 5; columns: 1 then 5 -> j + 2
    stack = nn.Sequential(nn.Conv2d(1, 2, (3, 1), stride=(2, 1)), nn.Conv2d(2, 2, 5))
    assert receptive_field_geometry(stack, "1") == CellGeometry((2, 1), (5.0, 2.0))
    # patches of 16 px: patch j's centre is the middle of its block, 16j + 7.5
    assert receptive_field_geometry(nn.Conv2d(3, 4, 16, stride=16), "") == CellGeometry((16, 16), (7.5, 7.5))


def test_the_geometry_is_probed_once_per_model_and_layer():
    model = resnet18(weights=None, num_classes=2).eval()
    spec = make_spec("gradcam", "layer3", anchor="receptive_field")
    sizes: list[tuple[int, ...]] = []
    handle = model.register_forward_pre_hook(lambda m, inp: sizes.append(tuple(inp[0].shape)))
    try:
        first = cell_geometry(model, spec)
        n_probes = len(sizes)
        assert cell_geometry(model, make_spec("xgradcam", "layer3", (0, 8), anchor="receptive_field")) == first
    finally:
        handle.remove()
    assert 0 < n_probes == len(sizes) and all(s[0] == 1 for s in sizes)  # small single-image probes, not repeated


def test_a_token_layer_cannot_be_probed():
    vit, _ = build_vit("none", 2, 64, seed=0)
    with pytest.raises(ValueError, match="feature map"):
        receptive_field_geometry(vit.eval(), "blocks.0")


def test_library_geometry_is_the_library_resize():
    raw = torch.rand(2, 7, 5, generator=torch.Generator().manual_seed(0))
    for size in ((128, 96), (64, 64), (33, 71)):
        np.testing.assert_allclose(upsample_cells(raw, size, library_geometry((7, 5), size)).numpy(),
                                   upsample_cells(raw, size).numpy(), atol=1e-6)


# ----------------------------------------------------------------------------------------- one hot cell
@pytest.mark.parametrize("cell", [(2, 5), (6, 1)])  # inner cells: beyond the outer centres both maps are flat
def test_a_hot_cell_is_drawn_on_its_receptive_field_centre(cell):
    model = HotCell(cell)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    library = make_spec("gradcam", "cells")
    anchored = make_spec("gradcam", "cells", anchor="receptive_field")
    assert cell_geometry(model, anchored) == CellGeometry((16, 16), (0, 0)) and cell_geometry(model, library) is None
    lib_map = explain(model, x, library, 1)[0][0]
    with Explainer(model, anchored) as ex:
        rf_map = ex(x, 1)[0][0]
    stride = 16
    # the receptive field's centre: the hot cell's pixel, exactly (the value there is the cell's, 1 after scaling)
    np.testing.assert_array_equal(peak_centre(rf_map), stride * np.array(cell))
    assert rf_map[stride * cell[0], stride * cell[1]] == 1.0 and (rf_map == 1.0).sum() == 1
    # the library: (stride - 1)/2 = 7.5 px down and right — the middle of a 2 x 2 plateau
    np.testing.assert_array_equal(peak_centre(lib_map), stride * np.array(cell) + (stride - 1) / 2)
    # candidate_maps draws both from one pass, the same maps
    maps, _, _ = candidate_maps(model, x, [library, anchored], targets=1)
    np.testing.assert_allclose(maps[anchored["name"]][0], rf_map, atol=1e-6)
    np.testing.assert_allclose(maps[library["name"]][0], lib_map, atol=1e-6)


def test_notebook_05s_measurement_of_the_offset():
    """review.anchoring on the hot-cell model, with a round lesion centred on the hot cell's receptive field: the
    library's peak sits (16 − 1)/2 px down and right of the lesion's centre, the anchored one on it."""
    cell = (2, 5)
    model = HotCell(cell)
    n = 4
    yy, xx = np.mgrid[:SIZE, :SIZE]
    lesion = (yy - 16 * cell[0]) ** 2 + (xx - 16 * cell[1]) ** 2 <= 5 ** 2
    images = np.random.default_rng(0).integers(0, 256, (n, SIZE, SIZE)).astype(np.uint8)
    split = Split("test", images, np.ones(n, int), np.arange(n).astype(str), np.arange(n).astype(str),
                  np.array(["bacteria"] * n), np.arange(n).astype(str), lesion_masks=np.repeat(lesion[None], n, 0))
    checkpoint = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                  "explanation": make_spec("gradcam", "cells", anchor="receptive_field")}
    found = review.anchoring(model, checkpoint, split, np.arange(n), seed=0, n_boot=50, layers=("cells",))
    row = found.geometry.iloc[0]
    assert row["layer"] == "cells" and row["grid"] == "8×8" and row[review.OFFSET_COLUMN] == 7.5
    assert found.n == n and found.moved == (7.5, 7.5)
    assert [e["value"] for e in found.offsets["library"]] == [7.5, 7.5]
    assert [e["value"] for e in found.offsets["receptive_field"]] == [0.0, 0.0]
    assert found.near["receptive_field"] == 1.0 and "7.5 px" in found.sentence


# ----------------------------------------------------------------------------------------- composition
@pytest.mark.parametrize(("offsets", "border"), [((0,), "complete"), ((0, 8), "complete"), ((0, 8), "partial")])
def test_anchoring_composes_with_shift_averaging(offsets, border):
    """The library's shift-averaged map is the anchored one moved (16 − 1)/2 = 7.5 px down-right — the mean of its
    values 7 and 8 px up-left, exactly, since both are piecewise bilinear with corners on whole pixels. So the
    averaging, the border's padding and cropping and the anchoring commute (content away from the edges)."""
    shifts = shift_grid(offsets)
    copy = shifted_size((SIZE, SIZE), shifts, border)
    h = copy[0] // 16
    n = 2
    act = torch.zeros(len(shifts) * n, 3, h, h)
    act[..., 2:h - 3, 2:h - 3] = torch.rand(len(shifts) * n, 3, h - 5, h - 5,
                                             generator=torch.Generator().manual_seed(0))
    grad = torch.ones_like(act)
    lib = cam_steps(act, grad, "gradcam", copy, shifts, border).maps.numpy()
    rf = cam_steps(act, grad, "gradcam", copy, shifts, border, cells=CellGeometry((16, 16), (0, 0))).maps.numpy()
    assert lib.shape == rf.shape == (n, SIZE, SIZE)
    moved = (rf[:, :-8, :-8] + rf[:, 1:-7, :-8] + rf[:, :-8, 1:-7] + rf[:, 1:-7, 1:-7]) / 4
    moved /= moved.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(lib[:, 8:, 8:], moved, atol=1e-5)
    assert np.abs(lib - rf).max() > 0.1  # not the same map


def test_every_map_function_honours_the_anchor():
    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=2).eval()
    images = np.random.default_rng(3).integers(0, 256, (2, 64, 64)).astype(np.uint8)
    meta = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    x = preprocess(torch.from_numpy(images), meta["mean"], meta["std"])
    spec = make_spec("xgradcam", "layer3", (0, 8), anchor="receptive_field")
    with GradCAM(model, "layer3", "xgradcam", cells=receptive_field_geometry(model, "layer3")) as cam:
        ref, _ = cam.shift_averaged(x, 1, shift_grid((0, 8)))
    np.testing.assert_allclose(explain(model, x, spec, 1)[0], ref, atol=1e-6)
    np.testing.assert_allclose(main_maps(model, {**meta, "explanation": spec}, images)[0], ref, atol=1e-6)
    library = explain(model, x, make_spec("xgradcam", "layer3", (0, 8)), 1)[0]
    assert np.abs(library - ref).max() > 0.05  # the anchor is in force


# ----------------------------------------------------------------------------------------- a ViT
def test_anchoring_a_vit_changes_nothing():
    vit, _ = build_vit("none", 2, 64, seed=0)
    vit.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for offsets in ((0,), (0, 8)):
        library = make_spec("gradcam", VIT_GRADCAM_LAYER, offsets)
        anchored = make_spec("gradcam", VIT_GRADCAM_LAYER, offsets, anchor="receptive_field")
        assert cell_geometry(vit, anchored) == library_geometry(token_grid(vit), (64, 64))
        np.testing.assert_allclose(explain(vit, x, anchored, 1)[0], explain(vit, x, library, 1)[0], atol=1e-6)
    assert all(s["anchor"] == "library" for s in VIT_EXPLANATION_CANDIDATES)


# ----------------------------------------------------------------------------------------- the spec
def test_the_anchor_is_part_of_the_spec_and_old_specs_read_as_library():
    anchored = make_spec("gradcam", "layer3", (0, 8), anchor="receptive_field")
    assert anchored["anchor"] == "receptive_field" and anchored["name"].endswith(ANCHOR_NAMES["receptive_field"])
    assert check_spec(dict(anchored)) == anchored
    old = {"name": "Grad-CAM @ layer3", "method": "gradcam", "layer": "layer3", "shifts": [0]}  # recorded before
    assert check_spec(old) == {**old, "anchor": "library"} == make_spec("gradcam", "layer3")
    with pytest.raises(ValueError, match="anchor"):
        make_spec("gradcam", "layer3", anchor="centre")
    with pytest.raises(ValueError, match="anchor"):
        make_spec("rollout", anchor="receptive_field")


def test_the_candidates_pair_every_knob_with_both_anchors():
    names = [s["name"] for s in EXPLANATION_CANDIDATES]
    assert len(set(names)) == len(names)
    knobs = {anchor: {(s["method"], s["layer"], tuple(s["shifts"])) for s in EXPLANATION_CANDIDATES
                      if s["anchor"] == anchor} for anchor in ("library", "receptive_field")}
    assert knobs["library"] == knobs["receptive_field"] and len(knobs["library"]) == len(EXPLANATION_CANDIDATES) // 2
