"""Atomic file writes (a temp file in the target's folder, then ``os.replace`` — never a half-written file)
and the one JSON writer of the project (strict JSON: numpy values become numbers, nan/inf become null).

Every file the package writes goes through here: :func:`atomic_write` (any writer taking a file handle:
``torch.save``, ``np.savez``, ``fig.savefig``), :func:`write_csv`, :func:`atomic_copy`, :func:`write_json` /
:func:`update_json_section`."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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
    with atomic_path(path) as tmp, open(tmp, "wb") if binary else open(tmp, "w", newline="", encoding="utf-8") as fh:
        write(fh)
    return Path(path)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the file ``src`` to ``dst`` atomically: a reader of ``dst`` sees the old file or the whole new one."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def write_csv(path: str | os.PathLike, frame: Any, **to_csv: Any) -> Path:
    """A pandas DataFrame as CSV (``frame.to_csv(fh, **to_csv)``, e.g. ``index=False``), atomically."""
    return atomic_write(path, lambda fh: frame.to_csv(fh, **to_csv), binary=False)


def jsonable(obj: Any) -> Any:
    """A plain-JSON copy: numpy scalars and arrays → Python numbers and lists, tuples → lists, paths →
    strings, nan/inf → None (strict JSON has no NaN), other objects → their ``str``."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)) or type(obj).__name__ == "ndarray":
        return [jsonable(v) for v in (obj.tolist() if hasattr(obj, "tolist") else obj)]
    if hasattr(obj, "item") and callable(obj.item) and type(obj).__module__ == "numpy":
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> Path:
    """``obj`` as strict JSON (:func:`jsonable` first), atomically, with a trailing newline."""
    text = json.dumps(jsonable(obj), indent=indent, allow_nan=False) + "\n"
    return atomic_write(path, lambda fh: fh.write(text), binary=False)


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from ``path`` ({} when the file does not exist); ValueError names a broken file."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8") or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}): fix or delete it") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(doc).__name__}")
    return doc


def update_json_section(path: str | os.PathLike, key: str, record: Any) -> dict[str, Any]:
    """Set section ``key`` of the JSON object at ``path`` to ``record``, keeping the other sections; the
    file is rewritten atomically. Returns the whole updated document."""
    doc = read_json(path)
    doc[key] = jsonable(record)
    write_json(path, doc, indent=2)
    return doc
