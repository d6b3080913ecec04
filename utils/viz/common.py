"""What every figure of the series shares: resolution, colours, the run caption and the one ``finish``.

The caption (which data, profile and size a figure shows) is stamped by :func:`finish` *below* everything
else: in a constrained-layout figure it is the figure's bottom label, so the layout makes room for it; in a
figure without a layout engine it is placed under the figure's tight box once the figure is laid out. A key
belongs in the right margin (``fig.legend(loc="outside right upper")``): a legend in the bottom margin would
be moved onto a caption below it when the figure is cropped tightly (as notebooks and :func:`finish` save
it), so there the caption goes above the figure instead. Either way it never covers an axis, a tick label
or a legend.
"""
from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

from utils.config import CLASSES
from utils.evaluate import verdicts
from utils.fileio import atomic_path

DPI = 120
CLASS_NAMES: tuple[str, ...] = CLASSES
CLASS_COLORS: tuple[str, str] = ("C0", "C1")  # NORMAL blue, PNEUMONIA orange
LESION_COLOR = "red"
LUNG_COLOR = "cyan"
CMAP = "jet"
CAPTION_FONTSIZE = 7.0
CAPTION_COLOR = "0.45"

_CAPTION: dict[str, str] = {"text": ""}
_ATTR = "_cxr_caption"


def set_caption(text: str) -> None:
    """The line stamped under every saved figure (which data, profile and size it shows); "" for none."""
    _CAPTION["text"] = str(text)


def caption() -> str:
    """The current figure caption."""
    return _CAPTION["text"]


@contextmanager
def captioned(text: str) -> Iterator[None]:
    """Stamp ``text`` under the figures made inside the block (e.g. a figure drawn from a recorded real-data run
    in a notebook whose caption names the phantom run), then restore the caption before it."""
    before = _CAPTION["text"]
    set_caption(text)
    try:
        yield
    finally:
        set_caption(before)


def caption_artist(fig: Figure) -> Text | None:
    """The caption :func:`finish` stamped on ``fig`` (None if it has none)."""
    return getattr(fig, _ATTR, None)


def wrap_text(text: str, width_in: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``fontsize`` points (each line kept as is
    where it already fits; an average glyph is taken as 0.6 em, generous for DejaVu Sans)."""
    chars = max(8, int(width_in * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(line, chars, break_long_words=False, break_on_hyphens=False) or line
                     for line in str(text).split("\n"))


def whole_numbers(*axes: Axes, axis: str = "y") -> None:
    """Tick a count axis at whole numbers only (no "2.5 patients"), as densely as matplotlib's default."""
    for ax in axes:
        getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(nbins="auto", integer=True, steps=[1, 2, 5, 10]))


def is_empty_map(cam: np.ndarray | None) -> bool:
    """True for a map with nothing to show: missing, or no map by the series' one rule
    (:func:`utils.evaluate.verdicts.is_empty_map`: constant everywhere, all zero included, or nothing finite).

    Such a map is drawn as "no map" (a flat map points nowhere; rescaling it would paint noise or nothing).
    """
    return cam is None or verdicts.is_empty_map(np.asarray(cam, dtype=float))


def _outside_legends(fig: Figure, where: str) -> bool:
    """Whether a figure legend sits in the ``where`` ("lower", "upper") margin, outside the axes."""
    return any(getattr(leg, "_outside_loc", None) == where for leg in fig.legends)


def _stamp(fig: Figure, text: str) -> Text:
    """Put the caption where nothing else is, also once a notebook or ``savefig`` crops the figure tightly (a
    legend "outside" the axes is re-anchored to the cropped box, so nothing may sit beyond it)."""
    width = fig.get_figwidth()
    text = wrap_text(text, 0.98 * width, CAPTION_FONTSIZE)
    style: dict[str, Any] = {"ha": "right", "fontsize": CAPTION_FONTSIZE, "color": CAPTION_COLOR,
                             "multialignment": "right"}
    constrained = isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    if constrained and getattr(fig, "_supxlabel", None) is None and not _outside_legends(fig, "lower"):
        # the figure's bottom label: constrained layout reserves a margin for it under every axis
        return fig.supxlabel(text, x=0.995, va="bottom", **style)
    # otherwise under (or, with a key in the bottom margin, over) everything drawn, once laid out
    fig.draw_without_rendering()
    box = fig.get_tightbbox()  # inches
    x = min(box.x1, width) / width
    if _outside_legends(fig, "lower") and not _outside_legends(fig, "upper"):
        return fig.text(x, (box.y1 + 0.04) / fig.get_figheight(), text, va="bottom", **style)
    return fig.text(x, (box.y0 - 0.04) / fig.get_figheight(), text, va="top", **style)


def finish(fig: Figure, save_to: str | os.PathLike | None = None, dpi: float | None = None) -> Figure:
    """Stamp the run caption under the figure, save it as a PNG when asked (atomically, creating the folder;
    ``dpi`` defaults to :data:`DPI`), return it. The caption is stamped once, whatever the number of calls."""
    if _CAPTION["text"] and caption_artist(fig) is None:
        setattr(fig, _ATTR, _stamp(fig, _CAPTION["text"]))
    if save_to is not None:
        with atomic_path(save_to) as tmp:
            fig.savefig(tmp, dpi=dpi or DPI, bbox_inches="tight", format="png")
    return fig
