"""utils.studies.failures (notebook 06): selectors, outside-lung fraction, lesion table, taxonomy, case table."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from utils.data import phantom
from utils.errors import UserError
from utils.explain import localisation as loc
from utils.studies import failures as F
from utils.viz import cams as cam_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def preds() -> pd.DataFrame:
    # probabilities are multiples of 1/8 (exact in binary), so the boundary prob == threshold is exact
    return pd.DataFrame({
        "id": [f"im{i}" for i in range(10)],
        "label": [1, 1, 1, 1, 1, 1, 0, 0, 0, 1],
        "prob": [0.125, 0.5, 0.375, 0.625, 0.875, 0.75, 0.25, 0.625, 0.0, 0.0],
        "patient_id": [f"p{i // 2}" for i in range(10)],
        "subtype": ["bacteria", "virus"] * 3 + [np.nan] * 3 + ["virus"],
        "split": "test",
    })


# ------------------------------------------------------------------------------------------ selectors
def test_false_negatives_are_exactly_the_missed_positives(preds):
    fn = F.select_false_negatives(preds, 0.5)
    assert list(fn["id"]) == ["im9", "im0", "im2"]  # label 1 and prob < 0.5, sorted by prob
    assert list(fn.index) == [9, 0, 2]  # the original index is kept
    assert np.allclose(fn["margin"], [0.5, 0.375, 0.125])
    assert (fn["margin"] > 0).all()
    # the boundary: prob == threshold is a detection (positive means prob >= threshold)
    assert "im1" not in set(fn["id"])
    assert "im1" in set(F.select_true_positives(preds, 0.5)["id"])
    # negatives are never false negatives, whatever their probability
    assert not set(fn["id"]) & {"im6", "im7", "im8"}
    # every positive is either a FN or a TP, never both
    tp = F.select_true_positives(preds, 0.5)
    assert set(fn["id"]) | set(tp["id"]) == set(preds.loc[preds.label == 1, "id"])
    assert not set(fn["id"]) & set(tp["id"])


def test_false_negatives_follow_the_threshold(preds):
    assert F.select_false_negatives(preds, 0.0).empty  # nothing is below 0 (prob 0.0 >= 0.0)
    assert len(F.select_false_negatives(preds, 1.0)) == int((preds.label == 1).sum())
    assert list(F.select_false_negatives(preds, 0.625)["id"]) == ["im9", "im0", "im2", "im1"]


def test_near_misses_are_detected_positives_closest_to_the_threshold(preds):
    near = F.select_near_misses(preds, 0.5, k=3)
    assert list(near["id"]) == ["im1", "im3", "im5"]  # probs 0.5, 0.625, 0.75 (im7 is a negative)
    assert (near["label"] == 1).all() and (near["prob"] >= 0.5).all()
    assert list(near["margin"]) == sorted(near["margin"], reverse=True)  # smallest |margin| first
    assert np.allclose(near["margin"], [0.0, -0.125, -0.25])
    assert len(F.select_near_misses(preds, 0.5, k=100)) == 4  # all detected positives, no more
    assert F.select_near_misses(preds, 0.5, k=0).empty
    with pytest.raises(ValueError):
        F.select_near_misses(preds, 0.5, k=-1)


def test_selectors_reject_bad_input(preds):
    with pytest.raises(ValueError, match="label"):
        F.select_false_negatives(preds.drop(columns="label"), 0.5)
    with pytest.raises(ValueError, match="finite"):
        F.select_false_negatives(preds, float("nan"))


def test_threshold_cost_counts_both_errors(preds):
    cost = F.threshold_cost(preds, 0.5, 0.125)
    assert (cost["fn"], cost["fp"]) == (3, 1)  # misses im0, im2, im9; false alarm im7 (0.625)
    assert (cost["fn_new"], cost["fp_new"]) == (1, 2)  # only im9 (0.0) still missed; im6 (0.25) alarms
    assert cost["n_positive"] == 7 and cost["n_negative"] == 3


# ------------------------------------------------------------------------- attention outside the lungs
def test_outside_fraction_inside_and_outside_the_mask():
    lung = np.zeros((16, 16), bool)
    lung[4:12, 2:7] = True
    inside = np.zeros((16, 16), np.float32)
    inside[5:9, 3:6] = 1.0
    outside = np.zeros((16, 16), np.float32)
    outside[0:3, 10:16] = 0.7
    assert loc.outside_fraction(inside, lung) == 0.0
    assert loc.outside_fraction(outside, lung) == 1.0
    fr, masks, source = loc.outside_lung_fractions(np.stack([inside, outside]), np.stack([lung, lung]))
    assert np.allclose(fr, [0.0, 1.0]) and source == "ground truth" and masks.dtype == bool
    with pytest.raises(ValueError):
        loc.outside_lung_fractions(np.stack([inside]))  # neither masks nor images


#: Stated bound for the lung-field estimate on *pneumonia* phantoms (consolidation can bite into the
#: visible lung, and the hidden lung behind heart/dome is missed by design): IoU >= 0.5 for each image.
PNEUMONIA_MIN_IOU = 0.5


@pytest.fixture(scope="module")
def pneumonia_phantoms():
    samples = phantom.generate(8, seed=3, spec=phantom.PhantomSpec(image_size=64))
    pos = [s for s in samples if s.label == 1][:4]
    assert pos, "the phantom generator produced no pneumonia image"
    return pos


def test_lung_field_estimate_is_plausible_on_pneumonia_phantoms(pneumonia_phantoms):
    images = np.stack([s.image for s in pneumonia_phantoms])
    truth = np.stack([s.lung_mask for s in pneumonia_phantoms])
    # a map equal to the true lung mask: outside fraction 0 with ground truth, small with the estimate
    cams = truth.astype(np.float32)
    fr_true, _, src_true = loc.outside_lung_fractions(cams, truth)
    fr_est, est, src_est = loc.outside_lung_fractions(cams, images=images, progress=False)
    assert src_true == "ground truth" and src_est == "estimated"
    assert np.allclose(fr_true, 0.0)
    ious = [loc.iou(e, t) for e, t in zip(est, truth)]
    assert min(ious) >= PNEUMONIA_MIN_IOU, np.round(ious, 2)
    # the estimate misses lung (never invents much), so the bias of the outside fraction is upwards
    assert (fr_est >= fr_true).all() and (fr_est < 0.5).all()


def test_compare_groups_mann_whitney():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.6, 0.9, 30), rng.uniform(0.0, 0.3, 40)
    res = F.compare_groups(a, b)
    assert res["p"] < 1e-6 and res["U"] == pytest.approx(30 * 40)  # every a above every b
    assert res["n_a"] == 30 and res["n_b"] == 40 and res["median_a"] > res["median_b"]
    assert res["note"] == ""
    few = F.compare_groups(a[:3], b)
    assert "little power" in few["note"] and np.isfinite(few["p"])
    empty = F.compare_groups([], b)
    assert np.isnan(empty["p"]) and np.isnan(empty["U"]) and "empty" in empty["note"]
    assert F.compare_groups([0.2, np.nan], b)["n_a"] == 1  # NaNs are dropped


# -------------------------------------------------------------------------------- lesion properties
def test_lesion_property_table_on_a_tiny_frame():
    info = pd.DataFrame({
        "kind": ["consolidation", "consolidation", "patchy", "patchy", "consolidation"],
        "lesion_area_frac": [0.01, 0.05, 0.02, 0.06, 0.07],
        "contrast": [0.1, 0.5, 0.2, 0.4, 0.6],
        "lesion_radius": [0.1, 0.2, 0.1, 0.2, 0.3],
        "location": ["retrocardiac", "lung", np.nan, "lung", "lung,retrodiaphragmatic"],
        "hard": ["retrocardiac", "", "small", np.nan, ""],
    })
    is_fn = [True, False, True, False, False]
    t = F.lesion_property_table(info, is_fn).set_index(["kind", "outcome"])
    assert list(t.index.get_level_values("kind").unique()) == ["consolidation", "patchy", "all"]
    fn, tp = "missed (FN)", "detected (TP)"
    assert t.loc[("all", fn), "n"] == 2 and t.loc[("all", tp), "n"] == 3
    assert t.loc[("consolidation", fn), "median_contrast"] == pytest.approx(0.1)
    assert t.loc[("consolidation", tp), "median_lesion_area_frac"] == pytest.approx(0.06)
    assert t.loc[("all", fn), "hard_fraction"] == 1.0 and t.loc[("all", tp), "hard_fraction"] == 0.0
    assert t.loc[("all", tp), "hidden_fraction"] == pytest.approx(1 / 3)  # the multi-lesion location
    assert t.loc[("all", fn), "n_small"] == 1 and t.loc[("all", fn), "n_retrocardiac"] == 1
    assert t.loc[("patchy", fn), "n_faint"] == 0
    nobody = F.lesion_property_table(info, [False] * 5).set_index(["kind", "outcome"])
    assert nobody.loc[("all", fn), "n"] == 0 and np.isnan(nobody.loc[("all", fn), "median_contrast"])
    with pytest.raises(ValueError):
        F.lesion_property_table(info, [True])


def test_failure_cutoffs_are_quantiles_of_the_reference():
    info = pd.DataFrame({"label": [0] + [1] * 10, "contrast": [0.0] + list(np.arange(1, 11) / 10),
                         "lesion_area_frac": [0.0] + list(np.arange(1, 11) / 100)})
    cut = F.failure_cutoffs(info, q=0.5)
    assert cut == pytest.approx({"contrast": 0.55, "lesion_area": 0.055})  # label-0 rows are left out
    ref = np.r_[np.linspace(0.6, 0.8, 11), np.nan]
    assert F.failure_cutoffs(outside_reference=ref, q_outside=0.9) == pytest.approx({"outside_lung": 0.78})
    assert F.failure_cutoffs() == {}
    # a data-driven outside cut-off changes what counts as "distraction"
    row = {"prob": 0.3, "threshold": 0.5, "outside_lung_fraction": 0.7}
    assert F.classify_failure(row) == F.DISTRACTION  # default cut-off 0.5
    assert F.classify_failure(row, F.failure_cutoffs(outside_reference=ref)) == F.OTHER


# ----------------------------------------------------------------------------------- the taxonomy
def _row(**kw):
    base = {"prob": 0.3, "threshold": 0.5, "outside_lung_fraction": 0.2}
    return {**base, **kw}


PHANTOM = dict(lesion_area_frac=0.04, contrast=0.5, location="lung", hard="")


@pytest.mark.parametrize("row, expected", [
    (_row(**{**PHANTOM, "location": "retrocardiac", "hard": "retrocardiac"}), F.HIDDEN),
    (_row(**{**PHANTOM, "location": "lung,retrodiaphragmatic"}), F.HIDDEN),
    (_row(**{**PHANTOM, "hard": "faint"}), F.FAINT),
    (_row(**{**PHANTOM, "hard": "small"}), F.FAINT),
    (_row(**{**PHANTOM, "contrast": 0.1}), F.FAINT),  # below the contrast cut-off (0.2, given below)
    (_row(**{**PHANTOM, "lesion_area_frac": 0.005}), F.FAINT),  # below the area cut-off (0.01)
    (_row(**{**PHANTOM, "outside_lung_fraction": 0.8}), F.DISTRACTION),
    (_row(**{**PHANTOM, "lesion_area_frac": 0.0}), F.NO_LESION),
    (_row(**{**PHANTOM, "location": np.nan, "hard": np.nan}), F.OTHER),  # CSV-style empty strings
    (_row(**PHANTOM), F.OTHER),
    # order: hidden beats faint and distraction; "no lesion" beats everything
    (_row(**{**PHANTOM, "location": "retrocardiac", "hard": "faint", "outside_lung_fraction": 0.9}), F.HIDDEN),
    (_row(**{**PHANTOM, "hard": "small", "outside_lung_fraction": 0.9}), F.FAINT),
    (_row(**{**PHANTOM, "lesion_area_frac": 0.0, "location": "retrocardiac"}), F.NO_LESION),
    # real data: no lesion info, only the map and probability rules
    (_row(outside_lung_fraction=0.7), F.DISTRACTION),
    (_row(prob=0.05), F.NO_LESION),  # 0.05 < 0.25 * 0.5: a confident NORMAL call
    (_row(prob=0.2), F.OTHER),
    (_row(prob=0.05, lesion_area_frac=np.nan, hard="faint"), F.NO_LESION),  # NaN area = no phantom info
])
def test_classify_failure_rules(row, expected):
    assert F.classify_failure(row, {"contrast": 0.2, "lesion_area": 0.01}) == expected


def test_classify_failure_cutoffs_are_optional_and_adjustable():
    row = _row(**{**PHANTOM, "contrast": 0.1})
    assert F.classify_failure(row) == F.OTHER  # no contrast cut-off by default
    assert F.classify_failure(_row(outside_lung_fraction=0.6), {"outside_lung": 0.7}) == F.OTHER
    assert F.classify_failure(_row(outside_lung_fraction=0.5)) == F.OTHER  # "more than half"


def test_category_counts_list_every_category():
    counts = F.category_counts([F.FAINT, F.FAINT, F.OTHER])
    assert list(counts["category"]) == list(F.CATEGORIES)
    assert counts.set_index("category")["n"].to_dict() == {**{c: 0 for c in F.CATEGORIES}, F.FAINT: 2, F.OTHER: 1}
    assert F.category_counts([])["n"].sum() == 0
    with pytest.raises(ValueError):
        F.category_counts(["made up"])


def test_rules_name_only_known_categories():
    assert {name for name, _ in F.RULES} == set(F.CATEGORIES)


# ---------------------------------------------------------------------------------- the case table
def test_case_table_columns_and_categories(preds):
    fn = F.select_false_negatives(preds, 0.5)
    info = pd.DataFrame({"kind": ["patchy", "consolidation", "consolidation"],
                         "n_lesions": [1, 1, 2], "lesion_area_frac": [0.0, 0.03, 0.04],
                         "contrast": [0.0, 0.4, 0.5], "lesion_radius": [0, 0.2, 0.2],
                         "location": ["", "retrocardiac", "lung"], "hard": ["", "retrocardiac", ""]})
    t = F.case_table(fn, 0.5, [0.1, 0.2, 0.9], info)
    assert list(t.columns) == list(F.CASE_COLUMNS) + list(F.LESION_COLUMNS)
    assert list(t["id"]) == ["im9", "im0", "im2"] and (t["threshold"] == 0.5).all()
    assert np.allclose(t["margin"], 0.5 - t["prob"])
    assert list(t["category"]) == [F.NO_LESION, F.HIDDEN, F.DISTRACTION]
    assert t.loc[0, "subtype"] == "virus"
    real = F.case_table(fn, 0.5, [0.1, 0.2, 0.9])  # real data: no lesion columns
    assert list(real.columns) == list(F.CASE_COLUMNS)
    assert list(real["category"]) == [F.NO_LESION, F.OTHER, F.DISTRACTION]  # im9: prob 0 < 0.125
    empty = F.case_table(fn.iloc[:0], 0.5, [])
    assert empty.empty and list(empty.columns) == list(F.CASE_COLUMNS)
    with pytest.raises(ValueError):
        F.case_table(fn, 0.5, [0.1])


# ------------------------------------------------------------------------------------ the inputs
def test_align_to_split(preds):
    ids = np.array(preds["id"][::-1])
    idx = F.align_to_split(preds, ids, preds["label"].to_numpy()[::-1])
    assert list(ids[idx]) == list(preds["id"])
    with pytest.raises(UserError, match="other data"):
        F.align_to_split(preds, ids[:-1])
    with pytest.raises(UserError, match="labels"):
        F.align_to_split(preds, ids, np.zeros(len(ids), int))


def test_check_probabilities():
    assert F.check_probabilities([0.1, 0.9], [0.1005, 0.9]) == pytest.approx(0.0005)
    with pytest.raises(UserError, match="04_evaluation"):
        F.check_probabilities([0.1, 0.9], [0.5, 0.9])


def test_class_gradcams_on_a_tiny_model():
    from utils.train.model import build_model, predict_proba

    model, _ = build_model("none", seed=0)
    model.eval()
    meta = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "classes": ["NORMAL", "PNEUMONIA"],
            "explanation": {"name": "Grad-CAM @ layer3", "method": "gradcam", "layer": "layer3", "shifts": [0]}}
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    maps, probs = F.class_gradcams(model, images, meta, batch_size=2, progress=False)
    assert set(maps) == {"NORMAL", "PNEUMONIA"}
    assert all(m.shape == (3, 32, 32) and m.min() >= 0 and m.max() <= 1 for m in maps.values())
    assert np.allclose(probs, predict_proba(model, images, meta), atol=1e-5)
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed
    from utils.explain.maps import main_maps

    np.testing.assert_allclose(maps["PNEUMONIA"], main_maps(model, meta, images, 1)[0], atol=1e-6)  # one function
    only, probs1 = F.class_gradcams(model, images, meta, progress=False, classes=["NORMAL"])
    assert list(only) == ["NORMAL"] and np.allclose(only["NORMAL"], maps["NORMAL"], atol=1e-6)
    assert np.allclose(probs1, probs, atol=1e-6)
    with pytest.raises(ValueError, match="subset"):
        F.class_gradcams(model, images, meta, progress=False, classes=["COVID"])


# ---------------------------------------------------------------------------------------- figures
def test_failure_figures_write_pngs(tmp_path, pneumonia_phantoms):
    images = np.stack([s.image for s in pneumonia_phantoms])
    lesions = np.stack([s.lesion_mask for s in pneumonia_phantoms])
    lungs = np.stack([s.lung_mask for s in pneumonia_phantoms])
    cams = np.random.default_rng(0).random(images.shape).astype(np.float32)
    titles = [f"case {i}" for i in range(len(images))]
    figs = {
        "sheet": cam_plots.plot_case_sheet(images, cams, 1 - cams, titles, lesions, lungs,
                                           save_to=tmp_path / "sheet.png"),
        "strip": cam_plots.plot_group_strip({"FN": [0.2, 0.6], "TP": [0.1, 0.2, 0.3], "near": []},
                                            reference=0.5, save_to=tmp_path / "strip.png"),
        "gallery": cam_plots.plot_failure_gallery(images, cams, [F.FAINT, F.HIDDEN, F.FAINT, F.FAINT][:len(images)],
                                                  titles, order=F.CATEGORIES, per_category=2,
                                                  save_to=tmp_path / "gallery.png"),
        "empty sheet": cam_plots.plot_case_sheet(images[:0], cams[:0], cams[:0], [],
                                                 save_to=tmp_path / "empty_sheet.png"),
        "empty gallery": cam_plots.plot_failure_gallery(images[:0], cams[:0], [], [],
                                                        save_to=tmp_path / "empty_gallery.png"),
    }
    for name, fig in figs.items():
        assert isinstance(fig, plt.Figure), name
    for f in ("sheet", "strip", "gallery", "empty_sheet", "empty_gallery"):
        assert (tmp_path / f"{f}.png").read_bytes()[:8] == PNG_MAGIC
    gallery_rows = {ax.get_subplotspec().rowspan.start for ax in figs["gallery"].axes}
    present = [c for c in F.CATEGORIES if c in {F.FAINT, F.HIDDEN}]
    assert len(gallery_rows) == len(present)  # one row per category present, in CATEGORIES order
    labels = [t.get_text() for ax in figs["gallery"].axes for t in ax.texts]
    assert labels[0].startswith(F.HIDDEN) and any(lbl.startswith(F.FAINT) and "n=" in lbl for lbl in labels)


def test_study_failures_bookkeeping_by_id(pneumonia_phantoms):
    from utils.artifacts import predictions_frame
    from utils.data.bundle import Split
    from utils.train.model import build_model, predict_proba

    torch.manual_seed(0)
    model, _ = build_model("none", seed=0)
    model.eval()
    samples = phantom.generate(6, seed=11, spec=phantom.PhantomSpec(image_size=32))
    arr = phantom.stack(samples)
    split = Split("test", arr["images"], arr["labels"], arr["ids"], arr["patient_ids"], arr["subtypes"],
                  arr["ids"], arr["lung_masks"], arr["lesion_masks"], arr["info"])
    meta = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "classes": ["NORMAL", "PNEUMONIA"]}
    probs = predict_proba(model, split.images, meta)
    order = np.random.default_rng(1).permutation(len(split))  # the file's order need not be the split's
    preds = predictions_frame(split.ids[order], split.labels[order], probs[order], split.patient_ids[order],
                              split.subtypes[order], "test")
    pos_probs = probs[split.labels == 1]
    t = float(np.median(pos_probs))
    study = F.study_failures(model, meta, split, preds, t, n_near=2, progress=False)
    assert len(study.fn) + len(study.tp) == int(split.labels.sum()) and study.has_fn
    assert (study.fn["prob"] < t).all() and (study.tp["prob"] >= t).all()
    ids = list(study.fn["id"])
    rows = study.rows(ids)
    assert list(split.ids[rows]) == ids  # looked up by id, whatever the order of the file
    assert np.array_equal(study.images(ids), split.images[rows])
    assert np.array_equal(study.lungs(ids), split.lung_masks[rows]) and study.lung_source == "ground truth"
    assert list(study.info(ids)["id"]) == ids and study.cams(ids).shape == (len(ids), 32, 32)
    assert study.focus is study.fn and study.names == ("FN", "TP")
    bad = preds.copy()
    bad.loc[0, "prob"] = 1.0 - bad.loc[0, "prob"]  # a file the model no longer agrees with
    with pytest.raises(UserError, match="disagrees"):
        F.study_failures(model, meta, split, bad, t, progress=False)


def test_outside_lung_comparison_and_threshold_tradeoff_read_the_study():
    from utils.artifacts import predictions_frame
    from utils.data.bundle import Split
    from utils.train.model import build_model, predict_proba

    model, _ = build_model("none", seed=0)
    model.eval()
    arr = phantom.stack(phantom.generate(6, seed=11, spec=phantom.PhantomSpec(image_size=32)))
    split = Split("test", arr["images"], arr["labels"], arr["ids"], arr["patient_ids"], arr["subtypes"],
                  arr["ids"], arr["lung_masks"], arr["lesion_masks"], arr["info"])
    meta = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "classes": ["NORMAL", "PNEUMONIA"]}
    probs = predict_proba(model, split.images, meta)
    preds = predictions_frame(split.ids, split.labels, probs, split.patient_ids, split.subtypes, "test")
    t = float(np.median(probs[split.labels == 1]))
    study = F.study_failures(model, meta, split, preds, t, n_near=2, progress=False)
    out = F.compare_outside_lung(study)
    rest = study.read_of(study.tp["id"])
    assert np.array_equal(out.groups["FN"], study.read_of(study.fn["id"]), equal_nan=True)
    assert out.cutoff == pytest.approx(np.nanquantile(rest, 0.9))  # "distracted": beyond 9 in 10 detections
    assert out.above == (int((study.read_of(study.fn["id"]) > out.cutoff).sum()), int((rest > out.cutoff).sum()))
    assert out.stats == F.compare_groups(study.read_of(study.fn["id"]), rest, ("FN", "TP"))
    assert study.border is not None and out.lines[0] == study.border.sentence()
    whole = study.outside_of(study.tp["id"])  # the border check decides which share is read
    assert np.array_equal(rest, study.inner[study._pos(study.tp["id"])] if study.border.matters else whole,
                          equal_nan=True)
    assert f"{out.above[0]} of {len(study.fn)} FN" in out.lines[-1]
    lower = float(study.fn["prob"].min())
    cost = F.threshold_cost(preds, t, lower)
    lines = F.threshold_tradeoff(study, preds)
    assert f"{cost['fn']} missed, {cost['fp']} false alarms" in lines[0] and f"{cost['fn_new']} missed" in lines[1]
    assert cost["fn_new"] == 0  # the lowest-scoring miss is caught at its own probability
    none_missed = F.study_failures(model, meta, split, preds, float(probs.min()), n_near=2, progress=False)
    assert not none_missed.has_fn and F.threshold_tradeoff(none_missed, preds)[0].startswith("no miss at")


# ------------------------------------------------------------------------------------ the image border
def _border_case():
    lung = np.zeros((16, 16), bool)
    lung[4:12, 3:13] = True
    frame = np.zeros((16, 16), np.float32)
    frame[:2] = 1.0  # heat on the top edge only: outside the lungs, inside a 2-px band
    spread = np.zeros((16, 16), np.float32)
    spread[2:14, 2:14] = 1.0  # outside the lungs but off the band
    return lung, frame, spread


def test_border_shares_against_a_uniform_map():
    lung, frame, spread = _border_case()
    inside = lung.astype(np.float32)
    maps = np.stack([frame, spread, inside, np.zeros_like(frame), np.ones_like(frame)])
    share, uniform = F.border_shares(maps, np.stack([lung] * 5), 2)
    band_outside = loc.border_band(16, 16, 2) & ~lung
    assert share[0] == 1.0 and share[1] == 0.0
    assert np.isnan(share[2]) and np.isnan(share[3])  # nothing outside the lungs; an empty map
    assert np.isnan(share[4])  # a constant map is "no map" too
    np.testing.assert_allclose(uniform, band_outside.sum() / (~lung).sum())
    with pytest.raises(ValueError):
        F.border_shares(maps[0], lung, 2)


def test_border_check_leaves_the_band_out_only_when_it_is_hotter_than_a_uniform_map():
    lung, frame, spread = _border_case()
    lungs = np.stack([lung] * 6)
    hot = F.border_check(np.stack([frame + 0.1 * spread] * 6), lungs, 2, n_boot=200)
    assert hot.verdict == "above" and hot.matters
    assert "left out from here on" in hot.sentence() and f"within {hot.width_px} px" in hot.sentence()
    flat = np.ones((16, 16), np.float32)
    flat[lung] = 2.0  # outside the lungs it is uniform: the band gets exactly its area's share
    calm = F.border_check(np.stack([flat] * 6), lungs, 2, n_boot=200)
    assert calm.verdict == "inconclusive" and not calm.matters and "does not drive" in calm.sentence()
    none = F.border_check(np.stack([lung.astype(np.float32)] * 2), lungs[:2], 2, n_boot=50)
    assert none.verdict == "not measured" and none.sentence().startswith("Border: not measured")
    assert F.border_width(128) == 8 and F.border_width(224) == 14 and F.border_width(8) == 1


def test_the_study_reads_the_share_without_the_band_when_the_border_matters():
    lung, frame, spread = _border_case()
    n = 4
    maps = np.stack([frame + 0.1 * spread] * 2 + [frame + 0.2 * spread] * 2).astype(np.float32)
    lungs = np.stack([lung] * n)
    pos = pd.DataFrame({"id": [f"p{i}" for i in range(n)], "row": range(n), "prob": [0.1, 0.2, 0.8, 0.9]})
    inner, _, _ = loc.outside_lung_fractions(maps, lungs, ignore_border_px=2)
    whole, _, _ = loc.outside_lung_fractions(maps, lungs)
    kw = dict(threshold=0.5, fn=pos.iloc[:2], tp=pos.iloc[2:], near=pos.iloc[2:3], positives=pos, maps=maps,
              probs=pos["prob"].to_numpy(), outside=whole, lung_masks=lungs, lung_source="ground truth",
              images_all=np.zeros((n, 16, 16), np.uint8), lesion_masks_all=None, info_all=None,
              no_map=np.zeros(n, bool), inner=inner)
    hot = F.FailureStudy(**kw, border=F.border_check(maps, lungs, 2, n_boot=100))
    assert hot.border is not None and hot.border.matters and "band left out" in hot.reading
    np.testing.assert_allclose(hot.read_of(["p0", "p3"]), inner[[0, 3]])
    np.testing.assert_allclose(hot.outside_of(["p0"]), whole[[0]])  # notebook 05's number stays available
    lines = F.compare_outside_lung(hot).lines
    assert any("notebook 05's number" in line for line in lines)
    assert lines[1].startswith(f"FN (2 map(s), medians): {np.median(whole[:2]):.3f} outside the lungs over the whole "
                               f"image, {np.median(inner[:2]):.3f} with the 2-px border band left out")
    calm = F.FailureStudy(**kw, border=None)
    np.testing.assert_allclose(calm.read_of(["p0", "p3"]), whole[[0, 3]])
    assert calm.reading == "outside the lungs"
