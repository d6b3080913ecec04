"""Where things are: the project root, shipped files, the artifact registry and the notebook registry."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from utils import paths
from utils.errors import UserError
from utils.paths import ARTIFACTS, NOTEBOOKS, PRODUCED_BY, artifact, notebook_path, require

UTILS = Path(paths.__file__).resolve().parent


@pytest.fixture(autouse=True)
def _root(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path))


def test_require_names_the_notebook_to_run_first(tmp_path):
    with pytest.raises(UserError) as exc:
        require("phase1_best")
    msg = str(exc.value)
    assert "run notebooks/02_phase1_warmup.ipynb first" in msg and str(tmp_path.resolve() / "model/phase1_best.pt") in msg
    assert "\n" not in msg
    with pytest.raises(UserError, match="03_phase2_finetune.ipynb"):
        require("final_best", tmp_path)
    with pytest.raises(UserError, match="create it first"):  # an artifact no notebook is registered for
        require("benchmark", tmp_path)
    (tmp_path / "model").mkdir()
    artifact("final_best", tmp_path).write_bytes(b"x")
    assert require("final_best", tmp_path) == tmp_path / "model/pneumonia_final_best.pt"


def test_tags_and_placeholders_name_other_runs_beside_the_main_files(tmp_path):
    assert artifact("phase1_best", tmp_path, "vit") == tmp_path / "model/vit_phase1_best.pt"
    assert artifact("predictions", tmp_path, split="val") == tmp_path / "assets/predictions_val.csv"
    with pytest.raises(KeyError, match="unknown artifact"):
        artifact("no_such_thing")


def test_every_produced_artifact_is_known_and_its_notebook_registered():
    assert set(PRODUCED_BY) <= set(ARTIFACTS)
    assert set(PRODUCED_BY.values()) <= set(NOTEBOOKS.values())


def test_the_notebook_registry_is_the_series_on_disk():
    on_disk = sorted(p.name for p in (paths.repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(NOTEBOOKS.values()) == on_disk
    assert notebook_path("evaluation") == "notebooks/04_evaluation.ipynb"
    with pytest.raises(KeyError, match="unknown stage 'phase3'"):
        notebook_path("phase3")


def test_no_module_spells_a_notebook_file_name_but_the_registry():
    """One place: a second copy of a notebook's file name anywhere in utils/ fails here."""
    name = re.compile(r"[0-9][0-9]_[a-z_]*\.ipynb")
    copies = [f"{p.relative_to(UTILS)}: {m.group(0)}" for p in sorted(UTILS.rglob("*.py")) if p.name != "paths.py"
              for m in name.finditer(p.read_text(encoding="utf-8"))]
    assert copies == []


def test_shipped_files_come_from_the_repository_whatever_the_project_root(tmp_path):
    assert paths.repo_root() is not None
    path = paths.shipped("pretrained_backbone")
    assert path.is_file() and path.parent == paths.repo_root() / "model"
    assert not str(path).startswith(str(tmp_path))  # CXR_PROJECT_ROOT points at tmp_path here
    with pytest.raises(KeyError, match="unknown shipped file"):
        paths.shipped("no_such_file")


def test_an_installed_package_without_a_checkout_asks_for_a_project_root(monkeypatch):
    monkeypatch.delenv("CXR_PROJECT_ROOT")
    monkeypatch.setattr(paths, "repo_root", lambda: None)
    with pytest.raises(UserError, match="set CXR_PROJECT_ROOT") as exc:
        paths.project_root()
    assert "\n" not in str(exc.value)
    assert paths.shipped("pretrained_backbone") == Path(paths.SHIPPED["pretrained_backbone"])  # names it in errors
