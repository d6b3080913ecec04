"""Training figures for notebooks 02–03 (and 09): loss, AUC, recall and throughput per epoch, phases marked."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, MultipleLocator, NullLocator
from pandas.io.formats.style import Styler

from utils.viz.common import finish, wrap_text

#: The AUC axis always starts here (chance) or lower, and ends at 1: a fixed scale, so a change of 0.002
#: looks like one instead of filling the panel.
AUC_AXIS_FLOOR = 0.5

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_auc", "val_recall", "val_specificity",
                   "images_per_s")


def plot_training_curves(histories: pd.DataFrame | Sequence[pd.DataFrame], best_epochs: Sequence[int] | None = None,
                         names: Sequence[str] | None = None, title: str | None = None,
                         save_to: str | os.PathLike | None = None) -> Figure:
    """Loss, validation AUC, recall/specificity at 0.5 and throughput per epoch, for one or more phases.

    ``histories`` are per-epoch tables as :func:`utils.train.engine.fit` writes them (columns
    :data:`HISTORY_COLUMNS`); phases are drawn one after the other with a dashed boundary between them.
    ``best_epochs`` (the phase's own epoch numbers, one per history) are marked with a star: the epoch
    whose checkpoint was kept. ``names`` default to each history's ``phase`` column.
    """
    hs = [histories] if isinstance(histories, pd.DataFrame) else list(histories)
    if not hs or any(h.empty for h in hs):
        raise ValueError("plot_training_curves needs at least one non-empty history")
    for h in hs:
        missing = [c for c in HISTORY_COLUMNS if c not in h.columns]
        if missing:
            raise ValueError(f"history lacks the column(s) {missing}")
    if best_epochs is not None and len(best_epochs) != len(hs):
        raise ValueError("give one best epoch per history")
    if names is None:
        names = [str(h["phase"].iloc[0]) if "phase" in h.columns else f"phase {i + 1}" for i, h in enumerate(hs)]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True, layout="constrained")
    ax_loss, ax_auc, ax_rs, ax_ips = axes.flat
    offset = 0
    for i, h in enumerate(hs):
        x = h["epoch"].to_numpy() + offset
        c = f"C{i}"
        ax_loss.plot(x, h["train_loss"], "o-", color=c, label=f"{names[i]} train")
        ax_loss.plot(x, h["val_loss"], "s--", color=c, label=f"{names[i]} val")
        ax_auc.plot(x, h["val_auc"], "o-", color=c, label=names[i])
        ax_rs.plot(x, h["val_recall"], "o-", color=c, label=f"{names[i]} recall")
        ax_rs.plot(x, h["val_specificity"], "s--", color=c, label=f"{names[i]} specificity")
        ax_ips.plot(x, h["images_per_s"], "o-", color=c, label=names[i])
        if best_epochs is not None:
            row = h[h["epoch"] == best_epochs[i]]
            if not row.empty:
                ax_auc.plot(best_epochs[i] + offset, row["val_auc"].iloc[0], "*", ms=16, color=c, mec="k",
                            clip_on=False, label=f"{names[i]} kept (epoch {best_epochs[i]}, "
                                                 f"AUC {row['val_auc'].iloc[0]:.3f})")
        last = int(h["epoch"].max()) + offset
        if i < len(hs) - 1:
            for ax in axes.flat:
                ax.axvline(last + 0.5, ls=":", color="grey", lw=1.2)
            ax_ips.annotate(f"{names[i]} | {names[i + 1]}", (last + 0.5, 0.03), xycoords=("data", "axes fraction"),
                            ha="center", va="bottom", fontsize=8, color="grey",
                            bbox={"boxstyle": "round", "fc": "white", "ec": "none", "alpha": 0.8})
        offset = last
    ax_loss.set(ylabel="loss (class-weighted CE)", title="Loss")
    ax_auc.set(ylabel="ROC AUC (0.5 = chance)", title="Validation AUC")
    low = min(float(h["val_auc"].min()) for h in hs)
    ax_auc.set_ylim(min(AUC_AXIS_FLOOR, np.floor(low * 10) / 10) if np.isfinite(low) else AUC_AXIS_FLOOR, 1.01)
    ax_auc.yaxis.set_major_locator(MultipleLocator(0.1))
    ax_rs.set(ylabel="rate", title="Validation recall / specificity at 0.5", ylim=(-0.02, 1.02))
    ax_ips.set(ylabel="images / s", title="Training throughput", ylim=(0, None))
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        # AUCs sit near the top of their fixed [0.5, 1] axis: keep the key (and the kept-epoch stars) apart
        ax.legend(fontsize=7, loc="lower right" if ax is ax_auc else "best")
    for ax in axes[1]:
        ax.set_xlabel("epoch (phases one after the other)" if len(hs) > 1 else "epoch")
    ax_ips.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    return finish(fig, save_to)


#: P(PNEUMONIA) is drawn on a logit axis clipped to [PROB_CLIP, 1 − PROB_CLIP]: the scores of a confident model
#: crowd 0 and 1, where a linear axis would hide every change.
PROB_CLIP = 1e-4
PROB_TICKS: tuple[float, ...] = (1e-4, 0.01, 0.1, 0.5, 0.9, 0.99, 0.9999)


def plot_phase_scores(labels: Sequence[int] | np.ndarray, first: Sequence[float] | np.ndarray,
                      second: Sequence[float] | np.ndarray, names: Sequence[str] = ("phase 1", "phase 2"),
                      thresholds: Sequence[float] | None = None, title: str | None = None,
                      save_to: str | os.PathLike | None = None) -> Figure:
    """Each validation image's P(PNEUMONIA) under two models, one point per image (``first`` on x, ``second`` on
    y, coloured by its true class) on logit axes: on the diagonal the second model changed nothing; above it the
    image became more "pneumonia", below it more "normal". ``thresholds`` (one per model) draw each model's
    operating threshold as a line, so the points that changed side are visible."""
    from utils.viz.common import CLASS_COLORS, CLASS_NAMES

    y = np.asarray(labels).astype(int).ravel()
    a = np.clip(np.asarray(first, dtype=float).ravel(), PROB_CLIP, 1 - PROB_CLIP)
    b = np.clip(np.asarray(second, dtype=float).ravel(), PROB_CLIP, 1 - PROB_CLIP)
    if not y.size or a.size != y.size or b.size != y.size:
        raise ValueError("plot_phase_scores needs one score per label from each model (and at least one image)")
    if thresholds is not None and len(thresholds) != 2:
        raise ValueError("give one threshold per model (two)")
    fig, ax = plt.subplots(figsize=(7.4, 4.8), layout="constrained")
    lim = (PROB_CLIP / 2, 1 - PROB_CLIP / 2)
    ax.plot(lim, lim, color="0.4", lw=1, ls="--", label="no change (diagonal)")
    for c in sorted((0, 1), key=lambda k: -int((y == k).sum())):  # the larger class first, the smaller on top
        keep = y == c
        if keep.any():
            ax.scatter(a[keep], b[keep], s=16, alpha=0.7, color=CLASS_COLORS[c], edgecolor="none",
                       label=f"{CLASS_NAMES[c]} ({int(keep.sum())} images)")
    if thresholds is not None:
        ax.axvline(float(thresholds[0]), color="0.6", lw=0.8, ls=":", label=f"{names[0]} threshold {thresholds[0]:.3f}")
        ax.axhline(float(thresholds[1]), color="0.2", lw=0.8, ls=":", label=f"{names[1]} threshold {thresholds[1]:.3f}")
    ax.set(xscale="logit", yscale="logit", xlim=lim, ylim=lim, aspect="equal",
           xlabel=f"P(PNEUMONIA), {names[0]} (logit scale)", ylabel=f"P(PNEUMONIA), {names[1]} (logit scale)")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(FixedLocator(PROB_TICKS))
        axis.set_major_formatter(FixedFormatter([f"{t:g}" for t in PROB_TICKS]))
        axis.set_minor_locator(NullLocator())
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    ax.set_title(title or f"The same validation images under {names[0]} and {names[1]}", fontsize=10)
    return finish(fig, save_to)


#: The history columns a notebook shows, in order (``fit`` writes more).
SHOWN_HISTORY = ("phase", "epoch", "lr", "train_loss", "val_loss", "val_auc", "val_recall", "val_specificity",
                 "seconds", "images_per_s")


def history_table(history: pd.DataFrame) -> Styler:
    """A training history as a readable table: epochs as whole numbers, rates in scientific notation, losses and
    validation scores to 3 decimals, seconds to 1, throughput as whole images per second; no index."""
    shown = history[[c for c in SHOWN_HISTORY if c in history.columns]]
    formats = {"lr": "{:.0e}", "seconds": "{:.1f}", "images_per_s": "{:.0f}",
               **{c: "{:.3f}" for c in ("train_loss", "val_loss", "val_auc", "val_recall", "val_specificity")}}
    return shown.style.format({k: v for k, v in formats.items() if k in shown.columns}).hide(axis="index")


def checkpoint_table(meta: Mapping[str, Any], keys: Sequence[str]) -> pd.DataFrame:
    """The metadata ``keys`` of a checkpoint as a table (one row per field, its value as text): numbers to 3
    decimals, the run's knobs as ``name=value`` text, a missing key as "not recorded"."""
    def text(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}"
        if isinstance(value, Mapping):
            return ", ".join(f"{k}={v}" for k, v in value.items() if k != "set_by")
        return str(value)

    return pd.DataFrame({"value": [text(meta[k]) if k in meta else "not recorded" for k in keys]},
                        index=pd.Index(list(keys), name="field"))


def plot_all_at_once(weight_change: pd.DataFrame, table: pd.DataFrame, title: str | None = None,
                     save_to: str | os.PathLike | None = None) -> Figure:
    """Notebook 03's "why two phases?": how far each layer group moved from its pretrained weights under each
    recipe (``weight_change``: layer group x model, ‖Δw‖ / ‖w‖; log scale, input layers left), and per model the
    validation ROC AUC and the similarity of its pooled features to the pretrained backbone's (``table`` rows with
    ``model``, ``val ROC AUC``, ``feature similarity (CKA)``; both on a fixed 0–1 axis)."""
    if weight_change.empty or table.empty:
        raise ValueError("plot_all_at_once needs the weight changes and the model table")
    fig, (ax_w, ax_s) = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained",
                                     gridspec_kw={"width_ratios": [1.25, 1]})
    groups, models = list(weight_change.index), list(weight_change.columns)
    x = np.arange(len(groups))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        values = weight_change[model].to_numpy(dtype=float)
        ax_w.bar(x + (i - (len(models) - 1) / 2) * width, np.maximum(values, 1e-6), width,
                 color=("C1", "C3", "C4", "C5")[i % 4], label=model)
    ax_w.set_xticks(x, groups)
    ax_w.set(yscale="log", xlabel="layer group (input → output)", ylabel="‖Δw‖ / ‖w‖ (log scale)",
             title="How far each layer moved from its pretrained weights")
    ax_w.grid(alpha=0.3, axis="y")
    ax_w.legend(fontsize=8)
    names = list(table["model"])
    xs = np.arange(len(names))
    for j, (column, colour) in enumerate((("val ROC AUC", "0.35"), ("feature similarity (CKA)", "C9"))):
        values = table[column].to_numpy(dtype=float)
        bars = ax_s.bar(xs + (j - 0.5) * 0.38, values, 0.38, color=colour, label=column)
        ax_s.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax_s.set_xticks(xs, [wrap_text(n, 1.6, 8) for n in names], fontsize=8)
    ax_s.set(ylim=(0, 1.12), ylabel="value (0 to 1)", title="Validation AUC and similarity to the pretrained features")
    ax_s.set_yticks(np.linspace(0, 1, 6))
    ax_s.grid(alpha=0.3, axis="y")
    ax_s.legend(fontsize=8, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=11)
    return finish(fig, save_to)
