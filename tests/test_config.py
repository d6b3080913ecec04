"""Profiles and the named knobs: environment overrides, checks, the phantom fallback."""
from __future__ import annotations

from pathlib import Path

import pytest

from utils.config import KNOB_ENV, PROFILES, get_config
from utils.errors import UserError


@pytest.fixture(autouse=True)
def _clean_env(tmp_path, monkeypatch):
    for var in KNOB_ENV.values():
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
    assert cfg.knobs["set_by"] == {"profile": "CXR_PROFILE", "data_dir": "CXR_DATA_DIR"}


def test_named_knobs_from_the_cell_and_from_the_environment(monkeypatch):
    cfg = get_config("demo", source="phantom", image_size=64, epochs_phase1=1, epochs_phase2=2)
    assert cfg["image_size"] == 64 and cfg["phase1"]["epochs"] == 1 and cfg["phase2"]["epochs"] == 2
    assert cfg.knobs == {"profile": "demo", "source": "phantom", "data_dir": None, "image_size": 64,
                         "epochs_phase1": 1, "epochs_phase2": 2,
                         "set_by": {"profile": "cell", "source": "cell", "image_size": "cell",
                                    "epochs_phase1": "cell", "epochs_phase2": "cell"}}
    for var, value in {"CXR_IMAGE_SIZE": "48", "CXR_EPOCHS_PHASE1": "4", "CXR_EPOCHS_PHASE2": " 5 ",
                       "CXR_SOURCE": "phantom"}.items():
        monkeypatch.setenv(var, value)
    cfg = get_config("demo", image_size=64, epochs_phase1=1, epochs_phase2=2)  # the environment wins
    assert (cfg["image_size"], cfg["phase1"]["epochs"], cfg["phase2"]["epochs"]) == (48, 4, 5)
    assert cfg.knobs["set_by"]["image_size"] == "CXR_IMAGE_SIZE"
    assert "48 px | epochs 4 + 5" in cfg.describe()
    monkeypatch.setenv("CXR_IMAGE_SIZE", "")  # an empty variable is unset
    assert get_config("demo")["image_size"] == PROFILES["demo"]["image_size"]


@pytest.mark.parametrize("kwargs, env, message", [
    ({"image_size": "big"}, {}, "IMAGE_SIZE='big' is not a whole number"),
    ({}, {"CXR_IMAGE_SIZE": "8"}, "IMAGE_SIZE=8 is out of range"),
    ({}, {"CXR_EPOCHS_PHASE2": "0"}, "EPOCHS_PHASE2=0 is out of range"),
    ({"source": "kaggle"}, {}, "unknown source 'kaggle'.*auto, folder, medmnist, phantom"),
    ({}, {"CXR_SOURCE": "web"}, "unknown source 'web'"),
])
def test_bad_knobs_are_one_line_errors(monkeypatch, kwargs, env, message):
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(UserError, match=message) as exc:
        get_config("demo", **kwargs)
    assert "\n" not in str(exc.value)


def test_real_data_asked_for_and_absent_is_an_error_never_a_substitution(capsys):
    for kwargs in ({"profile": "full"}, {"profile": "demo", "source": "folder"}):
        with pytest.raises(UserError, match="no real data") as exc:
            get_config(**kwargs)
        msg = str(exc.value)
        assert "DATA_DIR" in msg and "kaggle" in msg and 'SOURCE="medmnist"' in msg and "\n" not in msg


def test_auto_falls_back_to_phantoms_with_a_banner_and_says_phantom(capsys):
    cfg = get_config("full", source="auto")
    out = capsys.readouterr().out
    assert "PHANTOM FALLBACK" in out and "=" * 50 in out
    assert cfg.profile == "demo" and cfg.source == "phantom" and cfg["image_size"] == 128
    assert cfg.knobs["profile"] == "demo" and cfg.knobs["requested_profile"] == "full"
    assert "full" not in cfg.describe()
    with_dir = get_config("full", "/data/chest_xray", source="auto")
    assert with_dir.source == "folder" and with_dir.profile == "full"


def test_a_data_folder_alone_selects_the_folder_source(tmp_path):
    cfg = get_config("demo", tmp_path)
    assert cfg.source == "folder" and cfg.data_dir == tmp_path


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
