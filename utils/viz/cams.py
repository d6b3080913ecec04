"""Grad-CAM figures for notebooks 05/06: the method step by step, overlays, sanity check, faithfulness.

Every function builds its own figure, returns the :class:`~matplotlib.figure.Figure` and, when
``save_to`` is given, writes a PNG (dpi 120, tight box); none calls ``plt.show()``. Heat-maps are drawn
by matplotlib over the gray image (``imshow(cam, cmap, alpha)``), so colours are RGB by construction;
lesion masks are drawn as white contours, lung masks as cyan ones, the map's peak as a cross.
Images may be uint8 (0–255) or float in [0, 1].
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from utils.viz.common import CMAP, finish


def _gray(ax: Axes, img: np.ndarray) -> None:
    img = np.asarray(img)
    img = img[..., 0] if img.ndim == 3 else img
    ax.imshow(img, cmap="gray", vmin=0, vmax=255 if img.dtype == np.uint8 else 1, interpolation="nearest")
    ax.set_axis_off()


def _cam_on(ax: Axes, img: np.ndarray, cam: np.ndarray, alpha: float = 0.45,
            lesion: np.ndarray | None = None, lung: np.ndarray | None = None, peak: bool = True) -> None:
    """Gray image + heat-map + optional contours and peak marker on one axis."""
    _gray(ax, img)
    ax.imshow(cam, cmap=CMAP, vmin=0, vmax=1, alpha=alpha, interpolation="bilinear")
    if lung is not None and np.any(lung):
        ax.contour(lung, levels=[0.5], colors="cyan", linewidths=0.8)
    if lesion is not None and np.any(lesion):
        ax.contour(lesion, levels=[0.5], colors="white", linewidths=1.0)
    if peak and np.ptp(cam) > 0:
        r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
        ax.plot(c, r, "w+", ms=10, mew=2)


def plot_gradcam_steps(image: np.ndarray, cam: Any, index: int = 0, n_channels: int = 4,
                       class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
                       save_to: str | os.PathLike | None = None) -> Figure:
    """Grad-CAM step by step for image ``index`` of the last call of a :class:`utils.explain.gradcam.GradCAM`.

    Top: the input and the ``n_channels`` activation maps A^k that contribute most (alpha_k × mean A^k).
    Bottom: the channel weights alpha_k (sorted), sum_k alpha_k A^k (before ReLU; blue = against the
    class), after ReLU (low resolution), upsampled and scaled to [0, 1], and the overlay.
    """
    acts, alphas = cam.activations[index], cam.alphas[index]
    contrib = alphas * acts.mean(axis=(1, 2))
    top = np.argsort(-contrib)[:n_channels]
    ncols = max(n_channels + 1, 5)
    fig, axes = plt.subplots(2, ncols, figsize=(2.3 * ncols, 5.0), layout="constrained")
    for ax in axes.ravel():
        ax.set_axis_off()
    target = int(cam.targets[index])
    prob = float(cam.logits[index].softmax(0)[target])
    _gray(axes[0, 0], image)
    axes[0, 0].set_title(f"input\nexplaining {class_names[target]} (p={prob:.2f})", fontsize=9)
    for ax, k in zip(axes[0, 1:], top):
        ax.imshow(acts[k], cmap="viridis")
        ax.set_title(f"A^{k}  alpha={alphas[k]:+.2g}", fontsize=9)
    ax = axes[1, 0]
    ax.set_axis_on()
    ax.bar(np.arange(len(alphas)), np.sort(alphas)[::-1], width=1.0, color="gray")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title(f"alpha_k = mean grad ({len(alphas)} channels)", fontsize=9)
    ax.set_xticks([])
    lim = float(np.abs(cam.weighted[index]).max()) or 1.0
    axes[1, 1].imshow(cam.weighted[index], cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[1, 1].set_title("sum_k alpha_k A^k", fontsize=9)
    axes[1, 2].imshow(cam.raw_maps[index], cmap=CMAP)
    axes[1, 2].set_title(f"ReLU ({cam.raw_maps.shape[1]}×{cam.raw_maps.shape[2]})", fontsize=9)
    axes[1, 3].imshow(cam.maps[index], cmap=CMAP, vmin=0, vmax=1)
    axes[1, 3].set_title("upsampled, scaled to [0, 1]", fontsize=9)
    _cam_on(axes[1, 4], image, cam.maps[index])
    axes[1, 4].set_title("overlay", fontsize=9)
    return finish(fig, save_to)


def plot_cam_grid(images: np.ndarray, cams: np.ndarray, titles: Sequence[str] | None = None,
                  lesion_masks: np.ndarray | None = None, lung_masks: np.ndarray | None = None,
                  ncols: int = 4, alpha: float = 0.45, show_image: bool = False, suptitle: str | None = None,
                  save_to: str | os.PathLike | None = None) -> Figure:
    """Overlays for a set of images (lesion contours white, lung contours cyan, peak as +).

    With ``show_image`` each overlay is preceded by the plain image; ``suptitle`` goes above the grid.
    """
    n = len(images)
    per = 2 if show_image else 1
    ncols = max(1, min(ncols, n)) * per
    nrows = int(np.ceil(n * per / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.4 * ncols, 2.5 * nrows), layout="constrained",
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    flat = axes.ravel()
    for i in range(n):
        if show_image:
            _gray(flat[per * i], images[i])
        ax = flat[per * i + per - 1]
        _cam_on(ax, images[i], cams[i], alpha, None if lesion_masks is None else lesion_masks[i],
                None if lung_masks is None else lung_masks[i])
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return finish(fig, save_to)


def plot_randomisation(table: pd.DataFrame, image: np.ndarray, index: int = 0, threshold: float | None = None,
                       save_to: str | os.PathLike | None = None) -> Figure:
    """Cascading randomisation (from :func:`utils.explain.checks.cascading_randomisation`): the maps of one
    image as blocks are re-initialised from the top, and the mean Spearman correlation per step."""
    steps = len(table)
    fig = plt.figure(figsize=(1.9 * (steps + 1), 4.6), layout="constrained")
    grid = fig.add_gridspec(2, steps + 1, height_ratios=[1.1, 1])
    ax = fig.add_subplot(grid[0, 0])
    _gray(ax, image)
    ax.set_title("input", fontsize=9)
    for j, row in enumerate(table.itertuples()):
        ax = fig.add_subplot(grid[0, j + 1])
        _cam_on(ax, image, row.maps[index], peak=False)
        ax.set_title("trained" if row.step == 0 else f"+{row.randomised}", fontsize=9)
    ax = fig.add_subplot(grid[1, :])
    labels = ["trained"] + [f"+{b}" for b in table["randomised"].iloc[1:]]
    spread = [np.abs(np.asarray(r, dtype=float))[np.isfinite(np.asarray(r, dtype=float))] for r in table["rho"]]
    ax.boxplot(spread, positions=np.arange(steps), widths=0.5, showfliers=True,
               flierprops={"markersize": 3, "alpha": 0.6})
    ax.plot(np.arange(steps), table["abs_spearman"], "o-", color="C3", lw=1, ms=4, label="mean |ρ|")
    if threshold is not None:
        ax.axhline(threshold, color="C3", ls="--", lw=0.8, label=f"pass rule: |ρ| < {threshold:g}")
    ax.set_xticks(np.arange(steps), labels)
    ax.set(ylim=(-0.03, 1.05), ylabel="|Spearman ρ| vs trained maps",
           title=f"cascading randomisation on {len(spread[0])} images: maps that keep |ρ| high explain the image, "
                 "not the model")
    ax.legend(fontsize=8, loc="upper right")
    return finish(fig, save_to)


def plot_road(result: Mapping[str, Any], title: str | None = None,
              save_to: str | os.PathLike | None = None) -> Figure:
    """ROAD curves (:func:`utils.explain.checks.road`): the target probability as the most relevant pixels of
    the map — or of a random map — are removed and imputed; mean and interquartile band over the images."""
    f = 100 * np.asarray(result["fractions"])
    f0 = np.r_[0.0, f]
    fig, ax = plt.subplots(figsize=(5.6, 3.6), layout="constrained")
    for key, label, style in (("map", "the map's most relevant first", "-"), ("random", "random map", "--")):
        curve = np.c_[result["p0"], result[key]["probs"]]
        ax.plot(f0, curve.mean(0), style, label=f"{label} (mean drop {result[key]['drop'].mean():.3f})")
        ax.fill_between(f0, np.percentile(curve, 25, 0), np.percentile(curve, 75, 0), alpha=0.15)
    ax.set(xlabel="% of pixels removed and imputed (ROAD, most relevant first)", ylabel="P(target class)",
           ylim=(-0.02, 1.02), title=title or "faster fall = more faithful map")
    ax.legend(fontsize=8)
    return finish(fig, save_to)


def plot_method_comparison(images: np.ndarray, maps: Mapping[str, np.ndarray],
                           lesion_masks: np.ndarray | None = None, n_images: int = 4,
                           save_to: str | os.PathLike | None = None) -> Figure:
    """Rows: images; columns: the input then one overlay per method (from :func:`utils.explain.checks.compare_methods`)."""
    n = min(n_images, len(images))
    cols = len(maps) + 1
    fig, axes = plt.subplots(n, cols, figsize=(2.1 * cols, 2.2 * n), layout="constrained", squeeze=False)
    for i in range(n):
        _gray(axes[i, 0], images[i])
        for j, (name, m) in enumerate(maps.items(), start=1):
            _cam_on(axes[i, j], images[i], m[i], lesion=None if lesion_masks is None else lesion_masks[i])
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
    axes[0, 0].set_title("input", fontsize=9)
    return finish(fig, save_to)


def plot_localisation_bars(table: pd.DataFrame, metrics: Sequence[str] = ("pointing", "near", "energy"),
                           title: str | None = None, save_to: str | os.PathLike | None = None) -> Figure:
    """Grouped bars of localisation scores per method; image-blind baselines are hatched and gray."""
    metrics = [m for m in metrics if m in table.columns]
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(table), 3.4), layout="constrained")
    width = 0.8 / len(metrics)
    x = np.arange(len(table))
    for k, metric in enumerate(metrics):
        vals = table[metric].to_numpy(dtype=float)
        bars = ax.bar(x + (k - (len(metrics) - 1) / 2) * width, vals, width, label=metric)
        for bar, base in zip(bars, table.get("baseline", pd.Series(False, index=table.index))):
            if base:
                bar.set_hatch("//")
                bar.set_alpha(0.55)
    if "area" in table.columns:
        ax.axhline(float(table["area"].iloc[0]), color="k", ls=":", lw=1, label="lesion area (energy chance)")
    ax.set_xticks(x, table["method"], rotation=20, ha="right")
    ax.set(ylim=(0, 1.05), ylabel="score", title=title or "localisation vs image-blind baselines")
    ax.legend(fontsize=8, ncols=2)
    return finish(fig, save_to)


# ------------------------------------------------------------------------ notebook 06: the failures
def _drop_ticks(fig: Figure) -> None:
    """Empty tick lists on image panels: hidden axes still cost tick layout at every draw (3× slower)."""
    for ax in fig.axes:
        if not ax.axison:
            ax.set(xticks=[], yticks=[])


def plot_case_sheet(images: np.ndarray, cams_pneumonia: np.ndarray, cams_normal: np.ndarray,
                    titles: Sequence[str], lesion_masks: np.ndarray | None = None,
                    lung_masks: np.ndarray | None = None, cases_per_row: int | None = None,
                    save_to: str | os.PathLike | None = None) -> Figure:
    """One panel triple per case: the image | Grad-CAM for PNEUMONIA (evidence for) | Grad-CAM for NORMAL
    (what pulled the other way). ``titles[i]`` heads the image panel; lesion contours white, lungs cyan.

    ``cases_per_row`` defaults to 1 up to 8 cases, else 2.
    """
    n = len(images)
    per_row = cases_per_row or (1 if n <= 8 else 2)
    nrows = max(1, int(np.ceil(n / per_row)))
    fig, axes = plt.subplots(nrows, 3 * per_row, figsize=(2.3 * 3 * per_row, 2.45 * nrows),
                             layout="constrained", squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    if n == 0:
        axes[0, 0].text(0, 0.5, "no cases", fontsize=11, transform=axes[0, 0].transAxes)
    for i in range(n):
        r, c0 = divmod(i, per_row)
        c0 *= 3
        lesion = None if lesion_masks is None else lesion_masks[i]
        lung = None if lung_masks is None else lung_masks[i]
        _gray(axes[r, c0], images[i])
        if lesion is not None and np.any(lesion):
            axes[r, c0].contour(lesion, levels=[0.5], colors="white", linewidths=0.8)
        axes[r, c0].set_title(titles[i], fontsize=7.5)
        _cam_on(axes[r, c0 + 1], images[i], cams_pneumonia[i], lesion=lesion, lung=lung)
        axes[r, c0 + 1].set_title("Grad-CAM: PNEUMONIA", fontsize=8)
        _cam_on(axes[r, c0 + 2], images[i], cams_normal[i], lesion=lesion, lung=lung)
        axes[r, c0 + 2].set_title("Grad-CAM: NORMAL", fontsize=8)
    _drop_ticks(fig)
    return finish(fig, save_to)


def plot_group_strip(groups: Mapping[str, np.ndarray], ylabel: str = "fraction of map outside the lungs",
                     title: str | None = None, reference: float | None = None,
                     save_to: str | os.PathLike | None = None) -> Figure:
    """Box plot plus every point (jittered strip) per group, with its n; empty groups are labelled n=0.

    ``reference`` draws a dotted horizontal line (e.g. a rule's cut-off).
    """
    names = list(groups)
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(names), 3.6), layout="constrained")
    rng = np.random.default_rng(0)
    for k, name in enumerate(names):
        v = np.asarray(groups[name], float)
        v = v[~np.isnan(v)]
        if v.size:
            ax.boxplot(v, positions=[k], widths=0.5, showfliers=False,
                       medianprops={"color": "k"}, boxprops={"color": "0.4"})
            ax.scatter(k + rng.uniform(-0.15, 0.15, v.size), v, s=14, alpha=0.7, zorder=3)
    ax.set_xticks(range(len(names)), [f"{n}\n(n={np.sum(~np.isnan(np.asarray(groups[n], float)))})"
                                      for n in names])
    if reference is not None:
        ax.axhline(reference, color="gray", ls=":", lw=1)
    ax.set(xlim=(-0.6, len(names) - 0.4), ylabel=ylabel, title=title or "")
    return finish(fig, save_to)


def plot_failure_gallery(images: np.ndarray, cams: np.ndarray, categories: Sequence[str],
                         titles: Sequence[str], order: Sequence[str] | None = None, per_category: int = 3,
                         lesion_masks: np.ndarray | None = None, lung_masks: np.ndarray | None = None,
                         title: str | None = None, save_to: str | os.PathLike | None = None) -> Figure:
    """One row per failure category present (in ``order``): up to ``per_category`` example overlays
    (PNEUMONIA map), the row labelled with the category and its count; ``title`` above the grid."""
    categories = [str(c) for c in categories]
    order = [c for c in (order or dict.fromkeys(categories)) if c in categories]
    ncols = max(1, min(per_category, max((categories.count(c) for c in order), default=1)))
    nrows = max(1, len(order))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.5 * ncols + 0.4, 2.6 * nrows), layout="constrained",
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    if not order:
        axes[0, 0].text(0, 0.5, "no cases to show", fontsize=11, transform=axes[0, 0].transAxes)
    for r, cat in enumerate(order):
        idx = [i for i, c in enumerate(categories) if c == cat][:ncols]
        for j, i in enumerate(idx):
            ax = axes[r, j]
            _cam_on(ax, images[i], cams[i], lesion=None if lesion_masks is None else lesion_masks[i],
                    lung=None if lung_masks is None else lung_masks[i])
            ax.set_title(titles[i], fontsize=7.5)
        axes[r, 0].text(-0.08, 0.5, f"{cat}\n(n={categories.count(cat)})", transform=axes[r, 0].transAxes,
                        rotation=90, ha="right", va="center", fontsize=8.5)
    if title:
        fig.suptitle(title, fontsize=10)
    _drop_ticks(fig)
    return finish(fig, save_to)
