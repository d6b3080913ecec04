"""Evaluation figures for notebook 04: confusion matrix, ROC/PR, reliability, subtype recall, comparison.

Every function builds its own figure with ``plt.subplots``, returns the :class:`~matplotlib.figure.Figure`
and, when ``save_to`` is given, writes a PNG (dpi 120, tight box); none calls ``plt.show()``. The numbers
come from :mod:`utils.evaluate.metrics`, so a figure never disagrees with the metrics table.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from utils.evaluate.metrics import (
    ArrayLike,
    expected_calibration_error,
    reliability_curve,
    threshold_free_metrics,
    threshold_metrics,
)
from utils.viz.common import CLASS_NAMES, finish


def plot_confusion_matrix(y_true: ArrayLike, prob: ArrayLike, threshold: float, title: str | None = None,
                          class_names: Sequence[str] = CLASS_NAMES,
                          save_to: str | os.PathLike | None = None) -> Figure:
    """Heat-map of the confusion matrix at ``prob >= threshold``: counts and row percentages.

    Rows are the true class, so the PNEUMONIA row's percentages are the sensitivity and miss rate.
    """
    m = threshold_metrics(y_true, prob, threshold)
    cm = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
    rows = cm.sum(axis=1, keepdims=True)
    pct = np.divide(100.0 * cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    labels = np.array([[f"{c}\n{q:.1f}%" for c, q in zip(r, qr)] for r, qr in zip(cm, pct)])
    fig, ax = plt.subplots(figsize=(4.6, 3.9), layout="constrained")
    sns.heatmap(pct, annot=labels, fmt="", cmap="Blues", vmin=0, vmax=100, cbar_kws={"label": "row %"},
                xticklabels=class_names, yticklabels=class_names, ax=ax, annot_kws={"fontsize": 11})
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(f"{title + ' — ' if title else ''}threshold {threshold:.3f}")
    return finish(fig, save_to)


def plot_roc_pr(y_true: ArrayLike, prob: ArrayLike, thresholds: Mapping[str, float] | None = None,
                title: str | None = None, save_to: str | os.PathLike | None = None) -> Figure:
    """ROC (left) and precision-recall (right) curves with named operating points marked.

    ``thresholds`` maps a name (e.g. from :func:`utils.evaluate.metrics.choose_thresholds`) to a threshold; each
    is drawn as a marker at its (1 - specificity, sensitivity) and (recall, precision).
    """
    y, p = np.asarray(y_true), np.asarray(prob, dtype=float)
    free = threshold_free_metrics(y, p)
    fpr, tpr, _ = roc_curve(y, p)
    precision, recall, _ = precision_recall_curve(y, p)
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(10, 4.3), layout="constrained")
    ax_roc.plot(fpr, tpr, color="C0", label=f"ROC (AUC {free['roc_auc']:.3f})")
    ax_roc.plot([0, 1], [0, 1], ls=":", color="grey", label="chance")
    ax_pr.step(recall, precision, where="post", color="C0", label=f"PR (AP {free['pr_auc']:.3f})")
    ax_pr.axhline(y.mean(), ls=":", color="grey", label=f"prevalence {y.mean():.2f}")
    markers = "osD^vP*X"
    for i, (name, t) in enumerate((thresholds or {}).items()):
        m = threshold_metrics(y, p, t)
        style = {"marker": markers[i % len(markers)], "color": f"C{i + 1}", "ms": 8, "ls": "none",
                 "label": f"{name} (t={t:.3f}): sens {m['sensitivity']:.3f}"}
        ax_roc.plot(1 - m["specificity"], m["sensitivity"], **style)
        ax_pr.plot(m["sensitivity"], m["precision"], **style)
    ax_roc.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity (recall)",
               title="ROC", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall",
              xlim=(-0.01, 1.01), ylim=(0, 1.01))
    for ax in (ax_roc, ax_pr):
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return finish(fig, save_to)


def plot_reliability(y_true: ArrayLike, probs: ArrayLike | Mapping[str, ArrayLike], n_bins: int = 10,
                     title: str | None = None, save_to: str | os.PathLike | None = None) -> Figure:
    """Reliability diagram: observed PNEUMONIA fraction vs mean predicted probability per bin.

    ``probs`` is one array or a mapping of series, e.g. ``{"before": p, "after T=1.4": p_cal}`` for
    temperature scaling; each legend entry carries its ECE. A histogram of the probabilities sits below.
    """
    series = dict(probs) if isinstance(probs, Mapping) else {"model": probs}
    fig, (ax, ax_hist) = plt.subplots(2, 1, figsize=(5.2, 5.8), sharex=True, height_ratios=(3, 1),
                                      layout="constrained")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
    for i, (name, p) in enumerate(series.items()):
        table = reliability_curve(y_true, p, n_bins).query("count > 0")
        ece = expected_calibration_error(y_true, p, n_bins)
        ax.plot(table["mean_pred"], table["frac_pos"], marker="o", color=f"C{i}",
                label=f"{name} (ECE {ece:.3f})")
        ax_hist.hist(np.asarray(p, dtype=float), bins=n_bins, range=(0, 1), histtype="step", color=f"C{i}",
                     lw=1.5)
    ax.set(ylabel="observed fraction PNEUMONIA", xlim=(0, 1), ylim=(0, 1), title=title or "Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    ax_hist.set(xlabel="predicted P(PNEUMONIA)", ylabel="images")
    return finish(fig, save_to)


def plot_subtype_recall(table: pd.DataFrame, target_recall: float | None = None, title: str | None = None,
                        save_to: str | os.PathLike | None = None) -> Figure:
    """Bars of recall per group with interval error bars, from :func:`utils.evaluate.metrics.per_group_recall`."""
    fig, ax = plt.subplots(figsize=(1.4 * max(len(table), 2) + 2, 3.8), layout="constrained")
    x = np.arange(len(table))
    err = np.vstack([table["recall"] - table["ci_low"], table["ci_high"] - table["recall"]])
    ax.bar(x, table["recall"], yerr=err, capsize=6, color="C0", alpha=0.8)
    if target_recall is not None:
        ax.axhline(target_recall, ls="--", color="C3", label=f"target recall {target_recall:g}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks(x, [f"{r.group}\n{r.detected}/{r.n_positive} found" for r in table.itertuples()])
    ax.set(ylabel="recall (95% Wilson CI)", ylim=(0, 1.05), title=title or "Recall by subtype")
    return finish(fig, save_to)


def plot_model_comparison(results: Mapping[str, Mapping[str, Any]],
                          metrics: Sequence[str] = ("sensitivity", "specificity"), title: str | None = None,
                          save_to: str | os.PathLike | None = None) -> Figure:
    """Compare models: false-negative / false-positive counts (left), metrics with CI bars (right).

    ``results`` maps a model name to an :func:`utils.evaluate.metrics.evaluate_predictions` result.
    """
    names = list(results)
    width = 0.8 / len(names)
    fig, (ax_err, ax_met) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for i, name in enumerate(names):
        res, offset = results[name], (i - (len(names) - 1) / 2) * width
        counts = [res["counts"]["fn"], res["counts"]["fp"]]
        bars = ax_err.bar(np.arange(2) + offset, counts, width, color=f"C{i}", label=name)
        ax_err.bar_label(bars, fontsize=8)
        vals = np.array([[res["metrics"][m][k] for m in metrics] for k in ("value", "ci_low", "ci_high")])
        ax_met.bar(np.arange(len(metrics)) + offset, vals[0], width, color=f"C{i}", label=name,
                   yerr=np.abs(vals[[0, 0]] - vals[1:]), capsize=4)
    ax_err.set_xticks(range(2), ["false negatives\n(missed pneumonia)", "false positives"])
    ax_err.set(ylabel="images", title="Errors at the chosen threshold")
    ax_met.set_xticks(range(len(metrics)), list(metrics))
    ax_met.set(ylim=(0, 1.05), ylabel="value (95% bootstrap CI)", title="Metrics")
    for ax in (ax_err, ax_met):
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return finish(fig, save_to)
