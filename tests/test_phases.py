"""utils.studies.phases: phase 1 vs phase 2 on the same validation images, paired by patient, and the sentence
that says by how much it changed (or did not)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from utils.checkpoint import load_checkpoint
from utils.config import IMAGENET_MEAN, IMAGENET_STD, get_config
from utils.data import load_data
from utils.evaluate.verdicts import difference_verdict
from utils.studies.phases import (
    ALL_AT_ONCE,
    MEASURES,
    PHASES,
    TWO_PHASES,
    WARM_UP,
    compare_phases,
    comparison_sentence,
    linear_cka,
    phase_measures,
    pooled_features,
    study_all_at_once,
    weight_change,
)
from utils.train import pipeline
from utils.train.model import build_model, predict_logits


def world(n_pat: int = 60, seed: int = 0):
    """Validation images of ``n_pat`` patients (1–2 images each, both classes) and a phase-1 model that ranks
    them imperfectly (AUC well below 1)."""
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 3, n_pat)
    groups = np.repeat(np.arange(n_pat), per)
    y = np.repeat(rng.integers(0, 2, n_pat), per)
    y[:2] = [0, 1]
    p1 = 1 / (1 + np.exp(-(1.2 * (2 * y - 1) + rng.normal(0, 1.2, y.size))))
    return y, p1, groups


def test_identical_phases_differ_by_exactly_zero_and_the_sentence_says_no_change():
    y, p1, groups = world()
    cmp = compare_phases(y, {"phase 1": p1, "phase 2": p1.copy()}, groups, n_boot=200)
    for m in MEASURES:
        d = cmp.differences[m]
        assert d["value"] == 0 and d["ci_low"] == 0 and d["ci_high"] == 0 and d["p_le_0"] == 1.0
        assert difference_verdict(d) == "inconclusive"
    assert "No measurable change in ROC AUC" in cmp.sentence and "measurably better" not in cmp.sentence
    assert "did not change what the warm-up had learned" in cmp.sentence
    assert f"{len(y)} validation images ({len(np.unique(groups))} patients" in cmp.sentence


def test_a_perfect_second_phase_is_measurably_better_in_every_measure():
    y, p1, groups = world()
    p2 = np.where(y == 1, 0.97, 0.03)  # ranks every image right, confidently
    cmp = compare_phases(y, {"phase 1": p1, "phase 2": p2}, groups, target_recall=0.98, n_boot=300)
    assert cmp.values["phase 2"]["ROC AUC"] == 1.0 and cmp.values["phase 2"]["specificity at recall-first threshold"] == 1
    assert difference_verdict(cmp.differences["ROC AUC"]) == "above"
    assert difference_verdict(cmp.differences["log loss"]) == "below"  # lower loss: better
    assert "Phase 2 is measurably better in ROC AUC" in cmp.sentence and "log loss" in cmp.sentence.split("worse")[0]
    assert "measurably worse" not in cmp.sentence and "No measurable change" not in cmp.sentence
    table = cmp.table()
    assert list(table["measure"]) == list(MEASURES) and set(table["phase 2 is"]) == {"better"}  # lower loss included
    same = compare_phases(y, {"phase 1": p1, "phase 2": p1}, groups, n_boot=50).table()
    assert set(same["phase 2 is"]) == {"no measurable change"}


def test_swapping_the_phases_mirrors_the_difference():
    y, p1, groups = world(seed=3)
    p2 = np.clip(p1 + 0.1 * (2 * y - 1), 0.001, 0.999)
    ab = compare_phases(y, {"phase 1": p1, "phase 2": p2}, groups, n_boot=100, seed=5)
    ba = compare_phases(y, {"phase 1": p2, "phase 2": p1}, groups, n_boot=100, seed=5)
    for m in MEASURES:
        assert ab.differences[m]["value"] == pytest.approx(-ba.differences[m]["value"])
        assert ab.differences[m]["ci_low"] == pytest.approx(-ba.differences[m]["ci_high"])


def test_measures_match_their_definitions():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    auc, loss, spec = phase_measures(y, p, target_recall=1.0)
    assert auc == pytest.approx(5 / 6)  # 5 of 6 (positive, negative) pairs ranked right
    assert loss == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.4, 0.8, 0.9])))
    assert spec == 0.5  # recall 1 needs threshold 0.4: the 0.6 normal is a false alarm, the 0.1 one is not


def test_worse_and_unchanged_measures_are_named_as_such():
    diffs = {"ROC AUC": {"value": -0.05, "ci_low": -0.08, "ci_high": -0.02},
             "log loss": {"value": 0.01, "ci_low": -0.02, "ci_high": 0.04},
             "specificity at recall-first threshold": {"value": 0.2, "ci_low": 0.1, "ci_high": 0.3}}
    s = comparison_sentence(diffs, 100, 80, {"n_boot": 500})
    assert "measurably worse in ROC AUC -0.050" in s and "measurably better in specificity" in s
    assert "No measurable change in log loss" in s and "500 resamples" in s
    assert "did not change what the warm-up had learned" not in s


@pytest.mark.parametrize("bad, message", [
    ({"phase 1": [0.5, 0.5]}, "lacks"),
    ({"phase 1": [0.5, 0.5], "phase 2": [0.5]}, "one probability per label"),
])
def test_bad_input_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        compare_phases([0, 1], bad)
    with pytest.raises(ValueError, match="both classes"):
        compare_phases([1, 1], {name: [0.5, 0.6] for name in PHASES})


# ------------------------------------------------------------------------------------ why two phases
def test_linear_cka_is_one_for_a_rotated_and_scaled_copy_and_low_for_unrelated_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(x, 3.0 * x @ rotation + 5.0) == pytest.approx(1.0)  # rotation, scale and shift: same representation
    assert linear_cka(x, x[:, :4]) < 1.0  # half the features dropped
    assert linear_cka(x, rng.normal(size=(200, 8))) < 0.2  # unrelated (expected ≈ 8/200 + noise)
    with pytest.raises(ValueError, match="same images"):
        linear_cka(x, x[:10])


def test_weight_change_is_zero_for_the_reference_and_relative_per_group():
    ref, _ = build_model("none", seed=0)
    same, _ = build_model("none", seed=0)
    assert set(weight_change(same, ref)) == {"stem", "layer1", "layer2", "layer3", "layer4"}  # the head is left out
    assert all(v == 0 for v in weight_change(same, ref).values())
    with torch.no_grad():
        for p in same.layer1.parameters():
            p.mul_(1.1)  # every weight of layer1 10 % larger: ‖Δw‖ / ‖w‖ = 0.1 exactly
    moved = weight_change(same, ref)
    assert moved["layer1"] == pytest.approx(0.1) and moved["stem"] == 0 and moved["layer4"] == 0


def test_pooled_features_are_what_the_head_sees():
    model, _ = build_model("none", seed=0, image_size=32)
    model.eval()
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    meta = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    feats = pooled_features(model, images, meta)
    assert feats.shape == (3, 512)
    logits = predict_logits(model, images, meta)
    head = model.fc
    expected = feats @ head.weight.detach().numpy().T + head.bias.detach().numpy()
    np.testing.assert_allclose(expected, logits, rtol=1e-4, atol=1e-4)


def test_the_all_at_once_study_trains_under_its_own_tag_and_compares_on_validation(tmp_path, monkeypatch):
    for var in ("CXR_PROFILE", "CXR_DATA_DIR", "CXR_SOURCE", "CXR_IMAGE_SIZE", "CXR_EPOCHS_PHASE1", "CXR_EPOCHS_PHASE2"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path / "project"))
    cfg = get_config("demo", image_size=48, batch_size=16, n_bootstrap=50,
                     phantom={"n_patients_train": 20, "n_patients_test": 6, "seed": 7},
                     phase1={"epochs": 1}, phase2={"epochs": 1})
    bundle = load_data(cfg, progress=False)
    pipeline.run_phase1(cfg, bundle, device="cpu", progress=False)
    pipeline.run_phase2(cfg, bundle, device="cpu", progress=False)
    shipped = {name: cfg.path(name).read_bytes() for name in ("phase1_best", "final_best", "history_phase2")}

    study = study_all_at_once(cfg, bundle, device="cpu", progress=False)
    assert {name: cfg.path(name).read_bytes() for name in shipped} == shipped  # the series' files untouched
    meta = load_checkpoint(cfg.path("final_best", pipeline.ALL_AT_ONCE_TAG))["meta"]
    assert meta["phase"] == "all at once" and "no warm-up" in meta["recipe"] and meta["init"] == meta["weights"]
    assert meta["recipe"] == pipeline.all_at_once_settings(cfg)["recipe"] and "lr 0.001" in meta["recipe"]
    table = study.table.set_index("model")
    assert list(table.index) == [WARM_UP, TWO_PHASES, ALL_AT_ONCE]
    assert table.loc[WARM_UP, "feature similarity (CKA)"] == pytest.approx(1.0)  # phase 1 never moves the backbone
    assert (table["feature similarity (CKA)"] <= 1 + 1e-9).all() and table["val ROC AUC"].between(0, 1).all()
    assert list(study.weight_change.columns) == [TWO_PHASES, ALL_AT_ONCE]
    assert (study.weight_change[ALL_AT_ONCE] > 0).all()
    # one rate for every layer vs layer-wise decay from a 10x smaller rate: the stem moves far more all at once
    assert study.weight_change.loc["stem", ALL_AT_ONCE] > 5 * study.weight_change.loc["stem", TWO_PHASES]
    assert study.comparison.names == (TWO_PHASES, ALL_AT_ONCE)
    assert "All at once − warm-up, then fine-tuning (phase 2) on the same" in study.sentence
    assert f"kept a linear CKA of {table.loc[ALL_AT_ONCE, 'feature similarity (CKA)']:.3f}" in study.sentence
    again = study_all_at_once(cfg, bundle, device="cpu", progress=False)  # resumes: nothing trained again
    pd.testing.assert_frame_equal(again.table, study.table)


def test_the_all_at_once_study_is_skipped_when_there_is_nothing_pretrained_to_protect(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path / "project"))
    cfg = get_config("demo", image_size=32, batch_size=16, weights="none",
                     phantom={"n_patients_train": 12, "n_patients_test": 4, "seed": 7}, phase1={"epochs": 1})
    bundle = load_data(cfg, progress=False)
    pipeline.run_phase1(cfg, bundle, device="cpu", progress=False)
    study = study_all_at_once(cfg, bundle, device="cpu", progress=False)
    assert not study.ran and "no pretrained features to protect" in study.sentence and "random" in study.sentence
    assert not cfg.path("final_best", pipeline.ALL_AT_ONCE_TAG).exists()  # nothing trained
    assert "ALL_AT_ONCE_EPOCHS is 0" in study_all_at_once(cfg, bundle, epochs=0, progress=False).sentence
