"""ROAD done right (utils.explain.road): both orders, logit margin, a null of the map's own geometry, the paired
verdict, "no map", the imputation control, and one-line errors for bad input. Tiny models whose evidence is known."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from utils.errors import UserError
from utils.explain import road as R

SIZE = 16
FRACTIONS = (16 / 256, 0.1, 0.2)


def _texture(n: int, seed: int = 5) -> torch.Tensor:
    """Dim texture everywhere (a linear imputation cannot restore a removed patch exactly), three equal channels."""
    g = torch.Generator().manual_seed(seed)
    return (0.2 * torch.rand(n, 1, SIZE, SIZE, generator=g)).expand(-1, 3, -1, -1).contiguous()


def _with_spot(n: int = 4) -> torch.Tensor:
    x = _texture(n)
    x[:, :, 4:8, 4:8] = 1.0  # the bright spot the models read
    return x


class SpotModel(nn.Module):
    """Logit margin of class 1 = ``sign`` · 10 · (mean of the 4×4 block at rows/cols 4..7 − 0.6): the evidence is
    one spot (``sign=-1``: the spot argues *against* class 1, so removing it raises the class-1 margin)."""

    def __init__(self, sign: float = 1.0) -> None:
        super().__init__()
        self.sign = sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.sign * 10.0 * (x[:, 0, 4:8, 4:8].mean(dim=(1, 2)) - 0.6)
        return torch.stack([torch.zeros_like(s), s], dim=1)


class SmoothModel(nn.Module):
    """Class-1 margin rises as the image gets smoother (less local texture): an imputed patch *adds* evidence."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x[:, 0]
        rough = (g[:, 1:, :] - g[:, :-1, :]).abs().mean(dim=(1, 2)) + (g[:, :, 1:] - g[:, :, :-1]).abs().mean(dim=(1, 2))
        s = -100.0 * rough
        return torch.stack([torch.zeros_like(s), s], dim=1)


def _maps(rows: slice, cols: slice, n: int = 4) -> np.ndarray:
    m = np.zeros((n, SIZE, SIZE), np.float32)
    m[:, rows, cols] = 1.0
    return m


SPOT = (slice(4, 8), slice(4, 8))
ELSEWHERE = (slice(10, 14), slice(10, 14))


# ----------------------------------------------------------------------------------------- pieces
def test_imputation_of_several_channels_shares_the_system_and_the_noise():
    rng = np.random.default_rng(3)
    img = rng.random((12, 12))
    keep = rng.random((12, 12)) > 0.2
    stacked = np.stack([img, 2 * img - 1])  # two affinely related channels, like ImageNet-normalised grey
    out = R.linear_impute(stacked, keep, noise=0.05, rng=np.random.default_rng(0))
    single = R.linear_impute(img, keep, noise=0.05, rng=np.random.default_rng(0))
    np.testing.assert_allclose(out[0], single)  # channel 0 is the one-channel imputation, noise included
    noise = out[0] - R.linear_impute(img, keep, noise=0.0)
    np.testing.assert_allclose(out[1], 2 * (out[0] - noise) - 1 + noise)  # one noise field for every channel
    assert np.array_equal(out[:, keep], stacked[:, keep])
    with pytest.raises(ValueError, match="match"):
        R.linear_impute(img, keep[:5])


def test_removal_order_breaks_ties_at_random_only_when_asked():
    cam = np.zeros((6, 6))
    cam[5, 5] = 1.0
    raster = R.removal_order(cam, most_relevant_first=False)
    assert raster[:6].tolist() == list(range(6))  # stable: the top row first among the equal zeros
    shuffled = R.removal_order(cam, most_relevant_first=False, rng=np.random.default_rng(0))
    assert set(shuffled[:35]) == set(range(35)) and shuffled[:6].tolist() != list(range(6))
    assert shuffled[-1] == 35 and R.removal_order(cam)[0] == 35  # the map's value still decides the order


def test_the_shift_null_keeps_the_maps_values_and_moves_them_far():
    maps = np.random.default_rng(1).random((6, 16, 20)).astype(np.float32)
    moved, offsets = R.shifted_maps(maps, seed=3)
    for m, s, (dy, dx) in zip(maps, moved, offsets):
        np.testing.assert_array_equal(np.sort(m, axis=None), np.sort(s, axis=None))  # the same histogram
        np.testing.assert_array_equal(np.roll(s, (-dy, -dx), axis=(0, 1)), m)  # the same map, elsewhere
        assert 4 <= dy <= 12 and 5 <= dx <= 15  # at least a quarter of each side away
    np.testing.assert_array_equal(R.shifted_maps(maps, seed=3)[0], moved)  # seeded


def test_the_derangement_null_gives_every_image_another_images_map():
    maps = np.arange(5)[:, None, None] * np.ones((5, 3, 3))
    other, perm = R.deranged_maps(maps, seed=0)
    assert sorted(perm) == list(range(5)) and (perm != np.arange(5)).all()
    np.testing.assert_array_equal(other[:, 0, 0], perm)
    with pytest.raises(ValueError, match="at least two"):
        R.derangement(1)
    with pytest.raises(ValueError, match="unknown null"):
        R.null_maps(maps, "noise")


def test_logit_margin_is_the_log_odds_for_two_classes():
    logits = torch.tensor([[0.5, 2.0], [1.0, -1.0]])
    t = torch.tensor([1, 1])
    p = logits.softmax(1)[:, 1]
    torch.testing.assert_close(R.logit_margin(logits, t), torch.log(p / (1 - p)))
    three = torch.tensor([[1.0, 4.0, 3.0]])
    assert R.logit_margin(three, torch.tensor([1])).item() == pytest.approx(1.0)  # 4 − the best other (3)
    assert R.logit_margin(three, torch.tensor([0])).item() == pytest.approx(-3.0)


def test_linear_imputation_matches_pytorch_grad_cam():
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    rng = np.random.default_rng(3)
    img = rng.random((24, 24))
    keep = rng.random((24, 24)) > 0.15
    keep[:2] = False  # border rows: fewer neighbours
    ours = R.linear_impute(img, keep, noise=0.0)
    theirs = NoisyLinearImputer(noise=0.0)(torch.from_numpy(img[None]).float(),
                                           torch.from_numpy(keep.astype(np.float32)))[0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.array_equal(ours[keep], img[keep])  # kept pixels are never touched


def test_road_images_remove_the_right_pixels_in_either_order():
    x = 1 + 2 * torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(5)).expand(-1, 3, -1, -1)
    maps = np.zeros((1, 12, 12), np.float32)
    maps[0, 0, :6] = 1.0  # the 6 most relevant pixels: first row, left half
    out = R.road_images(x, maps, fractions=(6 / 144,), noise=0.0)
    assert out.shape == (1, 3, 12, 12) and torch.equal(out[0, 0], out[0, 2])  # channel 0 copied (the default)
    changed = (out[0, 0] != x[0, 0]).numpy()
    assert changed[0, :6].all() and changed.sum() == 6
    least = R.road_images(x, maps, fractions=(6 / 144,), most_relevant_first=False, noise=0.0)
    assert not (least[0, 0] != x[0, 0]).numpy()[0, :6].any()  # least relevant first leaves the top row alone


# ----------------------------------------------------------------------------------------- the test
class BrightModel(nn.Module):
    """Class-1 margin = 10 · (mean of the pixels brighter than 0.5 over a 4×4 block's worth) − 4: the evidence is a
    bright spot wherever it is (each image below has its own)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 10.0 * torch.relu(x[:, 0] - 0.5).sum(dim=(1, 2)) / 8.0 - 4.0
        return torch.stack([torch.zeros_like(s), s], dim=1)


def _own_spots(n: int = 6) -> tuple[torch.Tensor, np.ndarray]:
    x = _texture(n)
    maps = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        r, c = divmod(4 * i, 12)
        x[i, :, r:r + 4, c:c + 4] = 1.0
        maps[i, r:r + 4, c:c + 4] = 1.0
    return x, maps


def test_the_default_null_is_another_images_map_and_a_prior_ties_with_it():
    x, maps = _own_spots()
    own = R.road_test(BrightModel(), x, maps, target=1, fractions=FRACTIONS, n_boot=200, seed=1)
    assert own["null_kind"] == "derangement" and own["verdict"] == "faithful"
    assert own["difference"]["ci_low"] > 0  # each map beats the map of another image on this image
    prior = np.broadcast_to(maps[0], maps.shape).copy()  # the same map for every image: it ignores the image
    tie = R.road_test(BrightModel(), x, prior, target=1, fractions=FRACTIONS, n_boot=200, seed=1)
    assert tie["difference"]["value"] == 0.0 and tie["verdict"] == "not shown"


def test_the_record_and_the_scale_sentence_come_from_the_run():
    import json

    from utils.fileio import jsonable

    x, maps = _own_spots()
    r = R.road_test(BrightModel(), x, maps, target=1, fractions=FRACTIONS, n_boot=100, controls=_texture(3, seed=9))
    changes = R.mean_changes(r)
    np.testing.assert_allclose(changes["map_morf"], (r["map"]["morf"] - r["margin0"][:, None]).mean(0))
    assert changes["map_morf"][0] < -3 and len(changes["control_morf"]) == len(FRACTIONS)
    rec = R.road_record(r)
    json.dumps(jsonable(rec), allow_nan=False)
    assert rec["verdict"] == r["verdict"] and rec["sentences"] == [r["sentence"], r["scale_sentence"]]
    assert rec["null"] == "another image's map" and rec["n_controls"] == 3 and rec["fractions"] == list(FRACTIONS)
    assert rec["bootstrap"]["unit"] == "patient" and rec["margin0_median"] == pytest.approx(float(np.median(r["margin0"])))
    assert "the curves can separate" in r["scale_sentence"] and f"{rec['margin0_median']:.2f}" in r["scale_sentence"]
    smooth = R.road_test(SmoothModel(), _texture(4), _maps(*SPOT), target=1, fractions=FRACTIONS, null="shift",
                         n_boot=100, controls=_texture(3, seed=9))
    assert "cannot separate" in smooth["scale_sentence"]  # the removal adds what it should take away


def test_a_map_on_the_evidence_is_faithful_and_beats_its_own_moved_copy():
    x = _with_spot()
    r = R.road_test(SpotModel(), x, _maps(*SPOT), target=1, fractions=FRACTIONS, null="shift", n_boot=200)
    np.testing.assert_allclose(r["margin0"], 4.0, atol=1e-5)
    assert r["map"]["morf"].shape == (4, 3) and r["map"]["lerf"].shape == (4, 3)
    assert (r["map"]["morf"][:, 0] < -3).all()  # the spot imputed from its dim neighbours: the evidence is gone
    np.testing.assert_allclose(r["map"]["lerf"], 4.0, atol=1e-5)  # least relevant first never touches the spot
    np.testing.assert_allclose(r["null"]["morf"][:, 0], 4.0, atol=1e-5)  # the moved block: texture the model ignores
    assert r["verdict"] == "faithful" and r["sentence"].startswith("The map is faithful")
    assert r["n"] == 4 and r["n_no_map"] == 0 and r["control"] is None


def test_a_map_beside_the_evidence_shows_nothing_and_a_map_on_counter_evidence_is_not_faithful():
    x = _with_spot()
    beside = R.road_test(SpotModel(), x, _maps(*ELSEWHERE), target=1, fractions=FRACTIONS[:1], n_boot=200)
    np.testing.assert_allclose(beside["map"]["morf_drop"], 0.0, atol=1e-5)  # removing ignored texture: no change
    assert beside["verdict"] == "not shown" and "does not detectably lower" in beside["sentence"]
    against = R.road_test(SpotModel(sign=-1.0), x, _maps(*SPOT), target=1, fractions=FRACTIONS, n_boot=200)
    assert (against["map"]["morf_drop"] < 0).all()  # removing what it points at *raises* the class-1 margin
    assert against["verdict"] == "not faithful" and "*raises*" in against["sentence"]


def test_empty_maps_are_counted_not_scored():
    x = _with_spot()
    maps = _maps(*SPOT)
    maps[1] = 0.0  # an all-zero map
    maps[2] = 0.5  # a constant one
    r = R.road_test(SpotModel(), x, maps, target=1, fractions=FRACTIONS, null="shift", n_boot=200)
    assert r["n"] == 2 and r["n_no_map"] == 2 and r["no_map"].tolist() == [False, True, True, False]
    assert np.isnan(r["map"]["combined"][[1, 2]]).all() and np.isfinite(r["map"]["combined"][[0, 3]]).all()
    assert r["verdict"] == "faithful" and "2 of 4 maps were empty or constant" in r["sentence"]
    none = R.road_test(SpotModel(), x, np.zeros_like(maps), target=1, fractions=FRACTIONS, n_boot=50)
    assert none["verdict"] == "no map" and none["n"] == 0 and none["sentence"].startswith("ROAD was not scored")


def test_the_imputation_control_measures_evidence_the_removal_adds():
    x = _texture(4)
    maps = _maps(*SPOT)
    r = R.road_test(SmoothModel(), x, maps, target=1, fractions=FRACTIONS, n_boot=200, controls=_texture(3, seed=9))
    assert r["control"]["value"] > 0 and r["control"]["ci_low"] > 0  # smoothing the patch raises the margin
    assert "The removal itself adds evidence" in r["sentence"] and "from 3 control images" in r["sentence"]
    spot = R.road_test(SpotModel(), _with_spot(), maps, target=1, fractions=FRACTIONS, n_boot=200,
                       controls=_texture(3, seed=9))  # the controls' block is texture: smoothing it adds nothing
    assert spot["control"]["ci_low"] <= 0 and "adds evidence" not in spot["sentence"]


def test_road_leaves_the_model_and_images_untouched():
    model = SpotModel().train()
    x = _with_spot()
    before = x.clone()
    R.road_test(model, x, _maps(*SPOT), target=1, fractions=FRACTIONS, n_boot=20)
    assert model.training and torch.equal(x, before)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"maps": np.zeros((4, 8, 8), np.float32)}, r"resize_map\(maps, \(16, 16\)\)"),
    ({"maps": np.zeros((3, SIZE, SIZE), np.float32)}, "one map per image"),
    ({"maps": np.full((4, SIZE, SIZE), np.nan, np.float32)}, "NaN"),
    ({"fractions": (0.1, 1.5)}, "between 0 and 1"),
    ({"groups": [1, 2]}, "patient ids"),
    ({"null": "noise"}, "unknown ROAD null"),
    ({"controls": torch.zeros(2, 3, 8, 8)}, "controls"),
])
def test_bad_input_is_one_line_naming_the_fix(kwargs, message):
    args = {"model": SpotModel(), "x": _with_spot(), "maps": _maps(*SPOT), "fractions": FRACTIONS, "n_boot": 10,
            **kwargs}
    with pytest.raises(UserError, match=message) as err:
        R.road_test(**args)
    assert "\n" not in str(err.value)


def test_no_images_and_a_lonely_derangement_are_user_errors():
    with pytest.raises(UserError, match="empty image set"):
        R.road_test(SpotModel(), torch.zeros(0, 3, SIZE, SIZE), np.zeros((0, SIZE, SIZE)), fractions=FRACTIONS)
    maps = _maps(*SPOT)
    maps[1:] = 0.0
    with pytest.raises(UserError, match="at least two images with a map"):
        R.road_test(SpotModel(), _with_spot(), maps, fractions=FRACTIONS, null="derangement")
