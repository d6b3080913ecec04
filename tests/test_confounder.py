"""The planted confounder of notebook 08: markers that follow the label as asked, and the heuristic that finds them."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from utils.data import phantom
from utils.data.bundle import DataBundle, Split, fingerprint, pixel_hashes
from utils.data.confounder import (
    FinderSpec,
    MarkerSpec,
    add_markers,
    confounded_bundle,
    confounded_split,
    draw_marker,
    find_markers,
    find_markers_all,
    glyph,
    marker_probability,
)
from utils.studies.shortcut import remove_markers

SIZE = 128


@pytest.fixture(scope="module")
def phantoms():
    return phantom.stack(phantom.generate(40, 123, phantom.spec_for("default", SIZE), first_pid=70001))


def test_glyphs_are_letters_of_the_asked_height():
    for letter in ("R", "L"):
        g = glyph(letter, 14)
        assert g.dtype == bool and g.shape == (14, 10) and 0.2 < g.mean() < 0.7
    assert not np.array_equal(glyph("R", 7), glyph("L", 7))


@pytest.mark.parametrize("mode, p_pos, p_neg", [("correlated", 0.9, 0.1), ("decorrelated", 0.5, 0.5),
                                                ("reversed", 0.1, 0.9), ("none", 0.0, 0.0)])
def test_marker_rates_follow_the_mode(mode, p_pos, p_neg):
    labels = np.r_[np.ones(3000, int), np.zeros(3000, int)]
    p = marker_probability(labels, mode)
    assert np.allclose(p[labels == 1], p_pos) and np.allclose(p[labels == 0], p_neg)
    images = np.zeros((len(labels), 32, 32), np.uint8)
    _, regions, has = add_markers(images, labels, mode, seed=1)
    assert abs(has[labels == 1].mean() - p_pos) < 0.03 and abs(has[labels == 0].mean() - p_neg) < 0.03
    assert np.array_equal(regions.reshape(len(labels), -1).any(axis=1), has)  # a region exactly where a marker is


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown mode"):
        marker_probability(np.ones(3), "sometimes")


def test_marker_is_bright_small_and_in_an_upper_corner():
    rng = np.random.default_rng(0)
    image = np.full((SIZE, SIZE), 40, np.uint8)
    spec = MarkerSpec()
    for _ in range(20):
        out, region = draw_marker(image, rng, spec)
        changed = out != image
        assert changed.any() and (region | ~changed).all()  # every burned pixel lies inside the region
        assert out[changed].min() >= spec.intensity[0]
        rows, cols = np.nonzero(region)
        assert rows.max() < 0.25 * SIZE  # near the top edge
        assert cols.max() < 0.3 * SIZE or cols.min() > 0.7 * SIZE  # near a side
        assert 0.003 < region.mean() < 0.03  # a letter, not a patch


def test_markers_are_seeded():
    labels = np.r_[np.ones(20, int), np.zeros(20, int)]
    images = np.zeros((40, 64, 64), np.uint8)
    a, b, c = (add_markers(images, labels, "correlated", seed=s)[0] for s in (5, 5, 6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_a_marker_only_classifier_scores_as_the_design_says():
    """The three test versions mean what notebook 08 says: a score that *is* the marker has AUC ≈ 0.9
    in-distribution, ≈ 0.5 decorrelated and ≈ 0.1 reversed (0.9 / 0.1 correlation)."""
    labels = np.r_[np.ones(2000, int), np.zeros(2000, int)]
    images = np.zeros((len(labels), 24, 24), np.uint8)
    auc = {}
    for mode in ("correlated", "decorrelated", "reversed"):
        _, _, has = add_markers(images, labels, mode, seed=3)
        auc[mode] = roc_auc_score(labels, has.astype(float))
    assert abs(auc["correlated"] - 0.9) < 0.03 and abs(auc["decorrelated"] - 0.5) < 0.03
    assert abs(auc["reversed"] - 0.1) < 0.03


def _split(name: str, data: dict) -> Split:
    return Split(name, data["images"], data["labels"], np.asarray(data["ids"]), np.asarray(data["patient_ids"]),
                 np.asarray(data["subtypes"]), pixel_hashes(data["images"]))


def test_confounded_bundle_marks_train_and_val_only(phantoms):
    n = len(phantoms["labels"])
    cuts = {"train": slice(0, n // 2), "val": slice(n // 2, 3 * n // 4), "test": slice(3 * n // 4, n)}
    parts = {name: {k: v[sl] for k, v in phantoms.items() if isinstance(v, np.ndarray) and len(v) == n}
             for name, sl in cuts.items()}
    splits = {name: _split(name, d) for name, d in parts.items()}
    bundle = DataBundle("phantom", SIZE, splits, fingerprint(splits))
    marked = confounded_bundle(bundle, "correlated", seed=0)
    assert np.array_equal(marked["test"].images, bundle["test"].images)
    assert marked.fingerprint != bundle.fingerprint
    for name in ("train", "val"):
        assert not np.array_equal(marked[name].images, bundle[name].images)
        assert np.array_equal(marked[name].hashes, pixel_hashes(marked[name].images))
        assert np.array_equal(marked[name].labels, bundle[name].labels)
    split, regions, has = confounded_split(bundle["test"], "decorrelated", seed=1)
    assert regions.shape == split.images.shape and has.any() and (~has).any()


def test_finder_finds_planted_markers_and_little_else(phantoms):
    images, labels = phantoms["images"], phantoms["labels"]
    marked, regions, has = add_markers(images, np.ones_like(labels), "correlated", seed=2,
                                       spec=MarkerSpec(p_marker_pneumonia=1.0))
    found = find_markers_all(marked)
    hit = (found & regions).reshape(len(found), -1).any(axis=1)
    assert has.all() and hit.mean() >= 0.9, f"found {hit.mean():.2f} of the planted markers"
    clean = find_markers_all(images).reshape(len(images), -1).any(axis=1)
    assert clean.mean() <= 0.15, f"flags {clean.mean():.2f} of clean phantoms"


def test_finder_ignores_what_is_not_a_marker():
    flat = np.full((SIZE, SIZE), 60, np.uint8)
    assert not find_markers(flat).any()
    centre = flat.copy()
    centre[60:68, 60:66] = 250  # a bright blob far from every edge
    assert not find_markers(centre).any()
    rim = flat.copy()
    rim[2:6, 10:118] = 250  # a long bright band along the edge (the body's rim, a collimator edge)
    assert not find_markers(rim).any()
    letter = flat.copy()
    letter[6:20, 8:18] = np.where(glyph("R", 14), 250, 60)
    found = find_markers(letter)
    assert found[6:20, 8:18].any() and not found[40:, :].any()
    assert not find_markers(letter, FinderSpec(contrast=255)).any()  # the contrast knob is honoured


def test_remove_markers_imputes_only_the_masked_pixels(phantoms):
    images = phantoms["images"][:6]
    marked, regions, _ = add_markers(images, np.ones(6, int), "correlated", seed=4,
                                     spec=MarkerSpec(p_marker_pneumonia=1.0))
    cleaned = remove_markers(marked, regions)
    assert np.array_equal(cleaned[~regions], marked[~regions])
    before = np.abs(marked[regions].astype(int) - images[regions].astype(int)).mean()
    after = np.abs(cleaned[regions].astype(int) - images[regions].astype(int)).mean()
    assert after < 0.25 * before, (before, after)
    assert np.array_equal(remove_markers(images, np.zeros_like(regions)), images)
