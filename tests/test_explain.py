"""Shift-averaged Grad-CAM, the native XGradCAM / Grad-CAM++ weightings, and choosing the main explanation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from utils.config import IMAGENET_MEAN, IMAGENET_STD
from utils.explain import checks as cam_eval
from utils.explain.gradcam import GradCAM, average_unshifted, gradcam, shift_averaged_gradcam, shift_grid, shift_images
from utils.explain.localisation import argmax_point, distance_to_mask
from utils.explain.maps import Explainer, candidate_maps, cell_geometry, explain, main_explanation, main_maps
from utils.explain.selection import choose_explanation
from utils.explain.spec import (
    DEMO_EXPLANATION,
    EXPLANATION_CANDIDATES,
    UNMEASURED_EXPLANATION,
    check_spec,
    make_spec,
)
from utils.train.model import preprocess

META = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "threshold": 0.5}
#: A shift-averaged candidate with the library's anchor: what shift_averaged_gradcam computes.
SHIFTED = make_spec("gradcam", "layer3", (0, 8))



@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return resnet18(weights=None, num_classes=2).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


class Tiny(nn.Module):
    """A model whose evidence is known: ``fine`` is the brightness above the mean, pixel by pixel
    (full resolution); ``coarse`` averages it over 8×8 cells (like a deep CNN layer); the PNEUMONIA
    logit is the mean brightness. Grad-CAM on ``fine`` peaks exactly on the bright spot; on ``coarse``
    it can only peak on a cell centre."""

    def __init__(self) -> None:
        super().__init__()
        self.fine = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU())
        self.coarse = nn.AvgPool2d(8)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fine[0].weight.fill_(1 / 3)
            self.fine[0].bias.zero_()
            self.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.fc.bias.copy_(torch.tensor([0.005, -0.005]))  # an all-dark image is NORMAL
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.coarse(self.fine(x)).mean(dim=(2, 3)))


def spots(positions: list[tuple[int, int]], size: int = 32, side: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (dark, one bright ``side``×``side`` spot each) and the spots as lesion masks."""
    imgs = np.zeros((len(positions), size, size), np.uint8)
    masks = np.zeros(imgs.shape, bool)
    for k, (r, c) in enumerate(positions):
        imgs[k, r:r + side, c:c + side] = 255
        masks[k, r:r + side, c:c + side] = True
    return imgs, masks


def to_x(imgs: np.ndarray) -> torch.Tensor:
    from utils.train.model import preprocess
    return preprocess(torch.from_numpy(imgs), META["mean"], META["std"])


def count_forwards(model: nn.Module):
    """Batch sizes of every forward of ``model``, and the pre-hook's handle (the caller removes it)."""
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, inp: sizes.append(inp[0].shape[0]))
    return sizes, handle


def counted_candidate_maps(model: nn.Module, x: torch.Tensor) -> tuple[dict, torch.Tensor, list[int]]:
    """:func:`candidate_maps` of every candidate, and the batch sizes of the forward passes that made them (the
    candidates' cell geometry is measured first — once per model and layer, small stopped passes — so only the passes
    that make maps are counted)."""
    for spec in EXPLANATION_CANDIDATES:
        cell_geometry(model, spec)
    sizes, handle = count_forwards(model)
    try:
        maps, logits, _ = candidate_maps(model, x, EXPLANATION_CANDIDATES, targets=1)
    finally:
        handle.remove()
    return maps, logits, sizes


# ----------------------------------------------------------------------------------------- shifting
def test_shift_grid():
    assert shift_grid((0, 8)) == [(0, 0), (0, 8), (8, 0), (8, 8)]
    assert len(shift_grid((0, 4, 8, 12))) == 16 and shift_grid((8, 0))[0] == (0, 0)
    with pytest.raises(ValueError, match="include 0"):
        shift_grid((4, 8))


def test_shift_images_moves_content_and_replicates_the_border():
    img = torch.arange(2 * 1 * 6 * 7, dtype=torch.float32).view(2, 1, 6, 7)
    out = shift_images(img, [(0, 0), (2, -3)], "partial")  # the size-keeping layout (a ViT's)
    assert out.shape == (4, 1, 6, 7)
    assert torch.equal(out[:2], img)  # shift-major: the unshifted copies first
    moved = out[2:]
    assert torch.equal(moved[:, :, 2:, :4], img[:, :, :4, 3:])  # content moved 2 down, 3 left
    assert torch.equal(moved[:, :, 0], moved[:, :, 2]) and torch.equal(moved[:, :, 1], moved[:, :, 2])  # top: edge row
    assert torch.equal(moved[:, :, :, 4], moved[:, :, :, 3]) and torch.equal(moved[:, :, :, 6], moved[:, :, :, 3])
    assert not torch.equal(moved[:, :, 0, 4:], img[:, :, -2, :3])  # nothing wrapped round from the far side


def test_average_unshifted_inverts_integer_shifts_exactly():
    rng = torch.Generator().manual_seed(3)
    maps = torch.rand(2, 16, 16, generator=rng)
    shifts = [(0, 0), (3, 0), (0, -5), (7, 2)]
    for border in ("partial", "complete"):
        stacked = shift_images(maps[:, None], shifts, border)[:, 0]
        torch.testing.assert_close(average_unshifted(stacked, shifts, border), maps, atol=1e-6, rtol=0)  # equal values
    with pytest.raises(ValueError, match="S×N"):
        average_unshifted(stacked[:-1], shifts)


def test_shift_averaged_equals_plain_for_a_pixelwise_model():
    """On a model whose map moves exactly with the image, shifting back is exact: the average IS the map."""
    model = Tiny()
    imgs = np.random.default_rng(0).integers(0, 256, (3, 32, 32)).astype(np.uint8)  # texture everywhere
    x = to_x(imgs)
    plain, logits_plain = gradcam(model, x, "fine", 1)
    for shifts in ([(0, 0), (3, 5)], [(0, 0), (-2, 7), (5, -1)], shift_grid((0, 4, 8, 12))):
        maps, logits = shift_averaged_gradcam(model, x, "fine", 1, shifts)
        np.testing.assert_allclose(maps, plain, atol=1e-6)
        torch.testing.assert_close(logits, logits_plain)


def test_shift_averaged_on_resnet_shape_range_one_pass(resnet, x):
    sizes, handle = count_forwards(resnet)
    try:
        with GradCAM(resnet, "layer3", "xgradcam") as cam:
            maps, logits = cam.shift_averaged(x, None, shift_grid((0, 8)))
    finally:
        handle.remove()
    assert sizes == [len(x), 4 * len(x)]  # the images' logits, then ONE forward over the stacked (padded) copies
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert np.allclose(maps.reshape(3, -1).max(1), 1)
    with torch.inference_mode():
        torch.testing.assert_close(logits, resnet(x), atol=1e-4, rtol=1e-4)  # the unshifted copies' logits
    assert not any(m._forward_hooks for m in resnet.modules())
    with pytest.raises(ValueError, match=r"\(0, 0\)"):
        shift_averaged_gradcam(resnet, x, "layer3", None, [(4, 4)])


def test_shift_averaging_refines_a_coarse_grid():
    """A coarse (8×8-cell) map peaks on cell centres; averaged over 4-px shifts its peak gets closer."""
    model = Tiny()
    rng = np.random.default_rng(5)
    pos = [tuple(int(v) for v in rng.integers(2, 28, 2)) for _ in range(12)]
    imgs, masks = spots(pos)
    x = to_x(imgs)
    plain, _ = gradcam(model, x, "coarse", 1)
    avg, _ = shift_averaged_gradcam(model, x, "coarse", 1, shift_grid((0, 4)))
    d_plain = np.mean([distance_to_mask(argmax_point(m), k) for m, k in zip(plain, masks)])
    d_avg = np.mean([distance_to_mask(argmax_point(m), k) for m, k in zip(avg, masks)])
    assert d_avg < d_plain - 0.5, (d_plain, d_avg)


# ----------------------------------------------------------------------------------------- weightings
@pytest.mark.parametrize("method", ["XGradCAM", "GradCAM++"])
@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_native_weightings_match_pytorch_grad_cam(resnet, x, method, layer):
    assert cam_eval.oracle_difference(resnet, x, layer, [0, 1, 1], method=method) < 1e-4


def test_unknown_weighting_is_rejected(resnet):
    with pytest.raises(ValueError, match="weighting"):
        GradCAM(resnet, "layer3", "scorecam")


# ----------------------------------------------------------------------------------------- specs
def test_specs_validate_and_round_trip():
    spec = make_spec("xgradcam", "layer3", (8, 0))
    assert spec == {"name": "shift-averaged XGradCAM @ layer3 (4 shifts)", "method": "xgradcam",
                    "layer": "layer3", "shifts": [0, 8], "anchor": "library"}
    assert check_spec(dict(spec)) == spec and DEMO_EXPLANATION in EXPLANATION_CANDIDATES
    assert make_spec("gradcam", "layer4")["name"] == "Grad-CAM @ layer4"
    for bad in (dict(method="lime"), dict(shifts=(4, 8)), dict(layer="")):
        with pytest.raises(ValueError):
            make_spec(**{"method": "gradcam", "layer": "layer3", **bad})
    with pytest.raises(ValueError):
        check_spec({"method": "gradcam"})


def test_main_explanation_is_the_recorded_one_or_an_unmeasured_default(resnet):
    chosen = make_spec("xgradcam", "layer3", (0, 8))
    assert main_explanation({"gradcam_layer": "layer3", "explanation": chosen}) == chosen
    assert main_explanation({"explanation": chosen}, resnet) == chosen  # checked against the model: it fits
    assert main_explanation({"explanation": chosen}, layer="layer3") == make_spec("gradcam", "layer3")  # --layer wins
    assert main_explanation({}) == UNMEASURED_EXPLANATION == make_spec("gradcam", "layer4")
    assert main_explanation({"explanation": chosen}, layer="layer2.1") == make_spec("gradcam", "layer2.1")


def test_main_maps_is_explain_of_the_main_explanation(resnet):
    images = np.random.default_rng(4).integers(0, 256, (3, 64, 64)).astype(np.uint8)
    meta = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "explanation": make_spec("gradcam", "layer3")}
    maps, probs = main_maps(resnet, meta, images, targets=1)
    x = preprocess(torch.from_numpy(images), meta["mean"], meta["std"])
    ref, logits = explain(resnet, x, meta["explanation"], targets=1)
    np.testing.assert_allclose(maps, ref, atol=1e-6)
    np.testing.assert_allclose(probs, torch.softmax(logits, 1)[:, 1].numpy(), atol=1e-6)


def test_explainer_and_explain_match_the_functions(resnet, x):
    spec = SHIFTED
    ref, ref_logits = shift_averaged_gradcam(resnet, x, spec["layer"], 1, shift_grid(spec["shifts"]), spec["method"])
    with Explainer(resnet, spec) as ex:
        maps, logits = ex(x, 1)
    np.testing.assert_allclose(maps, ref, atol=1e-6)
    chunked, chunk_logits = explain(resnet, x, spec, targets=[1, 1, 1], batch_size=4)  # one image per pass
    np.testing.assert_allclose(chunked, ref, atol=1e-5)
    torch.testing.assert_close(chunk_logits, ref_logits, atol=1e-4, rtol=1e-4)
    plain, _ = explain(resnet, x, make_spec("gradcam", "layer4"), targets=1)
    np.testing.assert_allclose(plain, gradcam(resnet, x, "layer4", 1)[0], atol=1e-6)
    assert not any(m._forward_hooks for m in resnet.modules())


def test_candidate_maps_share_one_pass_with_the_partial_border(resnet, x, monkeypatch):
    """With "partial" (a ViT's layout) every shift set's unshifted copy is the image: one pass serves them all."""
    from utils.explain import gradcam as gradcam_module

    monkeypatch.setattr(gradcam_module, "SHIFT_BORDER", "partial")
    maps, logits, sizes = counted_candidate_maps(resnet, x)
    n_copies = max(len(s["shifts"]) for s in EXPLANATION_CANDIDATES) ** 2
    assert sizes == [n_copies * len(x)]  # layer3 and layer4 candidates from one pass
    for spec in EXPLANATION_CANDIDATES:
        alone, _ = explain(resnet, x, spec, targets=1)
        np.testing.assert_allclose(maps[spec["name"]], alone, atol=1e-5, err_msg=spec["name"])
    assert not any(m._forward_hooks for m in resnet.modules())


def test_candidate_maps_match_separate_calls_with_the_complete_border(resnet, x, monkeypatch):
    """With "complete" every copy is padded for its whole shift set, so the unshifted copy of a shared pass is not
    the image: candidates are computed one shift set per pass, and each still equals explain()'s maps."""
    from utils.explain import gradcam as gradcam_module

    monkeypatch.setattr(gradcam_module, "SHIFT_BORDER", "complete")
    maps, logits, sizes = counted_candidate_maps(resnet, x)
    shifted = max(len(s["shifts"]) for s in EXPLANATION_CANDIDATES) ** 2
    assert sorted(sizes) == sorted([len(x), shifted * len(x), len(x)])  # plain pass; shifted pass + its logits pass
    for spec in EXPLANATION_CANDIDATES:
        alone, _ = explain(resnet, x, spec, targets=1)
        np.testing.assert_allclose(maps[spec["name"]], alone, atol=1e-5, err_msg=spec["name"])
    torch.testing.assert_close(logits, resnet(x).detach(), atol=1e-4, rtol=1e-4)
    monkeypatch.setattr(gradcam_module, "SHIFT_BORDER", "partial")
    for spec in (s for s in EXPLANATION_CANDIDATES if len(s["shifts"]) > 1):
        partial, _ = explain(resnet, x, spec, targets=1)
        assert np.abs(partial - maps[spec["name"]]).max() > 1e-3, spec["name"]  # the border setting is in force


# ----------------------------------------------------------------------------------------- choosing
def test_choose_explanation_picks_the_best_from_the_data_passed(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("choose_explanation must use only the arrays it is given")

    monkeypatch.setattr("utils.data.load_data", boom)
    monkeypatch.setattr("utils.config.get_config", boom)
    model = Tiny()
    rng = np.random.default_rng(7)
    pos = [tuple(int(v) for v in rng.integers(2, 28, 2)) for _ in range(10)]
    imgs, masks = spots(pos)
    labels = np.ones(len(pos), np.int64)
    # a missed pneumonia (dark image, lesion mask but no visible spot) and a NORMAL image: never scored
    imgs = np.concatenate([imgs, np.zeros((1, 32, 32), np.uint8), spots([(5, 5)])[0]])
    masks = np.concatenate([masks, spots([(9, 9)])[1], spots([(5, 5)])[1]])
    labels = np.r_[labels, 1, 0]
    coarse, fine = make_spec("gradcam", "coarse"), make_spec("gradcam", "fine")
    best, table = choose_explanation(model, imgs, masks, labels, META, [coarse, fine])
    assert best == fine  # listed second, chosen for its near-pointing
    top = table.iloc[0]
    assert top["method"] == fine["name"] and top["near"] == 1.0 and top["pointing"] == 1.0
    assert table.loc[table["method"] == coarse["name"], "near"].item() < 1.0
    assert set(table["n"]) == {10}  # the 10 true positives of the arrays passed in
    assert table["baseline"].tolist() == [False, False, True, True]  # centre prior and random maps
    # other masks, other scores: the lesion masks passed are the ones used
    _, shuffled = choose_explanation(model, imgs, np.roll(masks, 1, axis=0), labels, META, [coarse, fine])
    assert shuffled.loc[shuffled["method"] == fine["name"], "near"].item() < 0.5


def test_choose_explanation_ties_and_errors():
    model = Tiny()
    imgs, masks = spots([(4, 4), (20, 12)])
    a, b = make_spec("gradcam", "fine"), make_spec("xgradcam", "fine")  # identical maps on this model
    best, _ = choose_explanation(model, imgs, masks, np.ones(2, np.int64), META, [b, a])
    assert best == b  # a tie keeps the earlier candidate
    with pytest.raises(ValueError, match="no true positive"):
        choose_explanation(model, np.zeros_like(imgs), masks, np.ones(2, np.int64), META, [a])
    with pytest.raises(ValueError, match="lesion masks"):
        choose_explanation(model, imgs, None, np.ones(2, np.int64), META, [a])
    with pytest.raises(ValueError, match="unique"):
        choose_explanation(model, imgs, masks, np.ones(2, np.int64), META, [a, a])


def test_predict_uses_the_checkpoint_explanation_in_one_pass(resnet, tmp_path, monkeypatch):
    """The inference command shows the explanation notebook 05 wrote into the checkpoint, in ONE batched pass."""
    from PIL import Image

    from utils.checkpoint import make_meta
    from utils.data.images import read_image
    from utils.deploy import predict
    from utils.train.model import preprocess

    spec = make_spec("gradcam", "layer3", (0, 8), anchor="receptive_field")  # a shifted, anchored recorded choice
    png = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (80, 80)).astype(np.uint8)).save(png)
    meta = make_meta(image_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD, threshold=0.5,
                     threshold_rule="test rule", gradcam_layer="layer3", explanation=spec)
    seen = {}
    cell_geometry(resnet, spec)  # measured once per model and layer: not a pass of the image
    monkeypatch.setattr(predict, "save_overlay_figure", lambda out, gray, cam_map, **kw: seen.update(cam=cam_map))
    sizes, handle = count_forwards(resnet)
    try:
        results, failures = predict.predict_images(resnet, meta, [png], overlays={png: tmp_path / "o.png"})
    finally:
        handle.remove()
    assert not failures and results[0]["layer"] == "layer3"
    assert results[0]["explanation"] == spec["name"]
    assert sizes == [1, 4]  # the image's logits, then its 4 shifted (padded) copies in one forward
    x = preprocess(torch.from_numpy(read_image(png, 64))[None], meta["mean"], meta["std"])
    expected, logits = explain(resnet, x, spec, targets=1)
    np.testing.assert_allclose(seen["cam"], expected[0], atol=1e-5)
    assert results[0]["probability"] == pytest.approx(float(torch.softmax(logits, 1)[0, 1]), abs=1e-5)


def test_without_shifts_keeps_method_layer_and_anchor_and_leaves_other_specs_alone():
    from utils.explain.spec import make_spec, without_shifts
    shifted = make_spec("gradcam++", "layer3", (0, 8), anchor="receptive_field")
    plain = without_shifts(shifted)
    assert plain == make_spec("gradcam++", "layer3", (0,), anchor="receptive_field") and plain["shifts"] == [0]
    rollout = make_spec("rollout", "blocks")
    assert without_shifts(rollout) == rollout
    attribution = {"name": "saliency", "method": "saliency", "params": {}}
    assert without_shifts(attribution) == attribution
