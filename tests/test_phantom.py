"""The procedural phantom generator: determinism, masks, class balance, duplicates, Kermany-layout round trip."""
from __future__ import annotations

import numpy as np
import pytest

from utils.data import duplicate_groups, load_folder, patient_id_from_name, phantom, subtype_from_name

SIZE = 32


@pytest.fixture(scope="module")
def sample():
    """A moderate sample (200 patients at 32 px): class ratio, masks and duplicates are measured on it."""
    return phantom.stack(phantom.generate(200, seed=11, spec=phantom.spec_for("default", SIZE)))


def test_same_seed_same_bytes_other_seed_other_images():
    spec = phantom.spec_for("default", SIZE)
    a, b = phantom.stack(phantom.generate(6, 3, spec)), phantom.stack(phantom.generate(6, 3, spec))
    for key in ("images", "lung_masks", "lesion_masks", "labels", "ids", "patient_ids", "subtypes"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["images"].tobytes() == b["images"].tobytes()
    assert a["info"].equals(b["info"])
    c = phantom.stack(phantom.generate(6, 4, spec))
    assert c["images"].shape != a["images"].shape or not np.array_equal(c["images"], a["images"])


def test_shapes_and_types(sample):
    n = len(sample["labels"])
    assert sample["images"].shape == (n, SIZE, SIZE) and sample["images"].dtype == np.uint8
    assert sample["lung_masks"].dtype == bool and sample["lesion_masks"].shape == (n, SIZE, SIZE)
    assert set(np.unique(sample["labels"])) == {0, 1}
    assert sample["images"].std(axis=(1, 2)).min() > 10  # real images, not blanks


def test_masks_lesions_inside_lungs_and_by_class(sample):
    les, lung, y = sample["lesion_masks"], sample["lung_masks"], sample["labels"]
    assert not (les & ~lung).any(), "every lesion pixel lies inside the lung mask"
    assert lung.sum(axis=(1, 2)).min() > 0.1 * SIZE * SIZE
    assert not les[y == 0].any(), "NORMAL images have empty lesion masks"
    info = sample["info"]
    assert (info.loc[y == 1, "n_lesions"] >= 1).all() and (info.loc[y == 0, "n_lesions"] == 0).all()
    # PNEUMONIA: the generator does not promise a visible mask for every lesion, but nearly all have one
    assert (les[y == 1].sum(axis=(1, 2)) > 0).mean() >= 0.95


def test_class_ratio_close_to_kermany(sample):
    y = sample["labels"]
    ratio = (y == 1).sum() / (y == 0).sum()
    assert 2.2 < ratio < 3.8, ratio  # the real set has ≈ 1 NORMAL : 2.9 PNEUMONIA


def test_ids_follow_the_kermany_naming_scheme(sample):
    for image_id, pid, sub, y in zip(sample["ids"], sample["patient_ids"], sample["subtypes"], sample["labels"]):
        assert patient_id_from_name(image_id) == pid
        assert subtype_from_name(image_id) == sub
        assert (sub in ("bacteria", "virus")) if y else sub == ""
    assert len(set(sample["ids"])) == len(sample["ids"])
    counts = np.unique(sample["patient_ids"], return_counts=True)[1]
    assert counts.max() >= 3  # several images per patient, as in the real set


def test_duplicates_within_a_patient(sample):
    info = sample["info"]
    dup = info[info["duplicate_of"] != ""]
    assert len(dup) >= 2
    pos = {i: k for k, i in enumerate(sample["ids"])}
    for _, row in dup.iterrows():
        a, b = pos[row["id"]], pos[row["duplicate_of"]]
        np.testing.assert_array_equal(sample["images"][a], sample["images"][b])
        assert sample["patient_ids"][a] == sample["patient_ids"][b]
    # and the other images are all distinct
    hashes = {sample["images"][k].tobytes() for k in range(len(sample["ids"]))}
    assert len(hashes) == len(sample["ids"]) - len(dup)


def test_spec_presets():
    easy, hard = phantom.spec_for("easy", 64), phantom.spec_for("hard", 64)
    assert easy.image_size == 64 and easy.hard_fraction == 0 and hard.hard_fraction > 0
    assert min(easy.contrast) >= min(hard.contrast)
    with pytest.raises(ValueError, match="difficulty"):
        phantom.spec_for("impossible")


def test_kermany_layout_round_trip_attaches_masks(tmp_path):
    spec = phantom.spec_for("default", SIZE)
    train = phantom.generate(24, 1, spec, first_pid=1)
    test = phantom.generate(8, 2, spec, first_pid=5001)
    val = phantom.generate(2, 3, spec, first_pid=9001)  # a tiny official val: merged into train
    root = phantom.write_kermany_layout(tmp_path / "ph", {"train": train, "test": test, "val": val}, spec)
    b = load_folder(root, SIZE, 0.25, 0, tmp_path / "cache", progress=False, source="phantom")
    by_id = {s.image_id: s for s in train + test + val}
    n_seen = 0
    for split in b.splits.values():
        assert split.lung_masks is not None and split.info is not None
        assert list(split.info["id"]) == list(split.ids)
        for k, image_id in enumerate(split.ids):
            s = by_id[image_id]
            np.testing.assert_array_equal(split.images[k], s.image)  # PNG is lossless
            np.testing.assert_array_equal(split.lung_masks[k], s.lung_mask)
            np.testing.assert_array_equal(split.lesion_masks[k], s.lesion_mask)
            assert split.labels[k] == s.label and split.patient_ids[k] == s.patient_id
            n_seen += 1
    assert n_seen == len(by_id)
    val_ids = {s.image_id for s in val}
    assert val_ids <= set(b["train"].ids) | set(b["val"].ids)
    dups = [g for s in b.splits.values() for g in duplicate_groups(s)]
    planted = sorted(sorted([s.image_id, s.info["duplicate_of"]]) for s in train + test + val if s.info["duplicate_of"])
    assert sorted(dups) == planted
    # loading at another size resizes the masks with the images
    small = load_folder(root, 16, 0.25, 0, tmp_path / "cache", progress=False)
    assert small["test"].lung_masks.shape == (len(test), 16, 16)
    assert not (small["test"].lesion_masks & ~small["test"].lung_masks).any()
