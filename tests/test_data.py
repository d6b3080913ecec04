"""Data loading: patient ids from Kermany names, patient-wise split, leak guard, folder loader, cache."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils import data as D
from utils.data import (
    LeakageError,
    Split,
    check_no_leaks,
    duplicate_groups,
    find_leaks,
    load_folder,
    patient_id_from_name,
    patient_key_evidence,
    patient_split,
    shared_patients_by_rule,
    subtype_from_name,
)
from utils.data import images as I
from utils.errors import UserError


# ------------------------------------------------------------------------------------------ ids
@pytest.mark.parametrize("name, patient, subtype", [
    ("person1_bacteria_1.jpeg", "person1_bacteria", "bacteria"),
    ("person1_virus_12.jpeg", "person1_virus", "virus"),
    ("person1478_virus_2561_1.jpeg", "person1478_virus", "virus"),  # an odd form in the real set
    ("train/PNEUMONIA/person07_bacteria_29.jpeg", "person7_bacteria", "bacteria"),
    ("Person3_Bacteria_1.JPEG", "person3_bacteria", "bacteria"),
    ("IM-0115-0001.jpeg", "IM-0115", ""),
    ("NORMAL2-IM-0115-0001.jpeg", "NORMAL2-IM-0115", ""),
    ("IM-0640-0001-0001.jpeg", "IM-0640", ""),
    ("chest/NORMAL/IM-0007-0003.png", "IM-0007", ""),
    ("IM-12345-0001.png", "IM-12345", ""),  # phantom patients beyond 9999
    ("scan_42.png", "scan_42", ""),  # no known form: its own patient
    ("my_person1_bacteria_1.png", "my_person1_bacteria_1", ""),  # the forms are anchored at the start
])
def test_patient_and_subtype_from_kermany_names(name, patient, subtype):
    assert patient_id_from_name(name) == patient
    assert subtype_from_name(name) == subtype


def test_patients_are_keyed_by_series_and_number():
    # the numbering series are separate: the same number in two series is two children
    assert patient_id_from_name("NORMAL2-IM-0927-0001.jpeg") != patient_id_from_name("IM-0927-0004.jpeg")
    assert patient_id_from_name("person5_bacteria_1") != patient_id_from_name("person5_virus_7")
    assert patient_id_from_name("IM-0927-0001.jpeg") == patient_id_from_name("IM-0927-0004.jpeg")
    assert patient_id_from_name("person5_bacteria_1") == patient_id_from_name("person5_bacteria_9")
    assert patient_id_from_name("person5_bacteria_1") != patient_id_from_name("person50_bacteria_1")


def test_key_evidence_counts_numbers_recurring_across_folders_and_series():
    folders = ["train", "train", "test", "train", "test", "test", "train"]
    names = ["person1_bacteria_1.jpeg", "person1_virus_2.jpeg", "person1_virus_3.jpeg",  # 1: both series, both folders
             "person2_bacteria_4.jpeg", "person3_virus_5.jpeg",
             "NORMAL2-IM-0115-0001.jpeg", "IM-0115-0001.jpeg"]  # IM 115: two series, two folders
    ev = patient_key_evidence(folders, names).set_index("family")
    assert ev.loc["person", "numbers"] == 3 and ev.loc["person", "in_two_series"] == 1
    assert ev.loc["person", "across_folders"] == 1 and ev.loc["person", "across_folders_same_series"] == 1
    assert ev.loc["IM", "across_folders"] == 1 and ev.loc["IM", "across_folders_other_series"] == 1
    shared = shared_patients_by_rule(folders, names)
    assert shared == {"number only": 2, "series + number": 1}  # person1_virus is in both folders


# ------------------------------------------------------------------------------------------ split
def _patients(n: int = 240, p_pneumonia: float = 0.7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pids, labels = [], []
    for k in range(n):
        y = int(rng.uniform() < p_pneumonia)
        m = int(rng.integers(1, 5))
        pids += [f"p{k}"] * m
        labels += [y] * m
    return np.array(pids), np.array(labels, dtype=np.int64)


def test_patient_split_is_patientwise_stratified_and_seeded():
    pids, y = _patients()
    tr, va = patient_split(pids, y, 0.25, seed=3)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(y)
    assert not set(pids[tr]) & set(pids[va])  # no patient on both sides
    for label in (0, 1):  # the val fraction holds per class, in patients
        n_all = len(set(pids[y == label]))
        n_val = len(set(pids[va][y[va] == label]))
        assert abs(n_val - 0.25 * n_all) <= 1
    assert abs(y[va].mean() - y.mean()) < 0.08  # image-level class ratio close to the overall one
    tr2, va2 = patient_split(pids, y, 0.25, seed=3)
    np.testing.assert_array_equal(va, va2)
    _, va3 = patient_split(pids, y, 0.25, seed=4)
    assert set(pids[va3]) != set(pids[va])


def test_patient_split_keeps_both_classes_in_val_when_a_class_is_small():
    pids = np.array(["n1", "n2", "n3"] + [f"p{k}" for k in range(30)])
    y = np.array([0, 0, 0] + [1] * 30)
    tr, va = patient_split(pids, y, 0.1, seed=0)
    assert set(y[va]) == {0, 1} and set(y[tr]) == {0, 1}


@pytest.mark.parametrize("bad", [0, 1, -0.2, 1.5, float("nan")])
def test_patient_split_rejects_bad_val_fraction(bad):
    pids, y = _patients(20)
    with pytest.raises(UserError, match="val_fraction"):
        patient_split(pids, y, bad, seed=0)


# ------------------------------------------------------------------------------------------ leaks
def _split(name: str, images: np.ndarray, pids: list[str], labels: list[int]) -> Split:
    n = len(images)
    hashes = np.array([hashlib.sha1(im.tobytes()).hexdigest() for im in images])
    return Split(name, images, np.array(labels, dtype=np.int64), np.array([f"{name}_{i}" for i in range(n)]),
                 np.array(pids), np.array([""] * n), hashes)


def _imgs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8)


def test_duplicate_groups_finds_planted_duplicates():
    im = _imgs(6, 0)
    im[4] = im[1]
    im[5] = im[1]
    s = _split("train", im, ["a", "a", "b", "c", "a", "a"], [0] * 6)
    assert duplicate_groups(s) == [["train_1", "train_4", "train_5"]]
    assert duplicate_groups(_split("train", _imgs(6, 1), list("abcdef"), [0] * 6)) == []


def test_leak_guard_flags_identical_image_and_shared_patient():
    a = _split("train", _imgs(4, 0), ["p1", "p2", "p3", "p4"], [0, 1, 0, 1])
    b = _split("test", _imgs(3, 1), ["q1", "q2", "q3"], [0, 1, 1])
    assert check_no_leaks({"train": a, "test": b}).ok

    b_dup = _split("test", np.concatenate([_imgs(2, 1), a.images[2:3]]), ["q1", "q2", "q3"], [0, 1, 0])
    rep = find_leaks({"train": a, "test": b_dup})
    assert not rep.ok and rep.shared_images["test/train"] == ["test_2"] and not rep.shared_patients["test/train"]
    with pytest.raises(LeakageError, match="identical image") as exc:
        check_no_leaks({"train": a, "test": b_dup})
    assert "\n" not in str(exc.value)

    b_pat = _split("test", _imgs(3, 1), ["q1", "p3", "q3"], [0, 1, 1])
    rep = find_leaks({"train": a, "test": b_pat})
    assert rep.shared_patients["test/train"] == ["p3"] and not rep.shared_images["test/train"]
    with pytest.raises(LeakageError, match="p3"):
        check_no_leaks({"train": a, "test": b_pat})
    assert issubclass(LeakageError, UserError)


# ------------------------------------------------------------------------------------------ folders
def _img(seed: int, size: tuple[int, int] = (40, 36)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8))


def _write(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _img(seed).save(path)
    return path


def write_kermany(root: Path, val: bool = True) -> dict[str, list[str]]:
    """A tiny Kermany-layout folder (PNG and JPEG, the three name forms); returns ids per folder."""
    names = {
        "train/NORMAL": ["IM-0001-0001.jpeg", "IM-0001-0002.png", "NORMAL2-IM-0002-0001.jpeg", "IM-0003-0001.jpeg",
                         "IM-0004-0001.png", "NORMAL2-IM-0005-0001.jpeg", "IM-0006-0001.jpeg", "IM-0007-0001.png"],
        "train/PNEUMONIA": [f"person{k}_{'bacteria' if k % 3 else 'virus'}_{j}.{'png' if j % 2 else 'jpeg'}"
                            for k in range(1, 11) for j in range(1, 3)],
        "test/NORMAL": ["IM-0101-0001.jpeg", "IM-0102-0001.png"],
        "test/PNEUMONIA": ["person101_bacteria_1.jpeg", "person102_virus_1.png", "person102_virus_2.png"],
    }
    if val:
        names["val/NORMAL"] = ["NORMAL2-IM-0201-0001.jpeg"]
        names["val/PNEUMONIA"] = ["person201_bacteria_1.jpeg"]
    seed = 0
    out = {}
    for folder, files in names.items():
        for f in files:
            seed += 1
            _write(root / folder / f, seed)
        out[folder] = [Path(f).stem for f in files]
    return out


@pytest.fixture
def kermany(tmp_path) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path / "chest_xray"
    return root, write_kermany(root)


def _load(root: Path, cache: Path, **kw):
    return load_folder(root, 32, 0.3, 0, cache, progress=False, **kw)


def test_load_folder_kermany_layout(kermany, tmp_path):
    root, ids = kermany
    b = _load(root, tmp_path / "cache")
    tr, va, te = b["train"], b["val"], b["test"]
    assert tr.images.dtype == np.uint8 and tr.images.shape[1:] == (32, 32)
    assert sorted(te.ids) == sorted(ids["test/NORMAL"] + ids["test/PNEUMONIA"])
    pool = set(ids["train/NORMAL"] + ids["train/PNEUMONIA"] + ids["val/NORMAL"] + ids["val/PNEUMONIA"])
    assert set(tr.ids) | set(va.ids) == pool and not set(tr.ids) & set(va.ids)
    assert any("merged the tiny official val folder (2 images)" in n for n in b.notes)
    assert not set(tr.patient_ids) & set(va.patient_ids)  # val carved by patient
    assert set(va.labels) == {0, 1}
    assert find_leaks(b.splits).ok
    lab = dict(zip(np.concatenate([tr.ids, va.ids]), np.concatenate([tr.labels, va.labels])))
    assert lab["NORMAL2-IM-0201-0001"] == 0 and lab["person201_bacteria_1"] == 1
    sub = dict(zip(tr.ids.tolist() + va.ids.tolist(), tr.subtypes.tolist() + va.subtypes.tolist()))
    assert sub["person3_virus_1"] == "virus" and sub["person1_bacteria_2"] == "bacteria" and sub["IM-0001-0001"] == ""
    pid = dict(zip(tr.ids.tolist() + va.ids.tolist(), tr.patient_ids.tolist() + va.patient_ids.tolist()))
    assert pid["IM-0001-0001"] == pid["IM-0001-0002"] == "IM-0001"
    # decoded exactly as utils.data.images.read_image decodes the file
    k = int(np.flatnonzero(te.ids == "person102_virus_1")[0])
    np.testing.assert_array_equal(te.images[k], I.read_image(root / "test/PNEUMONIA/person102_virus_1.png", 32))
    assert tr.lung_masks is None and tr.info is None  # real data: no annotations
    again = _load(root, tmp_path / "cache2")
    assert again.fingerprint == b.fingerprint
    np.testing.assert_array_equal(again["val"].ids, va.ids)


def test_corrupt_file_is_skipped_with_a_warning_that_counts_and_names_it(kermany, tmp_path):
    root, ids = kermany
    bad = root / "train/PNEUMONIA/person4_bacteria_9.jpeg"
    raw = (root / "train/PNEUMONIA/person4_bacteria_2.jpeg").read_bytes()
    bad.write_bytes(raw[: len(raw) // 3])
    for cache in ("c", "c"):  # the second load comes from the cache and warns again
        with pytest.warns(UserWarning, match=r"skipped 1 unreadable file\(s\)") as rec:
            b = _load(root, tmp_path / cache)
        assert "person4_bacteria_9.jpeg" in str(rec[0].message)
        all_ids = set(np.concatenate([s.ids for s in b.splits.values()]))
        assert "person4_bacteria_9" not in all_ids
        assert len(all_ids) == sum(len(v) for v in ids.values())
        assert any("skipped 1 unreadable" in n for n in b.notes)


def test_a_class_folder_with_only_unreadable_files_is_a_user_error(kermany, tmp_path):
    root, _ = kermany
    for p in (root / "test/NORMAL").iterdir():
        p.write_bytes(b"not an image")
    with pytest.warns(UserWarning), pytest.raises(UserError, match="no readable image") as exc:
        _load(root, tmp_path / "c")
    assert str(root / "test" / "NORMAL") in str(exc.value)


@pytest.mark.parametrize("case", ["no_root", "no_test", "no_class", "empty_class", "no_train"])
def test_wrong_layout_is_a_one_line_user_error(kermany, tmp_path, case):
    root, _ = kermany
    if case == "no_root":
        root = tmp_path / "nowhere"
        where = root
    elif case == "no_test":
        shutil.rmtree(root / "test")
        where = root / "test"
    elif case == "no_train":
        shutil.rmtree(root / "train")
        where = root / "train"
    elif case == "no_class":
        shutil.rmtree(root / "train/PNEUMONIA")
        where = root / "train/PNEUMONIA"
    else:
        for p in (root / "test/NORMAL").iterdir():
            p.unlink()
        where = root / "test/NORMAL"
    with pytest.raises(UserError) as exc:
        _load(root, tmp_path / "cache")
    msg = str(exc.value)
    assert "\n" not in msg and str(where) in msg
    assert "expected" in msg and "{NORMAL,PNEUMONIA}" in msg and "train" in msg


def test_a_root_without_test_is_accepted_when_asked(kermany, tmp_path):
    root, _ = kermany
    shutil.rmtree(root / "test")
    b = _load(root, tmp_path / "cache", require_test=False)
    assert set(b.splits) == {"train", "val"}


def test_decode_once_cache_is_read_and_invalidated(kermany, tmp_path, monkeypatch):
    root, _ = kermany
    cache = tmp_path / "cache"
    first = _load(root, cache)
    assert len(list(cache.glob("decoded_*.npz"))) == 1

    def boom(*a, **k):
        raise AssertionError("read_image called although the cache holds every image")
    monkeypatch.setattr(I, "read_image", boom)
    second = _load(root, cache)  # decoded images come from the cache
    for name in first.splits:
        np.testing.assert_array_equal(first[name].images, second[name].images)
        np.testing.assert_array_equal(first[name].hashes, second[name].hashes)
    assert second.fingerprint == first.fingerprint

    calls = []
    monkeypatch.undo()
    orig = I.read_image
    monkeypatch.setattr(I, "read_image", lambda p, size=None: calls.append(p) or orig(p, size))
    changed = root / "test/NORMAL/IM-0101-0001.jpeg"
    _img(999).save(changed)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a clearly newer file
    third = _load(root, cache)
    assert calls, "a changed file must invalidate the cache"
    assert third.fingerprint != first.fingerprint
    k = int(np.flatnonzero(third["test"].ids == "IM-0101-0001")[0])
    np.testing.assert_array_equal(third["test"].images[k], orig(changed, 32))
    assert len(list(cache.glob("decoded_*.npz"))) == 2


def test_identical_file_across_splits_is_refused_by_load_folder(kermany, tmp_path):
    root, _ = kermany
    shutil.copy(root / "train/PNEUMONIA/person2_bacteria_1.png", root / "test/PNEUMONIA/person150_bacteria_1.png")
    with pytest.raises(LeakageError, match="identical image"):
        _load(root, tmp_path / "cache")


def test_duplicate_within_a_patient_is_found_after_loading(kermany, tmp_path):
    root, _ = kermany
    shutil.copy(root / "train/PNEUMONIA/person2_bacteria_1.png", root / "train/PNEUMONIA/person2_bacteria_7.png")
    b = _load(root, tmp_path / "cache")
    groups = [g for s in b.splits.values() for g in duplicate_groups(s)]
    assert groups == [["person2_bacteria_1", "person2_bacteria_7"]]


def test_load_data_phantom_source_through_config(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path))
    monkeypatch.delenv("CXR_PROFILE", raising=False)
    monkeypatch.delenv("CXR_DATA_DIR", raising=False)
    from utils.config import get_config
    cfg = get_config("demo", image_size=24, phantom={"n_patients_train": 16, "n_patients_test": 6, "seed": 5})
    b = D.load_data(cfg, progress=False)
    assert b.source == "phantom" and b.image_size == 24 and set(b.splits) == {"train", "val", "test"}
    assert (tmp_path / "data/phantom_chest_xray/DATASET.json").exists()
    assert b["test"].lesion_masks.shape == b["test"].images.shape
    stamp = (tmp_path / "data/phantom_chest_xray/DATASET.json").stat().st_mtime_ns
    b2 = D.load_data(cfg, progress=False)  # same spec: not regenerated
    assert (tmp_path / "data/phantom_chest_xray/DATASET.json").stat().st_mtime_ns == stamp
    assert b2.fingerprint == b.fingerprint


def test_the_phantom_folder_has_one_stamp_and_a_stale_one_regenerates_it(tmp_path):
    from utils.data import phantom
    from utils.data.sources import ensure_phantom_dataset
    from utils.fileio import read_json, write_json

    drawn = {"n_patients_train": 6, "n_patients_test": 4, "seed": 3}
    root = ensure_phantom_dataset(tmp_path / "ph", 24, drawn, progress=False)
    stamp = root / phantom.DATASET_STAMP
    want = phantom.dataset_stamp(phantom.spec_for("default", 24), **drawn)
    assert read_json(stamp) == want and sorted(p.name for p in root.glob("*.json")) == [phantom.DATASET_STAMP]
    pixels = {p.name: p.read_bytes() for p in sorted(root.rglob("*.png"))}

    def regenerated(stale) -> bool:
        stale(stamp)
        (root / "left_by_the_test").touch()  # regenerating starts from an empty folder
        ensure_phantom_dataset(root, 24, drawn, progress=False)
        assert read_json(stamp) == want
        return not (root / "left_by_the_test").exists()

    assert not regenerated(lambda path: None)  # the same dataset: kept
    assert regenerated(lambda path: write_json(path, {**want, "seed": 4}))  # drawn otherwise
    assert regenerated(lambda path: write_json(path, {**want, "spec": {**want["spec"], "image_size": 32}}))
    assert regenerated(lambda path: path.write_text("{broken"))  # unreadable: regenerated, not a crash
    assert regenerated(lambda path: path.unlink())  # a folder cut short before its stamp
    assert {p.name: p.read_bytes() for p in sorted(root.rglob("*.png"))} == pixels  # the same images each time


def test_verify_kermany_reports_an_incomplete_download(tmp_path):
    from PIL import Image

    from utils.data.sources import KERMANY_COUNTS, verify_kermany

    for split in KERMANY_COUNTS:
        for cls in ("NORMAL", "PNEUMONIA"):
            (tmp_path / split / cls).mkdir(parents=True)
    for i in range(3):
        Image.new("L", (8, 8), i).save(tmp_path / "test" / "NORMAL" / f"IM-000{i}-0001.jpeg")
    problems = verify_kermany(tmp_path)
    assert "test: 3 images, expected 624" in problems and len(problems) == 3
