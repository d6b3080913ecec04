"""The randomisation sanity check against its reference level (utils.explain.sanity): SSIM, independent random
models, and the verdict on two models whose answer is known — a map that is the image whatever the weights (fails)
and a map the weights alone draw (passes)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from torch import nn
from torchvision.models import resnet18

from utils.errors import UserError
from utils.explain import sanity as S

SIZE = 24


class ImageModel(nn.Module):
    """Its map (Grad-CAM on ``feat``) is the image itself, whatever ``fc`` holds: the class-1 score is the mean of a
    positive image feature times a positive factor that ``fc`` only scales — Adebayo's failure case."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.fc = nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.feat(x[:, :1].abs() + 0.1)
        s = a.mean(dim=(1, 2, 3)) * (1 + self.fc.weight.pow(2).sum())
        return torch.stack([-s, s], dim=1)


class WeightModel(nn.Module):
    """Its map is a pattern the weights draw (``pattern``), the same for every image: randomising the weights
    replaces it — the map depends on the model only."""

    def __init__(self) -> None:
        super().__init__()
        self.pattern = nn.Linear(1, SIZE * SIZE)
        self.feat = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pattern(torch.ones(len(x), 1)).view(len(x), 1, SIZE, SIZE)
        a = self.feat(p.abs() + 0 * x[:, :1])
        s = a.mean(dim=(1, 2, 3))
        return torch.stack([-s, s], dim=1)


def _x(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    smooth = ndi.gaussian_filter(torch.rand(n, SIZE, SIZE, generator=g).numpy(), (0, 2, 2))
    return torch.from_numpy(smooth)[:, None].expand(-1, 3, -1, -1).contiguous().float()


# ----------------------------------------------------------------------------------------- SSIM
def test_ssim_known_values():
    rng = np.random.default_rng(0)
    a = ndi.gaussian_filter(rng.random((32, 32)), 2)
    a = (a - a.min()) / np.ptp(a)
    assert S.ssim(a, a) == pytest.approx(1.0)
    b = np.clip(a + 0.2 * rng.standard_normal((32, 32)), 0, 1)
    assert S.ssim(a, b) == pytest.approx(S.ssim(b, a)) and S.ssim(a, b) < 1.0
    assert S.ssim(a, 1 - a) < 0  # an inverted map: negative structure term
    c1 = 0.01 ** 2  # two constant maps: only the luminance term is left, exactly (2ab + C1) / (a² + b² + C1)
    assert S.ssim(np.full((20, 20), 0.2), np.full((20, 20), 0.6)) == pytest.approx((2 * 0.12 + c1) / (0.04 + 0.36 + c1))
    np.testing.assert_allclose(S.ssim_maps(np.stack([a, a]), np.stack([a, b])), [1.0, S.ssim(a, b)])
    with pytest.raises(ValueError, match="too small"):
        S.ssim(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="one shape"):
        S.ssim(np.zeros((20, 20)), np.zeros((20, 21)))


def test_random_models_are_seeded_and_independent():
    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a, a2, b = S.random_model(model, 1), S.random_model(model, 1), S.random_model(model, 2)
    assert torch.equal(a.conv1.weight, a2.conv1.weight) and not torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.fc.weight, model.fc.weight)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model passed in is untouched


# ----------------------------------------------------------------------------------------- the verdict
def test_a_map_that_is_the_image_is_above_the_reference():
    r = S.randomisation_check(ImageModel(), _x(), targets=1, layer="feat", order=("fc",), after="fc", n_boot=200)
    step = r["steps"]["abs_spearman"][0]
    assert step["similarity"]["value"] == pytest.approx(1.0)  # randomising fc leaves the map unchanged
    assert step["reference"]["value"] < 0.8 and step["verdict"] == "above the reference"
    assert not r["passes"] and r["verdict"] == "above the reference level"
    assert r["sentence"].startswith("|Spearman rho|: above the reference level") and "SSIM: above" in r["sentence"]
    same, other = r["random_models"]["abs_spearman"]["same_image"], r["random_models"]["abs_spearman"]["other_image"]
    assert same["value"] == pytest.approx(1.0) and other["value"] < 0.8  # the method follows the image


def test_a_map_the_weights_draw_is_at_the_reference():
    r = S.randomisation_check(WeightModel(), _x(), targets=1, layer="feat", order=("pattern",), after="pattern",
                              n_boot=200)
    for metric in S.SIMILARITIES:
        step = r["steps"][metric][0]
        # the same pattern for every image: this image's randomised map is exactly as alike as another image's
        assert step["difference"]["value"] == 0.0 and step["verdict"] == "at the reference"
    assert r["passes"] and r["verdict"] == "at the reference level"
    assert "|Spearman rho|: at the reference level from pattern down to the stem" in r["sentence"]


def test_empty_trained_maps_are_no_map():
    x = _x()
    x[2] = 0.3  # a constant image: its map has no location
    r = S.randomisation_check(ImageModel(), x, targets=1, layer="feat", order=("fc",), after="fc", n_boot=50,
                              random_models=False)
    assert r["n"] == 5 and r["n_no_map"] == 1 and r["random_models"] == {}
    assert "1 of 6 maps were empty or constant" in r["sentence"]


def test_bad_input_is_one_line():
    with pytest.raises(UserError, match="at least two images"):
        S.randomisation_check(ImageModel(), _x(1), targets=1, layer="feat", order=("fc",), after="fc")
    with pytest.raises(UserError, match="unknown similarity"):
        S.randomisation_check(ImageModel(), _x(), targets=1, layer="feat", order=("fc",), after="fc",
                              metrics=("pearson",))
    with pytest.raises(UserError, match="for 'after'"):
        S.randomisation_check(ImageModel(), _x(), targets=1, layer="feat", order=("fc",), after="layer4")


def test_on_a_resnet_every_step_from_layer4_to_the_stem_is_read():
    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=2).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    r = S.randomisation_check(model, x, targets=1, layer="layer3", seed=0, n_boot=50, groups=[1, 1, 2, 3])
    assert [s["blocks"].split("+")[-1] for s in r["steps"]["ssim"]] == list(S.RANDOMISATION_ORDER[1:])
    assert set(r["random_models"]) == set(S.SIMILARITIES) and r["verdict"] in (
        "at the reference level", "above the reference level", "no map")
    assert len(r["table"]) == len(S.RANDOMISATION_ORDER) + 1


# ----------------------------------------------------------------------------------------- the cascade itself
def test_cascading_randomisation_changes_maps_on_a_copy():
    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=2).eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    df = S.cascading_randomisation(model, x, None, "layer3", order=("fc", "layer4"), seed=0)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())  # worked on a copy
    assert list(df["blocks"]) == ["none (trained)", "fc", "fc+layer4"]
    from utils.explain.gradcam import gradcam

    np.testing.assert_allclose(df["maps"].iloc[0], gradcam(model, x, "layer3")[0], atol=1e-6)
    assert df["spearman"].iloc[0] == 1.0 and df["spearman"].iloc[2] < 0.5, df[["blocks", "spearman"]]
    again = S.cascading_randomisation(model, x, None, "layer3", order=("fc", "layer4"), seed=0)
    np.testing.assert_allclose(again["spearman"], df["spearman"])  # seeded


def test_randomisation_reaches_the_stem_including_batchnorm_statistics():
    import copy

    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=2).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    df = S.cascading_randomisation(model, x, 1, "layer3", seed=0)
    assert list(df["randomised"]) == ["", *S.RANDOMISATION_ORDER] and df["randomised"].iloc[-1] == "stem"
    work = copy.deepcopy(model)
    work.bn1.running_mean.fill_(3.0)
    S._reset_block(work, "stem")
    assert torch.equal(work.bn1.running_mean, torch.zeros_like(work.bn1.running_mean))  # statistics reset too
    assert not torch.equal(work.conv1.weight, model.conv1.weight)


def test_spearman_maps_flat_cases():
    a = np.random.default_rng(0).random((3, 5, 5))
    flat = np.zeros((3, 5, 5))
    np.testing.assert_allclose(S.spearman_maps(a, a), 1.0)
    np.testing.assert_allclose(S.spearman_maps(a, flat), 0.0)
    assert np.isnan(S.spearman_maps(flat, flat)).all()


def test_the_record_is_json_and_says_what_the_check_says():
    import json

    from utils.fileio import jsonable

    check = S.randomisation_check(ImageModel(), _x(), targets=1, layer="feat", order=("fc",), after="fc", n_boot=50,
                                  random_models=False)
    rec = S.sanity_record(check)
    json.dumps(jsonable(rec), allow_nan=False)
    assert rec["verdict"] == check["verdict"] == "above the reference level" and rec["passes"] is False
    assert rec["sentence"] == check["sentence"] and set(rec["sentences"]) == {"|Spearman rho|", "SSIM"}
    assert rec["steps"]["ssim"][0]["verdict"] == "above the reference" and rec["after"] == "fc"
    assert rec["bootstrap"] == {"unit": "patient", "n_boot": 50, "paired": True} and rec["n"] == 6
