"""What every figure of the series shares: resolution, colours, the run caption and the one ``finish``."""
from __future__ import annotations

import os

from matplotlib.figure import Figure

from utils.config import CLASSES
from utils.fileio import atomic_path

DPI = 120
CLASS_NAMES: tuple[str, ...] = CLASSES
CLASS_COLORS: tuple[str, str] = ("C0", "C1")  # NORMAL blue, PNEUMONIA orange
LESION_COLOR = "red"
LUNG_COLOR = "cyan"
CMAP = "jet"

_CAPTION: dict[str, str] = {"text": ""}


def set_caption(text: str) -> None:
    """The line stamped under every saved figure (which data, profile and size it shows); "" for none."""
    _CAPTION["text"] = str(text)


def caption() -> str:
    """The current figure caption."""
    return _CAPTION["text"]


def finish(fig: Figure, save_to: str | os.PathLike | None = None) -> Figure:
    """Stamp the run caption, save ``fig`` as a PNG when asked (atomically, creating the folder), return it."""
    if _CAPTION["text"] and not getattr(fig, "_cxr_captioned", False):
        fig.text(0.995, 0.002, _CAPTION["text"], ha="right", va="bottom", fontsize=7, color="0.45")
        fig._cxr_captioned = True  # type: ignore[attr-defined]
    if save_to is not None:
        with atomic_path(save_to) as tmp:
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    return fig
