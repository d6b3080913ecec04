"""Pixel attribution (utils.explain.attribution): each method on toy models whose answer is known, IG completeness
against the quadrature error its step count implies, occlusion's window geometry, parameter choice, stability and
one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from utils.config import IMAGENET_MEAN, IMAGENET_STD
from utils.errors import UserError
from utils.explain import attribution as A
from utils.explain.spec import make_spec
from utils.train.model import preprocess

META = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "threshold": 0.5}
S = 16
PIXEL = (5, 9)


def gray_of(x: torch.Tensor) -> torch.Tensor:
    """The raw grey image in [0, 1] inside a preprocessed batch (what the toy models compute on)."""
    return x[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]


class PixelReader(nn.Module):
    """The PNEUMONIA logit is ``weight`` × the grey value of ONE pixel (the NORMAL logit its negative): every
    faithful attribution puts all its mass on that pixel."""

    def __init__(self, pixel: tuple[int, int] = PIXEL, weight: float = 4.0) -> None:
        super().__init__()
        self.pixel, self.weight = pixel, weight
        self.dummy = nn.Parameter(torch.zeros(()))  # a device for the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.weight * gray_of(x)[:, self.pixel[0], self.pixel[1]] + self.dummy
        return torch.stack([-v, v], dim=1)


class MeanPower(nn.Module):
    """PNEUMONIA logit = (mean grey)^k: along IG's straight path from black, the integrand is a polynomial of
    degree k - 1 in the path parameter, so the quadrature error of a given step count is known exactly."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = gray_of(x).double().mean(dim=(1, 2)) ** self.k + self.dummy
        return torch.stack([-v, v], dim=1).float()


class SpotModel(nn.Module):
    """Counts bright pixels: PNEUMONIA logit = 20 × Σ ReLU(grey − 0.5) − 1 (a dark image is NORMAL)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = 20 * torch.relu(gray_of(x) - 0.5).sum(dim=(1, 2)) - 1 + self.dummy
        return torch.stack([-v, v], dim=1)


class TinyCNN(nn.Module):
    """A small convolutional classifier with a named feature layer (for the Grad-CAM oracle and the explorer)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1),
                                      nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 2)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def images(n: int = 3, size: int = S, seed: int = 0) -> np.ndarray:
    """Random uint8 images with the read pixel bright (so IG / occlusion from black have something to remove)."""
    imgs = np.random.default_rng(seed).integers(0, 200, (n, size, size), dtype=np.uint8)
    imgs[:, PIXEL[0], PIXEL[1]] = 230
    return imgs


def batch(imgs: np.ndarray) -> torch.Tensor:
    return preprocess(torch.from_numpy(imgs), META["mean"], META["std"])


def argmaxes(maps: np.ndarray) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in np.unravel_index(int(np.argmax(m)), m.shape)) for m in maps]


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------------------ the known answer
@pytest.mark.parametrize("spec", [
    A.make_attribution_spec("saliency"),
    A.make_attribution_spec("smoothgrad", noise=0.2, samples=4),
    A.make_attribution_spec("integrated_gradients", steps=4),
    A.make_attribution_spec("integrated_gradients", steps=4, baseline="blurred", blur=1.0),
    A.make_attribution_spec("occlusion", window=3, stride=1),
], ids=lambda s: s["method"] + "-" + str(s["params"].get("baseline", "")))
def test_every_method_puts_its_maximum_on_the_pixel_the_model_reads(spec):
    x = batch(images())
    maps, probs, seconds = A.method_maps(PixelReader(), x, [spec], meta=META)
    m = maps[spec["name"]]
    assert m.shape == (3, S, S) and m.dtype == np.float32
    assert m.min() >= 0 and np.allclose(m.max(axis=(1, 2)), 1.0)
    assert argmaxes(m) == [PIXEL] * 3
    if spec["method"] != "occlusion":  # a gradient of a one-pixel function lives on that pixel only
        outside = m.copy()
        outside[:, PIXEL[0], PIXEL[1]] = 0
        assert outside.max() == 0
    assert seconds[spec["name"]] > 0
    gray = x[:, 0, PIXEL[0], PIXEL[1]] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    np.testing.assert_allclose(probs, torch.softmax(torch.stack([-4 * gray, 4 * gray], 1), 1)[:, 1].numpy(), rtol=1e-5)


def test_signs_are_stated_per_method_and_applied_by_the_one_adapter():
    assert {k: m.sign for k, m in A.METHODS.items()} == {
        "saliency": "absolute", "smoothgrad": "absolute", "integrated_gradients": "positive", "occlusion": "positive"}
    x = batch(images(2))
    against = PixelReader(weight=-4.0)  # the pixel is evidence AGAINST pneumonia
    for sign, expect_zero in (("absolute", False), ("positive", True), ("negative", False)):
        spec = A.make_attribution_spec("integrated_gradients", steps=4, sign=sign)
        m = A.attribution_maps(against, x, spec, mean=META["mean"], std=META["std"])
        assert (m.max() == 0) == expect_zero, sign
        if not expect_zero:
            assert argmaxes(m) == [PIXEL] * 2


def test_adapter_sums_channels_scales_by_the_maximum_and_keeps_zero_maps_zero():
    a = np.zeros((3, 2, 4, 4), np.float32)
    a[0, 0, 1, 1], a[0, 1, 1, 1] = 1.0, 2.0  # channels add up: 3 at (1, 1)
    a[0, 0, 2, 2] = -6.0
    a[1, :, 0, 0] = 0.5
    m = A.to_maps(a, "positive")
    assert m.dtype == np.float32 and m.shape == (3, 4, 4)
    assert m[0, 1, 1] == 1.0 and m[0, 2, 2] == 0.0
    assert A.to_maps(a, "absolute")[0, 1, 1] == pytest.approx(0.5)  # |-6| is the maximum
    assert m[1, 0, 0] == 1.0 and np.count_nonzero(m[1]) == 1
    assert not m[2].any()  # nothing attributed: stays zero, no NaN
    smooth = A.to_maps(a, "positive", smooth_px=1.0)
    assert smooth[0].max() == 1.0 and np.count_nonzero(smooth[0]) > 1  # the post-smoothing spreads the mass
    with pytest.raises(ValueError):
        A.to_maps(np.full((1, 4, 4), np.nan), "absolute")


# ------------------------------------------------------------------------------------------------ IG completeness
def _mean_gray(x: torch.Tensor) -> np.ndarray:
    return gray_of(x).double().mean(dim=(1, 2)).numpy()


@pytest.mark.parametrize("steps", [3, 4, 8])
def test_ig_is_exact_when_gauss_legendre_integrates_the_path_polynomial(steps):
    """k = 6: the integrand has degree 5; Gauss–Legendre with n nodes is exact up to degree 2n − 1, so n ≥ 3 leaves
    only rounding: the attributions add up to f(x) − f(black)."""
    x = batch(images(3))
    att = A.raw_attributions(MeanPower(6), x, A.make_attribution_spec("integrated_gradients", steps=steps), targets=1)
    assert att.values.shape == (3, 1, S, S) and att.delta is not None
    gain = _mean_gray(x) ** 6  # f(x) - f(black), computed here without Captum
    np.testing.assert_allclose(att.values.reshape(3, -1).sum(axis=1), gain, rtol=1e-4)
    assert np.abs(att.delta).max() <= 1e-4 * gain.max()


def test_ig_shortfall_is_the_gauss_legendre_error_below_that_step_count():
    """With 2 nodes (exact to degree 3) the degree-5 integrand leaves a known error: the quadrature of 6 α^5 on
    [0, 1] at the 2-point nodes, minus 1, times f(x)."""
    x = batch(images(3))
    att = A.raw_attributions(MeanPower(6), x, A.make_attribution_spec("integrated_gradients", steps=2), targets=1)
    nodes = 0.5 + np.array([-0.5, 0.5]) / np.sqrt(3)
    rel_error = 0.5 * (6 * nodes ** 5).sum() - 1.0  # quadrature / exact - 1 (about -0.0278)
    gain = _mean_gray(x) ** 6
    np.testing.assert_allclose(att.delta, rel_error * gain, rtol=1e-3)


@pytest.mark.parametrize("steps", [4, 8, 16])
def test_ig_midpoint_shortfall_matches_its_error_formula(steps):
    """k = 3 along the path from black: f(α) = α³ v³, the integrand h(α) = 3 α² v³ has h'' = 6 v³ everywhere, so the
    midpoint rule with n steps (width 1/n) falls short by exactly h'' / (24 n²) = v³ / (4 n²)."""
    x = batch(images(3))
    spec = A.make_attribution_spec("integrated_gradients", steps=steps, rule="riemann_middle")
    att = A.raw_attributions(MeanPower(3), x, spec, targets=1)
    v = _mean_gray(x)
    expected = -v ** 3 / (4 * steps ** 2)
    np.testing.assert_allclose(att.delta, expected, rtol=1e-3)
    np.testing.assert_allclose(att.values.reshape(3, -1).sum(axis=1), v ** 3 + expected, rtol=1e-4)
    with pytest.raises(UserError):
        A.make_attribution_spec("integrated_gradients", rule="riemann_trapezoid")


def test_ig_with_the_image_as_its_own_baseline_attributes_nothing():
    imgs = images(2)
    x = batch(imgs)
    spec = A.make_attribution_spec("integrated_gradients", steps=4, baseline="mean")
    att = A.raw_attributions(TinyCNN(), x, spec, targets=1, mean_image=imgs)  # one baseline per image: the image
    assert np.abs(att.values).max() < 1e-6


# ------------------------------------------------------------------------------------------------ occlusion geometry
def test_occlusion_windows_tile_the_side():
    assert A.occlusion_windows(16, 4, 4) == (4, 4, [0, 4, 8, 12])
    assert A.occlusion_windows(16, 4, 2) == (4, 2, [0, 2, 4, 6, 8, 10, 12])
    assert A.occlusion_windows(64)[:2] == (8, 4)  # default: side / 8, half-window stride
    k, s, origins = A.occlusion_windows(100)  # 100 - 12 = 88: the largest stride <= 6 dividing it is 4
    assert (k, s) == (12, 4) and origins[-1] + k == 100
    with pytest.raises(UserError) as e:
        A.occlusion_windows(16, 5, 2)  # 11 px left of a 5 px window: stride 2 leaves the last pixel uncovered
    assert "use one of [1]" in one_line(e)  # only stride 1 divides the 11 px a 5 px window leaves
    with pytest.raises(UserError):
        A.occlusion_windows(16, 20)


def expected_occlusion(size: int, window: int, stride: int, pixel: tuple[int, int]) -> np.ndarray:
    """Each pixel's share of the covering windows that also cover ``pixel`` (the read pixel's drop is the same for
    every window that hides it, so the normalised map is this share)."""
    origins = range(0, size - window + 1, stride)
    covers = np.zeros((size, size))
    hits = np.zeros((size, size))
    for r in origins:
        for c in origins:
            covers[r:r + window, c:c + window] += 1
            if r <= pixel[0] < r + window and c <= pixel[1] < c + window:
                hits[r:r + window, c:c + window] += 1
    return hits / covers


@pytest.mark.parametrize("window,stride", [(4, 4), (4, 2), (6, 2), (3, 1)])
def test_occlusion_map_is_the_share_of_windows_hiding_the_read_pixel(window, stride):
    x = batch(images(2))
    spec = A.make_attribution_spec("occlusion", window=window, stride=stride)
    m = A.attribution_maps(PixelReader(), x, spec, mean=META["mean"], std=META["std"])
    expect = expected_occlusion(S, window, stride, PIXEL)
    np.testing.assert_allclose(m, np.broadcast_to(expect / expect.max(), m.shape), atol=1e-5)
    if window == stride:  # non-overlapping windows: the map is constant on stride × stride cells (its resolution)
        cell = m[0, 4:8, 8:12]
        assert np.all(cell == 1.0) and m[0].sum() == window * stride


# ------------------------------------------------------------------------------------------------ one-line errors
def test_bad_inputs_give_one_line_errors():
    x = batch(images(2))
    with pytest.raises(UserError) as e:
        A.make_attribution_spec("gradients")
    assert "saliency" in one_line(e) and "gradcam" in one_line(e)
    with pytest.raises(UserError) as e:
        A.method_maps(TinyCNN(), x, [{"name": "bad", "method": "deconvolution", "params": {}}], meta=META)
    assert "deconvolution" in one_line(e)
    with pytest.raises(UserError) as e:
        A.method_maps(TinyCNN(), x, [make_spec("gradcam", "layer9")], meta=META)
    assert "layer9" in one_line(e) and "features" in one_line(e)
    with pytest.raises(UserError) as e:
        A.captum_gradcam_difference(TinyCNN(), x, "layer9")
    assert "layer9" in one_line(e)
    ig_mean = A.make_attribution_spec("integrated_gradients", baseline="mean")
    with pytest.raises(UserError) as e:
        A.method_maps(TinyCNN(), x, [ig_mean], meta=META, mean_image=np.zeros((8, 8), np.float32))
    assert "(8, 8)" in one_line(e) and "dataset_mean_image" in one_line(e)
    with pytest.raises(UserError) as e:
        A.method_maps(TinyCNN(), x, [ig_mean], meta=META)
    assert "mean_image" in one_line(e)
    with pytest.raises(UserError) as e:
        A.make_attribution_spec("integrated_gradients", baseline="white")
    assert "black, blurred, mean" in one_line(e)
    with pytest.raises(UserError) as e:
        A.make_attribution_spec("smoothgrad", sigma=0.1)
    assert "noise" in one_line(e)
    with pytest.raises(UserError) as e:
        A.method_maps(TinyCNN(), x, [A.make_attribution_spec("occlusion", window=5, stride=2)], meta=META)
    assert "stride" in one_line(e)
    with pytest.raises(UserError) as e:  # the channels do not decode to one grey image with this mean/std
        A.method_maps(TinyCNN(), torch.randn(2, 3, S, S, generator=torch.Generator().manual_seed(0)),
                      [A.make_attribution_spec("saliency")], meta=META)
    assert "mean/std" in one_line(e)
    with pytest.raises(UserError) as e:
        A.parameter_grid(32, fills=("grey",))
    assert "grey" in one_line(e) and "black, blurred, mean" in one_line(e)
    with pytest.raises(UserError) as e:
        A.parameter_grid(32, fills=("mean",))
    assert "with_mean" in one_line(e)


def test_occlusion_grid_crosses_windows_with_fills_cheapest_window_first():
    grid = A.parameter_grid(32, with_mean=True, window_fractions=(8, 4), fills=("black", "mean"))
    got = [(s["params"]["window"], s["params"]["stride"], s["params"]["baseline"]) for s in grid["occlusion"]]
    assert got == [(8, 4, "black"), (8, 4, "mean"), (4, 2, "black"), (4, 2, "mean")]


def test_specs_are_plain_json_and_round_trip():
    import json

    spec = A.make_attribution_spec("smoothgrad", noise=0.1, samples=8)
    assert json.loads(json.dumps(spec)) == spec
    assert A.check_attribution_spec(json.loads(json.dumps(spec))) == spec
    assert spec["params"]["sign"] == "absolute" and spec["params"]["smooth_px"] == 0.0
    assert A.is_attribution_spec(spec) and not A.is_attribution_spec(make_spec("gradcam", "layer4"))
    names = {s["name"] for specs in A.parameter_grid(128).values() for s in specs}
    assert len(names) == sum(len(v) for v in A.parameter_grid(128).values())  # unique names in the grid


# ------------------------------------------------------------------------------------------------ oracle, batching
def test_hand_written_gradcam_matches_captum_layergradcam():
    x = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    assert A.captum_gradcam_difference(TinyCNN(), x, "features", targets=1) < 1e-5


def test_method_maps_puts_gradcam_next_to_attribution_and_batch_size_does_not_change_maps():
    x = batch(images(5, size=24, seed=3))
    specs = [make_spec("gradcam", "features"), A.make_attribution_spec("saliency"),
             A.make_attribution_spec("smoothgrad", samples=4), A.make_attribution_spec("occlusion", window=6, stride=3)]
    big, probs, _ = A.method_maps(TinyCNN(), x, specs, meta=META, batch_size=64)
    small, _, _ = A.method_maps(TinyCNN(), x, [s for s in specs if s["method"] != "smoothgrad"], meta=META,
                                batch_size=2)
    assert set(big) == {s["name"] for s in specs}
    for name, m in small.items():
        np.testing.assert_allclose(m, big[name], atol=1e-5)
    with torch.inference_mode():
        np.testing.assert_allclose(probs, torch.softmax(TinyCNN()(x), 1)[:, 1].numpy(), rtol=1e-5)
    cam_fn = A.cam_fn_for(specs[1], META)
    np.testing.assert_allclose(cam_fn(TinyCNN(), x, "ignored", 1), big[specs[1]["name"]])
    model = TinyCNN()
    with torch.inference_mode():  # as in a notebook's prediction cell: gradients are still taken
        again, _, _ = A.method_maps(model, batch(images(5, size=24, seed=3)), specs, meta=META)
    for name, m in again.items():
        np.testing.assert_allclose(m, big[name], atol=1e-6)


# ------------------------------------------------------------------------------------------------ choosing on validation
def spot_data(size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dark images, half of them with a bright 3×3 'lesion' (mask = the spot); labels 1 for those."""
    spots = [(10, 20), (4, 5), (22, 12), (15, 25)]
    imgs = np.full((2 * len(spots), size, size), 25, np.uint8)
    masks = np.zeros(imgs.shape, bool)
    labels = np.zeros(len(imgs), int)
    for i, (r, c) in enumerate(spots):
        imgs[i, r:r + 3, c:c + 3] = 230
        masks[i, r:r + 3, c:c + 3] = True
        labels[i] = 1
    return imgs, masks, labels


def test_choose_parameters_prefers_the_window_that_localises_and_never_takes_test():
    imgs, masks, labels = spot_data()
    coarse = A.make_attribution_spec("occlusion", window=16, stride=8)  # the maximum spreads over a 16 px block
    fine = A.make_attribution_spec("occlusion", window=4, stride=2)
    grid = {"occlusion": [coarse, fine], "saliency": [A.make_attribution_spec("saliency")]}
    chosen, table = A.choose_parameters(SpotModel(), imgs, masks, labels, META, grid=grid)
    assert chosen["occlusion"] == fine and chosen["saliency"]["method"] == "saliency"
    rows = table.set_index("method")
    assert rows.loc[fine["name"], "near"] == 1.0 and rows.loc[coarse["name"], "near"] < 1.0
    assert rows.loc[fine["name"], "rank"] == 1 and rows.loc[coarse["name"], "rank"] == 2
    assert table["chosen"].sum() == 2 and table.attrs["n_true_positives"] == 4
    assert table["baseline"].any()  # the image-blind baselines sit in the same table
    with pytest.raises(UserError) as e:
        A.choose_parameters(SpotModel(), imgs, masks, labels, META, grid=grid, split="test")
    assert "validation" in one_line(e)


# ------------------------------------------------------------------------------------------------ stability
def test_stability_counts_flipped_decisions_and_scores_only_the_others():
    imgs = images(4)
    imgs[:, PIXEL[0], PIXEL[1]] = [40, 120, 200, 250]
    x = batch(imgs)
    model = PixelReader(weight=1.0)
    x2 = A.perturb(x, "gamma", 0.5)  # darkens every mid-grey pixel: the read pixel's probability falls
    p1, p2 = (torch.softmax(model(v), 1)[:, 1].detach().numpy() for v in (x, x2))
    assert np.all(p2 <= p1)
    threshold = float((p1[1] + p2[1]) / 2)  # exactly image 1 straddles it
    expected_flips = int(np.sum((p1 >= threshold) != (p2 >= threshold)))
    cam_fn = A.cam_fn_for(A.make_attribution_spec("integrated_gradients", steps=4), META)
    out = A.map_stability(model, x, cam_fn, META, kind="gamma", level=0.5, threshold=threshold)
    assert expected_flips == 1 and out["n_flipped"] == 1 and out["n_kept"] == 3 and len(out["rho"]) == 3
    assert np.all(out["rho"] == 1.0)  # the map is that one pixel before and after
    same = A.map_stability(model, x, cam_fn, META, kind="noise", level=0.0, threshold=threshold)
    assert same["n_flipped"] == 0 and same["max_abs_dprob"] < 1e-6
    shared = A.map_stability(model, x, cam_fn, META, kind="gamma", level=0.5, threshold=threshold,
                             maps=cam_fn(model, x, None, 1))  # the maps of x from one shared pass: same answer
    np.testing.assert_array_equal(shared["rho"], out["rho"])
    with pytest.raises(UserError) as e:
        A.map_stability(model, x, cam_fn, META, maps=np.zeros((2, S, S)))
    assert "do not match" in one_line(e)


def test_noise_perturbation_is_seeded_and_stays_an_8_bit_image():
    x = batch(images(2))
    a, b = A.perturb(x, "noise", 0.05, seed=1), A.perturb(x, "noise", 0.05, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, A.perturb(x, "noise", 0.05, seed=2))
    gray = (A.gray_input(a) * 255).numpy()
    np.testing.assert_allclose(gray, np.round(gray), atol=1e-3)
    with pytest.raises(UserError):
        A.perturb(x, "blur")
