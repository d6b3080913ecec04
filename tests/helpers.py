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
