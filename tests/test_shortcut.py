"""Notebook 08's measurements: where a map looks relative to a marker, the heuristic's check, the tables."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from utils.data.confounder import MarkerSpec, add_markers
from utils.evaluate.metrics import outcome_groups
from utils.fileio import jsonable
from utils.studies import shortcut as S


def _peak_map(shape: tuple[int, int], r: int, c: int, sigma: float = 2.0) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * sigma ** 2))


def test_marker_scores_see_a_map_on_the_marker():
    marker = np.zeros((3, 32, 32), bool)
    marker[0, 2:6, 2:6] = marker[1, 2:6, 2:6] = True  # image 2 carries no marker
    lesion = np.zeros((3, 32, 32), bool)
    lesion[:, 20:26, 20:26] = True
    maps = np.stack([_peak_map((32, 32), 4, 4), _peak_map((32, 32), 23, 23), _peak_map((32, 32), 23, 23)])
    s = S.marker_scores(maps, marker, lesion)
    assert s["has_marker"].tolist() == [True, True, False]
    assert s.loc[0, "marker_pointing"] == 1.0 and s.loc[0, "marker_mass"] > 0.4 and s.loc[0, "lesion_near"] == 0.0
    assert s.loc[1, "marker_pointing"] == 0.0 and s.loc[1, "marker_mass"] < 0.05 and s.loc[1, "lesion_near"] == 1.0
    assert np.isnan(s.loc[2, "marker_mass"]) and np.isnan(s.loc[2, "marker_pointing"])
    assert "lesion_mass" not in S.marker_scores(maps, marker).columns


def test_marker_scores_call_an_empty_map_no_map():
    marker = np.zeros((3, 32, 32), bool)
    marker[:, 2:6, 2:6] = True
    maps = np.stack([_peak_map((32, 32), 4, 4), np.zeros((32, 32)), np.full((32, 32), 0.3)])  # peak, zero, constant
    s = S.marker_scores(maps, marker)  # the default, as every scorer of utils.explain.localisation
    assert s["no_map"].tolist() == [False, True, True]
    assert np.isnan(s.loc[1:, ["marker_mass", "marker_pointing"]].to_numpy()).all()
    assert s.loc[0, "marker_pointing"] == 1.0
    first = S.marker_scores(maps, marker, skip_empty=False)  # the series' first rule: scored as a miss
    assert first.loc[1, "marker_mass"] == 0.0 and first.loc[1, "marker_pointing"] == 0.0
    assert first.loc[2, "marker_mass"] == pytest.approx(16 / 1024)  # a constant map: the uniform share
    assert first["no_map"].tolist() == [False, True, True]  # still said


def test_real_marker_summary_counts_per_group():
    found = np.zeros((5, 16, 16), bool)
    found[:3, 1:4, 1:4] = found[4, 1:4, 1:4] = True
    maps = np.stack([_peak_map((16, 16), 2, 2), _peak_map((16, 16), 12, 12), _peak_map((16, 16), 2, 2),
                     _peak_map((16, 16), 2, 2), np.zeros((16, 16))])
    table = S.real_marker_summary(maps, found, np.array(["TP", "TP", "FN", "FP", "FN"])).set_index("group")
    assert table.loc["TP", "images"] == 2 and table.loc["TP", "with_marker"] == 2 and table.loc["TP", "peak_on_marker"] == 1
    assert table.loc["TP", "peak_on_marker_share"] == 0.5 and table.loc["TP", "no_map"] == 0
    # an empty map of a marked FN is counted as "no map", never as a peak away from the marker
    assert table.loc["FN", "with_marker"] == 2 and table.loc["FN", "no_map"] == 1
    assert table.loc["FN", "peak_on_marker"] == 1 and table.loc["FN", "peak_on_marker_share"] == 1.0
    assert table.loc["FP", "with_marker"] == 0 and np.isnan(table.loc["FP", "median_mass_on_marker"])


def test_finds_sample_puts_finds_first_and_fills_up():
    found = np.zeros((30, 4, 4), bool)
    found[[3, 9, 20], 0, 0] = True
    idx = S.finds_sample(found, n=6, n_found=2)
    assert len(idx) == 6 and set(idx) >= {3, 9} and 20 not in idx and list(idx) == sorted(idx)
    assert len(S.finds_sample(found[:2], n=6)) == 2
    assert set(S.finds_sample(np.ones((5, 2, 2), bool), n=4, n_found=2)) == {0, 1, 2, 3}  # only finds: still 4


def test_finder_check_on_planted_markers():
    rng = np.random.default_rng(0)
    clean = (40 + 10 * rng.random((12, 96, 96))).astype(np.uint8)
    marked, regions, has = add_markers(clean, np.ones(12, int), "correlated", seed=0,
                                       spec=MarkerSpec(p_marker_pneumonia=1.0))
    check = S.finder_check(marked, regions, clean)
    assert check["markers"] == 12 and check["recall"] >= 0.9
    assert check["clean_flagged"] == 0.0 and 0.0 <= check["false_finds_share"] <= 0.2


def test_outcome_groups_follow_the_decision_rule():
    kinds = outcome_groups([1, 1, 0, 0, 1], [0.7, 0.2, 0.6, 0.1, 0.5], 0.5)
    assert kinds.tolist() == ["TP", "FN", "FP", "TN", "TP"]  # prob == threshold is PNEUMONIA


@pytest.fixture(scope="module")
def boot():
    """Three models on three test versions of the same 200 images: the control and the remedy see through the
    marker; the confounded model's scores follow it, so they rank the classes backwards on the reversed test."""
    rng = np.random.default_rng(1)
    y_val, y_test = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    good = lambda y: np.clip(y * 0.3 + rng.random(len(y)) * 0.5, 0, 1)  # noqa: E731
    val = {m: good(y_val) for m in S.MODELS}
    blind = {m: good(y_test) for m in ("control", "remedy")}  # blind to the marker: one score per image
    probs = {m: {v: blind[m] for v in S.TESTS} for m in ("control", "remedy")}
    follows = {"in-distribution": y_test, "decorrelated": rng.integers(0, 2, 200), "reversed": 1 - y_test}
    probs["confounded"] = {v: np.clip(0.6 * follows[v] + 0.4 * rng.random(200), 0, 1) for v in S.TESTS}
    groups = np.arange(200) // 2  # two images per patient
    return probs, S.paired_bootstrap(y_val, val, y_test, probs, 0.9, groups, groups, n_boot=60, seed=0)


@pytest.fixture(scope="module")
def paired(boot):
    return boot[1][0]


def test_one_bootstrap_pairs_models_and_test_versions(boot):

    probs, (paired, shift) = boot
    assert set(paired) == set(S.TESTS) and set(shift) == set(S.MODELS)
    assert set(paired["reversed"]["differences"]) == {"confounded - remedy", "confounded - control",
                                                      "remedy - control"}
    assert set(shift["confounded"]) == {"in-distribution - decorrelated", "in-distribution - reversed"}
    y = paired["reversed"]["models"]["control"]["roc_auc"]  # the point values are the AUCs of the full test set
    drop = shift["confounded"]["in-distribution - reversed"]["roc_auc"]
    aucs = {v: paired[v]["models"]["confounded"]["roc_auc"]["value"] for v in S.TESTS}
    assert drop["value"] == pytest.approx(aucs["in-distribution"] - aucs["reversed"])
    assert 0 <= y["ci_low"] <= y["value"] <= y["ci_high"] <= 1
    assert drop["ci_low"] > 0.5  # the marker-follower ranks backwards on the reversed test: a drop far from zero
    control = shift["control"]["in-distribution - reversed"]["roc_auc"]
    assert control["value"] == control["ci_low"] == control["ci_high"] == 0.0  # the same scores on every version
    # the models on one version and the versions of one model share the resamples: one table each
    assert len(S.version_table(shift)) == 3 * 2 * 3


def _marker_case():
    """Four 32-px images, marker top-left, lesion bottom-right; maps of three models with and without it."""
    regions = np.zeros((4, 32, 32), bool)
    regions[:, 1:6, 1:6] = True
    lesion = np.zeros((4, 32, 32), bool)
    lesion[:, 22:28, 22:28] = True
    on_marker, on_lesion = _peak_map((32, 32), 3, 3), _peak_map((32, 32), 25, 25)
    both = on_marker + on_lesion
    four = lambda m: np.stack([m] * 4)  # noqa: E731
    maps = {"control": four(on_lesion), "confounded": four(both), "remedy": four(on_lesion)}
    without = {"control": four(on_lesion), "confounded": four(on_lesion), "remedy": four(on_lesion)}
    return maps, without, regions, lesion


def test_marker_attention_measures_what_the_marker_drew():
    maps, without, regions, lesion = _marker_case()
    table, diffs, uniform = S.marker_attention(maps, without, regions, np.array(["a", "a", "b", "c"]), lesion,
                                               n_boot=50, seed=0)
    table = table.set_index("model")
    assert uniform == pytest.approx(25 / 1024)
    assert table.loc["confounded", "marker_pointing"] == 1.0 and table.loc["confounded", "marker_pointing_without"] == 0
    assert table.loc["control", "marker_mass"] < uniform < table.loc["confounded", "marker_mass"]
    drawn = diffs["confounded - control"]["marker_drawn"]
    assert drawn["value"] == pytest.approx(table.loc["confounded", "marker_mass"]
                                           - table.loc["confounded", "marker_mass_without"])
    assert drawn["ci_low"] > uniform  # identical images: the interval is the point
    assert diffs["remedy - control"]["marker_drawn"]["value"] == 0.0
    assert diffs["confounded: with - without marker"]["marker_mass"]["value"] == pytest.approx(drawn["value"])
    # a model whose map is simply broader has more mass on the marker region, with the marker or without it:
    # that is no attention to the marker, and the drawn mass says so
    broad = _peak_map((32, 32), 16, 16, sigma=30.0)
    maps2 = {"control": np.stack([broad] * 4), "confounded": np.stack([broad] * 4)}
    _, d2, _ = S.marker_attention(maps2, maps2, regions, np.arange(4), n_boot=20)
    assert d2["confounded - control"]["marker_drawn"]["value"] == 0.0
    assert "confounded - remedy" not in d2
    # an empty map is "no map": counted, left out of every score and difference, never read as "not on the marker"
    maps3 = dict(maps, control=np.zeros((4, 32, 32)))
    table3, d3, _ = S.marker_attention(maps3, dict(without, control=np.zeros((4, 32, 32))), regions, np.arange(4),
                                       lesion, n_boot=20)
    row = table3.set_index("model").loc["control"]
    assert row["no_map"] == 4 and np.isnan(row["marker_mass"]) and np.isnan(row["lesion_mass"])
    assert d3["confounded - control"]["marker_drawn"]["n"] == 0
    assert np.isnan(d3["confounded - control"]["marker_drawn"]["value"])


def test_tables_of_the_paired_bootstrap(paired):
    table = S.shortcut_table(paired)
    assert len(table) == 3 * 3 * 3 and set(table["metric"]) == {"roc_auc", "sensitivity", "specificity"}
    assert (table["ci_low"] <= table["value"] + 1e-9).all() and (table["value"] <= table["ci_high"] + 1e-9).all()
    diffs = S.differences_table(paired)
    assert set(diffs["difference"]) == {"confounded - remedy", "confounded - control", "remedy - control"}
    assert diffs["estimate [95% CI]"].str.match(r"^[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]$").all()
    att = S.attention_table({"confounded - control": {"marker_mass": {"value": 0.2, "ci_low": 0.1, "ci_high": 0.3,
                                                                       "p_le_0": 0.0, "n": 9}}})
    assert att.iloc[0].to_dict() == {"difference": "confounded - control", "metric": "marker_mass", "value": 0.2,
                                     "ci_low": 0.1, "ci_high": 0.3, "n": 9}


def test_shortcut_record_is_strict_json_with_the_named_words(paired):
    run = S.ShortcutRun(MarkerSpec(), {"name": "Grad-CAM @ layer3"}, {m: f"{m}.pt" for m in S.MODELS},
                        {m: 0.3 for m in S.MODELS}, {}, {}, {}, {}, {}, paired, S.shortcut_table(paired),
                        world="64 px", attention=pd.DataFrame([{"model": "control", "marker_mass": np.nan}]))
    record = S.shortcut_record(run, {"recall": 1.0}, None, {"image_size": 64})
    text = json.dumps(jsonable(record), allow_nan=False)
    for word in ("marker", "decorrelated", "control", "remedy", "auc"):
        assert word in text
    assert set(record["auc"]) == set(S.MODELS) and set(record["auc"]["remedy"]) == set(S.TESTS)
    expected = paired["decorrelated"]["models"]["control"]["roc_auc"]["value"]
    assert record["auc"]["control"]["decorrelated"]["value"] == expected


def _ci(v, lo, hi):
    return {"value": v, "ci_low": lo, "ci_high": hi}


def _record(drops, drawn_vs, uniform=0.01, own=(0.05, 0.03, 0.07), vs_conf=(0.3, 0.2, 0.4)):
    """A record: each model's in-distribution − reversed AUC drop, the marker mass drawn (confounded − control,
    confounded − remedy), the uniform share, and the remedy's reversed AUC against the confounded model's."""
    shift = {m: {"in-distribution - reversed": {"roc_auc": _ci(*d)}} for m, d in zip(S.MODELS, drops)}
    rev = {"confounded - control": {"roc_auc": _ci(-0.4, -0.5, -0.3)},
           "confounded - remedy": {"roc_auc": _ci(-vs_conf[0], -vs_conf[2], -vs_conf[1])},
           "remedy - control": {"roc_auc": _ci(0.0, -0.02, 0.02)}}
    per_model = [{"model": m, "marker_pointing": 0.1, "marker_pointing_without": 0.0} for m in S.MODELS]
    return {"version_differences": shift, "operating_point": {"reversed": {"differences": rev}},
            "attention_decorrelated_test": {
                "uniform_share": uniform, "per_model": per_model,
                "paired_differences": {"confounded: with - without marker": {"marker_mass": _ci(*own)},
                                       "confounded - control": {"marker_drawn": _ci(*drawn_vs[0])},
                                       "confounded - remedy": {"marker_drawn": _ci(*drawn_vs[1])}}}}


def test_shortcut_verdict_follows_the_intervals():
    flat = (0.0, -0.02, 0.02)
    learned = S.shortcut_verdict(_record([flat, (0.6, 0.5, 0.7), flat], [(0.04, 0.02, 0.06), (0.05, 0.03, 0.07)]))
    assert learned[0].startswith("The confounded model used the marker") and "+0.600 [+0.500, +0.700]" in learned[0]
    assert learned[1].startswith("The explanation showed it") and "0.010" in learned[1]
    assert "confounded 0.10 / 0.00" in learned[1]  # pointing with / without the marker, per model
    assert learned[2].startswith("The remedy recovered") and "+0.300 [+0.200, +0.400]" in learned[2]
    # the real-data case of the claims issue: detectable, but below what a uniform map puts on the marker region
    small = S.shortcut_verdict(_record([flat, (0.3, 0.2, 0.4), flat], [(0.017, 0.012, 0.023), (0.015, 0.002, 0.03)],
                                       uniform=0.02))
    assert small[1].startswith("The maps moved to the marker detectably but by less than")
    # maps that move as much for the remedy (which never sees the marker) single nothing out
    same = S.shortcut_verdict(_record([flat, (0.3, 0.2, 0.4), flat], [(0.04, 0.02, 0.06), (0.0, -0.01, 0.01)]))
    assert same[1].startswith("The explanation did not single out")
    # the phantom-pretrained demo's old null: nothing moved
    null = S.shortcut_verdict(_record([flat, (0.001, -0.003, 0.004), flat], [flat, flat], vs_conf=flat))
    assert null[0].startswith("No evidence") and null[2].startswith("The remedy lost no AUC")
    tiny = S.shortcut_verdict(_record([flat, (0.004, 0.001, 0.008), flat], [flat, flat]))
    assert "negligibly" in tiny[0]
    both = S.shortcut_verdict(_record([(0.3, 0.2, 0.4), (0.6, 0.5, 0.7), (0.3, 0.2, 0.4)], [flat, flat]))
    assert both[0].startswith("Both the confounded model and the control") and both[2].startswith("The remedy did not")
    nan = (float("nan"),) * 3
    assert "not measured" in S.shortcut_verdict(_record([flat] * 3, [nan, nan], own=nan))[1]
    # the control and the remedy gave no map (empty PNEUMONIA maps): said, not scored as "no attention"
    alone = _record([flat, (0.6, 0.5, 0.7), flat], [nan, nan])
    for row in alone["attention_decorrelated_test"]["per_model"]:
        row.update(images=40, no_map=40 if row["model"] != "confounded" else 0)
    lines = S.shortcut_verdict(alone)
    assert lines[1].startswith("The confounded model's own maps moved to the marker, but not every other model")
    assert "not comparable with the control's (no map)" in lines[1] and "control 40 of 40" in lines[1]
    # the confounded model itself gave no map with and without the marker: nothing to compare, the counts said
    empty = _record([flat, (0.6, 0.5, 0.7), flat], [nan, nan], own=nan)
    for row in empty["attention_decorrelated_test"]["per_model"]:
        row.update(images=40, no_map=39 if row["model"] == "confounded" else 0,
                   no_map_without=40 if row["model"] == "confounded" else 0)
    words = S.shortcut_verdict(empty)[1]
    assert words.startswith("The maps were not measured against the marker")
    assert "no map (empty or constant) on 39 of 40 marked images with the marker and on 40 of 40 without it" in words


def test_shortcut_verdict_reads_each_difference_by_the_project_rule():
    flat = (0.0, -0.02, 0.02)
    # the confounded model drew detectably *less* than the control (interval below zero, inside the margin): no sign
    # that the explanation singled it out — not "detectable but small"
    less = S.shortcut_verdict(_record([flat, (0.3, 0.2, 0.4), flat], [(-0.004, -0.006, -0.002), (0.04, 0.02, 0.06)]))
    assert less[1].startswith("The explanation did not single out")
    # an AUC drop whose interval is above zero but whose estimate is below min_auc: negligible, whatever min_auc is
    for margin in (0.02, 0.05):
        words = S.shortcut_verdict(_record([flat, (0.015, 0.005, 0.03), flat], [flat, flat]), min_auc=margin)
        assert "negligibly" in words[0] and f"less than {margin}" in words[0]
    # the same drop with a margin it clears is a shortcut
    assert S.shortcut_verdict(_record([flat, (0.015, 0.005, 0.03), flat], [flat, flat]), min_auc=0.01)[0].startswith(
        "The confounded model used the marker")


def test_a_record_of_the_first_design_gets_no_verdict():
    """A record without version differences (notebook 08's first design: no map of the same image without the
    marker) says why no verdict is read from it, whatever its numbers."""
    rev = {"confounded - control": {"roc_auc": _ci(-0.335, -0.377, -0.289)},
           "remedy - control": {"roc_auc": _ci(0.004, 0.0, 0.010)}}
    record = {"operating_point": {"reversed": {"differences": rev}},
              "attention_decorrelated_test": {"paired_differences": {"confounded - control": {
                  "marker_mass": _ci(0.017, 0.012, 0.023)}}}}
    lines = S.shortcut_verdict(record)
    assert len(lines) == 1 and "first design" in lines[0] and "no verdict" in lines[0]
    assert "showed it" not in lines[0]


def test_dose_response_trains_one_model_per_new_level_in_the_run_s_world(monkeypatch):
    """Each level other than the run's own trains a confounded model on the clean world with that marker rate, under
    its own tag; the run's confounded model and control are added as they are; AUCs are read from the scores."""
    from dataclasses import replace

    from helpers import phantom_split

    from utils.config import get_config
    from utils.data.bundle import DataBundle, fingerprint
    from utils.data.confounder import confounded_bundle

    cfg = get_config("demo", image_size=32, quiet=True)
    splits = {name: phantom_split(name, n, seed, pid, 32) for name, n, seed, pid in
              (("train", 4, 1, 1), ("val", 4, 2, 101), ("test", 8, 3, 201))}
    bundle = DataBundle("phantom", 32, splits, fingerprint(splits))
    y = bundle["test"].labels.astype(float)
    assert 0 < y.mean() < 1
    trained: list[tuple[str, str]] = []

    def fake_training(wcfg, world, device, progress, tag):
        trained.append((tag, world.fingerprint))
        return tag

    monkeypatch.setattr(S, "ensure_evaluation", fake_training)
    monkeypatch.setattr(S, "load_model", lambda path, dev: (path, {}))
    monkeypatch.setattr(S, "predict_proba", lambda model, images, meta, device: 0.25 + 0.5 * y)  # ranks perfectly
    run = S.ShortcutRun(MarkerSpec(), {"name": "Grad-CAM"}, {}, {}, {},
                        {v: {"confounded": bundle["test"]} for v in S.TESTS}, {},
                        {"confounded": {v: 1 - y for v in S.TESTS}, "control": {v: 0.5 * y for v in S.TESTS}}, {}, {},
                        pd.DataFrame())
    table = S.dose_response(cfg, bundle, run, levels=(0.5, 0.9), world=S.ShortcutWorld(), device="cpu",
                            progress=False, n_boot=20)
    half = replace(MarkerSpec(), p_marker_pneumonia=0.5, p_marker_normal=0.5)
    assert trained == [("shortcut_confounded_q050", confounded_bundle(bundle, "correlated", cfg["seed"],
                                                                       half).fingerprint)]  # 0.9 is the run's own
    auc = table.set_index(["model", "p_marker_pneumonia", "test"])["roc_auc"]
    assert len(table) == 3 * 2 and set(table["test"]) == {"decorrelated", "reversed"}
    assert auc[("confounded", 0.5, "reversed")] == 1.0 and auc[("confounded", 0.9, "reversed")] == 0.0
    assert table.loc[table["model"] == "control", "roc_auc"].tolist() == [1.0, 1.0]
    assert (table["ci_low"] <= table["roc_auc"]).all() and (table["roc_auc"] <= table["ci_high"]).all()


def test_map_examples_pair_each_model_with_the_image_it_saw():
    from helpers import phantom_split

    test = phantom_split("test", 8, 3, 201, 32)
    marked, regions, _ = S.confounded_split(test, "decorrelated", 0, MarkerSpec(p_marker_pneumonia=1.0,
                                                                                p_marker_normal=1.0))
    cleaned = S.cleaned_split(marked)
    idx = S._mapped_images(regions, test.labels, 6, seed=0)
    marked_any = regions.reshape(len(regions), -1).any(axis=1)
    assert marked_any.sum() <= 6 and list(idx) == list(np.flatnonzero(marked_any))  # few marked: every one mapped
    assert (test.labels[idx] == 1).sum() >= 2 and (test.labels[idx] == 0).sum() >= 1
    maps = {m: np.random.default_rng(k).random((len(idx), 32, 32)) for k, m in enumerate(S.MODELS)}
    probs = {m: {"decorrelated": np.full(len(test), 0.1 * (k + 1))} for k, m in enumerate(S.MODELS)}
    run = S.ShortcutRun(MarkerSpec(), {"name": "x"}, {}, {}, {"decorrelated": marked},
                        {"decorrelated": {"control": marked, "confounded": marked, "remedy": cleaned}},
                        {"decorrelated": regions}, probs, {}, {}, pd.DataFrame(), clean_test=test, map_index=idx,
                        maps=maps, maps_clean={m: 1 - v for m, v in maps.items()})
    ex = S.map_examples(run, n_pneumonia=2, n_normal=1)
    shown = np.r_[idx[test.labels[idx] == 1][:2], idx[test.labels[idx] == 0][:1]]
    assert list(ex["maps"]) == ["control", "confounded", "confounded, no marker", "remedy"]
    assert np.array_equal(ex["images"]["confounded"], marked.images[shown])
    assert np.array_equal(ex["images"]["confounded, no marker"], test.images[shown])  # the marker's absence
    assert np.array_equal(ex["images"]["remedy"], cleaned.images[shown])  # the remedy's own input
    pos = np.searchsorted(idx, shown)
    assert np.array_equal(ex["maps"]["confounded, no marker"], 1 - maps["confounded"][pos])
    assert ex["titles"][0].endswith("PNEUMONIA · p = 0.10 / 0.20 / 0.30") and "NORMAL" in ex["titles"][2]
    assert np.array_equal(ex["regions"], regions[shown]) and ex["lesion_masks"].shape == (3, 32, 32)


def test_attention_and_dose_figures_keep_their_keys_off_the_data():
    from test_figure_layout import CAPTION, layout_problems

    from utils.viz import shortcut as shortcut_plots
    from utils.viz.common import set_caption

    set_caption(CAPTION)
    try:
        nan = float("nan")
        attention = pd.DataFrame([
            {"model": "control", "marker_mass": 0.02, "marker_mass_without": 0.02, "marker_pointing": 0.1,
             "marker_pointing_without": 0.1},
            {"model": "confounded", "marker_mass": 0.2, "marker_mass_without": 0.03, "marker_pointing": 0.3,
             "marker_pointing_without": 0.0},
            {"model": "remedy", "marker_mass": nan, "marker_mass_without": nan, "marker_pointing": nan,
             "marker_pointing_without": nan}])  # every remedy map empty
        fig = shortcut_plots.plot_marker_attention(attention, 0.017)
        assert layout_problems(fig) == []
        assert sum(t.get_text() == "no map" for ax in fig.axes for t in ax.texts) == 4  # said, not drawn as zero
        assert "uniform map (0.017)" in [t.get_text() for leg in fig.legends for t in leg.get_texts()]
        dose = pd.DataFrame([{"model": m, "p_marker_pneumonia": q, "test": t, "roc_auc": a, "ci_low": a - 0.05,
                              "ci_high": min(1.0, a + 0.05)}
                             for m, q, a in (("confounded", 0.5, 0.9), ("confounded", 0.9, 0.3), ("control", nan, 0.9))
                             for t in ("decorrelated", "reversed")])
        fig = shortcut_plots.plot_dose_response(dose)
        assert layout_problems(fig) == []
        assert [tick.get_text() for tick in fig.axes[0].get_xticklabels()] == ["0.5", "0.9"]
    finally:
        set_caption("")


def test_the_phantom_world_is_its_own_and_the_shipped_world_reuses_the_bundle(tmp_path, monkeypatch):
    from utils.config import get_config
    from utils.data import load_data

    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path))
    cfg = get_config("demo", image_size=48, phantom={"n_patients_train": 14, "n_patients_test": 6}, quiet=True)
    bundle = load_data(cfg, progress=False)
    main = sorted(p.name for p in cfg.path("phantom_dir").rglob("*") if p.is_file())
    same_cfg, same_bundle, shipped_world = S.world_setup(cfg, bundle, S.ShortcutWorld())
    assert shipped_world and same_cfg is cfg and same_bundle is bundle
    world = S.ShortcutWorld(image_size=32, weights="none", phantom={"difficulty": "easy"})
    wcfg, wbundle, shipped_world = S.world_setup(cfg, bundle, world)
    assert not shipped_world and wbundle.image_size == 32 and wcfg["weights"] == "none"
    assert wcfg.knobs["image_size"] == 32 and cfg.knobs["image_size"] == 48  # the notebook's config is untouched
    assert wbundle.fingerprint != bundle.fingerprint and wbundle["test"].lesion_masks is not None
    assert cfg.path("phantom_dir", "shortcut").is_dir()  # its own folder; the main phantoms are not rewritten
    assert sorted(p.name for p in cfg.path("phantom_dir").rglob("*") if p.is_file()) == main
    big = S.world_setup(cfg, bundle, S.ShortcutWorld(image_size=96))[1]
    assert big.image_size == 48  # never above the notebook's image size
    assert world.describe(cfg) == "32 px, a random start, 3 + 3 epochs, easy phantom lesions"
    # what the checkpoints say the models started from wins over what was asked (ImageNet offline: a random start)
    asked = S.ShortcutWorld(weights="imagenet").describe(cfg)
    assert "ImageNet weights where they can be fetched" in asked
    done = S.ShortcutWorld(weights="imagenet").describe(cfg, "random initialisation (ImageNet weights unavailable)")
    assert "ImageNet" not in done.replace("(ImageNet weights unavailable)", "") and "random initialisation" in done
    assert S.DEMO_WORLD.describe(cfg) == ("48 px, a random start, 3 + 5 epochs (phase-2 rate held for 4), easy phantom "
                                          "lesions")
    knobs = get_config("demo", image_size=48, epochs_phase2=2, quiet=True)
    assert S.DEMO_WORLD.settings(knobs)["phase2"]["epochs"] == 2  # epochs set by the notebook win


def test_confounded_world_and_marked_test_are_what_the_experiment_trains_and_tests_on(tmp_path, monkeypatch):
    from utils.config import get_config
    from utils.data import load_data
    from utils.data.confounder import confounded_bundle

    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path))
    cfg = get_config("demo", image_size=32, phantom={"n_patients_train": 14, "n_patients_test": 6}, quiet=True)
    bundle = load_data(cfg, progress=False)
    assert S.default_world("phantom") == S.DEMO_WORLD and S.default_world("folder") == S.ShortcutWorld()
    wcfg, world = S.confounded_world(cfg, bundle)  # None: the default world of the source (the demo's)
    clean = S.world_setup(cfg, bundle)[1]
    assert world.fingerprint == confounded_bundle(clean, "correlated", cfg["seed"], MarkerSpec()).fingerprint
    assert wcfg["weights"] == "none" and world.image_size == 32
    split, regions = S.marked_test(cfg, bundle, "reversed")
    assert len(split) == len(clean["test"]) and regions.shape == split.images.shape
    marked = regions.reshape(len(regions), -1).any(axis=1)
    assert (split.images[~marked] == clean["test"].images[~marked]).all()
    with pytest.raises(ValueError, match="unknown test version"):
        S.marked_test(cfg, bundle, "shuffled")


def test_the_parameters_cell_turns_the_demo_world():
    world = S.world_from_knobs("phantom", 48, "phantom", "hard")
    assert world == S.ShortcutWorld(48, "phantom", S.DEMO_WORLD.epochs, {"difficulty": "hard"}, S.DEMO_WORLD.phase2)
    assert S.world_from_knobs("phantom") == S.DEMO_WORLD
    assert S.world_from_knobs("folder", 64, "none", "easy") == S.ShortcutWorld()  # real data: the loaded run


def test_compare_records_reads_every_number_from_the_records(paired):
    def record(auc, scale, world=None):
        rec = {"auc": {m: {v: {"value": auc[m][k]} for k, v in enumerate(S.TESTS)} for m in auc}, "scale": scale}
        return rec | ({"world": world} if world else {})

    this = record({"confounded": (0.96, 0.78, 0.24), "control": (0.92, 0.92, 0.91)}, {"data": "phantom"}, "64 px, …")
    real = record({"confounded": (0.99, 0.86, 0.65), "control": (0.99, 0.99, 0.99)},
                  {"data": "folder", "image_size": 128, "epochs": [1, 2]})
    table = S.compare_records({"this run": this, "real": real, "missing": None})
    assert list(table["run"]) == ["this run", "this run", "real", "real"]
    assert table["scale"].tolist()[::2] == ["phantom X-rays: 64 px, …", "Kermany chest X-rays: 128 px, 1 + 2 epochs"]
    row = table.iloc[0]
    assert row["reversed"] == 0.24 and row["in-distribution - reversed"] == pytest.approx(0.72)


def test_dose_levels_default_to_phantoms_only_and_refuse_a_non_probability():
    from utils.errors import UserError
    assert S.dose_levels("phantom") == S.PHANTOM_DOSE_LEVELS
    assert S.dose_levels("folder") == () and S.dose_levels("medmnist") == ()
    assert S.dose_levels("folder", [0.6]) == (0.6,) and S.dose_levels("phantom", ()) == ()
    with pytest.raises(UserError, match="dose levels"):
        S.dose_levels("phantom", [1.5])
