"""Training figures for notebooks 02–03 (and 09): loss, AUC, recall and throughput per epoch, phases marked."""
from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MultipleLocator

from utils.viz.common import finish

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
        ax.legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("epoch (phases one after the other)" if len(hs) > 1 else "epoch")
    ax_ips.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    return finish(fig, save_to)
