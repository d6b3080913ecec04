"""Atomic file writes: a temp file in the target's folder, then ``os.replace`` — never a half-written file."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def _usual_mode(path: Path) -> None:
    """``mkstemp`` makes 0600 files; give the finished file the usual permissions (0666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _usual_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = True) -> Path:
    """Write through ``write(fh)`` (binary, or UTF-8 text with ``binary=False``), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") if binary else open(tmp, "w", newline="", encoding="utf-8") as fh:
            write(fh)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> Path:
    """Strict JSON (no NaN), atomically, with a trailing newline."""
    return atomic_write(path, lambda fh: fh.write(json.dumps(obj, indent=indent, allow_nan=False) + "\n"),
                        binary=False)
