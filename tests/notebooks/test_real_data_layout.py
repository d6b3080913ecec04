"""The whole series on the official Kaggle layout — real file names, synthetic pixels, no masks — in the full profile.

The fixture (:mod:`utils.data.fixture`) is the official ``chest_xray`` layout: ``train/``, the 16-image ``val/``,
the official ``test/`` names, every numbering series and the number reuse across folders that breaks a naive
patient key. Every numbered notebook runs on it in order, in one temporary project root, shrunk by the knobs
(``CXR_IMAGE_SIZE``, ``CXR_EPOCHS_PHASE1/2``), and the tests read what the real-data branches wrote.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from utils.data.fixture import FixtureSpec, build_kermany_fixture

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(p for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb") if not p.name.startswith("00_"))
KNOBS = {"CXR_PROFILE": "full", "CXR_IMAGE_SIZE": "64", "CXR_EPOCHS_PHASE1": "1", "CXR_EPOCHS_PHASE2": "1"}


def _execute(nb: Path, out: Path) -> None:
    import papermill as pm

    pm.execute_notebook(str(nb), str(out), cwd=str(nb.parent), kernel_name="python3", progress_bar=False,
                        log_output=False)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Build the fixture, run every notebook on it in order; yields the run's paths, then removes them."""
    base = tmp_path_factory.mktemp("real_layout")
    data = build_kermany_fixture(base / "chest_xray", FixtureSpec())
    root, executed = base / "project", base / "executed"
    executed.mkdir()
    saved = {k: os.environ.get(k) for k in [*KNOBS, "CXR_DATA_DIR", "CXR_PROJECT_ROOT", "CXR_SOURCE"]}
    os.environ.update({**KNOBS, "CXR_DATA_DIR": str(data), "CXR_PROJECT_ROOT": str(root)})
    os.environ.pop("CXR_SOURCE", None)
    try:
        for nb in NOTEBOOKS:
            _execute(nb, executed / nb.name)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield {"data": data, "root": root, "executed": executed}
    if os.environ.get("CXR_KEEP_TEST_ROOTS") is None:  # the series' checkpoints (~2 GB) go before the notebooks run
        shutil.rmtree(base, ignore_errors=True)


def _text(path: Path) -> str:
    """Everything a notebook printed or displayed (stdout, text and markdown outputs)."""
    nb = nbformat.read(path, as_version=4)
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts += [data.get("text/plain", ""), data.get("text/markdown", ""), data.get("text/html", "")]
    return "\n".join(p if isinstance(p, str) else "".join(p) for p in parts)


def _json(series, name: str) -> dict:
    return json.loads((series["root"] / "assets" / name).read_text())


def test_every_notebook_ran_on_the_real_layout(series):
    assert [p.name for p in sorted(series["executed"].iterdir())] == [nb.name for nb in NOTEBOOKS]
    for nb in NOTEBOOKS:
        assert "PHANTOM FALLBACK" not in _text(series["executed"] / nb.name)  # real data asked, real data used


def test_official_test_split_loaded_whole_and_untouched(series):
    test_files = sorted(p.stem for p in (series["data"] / "test").rglob("*.jpeg"))
    preds = pd.read_csv(series["root"] / "assets" / "predictions_test.csv", dtype={"id": str})
    assert sorted(preds["id"]) == test_files  # exactly the official test folder, nothing added or dropped
    val = pd.read_csv(series["root"] / "assets" / "predictions_val.csv", dtype={"id": str})
    assert not set(val["id"]) & set(test_files)  # validation was carved from train (+ the tiny val/), never test
    summary = _json(series, "data_summary.json")
    assert summary["source"] == "folder" and summary["run"]["profile"] == "full"
    assert summary["splits"]["test"]["images"] == len(test_files)
    assert any("merged the tiny official val folder (16 images)" in n for n in summary["notes"])


def test_leak_guard_passes_with_series_keyed_patients(series):
    summary = _json(series, "data_summary.json")
    assert summary["leak_guard_ok"] and summary["patient_key"] == "series + number"
    shared = summary["patient_key_evidence"]["shared_train_test"]
    assert shared["series + number"] == 0 and shared["number only"] > 0  # the naive key would have leaked
    assert summary["duplicate_groups"]["train"] >= 1  # the fixture's identical copy, kept inside its patient
    text = _text(series["executed"] / "01_data_exploration.ipynb")
    assert "leak guard: OK" in text and "ESTIMATED" in text  # the lung-field estimate drawn on real images


def test_threshold_and_model_chosen_on_validation(series):
    """Which phase ships is data-dependent (a coin flip on the fixture's pixels): assert the rule, not the outcome."""
    from utils.checkpoint import load_checkpoint
    from utils.evaluate.evaluation import PHASES
    from utils.paths import artifact

    metrics = _json(series, "metrics.json")
    assert metrics["test"]["threshold"]["rule"] == "highest threshold with validation recall >= 0.98"
    assert metrics["operating_point"]["bootstrap"]["threshold"] == "re-chosen on each validation resample"
    assert metrics["test"]["run"]["image_size"] == 64 and metrics["test"]["run"]["epochs_phase1"] == 1
    choice = metrics["model_choice"]
    rows = {r["model"]: r for r in choice["validation"]}
    assert set(rows) == set(PHASES)

    def rank(name):  # SHIP_RULE: validation specificity, then validation ROC AUC (null = undefined, last), then phase 2
        r = rows[name]
        return [float("-inf") if r[k] is None else r[k] for k in ("val_specificity", "val_roc_auc")] + [name]

    shipped = choice["shipped"]
    assert shipped == max(rows, key=rank) and [n for n, r in rows.items() if r["shipped"]] == [shipped]
    meta = load_checkpoint(series["root"] / "model" / "pneumonia_model.pt")["meta"]
    assert meta["threshold"] == metrics["test"]["threshold"]["value"] and meta["run"]["profile"] == "full"
    assert meta["chosen_phase"] == shipped
    for name, art in PHASES.items():  # every checkpoint says how its weights were started and trained
        phase_meta = load_checkpoint(artifact(art, series["root"]))["meta"]
        assert phase_meta["init"] and phase_meta["recipe"]
        assert ("random start" in phase_meta["recipe"]) == (not phase_meta["pretrained"])  # offline: said so
        if name == shipped:
            assert (meta["recipe"], meta["init"]) == (phase_meta["recipe"], phase_meta["init"])


def test_dataset_shift_section_uses_the_test_folder_as_the_new_population(series):
    """Notebook 04 section 10 on real data: the new population is the official test folder, named as such in the
    computed text and in metrics.json; no phantom stand-in is made; the recalibrated threshold is scored only on
    test patients it did not see."""
    from utils.paths import artifact

    metrics = _json(series, "metrics.json")
    shift = metrics["dataset_shift"]
    test_files = list((series["data"] / "test").rglob("*.jpeg"))
    assert shift["population"] == "test" and shift["description"].startswith(f"the test folder of {series['data']}")
    assert shift["comparison"]["populations"] == ["validation", "test"]
    assert shift["comparison"]["counts"]["test"]["images"] == len(test_files)
    assert shift["comparison"]["threshold"] == metrics["test"]["threshold"]["value"]  # the frozen operating point
    recal = shift["recalibration"]
    assert recal["thresholds"]["original"] == metrics["test"]["threshold"]["value"]
    assert recal["labelled"]["images"] + recal["scored"]["images"] == len(test_files)
    assert shift["recalibration_draws"]["sentence"].startswith("Over ")
    text = _text(series["executed"] / "04_evaluation.ipynb")
    assert f"new population of this run: the test folder of {series['data']}" in text
    assert "## 10 · Dataset shift" in (REPO / "notebooks" / "04_evaluation.ipynb").read_text()
    assert not artifact("shifted_phantom_dir", series["root"]).exists()  # real data: no phantom stand-in
    assert artifact("score_shift", series["root"]).exists() and artifact("recalibration", series["root"]).exists()


def test_explanation_without_masks_says_what_is_measured(series):
    loc = _json(series, "metrics.json")["localisation"]
    assert loc["masks"] is False and loc["chosen_on"].startswith("nothing")
    assert loc["explanation"]["layer"] == "layer4" and loc["model_saw_masks"] is False
    assert {r["lung field"] for r in loc["outside_lung"]} == {"estimated lung field"}
    assert {r["group"] for r in loc["outside_lung"]} <= {"TP", "FN"}
    text = _text(series["executed"] / "05_gradcam.ipynb")
    assert "No lesion masks: localisation cannot be measured" in text
    assert (series["root"] / "assets" / "final_gradcam.png").exists()


def test_false_negative_study_and_int8_run_without_masks(series):
    fn = pd.read_csv(series["root"] / "assets" / "false_negatives.csv")
    assert list(fn.columns[:4]) == ["id", "patient_id", "subtype", "prob"]
    text = _text(series["executed"] / "06_false_negatives.ipynb")
    assert "lung masks: estimated" in text and "No lesion annotations" in text
    report = _json(series, "int8_report.json")
    assert report["run"]["profile"] == "full" and report["n_test"] == len(list((series["data"] / "test").rglob("*.jpeg")))
    assert (series["root"] / "model" / "pneumonia_model_int8.onnx").exists()
    assert (series["root"] / "assets" / "int8_gradcam.png").exists()


def test_shortcut_study_runs_on_real_films(series):
    record = _json(series, "shortcut.json")
    assert record["scale"]["data"] == "folder" and set(record["auc"]) == {"control", "confounded", "remedy"}
    assert set(record["auc"]["remedy"]) == {"in-distribution", "decorrelated", "reversed"}
    groups = {r["group"] for r in record["real_data_marker_finds"]}
    assert groups and groups <= {"TP", "FN", "FP"}  # the marker question asked of the shipped model's maps
    att = record["attention_decorrelated_test"]["per_model"]
    assert att and all(r.get("lesion_mass") is None for r in att)  # no lesion masks: no lesion numbers made up
    assert (series["root"] / "assets" / "marker_finds.png").exists()


def test_vit_comparison_runs_on_real_films(series):
    record = _json(series, "vit_comparison.json")
    assert set(record["models"]) == {"ResNet-18", "ViT-Tiny"} and record["map_differences"]["lung_masks"] == "estimated"
    verdicts = {r["claim"]: r["verdict"] for r in record["hypothesis"]}
    assert verdicts["better_localisation"] == "not measurable"  # no lesion masks on real films
    assert verdicts["fewer_misses"] in ("supported", "contradicted", "not shown")
    assert "random initialisation" in record["models"]["ViT-Tiny"]["weights"]  # offline full profile, said so
    assert {m: set(v) for m, v in record["against_uniform"].items()} == {"ResNet-18": {"outside_lung"},
                                                                         "ViT-Tiny": {"outside_lung"}}  # no lesion


def test_attribution_leaderboard_measures_what_real_films_allow(series):
    board = _json(series, "attribution_leaderboard.json")
    assert board["masks"] is False and board["scale"]["data"] == "folder" and board["model_saw_masks"] is False
    assert any(n.startswith("localisation") for n in board["not_measurable"])  # no lesion masks: said, not made up
    assert board["parameters_chosen_on"].startswith("nothing") and board["lung_masks"] == "estimated"
    rows = board["rows"]
    assert [r["row"] for r in rows][-1] == "gradcam" and len(rows) == 7
    for r in rows:
        assert "localisation" not in r and r["cost_ms"] > 0
        assert r["randomisation"]["verdict"] in ("at the reference", "above the reference", "no map")
        assert r["road"]["verdict"] in ("faithful", "not shown", "not faithful", "no map")
        assert r["outside_lung"]["lung_masks"] == "estimated"
    # notebook 08 ran before 10 in this root: its confounded model is there, in the loaded run's world (real data:
    # the shipped model is the control), and every method gets a marker row
    assert board["marker_test"]["measured"], board["marker_test"].get("reason")
    assert board["marker_test"]["world"] == "the shipped run's"
    assert all(r["marker"]["verdict"] for r in rows)
    text = _text(series["executed"] / "10_beyond_gradcam.ipynb")
    assert "Localisation cannot be measured on this data" in text
    for name in ("attribution_leaderboard.png", "attribution_maps.png"):
        assert (series["root"] / "assets" / name).exists()
