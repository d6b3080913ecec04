"""Figures of notebook 08 (shortcut learning): the marker, the three models' metrics, their maps, the real finds."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from utils.viz.cams import _cam_on, _drop_ticks, _gray
from utils.viz.common import finish

MARKER_COLOR = "yellow"
MODEL_COLORS = {"control": "C0", "confounded": "C3", "remedy": "C2"}


def _outline(ax, mask: np.ndarray | None, color: str, lw: float = 1.0) -> None:
    if mask is not None and np.any(mask):
        ax.contour(mask, levels=[0.5], colors=color, linewidths=lw)


def plot_marked_examples(images: np.ndarray, regions: np.ndarray, labels: np.ndarray, n: int = 8,
                         save_to: str | os.PathLike | None = None) -> Figure:
    """Training images of the confounded world, marker region outlined (yellow), class in the title."""
    n = min(n, len(images))
    fig, axes = plt.subplots(1, n, figsize=(1.9 * n, 2.2), layout="constrained", squeeze=False)
    for ax, img, reg, y in zip(axes[0], images[:n], regions[:n], labels[:n]):
        _gray(ax, img)
        _outline(ax, reg, MARKER_COLOR)
        ax.set_title(("PNEUMONIA" if y == 1 else "NORMAL") + (" · marker" if reg.any() else ""), fontsize=8)
    _drop_ticks(fig)
    return finish(fig, save_to)


def plot_shortcut_metrics(table: pd.DataFrame, metrics: Sequence[str] = ("roc_auc", "sensitivity", "specificity"),
                          save_to: str | os.PathLike | None = None) -> Figure:
    """One panel per metric: each model's value on each test version, with its 95% bootstrap interval."""
    tests = list(dict.fromkeys(table["test"]))
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), layout="constrained", squeeze=False)
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
        ax.axhline(0.5 if metric == "roc_auc" else 1.0, color="0.6", lw=0.6, ls=":")
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.suptitle("the same test images, three marker worlds (operating threshold chosen on each model's validation "
                 "images; 95% CI with the threshold re-chosen per resample)", fontsize=9)
    return finish(fig, save_to)


def plot_shortcut_maps(images: Mapping[str, np.ndarray], maps: Mapping[str, np.ndarray], regions: np.ndarray,
                       titles: Sequence[str], lesion_masks: np.ndarray | None = None,
                       save_to: str | os.PathLike | None = None) -> Figure:
    """Rows: images; columns: the input, then each model's map (explaining PNEUMONIA) on the image *it* was given
    (the remedy sees the marker imputed away). Marker outlined yellow, lesion white, the map's peak as +."""
    names = list(maps)
    n = len(titles)
    fig, axes = plt.subplots(n, len(names) + 1, figsize=(2.2 * (len(names) + 1), 2.3 * n), layout="constrained",
                             squeeze=False)
    for i in range(n):
        first = images[names[0]][i]
        _gray(axes[i, 0], first)
        _outline(axes[i, 0], regions[i], MARKER_COLOR)
        _outline(axes[i, 0], None if lesion_masks is None else lesion_masks[i], "white", 0.8)
        axes[i, 0].set_title(titles[i], fontsize=8)
        for j, name in enumerate(names, start=1):
            _cam_on(axes[i, j], images[name][i], maps[name][i],
                    lesion=None if lesion_masks is None else lesion_masks[i])
            _outline(axes[i, j], regions[i], MARKER_COLOR, 0.8)
            if i == 0:
                axes[i, j].set_title(f"{name} model", fontsize=9, color=MODEL_COLORS.get(name, "k"))
    _drop_ticks(fig)
    return finish(fig, save_to)


def plot_marker_finds(images: np.ndarray, found: np.ndarray, titles: Sequence[str] | None = None, ncols: int = 6,
                      save_to: str | os.PathLike | None = None) -> Figure:
    """A sample grid of what the marker heuristic finds (yellow outlines) — for a reader to judge it."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.0 * ncols, 2.15 * nrows), layout="constrained", squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for k in range(n):
        ax = axes.ravel()[k]
        _gray(ax, images[k])
        _outline(ax, found[k], MARKER_COLOR)
        ax.set_title(titles[k] if titles is not None else ("found" if found[k].any() else "nothing found"), fontsize=7.5)
    _drop_ticks(fig)
    return finish(fig, save_to)
