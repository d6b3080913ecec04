"""Data figures for notebook 01: samples, class balance, patients, image sizes, intensities, lesions.

Every function builds its own figure, returns the :class:`~matplotlib.figure.Figure` and, when
``save_to`` is given, writes a PNG (dpi 120, tight box); none calls ``plt.show()`` (the notebook does).
Lesion masks are drawn as red contours and lung masks as cyan ones; NORMAL is blue, PNEUMONIA orange
in every figure. The functions take plain arrays and tables, so they work on any source.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from utils.viz.common import CLASS_COLORS, CLASS_NAMES, LESION_COLOR, LUNG_COLOR, finish, whole_numbers


# ------------------------------------------------------------------------------------------ images
def sample_indices(labels: Sequence[int] | np.ndarray, per_class: int = 6, seed: int = 0) -> np.ndarray:
    """Up to ``per_class`` random indices of each class (seeded), NORMAL first, for a sample grid."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        picks.append(np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False)))
    return np.concatenate(picks) if picks else np.zeros(0, dtype=int)


def plot_sample_grid(images: np.ndarray, labels: Sequence[int] | np.ndarray, titles: Sequence[str] | None = None,
                     lesion_masks: np.ndarray | None = None, lung_masks: np.ndarray | None = None,
                     n_cols: int = 6, class_names: Sequence[str] = CLASS_NAMES, lung_label: str = "lung",
                     title: str | None = None, save_to: str | os.PathLike | None = None) -> Figure:
    """Grid of gray images titled by class (coloured), with lesion (red) and lung (cyan) outlines.

    ``images`` is ``(N, S, S)`` uint8 or float in [0, 1]; masks, when given, are boolean ``(N, S, S)``.
    ``titles`` (one per image) are added under the class name; ``lung_label`` names the cyan outline in the
    legend (say "estimated" when it is); ``title`` goes above the grid.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if len(images) == 0:
        raise ValueError("plot_sample_grid needs at least one image")
    if len(labels) != len(images) or (titles is not None and len(titles) != len(images)):
        raise ValueError("images, labels and titles must have the same length")
    n_cols = max(1, min(n_cols, len(images)))
    n_rows = int(np.ceil(len(images) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.1 * n_cols, 2.35 * n_rows + 0.4), squeeze=False,
                             layout="constrained")
    vmax = 255 if images.dtype == np.uint8 else 1.0
    for k, ax in enumerate(axes.flat):
        ax.set(xticks=[], yticks=[])  # no tick labels to lay out (much faster to save)
        ax.set_axis_off()
        if k >= len(images):
            continue
        ax.imshow(images[k], cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        if lung_masks is not None and np.any(lung_masks[k]):
            ax.contour(lung_masks[k].astype(float), levels=[0.5], colors=LUNG_COLOR, linewidths=0.7)
        if lesion_masks is not None and np.any(lesion_masks[k]):
            ax.contour(lesion_masks[k].astype(float), levels=[0.5], colors=LESION_COLOR, linewidths=1.0)
        head = class_names[int(labels[k])]
        ax.set_title(head + (f"\n{titles[k]}" if titles is not None else ""), fontsize=8,
                     color=CLASS_COLORS[int(labels[k]) % len(CLASS_COLORS)])
    handles = []
    if lesion_masks is not None:
        handles.append(Line2D([], [], color=LESION_COLOR, label="lesion (ground truth)"))
    if lung_masks is not None:
        handles.append(Line2D([], [], color=LUNG_COLOR, label=lung_label))
    if handles:  # below a suptitle's height when there is one (it spans the figure, key margin included)
        fig.legend(handles=handles, loc="outside right center" if title else "outside right upper", fontsize=8,
                   frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return finish(fig, save_to)


def plot_lung_fields(images: np.ndarray, labels: Sequence[int] | np.ndarray, ids: Sequence[str], estimated: np.ndarray,
                     lung_masks: np.ndarray | None = None, lesion_masks: np.ndarray | None = None,
                     ious: Sequence[float] | None = None, n_cols: int = 6,
                     save_to: str | os.PathLike | None = None) -> Figure:
    """Notebook 01's sample grid with the lung field a map will be judged by: where true lung masks exist
    (phantoms) their outline, each image titled with the IoU of the *estimated* field against it (``ious``);
    where none exist (real data) the estimated field itself, said to be an estimate in the key and the title."""
    images = np.asarray(images)
    if len(ids) != len(images) or len(estimated) != len(images):
        raise ValueError("images, ids and estimated lung fields must have the same length")
    if lung_masks is not None:
        if ious is None or len(ious) != len(images):
            raise ValueError("give one IoU of the estimate per image when true lung masks are drawn")
        titles = [f"{name}\nlung estimate IoU {v:.2f}" for name, v in zip(ids, ious)]
        return plot_sample_grid(images, labels, titles, lesion_masks=lesion_masks, lung_masks=lung_masks,
                                n_cols=n_cols, lung_label="lung (ground truth)", save_to=save_to)
    return plot_sample_grid(images, labels, list(ids), lesion_masks=lesion_masks, lung_masks=np.asarray(estimated),
                            n_cols=n_cols, lung_label="lung field (ESTIMATED: no masks here)",
                            title="real data: the cyan outline is the lung-field estimate", save_to=save_to)


# ------------------------------------------------------------------------------------------ counts
def plot_class_balance(counts: pd.DataFrame, save_to: str | os.PathLike | None = None) -> Figure:
    """Images per class and split (left) and, when present, PNEUMONIA subtypes per split (right).

    ``counts`` has one row per split and columns ``NORMAL``, ``PNEUMONIA`` and optionally ``bacteria``,
    ``virus`` (what :meth:`utils.data.DataBundle.summary` returns).
    """
    missing = [c for c in CLASS_NAMES if c not in counts.columns]
    if missing:
        raise ValueError(f"counts lacks the column(s) {missing}")
    has_sub = {"bacteria", "virus"} <= set(counts.columns) and counts[["bacteria", "virus"]].to_numpy().sum() > 0
    fig, axes = plt.subplots(1, 2 if has_sub else 1, figsize=(10 if has_sub else 5.5, 3.8), squeeze=False,
                             layout="constrained")
    ax = axes[0, 0]
    x = np.arange(len(counts))
    width = 0.38
    for i, cls in enumerate(CLASS_NAMES):
        bars = ax.bar(x + (i - 0.5) * width, counts[cls].astype(int), width, color=CLASS_COLORS[i], label=cls)
        ax.bar_label(bars, fontsize=8)
    total = counts[list(CLASS_NAMES)].astype(int).sum(axis=1)
    share = counts["PNEUMONIA"].astype(int) / total.where(total > 0, 1)
    ax.set_xticks(x, [f"{name}\n{int(t)} images, {s:.0%} pneum." for name, t, s in zip(counts.index, total, share)],
                  fontsize=8)
    ax.set(ylabel="images", title="Class balance per split")
    whole_numbers(ax)
    ax.margins(y=0.12)
    ax.legend(fontsize=8)
    if has_sub:
        ax = axes[0, 1]
        bottom = np.zeros(len(counts))
        for i, sub in enumerate(("bacteria", "virus")):
            vals = counts[sub].astype(int).to_numpy()
            bars = ax.bar(x, vals, 0.5, bottom=bottom, color=("C3", "C4")[i], label=sub)
            ax.bar_label(bars, label_type="center", fontsize=8, color="white")
            bottom += vals
        ax.set_xticks(x, list(counts.index))
        ax.set(ylabel="PNEUMONIA images", title="Pneumonia subtypes per split")
        whole_numbers(ax)
        ax.legend(fontsize=8)
    return finish(fig, save_to)


def plot_images_per_patient(patient_ids: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray] | None = None,
                            save_to: str | os.PathLike | None = None) -> Figure:
    """One panel per split: how many patients have 1, 2, 3 … images (bars per patient class when
    ``labels`` are given; a patient's class is its images' maximum label)."""
    if not patient_ids:
        raise ValueError("plot_images_per_patient needs at least one split")
    fig, axes = plt.subplots(1, len(patient_ids), figsize=(4.2 * len(patient_ids), 3.5), squeeze=False,
                             layout="constrained")
    for ax, (name, pids) in zip(axes.flat, patient_ids.items()):
        df = pd.DataFrame({"pid": np.asarray(pids), "y": np.asarray(labels[name]) if labels else 0})
        per = df.groupby("pid").agg(n=("y", "size"), y=("y", "max"))
        top = int(per["n"].max()) if len(per) else 1
        ks = np.arange(1, top + 1)
        groups = [(cls, per[per["y"] == i]) for i, cls in enumerate(CLASS_NAMES)] if labels else [("all", per)]
        width = 0.8 / len(groups)
        for i, (cls, g) in enumerate(groups):
            n = g["n"].value_counts().reindex(ks, fill_value=0)
            ax.bar(ks + (i - (len(groups) - 1) / 2) * width, n.to_numpy(), width,
                   color=CLASS_COLORS[i] if labels else "C2", label=f"{cls} ({len(g)} patients)")
        whole_numbers(ax)
        ax.set(xlabel="images per patient", ylabel="patients",
               title=f"{name}: {len(df)} images / {len(per)} patients ({len(df) / max(len(per), 1):.2f} each)")
        ax.title.set_fontsize(9)
        ax.set_xticks(ks if top <= 15 else np.unique(np.linspace(1, top, 8).round().astype(int)))
        ax.legend(fontsize=8)
    return finish(fig, save_to)


def plot_image_sizes(widths: Sequence[int] | np.ndarray, heights: Sequence[int] | np.ndarray,
                     labels: Sequence[int] | np.ndarray, save_to: str | os.PathLike | None = None) -> Figure:
    """Original file sizes: width × height per class (left) and the aspect ratio width / height (right)."""
    w, h, y = np.asarray(widths, float), np.asarray(heights, float), np.asarray(labels)
    ok = np.isfinite(w) & np.isfinite(h) & (h > 0)
    if not ok.any():
        raise ValueError("no image with a known size")
    w, h, y = w[ok], h[ok], y[ok]
    fig, (ax_wh, ax_ar) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    ratio = w / h
    bins = np.linspace(ratio.min() - 0.02, ratio.max() + 0.02, 31)
    for i, cls in enumerate(CLASS_NAMES):
        sel = y == i
        if not sel.any():
            continue
        ax_wh.scatter(w[sel], h[sel], s=6, alpha=0.4, color=CLASS_COLORS[i],
                      label=f"{cls}: median {np.median(w[sel]):.0f} × {np.median(h[sel]):.0f}")
        ax_ar.hist(ratio[sel], bins=bins, color=CLASS_COLORS[i], alpha=0.6, label=cls)
    ax_wh.set(xlabel="width (px)", ylabel="height (px)", title="Original image size per class")
    ax_ar.set(xlabel="aspect ratio (width / height)", ylabel="images", title="Aspect ratio per class")
    whole_numbers(ax_ar)
    ax_ar.xaxis.set_major_locator(MaxNLocator(6))
    ax_ar.xaxis.set_major_formatter("{x:.2f}")
    for ax in (ax_wh, ax_ar):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return finish(fig, save_to)


def plot_intensity_histograms(images: np.ndarray, labels: Sequence[int] | np.ndarray,
                              save_to: str | os.PathLike | None = None) -> Figure:
    """Per class: the distribution of pixel values (left) and of each image's mean intensity (right).

    ``images`` are uint8 ``(N, S, S)``. A class difference in the right panel is a global-brightness cue a
    model could use instead of the lungs (a shortcut worth knowing about).
    """
    images, y = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8:
        raise ValueError(f"plot_intensity_histograms expects uint8 images, got {images.dtype}")
    fig, (ax_px, ax_mean) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    means = images.reshape(len(images), -1).mean(axis=1)
    bins = np.linspace(means.min() - 0.5, means.max() + 0.5, 31)
    for i, cls in enumerate(CLASS_NAMES):
        sel = y == i
        if not sel.any():
            continue
        counts = np.bincount(images[sel].ravel(), minlength=256).astype(float)
        ax_px.plot(np.arange(256), counts / counts.sum(), color=CLASS_COLORS[i], label=f"{cls} ({sel.sum()} images)")
        ax_mean.hist(means[sel], bins=bins, color=CLASS_COLORS[i], alpha=0.6, density=True,
                     label=f"{cls}: mean {means[sel].mean():.1f}")
    ax_px.set(xlabel="pixel value (0-255)", ylabel="fraction of pixels", title="Pixel values", xlim=(0, 255))
    ax_mean.set(xlabel="mean intensity of an image", ylabel="density", title="Mean intensity per image")
    for ax in (ax_px, ax_mean):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return finish(fig, save_to)


def plot_lesion_properties(info: pd.DataFrame, save_to: str | os.PathLike | None = None) -> Figure:
    """Phantom PNEUMONIA images: cases per kind and hard category, lesion area, lesion contrast.

    ``info`` is a phantom split's ``info`` table (columns ``label``, ``kind``, ``hard``,
    ``lesion_area_frac``, ``contrast``); ``hard`` is empty for ordinary cases.
    """
    need = {"label", "kind", "hard", "lesion_area_frac", "contrast"}
    if not need <= set(info.columns):
        raise ValueError(f"info lacks the column(s) {sorted(need - set(info.columns))}")
    pos = info[info["label"] == 1].copy()
    if pos.empty:
        raise ValueError("no PNEUMONIA image in info")
    pos["case"] = pos["hard"].replace("", "ordinary").fillna("ordinary")
    fig, (ax_n, ax_area, ax_con) = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    table = pos.groupby(["case", "kind"]).size().unstack(fill_value=0)
    table = table.reindex(sorted(table.index, key=lambda c: (c != "ordinary", c)))
    table.plot.barh(stacked=True, ax=ax_n, color=["C3", "C4", "C5"][: table.shape[1]])
    ax_n.invert_yaxis()
    ax_n.set(xlabel="PNEUMONIA images", ylabel="", title="Cases by kind (hard ones on purpose)")
    kinds = sorted(pos["kind"].unique())
    area = 100 * pos["lesion_area_frac"]
    bins = np.linspace(0, max(area.max(), 1e-3), 26)
    for i, k in enumerate(kinds):
        ax_area.hist(area[pos["kind"] == k], bins=bins, alpha=0.6, color=("C3", "C4", "C5")[i % 3], label=k)
    ax_area.set(xlabel="lesion area (% of the image)", ylabel="images", title="Lesion size")
    whole_numbers(ax_area)
    hard = pos["case"] != "ordinary"
    bins = np.linspace(0, pos["contrast"].max() * 1.05 + 1e-6, 26)
    ax_con.hist(pos.loc[~hard, "contrast"], bins=bins, alpha=0.6, color="C2", label="ordinary")
    ax_con.hist(pos.loc[hard, "contrast"], bins=bins, alpha=0.6, color="C3", label="hard (any kind)")
    ax_con.set(xlabel="lesion contrast (attenuation amplitude)", ylabel="images", title="Lesion contrast")
    whole_numbers(ax_con)
    for ax in (ax_n, ax_area, ax_con):
        ax.legend(fontsize=8)
    return finish(fig, save_to)
