"""The PneumoniaMNIST path offline: synthetic files in medmnist's own format, read by ``medmnist`` itself.

medmnist reads ``<root>/pneumoniamnist[_<size>].npz`` with the arrays ``{train,val,test}_images`` (uint8,
``(N, S, S)``) and ``{train,val,test}_labels`` (uint8, ``(N, 1)``); :func:`utils.data.load_data` points it at the
project's cache folder and downloads only when online. Here nothing is online and the files are tiny fakes.
"""
from __future__ import annotations

import medmnist  # the `dev` extra installs it (the core does not need it; `online` does)
import numpy as np
import pytest
from PIL import Image

from utils.config import get_config
from utils.data import load_data, sources
from utils.errors import UserError

COUNTS = {"train": 12, "val": 4, "test": 6}


def write_pneumoniamnist(root, size: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A PneumoniaMNIST file of ``size`` px under ``root`` (medmnist's name and keys); returns its arrays."""
    rng = np.random.default_rng(seed)
    arrays = {s: (rng.integers(0, 256, (n, size, size), dtype=np.uint8), (np.arange(n) % 2).astype(np.uint8)[:, None])
              for s, n in COUNTS.items()}
    flat = {f"{s}_{kind}": a for s, pair in arrays.items() for kind, a in zip(("images", "labels"), pair)}
    np.savez_compressed(root / f"pneumoniamnist{'' if size == 28 else f'_{size}'}.npz", **flat)
    return arrays


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """A project root with an empty cache, no network, and a record of every dataset medmnist was asked for."""
    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path))
    monkeypatch.setattr(sources, "is_online", lambda host, timeout=3.0: False)
    asked = []

    class Spy(medmnist.PneumoniaMNIST):
        def __init__(self, *args, **kwargs):
            asked.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(medmnist, "PneumoniaMNIST", Spy)
    return asked


def _config(size: int):
    cfg = get_config("demo", source="medmnist", image_size=size, quiet=True)
    cfg.path("cache_dir").mkdir(parents=True, exist_ok=True)
    return cfg


def test_native_size_is_read_by_medmnist_unchanged(offline):
    cfg = _config(64)
    arrays = write_pneumoniamnist(cfg.path("cache_dir"), 64)
    bundle = load_data(cfg, progress=False)
    assert [(a["split"], a["size"], a["download"], a["root"]) for a in offline] == \
        [(s, 64, False, str(cfg.path("cache_dir"))) for s in ("train", "val", "test")]  # offline: never downloads
    assert bundle.source == "medmnist" and bundle.image_size == 64 and list(bundle.splits) == ["train", "val", "test"]
    for name, (images, labels) in arrays.items():
        split = bundle[name]
        np.testing.assert_array_equal(split.images, images)
        np.testing.assert_array_equal(split.labels, labels.ravel())
        assert list(split.patient_ids) == list(split.ids) and len(set(split.ids)) == COUNTS[name]  # no patient ids
    assert any("no patient ids" in n for n in bundle.notes)
    assert load_data(cfg, progress=False).fingerprint == bundle.fingerprint


def test_another_size_reads_the_next_larger_file_and_resizes(offline):
    cfg = _config(100)
    cache = cfg.path("cache_dir")
    write_pneumoniamnist(cache, 64, seed=1)  # too small for 100 px: not the one to read
    arrays = write_pneumoniamnist(cache, 128, seed=2)
    bundle = load_data(cfg, progress=False)
    assert {a["size"] for a in offline} == {128}
    images = arrays["test"][0]
    want = np.stack([np.asarray(Image.fromarray(im).resize((100, 100), Image.Resampling.BILINEAR)) for im in images])
    assert bundle.image_size == 100 and bundle["test"].images.shape == (COUNTS["test"], 100, 100)
    np.testing.assert_array_equal(bundle["test"].images, want)


def test_nothing_cached_and_offline_is_one_line(offline):
    cfg = _config(64)
    with pytest.raises(UserError, match="PneumoniaMNIST is unavailable") as exc:
        load_data(cfg, progress=False)
    assert "\n" not in str(exc.value) and offline[0]["download"] is False
