"""One source for the map: notebook 05's path, run on a tiny phantom bundle, shows the explanation it recorded.

Notebook 05 loads the model (and its metadata) *before* :func:`utils.explain.choice.choose_and_record` writes the
chosen spec into the checkpoint. Its gallery, method table and outside-lung table must still use that spec — so they
read the checkpoint's record now, through :func:`utils.explain.maps.main_maps` — and its outside-lung numbers must
be notebook 06's for the same model and images.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import demo_project

from utils.artifacts import predictions_frame, record_operating_point
from utils.checkpoint import make_meta, save_checkpoint, update_meta
from utils.config import IMAGENET_MEAN, IMAGENET_STD
from utils.errors import UserError
from utils.explain import localisation, review
from utils.explain.choice import choose_and_record
from utils.explain.maps import explain, main_explanation, main_maps
from utils.explain.spec import UNMEASURED_EXPLANATION, make_spec
from utils.studies import failures
from utils.train.model import build_model, load_model, predict_proba, preprocess

SIZE = 64
CHOSEN = make_spec("gradcam", "layer3", (0, 8))  # not the unmeasured default (plain Grad-CAM on layer4)



@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """A shipped model with a recorded threshold in a fresh project root, its phantom bundle, and the metadata
    loaded *before* notebook 05's choice was recorded (what the notebook holds in ``meta``)."""
    with demo_project(tmp_path_factory, SIZE, (14, 10, 12)) as (cfg, bundle):
        model, _ = build_model("phantom", seed=0)  # labels-only backbone, fresh head: it sees the lesions a little
        path = cfg.path("model")
        save_checkpoint(path, {"model": model.state_dict(),
                               "meta": make_meta(image_size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD)})
        model, meta = load_model(path)
        val, test = bundle["val"], bundle["test"]
        probs = predict_proba(model, test.images, meta)
        # some pneumonias detected on validation (to choose on) and on test, some missed on test (06's false negatives)
        threshold = float(min(predict_proba(model, val.images, meta)[val.labels == 1].max(),
                              np.median(probs[test.labels == 1])))
        record_operating_point(path, threshold, 0.5)
        model, stale = load_model(path)  # what the notebook holds from here on
        choice = choose_and_record(cfg, bundle, candidates=[CHOSEN], progress=False)
        yield {"cfg": cfg, "bundle": bundle, "path": path, "model": model, "stale": stale, "probs": probs,
               "threshold": threshold, "choice": choice}


def _maps_of(model, spec, images, targets=1) -> np.ndarray:
    x = preprocess(torch.from_numpy(images), list(IMAGENET_MEAN), list(IMAGENET_STD))
    return explain(model, x, spec, targets)[0]


def test_the_notebook_holds_metadata_from_before_the_choice(stage):
    """The trap the series fell into: the metadata loaded before choose_and_record names no explanation."""
    assert "explanation" not in stage["stale"] and stage["choice"].spec == CHOSEN
    assert main_explanation(stage["stale"]) == UNMEASURED_EXPLANATION  # a copy says: plain Grad-CAM @ layer4
    assert main_explanation(stage["path"], stage["model"]) == CHOSEN  # the file, read now, says what was chosen


def test_gallery_methods_and_outside_lung_use_the_recorded_spec(stage):
    model, path, test = stage["model"], stage["path"], stage["bundle"]["test"]
    probs, t = stage["probs"], stage["threshold"]

    shown = review.gallery(model, path, test, probs, t, 2, 0, ("NORMAL", "PNEUMONIA"))
    assert len(shown.picks) and set(test.labels[shown.picks]) == {0, 1}
    chosen = _maps_of(model, CHOSEN, test.images[shown.picks], test.labels[shown.picks])
    plain = _maps_of(model, UNMEASURED_EXPLANATION, test.images[shown.picks], test.labels[shown.picks])
    np.testing.assert_allclose(shown.maps, chosen, atol=1e-6)
    assert np.abs(shown.maps - plain).max() > 0.1  # and visibly not the layer4 default

    tp = np.flatnonzero((test.labels == 1) & (probs >= t))
    methods = review.method_maps(model, path, test, tp[:3], n_scorecam=1, priors=stage["choice"].priors)
    assert list(methods.maps)[0] == CHOSEN["name"] and methods.layer == CHOSEN["layer"]
    np.testing.assert_allclose(methods.maps[CHOSEN["name"]], _maps_of(model, CHOSEN, test.images[tp[:3]]), atol=1e-6)
    assert methods.table is not None and methods.table["method"].iloc[0] == CHOSEN["name"]

    summary, per_image = review.outside_lung(model, path, test, probs, t, progress=False)
    rows = np.array([list(test.ids).index(i) for i in per_image["id"]])
    expected, _, _ = localisation.outside_lung_fractions(_maps_of(model, CHOSEN, test.images[rows]),
                                                         lung_masks=test.lung_masks[rows], skip_empty=True)
    np.testing.assert_allclose(per_image["true"], expected, atol=1e-6)
    assert set(per_image["group"]) == {"TP", "FN"} and set(summary.index) == {"estimated lung field",
                                                                              "true lung masks"}


def test_notebook_05_and_06_agree_on_outside_lung(stage):
    """The same model and images give the same outside-lung numbers in 05 (review.outside_lung) and 06
    (failures.study_failures), whatever order and batches each computes its maps in."""
    model, path, test = stage["model"], stage["path"], stage["bundle"]["test"]
    probs, t = stage["probs"], stage["threshold"]
    _, per_image = review.outside_lung(model, path, test, probs, t, progress=False)
    frame = predictions_frame(test.ids, test.labels, probs, test.patient_ids, test.subtypes, "test")
    study = failures.study_failures(model, path, test, frame, t, n_near=2, progress=False)
    assert study.lung_source == "ground truth" and study.has_fn
    np.testing.assert_allclose(study.outside_of(per_image["id"]), per_image["true"], atol=1e-5)
    for group, ids in (("TP", study.tp["id"]), ("FN", study.fn["id"])):
        assert set(per_image.loc[per_image["group"] == group, "id"]) == set(ids)


def test_sanity_and_road_explain_the_recorded_spec(stage):
    model, path, test = stage["model"], stage["path"], stage["bundle"]["test"]
    tp = np.flatnonzero((test.labels == 1) & (stage["probs"] >= stage["threshold"]))[:3]
    check = review.sanity_check(model, path, test.images[tp], test.patient_ids[tp], seed=0, n_boot=50)
    np.testing.assert_allclose(check["table"]["maps"].iloc[0], _maps_of(model, CHOSEN, test.images[tp]), atol=1e-6)
    assert check["n"] + check["n_no_map"] == len(tp) and check["verdict"] in (
        "at the reference level", "above the reference level", "no map")
    assert check["passes"] == (check["verdict"] == "at the reference level")
    normals = np.flatnonzero(test.labels == 0)[:2]
    road = review.road_check(model, path, test, tp, normals, seed=0, n_boot=50, progress=False)
    np.testing.assert_allclose(road["map"]["morf"].shape, (len(tp), len(review.ROAD_FRACTIONS)))
    assert road["n"] + road["n_no_map"] == len(tp) and road["n_controls"] == len(normals)
    # the maps ROAD removed are the recorded spec's: handing them in as a cache changes nothing, a stale one does
    cached = review.road_check(model, path, test, tp, normals, seed=0, n_boot=50, progress=False,
                               cached=(tp, _maps_of(model, CHOSEN, test.images[tp])))
    np.testing.assert_allclose(cached["map"]["morf"], road["map"]["morf"], atol=1e-4)
    plain = review.road_check(model, path, test, tp, normals, seed=0, n_boot=50, progress=False,
                              cached=(tp, _maps_of(model, UNMEASURED_EXPLANATION, test.images[tp])))
    assert not np.allclose(plain["map"]["morf"], road["map"]["morf"], atol=1e-4)
    assert road["sentence"] and road["scale_sentence"].startswith("Scale: the logit margin")


def test_bad_inputs_to_the_review_are_one_line(stage, tmp_path):
    """An empty image set for ROAD and a spec naming a layer the model lacks: one line each, naming the fix."""
    import shutil

    model, path, test = stage["model"], stage["path"], stage["bundle"]["test"]
    with pytest.raises(UserError, match="empty image set") as err:
        review.road_check(model, path, test, np.array([], int), np.flatnonzero(test.labels == 0), 0, 20)
    assert "\n" not in str(err.value)
    other = shutil.copy(path, tmp_path / "broken.pt")
    update_meta(other, explanation=make_spec("gradcam", "layer9"))
    tp = np.flatnonzero(test.labels == 1)[:2]
    for call in (lambda: review.sanity_check(model, other, test.images[tp], test.patient_ids[tp], 0, 20),
                 lambda: review.road_check(model, other, test, tp, tp[:1], 0, 20)):
        with pytest.raises(UserError, match=r"'layer9'") as err:
            call()
        assert "\n" not in str(err.value)
    from utils.explain.road import road_test
    with pytest.raises(UserError, match="one map per image"):  # a map of the wrong shape
        road_test(model, review._x(path, test.images[tp]), np.zeros((2, 8, 8)), fractions=(0.01,))


def test_a_recorded_spec_the_model_lacks_is_one_line_naming_the_file(stage, tmp_path):
    import shutil

    other = shutil.copy(stage["path"], tmp_path / "other.pt")
    update_meta(other, explanation=make_spec("gradcam", "blocks.11.norm1"))
    images = stage["bundle"]["test"].images[:2]
    with pytest.raises(UserError, match=r"^other\.pt: .*'blocks\.11\.norm1'.*05_gradcam") as err:
        main_maps(stage["model"], other, images)
    assert "\n" not in str(err.value)


def test_the_review_verdicts_and_record_say_what_the_numbers_say(stage):
    model, path, test, choice = stage["model"], stage["path"], stage["bundle"]["test"], stage["choice"]
    oracle = review.oracle_table(model, path, test.images[:2])
    assert len(oracle) == 6 and (oracle["max |ours - library|"] < 1e-4).all()  # 3 weightings x 2 layers
    sentences = review.verdict_sentences(choice)
    assert len(sentences) == len(choice.verdict) == 2
    for sentence, v in zip(sentences, choice.verdict.values()):  # the one rule: beats only with the interval above 0
        assert v["verdict"] in ("beats", "ties", "worse", "no map") and v["beats_best_baseline"] == (v["verdict"] == "beats")
        assert ("the map beats every image-blind baseline" in sentence) == (v["verdict"] == "beats")
    tp = np.flatnonzero((test.labels == 1) & (stage["probs"] >= stage["threshold"]))[:3]
    check = review.sanity_check(model, path, test.images[tp], test.patient_ids[tp], seed=0, n_boot=20)
    road = review.road_check(model, path, test, tp, np.flatnonzero(test.labels == 0)[:2], 0, 20, progress=False)
    outside, _ = review.outside_lung(model, path, test, stage["probs"], stage["threshold"], progress=False)
    doc = review.record(stage["cfg"].path("metrics"), choice, check, road, outside)
    section = doc["localisation"]
    assert section["explanation"] == CHOSEN and len(section["outside_lung"]) == len(outside)
    assert section["sanity"]["verdict"] == check["verdict"] and section["sanity"]["sentence"] == check["sentence"]
    assert section["road"]["verdict"] == road["verdict"] and section["road"]["sentences"][0] == road["sentence"]
    assert {m: v["sentence"] for m, v in section["verdict"].items()} == {m: v["sentence"] for m, v in choice.verdict.items()}
    line = review.record_line(section)
    assert f"ROAD: {road['verdict']}" in line and f"randomisation: {check['verdict']}" in line
