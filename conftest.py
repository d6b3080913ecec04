"""Test-session settings for the whole repository (unit tests and the notebooks nbval executes).

Nothing under test writes into the working copy's ``data/``, ``model/`` or ``assets/``: a learner who trained on
real data and then runs ``make test`` keeps every file. Concretely:

* ``CXR_PROJECT_ROOT`` points at a temporary folder for the whole session (unless the caller set it);
* every notebook that nbval executes gets a **fresh, empty** root of its own — it must rebuild whatever it needs
  from upstream, exactly as in a fresh Colab runtime (``utils.stages``) — removed after its last cell, so the disk
  holds one notebook's checkpoints at a time (``CXR_KEEP_TEST_ROOTS=1`` keeps every root for inspection);
* at the end the working copy's ``data/``, ``model/`` and ``assets/`` are compared with a snapshot taken at the
  start; any change fails the session.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
GUARDED = ("data", "model", "assets")
_STATE: dict[str, object] = {}


def snapshot(root: Path = REPO) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under the guarded folders of ``root``."""
    out = {}
    for sub in GUARDED:
        for p in sorted((root / sub).rglob("*")):
            if p.is_file():
                st = p.stat()
                out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def pytest_configure(config: pytest.Config) -> None:
    _STATE["before"] = snapshot()
    if not os.environ.get("CXR_PROJECT_ROOT"):
        tmp = Path(tempfile.mkdtemp(prefix="cxr-test-root-"))
        os.environ["CXR_PROJECT_ROOT"] = str(tmp)
        _STATE["tmp"] = tmp
    _STATE["session_root"] = os.environ["CXR_PROJECT_ROOT"]
    _STATE["notebook_roots"] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the first cell of a notebook starts its kernel: a fresh, empty project root for that notebook."""
    nb = getattr(item, "parent", None)
    path = getattr(nb, "fspath", None)
    if path is None or not str(path).endswith(".ipynb"):
        os.environ["CXR_PROJECT_ROOT"] = str(_STATE["session_root"])
        return
    roots: dict = _STATE["notebook_roots"]  # type: ignore[assignment]
    if str(path) not in roots:
        roots[str(path)] = Path(tempfile.mkdtemp(prefix=f"cxr-nb-{Path(str(path)).stem}-"))
    os.environ["CXR_PROJECT_ROOT"] = str(roots[str(path)])


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After a notebook's last cell, its root goes (nbval runs a notebook's cells in a row): the session holds one
    notebook's checkpoints at a time, not the whole series' (about 4 GB at the test knobs)."""
    path = str(getattr(getattr(item, "parent", None), "fspath", ""))
    if not path.endswith(".ipynb") or str(getattr(getattr(nextitem, "parent", None), "fspath", "")) == path:
        return
    root = _STATE["notebook_roots"].pop(path, None)  # type: ignore[attr-defined]
    if root is not None and os.environ.get("CXR_KEEP_TEST_ROOTS") is None:
        shutil.rmtree(root, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    changed = sorted(set(_STATE.get("before", {}).items()) ^ set(snapshot().items()))  # type: ignore[union-attr]
    if changed:
        names = sorted({name for name, _ in changed})
        print(f"\nerror: the test session changed the working copy's {'/'.join(GUARDED)}: "
              f"{', '.join(names[:5])}{' …' if len(names) > 5 else ''}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    for p in [_STATE.get("tmp"), *_STATE.get("notebook_roots", {}).values()]:  # type: ignore[union-attr]
        if p is not None and os.environ.get("CXR_KEEP_TEST_ROOTS") is None:
            shutil.rmtree(p, ignore_errors=True)
