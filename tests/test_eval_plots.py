"""utils.viz.evaluation: every figure function returns a Figure and writes a PNG."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from helpers import assert_png
from matplotlib.figure import Figure

from utils.evaluate import metrics as M
from utils.viz import evaluation as EP


@pytest.fixture(scope="module")
def preds():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    p = np.clip(0.35 * y + 0.65 * rng.random(120), 0, 1)
    sub = np.where(y == 1, np.where(rng.random(120) < 0.6, "bacteria", "virus"), "normal")
    return y, p, sub


def test_confusion_matrix(preds, tmp_path):
    y, p, _ = preds
    path = tmp_path / "sub" / "cm.png"  # missing folder is created
    fig = EP.plot_confusion_matrix(y, p, 0.42, title="final", save_to=path)
    assert_png(fig, path)
    ax = fig.axes[0]
    assert "0.420" in ax.get_title() and "final" in ax.get_title()
    m = M.threshold_metrics(y, p, 0.42)
    texts = [t.get_text() for t in ax.texts]
    assert texts[0].startswith(f"{m['tn']}\n") and texts[3].startswith(f"{m['tp']}\n")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["NORMAL", "PNEUMONIA"]


def test_roc_pr_marks_operating_points(preds, tmp_path):
    y, p, _ = preds
    thresholds = M.choose_thresholds(y, p, 0.95)
    fig = EP.plot_roc_pr(y, p, thresholds, save_to=tmp_path / "roc.png")
    assert_png(fig, tmp_path / "roc.png")
    ax_roc, ax_pr = fig.axes[:2]
    labels = [t.get_text() for t in ax_roc.get_legend().get_texts()]
    assert any(lab.startswith("recall>=0.95") for lab in labels) and any("youden" in lab for lab in labels)
    m = M.threshold_metrics(y, p, thresholds["youden"])
    marker = next(ln for ln in ax_roc.lines if ln.get_label().startswith("youden"))
    assert marker.get_xydata()[0] == pytest.approx([1 - m["specificity"], m["sensitivity"]])


def test_reliability_before_after(preds, tmp_path):
    y, p, _ = preds
    temp = M.fit_temperature(p, y)
    series = {"before": p, f"after T={temp:.2f}": M.apply_temperature(p, temp)}
    fig = EP.plot_reliability(y, series, save_to=tmp_path / "rel.png")
    assert_png(fig, tmp_path / "rel.png")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ece = M.expected_calibration_error(y, p)
    assert f"before (ECE {ece:.3f})" in labels and len(labels) == 3
    assert isinstance(EP.plot_reliability(y, p), Figure)  # a single array works too, no file needed


def test_subtype_recall(preds, tmp_path):
    y, p, sub = preds
    table = M.per_group_recall(y, p, 0.5, sub)
    fig = EP.plot_subtype_recall(table, target_recall=0.98, save_to=tmp_path / "subtype.png")
    assert_png(fig, tmp_path / "subtype.png")
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    row = table.iloc[0]
    assert ticks[0] == f"bacteria\n{row.detected}/{row.n_positive} found" and ticks[1].startswith("virus")
    assert [r.get_height() for r in ax.patches] == pytest.approx(table["recall"].tolist())


def test_model_comparison(preds, tmp_path):
    y, p, _ = preds
    results = {"baseline": M.evaluate_predictions(y, p, 0.5, n_boot=30),
               "final": M.evaluate_predictions(y, p, 0.3, n_boot=30)}
    fig = EP.plot_model_comparison(results, save_to=tmp_path / "cmp.png")
    assert_png(fig, tmp_path / "cmp.png")
    heights = [r.get_height() for r in fig.axes[0].patches]
    expected = [results[k]["counts"][c] for k in results for c in ("fn", "fp")]
    assert heights == expected
