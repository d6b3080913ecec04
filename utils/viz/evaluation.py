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
from utils.evaluate.shift import Recalibration
from utils.viz.common import CLASS_NAMES, finish, whole_numbers


def plot_confusion_matrix(y_true: ArrayLike, prob: ArrayLike, threshold: float, title: str | None = None,
                          class_names: Sequence[str] = CLASS_NAMES,
                          save_to: str | os.PathLike | None = None) -> Figure:
    """Heat-map of the confusion matrix at ``prob >= threshold``: counts and row percentages.

    Rows are the true class, so the PNEUMONIA row's percentages are the sensitivity and miss rate.
    """
    m = threshold_metrics(y_true, prob, threshold)
    cm = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]]).astype(int)  # counts, printed as whole numbers
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
        style = {"marker": markers[i % len(markers)], "color": f"C{i + 1}", "ms": 8, "ls": "none", "clip_on": False,
                 "label": f"{name} (t={t:.3f}): sens {m['sensitivity']:.3f}, spec {m['specificity']:.3f}"}
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
    whole_numbers(ax_hist)
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
    ax.set_xticks(x, [f"{r.group}\n{int(r.detected)}/{int(r.n_positive)} found" for r in table.itertuples()])
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
        counts = [int(res["counts"]["fn"]), int(res["counts"]["fp"])]
        bars = ax_err.bar(np.arange(2) + offset, counts, width, color=f"C{i}", label=name)
        ax_err.bar_label(bars, fmt="%d", fontsize=8)
        vals = np.array([[res["metrics"][m][k] for m in metrics] for k in ("value", "ci_low", "ci_high")])
        ax_met.bar(np.arange(len(metrics)) + offset, vals[0], width, color=f"C{i}", label=name,
                   yerr=np.abs(vals[[0, 0]] - vals[1:]), capsize=4)
    ax_err.set_xticks(range(2), ["false negatives\n(missed pneumonia)", "false positives"])
    ax_err.set(ylabel="images", title="Errors at the chosen threshold")
    whole_numbers(ax_err)
    ax_err.margins(y=0.1)
    ax_met.set_xticks(range(len(metrics)), [m.replace("roc_auc", "ROC AUC") for m in metrics])
    ax_met.set(ylim=(0, 1.05), ylabel="value (95% bootstrap CI)", title="Metrics")
    ax_err.legend(fontsize=8)  # one legend: the colours mean the same models in both panels
    if title:
        fig.suptitle(title)
    return finish(fig, save_to)


# ------------------------------------------------------------------------------------------ dataset shift
#: Colours of the two populations in the dataset-shift figures (the class colours C0 / C1 are taken).
POPULATION_COLORS: tuple[str, str] = ("C2", "C4")


def plot_score_shift(y_ref: ArrayLike, p_ref: ArrayLike, y_new: ArrayLike, p_new: ArrayLike, threshold: float,
                     names: tuple[str, str] = ("validation", "test"), title: str | None = None,
                     save_to: str | os.PathLike | None = None) -> Figure:
    """Per class (NORMAL left, PNEUMONIA right): the score distributions of the reference population (validation,
    which chose ``threshold``) and a new one, on a logit axis (0.01 and 0.1 are as far apart as 0.9 and 0.99),
    each as the share of that class's images per bin, with both medians and the operating threshold marked.
    The panel titles carry specificity / sensitivity at that threshold in both populations."""
    ref_name, new_name = names
    data = {ref_name: (np.asarray(y_ref).ravel(), np.asarray(p_ref, dtype=float).ravel()),
            new_name: (np.asarray(y_new).ravel(), np.asarray(p_new, dtype=float).ravel())}
    rates = {n: threshold_metrics(y, p, threshold) for n, (y, p) in data.items()}
    lo = 1e-4  # scores beyond [lo, 1 - lo] are counted in the end bins
    bins = 1.0 / (1.0 + np.exp(-np.linspace(-np.log(1 / lo - 1), np.log(1 / lo - 1), 45)))
    ticks = [1e-4, 1e-3, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True, layout="constrained")
    for ax, label, cls, rate in zip(axes, (0, 1), CLASS_NAMES, ("specificity", "sensitivity")):
        for (name, (y, p)), color in zip(data.items(), POPULATION_COLORS):
            scores = np.clip(p[y == label], lo, 1 - lo)
            ax.hist(scores, bins=bins, weights=np.full(scores.size, 1.0 / max(scores.size, 1)), histtype="stepfilled",
                    alpha=0.35, color=color, edgecolor=color, lw=1.5, label=f"{name}: share of images per bin")
            ax.axvline(float(np.median(scores)), color=color, ls=":", lw=2, label=f"{name}: median")
        ax.axvline(threshold, color="k", ls="--", lw=1.5,
                   label=f"operating threshold {threshold:.3f} (chosen on {ref_name})")
        ax.set_xscale("logit")
        ax.set_xlim(lo, 1 - lo)
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks], fontsize=8)
        ax.minorticks_off()
        meds = [float(np.median(p[y == label])) for y, p in data.values()]
        ax.set_title(f"{cls} ({', '.join(f'{int((y == label).sum())} {n}' for n, (y, _) in data.items())})\n"
                     f"{rate} {rates[ref_name][rate]:.3f} → {rates[new_name][rate]:.3f}; "
                     f"median {meds[0]:.3f} → {meds[1]:.3f}", fontsize=10)
        ax.set_xlabel("P(PNEUMONIA), logit axis")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of the class's images")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    if title:
        fig.suptitle(title, x=0.01, ha="left")  # left: the key sits in the right margin
    return finish(fig, save_to)


def plot_recalibration(recal: Recalibration, title: str | None = None,
                       save_to: str | os.PathLike | None = None) -> Figure:
    """Local recalibration (:func:`utils.evaluate.shift.recalibrate`) on the scored part of the new population:
    sensitivity and specificity at the original and the recalibrated threshold with their intervals (left), and
    the paired difference recalibrated − original with its interval, AUC included (right: a threshold cannot
    move it)."""
    models, diff = recal.bootstrap["models"], recal.bootstrap["differences"]["recalibrated - original"]
    t = recal.thresholds
    rates = ("sensitivity", "specificity")
    fig, (ax_val, ax_diff) = plt.subplots(1, 2, figsize=(11.5, 4.2), layout="constrained", width_ratios=(1.2, 1))
    width = 0.38
    for i, (key, color) in enumerate((("original", "0.55"), ("recalibrated", "C2"))):
        v = np.array([[models[key][m][k] for m in rates] for k in ("value", "ci_low", "ci_high")])
        where = (f"on {recal.labelled['images']} labelled images,\n{recal.labelled['patients']} patients"
                 if key == "recalibrated" else "on validation")
        ax_val.bar(np.arange(2) + (i - 0.5) * width, v[0], width, color=color, yerr=np.abs(v[[0, 0]] - v[1:]),
                   capsize=5, label=f"{key} threshold {t[key]:.3f}\n(chosen {where})")
    ax_val.axhline(recal.target_recall, color="C3", ls="--", lw=1, label=f"target sensitivity {recal.target_recall:g}")
    ax_val.set_xticks(range(2), [f"{m}\n{models['original'][m]['value']:.3f} → {models['recalibrated'][m]['value']:.3f}"
                                 for m in rates])
    ax_val.set(ylim=(0, 1.05), ylabel="value (95% CI, patients resampled)",
               title=f"scored part: {recal.scored['images']} images, {recal.scored['patients']} patients")
    shown = ("sensitivity", "specificity", "roc_auc")
    d = np.array([[diff[m][k] for m in shown] for k in ("value", "ci_low", "ci_high")])
    y = np.arange(len(shown))[::-1]
    ax_diff.errorbar(d[0], y, xerr=np.abs(d[[0, 0]] - d[1:]), fmt="o", color="C2", capsize=5,
                     label="paired difference, 95% CI")
    ax_diff.axvline(0, color="k", lw=1, label="no change")
    ax_diff.set_yticks(y, ["sensitivity", "specificity", "ROC AUC\n(no threshold\nmoves it)"])
    ax_diff.set_xlim(-1.05, 1.05)
    ax_diff.set(xlabel="recalibrated − original", title="paired difference")
    ax_diff.grid(alpha=0.3, axis="x")
    handles = [h for ax in (ax_val, ax_diff) for h in ax.get_legend_handles_labels()[0]]
    labels = [lab for ax in (ax_val, ax_diff) for lab in ax.get_legend_handles_labels()[1]]
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    if title:
        fig.suptitle(title, x=0.01, ha="left")  # left: the key sits in the right margin
    return finish(fig, save_to)
