"""The one command-line base of the project: user mistakes are one line on stderr and exit code 2.

Every command (``pneumonia-predict``, ``python -m utils.train.pipeline``, ``python -m utils.data.fixture``,
``python -m benchmarks.bench``) builds its parser from :class:`Parser` and runs through :func:`run_main`.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from utils.errors import UserError

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are :class:`UserError` (one line, no usage dump)."""

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def one_line(text: object) -> str:
    """``text`` with all whitespace runs folded to single spaces."""
    return " ".join(str(text).split())


def print_error(message: object) -> None:
    """``error: <message>`` on stderr, on one line."""
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)


def run_main(body: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``body(argv)`` and turn what a user can cause into an exit code: a :class:`UserError` prints one line
    and returns 2, ``--help`` returns 0, Ctrl-C returns 130. Anything else is a bug and keeps its traceback."""
    try:
        return int(body(argv))
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except UserError as exc:
        print_error(exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print_error("interrupted.")
        return EXIT_INTERRUPTED
