"""Notebook 10's leaderboard figure: one forest plot per check, the methods as rows.

:func:`plot_leaderboard` draws what :func:`utils.studies.leaderboard.leaderboard_panels` prepares — a list of panels,
each ``{"title", "xlabel", "reference": {"x", "label"} | None, "log": bool, "note": str, "rows": [{"label", "value",
"ci_low", "ci_high", "tone"}]}`` — so this module needs nothing from :mod:`utils.explain` (the two are siblings in
the layer table). Every row is a point with its 95 % interval (when it has one), coloured by its verdict
(:data:`TONES`); the vertical line is the null the row is judged against (the best image-blind prior, the
randomisation reference, ROAD's moved map, the uniform map's share of the marker); a row that could not be measured
says so on the panel instead of being drawn as zero.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from utils.viz.common import finish, wrap_text

#: Verdict tone → (colour, legend label). "none" rows (not measured) are written, not drawn.
TONES: dict[str, tuple[str, str]] = {
    "good": ("tab:green", "passes this check"),
    "neutral": ("0.45", "not shown either way (interval includes the null, or a tie)"),
    "bad": ("tab:red", "fails this check"),
    "info": ("tab:blue", "a measurement without a verdict"),
}
NOT_MEASURED = "not measured"


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def plot_leaderboard(panels: Sequence[Mapping[str, Any]], title: str | None = None, ncols: int = 4,
                     save_to: str | os.PathLike | None = None) -> Figure:
    """The leaderboard as small multiples: one panel per check (see the module docstring), the same method rows in
    every panel, top to bottom. Returns the figure (saved as a PNG when ``save_to`` is given)."""
    if not panels:
        raise ValueError("plot_leaderboard needs at least one panel")
    labels = [str(r["label"]) for r in panels[0]["rows"]]
    for p in panels:
        if [str(r["label"]) for r in p["rows"]] != labels:
            raise ValueError(f"panel {p.get('title')!r} has other rows than the first panel: {labels}")
    n = len(panels)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    height = 0.34 * len(labels) + 1.3
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols + 4.0, height * nrows + 0.6), layout="constrained",
                             sharey=True, squeeze=False)
    y = np.arange(len(labels))[::-1]
    used: set[str] = set()
    refs = False
    for ax, panel in zip(axes.ravel(), panels):
        ax.set_title(wrap_text(str(panel["title"]), 2.5, 9), fontsize=9)
        ref = panel.get("reference")
        xlabel = str(panel.get("xlabel", ""))
        if ref is not None and ref.get("label"):
            xlabel += f"\n(dashed: {ref['label']})"
        ax.set_xlabel(wrap_text(xlabel, 2.5, 8), fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", color="0.9", lw=0.6)
        ax.set_axisbelow(True)
        drawn = []
        for yy, row in zip(y, panel["rows"]):
            tone = str(row.get("tone", "none"))
            if tone not in TONES or not _finite(row.get("value")):
                ax.text(0.02, yy, row.get("text") or NOT_MEASURED, transform=ax.get_yaxis_transform(), va="center",
                        ha="left", fontsize=7.5, color="0.35", style="italic")
                continue
            colour = TONES[tone][0]
            used.add(tone)
            v = float(row["value"])
            lo, hi = row.get("ci_low"), row.get("ci_high")
            if _finite(lo) and _finite(hi):
                ax.errorbar(v, yy, xerr=[[max(0.0, v - float(lo))], [max(0.0, float(hi) - v)]], fmt="o",
                            color=colour, ms=5, capsize=2.5, lw=1.3)
                drawn += [float(lo), float(hi)]
            else:
                ax.plot(v, yy, "o", color=colour, ms=5)
            drawn.append(v)
        if ref is not None and _finite(ref.get("x")):
            ax.axvline(float(ref["x"]), color="black", ls="--", lw=1)
            refs = True
            drawn.append(float(ref["x"]))
        if panel.get("log"):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        if drawn:
            lo_x, hi_x = min(drawn), max(drawn)
            pad = 0.08 * (hi_x - lo_x or abs(hi_x) or 1.0)
            if panel.get("log"):
                lo_x, hi_x = max(lo_x / 1.6, 1e-6), hi_x * 1.6
                ax.set_xlim(lo_x, hi_x)
                nice = [m * 10.0 ** e for e in range(math.floor(math.log10(lo_x)), math.ceil(math.log10(hi_x)) + 1)
                        for m in (1, 2, 5)]
                ax.set_xticks([v for v in nice if lo_x <= v <= hi_x], [f"{v:g}" for v in nice if lo_x <= v <= hi_x])
            else:
                ax.set_xlim(lo_x - pad, hi_x + pad)
        else:
            ax.set_xticks([])
        if panel.get("note"):
            ax.text(0.98, 0.02, wrap_text(str(panel["note"]), 2.6, 7), transform=ax.transAxes, ha="right",
                    va="bottom", fontsize=7, color="0.35")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_yticks(y, labels, fontsize=8)
    ax0 = axes[0, 0]
    ax0.set_ylim(-0.7, len(labels) - 0.3)
    handles = [Line2D([], [], marker="o", ls="none", color=TONES[t][0], label=TONES[t][1]) for t in TONES if t in used]
    if refs:
        handles.append(Line2D([], [], color="black", ls="--", lw=1, label="the null each row is judged against"))
    handles.append(Line2D([], [], color="0.3", marker="|", ls="-", lw=1.3, label="95% interval (patient bootstrap)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=7.5, frameon=False)
    if title:
        fig.suptitle(wrap_text(title, 3.1 * ncols + 2.4, 10), fontsize=10)
    return finish(fig, save_to)
