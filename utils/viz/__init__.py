"""Every figure of the series: ``data`` (notebook 01), ``training`` (02–03), ``evaluation`` (04, 07),
``cams`` (05–09). Each function returns its figure and saves it through :func:`finish` (one place for the
resolution, the atomic PNG write and the caption that says which data a figure shows)."""
from utils.viz.common import caption, finish, set_caption

__all__ = ["caption", "finish", "set_caption"]
