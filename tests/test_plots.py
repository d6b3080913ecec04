"""utils.viz.data: every figure function returns a Figure, writes a PNG, and draws what it claims."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from helpers import assert_png

from utils.viz import data as P
from utils.viz import training as T

S = 24


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 120, (8, S, S), dtype=np.uint8)
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    imgs[labels == 1] += 100  # brighter PNEUMONIA: visible in the intensity panels
    lung = np.zeros((8, S, S), bool)
    lung[:, 4:20, 3:11] = lung[:, 4:20, 13:21] = True
    lesion = np.zeros((8, S, S), bool)
    lesion[3:, 8:12, 5:9] = True
    return imgs, labels, lung, lesion


def history(phase: str, n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"phase": phase, "epoch": np.arange(1, n + 1), "lr": 1e-3,
                         "train_loss": np.linspace(0.7, 0.2, n), "val_loss": np.linspace(0.6, 0.3, n),
                         "val_auc": np.linspace(0.8, 0.95, n) + rng.uniform(0, 0.01, n),
                         "val_recall": np.full(n, 0.9), "val_specificity": np.full(n, 0.8),
                         "images_per_s": np.full(n, 50.0), "seconds": 1.0})


# ------------------------------------------------------------------------------------------ images
def test_sample_indices_are_balanced_sorted_and_seeded():
    labels = np.array([0] * 5 + [1] * 20)
    idx = P.sample_indices(labels, per_class=3, seed=1)
    assert len(idx) == 6 and list(labels[idx]) == [0, 0, 0, 1, 1, 1]
    assert list(idx[:3]) == sorted(idx[:3])
    assert np.array_equal(idx, P.sample_indices(labels, 3, seed=1))
    assert not np.array_equal(idx, P.sample_indices(labels, 3, seed=2))
    assert len(P.sample_indices(labels, per_class=10, seed=0)) == 15  # only 5 NORMAL exist


def test_sample_grid_draws_outlines_only_where_there_is_a_mask(images, tmp_path):
    imgs, labels, lung, lesion = images
    fig = P.plot_sample_grid(imgs, labels, [f"id{k}" for k in range(8)], lesion, lung, n_cols=4,
                             save_to=tmp_path / "grid.png")
    assert_png(fig, tmp_path / "grid.png")
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 8
    # NORMAL panels: a lung outline only; PNEUMONIA panels: lung + lesion outlines
    n_contours = [len([c for c in ax.collections]) for ax in axes]
    assert n_contours == [1, 1, 1, 2, 2, 2, 2, 2]
    assert axes[0].get_title() == "NORMAL\nid0" and axes[5].get_title().startswith("PNEUMONIA")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["lesion (ground truth)", "lung"]


def test_sample_grid_without_masks_and_with_float_images(images, tmp_path):
    imgs, labels, _, _ = images
    fig = P.plot_sample_grid(imgs[:3] / 255.0, labels[:3], save_to=tmp_path / "plain.png")
    assert_png(fig, tmp_path / "plain.png")
    assert not fig.legends and all(not ax.collections for ax in fig.axes)
    assert fig.axes[0].images[0].get_clim() == (0, 1.0)


def test_sample_grid_rejects_mismatched_input(images):
    imgs, labels, _, _ = images
    with pytest.raises(ValueError, match="same length"):
        P.plot_sample_grid(imgs, labels[:3])
    with pytest.raises(ValueError, match="at least one"):
        P.plot_sample_grid(imgs[:0], labels[:0])


# ------------------------------------------------------------------------------------------ counts
def test_class_balance_shows_counts_and_subtypes(tmp_path):
    counts = pd.DataFrame({"NORMAL": [10, 3], "PNEUMONIA": [30, 9], "bacteria": [20, 5], "virus": [10, 4]},
                          index=["train", "val"])
    fig = P.plot_class_balance(counts, save_to=tmp_path / "bal.png")
    assert_png(fig, tmp_path / "bal.png")
    assert len(fig.axes) == 2
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert {"10", "30", "3", "9"} <= set(labels)
    assert "75% pneum." in fig.axes[0].get_xticklabels()[0].get_text()
    only_classes = P.plot_class_balance(counts[["NORMAL", "PNEUMONIA"]])
    assert len(only_classes.axes) == 1
    with pytest.raises(ValueError, match="NORMAL"):
        P.plot_class_balance(counts[["PNEUMONIA"]])


def test_images_per_patient_counts_patients(tmp_path):
    pids = {"train": np.array(["a", "a", "a", "b", "c", "c"]), "val": np.array(["d", "e"])}
    labels = {"train": np.array([1, 1, 1, 0, 1, 0]), "val": np.array([0, 1])}
    fig = P.plot_images_per_patient(pids, labels, save_to=tmp_path / "ipp.png")
    assert_png(fig, tmp_path / "ipp.png")
    ax = fig.axes[0]
    assert "6 images / 3 patients" in ax.get_title()
    normal, pneumonia = ax.containers  # bars at 1, 2, 3 images per patient
    assert [b.get_height() for b in normal] == [1, 0, 0]  # patient b
    assert [b.get_height() for b in pneumonia] == [0, 1, 1]  # c (max label 1, 2 images), a (3 images)
    unlabelled = P.plot_images_per_patient({"all": pids["train"]})
    assert [b.get_height() for b in unlabelled.axes[0].containers[0]] == [1, 1, 1]


def test_image_sizes_and_intensities(images, tmp_path):
    imgs, labels, _, _ = images
    w = np.array([100, 120, 100, 200, np.nan, 210, 190, 200])
    h = np.array([100, 100, 100, 180, 150, 200, 200, 180])
    fig = P.plot_image_sizes(w, h, labels, save_to=tmp_path / "sizes.png")
    assert_png(fig, tmp_path / "sizes.png")
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 7  # the unreadable file is left out
    with pytest.raises(ValueError, match="known size"):
        P.plot_image_sizes([np.nan], [np.nan], [0])
    fig = P.plot_intensity_histograms(imgs, labels, save_to=tmp_path / "int.png")
    assert_png(fig, tmp_path / "int.png")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2 and all(np.isclose(ln.get_ydata().sum(), 1.0) for ln in lines)
    means = [float(t.get_text().split("mean ")[1]) for t in fig.axes[1].get_legend().get_texts()]
    assert means[1] > means[0] + 50  # PNEUMONIA was made brighter
    with pytest.raises(ValueError, match="uint8"):
        P.plot_intensity_histograms(imgs / 255.0, labels)


def test_lesion_properties(tmp_path):
    info = pd.DataFrame({"label": [0, 1, 1, 1, 1], "kind": ["", "consolidation", "patchy", "consolidation", "patchy"],
                         "hard": ["", "", "faint", "retrocardiac", ""], "lesion_area_frac": [0, 0.02, 0.01, 0.03, 0.02],
                         "contrast": [0, 0.5, 0.15, 0.3, 0.45]})
    fig = P.plot_lesion_properties(info, save_to=tmp_path / "les.png")
    assert_png(fig, tmp_path / "les.png")
    cases = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert cases[0] == "ordinary" and set(cases) == {"ordinary", "faint", "retrocardiac"}
    with pytest.raises(ValueError, match="contrast"):
        P.plot_lesion_properties(info.drop(columns="contrast"))
    with pytest.raises(ValueError, match="no PNEUMONIA"):
        P.plot_lesion_properties(info[info["label"] == 0])


# ------------------------------------------------------------------------------------------ training
def test_training_curves_one_phase(tmp_path):
    h = history("phase1", 3)
    fig = T.plot_training_curves(h, best_epochs=[2], save_to=tmp_path / "p1.png")
    assert_png(fig, tmp_path / "p1.png")
    ax_auc = fig.axes[1]
    star = [ln for ln in ax_auc.get_lines() if ln.get_marker() == "*"]
    assert len(star) == 1 and star[0].get_xdata()[0] == 2 and star[0].get_ydata()[0] == h["val_auc"][1]
    assert not [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == ":"]  # no boundary


def test_training_curves_two_phases_with_boundary(tmp_path):
    h1, h2 = history("phase1", 3), history("phase2", 4, seed=1)
    fig = T.plot_training_curves([h1, h2], best_epochs=[3, 2], save_to=tmp_path / "both.png")
    assert_png(fig, tmp_path / "both.png")
    for ax in fig.axes:
        bounds = [ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_linestyle() == ":"]
        assert bounds == [3.5]
    phase2_auc = [ln for ln in fig.axes[1].get_lines() if ln.get_label() == "phase2"][0]
    assert list(phase2_auc.get_xdata()) == [4, 5, 6, 7]  # phase 2 continues the time axis
    stars = [ln for ln in fig.axes[1].get_lines() if ln.get_marker() == "*"]
    assert [s.get_xdata()[0] for s in stars] == [3, 5]
    assert any("phase1 | phase2" in t.get_text() for t in fig.axes[3].texts)


def test_training_curves_reject_bad_histories():
    with pytest.raises(ValueError, match="val_auc"):
        T.plot_training_curves(history("p", 2).drop(columns="val_auc"))
    with pytest.raises(ValueError, match="non-empty"):
        T.plot_training_curves([])
    with pytest.raises(ValueError, match="one best epoch per history"):
        T.plot_training_curves([history("a", 2), history("b", 2)], best_epochs=[1])
