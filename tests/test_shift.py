"""Dataset shift (utils.evaluate.shift): validation against a new population, local recalibration, the built-in
shifted phantoms and their figures. Every random draw is seeded: each assertion holds or fails deterministically."""
from __future__ import annotations

from dataclasses import asdict

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, recall_score, roc_auc_score

from utils.artifacts import threshold_for_recall
from utils.data import phantom
from utils.data.bundle import DataBundle
from utils.errors import UserError
from utils.evaluate import metrics as M
from utils.evaluate import shift as S


def population(n_patients: int, seed: int, normal_shift: float = 0.0, pneumonia_share: float = 0.6):
    """Labels, P(PNEUMONIA) and patient ids: 1–3 images per patient, one label per patient; normals' logits are
    moved by ``normal_shift``."""
    rng = np.random.default_rng(seed)
    sick = rng.random(n_patients) < pneumonia_share
    per = rng.integers(1, 4, n_patients)
    y = np.repeat(sick.astype(int), per)
    g = np.repeat([f"p{seed}_{i}" for i in range(n_patients)], per)
    logit = np.where(y == 1, rng.normal(2.0, 1.2, y.size), rng.normal(-2.0 + normal_shift, 1.2, y.size))
    return y, 1 / (1 + np.exp(-logit)), g


def sigmoid_shift(p: np.ndarray, d: float) -> np.ndarray:
    """A monotone change of every score (the ranking, hence the AUC, is untouched)."""
    return 1 / (1 + np.exp(-(np.log(p) - np.log1p(-p) + d)))


# ------------------------------------------------------------------------------------ side by side
def test_compare_populations_numbers_match_sklearn():
    y_r, p_r, g_r = population(40, 1)
    y_n, p_n, g_n = population(50, 2, normal_shift=1.0)
    t = 0.3
    c = S.compare_populations(y_r, p_r, y_n, p_n, t, g_r, g_n, names=("validation", "test"), n_boot=50, seed=0)
    for name, (y, p) in {"validation": (y_r, p_r), "test": (y_n, p_n)}.items():
        m = c.metrics[name]
        assert m["sensitivity"]["value"] == pytest.approx(recall_score(y, p >= t))
        assert m["specificity"]["value"] == pytest.approx(recall_score(1 - y, p < t))
        assert m["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, p))
        assert m["median_normal"]["value"] == pytest.approx(np.median(p[y == 0]))
        assert m["median_pneumonia"]["value"] == pytest.approx(np.median(p[y == 1]))
        tn, fp, fn, tp = confusion_matrix(y, p >= t).ravel()
        assert (c.counts[name]["tn"], c.counts[name]["fp"], c.counts[name]["fn"], c.counts[name]["tp"]) == (tn, fp, fn, tp)
        rows = c.scores[c.scores["population"] == name].set_index("class")
        assert rows.loc["NORMAL", "q50"] == pytest.approx(np.median(p[y == 0]))
        assert rows.loc["PNEUMONIA", "q10"] == pytest.approx(np.quantile(p[y == 1], 0.1))
        for v in m.values():
            assert v["ci_low"] <= v["ci_high"]
    for k in S.COMPARED:
        want = c.metrics["test"][k]["value"] - c.metrics["validation"][k]["value"]
        assert c.differences[k]["value"] == pytest.approx(want)
    assert c.counts["test"]["patients"] == 50 and list(c.table().columns)[:2] == ["validation", "test"]


def test_a_monotone_shift_moves_the_normals_but_not_the_auc():
    """The new population is the reference with every score pushed up (same images, same ranking): the normals'
    median and the specificity move clearly, the AUC does not move at all, and the sentence says so."""
    y, p, g = population(120, 3)
    t = threshold_for_recall(y, p, 0.95)
    c = S.compare_populations(y, p, y, sigmoid_shift(p, 3.0), t, g, g, n_boot=200, seed=0)
    assert c.differences["roc_auc"]["value"] == 0.0
    assert c.differences["median_normal"]["ci_low"] > 0 and c.differences["specificity"]["ci_high"] < 0
    assert c.differences["roc_auc"]["ci_low"] <= 0 <= c.differences["roc_auc"]["ci_high"]
    assert "specificity fell" in c.sentence and "AUC held" in c.sentence and "can fix that" in c.sentence


# ------------------------------------------------------------------------------------- the sentence
def numbers(ref: dict, new: dict, moved: dict) -> tuple[dict, dict]:
    """Metrics and differences for :func:`S.shift_sentence`; ``moved[name]`` = -1 / 0 / +1 sets where the
    difference's interval lies."""
    metrics = {"validation": {k: {"value": v} for k, v in ref.items()}, "test": {k: {"value": v} for k, v in new.items()}}
    spans = {-1: (-0.2, -0.01), 0: (-0.05, 0.05), 1: (0.01, 0.2)}
    diffs = {k: {"value": new[k] - ref[k], "ci_low": spans[moved.get(k, 0)][0], "ci_high": spans[moved.get(k, 0)][1]}
             for k in ref}
    return metrics, diffs


REF = {"median_normal": 0.015, "median_pneumonia": 0.99, "specificity": 0.906, "sensitivity": 0.985, "roc_auc": 0.99}


def test_sentence_when_nothing_changed():
    m, d = numbers(REF, {**REF, "specificity": 0.9}, {})
    text = S.shift_sentence(m, d, threshold=0.2)
    assert text.startswith("Test and validation agree within the patient-bootstrap intervals")
    assert "specificity held (0.900 against 0.906) and sensitivity held" in text and "AUC held" in text
    assert "fell" not in text and "rose" not in text and "can fix" not in text


def test_sentence_when_only_sensitivity_moved():
    new = {**REF, "median_pneumonia": 0.6, "sensitivity": 0.85}
    m, d = numbers(REF, new, {"median_pneumonia": -1, "sensitivity": -1})
    text = S.shift_sentence(m, d, threshold=0.2)
    assert text.startswith("Pneumonias score a median P(pneumonia) of 0.600 on test against 0.990 on validation")
    assert "sensitivity fell from 0.985 to 0.850" in text and "specificity held (0.906 against 0.906)" in text
    assert "normals score" not in text and "AUC held" in text and "can fix that" in text


def test_sentence_with_the_official_numbers_and_a_falling_auc():
    new = {"median_normal": 0.70, "median_pneumonia": 0.999, "specificity": 0.427, "sensitivity": 0.990,
           "roc_auc": 0.945}
    m, d = numbers(REF, new, {"median_normal": 1, "specificity": -1, "roc_auc": -1})
    text = S.shift_sentence(m, d, threshold=0.435, counts_new={"fp": 134, "normal": 234})
    assert text.startswith("Normals score a median P(pneumonia) of 0.700 on test against 0.015 on validation, and "
                           "at the same threshold (0.435) specificity fell from 0.906 to 0.427 (134 false alarms "
                           "among 234 normals)")
    assert "sensitivity held (0.990 against 0.985)" in text
    assert "AUC also fell (0.990 → 0.945" in text and "no threshold can repair" in text and "can fix" not in text


# ------------------------------------------------------------------------------- local recalibration
def test_recalibration_split_is_by_patient_disjoint_and_seeded():
    y, _, g = population(50, 4)
    recal, scored = S.recalibration_split(g, 0.2, seed=3)
    assert np.array_equal(np.sort(np.r_[recal, scored]), np.arange(g.size))
    assert not set(g[recal]) & set(g[scored])
    assert len(set(g[recal])) == 10 and len(set(g[scored])) == 40
    for pid in set(g):  # every image of a patient on one side
        assert np.isin(np.flatnonzero(g == pid), recal).all() or np.isin(np.flatnonzero(g == pid), scored).all()
    again, _ = S.recalibration_split(g, 0.2, seed=3)
    other, _ = S.recalibration_split(g, 0.2, seed=4)
    assert np.array_equal(recal, again) and not np.array_equal(recal, other)


def test_recalibrated_threshold_is_the_series_rule_on_the_recalibration_sample():
    y, p, g = population(80, 5, normal_shift=1.5)
    r = S.recalibrate(y, p, g, threshold=0.1, target_recall=0.9, fraction=0.3, seed=1, n_boot=100)
    recal, scored = S.recalibration_split(g, 0.3, seed=1)
    assert np.array_equal(r.recal_index, recal) and np.array_equal(r.scored_index, scored)
    assert r.thresholds == {"original": 0.1, "recalibrated": threshold_for_recall(y[recal], p[recal], 0.9)}
    assert r.labelled == {"images": recal.size, "patients": len(set(g[recal])), "normal": int((y[recal] == 0).sum()),
                          "pneumonia": int((y[recal] == 1).sum())}
    # chosen without looking at the scored images: scrambling their scores changes nothing that was chosen
    p2 = p.copy()
    p2[scored] = np.random.default_rng(0).random(scored.size)
    r2 = S.recalibrate(y, p2, g, threshold=0.1, target_recall=0.9, fraction=0.3, seed=1, n_boot=20)
    assert r2.thresholds == r.thresholds and np.array_equal(r2.recal_index, recal)


def test_recalibration_reports_both_thresholds_on_the_scored_part_paired():
    y, p, g = population(80, 6, normal_shift=1.5)
    r = S.recalibrate(y, p, g, threshold=0.1, target_recall=0.9, fraction=0.25, seed=2, n_boot=200)
    s = r.scored_index
    models, diff = r.bootstrap["models"], r.bootstrap["differences"]["recalibrated - original"]
    for key, t in r.thresholds.items():
        want = M.threshold_metrics(y[s], p[s], t)
        assert models[key]["sensitivity"]["value"] == pytest.approx(want["sensitivity"])
        assert models[key]["specificity"]["value"] == pytest.approx(want["specificity"])
        assert r.counts[key] == {k: want[k] for k in ("tp", "fp", "tn", "fn")}
    # the shipped threshold stays frozen in every resample; the re-chosen one moves with the recalibration patients
    assert models["original"]["threshold"]["ci_low"] == models["original"]["threshold"]["ci_high"] == 0.1
    assert models["recalibrated"]["threshold"]["ci_low"] < models["recalibrated"]["threshold"]["ci_high"]
    # a threshold cannot move the ranking: the AUC difference is 0 in every resample
    assert diff["roc_auc"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_le_0": 1.0}
    assert diff["specificity"]["ci_low"] > 0  # the normals' shift is undone on the scored part
    assert f"{r.labelled['images']} labelled images of {r.labelled['patients']} patients" in r.sentence
    assert "AUC on the scored part is" in r.sentence and "at either threshold" in r.sentence
    n_pos = r.labelled["pneumonia"]  # threshold_for_recall lets n_pos - ceil(0.9 n_pos) of them fall below
    assert f"a recall of 0.9 on {n_pos} PNEUMONIA images puts the threshold at the score that leaves " \
           f"{n_pos - int(np.ceil(0.9 * n_pos))} of them below it" in r.sentence
    assert list(r.table().index) == ["sensitivity", "specificity", "ROC AUC"]



# ------------------------------------------------------------------------------- the draw decides
def test_recalibration_draws_repeat_recalibrate_for_other_labelled_patients():
    y, p, g = population(80, 5, normal_shift=1.5)
    draws = S.recalibration_draws(y, p, g, threshold=0.1, target_recall=0.9, fraction=0.3, seeds=(1, 2, 3))
    assert list(draws.columns) == list(S.DRAW_COLUMNS) and list(draws["seed"]) == [1, 2, 3]
    for row in draws.to_dict("records"):
        recal, scored = S.recalibration_split(g, 0.3, seed=row["seed"])
        t_new = threshold_for_recall(y[recal], p[recal], 0.9)
        assert row["re-chosen threshold"] == t_new and row["lowest labelled P(PNEUMONIA)"] == p[recal][y[recal] == 1].min()
        assert (row["labelled patients"], row["labelled PNEUMONIA"]) == (len(set(g[recal])), int(y[recal].sum()))
        for when, t in (("original", 0.1), ("re-chosen", t_new)):  # scored on that draw's other patients
            assert row[f"sensitivity, {when}"] == pytest.approx(recall_score(y[scored], p[scored] >= t))
            assert row[f"specificity, {when}"] == pytest.approx(recall_score(1 - y[scored], p[scored] < t))
    one = S.recalibrate(y, p, g, threshold=0.1, target_recall=0.9, fraction=0.3, seed=1, n_boot=20)
    assert draws.loc[0, "re-chosen threshold"] == one.thresholds["recalibrated"]  # the first draw is recalibrate's


def test_draws_sentence_counts_the_draws_set_by_the_lowest_labelled_pneumonia():
    y, p, g = population(80, 6, normal_shift=1.5)
    for target in (0.98, 0.8):
        draws = S.recalibration_draws(y, p, g, 0.1, target, fraction=0.3, seeds=range(8))
        lowest = sum(threshold_for_recall(y[r], p[r], target) == p[r][y[r] == 1].min()
                     for r in (S.recalibration_split(g, 0.3, s)[0] for s in range(8)))
        text = S.draws_sentence(draws, target, 0.3)
        if lowest == 8:
            assert "no draw had that many: in every draw the threshold is the score of the single lowest-scoring" in text
        elif lowest:
            assert f"in {lowest} of 8 draws there were fewer, and the threshold is the score of the single" in text
        else:
            assert "every draw had that many: the threshold is set by one of the lowest few" in text
        below = int((draws["sensitivity, re-chosen"] < target).sum())
        assert f"below the {target:g} target in {below} of 8 draws" in text
        spec = draws["specificity, re-chosen"]
        worse, better = int((spec < spec[0]).sum()), int((spec > spec[0]).sum())
        assert f"The first draw (seed 0) reached a specificity of {spec[0]:.3f}: {worse} of the other 7 draws did " \
               f"worse, {better} better." in text
        if target == 0.98:  # fewer than 50 labelled pneumonias per draw: no miss allowed, every draw set by one child
            assert draws["labelled PNEUMONIA"].max() < 50 and lowest == 8
            assert "only once there are 50 or more of them" in text
        else:  # 1 / (1 - 0.8) = 5: every draw holds more labelled pneumonias, so the rule may skip the lowest
            assert draws["labelled PNEUMONIA"].min() >= 5 and lowest < 8
            assert "only once there are 5 or more of them" in text


def test_a_draw_without_pneumonia_keeps_its_row_and_is_said():
    g = np.array([f"p{i}" for i in range(20)])
    y = np.isin(g, ["p0", "p1", "p2"]).astype(int)
    p = np.linspace(0.05, 0.95, 20)
    labelled = [set(g[S.recalibration_split(g, 0.1, s)[0]]) for s in range(60)]
    empty = next(s for s in range(60) if not labelled[s] & {"p0", "p1", "p2"})
    full = next(s for s in range(60) if labelled[s] & {"p0", "p1", "p2"})
    draws = S.recalibration_draws(y, p, g, 0.5, 0.98, fraction=0.1, seeds=(empty, full))
    assert draws.loc[0, "labelled PNEUMONIA"] == 0 and np.isnan(draws.loc[0, "re-chosen threshold"])
    assert not np.isnan(draws.loc[0, "specificity, original"])  # the original threshold is still scored
    assert not np.isnan(draws.loc[1, "re-chosen threshold"])
    assert "over 1 draws" in S.draws_sentence(draws, 0.98, 0.1).lower()
    assert "1 more drew none and re-chose nothing" in S.draws_sentence(draws, 0.98, 0.1)
    nothing = S.recalibration_draws(y, p, g, 0.5, 0.98, fraction=0.1, seeds=(empty,))
    assert "too small for local recalibration" in S.draws_sentence(nothing, 0.98, 0.1)

# ------------------------------------------------------------------------------------------ bad input
def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_bad_inputs_are_one_line_errors_that_name_the_fix():
    y, p, g = population(30, 7)
    with pytest.raises(UserError) as e:
        S.recalibration_split(["a", "a", "b"], 0.2)
    assert "cannot split 2 patient(s)" in one_line(e) and "larger new population" in one_line(e)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(UserError) as e:
            S.recalibration_split(g, bad)
        assert "between 0 and 1" in one_line(e)
    with pytest.raises(UserError) as e:
        S.recalibrate(y, p, None, 0.5, 0.98)
    assert "patient ids" in one_line(e)
    with pytest.raises(UserError) as e:
        S.compare_populations(y, p, np.zeros(5), np.full(5, 0.1), 0.5)
    assert "0 PNEUMONIA" in one_line(e) and "both classes" in one_line(e)
    with pytest.raises(UserError) as e:
        S.compare_populations(y, p[:-1], y, p, 0.5)
    assert "one score per image" in one_line(e)
    with pytest.raises(UserError) as e:
        S.recalibrate(y, p, g[:-1], 0.5, 0.98)
    assert "patient ids" in one_line(e)


def test_a_recalibration_sample_without_pneumonia_is_refused():
    """One PNEUMONIA patient among 20: a seed whose 20 % sample misses it (found deterministically) is refused."""
    g = np.array([f"p{i}" for i in range(20)])
    y = (g == "p0").astype(int)
    p = np.linspace(0.05, 0.95, 20)
    seed = next(s for s in range(100) if "p0" not in set(g[S.recalibration_split(g, 0.2, s)[0]]))
    with pytest.raises(UserError) as e:
        S.recalibrate(y, p, g, 0.5, 0.98, fraction=0.2, seed=seed)
    assert "no PNEUMONIA image" in one_line(e) and "raise the fraction" in one_line(e)
    seed = next(s for s in range(100) if "p0" in set(g[S.recalibration_split(g, 0.2, s)[0]]))
    with pytest.raises(UserError) as e:  # now the scored part has no PNEUMONIA left
        S.recalibrate(y, p, g, 0.5, 0.98, fraction=0.2, seed=seed)
    assert "lacks a class" in one_line(e)


# ------------------------------------------------------------------------------------ shifted phantoms
def test_shifted_phantoms_are_deterministic_and_differ_from_the_default_only_in_exposure():
    spec, default = phantom.shifted_spec(32), phantom.spec_for("default", 32)
    assert {k for k, v in asdict(spec).items() if asdict(default)[k] != v} == {"exposure"}
    a, b = (phantom.stack(phantom.generate(5, 3, spec)) for _ in range(2))
    for k in ("images", "lung_masks", "lesion_masks", "labels", "ids", "patient_ids"):
        assert np.array_equal(a[k], b[k])
    d = phantom.stack(phantom.generate(5, 3, default))
    for k in ("lung_masks", "lesion_masks", "labels", "ids"):  # same patients, anatomy and lesions ...
        assert np.array_equal(a[k], d[k])
    assert all((x != z).any() for x, z in zip(a["images"], d["images"]))  # ... seen with another exposure


@pytest.fixture
def tiny_phantoms(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path))
    from utils.config import get_config
    from utils.data import load_data

    cfg = get_config("demo", image_size=24, phantom={"n_patients_train": 12, "n_patients_test": 6, "seed": 5})
    return cfg, load_data(cfg, progress=False)


def test_the_shifted_population_is_written_once_beside_the_demo_data(tiny_phantoms):
    cfg, bundle = tiny_phantoms
    demo_stamp = (cfg.path("phantom_dir") / phantom.DATASET_STAMP).stat().st_mtime_ns
    pop = S.load_new_population(cfg, bundle, progress=False)
    root = S.shifted_phantom_dir(cfg)
    assert pop.name == S.SHIFTED_NAME and pop.root == root and root.parent == cfg.path("phantom_dir").parent
    assert len(set(pop.split.patient_ids)) == 6 and "exposure 3" in pop.description
    for split in bundle.splits.values():
        assert not set(split.patient_ids) & set(pop.split.patient_ids)
    # the images on disk are the generator's, decoded unchanged
    drawn = S._shifted_draw(cfg["phantom"])
    made = phantom.stack(phantom.generate(6, drawn["seed"], phantom.shifted_spec(24), first_pid=drawn["first_pid"]))
    by_id = dict(zip(made["ids"], made["images"]))
    assert sorted(by_id) == sorted(pop.split.ids)
    assert all(np.array_equal(by_id[i], im) for i, im in zip(pop.split.ids, pop.split.images))
    assert dict(zip(made["ids"], made["labels"])) == dict(zip(pop.split.ids, pop.split.labels))
    # a second call reuses the folder; the demo data were not touched
    stamp = (root / phantom.DATASET_STAMP).stat().st_mtime_ns
    again = S.load_new_population(cfg, bundle, progress=False)
    assert (root / phantom.DATASET_STAMP).stat().st_mtime_ns == stamp
    assert np.array_equal(again.split.images, pop.split.images)
    assert (cfg.path("phantom_dir") / phantom.DATASET_STAMP).stat().st_mtime_ns == demo_stamp


def test_on_real_data_the_new_population_is_the_test_folder(tiny_phantoms):
    cfg, phantoms = tiny_phantoms
    bundle = DataBundle("folder", 24, dict(phantoms.splits), phantoms.fingerprint, root=phantoms.root)
    pop = S.load_new_population(cfg, bundle, progress=False)
    assert pop.split is bundle["test"] and pop.name == "test" and "separately collected" in pop.description
    assert not S.shifted_phantom_dir(cfg).exists()



def test_another_exposure_draws_the_same_children_in_their_own_folder(tiny_phantoms):
    cfg, bundle = tiny_phantoms
    default = phantom.PhantomSpec.exposure
    assert S.shifted_phantom_dir(cfg) == S.shifted_phantom_dir(cfg, phantom.SHIFTED_EXPOSURE) == \
        cfg.path("shifted_phantom_dir")
    assert S.shifted_phantom_dir(cfg, 2.2).name == cfg.path("shifted_phantom_dir").name + "_exposure2.2"
    shifted = S.load_new_population(cfg, bundle, progress=False)
    null = S.load_new_population(cfg, bundle, progress=False, exposure=default)
    assert null.root == S.shifted_phantom_dir(cfg, default) != shifted.root
    assert null.name == f"phantoms at exposure {default:g}" and "the null" in null.description
    assert list(null.split.ids) == list(shifted.split.ids)  # the same children ...
    assert np.array_equal(null.split.labels, shifted.split.labels)
    assert all((a != b).any() for a, b in zip(null.split.images, shifted.split.images))  # ... another exposure
    made = phantom.stack(phantom.generate(6, S._shifted_draw(cfg["phantom"])["seed"], phantom.spec_for("default", 24),
                                          first_pid=S._shifted_draw(cfg["phantom"])["first_pid"]))
    by_id = dict(zip(made["ids"], made["images"]))  # at the demo's exposure: the demo generator's own images
    assert all(np.array_equal(by_id[i], im) for i, im in zip(null.split.ids, null.split.images))
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(UserError) as e:
            S.load_new_population(cfg, bundle, progress=False, exposure=bad)
        assert "positive number" in one_line(e)
    real = DataBundle("folder", 24, dict(bundle.splits), bundle.fingerprint, root=bundle.root)
    with pytest.raises(UserError) as e:
        S.load_new_population(cfg, real, progress=False, exposure=2.0)
    assert "real data" in one_line(e) and "test folder" in one_line(e)


def _stub_evaluation(bundle: DataBundle, threshold: float = 0.3):
    """What study_shift reads of an Evaluation, with scores that separate the classes imperfectly (seeded)."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    probs = {s: np.clip(0.6 * bundle[s].labels + 0.5 * rng.random(len(bundle[s])), 0, 1) for s in ("val", "test")}
    return SimpleNamespace(shipped="phase 2", probs={"phase 2": probs}, threshold=threshold, target_recall=0.98,
                           fingerprints={"phase 2": "abc"})


def test_study_shift_on_real_data_compares_validation_with_the_test_folder_and_records_it(tiny_phantoms):
    from utils.fileio import read_json

    cfg, phantoms = tiny_phantoms
    bundle = DataBundle("folder", 24, dict(phantoms.splits), phantoms.fingerprint, root=phantoms.root)
    ev = _stub_evaluation(bundle)
    pids = np.unique(bundle["test"].patient_ids)
    y_t, g_t = bundle["test"].labels, bundle["test"].patient_ids

    def recalibrates(seed: int) -> bool:  # a PNEUMONIA among the labelled, both classes among the scored
        labelled, scored = S.recalibration_split(g_t, 0.5, seed)
        return bool((y_t[labelled] == 1).any() and (y_t[scored] == 1).any() and (y_t[scored] == 0).any())

    ok = next(s for s in range(50) if recalibrates(s))
    bad = next(s for s in range(50) if not recalibrates(s))
    study = S.study_shift(cfg.variant(seed=ok), bundle, ev, fraction=0.5, n_boot=30, progress=False, n_draws=3)
    assert study.population.name == "test" and study.population.split is bundle["test"]
    assert np.array_equal(study.prob, ev.probs["phase 2"]["test"])  # the scores evaluate_models already made
    assert study.comparison.names == ("validation", "test") and study.recalibration is not None and not study.note
    assert len(study.recalibration.recal_index) + len(study.recalibration.scored_index) == len(bundle["test"])
    assert list(study.draws["seed"]) == [ok, ok + 1, ok + 2]
    assert study.draws.loc[0, "re-chosen threshold"] == study.recalibration.thresholds["recalibrated"]
    record = read_json(cfg.path("metrics"))["dataset_shift"]
    assert record["population"] == "test" and "test folder" in record["description"]
    assert record["recalibration"]["thresholds"] == study.recalibration.thresholds
    assert record["recalibration_draws"]["sentence"] == study.draws_sentence and study.draws_sentence
    assert record["comparison"]["counts"]["test"]["patients"] == pids.size
    # record=False leaves the file alone; a draw that cannot recalibrate is a note, not a crash
    before = cfg.path("metrics").read_bytes()
    quiet = S.study_shift(cfg.variant(seed=bad), bundle, ev, fraction=0.5, n_boot=30, progress=False, n_draws=2,
                          record=False)
    assert cfg.path("metrics").read_bytes() == before
    assert quiet.recalibration is None and quiet.note.startswith("Local recalibration cannot run on test:")

# ------------------------------------------------------------------------------------------ figures
def test_shift_figures_mark_and_name_everything(tmp_path):
    from test_figure_layout import layout_problems

    from utils.viz import evaluation as EP
    from utils.viz.common import set_caption

    y, p, g = population(60, 8)
    y2, p2, g2 = population(60, 9, normal_shift=1.5)
    set_caption("phantom X-rays · demo profile · 128 px · a caption")
    try:
        fig = EP.plot_score_shift(y, p, y2, p2, 0.2, names=("validation", "shifted phantoms"),
                                  save_to=tmp_path / "shift.png")
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert labels == ["validation: share of images per bin", "validation: median",
                          "shifted phantoms: share of images per bin", "shifted phantoms: median",
                          "operating threshold 0.200 (chosen on validation)"]
        assert "specificity" in fig.axes[0].get_title() and "sensitivity" in fig.axes[1].get_title()
        assert layout_problems(fig) == [] and (tmp_path / "shift.png").stat().st_size > 0
        r = S.recalibrate(y2, p2, g2, 0.2, 0.9, fraction=0.3, seed=0, n_boot=50)
        fig = EP.plot_recalibration(r, save_to=tmp_path / "recal.png")
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert any(lab.startswith("original threshold 0.200") for lab in labels)
        assert any(lab.startswith(f"recalibrated threshold {r.thresholds['recalibrated']:.3f}") for lab in labels)
        assert "target sensitivity 0.9" in labels and "no change" in labels
        assert layout_problems(fig) == [] and (tmp_path / "recal.png").stat().st_size > 0
    finally:
        set_caption("")
