"""Profiles, environment overrides, artifact paths and the "run notebook NN first" messages."""
from __future__ import annotations

from pathlib import Path

import pytest

from utils import config as C
from utils.config import PROFILES, UserError, get_config


@pytest.fixture(autouse=True)
def _clean_env(tmp_path, monkeypatch):
    for var in ("CXR_PROFILE", "CXR_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path))


def test_profiles_and_root(tmp_path):
    cfg = get_config("demo")
    assert cfg.profile == "demo" and cfg["source"] == "phantom" and cfg.data_dir is None
    assert cfg.root == tmp_path.resolve()
    assert all((tmp_path / d).is_dir() for d in ("data", "model", "assets"))
    assert cfg.path("final_best") == tmp_path.resolve() / "model/pneumonia_final_best.pt"
    assert cfg.path("predictions", split="test").name == "predictions_test.csv"
    full = get_config("full", "/data/chest_xray")
    assert full["image_size"] == 224 and full.data_dir == Path("/data/chest_xray")


def test_environment_overrides_win(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_PROFILE", "full")
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "real"))
    cfg = get_config("demo", "/somewhere/else")
    assert cfg.profile == "full" and cfg["weights"] == "imagenet"
    assert cfg.data_dir == tmp_path / "real"


def test_unknown_profile_is_a_user_error(monkeypatch):
    with pytest.raises(UserError, match="unknown profile 'fast'.*demo, full"):
        get_config("fast")
    monkeypatch.setenv("CXR_PROFILE", "tiny")
    with pytest.raises(UserError, match="'tiny'"):
        get_config("demo")


def test_overrides_merge_nested_dicts_and_leave_profiles_alone():
    before = PROFILES["demo"]["phase1"].copy()
    cfg = get_config("demo", image_size=64, phase1={"epochs": 1}, phantom={"n_patients_train": 10})
    assert cfg["image_size"] == 64
    assert cfg["phase1"] == {**before, "epochs": 1}  # lr and weight decay kept
    assert cfg["phantom"]["n_patients_train"] == 10 and cfg["phantom"]["seed"] == PROFILES["demo"]["phantom"]["seed"]
    assert PROFILES["demo"]["phase1"] == before and PROFILES["demo"]["image_size"] == 128
    assert get_config("demo")["phase1"]["epochs"] == before["epochs"]


def test_require_names_the_notebook_to_run_first(tmp_path):
    cfg = get_config("demo")
    with pytest.raises(UserError) as exc:
        cfg.require("phase1_best")
    msg = str(exc.value)
    assert "02_phase1_warmup.ipynb" in msg and str(tmp_path.resolve() / "model/phase1_best.pt") in msg
    assert "\n" not in msg
    with pytest.raises(UserError, match="03_phase2_finetune.ipynb"):
        cfg.require("final_best")
    cfg.path("final_best").write_bytes(b"x")
    assert cfg.require("final_best") == cfg.path("final_best")


def test_every_produced_artifact_is_known():
    assert set(C.PRODUCED_BY) <= set(C.ARTIFACTS)
    with pytest.raises(KeyError, match="unknown artifact"):
        C.artifact("no_such_thing")
