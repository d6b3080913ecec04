"""The first code cell of every notebook after the parameters: one call that sets the run up.

:func:`setup` resolves the named knobs (:func:`utils.config.get_config`; the environment wins), prints the
versions and one line saying what this run is, stamps that line under every figure, and makes a
:class:`~utils.errors.UserError` (a mistake the reader can fix: a wrong folder, a missing file, an unknown
option) print as one line instead of a stack trace. The cell still fails, so papermill, nbval and "Run all"
stop there.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Any

from utils.config import Config, get_config
from utils.errors import UserError
from utils.machine import cpu_count
from utils.viz.common import set_caption


def _one_line_user_errors() -> None:
    """In IPython, show a :class:`UserError` as ``UserError: message`` (no traceback); elsewhere do nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def handler(shell, etype, value, tb, tb_offset=None):
        print(f"UserError: {value}", file=sys.stderr)
        return [f"UserError: {value}"]

    shell.set_custom_exc((UserError,), handler)


def run_caption(cfg: Config) -> str:
    """``"phantom X-rays · demo profile · 128 px"`` or ``"folder chest_xray · full profile · 224 px"``: the
    data a figure shows (a folder by its name, so a fixture is never captioned as the real data)."""
    if cfg.source == "folder":
        data = f"folder {cfg.data_dir.name if cfg.data_dir else '?'}"
    else:
        data = {"medmnist": "PneumoniaMNIST", "phantom": "phantom X-rays"}.get(cfg.source, cfg.source)
    return f"{data} · {cfg.profile} profile · {cfg['image_size']} px"


def setup(profile: str = "demo", data_dir: str | os.PathLike | None = None, source: str | None = None,
          image_size: int | None = None, epochs_phase1: int | None = None, epochs_phase2: int | None = None,
          **overrides: Any) -> Config:
    """Resolve the run, print what it is, caption the figures, make user errors one line; returns the config."""
    _one_line_user_errors()
    cfg = get_config(profile, data_dir, source, image_size, epochs_phase1, epochs_phase2, **overrides)
    import numpy as np
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({cpu_count()} cores)"
    print(f"python {platform.python_version()} | torch {torch.__version__} | numpy {np.__version__} | {device}")
    print(cfg.describe())
    set_caption(run_caption(cfg))
    return cfg
