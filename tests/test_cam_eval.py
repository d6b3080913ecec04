"""Oracle equality with pytorch_grad_cam, the randomisation sanity check, faithfulness curves, method
comparison, and a smoke test of the CAM figures."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.models import resnet18  # noqa: E402

from utils.explain import checks as cam_eval  # noqa: E402

from utils.viz import cams as cam_plots  # noqa: E402
from utils.explain.gradcam import GradCAM, gradcam  # noqa: E402
from utils.explain.localisation import localisation_table  # noqa: E402



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


def test_deletion_insertion_on_a_model_with_known_evidence():
    model = RegionModel()
    x = torch.ones(2, 3, 16, 16)
    good = np.zeros((2, 16, 16), np.float32)
    good[:, :8, :8] = 1.0
    bad = good[:, ::-1, ::-1].copy()
    r_good = cam_eval.deletion_insertion(model, x, good, 1, steps=8, baseline="zero")
    r_bad = cam_eval.deletion_insertion(model, x, bad, 1, steps=8, baseline="zero")
    p1 = torch.sigmoid(torch.tensor(8.0)).item()
    d, i = r_good["cam"]["deletion"], r_good["cam"]["insertion"]
    assert d.shape == i.shape == (2, 9) and r_good["fractions"][[0, -1]].tolist() == [0.0, 1.0]
    np.testing.assert_allclose(d[:, 0], p1, atol=1e-6)   # nothing deleted
    np.testing.assert_allclose(d[:, -1], 0.5, atol=1e-6)  # everything deleted: the baseline's probability
    np.testing.assert_allclose(i[:, 0], 0.5, atol=1e-6)
    np.testing.assert_allclose(i[:, -1], p1, atol=1e-6)
    np.testing.assert_allclose(d[:, 2:], 0.5, atol=1e-6)  # evidence gone after 25 % of the pixels
    g, b = r_good["summary"], r_bad["summary"]
    assert g.loc["cam", "deletion_auc"] < b.loc["cam", "deletion_auc"]
    assert g.loc["cam", "insertion_auc"] > b.loc["cam", "insertion_auc"]
    assert g.loc["cam", "deletion_auc"] < g.loc["random", "deletion_auc"]
    assert set(g.columns) == {"deletion_auc", "insertion_auc", "n"}


def test_baselines():
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(cam_eval._baseline(x, "zero"), torch.zeros_like(x))
    assert torch.equal(cam_eval._baseline(x, 0.5), torch.full_like(x, 0.5))
    mean = cam_eval._baseline(x, "mean")
    assert mean.shape == x.shape and torch.allclose(mean[:, :, 0, 0], x.mean(dim=(2, 3)))
    blur = cam_eval._baseline(x, "blur")
    assert blur.shape == x.shape and blur.std() < x.std()
    assert cam_eval._baseline(x, torch.zeros(3, 1, 1)).shape == x.shape
    with pytest.raises(ValueError, match="baseline"):
        cam_eval._baseline(x, "noise")


def test_deletion_insertion_on_resnet(model, x):
    before = fingerprint(model)
    maps, logits = gradcam(model, x[:2], "layer3")
    r = cam_eval.deletion_insertion(model, x[:2], maps, None, steps=4)
    probs = logits.softmax(1).max(1).values.numpy()
    np.testing.assert_allclose(r["cam"]["deletion"][:, 0], probs, atol=1e-5)
    np.testing.assert_allclose(r["cam"]["insertion"][:, -1], probs, atol=1e-5)
    for key in ("cam", "random"):
        assert np.all((r[key]["deletion_auc"] >= 0) & (r[key]["deletion_auc"] <= 1))
    assert_untouched(model, before)
    with pytest.raises(ValueError):
        cam_eval.deletion_insertion(model, x[:2], maps[:1], None)


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
    figs["rand"] = cam_plots.plot_randomisation(df, images[0])
    r = cam_eval.deletion_insertion(model, x[:2], maps[:2], None, steps=2)
    figs["di"] = cam_plots.plot_deletion_insertion(r, title="t")
    maps_by = {"a": maps, "b": maps[::-1]}
    figs["cmp"] = cam_plots.plot_method_comparison(images, maps_by, masks, n_images=2)
    figs["bars"] = cam_plots.plot_localisation_bars(localisation_table(maps_by, masks, n_random=2))
    assert all(isinstance(f, Figure) for f in figs.values())
    assert (tmp_path / "steps.png").stat().st_size > 1000  # save_to writes a PNG (rendering all is slow)
    plt.close("all")
