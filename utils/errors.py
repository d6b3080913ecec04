"""The one kind of error a user can fix: shown as one line (``error: …`` / ``UserError: …``), never a trace.

Raise :class:`UserError` for a bad path, option, file or setting, with a message that names the problem and
what to do; :mod:`utils.cli` and :func:`utils.notebook.setup` turn it into one line. Any other exception is a
bug and keeps its traceback. This module imports nothing, so every other module may use it.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad path, bad option, bad file): shown as one line, never a trace."""
