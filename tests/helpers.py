"""Small assertions and runners shared by several test files (tests/ is on sys.path under pytest)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(fig, path: Path) -> None:
    """``fig`` is a matplotlib Figure and ``path`` holds a PNG file."""
    from matplotlib.figure import Figure

    assert isinstance(fig, Figure)
    assert path.read_bytes()[:8] == PNG_MAGIC


def run_cli(capsys, main: Callable[[list[str]], int], *args) -> tuple[int, str, list[str]]:
    """Run a command's ``main`` in-process: (exit code, stdout, non-empty stderr lines)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]
