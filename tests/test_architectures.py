"""Notebook 09's comparison (:mod:`utils.studies.architectures`): maps pooled onto one grid, each against a uniform
map, empty maps counted as "no map", the headline at matched validation sensitivity — and every verdict sentence fed
the edge cases (above, below, across zero, inside the margin, nothing measured)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import demo_project

from utils.artifacts import record_operating_point, threshold_for_recall
from utils.checkpoint import make_meta, save_checkpoint, update_meta
from utils.config import IMAGENET_MEAN, IMAGENET_STD
from utils.explain.localisation import energy_inside, outside_fraction
from utils.explain.maps import map_grid, pool_maps
from utils.explain.spec import make_spec
from utils.fileio import read_json, write_json
from utils.studies import architectures as arch
from utils.train.model import build_model, predict_proba

UP = {"value": 0.05, "ci_low": 0.02, "ci_high": 0.08}
DOWN = {"value": -0.05, "ci_low": -0.08, "ci_high": -0.02}
ACROSS = {"value": 0.01, "ci_low": -0.02, "ci_high": 0.04}
TINY = {"value": 0.004, "ci_low": 0.001, "ci_high": 0.007}  # detectable, inside a margin of 0.01
NOTHING = {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan}


# ------------------------------------------------------------------------------------------- pooling
def test_pooling_keeps_the_mass_of_each_cell_and_a_uniform_map_uniform():
    maps = np.zeros((2, 8, 8), np.float32)
    maps[0, 1, 6] = 1.0  # one hot pixel: its whole 4x4 cell (rows 0-3, columns 4-7) gets the mass
    maps[1] = 0.3  # uniform
    pooled = pool_maps(maps, (2, 2))
    assert pooled.shape == maps.shape and pooled[0].max() == 1.0
    assert np.array_equal(pooled[0] > 0, np.pad(np.ones((4, 4), bool), ((0, 4), (4, 0))))
    assert np.ptp(pooled[1]) == 0  # still uniform: an image-blind map scores the same before and after
    lung = np.zeros((8, 8), bool)
    lung[:, 5:] = True  # covers 3 of the hot cell's 4 columns
    assert outside_fraction(pooled[0], lung) == pytest.approx(0.25)  # the cell's mass, weighted by coverage
    assert outside_fraction(maps[0], lung) == 0.0  # at full resolution the pixel sits in the lung
    assert energy_inside(pooled[1], lung, skip_empty=False) == pytest.approx(lung.mean())  # uniform: the chance level


def test_pooling_onto_the_maps_own_grid_changes_nothing_and_bad_grids_fail():
    cells = np.random.default_rng(0).random((3, 4, 4))
    maps = np.repeat(np.repeat(cells, 3, axis=1), 3, axis=2)  # piecewise constant on a 4x4 grid of 12 px maps
    np.testing.assert_allclose(pool_maps(maps, (4, 4)), maps / maps.max(axis=(1, 2), keepdims=True), rtol=1e-6)
    assert pool_maps(np.zeros((1, 7, 7)), (3, 3)).shape == (1, 7, 7)  # uneven cells, nothing lost
    assert not pool_maps(np.zeros((1, 7, 7)), (3, 3)).any()  # no mass stays no mass
    for grid in ((0, 2), (9, 2)):
        with pytest.raises(ValueError, match="does not fit"):
            pool_maps(np.zeros((1, 8, 8)), grid)


def test_map_grid_is_the_layer_output_or_the_patch_grid():
    resnet, _ = build_model("none", seed=0)
    assert map_grid(resnet, make_spec("gradcam", "layer3", (0, 8)), 128) == (8, 8)
    assert map_grid(resnet, make_spec("gradcam", "layer4"), 128) == (4, 4)
    vit, _ = build_model("none", seed=0, arch="vit_tiny", image_size=64)
    assert map_grid(vit, make_spec("rollout"), 64) == (4, 4)


# ------------------------------------------------------------------------------------------- verdicts
@pytest.mark.parametrize(("diff", "direction", "expected"), [
    (UP, "higher", "supported"), (DOWN, "higher", "contradicted"), (DOWN, "lower", "supported"),
    (UP, "lower", "contradicted"), (ACROSS, "higher", "not shown"), (NOTHING, "lower", "not measurable"),
    (None, "higher", "not measurable")])
def test_claim_verdicts(diff, direction, expected):
    assert arch.claim_verdict(diff, direction) == expected


def test_a_claim_inside_the_margin_is_not_shown():
    assert arch.claim_verdict(TINY, "higher") == "supported"
    assert arch.claim_verdict(TINY, "higher", margin=0.01) == "not shown"


SPEC = {"ResNet": {"value": 0.80, "ci_low": 0.75, "ci_high": 0.85}, "ViT": {"value": 0.85, "ci_low": 0.80, "ci_high": 0.9}}


@pytest.mark.parametrize(("diff", "words"), [
    (UP, "ViT is the more specific model"), (DOWN, "ResNet is the more specific model"),
    (ACROSS, "this run cannot tell the two models apart"), (NOTHING, "nothing to compare")])
def test_the_headline_reads_the_interval(diff, words):
    text = arch.headline_sentence(("ResNet", "ViT"), {"ResNet": 0.98, "ViT": 0.98}, SPEC, diff, "the rule recall ≥ 0.98")
    assert text.startswith("At matched validation sensitivity (0.980 for both") and words in text
    assert "ResNet 0.800 [0.750, 0.850]" in text


def test_the_headline_says_when_the_validation_sensitivities_do_not_match():
    text = arch.headline_sentence(("ResNet", "ViT"), {"ResNet": 0.98, "ViT": 0.99}, SPEC, UP, "recall>=0.98")
    assert "ResNet 0.980 and ViT 0.990" in text and "matched" not in text
    within = arch.headline_sentence(("ResNet", "ViT"), {"ResNet": 0.98, "ViT": 0.98}, SPEC, TINY, "r", margin=0.01)
    assert "detectable but too small to matter" in within


@pytest.mark.parametrize(("where", "better", "diff", "words"), [
    ("outside the lungs", "below", DOWN, "beats a uniform map"),
    ("outside the lungs", "below", UP, "does worse than a uniform map"),
    ("in the lesion", "above", UP, "beats a uniform map"),
    ("in the lesion", "above", DOWN, "does worse than a uniform map"),
    ("outside the lungs", "below", ACROSS, "at the level of a uniform map"),
])
def test_each_map_is_read_against_a_uniform_map(where, better, diff, words):
    text = arch.uniform_sentence("ViT", where, 0.6, 0.65, diff, better, n=40)
    assert f"0.600 of the map {where} vs 0.650 for a uniform map on the same 40 images" in text and words in text


def test_empty_maps_are_counted_never_scored_in_the_sentence():
    text = arch.uniform_sentence("ViT", "outside the lungs", 0.6, 0.65, DOWN, "below", n=38, n_no_map=2)
    assert "2 of 40 ViT maps were empty or constant" in text
    nothing = arch.uniform_sentence("ViT", "outside the lungs", math.nan, math.nan, NOTHING, "below", n=0, n_no_map=3)
    assert "not scored" in nothing and "All 3 ViT maps were empty" in nothing and "0.000" not in nothing
    with pytest.raises(ValueError):
        arch.uniform_sentence("ViT", "x", 0.1, 0.1, UP, "sideways", n=1)


def test_an_empty_map_is_no_map_not_zero_outside_the_lungs():
    maps = np.zeros((3, 16, 16), np.float32)
    maps[1, 4:8, 4:8] = 1.0
    maps[2] = 0.5  # constant: no location either
    lungs = np.zeros((3, 16, 16), bool)
    lungs[:, 2:14, 2:14] = True
    lesions = np.zeros((3, 16, 16), bool)
    lesions[:, 4:8, 4:8] = True
    scores = arch._map_scores(maps, (4, 4), lungs, lesions)
    assert list(scores["no_map"]) == [True, False, True]
    assert scores["outside_lung"].isna().tolist() == [True, False, True]  # never "outside lungs 0.000"
    assert scores.loc[1, "energy"] == pytest.approx(1.0) and scores["energy"].isna().tolist() == [True, False, True]
    assert scores.loc[0, "uniform_outside"] == pytest.approx(1 - lungs[0].mean())
    assert scores.loc[0, "uniform_energy"] == pytest.approx(lesions[0].mean())


# ------------------------------------------------------------------------------------------- end to end
SIZE = 64


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """Two shipped ResNets in a fresh root, one explained on layer3 (4x4 at 64 px), one on layer4 (2x2)."""
    with demo_project(tmp_path_factory, SIZE, (4, 12, 14), n_bootstrap=50) as (cfg, bundle):
        paths = {}
        for k, (name, spec) in enumerate((("fine", make_spec("gradcam", "layer3")),
                                          ("coarse", make_spec("gradcam", "layer4")))):
            model, _ = build_model("phantom", seed=k)
            path = save_checkpoint(cfg.path("model", name), {"model": model.state_dict(), "meta": make_meta(
                image_size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD)})
            val = bundle["val"]
            p_val = predict_proba(model, val.images, {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)})
            record_operating_point(path, threshold_for_recall(val.labels, p_val, cfg["target_recall"]),
                                   cfg["target_recall"])
            update_meta(path, explanation=spec)
            paths[name] = path
        torch.manual_seed(0)
        cmp = arch.compare_architectures(cfg, bundle, paths, device="cpu", latency_runs=1, progress=False)
        yield cfg, bundle, cmp


def test_both_maps_are_scored_on_the_coarser_grid(compared):
    _, bundle, cmp = compared
    assert cmp.models["fine"].grid == (4, 4) and cmp.models["coarse"].grid == (2, 2) and cmp.grid == (2, 2)
    test = bundle["test"]
    fine = cmp.models["fine"]
    rows = cmp.common_tp
    expected = [outside_fraction(m, lung) for m, lung in
                zip(pool_maps(fine.maps[rows], (2, 2)), test.lung_masks[cmp.positives[rows]])]
    np.testing.assert_allclose(fine.scores["outside_lung"].to_numpy()[rows], expected, atol=1e-6)
    assert cmp.lung_source == "ground truth" and set(cmp.vs_uniform["fine"]) == {"outside_lung", "energy"}


def test_the_thresholds_sit_at_the_same_validation_sensitivity(compared):
    cfg, bundle, cmp = compared
    assert cmp.val_sensitivity["fine"] == cmp.val_sensitivity["coarse"] >= cfg["target_recall"]
    for name, m in cmp.models.items():  # the recorded thresholds are the rule's on the full validation set
        assert m.threshold == pytest.approx(cmp.operating["models"][name]["threshold"]["value"])
    assert "coarse - fine" in cmp.operating["differences"]


def test_table_verdicts_record_and_misses_agree(compared):
    cfg, bundle, cmp = compared
    table = arch.comparison_table(cmp)
    assert table.loc["validation sensitivity at the threshold (matched)", "fine"] == f"{cmp.val_sensitivity['fine']:.3f}"
    verdicts = arch.hypothesis_verdicts(cmp)
    assert list(verdicts["claim"]) == [c[0] for c in arch.CLAIMS]
    spec = cmp.operating["differences"]["coarse - fine"]["specificity"]
    assert verdicts.iloc[0]["verdict"] == arch.claim_verdict(spec, "higher")
    fns = arch.false_negative_table(cmp, bundle["test"].ids, filed={})
    n_missed = sum(((m.outcome[cmp.positives] == "FN")) for m in cmp.models.values()).astype(bool).sum()
    assert len(fns) == n_missed
    record = arch.comparison_record(cmp, {"image_size": SIZE}, verdicts, fns, cfg["target_recall"])
    assert record["sentences"][0] == arch.headline(cmp, cfg["target_recall"])
    assert record["map_differences"]["grid"] == [2, 2] and record["map_differences"]["images"] == len(cmp.common_tp)
    path = write_json(cfg.path("vit_comparison"), record)  # JSON-clean
    assert read_json(path)["models"]["coarse"]["map_grid"] == [2, 2]


def test_the_figure_marks_a_pooled_maps_peak_at_its_cells_centre():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.viz import cams

    maps = np.zeros((1, 16, 16), np.float32)
    maps[0, 9, 13] = 1.0
    pooled = pool_maps(maps, (4, 4))  # the top cell: rows 8-11, columns 12-15
    lungs = np.zeros((1, 16, 16), bool)
    lungs[0, 2:14, 2:8] = True
    fig = cams.plot_method_comparison(np.zeros((1, 16, 16), np.uint8), {"own": maps, "pooled": pooled},
                                      lung_masks=lungs, lung_label="lung (estimated)", image_titles=["case 7"])
    peaks = [(ln.get_xdata()[0], ln.get_ydata()[0]) for ax in fig.axes for ln in ax.lines if ln.get_marker() == "P"]
    assert peaks == [(13, 9), (13.5, 9.5)]  # the pixel itself; the centre of the plateau, not its first pixel
    assert fig.axes[0].get_title() == "case 7"
    assert "lung (estimated)" in [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    plt.close(fig)
