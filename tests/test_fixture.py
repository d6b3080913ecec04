"""The official-layout fixture: real names, faithful structure, synthetic pixels — and the loader's errors on
folders that are not in that layout."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from utils.config import get_config
from utils.data import load_data, patient_key_evidence, scan_folder, shared_patients_by_rule
from utils.data.fixture import VAL_NAMES, FixtureSpec, build_kermany_fixture, official_names, select_names
from utils.data.images import read_image
from utils.data.patients import parse_name, patient_id_from_name
from utils.errors import UserError

SMALL = FixtureSpec(test_patients=16, train_patients=20, cross_folder=4)


def test_the_shipped_name_lists_are_the_official_folders():
    train, test = official_names("train"), official_names("test")
    assert len(train) == 5216 and len(test) == 624
    assert sum("/NORMAL/" in n for n in test) == 234 and sum("/PNEUMONIA/" in n for n in test) == 390
    names = [Path(n).name for n in train + test]
    folders = [n.split("/")[0] for n in train + test]
    assert all(parse_name(n) for n in names)  # every name has a known form
    assert shared_patients_by_rule(folders, names) == {"number only": 264, "series + number": 0}
    ev = patient_key_evidence(folders, names).set_index("family")
    assert ev.loc["person", "across_folders"] == 170 and ev.loc["person", "across_folders_same_series"] == 0


def test_the_subset_keeps_every_series_and_the_number_reuse():
    names = select_names(SMALL)
    assert names["val"] == list(VAL_NAMES) and len(VAL_NAMES) == 16
    for folder in ("train", "test"):
        series = {parse_name(Path(n).name)[0] for n in names[folder]}
        assert series == {"bacteria", "virus", "IM", "NORMAL2-IM"}, (folder, series)
    flat = [(f, Path(n).name) for f in ("train", "test") for n in names[f]]
    shared = shared_patients_by_rule([f for f, _ in flat], [n for _, n in flat])
    assert shared["number only"] >= 1 and shared["series + number"] == 0  # the trap kept, the real key safe
    ev = patient_key_evidence([f for f, _ in flat], [n for _, n in flat]).set_index("family")
    assert (ev["in_two_series"] >= 1).all()  # numbers used in two series inside the subset
    for folder in ("train", "test"):  # whole patients: a chosen patient comes with all of its films
        official = [patient_id_from_name(Path(n).name) for n in official_names(folder)]
        chosen = [patient_id_from_name(Path(n).name) for n in names[folder]]
        assert all(chosen.count(pid) == official.count(pid) for pid in set(chosen)), folder
        assert set(names[folder]) <= set(official_names(folder))


def test_fixture_folder_is_in_the_kaggle_layout(tmp_path):
    root = build_kermany_fixture(tmp_path / "chest_xray", SMALL)
    assert sorted(p.name for p in root.iterdir()) == ["test", "train", "val"]
    for split in ("train", "val", "test"):
        assert sorted(p.name for p in (root / split).iterdir()) == ["NORMAL", "PNEUMONIA"]
    df = scan_folder(root)
    names = select_names(SMALL)
    assert sorted(df["split"] + "/" + df["id"]) == sorted(n.rsplit(".", 1)[0].replace("/NORMAL/", "/").replace(
        "/PNEUMONIA/", "/") for f in names for n in names[f])
    shapes = {read_image(p).shape for p in df["path"]}
    assert all(min(s) >= 64 for s in shapes) and any(h != w for h, w in shapes)  # real-looking, not all square
    assert not list(root.rglob("_annotations.npz"))  # no masks: to the loader this is real data
    import hashlib

    digests = {}
    for p in (root / "train").rglob("*.jpeg"):
        digests.setdefault(hashlib.sha1(p.read_bytes()).hexdigest(), []).append(p)
    twins = [v for v in digests.values() if len(v) > 1]
    assert len(twins) == 1 and len({patient_id_from_name(p.name) for p in twins[0]}) == 1  # one copy, one patient


@pytest.mark.parametrize("with_val", [True, False])
def test_full_profile_loads_the_fixture_with_or_without_val(tmp_path, monkeypatch, with_val):
    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path / "project"))
    root = build_kermany_fixture(tmp_path / "chest_xray", FixtureSpec(**{**SMALL.__dict__, "with_val": with_val}))
    bundle = load_data(get_config("full", root, image_size=32, quiet=True), progress=False)
    test_files = sorted(p.stem for p in (root / "test").rglob("*.jpeg"))
    assert sorted(bundle["test"].ids) == test_files and bundle["test"].lesion_masks is None
    merged = [n for n in bundle.notes if "merged the tiny official val folder" in n]
    assert bool(merged) == with_val and any("carved from train by patient" in n for n in bundle.notes)
    assert not set(bundle["train"].patient_ids) & set(bundle["test"].patient_ids)


def _layout(root: Path, splits=("train", "test"), empty: str | None = None) -> Path:
    from PIL import Image

    for split in splits:
        for cls in ("NORMAL", "PNEUMONIA"):
            d = root / split / cls
            d.mkdir(parents=True)
            if f"{split}/{cls}" != empty:
                Image.fromarray(np.zeros((80, 80), np.uint8)).save(d / ("IM-0001-0001.jpeg" if cls == "NORMAL" else
                                                                        "person1_bacteria_1.jpeg"))
    return root


@pytest.mark.parametrize("case, words", [
    ("not_layout", "missing folder"), ("nested", "set DATA_DIR to"), ("empty_class", "holds no images"),
    ("no_test", "the official test split"), ("missing_dir", "data folder not found"),
])
def test_wrong_layouts_are_one_line_errors(tmp_path, monkeypatch, case, words):
    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path / "project"))
    root = tmp_path / "data"
    if case == "not_layout":
        (root / "images").mkdir(parents=True)
    elif case == "nested":
        _layout(root / "chest_xray")
    elif case == "empty_class":
        _layout(root, empty="test/PNEUMONIA")
    elif case == "no_test":
        _layout(root, splits=("train",))
    with pytest.raises(UserError, match=words) as exc:
        load_data(get_config("full", root, image_size=32, quiet=True), progress=False)
    assert "\n" not in str(exc.value)
    shutil.rmtree(tmp_path / "project", ignore_errors=True)


def test_fixture_command(tmp_path, capsys):
    from utils.data.fixture import main

    assert main([str(tmp_path / "cx"), "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert main([str(tmp_path / "cx"), "--test-patients", "4", "--train-patients", "6", "--no-val"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert any((tmp_path / "cx" / "test").rglob("*.jpeg")) and not (tmp_path / "cx" / "val").exists()


def test_patient_key_report_without_a_folder_reads_the_shipped_official_names():
    """Notebook 01 asks the official folders' own names, offline: the same evidence as the name lists give."""
    from utils.data import patient_key_report

    report = patient_key_report()
    names = official_names("train") + official_names("test")
    assert report["files"] == len(names) and report["unknown"] == []
    assert report["shared"] == shared_patients_by_rule([n.split("/")[0] for n in names], [Path(n).name for n in names])
    person = report["evidence"].set_index("family").loc["person"]
    assert person["across_folders_same_series"] == 0 and person["across_folders"] > 0
