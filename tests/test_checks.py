"""utils.explain.checks: oracle equality with pytorch_grad_cam, the randomisation sanity check, ROAD, method
comparison, and a smoke test of the CAM figures."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torchvision.models import resnet18

from utils.explain import checks as cam_eval
from utils.explain.gradcam import GradCAM, gradcam
from utils.explain.localisation import localisation_table
from utils.explain.road import linear_impute
from utils.viz import cams as cam_plots


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return resnet18(weights=None, num_classes=2).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def fingerprint(model: nn.Module) -> tuple:
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [p.grad is None for p in model.parameters()], hooks,
            {k: v.clone() for k, v in model.state_dict().items()})


def assert_untouched(model: nn.Module, before: tuple) -> None:
    after = fingerprint(model)
    assert after[:4] == before[:4]
    assert all(torch.equal(after[4][k], v) for k, v in before[4].items())


@pytest.mark.parametrize(("layer", "targets"), [("layer3", None), ("layer4", [0, 1, 1, 0])])
def test_oracle_matches_pytorch_grad_cam(model, x, layer, targets):
    before = fingerprint(model)
    assert cam_eval.oracle_difference(model, x, layer, targets) < 1e-4
    assert_untouched(model, before)


def test_cascading_randomisation_changes_maps(model, x):
    before = fingerprint(model)
    df = cam_eval.cascading_randomisation(model, x, None, "layer3", order=("fc", "layer4"), seed=0)
    assert_untouched(model, before)  # worked on a copy
    assert list(df["blocks"]) == ["none (trained)", "fc", "fc+layer4"]
    assert df["maps"].iloc[0].shape == (4, 64, 64)
    np.testing.assert_allclose(df["maps"].iloc[0], gradcam(model, x, "layer3")[0], atol=1e-6)
    assert df["spearman"].iloc[0] == 1.0
    assert df["spearman"].iloc[2] < 0.5, df[["blocks", "spearman"]]
    again = cam_eval.cascading_randomisation(model, x, None, "layer3", order=("fc", "layer4"), seed=0)
    np.testing.assert_allclose(again["spearman"], df["spearman"])  # seeded


def test_randomisation_reaches_the_stem_including_batchnorm_statistics(model, x):
    df = cam_eval.cascading_randomisation(model, x[:2], 1, "layer3", seed=0)
    assert list(df["randomised"]) == ["", *cam_eval.RANDOMISATION_ORDER] and df["randomised"].iloc[-1] == "stem"
    assert {"rho", "abs_spearman", "q25", "q75"} <= set(df.columns) and len(df["rho"].iloc[1]) == 2
    work = __import__("copy").deepcopy(model)
    work.bn1.running_mean.fill_(3.0)
    cam_eval._reset_block(work, "stem")
    assert torch.equal(work.bn1.running_mean, torch.zeros_like(work.bn1.running_mean))  # statistics reset too
    assert not torch.equal(work.conv1.weight, model.conv1.weight)


def _table(abs_rho: list[float]):
    import pandas as pd

    names = ["", *cam_eval.RANDOMISATION_ORDER]
    return pd.DataFrame({"step": range(len(names)), "randomised": names,
                         "abs_spearman": [1.0, *abs_rho], "rho": [np.ones(16)] * len(names)})


def test_sanity_rule_is_on_the_absolute_correlation():
    assert cam_eval.sanity_verdict(_table([0.9, 0.3, 0.2, 0.1, 0.1, 0.05]))["passes"]
    # an inverted map (rho = -0.8, |rho| = 0.8) reproduces the image's structure: it fails like rho = +0.8
    assert not cam_eval.sanity_verdict(_table([0.9, 0.8, 0.2, 0.1, 0.1, 0.05]))["passes"]
    # a map that recovers its structure when a lower block is randomised fails too
    v = cam_eval.sanity_verdict(_table([0.9, 0.3, 0.2, 0.6, 0.1, 0.05]))
    assert not v["passes"] and v["worst_after"] == 0.6 and v["n_images"] == 16
    assert cam_eval.sanity_verdict(_table([0.9, 0.3, 0.2, 0.1, 0.1, 0.05]), after="fc")["passes"] is False
    with pytest.raises(ValueError, match="not one of the randomised blocks"):
        cam_eval.sanity_verdict(_table([0.1] * 6), after="layer9")


def test_spearman_maps_flat_cases():
    a = np.random.default_rng(0).random((3, 5, 5))
    flat = np.zeros((3, 5, 5))
    np.testing.assert_allclose(cam_eval.spearman_maps(a, a), 1.0)
    np.testing.assert_allclose(cam_eval.spearman_maps(a, flat), 0.0)
    assert np.isnan(cam_eval.spearman_maps(flat, flat)).all()


class RegionModel(nn.Module):
    """P(class 1) rises with the mean of the top-left 8×8 block only: the faithful map is known."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gain * x[:, :, :8, :8].mean(dim=(1, 2, 3))
        return torch.stack([-s, s], dim=1)


def _patterned(n: int = 2, size: int = 16) -> torch.Tensor:
    """Images with texture everywhere: a linear imputation cannot restore a removed patch exactly."""
    g = torch.Generator().manual_seed(5)
    return (torch.rand(n, 1, size, size, generator=g) * 2 + 1).expand(-1, 3, -1, -1).contiguous()


def test_linear_imputation_matches_pytorch_grad_cam():
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    rng = np.random.default_rng(3)
    img = rng.random((24, 24))
    keep = rng.random((24, 24)) > 0.15
    keep[:2] = False  # border rows: fewer neighbours
    ours = linear_impute(img, keep, noise=0.0)
    theirs = NoisyLinearImputer(noise=0.0)(torch.from_numpy(img[None]).float(),
                                           torch.from_numpy(keep.astype(np.float32)))[0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.array_equal(ours[keep], img[keep])  # kept pixels are never touched


class SpotModel(nn.Module):
    """P(class 1) = sigmoid(10 · (mean of the 4×4 block at rows/cols 4..7 − 0.6)): the evidence is one spot."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 10.0 * (x[:, 0, 4:8, 4:8].mean(dim=(1, 2)) - 0.6)
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_road_ranks_the_map_that_points_at_the_evidence_above_random():
    x = 0.2 * _patterned(2, 16) / 3  # dim texture everywhere
    x[:, :, 4:8, 4:8] = 1.0  # the bright spot the model reads
    good = np.zeros((2, 16, 16), np.float32)
    good[:, 4:8, 4:8] = 1.0  # points at the spot
    bad = np.zeros((2, 16, 16), np.float32)
    bad[:, 10:14, 10:14] = 1.0  # points at texture the model ignores
    fr = (16 / 256, 0.1, 0.2)
    model = SpotModel()
    r_good = cam_eval.road(model, x, good, target=1, fractions=fr, seed=0)
    r_bad = cam_eval.road(model, x, bad, target=1, fractions=fr, seed=0)
    assert r_good["map"]["probs"].shape == (2, 3) and r_good["fractions"].tolist() == list(fr)
    assert r_good["p0"] == pytest.approx(1 / (1 + np.exp(-4.0)))
    assert (r_good["map"]["probs"][:, 0] < 0.05).all()  # the spot imputed from its dim neighbours: evidence gone
    np.testing.assert_allclose(r_bad["map"]["probs"][:, 0], r_bad["p0"], atol=1e-6)  # removing texture: no change
    assert (r_good["difference"] > 0.5).all() and (r_good["difference"] > r_bad["difference"]).all()
    assert np.allclose(r_good["random"]["drop"], r_bad["random"]["drop"])  # the same random maps for both


def test_road_images_remove_the_right_pixels_and_copy_channels():
    x = _patterned(1, 12)
    maps = np.zeros((1, 12, 12), np.float32)
    maps[0, 0, :6] = 1.0  # the 6 most relevant pixels: first row, left half
    out = cam_eval.road_images(x, maps, fractions=(6 / 144,), noise=0.0)
    assert out.shape == (1, 3, 12, 12) and torch.equal(out[0, 0], out[0, 2])
    changed = (out[0, 0] != x[0, 0]).numpy()
    assert changed[0, :6].all() and changed.sum() == 6
    least = cam_eval.road_images(x, maps, fractions=(6 / 144,), most_relevant_first=False, noise=0.0)
    assert not (least[0, 0] != x[0, 0]).numpy()[0, :6].any()  # least relevant first leaves the top row alone


def test_road_on_resnet_leaves_the_model_untouched(model, x):
    before = fingerprint(model)
    maps, logits = gradcam(model, x[:2], "layer3")
    r = cam_eval.road(model, x[:2], maps, None, fractions=(0.01, 0.02))
    np.testing.assert_allclose(r["p0"], logits.softmax(1).max(1).values.numpy(), atol=1e-5)
    assert np.isfinite(r["difference"]).all()
    assert_untouched(model, before)
    with pytest.raises(ValueError):
        cam_eval.road(model, x[:2], maps[:1], None)


def test_compare_methods(model):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    masks = np.zeros((2, 32, 32), bool)
    masks[:, 4:14, 4:14] = True
    before = fingerprint(model)
    methods = ("GradCAM (ours)", "GradCAM", "GradCAM++", "HiResCAM", "ScoreCAM", "EigenCAM")
    maps, table = cam_eval.compare_methods(model, x, masks, "layer3", methods=methods, batch_size=128,
                                           n_random=2)
    assert_untouched(model, before)
    assert list(maps) == list(methods)
    for m in maps.values():
        assert m.shape == (2, 32, 32) and np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1 + 1e-6
    np.testing.assert_allclose(maps["GradCAM (ours)"], maps["GradCAM"], atol=1e-4)
    assert list(table["method"]) == [*methods, "centre prior", "random (mean of 2)"]
    assert {"pointing", "near", "energy", "n", "seconds_per_image"} <= set(table.columns)
    assert table["seconds_per_image"].iloc[: len(methods)].notna().all()
    with pytest.raises(ValueError, match="unknown method"):
        cam_eval.compare_methods(model, x, masks, "layer3", methods=("NoSuchCAM",))


def test_cam_plots_smoke(model, x, tmp_path):
    images = (np.random.default_rng(0).random((4, 64, 64)) * 255).astype(np.uint8)
    masks = np.zeros((4, 64, 64), bool)
    masks[:, 20:40, 10:30] = True
    with GradCAM(model, "layer3") as cam:
        maps, _ = cam(x)
        figs = {"steps": cam_plots.plot_gradcam_steps(images[0], cam, save_to=tmp_path / "steps.png")}
    figs["grid"] = cam_plots.plot_cam_grid(images, maps, titles=list("abcd"), lesion_masks=masks,
                                           lung_masks=masks, show_image=True)
    df = cam_eval.cascading_randomisation(model, x[:2], None, "layer3", order=("fc",))
    figs["rand"] = cam_plots.plot_randomisation(df, images[0], threshold=0.5, save_to=tmp_path / "rand.png")
    r = cam_eval.road(model, x[:2], maps[:2], None, fractions=(0.01, 0.02))
    figs["road"] = cam_plots.plot_road(r, title="t", save_to=tmp_path / "road.png")
    maps_by = {"a": maps, "b": maps[::-1]}
    figs["cmp"] = cam_plots.plot_method_comparison(images, maps_by, masks, n_images=2)
    figs["bars"] = cam_plots.plot_localisation_bars(localisation_table(maps_by, masks, n_random=2))
    assert all(isinstance(f, Figure) for f in figs.values())
    assert (tmp_path / "steps.png").stat().st_size > 1000  # save_to writes a PNG (rendering all is slow)
    plt.close("all")
