"""Both training phases end to end on a tiny config, phase-2 guards, and the command line."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pandas as pd
import pytest
import torch

from utils.checkpoint import load_checkpoint, state_fingerprint
from utils.config import get_config
from utils.data import load_data
from utils.errors import UserError
from utils.paths import project_root
from utils.train import pipeline
from utils.train.model import load_model

REPO = project_root()
BACKBONE = "model/phantom_resnet18_pretrained.pt"


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    for var in ("CXR_PROFILE", "CXR_DATA_DIR", "CXR_SOURCE", "CXR_IMAGE_SIZE", "CXR_EPOCHS_PHASE1", "CXR_EPOCHS_PHASE2"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path / "project"))  # artifacts go to a temporary root


def _tiny_cfg():
    cfg = get_config("demo", image_size=48, batch_size=16,
                     phantom={"n_patients_train": 20, "n_patients_test": 6, "seed": 7},
                     phase1={"epochs": 1}, phase2={"epochs": 1})
    assert not (cfg.root / BACKBONE).exists()  # the shipped backbone is found in the repository, not the root
    return cfg


def test_phase1_then_phase2_on_a_tiny_config(tmp_path):
    cfg = _tiny_cfg()
    assert cfg.root == (tmp_path / "project").resolve()
    bundle = load_data(cfg, progress=False)
    assert bundle.source == "phantom" and bundle.image_size == 48

    r1, weights = pipeline.run_phase1(cfg, bundle, device="cpu", progress=False)
    assert "phantom" in weights and r1.best_epoch == 1 and len(r1.history) == 1
    for name in ("phase1_best", "phase1_last", "history_phase1"):
        assert cfg.path(name).exists(), name
    meta1 = load_checkpoint(cfg.path("phase1_best"))["meta"]
    assert meta1["phase"] == "phase1" and meta1["data_fingerprint"] == bundle.fingerprint
    assert meta1["image_size"] == 48 and meta1["weights"] == weights and meta1["profile"] == "demo"
    assert cfg.path("phase1_best").is_relative_to(tmp_path.resolve())  # nothing written into the repository

    again, _ = pipeline.run_phase1(cfg, bundle, device="cpu", progress=False)  # a rerun resumes: nothing to do
    assert again.resumed_from == 1
    pd.testing.assert_frame_equal(again.history, r1.history)

    r2, w2 = pipeline.run_phase2(cfg, bundle, device="cpu", progress=False)
    assert w2 == weights and len(r2.history) == 1
    for name in ("final_best", "phase2_last", "history_phase2"):
        assert cfg.path(name).exists(), name
    m1, _ = load_model(cfg.path("phase1_best"))
    m2, meta2 = load_model(cfg.path("final_best"))
    assert meta2["phase"] == "phase2" and meta2["data_fingerprint"] == bundle.fingerprint
    assert meta2["init"] == state_fingerprint(m1.state_dict())
    for phase, name, init in (("phase1", "phase1_best", weights), ("phase2", "final_best", meta2["init"]),
                              ("phase1", "phase1_last", weights), ("phase2", "phase2_last", meta2["init"])):
        meta = load_checkpoint(cfg.path(name))["meta"]  # whichever phase ships, it says how it was made
        assert meta["init"] == init and meta["recipe"] == pipeline.phase_settings(cfg, phase, True)["recipe"], name
    sd1, sd2 = m1.state_dict(), m2.state_dict()
    assert not torch.equal(sd1["conv1.weight"], sd2["conv1.weight"])  # phase 2 trains the backbone too
    assert not torch.equal(sd1["fc.weight"], sd2["fc.weight"])
    row = pipeline.best_row(r2)
    assert row["epoch"] == 1 and 0 <= row["val_auc"] <= 1

    other = replace(bundle, fingerprint="0123456789abcdef")
    with pytest.raises(UserError, match="trained on other data") as exc:
        pipeline.run_phase2(cfg, other, device="cpu", progress=False)
    assert "\n" not in str(exc.value) and "02_phase1_warmup.ipynb" in str(exc.value)
    with pytest.raises(UserError, match="trained at 48 px, this data is 64 px"):
        pipeline.run_phase2(cfg, replace(bundle, image_size=64), device="cpu", progress=False)


def test_each_phase_states_its_recipe_for_either_start():
    cfg = get_config("demo")
    for pretrained in (True, False):
        for phase in ("phase1", "phase2"):
            settings = pipeline.phase_settings(cfg, phase, pretrained)
            assert ("random start" in settings["recipe"]) == (not pretrained), (phase, pretrained)
            assert f"lr {settings['lr']:g}" in settings["recipe"]  # the rate that actually trains
    assert pipeline.phase_settings(cfg, "phase2", False)["lr"] == cfg["phase2"]["lr_scratch"]
    assert pipeline.phase_settings(cfg, "phase1", False)["lr"] == cfg["phase1"]["lr"]  # the head learns alike


def test_phase2_without_phase1_names_the_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path / "empty"))
    cfg = get_config("demo")
    with pytest.raises(UserError, match="02_phase1_warmup.ipynb"):
        pipeline.run_phase2(cfg, None, device="cpu", progress=False)


def test_cli_unknown_option_exits_without_traceback(tmp_path):
    env = {**os.environ, "CXR_PROJECT_ROOT": str(tmp_path / "cli")}
    proc = subprocess.run([sys.executable, "-m", "utils.train.pipeline", "--no-such-option"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "unrecognized arguments: --no-such-option" in proc.stderr


def test_cli_user_error_is_one_line(tmp_path, capsys):
    code = pipeline.main(["--profile", "full", "--data-dir", str(tmp_path / "nowhere")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: data folder not found")
    assert pipeline.main(["--profile", "tiny"]) == 2
    assert "invalid choice: 'tiny'" in capsys.readouterr().err
