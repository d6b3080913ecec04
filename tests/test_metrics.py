"""Behaviour of utils.evaluate.metrics against hand-computed cases and synthetic data."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from utils.evaluate import metrics as M
from utils.fileio import update_json_section

# 10 images, 5 positives. At t = 0.5: TP = 4 (.9 .8 .7 .6), FN = 1 (.3), FP = 1 (.65), TN = 4.
Y10 = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
P10 = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.65, 0.4, 0.2, 0.1, 0.05])


def synthetic(n: int, seed: int = 0, scale: float = 1.0, n_patients: int | None = None):
    """Labels, calibrated probabilities (optionally over/under-confident via ``scale``) and patient ids."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0.5, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(int)
    prob = 1 / (1 + np.exp(-scale * true_logit))
    groups = rng.integers(0, n_patients or n, n).astype(str)
    return y, prob, groups


# --------------------------------------------------------------------------------------- thresholds
def test_threshold_metrics_hand_computed():
    m = M.threshold_metrics(Y10, P10, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (4, 1, 4, 1)
    assert m["sensitivity"] == pytest.approx(0.8) and m["specificity"] == pytest.approx(0.8)
    assert m["precision"] == pytest.approx(0.8) and m["npv"] == pytest.approx(0.8)
    assert m["f1"] == pytest.approx(0.8) and m["accuracy"] == pytest.approx(0.8)
    m = M.threshold_metrics(Y10, P10, 0.62)  # .65 (neg) and .7 .8 .9 (pos) above; .6 now missed
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 1, 4, 2)
    assert m["precision"] == pytest.approx(0.75) and m["npv"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(6 / 9)


def test_threshold_metrics_undefined_rates_are_nan():
    m = M.threshold_metrics([1, 1, 1], [0.1, 0.2, 0.3], 0.9)  # no negatives, nobody called positive
    assert math.isnan(m["specificity"]) and math.isnan(m["precision"])
    assert m["sensitivity"] == 0.0 and m["fn"] == 3


def test_youden_and_choose_thresholds():
    # J at 0.6 = 0.8 - 0.2 = 0.6 ties J at 0.3 = 1.0 - 0.4; the higher threshold wins
    assert M.youden_threshold(Y10, P10) == pytest.approx(0.6)
    th = M.choose_thresholds(Y10, P10, 0.98)
    assert th == {"recall>=0.98": pytest.approx(0.3), "youden": pytest.approx(0.6), "0.5": 0.5}


# ----------------------------------------------------------------------------------- threshold-free
def test_threshold_free_metrics_hand_and_sklearn():
    m = M.threshold_free_metrics(Y10, P10)
    assert m["roc_auc"] == pytest.approx(22 / 25)  # 3 discordant pairs (.3<.65, .3<.4, .6<.65)
    assert m["brier"] == pytest.approx(np.mean((P10 - Y10) ** 2))
    assert 0 < m["pr_auc"] <= 1
    one_class = M.threshold_free_metrics([1, 1], [0.2, 0.9])
    assert math.isnan(one_class["roc_auc"]) and math.isnan(one_class["pr_auc"])


def test_ece_zero_when_calibrated_and_large_when_not():
    # each bin's mean probability equals its positive fraction: 0.25 -> 1 of 4, 0.75 -> 3 of 4
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    p = [0.25] * 4 + [0.75] * 4
    assert M.expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)
    assert M.expected_calibration_error([0, 0, 1, 1], [0.95, 0.9, 0.05, 0.1]) == pytest.approx(0.925)
    table = M.reliability_curve(y, p, n_bins=4)
    assert table["count"].tolist() == [0, 4, 0, 4]
    assert table.loc[1, "frac_pos"] == pytest.approx(0.25) and table.loc[3, "mean_pred"] == pytest.approx(0.75)
    assert M.reliability_curve([1], [1.0], n_bins=10)["count"].iloc[-1] == 1  # p = 1 in the last bin


# ---------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_interval_contains_point_and_shrinks_with_n():
    widths = []
    for n in (100, 2000):
        y, p, _ = synthetic(n, seed=4)
        sens = M.evaluate_predictions(y, p, 0.5, n_boot=300, seed=0)["metrics"]["sensitivity"]
        assert sens["ci_low"] <= sens["value"] <= sens["ci_high"]
        widths.append(sens["ci_high"] - sens["ci_low"])
    assert widths[1] < widths[0] / 2  # the width falls like 1/sqrt(n): 20x the images, ~4.5x narrower


def test_bootstrap_is_seeded():
    y, p, g = synthetic(200, seed=5, n_patients=60)
    auc = lambda seed: M.evaluate_predictions(y, p, 0.5, g, 100, seed=seed)["metrics"]["roc_auc"]  # noqa: E731
    assert auc(1) == auc(1)
    assert auc(1) != auc(2)


def test_percentile_interval_ignores_undefined_resamples():
    values = np.r_[np.arange(101.0), np.nan, np.inf, -np.inf]
    assert M.percentile_interval(values, 0.1) == {"ci_low": 5.0, "ci_high": 95.0}  # percentiles 5 and 95 of 0..100
    empty = M.percentile_interval([np.nan, np.inf])
    assert math.isnan(empty["ci_low"]) and math.isnan(empty["ci_high"])


def test_patient_resampling_keeps_patients_whole():
    groups = np.repeat(np.array(["a", "b", "c", "d", "e"]), [1, 2, 3, 4, 5])
    size = {g: (groups == g).sum() for g in set(groups)}
    for idx in M.bootstrap_indices(groups.size, groups, n_boot=50, seed=0):
        drawn = groups[idx]
        for g in set(drawn):  # every drawn patient comes with all its images, k times over
            count = (drawn == g).sum()
            assert count % size[g] == 0
            assert np.bincount(idx[drawn == g]).max() == count // size[g]
            assert set(idx[drawn == g]) == set(np.flatnonzero(groups == g))
    # image-level resampling does split patients
    split = [any((groups[idx] == g).sum() % size[g] for g in set(groups[idx]))
             for idx in M.bootstrap_indices(groups.size, None, n_boot=50, seed=0)]
    assert any(split)


def test_bootstrap_skips_undefined_resamples():
    y = np.array([1] * 19 + [0])  # one negative: many resamples have no negatives
    p = np.linspace(0.05, 0.95, 20)
    res = M.evaluate_predictions(y, p, 0.5, n_boot=200, seed=0)
    skipped = res["bootstrap"]["n_skipped"]
    assert 0 < skipped["specificity"] < 200 and skipped["roc_auc"] == skipped["specificity"]
    assert skipped["sensitivity"] == 0
    assert not math.isnan(res["metrics"]["roc_auc"]["ci_low"])


def test_evaluate_predictions_structure_and_consistency():
    y, p, g = synthetic(300, seed=6, n_patients=100)
    res = M.evaluate_predictions(y, p, 0.4, groups=g, n_boot=100, seed=0)
    assert list(res["metrics"]) == list(M.HEADLINE_METRICS)
    assert res["n"] == 300 and res["n_patients"] == len(set(g)) and res["bootstrap"]["unit"] == "patient"
    for name, entry in res["metrics"].items():
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name
    assert res["metrics"]["sensitivity"]["value"] == M.threshold_metrics(y, p, 0.4)["sensitivity"]
    draws = [M.threshold_metrics(y[i], p[i], 0.4)["specificity"] for i in M.bootstrap_indices(y.size, g, 100, 0)]
    spec = res["metrics"]["specificity"]
    assert {k: spec[k] for k in ("ci_low", "ci_high")} == pytest.approx(M.percentile_interval(draws))  # same draws


def test_per_group_recall_with_wilson():
    y = np.array([1, 1, 1, 1, 1, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.2, 0.7, 0.1, 0.1, 0.9, 0.1])
    sub = np.array(["bacteria"] * 3 + ["virus"] * 3 + ["normal"] * 2)
    table = M.per_group_recall(y, p, 0.5, sub).set_index("group")
    assert list(table.index) == ["bacteria", "virus"]  # groups without positives are omitted
    assert table.loc["bacteria", "recall"] == pytest.approx(2 / 3) and table.loc["virus", "missed"] == 2
    lo, hi = table.loc["virus", ["ci_low", "ci_high"]]
    assert lo < 1 / 3 < hi and lo > 0
    assert M.wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------ temperature scaling
def test_temperature_scaling_reduces_nll_keeps_auc():
    y, p_over, _ = synthetic(2000, seed=7, scale=3.0)  # over-confident: logits 3x too large
    temp = M.fit_temperature(p_over, y)
    assert 2.3 < temp < 3.8
    p_cal = M.apply_temperature(p_over, temp)
    assert M.nll(y, p_cal) < M.nll(y, p_over) - 0.05
    assert M.expected_calibration_error(y, p_cal) < M.expected_calibration_error(y, p_over)
    assert M.threshold_free_metrics(y, p_cal)["roc_auc"] == pytest.approx(
        M.threshold_free_metrics(y, p_over)["roc_auc"], abs=1e-12)
    logits = M.prob_to_logit(p_over)
    assert M.fit_temperature(logits, y, from_logits=True) == pytest.approx(temp, rel=1e-4)
    assert M.apply_temperature([0.5, 0.8], 1.0) == pytest.approx([0.5, 0.8])


# ------------------------------------------------------------------------------- files and reports
def test_compare_models_table():
    y, p, _ = synthetic(200, seed=8)
    base = M.evaluate_predictions(y, p * 0.9, 0.5, n_boot=50)
    final = M.evaluate_predictions(y, p, 0.5, n_boot=50)
    table = M.compare_models({"baseline": base, "final": final["metrics"]}, metrics=["sensitivity", "roc_auc"])
    assert table.shape == (2, 2) and list(table.columns) == ["baseline", "final"]
    s = final["metrics"]["sensitivity"]
    assert table.loc["sensitivity", "final"] == f"{s['value']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"


def test_metrics_record_and_update_json_keeps_sections(tmp_path):
    y, p, g = synthetic(100, seed=9, n_patients=40)
    res = M.evaluate_predictions(y, p, 0.3, groups=g, n_boot=30)
    res["metrics"]["npv"]["ci_low"] = float("nan")
    record = M.metrics_record(res, "test", "recall>=0.98", "sha256:model", "sha256:data", temperature=1.2)
    assert record["threshold"] == {"rule": "recall>=0.98", "value": 0.3}
    assert record["n_patients"] == len(set(g)) and record["temperature"] == 1.2
    assert record["metrics"]["npv"]["ci_low"] is None  # nan -> null
    path = tmp_path / "assets" / "metrics.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"localisation": {"pointing_game": 0.7}}))
    update_json_section(path, "test", record)
    update_json_section(path, "val", {"n": np.int64(5)})
    doc = json.loads(path.read_text())  # strict JSON
    assert doc["localisation"] == {"pointing_game": 0.7} and doc["val"] == {"n": 5}
    assert doc["test"]["model_fingerprint"] == "sha256:model"
    assert [f.name for f in path.parent.iterdir()] == ["metrics.json"]  # no temp file left
    path.write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        update_json_section(path, "test", record)


def test_fast_bootstrap_metrics_equal_scikit_learn():
    """The bootstrap's NumPy path (_headline_fast) gives headline_metrics' values, ties and one-class cases included."""
    rng = np.random.default_rng(11)
    for _ in range(200):
        n = int(rng.integers(1, 50))
        y = rng.integers(0, 2, n)
        p = np.round(rng.uniform(0, 1, n), int(rng.integers(1, 3)))  # coarse scores: many ties
        t = float(rng.choice([0.0, 0.5, 1.0, rng.uniform()]))
        ref, fast = list(M.headline_metrics(y, p, t).values()), M._headline_fast(y, p, t)
        assert len(ref) == len(fast) == len(M.HEADLINE_METRICS)
        for a, b in zip(ref, fast):
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12, (y, p, t, ref, fast)
        auc = M.mann_whitney_auc(y, p)  # the AUC the bootstrap and notebook 03's phase study share
        assert (math.isnan(auc) and math.isnan(ref[M.HEADLINE_METRICS.index("roc_auc")])) or \
            abs(auc - ref[M.HEADLINE_METRICS.index("roc_auc")]) < 1e-12
