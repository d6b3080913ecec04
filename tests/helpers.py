"""Small assertions and runners shared by several test files (tests/ is on sys.path under pytest)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def phantom_split(name: str, n_patients: int, seed: int, first_pid: int, size: int, masks: bool = True):
    """A :class:`utils.data.bundle.Split` of ``n_patients`` default phantom patients at ``size`` px (patient ids from
    ``first_pid``), with lung and lesion masks and lesion records unless ``masks=False``."""
    import numpy as np

    from utils.data import phantom
    from utils.data.bundle import Split, pixel_hashes

    data = phantom.stack(phantom.generate(n_patients, seed, phantom.spec_for("default", size), first_pid=first_pid))
    extra = (data["lung_masks"], data["lesion_masks"], data["info"]) if masks else ()
    return Split(name, data["images"], data["labels"], np.asarray(data["ids"]), np.asarray(data["patient_ids"]),
                 np.asarray(data["subtypes"]), pixel_hashes(data["images"]), *extra)


def phantom_bundle(size: int, n_train: int, n_val: int, n_test: int, masks: bool = True):
    """A phantom :class:`utils.data.bundle.DataBundle` at ``size`` px: train / val / test of ``n_*`` patients each
    (seeds 1 / 2 / 3, patient ids from 1 / 501 / 901, so no patient is in two splits), via :func:`phantom_split`."""
    from utils.data.bundle import DataBundle, fingerprint

    splits = {name: phantom_split(name, n, seed, pid, size, masks) for name, n, seed, pid in
              (("train", n_train, 1, 1), ("val", n_val, 2, 501), ("test", n_test, 3, 901))}
    return DataBundle("phantom", size, splits, fingerprint(splits))


@contextmanager
def demo_project(tmp_path_factory, size: int, counts: tuple[int, int, int], masks: bool = True, **overrides
                 ) -> Iterator[tuple]:
    """For a module fixture: a fresh project root that ``CXR_PROJECT_ROOT`` points at while the block runs; yields
    ``(the demo config at size px with overrides, a phantom bundle of counts = (train, val, test) patients)``."""
    import pytest

    from utils.config import get_config

    mp = pytest.MonkeyPatch()
    mp.setenv("CXR_PROJECT_ROOT", str(tmp_path_factory.mktemp("project")))
    try:
        yield get_config("demo", image_size=size, quiet=True, **overrides), phantom_bundle(size, *counts, masks=masks)
    finally:
        mp.undo()
