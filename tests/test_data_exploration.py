"""The data helpers notebook 01 uses: duplicate table, file-level leak, original image sizes."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from utils.data import Split, duplicate_table, file_level_leak, image_sizes
from utils.errors import UserError


def _split(ids, pids, hashes, name="train") -> Split:
    n = len(ids)
    return Split(name, np.zeros((n, 4, 4), np.uint8), np.zeros(n, np.int64), np.array(ids), np.array(pids),
                 np.full(n, ""), np.array(hashes))


def test_duplicate_table_names_groups_and_whether_they_share_a_patient():
    train = _split(["a1", "a2", "b1", "c1"], ["A", "A", "B", "C"], ["h1", "h1", "h2", "h3"])
    val = _split(["d1", "e1"], ["D", "E"], ["h4", "h4"], "val")  # identical images of two patients
    test = _split(["f1"], ["F"], ["h5"], "test")
    t = duplicate_table({"train": train, "val": val, "test": test})
    assert list(t["split"]) == ["train", "val"]
    assert t.loc[0, "ids"] == "a1, a2" and t.loc[0, "patients"] == "A" and bool(t.loc[0, "same_patient"])
    assert t.loc[1, "patients"] == "D, E" and not t.loc[1, "same_patient"]
    assert list(t["copies"]) == [2, 2]
    empty = duplicate_table({"test": test})
    assert empty.empty and list(empty.columns) == ["split", "copies", "ids", "patients", "same_patient"]


def test_file_level_leak_counts_siblings_and_identical_images():
    # 50 patients with 4 images each; every patient's first two images are identical
    pids = np.repeat([f"p{k}" for k in range(50)], 4)
    ids = np.array([f"{p}_{k % 4}" for k, p in enumerate(pids)])
    hashes = ids.copy()
    hashes[1::4] = hashes[0::4]
    leak = file_level_leak(_split(ids, pids, hashes), 0.25, seed=0)
    assert leak["val_images"] == 50
    assert leak["val_images_with_patient_in_train"] >= 45  # with 4 images per patient, nearly all leak
    assert leak["shared_patients"] > 30
    assert leak["identical_images_across"] > 5  # about 2 * 0.25 * 0.75 * 50 pairs are cut apart
    one_each = _split([f"i{k}" for k in range(40)], [f"p{k}" for k in range(40)], [f"h{k}" for k in range(40)])
    assert file_level_leak(one_each, 0.25, 0)["val_images_with_patient_in_train"] == 0


def test_image_sizes_reads_headers_and_marks_unreadable_files(tmp_path):
    root = tmp_path / "xray"
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True)
    Image.new("L", (40, 30)).save(root / "train/NORMAL/IM-0001-0001.png")
    Image.new("L", (50, 60)).save(root / "train/PNEUMONIA/person1_virus_1.jpeg")
    (root / "train/PNEUMONIA/person2_virus_1.jpeg").write_bytes(b"not an image")
    Image.new("L", (20, 20)).save(root / "test/NORMAL/IM-0002-0001.png")
    Image.new("L", (25, 20)).save(root / "test/PNEUMONIA/person3_bacteria_1.png")
    sizes = image_sizes(root).set_index("id")
    assert list(sizes.columns) == ["split", "label", "width", "height"]
    assert tuple(sizes.loc["IM-0001-0001", ["width", "height"]]) == (40, 30)
    assert tuple(sizes.loc["person1_virus_1", ["width", "height", "label"]]) == (50, 60, 1)
    assert sizes.loc["person2_virus_1", ["width", "height"]].isna().all()
    assert sizes.loc["person3_bacteria_1", "split"] == "test"
    with pytest.raises(UserError, match="not found"):
        image_sizes(tmp_path / "nowhere")
