"""Grad-CAM figures for notebooks 05/06: the method step by step, overlays, sanity check, faithfulness.

Every function builds its own figure, returns the :class:`~matplotlib.figure.Figure` and, when
``save_to`` is given, writes a PNG (dpi 120, tight box); none calls ``plt.show()``. Heat-maps are drawn
by matplotlib over the gray image (``imshow(cam, cmap, alpha)``), so colours are RGB by construction;
lesion masks are drawn as white contours, lung masks as cyan ones, the map's peak as a white plus, and a key
beside every overlay figure (:func:`overlay_legend`, in the right margin) names each of them. A map with nothing to show
(:func:`utils.viz.common.is_empty_map`: constant, or not finite) is drawn as "no map", never as a
rescaled blank. Images may be uint8 (0–255) or float in [0, 1].
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from utils.viz.common import CMAP, LUNG_COLOR, finish, is_empty_map, wrap_text

OVERLAY_LESION_COLOR = "white"  # on a jet heat-map red would vanish; white with a dark edge does not
NO_MAP = "no map\n(constant)"
KEY_WIDTH = 1.6  # inches added to an overlay figure for its key in the right margin (panels keep their size)
PEAK_STYLE: dict[str, Any] = {"marker": "P", "ls": "none", "ms": 9, "color": "white", "mec": "black", "mew": 0.8}
_EDGE: list[patheffects.AbstractPathEffect] = [patheffects.withStroke(linewidth=2.4, foreground="black")]


def _gray(ax: Axes, img: np.ndarray) -> None:
    img = np.asarray(img)
    img = img[..., 0] if img.ndim == 3 else img
    ax.imshow(img, cmap="gray", vmin=0, vmax=255 if img.dtype == np.uint8 else 1, interpolation="nearest")
    ax.set_axis_off()


def _contour(ax: Axes, mask: np.ndarray | None, color: str, lw: float) -> None:
    if mask is not None and np.any(mask):
        cs = ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=color, linewidths=lw)
        if color == OVERLAY_LESION_COLOR:
            cs.set_path_effects(_EDGE)


def _no_map(ax: Axes, text: str = NO_MAP, y: float = 0.5) -> None:
    """Say on the panel that there is nothing to show (a label at height ``y``; the image stays visible)."""
    ax.text(0.5, y, text, transform=ax.transAxes, ha="center", va="center" if y == 0.5 else "bottom", fontsize=8,
            color="k", bbox={"boxstyle": "round", "fc": "white", "ec": "0.3", "alpha": 0.85})


def _cam_on(ax: Axes, img: np.ndarray, cam: np.ndarray | None, alpha: float = 0.45,
            lesion: np.ndarray | None = None, lung: np.ndarray | None = None, peak: bool = True) -> bool:
    """Gray image + heat-map + optional contours and peak marker on one axis; an empty map is drawn as
    "no map". Returns whether a map was drawn."""
    _gray(ax, img)
    drawn = cam is not None and not is_empty_map(cam)
    if cam is not None and drawn:
        ax.imshow(cam, cmap=CMAP, vmin=0, vmax=1, alpha=alpha, interpolation="bilinear")
    _contour(ax, lung, LUNG_COLOR, 0.8)
    _contour(ax, lesion, OVERLAY_LESION_COLOR, 1.0)
    if cam is not None and drawn and peak:
        top = np.argwhere(np.asarray(cam) == np.nanmax(cam))  # a plateau (a pooled map's top cell): its centre
        r, c = top.mean(axis=0)
        ax.plot(c, r, **PEAK_STYLE)
    if not drawn:
        _no_map(ax)
    return drawn


def _title(ax: Axes, text: str, width_in: float, fontsize: float = 8, **kw: Any) -> None:
    """A panel title wrapped to the panel's width (so neighbouring titles never run into each other)."""
    ax.set_title(wrap_text(text, width_in, fontsize), fontsize=fontsize, **kw)


def overlay_legend(fig: Figure, lesion: bool = False, lung: bool = False, peak: bool = False,
                   heat: bool = True, lung_label: str = "lung", extra: Sequence[Any] = ()) -> Any:
    """The key beside an overlay figure (right margin): the heat-map's colours (low → high), the lesion contour, the lung
    contour, the map's peak, plus ``extra`` handles; ``None`` when there is nothing to name."""
    handles: list[Any] = []
    labels: list[str] = []
    if heat:
        cmap = plt.get_cmap(CMAP)
        handles.append(tuple(Patch(facecolor=cmap(v), edgecolor="none", alpha=0.8) for v in np.linspace(0, 1, 6)))
        labels.append("map, low → high")
    if lesion:
        handles.append(Line2D([], [], color=OVERLAY_LESION_COLOR, lw=1.2, path_effects=_EDGE))
        labels.append("lesion (ground truth)")
    if lung:
        handles.append(Line2D([], [], color=LUNG_COLOR, lw=1.2))
        labels.append(lung_label)
    if peak:
        handles.append(Line2D([], [], **PEAK_STYLE))
        labels.append("map peak")
    for h in extra:
        handles.append(h)
        labels.append(str(h.get_label()))
    if not handles:
        return None
    style: dict[str, Any] = {"loc": "outside right center", "fontsize": 8, "frameon": False, "handlelength": 3.2,
                             "handler_map": {tuple: HandlerTuple(ndivide=None, pad=0)}}
    return fig.legend(handles, labels, **style)


def _any(masks: np.ndarray | None, n: int | None = None) -> bool:
    return masks is not None and bool(np.any(np.asarray(masks)[:n]))


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
    width = 2.3
    fig, axes = plt.subplots(2, ncols, figsize=(width * ncols + KEY_WIDTH, 5.0), layout="constrained")
    for ax in axes.ravel():
        ax.set_axis_off()
    target = int(cam.targets[index])
    prob = float(cam.logits[index].softmax(0)[target])
    _gray(axes[0, 0], image)
    _title(axes[0, 0], f"input\nexplaining {class_names[target]} (p={prob:.2f})", width, 9)
    for ax, k in zip(axes[0, 1:], top):
        ax.imshow(acts[k], cmap="viridis")
        ax.set_title(f"A^{k}  alpha={alphas[k]:+.2e}", fontsize=9)
    ax = axes[1, 0]
    ax.set_axis_on()
    ax.bar(np.arange(len(alphas)), np.sort(alphas)[::-1], width=1.0, color="gray")
    ax.axhline(0, color="k", lw=0.6)
    _title(ax, f"alpha_k = mean grad ({len(alphas)} channels)", width, 9)
    ax.set_xticks([])
    lim = float(np.abs(cam.weighted[index]).max()) or 1.0
    axes[1, 1].imshow(cam.weighted[index], cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[1, 1].set_title("sum_k alpha_k A^k", fontsize=9)
    axes[1, 2].imshow(cam.raw_maps[index], cmap=CMAP)
    axes[1, 2].set_title(f"ReLU ({cam.raw_maps.shape[1]}×{cam.raw_maps.shape[2]})", fontsize=9)
    axes[1, 3].imshow(cam.maps[index], cmap=CMAP, vmin=0, vmax=1)
    axes[1, 3].set_title("upsampled, scaled to [0, 1]", fontsize=9)
    if is_empty_map(cam.raw_maps[index]):
        for ax in axes[1, 2:4]:
            _no_map(ax, "no map\n(all zero after ReLU)")
    drawn = _cam_on(axes[1, 4], image, cam.maps[index])
    axes[1, 4].set_title("overlay", fontsize=9)
    overlay_legend(fig, peak=drawn, heat=drawn)
    return finish(fig, save_to)


def plot_colour_order(rgb_overlay: np.ndarray, cam: np.ndarray, save_to: str | os.PathLike | None = None) -> Figure:
    """The classic colour-order bug beside the correct overlay: ``rgb_overlay`` (from
    :func:`utils.explain.gradcam.overlay` of a gray image, float RGB in [0, 1]) | the same overlay with its
    channels reversed — what OpenCV's BGR heat-map looks like when shown as RGB (hot turns blue) | the map.

    Reversing the channels of the blend is exactly blending the reversed heat-map, since a gray image is the
    same in every channel.
    """
    rgb = np.clip(np.asarray(rgb_overlay, dtype=float), 0, 1)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2), layout="constrained")
    panels = ((rgb, "correct: RGB overlay"), (rgb[..., ::-1], "reference bug: BGR shown as RGB"),
              (np.asarray(cam, dtype=float), "the map (hot = 1)"))
    for ax, (img, title) in zip(axes, panels):
        ax.imshow(img, cmap=CMAP if img.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    if is_empty_map(cam):
        _no_map(axes[2])
    return finish(fig, save_to)


def plot_cam_grid(images: np.ndarray, cams: np.ndarray, titles: Sequence[str] | None = None,
                  lesion_masks: np.ndarray | None = None, lung_masks: np.ndarray | None = None,
                  ncols: int = 4, alpha: float = 0.45, show_image: bool = False, suptitle: str | None = None,
                  image_titles: Sequence[str] | None = None, lung_label: str = "lung",
                  save_to: str | os.PathLike | None = None) -> Figure:
    """Overlays for a set of images (lesion contours white, lung contours cyan, peak as +), a key below.

    With ``show_image`` each overlay is preceded by the plain image, titled ``image_titles[i]`` (default
    "input"); ``titles[i]`` heads the overlay; ``suptitle`` goes above the grid; ``lung_label`` names the
    cyan outline in the key (say "estimated" when it is).
    """
    n = len(images)
    per = 2 if show_image else 1
    ncols = max(1, min(ncols, n)) * per
    nrows = max(1, int(np.ceil(n * per / ncols)))
    width = 2.4
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols + KEY_WIDTH, 2.5 * nrows), layout="constrained",
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    flat = axes.ravel()
    drawn = False
    for i in range(n):
        if show_image:
            _gray(flat[per * i], images[i])
            _title(flat[per * i], image_titles[i] if image_titles is not None else "input", width)
        ax = flat[per * i + per - 1]
        drawn |= _cam_on(ax, images[i], cams[i], alpha, None if lesion_masks is None else lesion_masks[i],
                         None if lung_masks is None else lung_masks[i])
        if titles is not None:
            _title(ax, titles[i], width)
    if suptitle:
        fig.suptitle(wrap_text(suptitle, width * ncols, 10), fontsize=10)
    overlay_legend(fig, lesion=_any(lesion_masks, n), lung=_any(lung_masks, n), peak=drawn, heat=drawn,
                   lung_label=lung_label)
    _drop_ticks(fig)
    return finish(fig, save_to)


#: How the randomisation figure names the similarities of :func:`utils.explain.sanity.randomisation_check`.
SIMILARITY_NAMES = {"abs_spearman": "|Spearman ρ|", "ssim": "SSIM"}


def _similarity_panel(ax: Axes, rows: Sequence[Mapping[str, Any]], name: str) -> None:
    """One similarity of the randomisation check, per step: this image's randomised map vs its trained map, against
    the reference level (another image's randomised map), each a mean with its 95 % interval; a ring marks the steps
    whose paired difference lies above the reference."""
    xs = np.arange(len(rows))

    def pts(key: str) -> tuple[np.ndarray, np.ndarray]:
        v = np.array([float(r[key]["value"]) for r in rows])
        err = np.array([[v[i] - float(r[key]["ci_low"]), float(r[key]["ci_high"]) - v[i]] for i, r in enumerate(rows)])
        return v, np.nan_to_num(err.T, nan=0.0)

    same, e_same = pts("similarity")
    ref, e_ref = pts("reference")
    ax.errorbar(xs - 0.08, same, yerr=e_same, fmt="o-", color="C3", ms=4, lw=1, capsize=3,
                label="same image: randomised vs trained map (mean, 95% CI)")
    ax.errorbar(xs + 0.08, ref, yerr=e_ref, fmt="s--", color="0.45", ms=4, lw=1, capsize=3,
                label="reference level: vs another image's randomised map")
    above = [i for i, r in enumerate(rows) if r.get("verdict") == "above the reference"]
    ax.plot(xs[above] - 0.08, same[above], "o", ms=11, mfc="none", mec="C3", mew=1.4,
            label="above the reference (paired CI of the difference > 0)")
    ax.set_xticks(xs, ["+" + str(r["blocks"]).split("+")[-1] for r in rows])
    low = min(0.0, float(np.nanmin(np.r_[same - e_same[0], ref - e_ref[0]])) - 0.05)
    ax.set(ylim=(low, 1.05), ylabel=name)
    ax.axhline(0, color="0.8", lw=0.6, zorder=0)
    ax.set_xlabel("blocks re-initialised, from the top (cumulative)")


def plot_randomisation(table: pd.DataFrame, image: np.ndarray, index: int = 0,
                       steps: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                       save_to: str | os.PathLike | None = None) -> Figure:
    """Cascading randomisation: the maps of one image as blocks are re-initialised from the top (``table`` of
    :func:`utils.explain.sanity.cascading_randomisation`) and, below, with ``steps`` (the ``"steps"`` of
    :func:`utils.explain.sanity.randomisation_check`) one panel per similarity — the same image's randomised map
    against its trained map, next to the reference level measured in the same run; without ``steps``, the spread of
    |ρ| over the images per step."""
    n_steps = len(table)
    width = 1.9 * (n_steps + 1)
    fig = plt.figure(figsize=(width + KEY_WIDTH, 5.3), layout="constrained")
    grid = fig.add_gridspec(2, n_steps + 1, height_ratios=[1.1, 1])
    ax = fig.add_subplot(grid[0, 0])
    _gray(ax, image)
    ax.set_title("input", fontsize=9)
    drawn = False
    for j, row in enumerate(table.itertuples()):
        ax = fig.add_subplot(grid[0, j + 1])
        drawn = _cam_on(ax, image, row.maps[index], peak=False) or drawn
        ax.set_title("trained" if row.step == 0 else f"+{row.randomised}", fontsize=9)
    n_images = len(table["rho"].iloc[0])
    extra: list[Any] = []
    if steps:
        metrics = list(steps)
        cuts = np.linspace(0, n_steps + 1, len(metrics) + 1).round().astype(int)
        for k, metric in enumerate(metrics):
            ax = fig.add_subplot(grid[1, cuts[k]:cuts[k + 1]])
            _similarity_panel(ax, steps[metric], SIMILARITY_NAMES.get(metric, metric))
            _title(ax, SIMILARITY_NAMES.get(metric, metric), (cuts[k + 1] - cuts[k]) * 1.9, 9)
        handles, labels = ax.get_legend_handles_labels()
        extra = list(zip(handles, labels))
        fig.suptitle(wrap_text(f"randomisation check on {n_images} images: a map that depends on the trained weights "
                               "falls to the reference level once they are randomised", width, 10), fontsize=10)
    else:
        ax = fig.add_subplot(grid[1, :])
        labels = ["trained"] + [f"+{b}" for b in table["randomised"].iloc[1:]]
        spread = [np.abs(np.asarray(r, dtype=float))[np.isfinite(np.asarray(r, dtype=float))] for r in table["rho"]]
        ax.boxplot(spread, positions=np.arange(n_steps), widths=0.5, showfliers=True,
                   flierprops={"markersize": 3, "alpha": 0.6}, medianprops={"color": "C1"})
        ax.plot([], [], color="C1", label="median |ρ|; box: middle 50% of the images")
        ax.plot(np.arange(n_steps), table["abs_spearman"], "o-", color="C3", lw=1, ms=4, label="mean |ρ|")
        ax.set_xticks(np.arange(n_steps), labels)
        ax.set(ylim=(-0.03, 1.05), ylabel="|Spearman ρ| vs trained maps")
        _title(ax, f"cascading randomisation on {n_images} images: maps that keep |ρ| high explain the image, not the "
                   "model (boxes: spread over the images)", width - 0.8, 10)
        ax.set_xlabel("blocks re-initialised, from the top (cumulative)")
        handles, labels = ax.get_legend_handles_labels()
        extra = list(zip(handles, labels))
    overlay_legend(fig, heat=drawn, extra=[h for h, _ in extra])
    return finish(fig, save_to)


#: How the ROAD figure names the nulls of :func:`utils.explain.road.road_test`.
NULL_NAMES = {"derangement": "another image's map", "shift": "the same map moved elsewhere"}


def _mean_band(delta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over the images (rows; rows with a NaN left out) and its 95 % interval (normal approximation), with the
    unperturbed start (0) prepended."""
    d = np.asarray(delta, dtype=np.float64)
    d = d[np.isfinite(d).all(axis=1)]
    mean = d.mean(axis=0) if len(d) else np.full(d.shape[1], np.nan)
    half = 1.96 * d.std(axis=0, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.zeros(d.shape[1])
    return np.r_[0.0, mean], np.r_[0.0, mean - half], np.r_[0.0, mean + half]


def plot_road(result: Mapping[str, Any], title: str | None = None,
              save_to: str | os.PathLike | None = None) -> Figure:
    """ROAD curves of :func:`utils.explain.road.road_test`: the mean change of the target's logit margin as pixels are
    removed and imputed — the map's most relevant first (solid) and least relevant first (dashed), the null's
    (another image's map) likewise, and the controls (the map's pixels removed from images without the evidence,
    dotted); bands: 95 % intervals of the means."""
    f0 = np.r_[0.0, 100 * np.asarray(result["fractions"], dtype=np.float64)]
    start = np.asarray(result["margin0"], dtype=np.float64)[:, None]
    null = NULL_NAMES.get(str(result.get("null_kind")), "null")
    fig, ax = plt.subplots(figsize=(4.8 + 2.4, 3.8), layout="constrained")
    handles: list[Any] = []
    labels: list[str] = []
    for key, color, name in (("map", "C0", "the map"), ("null", "C1", f"null: {null}")):
        for order, style, words in (("morf", "-", "most relevant first"), ("lerf", "--", "least relevant first")):
            mean, lo, hi = _mean_band(np.asarray(result[key][order], dtype=np.float64) - start)
            line, = ax.plot(f0, mean, style, color=color, marker="o" if order == "morf" else None, ms=3.5, lw=1.4)
            if order == "morf":
                ax.fill_between(f0, lo, hi, color=color, alpha=0.15, lw=0)
            handles.append(line)
            labels.append(f"{name}, {words}")
    ctl = result.get("control_curves")
    if ctl is not None:
        mean, lo, hi = _mean_band(np.asarray(ctl["morf"]) - np.asarray(ctl["margin0"])[:, None])
        line, = ax.plot(f0, mean, ":", color="C2", marker="s", ms=3, lw=1.6)
        ax.fill_between(f0, lo, hi, color="C2", alpha=0.15, lw=0)
        handles.append(line)
        labels.append(f"control: the map's pixels removed from {int(result.get('n_controls', 0))} NORMAL images")
    handles.append(Patch(facecolor="0.5", alpha=0.25, edgecolor="none"))
    labels.append("band: 95% interval of the mean")
    ax.axhline(0, color="0.6", lw=0.7, zorder=0)
    n = int(result.get("n", len(start)))
    ax.set(xlabel="% of pixels removed and imputed (ROAD)", ylabel="change of the target's logit margin")
    _title(ax, title or f"ROAD on {n} images: a faithful map falls below the null, most relevant first", 4.4, 10)
    fig.legend(handles, [wrap_text(t, 1.9, 7.5) for t in labels], loc="outside right center", fontsize=7.5,
               frameon=False)
    return finish(fig, save_to)


def plot_method_comparison(images: np.ndarray, maps: Mapping[str, np.ndarray],
                           lesion_masks: np.ndarray | None = None, n_images: int = 4,
                           save_to: str | os.PathLike | None = None, lung_masks: np.ndarray | None = None,
                           lung_label: str = "lung", image_titles: Sequence[str] | None = None) -> Figure:
    """Rows: images; columns: the input then one overlay per method (from :func:`utils.explain.checks.compare_methods`).

    Column titles are the method names, wrapped to the column's width; ``image_titles[i]`` heads row i's input
    (default: "input" over the first row only); a key beside the grid names the marks (``lung_masks``: cyan
    outlines, named ``lung_label`` in the key — say "estimated" when they are).
    """
    n = max(1, min(n_images, len(images)))
    cols = len(maps) + 1
    width = 2.1
    fig, axes = plt.subplots(n, cols, figsize=(width * cols + KEY_WIDTH, 2.2 * n + 0.3), layout="constrained",
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    drawn = False
    for i in range(min(n_images, len(images))):
        _gray(axes[i, 0], images[i])
        for j, m in enumerate(maps.values(), start=1):
            drawn |= _cam_on(axes[i, j], images[i], m[i], lesion=None if lesion_masks is None else lesion_masks[i],
                             lung=None if lung_masks is None else lung_masks[i])
    for j, name in enumerate(maps, start=1):
        _title(axes[0, j], name, width, 9)
    if image_titles is None:
        axes[0, 0].set_title("input", fontsize=9)
    for i, text in enumerate(list(image_titles or [])[:n]):
        _title(axes[i, 0], text, width, 8)
    overlay_legend(fig, lesion=_any(lesion_masks, n), lung=_any(lung_masks, n), peak=drawn, heat=drawn,
                   lung_label=lung_label)
    _drop_ticks(fig)
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
                    lung_label: str = "lung", save_to: str | os.PathLike | None = None) -> Figure:
    """One panel triple per case: the image | the map for PNEUMONIA (evidence for) | the map for NORMAL
    (what pulled the other way) — whichever explanation the maps come from. ``titles[i]`` heads the image panel;
    lesion contours white, lungs cyan (``lung_label`` names them in the key below).

    ``cases_per_row`` defaults to 1 up to 8 cases, else 2.
    """
    n = len(images)
    per_row = cases_per_row or (1 if n <= 8 else 2)
    nrows = max(1, int(np.ceil(n / per_row)))
    width = 2.3
    fig, axes = plt.subplots(nrows, 3 * per_row, figsize=(width * 3 * per_row + KEY_WIDTH, 2.45 * nrows),
                             layout="constrained", squeeze=False)
    drawn = False
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
        _contour(axes[r, c0], lesion, OVERLAY_LESION_COLOR, 0.8)
        _title(axes[r, c0], titles[i], width, 7.5)
        drawn |= _cam_on(axes[r, c0 + 1], images[i], cams_pneumonia[i], lesion=lesion, lung=lung)
        axes[r, c0 + 1].set_title("map for PNEUMONIA", fontsize=8)
        drawn |= _cam_on(axes[r, c0 + 2], images[i], cams_normal[i], lesion=lesion, lung=lung)
        axes[r, c0 + 2].set_title("map for NORMAL", fontsize=8)
    overlay_legend(fig, lesion=_any(lesion_masks, n), lung=_any(lung_masks, n), peak=drawn, heat=drawn,
                   lung_label=lung_label)
    _drop_ticks(fig)
    return finish(fig, save_to)


def plot_group_strip(groups: Mapping[str, np.ndarray], ylabel: str = "fraction of map outside the lungs",
                     title: str | None = None, reference: float | None = None, reference_label: str | None = None,
                     save_to: str | os.PathLike | None = None) -> Figure:
    """Box plot plus every point (jittered strip) per group, with its n; empty groups are labelled n=0.

    ``reference`` draws a dotted horizontal line (e.g. a rule's cut-off), named in the legend by
    ``reference_label`` (default: its value).
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
        ax.axhline(reference, color="gray", ls=":", lw=1, label=reference_label or f"reference {reference:.3g}")
        ax.legend(fontsize=8, loc="best")
    ax.set(xlim=(-0.6, len(names) - 0.4), ylabel=ylabel)
    _title(ax, title or "", 1.6 + 1.5 * len(names), 10)
    return finish(fig, save_to)


def plot_failure_gallery(images: np.ndarray, cams: np.ndarray, categories: Sequence[str],
                         titles: Sequence[str], order: Sequence[str] | None = None, per_category: int = 3,
                         lesion_masks: np.ndarray | None = None, lung_masks: np.ndarray | None = None,
                         title: str | None = None, lung_label: str = "lung",
                         save_to: str | os.PathLike | None = None) -> Figure:
    """One row per failure category present (in ``order``): up to ``per_category`` example overlays
    (PNEUMONIA map), the row labelled with the category and its count; ``title`` above the grid, a key below."""
    categories = [str(c) for c in categories]
    order = [c for c in (order or dict.fromkeys(categories)) if c in categories]
    ncols = max(1, min(per_category, max((categories.count(c) for c in order), default=1)))
    nrows = max(1, len(order))
    width = 2.5
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols + 0.4 + KEY_WIDTH, 2.6 * nrows), layout="constrained",
                             squeeze=False)
    drawn = False
    shown: list[int] = []
    for ax in axes.ravel():
        ax.set_axis_off()
    if not order:
        axes[0, 0].text(0, 0.5, "no cases to show", fontsize=11, transform=axes[0, 0].transAxes)
    for r, cat in enumerate(order):
        idx = [i for i, c in enumerate(categories) if c == cat][:ncols]
        for j, i in enumerate(idx):
            ax = axes[r, j]
            drawn |= _cam_on(ax, images[i], cams[i], lesion=None if lesion_masks is None else lesion_masks[i],
                             lung=None if lung_masks is None else lung_masks[i])
            _title(ax, titles[i], width, 7.5)
            shown.append(i)
        axes[r, 0].text(-0.08, 0.5, f"{cat}\n(n={categories.count(cat)})", transform=axes[r, 0].transAxes,
                        rotation=90, ha="right", va="center", fontsize=8.5)
    if title:
        fig.suptitle(wrap_text(title, width * ncols + 0.4, 10), fontsize=10)
    overlay_legend(fig, lesion=lesion_masks is not None and _any(np.asarray(lesion_masks)[shown]),
                   lung=lung_masks is not None and _any(np.asarray(lung_masks)[shown]), peak=drawn, heat=drawn,
                   lung_label=lung_label)
    _drop_ticks(fig)
    return finish(fig, save_to)
