"""Figures of notebook 08 (shortcut learning): the marker, the three models' metrics, their maps with and without
the marker, the attention measured on them, the dose–response, the real finds.

The marker (burned in, or found by the heuristic) is outlined in yellow; every figure carries a key naming its
outlines, and a panel where the heuristic found nothing says so.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from utils.viz.cams import _EDGE, KEY_WIDTH, _any, _cam_on, _drop_ticks, _gray, _no_map, _title, overlay_legend
from utils.viz.common import finish, wrap_text

MARKER_COLOR = "yellow"
MODEL_COLORS = {"control": "C0", "confounded": "C3", "remedy": "C2"}


NOTHING_FOUND = "nothing found"


def _outline(ax: Axes, mask: np.ndarray | None, color: str, lw: float = 1.0) -> None:
    if mask is not None and np.any(mask):
        cs = ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=color, linewidths=lw)
        if color in (MARKER_COLOR, "white"):
            cs.set_path_effects(_EDGE)


def _marker_handle(label: str) -> Line2D:
    return Line2D([], [], color=MARKER_COLOR, lw=1.4, path_effects=_EDGE, label=label)


def plot_marked_examples(images: np.ndarray, regions: np.ndarray, labels: np.ndarray, n: int = 8,
                         save_to: str | os.PathLike | None = None) -> Figure:
    """Training images of the confounded world, marker region outlined (yellow), class in the title."""
    n = max(1, min(n, len(images)))
    fig, axes = plt.subplots(1, n, figsize=(1.9 * n + KEY_WIDTH, 2.5), layout="constrained", squeeze=False)
    for ax in axes[0]:
        ax.set_axis_off()
    for ax, img, reg, y in zip(axes[0], images[:n], regions[:n], labels[:n]):
        _gray(ax, img)
        _outline(ax, reg, MARKER_COLOR)
        ax.set_title(("PNEUMONIA" if y == 1 else "NORMAL") + ("\nmarker" if reg.any() else "\nno marker"), fontsize=8)
    if _any(regions, n):
        overlay_legend(fig, heat=False, extra=[_marker_handle("marker region (burned in)")])
    _drop_ticks(fig)
    return finish(fig, save_to)


def plot_shortcut_metrics(table: pd.DataFrame, metrics: Sequence[str] = ("roc_auc", "sensitivity", "specificity"),
                          save_to: str | os.PathLike | None = None) -> Figure:
    """One panel per metric: each model's value on each test version, with its 95% bootstrap interval."""
    tests = list(dict.fromkeys(table["test"]))
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + KEY_WIDTH, 3.4), layout="constrained",
                             squeeze=False)
    width = 0.8 / len(models)
    for ax, metric in zip(axes[0], metrics):
        sub = table[table["metric"] == metric]
        for j, model in enumerate(models):
            rows = sub[sub["model"] == model].set_index("test").reindex(tests)
            x = np.arange(len(tests)) + (j - (len(models) - 1) / 2) * width
            err = np.vstack([rows["value"] - rows["ci_low"], rows["ci_high"] - rows["value"]]).clip(min=0)
            ax.bar(x, rows["value"], width, yerr=err, capsize=2, color=MODEL_COLORS.get(model, f"C{j}"), label=model)
        ax.set_xticks(np.arange(len(tests)), tests, fontsize=8)
        ax.set(ylim=(0, 1.05), title=metric.replace("roc_auc", "ROC AUC"))
        if metric == "roc_auc":
            ax.axhline(0.5, color="0.4", lw=0.8, ls=":", label="chance (AUC 0.5)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)  # beside the bars, never over them
    fig.suptitle(wrap_text("the same test images, three marker worlds (operating threshold chosen on each model's "
                           "validation images; 95% CI with the threshold re-chosen per resample)",
                           4.2 * len(metrics), 9), fontsize=9)
    return finish(fig, save_to)


def plot_shortcut_maps(images: Mapping[str, np.ndarray], maps: Mapping[str, np.ndarray], regions: np.ndarray,
                       titles: Sequence[str], lesion_masks: np.ndarray | None = None,
                       save_to: str | os.PathLike | None = None) -> Figure:
    """Rows: images; columns: the input, then one map per key of ``maps`` (explaining PNEUMONIA) on the image of
    the same key in ``images`` — each model's own input (the remedy sees the marker imputed away), or the same image
    without the marker (a key such as ``"confounded, no marker"``, titled "confounded model, no marker"). Marker region
    outlined yellow (also where the marker was removed), lesion white, the map's peak as +."""
    names = list(maps)
    n = len(titles)
    width = 2.2
    fig, axes = plt.subplots(max(1, n), len(names) + 1, figsize=(width * (len(names) + 1) + KEY_WIDTH, 2.3 * max(1, n)),
                             layout="constrained", squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    drawn = False
    for i in range(n):
        first = images[names[0]][i]
        _gray(axes[i, 0], first)
        _outline(axes[i, 0], regions[i], MARKER_COLOR)
        _outline(axes[i, 0], None if lesion_masks is None else lesion_masks[i], "white", 0.8)
        _title(axes[i, 0], titles[i], width)
        for j, name in enumerate(names, start=1):
            drawn |= _cam_on(axes[i, j], images[name][i], maps[name][i],
                             lesion=None if lesion_masks is None else lesion_masks[i])
            _outline(axes[i, j], regions[i], MARKER_COLOR, 0.8)
            if i == 0:
                head, _, rest = name.partition(",")  # "confounded, no marker": that model, on the clean image
                _title(axes[i, j], f"{head} model{',' + rest if rest else ''}", width, 9,
                       color=MODEL_COLORS.get(head, "k"))
    extra = [_marker_handle("marker region")] if _any(regions, n) else []
    overlay_legend(fig, lesion=_any(lesion_masks, n), peak=drawn, heat=drawn, extra=extra)
    _drop_ticks(fig)
    return finish(fig, save_to)


def plot_marker_finds(images: np.ndarray, found: np.ndarray, titles: Sequence[str] | None = None, ncols: int = 6,
                      save_to: str | os.PathLike | None = None) -> Figure:
    """A sample grid of what the marker heuristic finds (yellow outlines) — for a reader to judge it.

    A panel without a find says "nothing found" on the image; ``titles`` head the panels; the figure's title
    counts the panels with a find, and a key names the outline.
    """
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, int(np.ceil(n / ncols)))
    width = 2.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols + KEY_WIDTH, 2.15 * nrows + 0.3), layout="constrained",
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    has = np.array([bool(np.any(f)) for f in found[:n]], dtype=bool)
    for k in range(n):
        ax = axes.ravel()[k]
        _gray(ax, images[k])
        if has[k]:
            _outline(ax, found[k], MARKER_COLOR)
        else:
            _no_map(ax, NOTHING_FOUND, y=0.06)
        _title(ax, titles[k] if titles is not None else ("found" if has[k] else NOTHING_FOUND), width, 7.5)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no images", ha="center", va="center", fontsize=11, transform=axes[0, 0].transAxes)
    fig.suptitle(f"marker heuristic: a find on {int(has.sum())} of {n} images shown", fontsize=10)
    overlay_legend(fig, heat=False, extra=[_marker_handle("found by the heuristic")])
    _drop_ticks(fig)
    return finish(fig, save_to)


def plot_marker_attention(attention: pd.DataFrame, uniform_share: float,
                          save_to: str | os.PathLike | None = None) -> Figure:
    """Per model, on the same images with and without the marker: the share of the map's mass on the marker region
    (left; the dotted line is what a uniform map puts there) and how often the map's peak points at it (right). A
    model whose every map was empty is marked "no map" on its bar, never drawn as zero."""
    models = list(attention["model"])
    rows = attention.set_index("model").loc[models]
    x = np.arange(len(models))
    width = 3.6
    fig, axes = plt.subplots(1, 2, figsize=(2 * width + KEY_WIDTH + 0.6, 3.3), layout="constrained")
    for ax, (with_, without, title) in zip(axes, (
            ("marker_mass", "marker_mass_without", "map mass on the marker region"),
            ("marker_pointing", "marker_pointing_without", "map peak on the marker"))):
        for k, (col, hatch, what) in enumerate(((with_, "", "marker burned in"), (without, "//", "same image, no "
                                                                                                  "marker"))):
            xs = x + (k - 0.5) * 0.38
            ax.bar(xs, rows[col].fillna(0.0), 0.38, color=[MODEL_COLORS.get(m, "0.5") for m in models],
                   hatch=hatch, edgecolor="white" if not hatch else "0.3", label=what)
            for xi, v in zip(xs, rows[col]):
                if not np.isfinite(v):
                    ax.text(xi, 0, "no map", rotation=90, ha="center", va="bottom", fontsize=7, color="0.3")
        ax.set_xticks(x, models, fontsize=9)
        _title(ax, title, width, 9)
        values = rows[[with_, without]].to_numpy(dtype=float)
        top = max([1e-3, float(uniform_share) if np.isfinite(uniform_share) else 0.0, *values[np.isfinite(values)]])
        ax.set_ylim(0, top * 1.25 if with_ == "marker_mass" else 1.0)
    if np.isfinite(uniform_share):
        axes[0].axhline(uniform_share, color="0.3", ls=":", lw=1, label=f"uniform map ({uniform_share:.3f})")
    axes[0].set_ylabel("share of the map's mass", fontsize=8)
    axes[1].set_ylabel("share of images", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)  # beside the bars
    return finish(fig, save_to)


def plot_dose_response(table: pd.DataFrame, save_to: str | os.PathLike | None = None) -> Figure:
    """Test AUC (95% CI) of confounded models against the strength of the confounder in training — P(marker |
    PNEUMONIA), with P(marker | NORMAL) = 1 − it — on the decorrelated and the reversed test; the control (no marker
    in training) as a dashed line per test."""
    width = 5.0
    fig, ax = plt.subplots(figsize=(width + KEY_WIDTH + 1.4, 3.6), layout="constrained")
    styles = {"decorrelated": ("C0", "o"), "reversed": ("C3", "s")}
    conf = table[table["model"] == "confounded"]
    for test, (color, mark) in styles.items():
        sub = conf[conf["test"] == test].sort_values("p_marker_pneumonia")
        err = np.vstack([sub["roc_auc"] - sub["ci_low"], sub["ci_high"] - sub["roc_auc"]]).clip(min=0)
        ax.errorbar(sub["p_marker_pneumonia"], sub["roc_auc"], yerr=err, color=color, marker=mark, capsize=3,
                    label=f"confounded models, {test} test")
        ctrl = table[(table["model"] == "control") & (table["test"] == test)]
        if len(ctrl):
            c = ctrl.iloc[0]
            ax.axhline(c["roc_auc"], color=color, ls="--", lw=1,
                       label=f"control (no marker in training),\n{test} test: AUC {c['roc_auc']:.3f}")
    ax.axhline(0.5, color="0.4", lw=0.8, ls=":", label="chance (AUC 0.5)")
    ax.set_xticks(sorted(conf["p_marker_pneumonia"].unique()))
    ax.set_xlabel(wrap_text("P(marker | PNEUMONIA) in training (NORMAL: 1 minus it)", width, 9),
                  fontsize=9)
    ax.set(ylabel="test ROC AUC", ylim=(0, 1.02))
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right center", fontsize=8, frameon=False)
    return finish(fig, save_to)
