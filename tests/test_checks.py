"""utils.explain.checks: oracle equality with pytorch_grad_cam, method comparison, and a smoke test of the CAM
figures (the randomisation check and ROAD are tested in tests/test_sanity.py and tests/test_road.py)."""
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
from utils.explain.gradcam import GradCAM
from utils.explain.localisation import localisation_table
from utils.explain.road import road_test
from utils.explain.sanity import randomisation_check
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


def test_only_the_library_comparisons_and_the_moved_names_are_left():
    """The first sanity rule (a fixed |rho| bound) and the first ROAD (probability, smoothed noise) are gone; the
    two names still re-exported here are the sanity module's own objects."""
    from utils.explain import sanity

    for gone in ("road", "sanity_verdict", "SANITY_RHO", "ROAD_FRACTIONS", "road_images", "linear_impute"):
        assert not hasattr(cam_eval, gone), gone
    assert cam_eval.spearman_maps is sanity.spearman_maps
    assert cam_eval.cascading_randomisation is sanity.cascading_randomisation


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
    check = randomisation_check(model, x[:3], None, "layer3", order=("fc", "layer4"), n_boot=20, random_models=False)
    figs["rand"] = cam_plots.plot_randomisation(check["table"], images[0], steps=check["steps"],
                                                save_to=tmp_path / "rand.png")
    r = road_test(model, x[:3], maps[:3], target=None, fractions=(0.01, 0.02), n_boot=20, controls=x[3:])
    figs["road"] = cam_plots.plot_road(r, title="t", save_to=tmp_path / "road.png")
    maps_by = {"a": maps, "b": maps[::-1]}
    figs["cmp"] = cam_plots.plot_method_comparison(images, maps_by, masks, n_images=2)
    figs["bars"] = cam_plots.plot_localisation_bars(localisation_table(maps_by, masks, n_random=2))
    assert all(isinstance(f, Figure) for f in figs.values())
    assert (tmp_path / "steps.png").stat().st_size > 1000  # save_to writes a PNG (rendering all is slow)
    plt.close("all")
