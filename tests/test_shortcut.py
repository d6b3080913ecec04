"""Notebook 08's measurements: where a map looks relative to a marker, the heuristic's check, the tables."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from utils.data.confounder import MarkerSpec, add_markers
from utils.evaluate.metrics import operating_point_bootstrap, outcome_groups
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


def test_real_marker_summary_counts_per_group():
    found = np.zeros((4, 16, 16), bool)
    found[:3, 1:4, 1:4] = True
    maps = np.stack([_peak_map((16, 16), 2, 2), _peak_map((16, 16), 12, 12), _peak_map((16, 16), 2, 2),
                     _peak_map((16, 16), 2, 2)])
    table = S.real_marker_summary(maps, found, np.array(["TP", "TP", "FN", "FP"])).set_index("group")
    assert table.loc["TP", "images"] == 2 and table.loc["TP", "with_marker"] == 2 and table.loc["TP", "peak_on_marker"] == 1
    assert table.loc["TP", "peak_on_marker_share"] == 0.5
    assert table.loc["FN", "peak_on_marker"] == 1
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
def paired():
    rng = np.random.default_rng(1)
    y_val, y_test = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    good = lambda y: np.clip(y * 0.6 + rng.random(len(y)) * 0.5, 0, 1)  # noqa: E731
    val = {m: good(y_val) for m in ("confounded", "remedy", "control")}
    out = {}
    for v in S.TESTS:
        test = {m: good(y_test) for m in val}
        out[v] = operating_point_bootstrap(y_val, val, y_test, test, 0.9, n_boot=50, seed=0)
    return out


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
                        attention=pd.DataFrame([{"model": "control", "marker_mass": np.nan}]))
    record = S.shortcut_record(run, {"recall": 1.0}, None, {"image_size": 64})
    text = json.dumps(jsonable(record), allow_nan=False)
    for word in ("marker", "decorrelated", "control", "remedy", "auc"):
        assert word in text
    assert set(record["auc"]) == set(S.MODELS) and set(record["auc"]["remedy"]) == set(S.TESTS)
    expected = paired["decorrelated"]["models"]["control"]["roc_auc"]["value"]
    assert record["auc"]["control"]["decorrelated"]["value"] == expected


def _record(auc_conf, mass, auc_remedy):
    def ci(v, lo, hi):
        return {"value": v, "ci_low": lo, "ci_high": hi}
    return {"operating_point": {"reversed": {"differences": {
                "confounded - control": {"roc_auc": ci(*auc_conf)}, "remedy - control": {"roc_auc": ci(*auc_remedy)}}}},
            "attention_decorrelated_test": {"paired_differences": {"confounded - control": {"marker_mass": ci(*mass)}}}}


def test_shortcut_verdict_follows_the_intervals():
    from utils.studies.shortcut import shortcut_verdict

    used = shortcut_verdict(_record((-0.33, -0.38, -0.29), (0.017, 0.012, 0.023), (0.0, -0.01, 0.01)))
    assert used[0].startswith("The confounded model used the marker") and "-0.330" in used[0]
    assert used[1].startswith("The explanation showed it")
    assert used[2].startswith("The remedy matches the control")
    null = shortcut_verdict(_record((0.0, -0.004, 0.003), (0.001, -0.002, 0.004), (-0.05, -0.08, -0.02)))
    assert null[0].startswith("No evidence") and null[1].startswith("The explanation did not separate")
    assert "below the control" in null[2]
    assert "not measured" in shortcut_verdict(_record((0, -1, 1), (float("nan"),) * 3, (0, -1, 1)))[1]
    # the demo's measured case: intervals that exclude zero around differences far too small to matter
    tiny = shortcut_verdict(_record((-0.002, -0.004, -0.001), (0.0003, 0.0001, 0.0006), (0.0001, -0.0006, 0.0014)))
    assert "negligibly" in tiny[0] and "negligibly" in tiny[1] and tiny[2].startswith("The remedy matches")
