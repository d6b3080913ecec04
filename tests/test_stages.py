"""``utils.stages``: what a fresh runtime rebuilds (and through which upstream function), and the time it announces."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from utils import stages
from utils.checkpoint import make_meta, save_checkpoint, update_meta
from utils.config import get_config
from utils.evaluate import evaluation as evaluation_module
from utils.explain import choice as choice_module
from utils.paths import notebook_path
from utils.stages import estimate_seconds
from utils.train import pipeline


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


# ------------------------------------------------------------------------------------ the rebuild chain
# Cheap fakes stand in for the upstream notebooks' functions (training takes minutes): each writes the artifact
# its real counterpart writes, with the metadata that the chain checks, and records that it ran.
def _checkpoint(path, bundle, **meta):
    save_checkpoint(path, {"model": {}, "meta": make_meta(image_size=bundle.image_size, mean=[0.0] * 3, std=[1.0] * 3,
                                                         data_fingerprint=bundle.fingerprint, **meta)})


@pytest.fixture
def chain(cfg, monkeypatch):
    """The four upstream functions replaced by fakes; returns the list of (stage, tag) calls, in order."""
    calls = []

    def fake(stage, write):
        def run(cfg, bundle, device="auto", progress=True, tag=None):
            calls.append((stage, tag))
            write(cfg, bundle, tag)
        return run

    def evaluation(cfg, bundle, tag):
        _checkpoint(cfg.path("model", tag), bundle, threshold_rule="rule")
        for split in ("val", "test"):
            cfg.path("predictions", tag, split=split).write_text("id\n")

    monkeypatch.setattr(pipeline, "run_phase1", fake("phase1", lambda c, b, t: _checkpoint(c.path("phase1_best", t), b)))
    monkeypatch.setattr(pipeline, "run_phase2", fake("phase2", lambda c, b, t: _checkpoint(c.path("final_best", t), b)))
    monkeypatch.setattr(evaluation_module, "evaluate_models", fake("evaluation", evaluation))
    monkeypatch.setattr(choice_module, "choose_and_record", fake("explanation", lambda c, b, t: update_meta(
        c.path("model", t), explanation={"method": "gradcam", "layer": "layer4"})))
    return calls


def _data(fingerprint="abc", size=64):
    b = _bundle(size=size)
    b.fingerprint = fingerprint
    return b


def test_a_fresh_root_rebuilds_the_whole_chain_once_through_the_upstream_functions(cfg, chain, capsys):
    bundle = _data()
    assert stages.ensure_explanation(cfg, bundle, progress=False) == cfg.path("model")
    assert chain == [("phase1", None), ("phase2", None), ("evaluation", None), ("explanation", None)]
    out = capsys.readouterr().out
    for stage in ("phase1", "phase2", "evaluation", "explanation"):
        assert f"with the code of {notebook_path(stage)}" in out  # one line per rebuild names its notebook
    assert "it is missing" in out
    stages.ensure_explanation(cfg, bundle, progress=False)
    assert len(chain) == 4 and capsys.readouterr().out == ""  # everything is there: nothing rebuilt, nothing said


def test_other_data_rebuilds_from_the_first_stage_that_does_not_belong(cfg, chain, capsys):
    stages.ensure_explanation(cfg, _data("abc"), progress=False)
    chain.clear()
    stages.ensure_explanation(cfg, _data("xyz"), progress=False)  # every checkpoint was trained on other data
    assert chain == [("phase1", None), ("phase2", None), ("evaluation", None), ("explanation", None)]
    assert "trained on other data" in capsys.readouterr().out
    chain.clear()
    stages.ensure_phase2(cfg, _data("xyz", size=32), progress=False)  # another image size is other data too
    assert chain == [("phase1", None), ("phase2", None)]


def test_a_missing_record_or_file_rebuilds_only_its_own_stage(cfg, chain, capsys):
    bundle = _data()
    stages.ensure_explanation(cfg, bundle, progress=False)
    chain.clear()
    _checkpoint(cfg.path("model"), bundle, threshold_rule="rule")  # the shipped model without an explanation
    stages.ensure_explanation(cfg, bundle, progress=False)
    assert chain == [("explanation", None)] and "carries no explanation yet" in capsys.readouterr().out
    chain.clear()
    cfg.path("predictions", split="test").unlink()
    stages.ensure_evaluation(cfg, bundle, progress=False)
    assert chain == [("evaluation", None)] and "predictions files are missing" in capsys.readouterr().out
    chain.clear()
    _checkpoint(cfg.path("model"), bundle)  # no threshold chosen on validation
    stages.ensure_evaluation(cfg, bundle, progress=False)
    assert chain == [("evaluation", None)] and "carries no threshold_rule yet" in capsys.readouterr().out
    chain.clear()
    cfg.path("final_best").unlink()  # phase 2 gone: rebuilt, phase 1 reused; the later stages are not asked
    assert stages.ensure_phase2(cfg, bundle, progress=False) == cfg.path("final_best")
    assert chain == [("phase2", None)]


def test_a_tag_rebuilds_another_run_beside_the_main_one(cfg, chain):
    bundle = _data()
    assert stages.ensure_evaluation(cfg, bundle, progress=False, tag="vit") == cfg.path("model", "vit")
    assert chain == [("phase1", "vit"), ("phase2", "vit"), ("evaluation", "vit")]
    assert cfg.path("phase1_best", "vit").name == "vit_phase1_best.pt" and not cfg.path("phase1_best").exists()
