"""The rebuild estimates that ``utils.stages`` prints before it retrains what a fresh runtime is missing."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from utils.config import get_config
from utils.stages import estimate_seconds


class _Bundle(SimpleNamespace):
    def __getitem__(self, split):
        return self.splits[split]


def _bundle(n_train=468, n_val=115, n_test=195, size=128):
    return _Bundle(splits={s: np.zeros(n) for s, n in (("train", n_train), ("val", n_val), ("test", n_test))},
                   image_size=size)


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path))
    return get_config("demo", quiet=True)


def test_estimates_scale_with_epochs_images_and_pixels(cfg):
    small, big = _bundle(), _bundle(size=256)
    for stage in ("phase1", "phase2", "evaluation", "explanation"):
        assert 0 < estimate_seconds(stage, cfg, small) < estimate_seconds(stage, cfg, big)
    longer = cfg.variant(phase2={"epochs": 2 * cfg["phase2"]["epochs"]})
    assert estimate_seconds("phase2", longer, small) == pytest.approx(2 * estimate_seconds("phase2", cfg, small))
    assert estimate_seconds("phase1", cfg, _bundle(n_train=936)) > estimate_seconds("phase1", cfg, small)


def test_explanation_estimate_is_of_the_order_of_one_training_pass(cfg):
    # measured on the demo (2-core CPU, 128 px): choosing the explanation took 19 s, phase 2 44 s for 3 epochs;
    # the estimate once said 3 min for it. It must stay between a third of a phase-2 epoch and two epochs.
    b = _bundle()
    epoch = estimate_seconds("phase2", cfg, b) / cfg["phase2"]["epochs"]
    assert epoch / 3 < estimate_seconds("explanation", cfg, b) < 2 * epoch


def test_unknown_stage_is_refused(cfg):
    with pytest.raises(ValueError, match="unknown stage"):
        estimate_seconds("phase3", cfg, _bundle())
