"""scripts/results.py: README's results block is rendered from the committed run reports (and CI fails when it is
out of date); every row names its scale and its interval kind; a missing report says so; recording a run copies
one run's reports and nothing stale."""
from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import results
from utils.errors import UserError
from utils.evaluate.verdicts import road_sentence
from utils.fileio import read_json, write_json
from utils.paths import artifact


def ci(value, low, high):
    return {"value": value, "ci_low": low, "ci_high": high}


KNOBS = {"profile": "demo", "source": "phantom", "data_dir": None, "image_size": 96, "epochs_phase1": 2,
         "epochs_phase2": 5, "set_by": {"profile": "cell"}}
DATA = {"profile": "demo", "run": KNOBS, "source": "phantom", "data": "phantom X-rays: train 40 / val 10 / test 20",
        "image_size": 96, "fingerprint": "fp-data", "notes": ["validation carved from train by patient"],
        "splits": {"train": {"images": 40, "patients": 30}, "val": {"images": 10, "patients": 8},
                   "test": {"images": 20, "patients": 15}}}
RATES = {"sensitivity": ci(0.9, 0.8, 1.0), "specificity": ci(0.5, 0.3, 0.7), "roc_auc": ci(0.95, 0.9, 0.99)}
FIXED = {"n_boot": 200, "unit": "patient", "alpha": 0.05, "seed": 0}
RECHOSEN = {**FIXED, "target_recall": 0.98, "threshold": "re-chosen on each validation resample"}
SECTION = {"n": 20, "n_patients": 15, "threshold": {"rule": "highest threshold with validation recall >= 0.98",
                                                     "value": 0.25},
           "metrics": RATES, "counts": {"tp": 9, "fp": 5, "tn": 5, "fn": 1}, "bootstrap": FIXED,
           "data_fingerprint": "fp-data", "model_fingerprint": "fp-model", "run": KNOBS}
METRICS = {
    "test": {"split": "test", **SECTION},
    "val": {"split": "val", **SECTION, "n": 10, "n_patients": 8, "note": "optimistic by design"},
    "model_choice": {"rule": "higher validation specificity", "shipped": "phase 2", "run": KNOBS, "validation": [
        {"model": "phase 1", "threshold": 0.3, "val_sensitivity": 1.0, "val_specificity": 0.2, "val_roc_auc": 0.9},
        {"model": "phase 2", "threshold": 0.25, "val_sensitivity": 1.0, "val_specificity": 0.6, "val_roc_auc": 0.95}]},
    "operating_point": {"models": {"phase 2": {"threshold": ci(0.25, 0.1, 0.4), "sensitivity": ci(0.9, 0.61, 0.99),
                                               "specificity": ci(0.5, 0.11, 0.92), "roc_auc": ci(0.95, 0.9, 0.99)}},
                        "differences": {"phase 1 - phase 2": {"specificity": ci(-0.2, -0.4, -0.05),
                                                              "roc_auc": ci(0.01, -0.02, 0.03)}},
                        "bootstrap": RECHOSEN, "run": KNOBS},
    "localisation": {"run": KNOBS, "masks": True, "chosen_on": "val", "selection_rule": "best near-pointing",
                     "explanation": {"name": "Grad-CAM @ layer3"}, "data_fingerprint": "fp-data",
                     "verdict": {"near": {"map": 0.8, "best_baseline": "lung-field prior", "best_baseline_value": 0.2,
                                          "difference": ci(0.6, 0.45, 0.7), "n": 9}},
                     "sanity": {"rule": "mean |rho| < 0.5", "worst_after": 0.41, "passes": True, "n_images": 8},
                     "road": {"n": 9, "drop_map": -0.012, "drop_random": -0.018, "difference": ci(0.006, 0.001, 0.013),
                              "beats_random": True}},
}


def write_run(folder: Path, metrics=None, data=None, **files) -> Path:
    """A fake run folder: data_summary.json, metrics.json and any other report (``int8``, ``run``…)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "data_summary.json", copy.deepcopy(DATA if data is None else data))
    write_json(folder / "metrics.json", copy.deepcopy(METRICS if metrics is None else metrics))
    names = {"int8": "int8_report.json", "shortcut": "shortcut.json", "vit": "vit_comparison.json",
             "run": "run.json"}
    for key, rec in files.items():
        write_json(folder / names[key], rec)
    return folder


def rows_of(folder: Path) -> dict[str, results.Row]:
    rep = results.load_reports(folder)
    return {r.what: r for build in results.ROW_BUILDERS for r in build(rep)}


def row_starting(rows: dict[str, results.Row], head: str) -> results.Row:
    return next(r for what, r in rows.items() if what.startswith(head))


# ------------------------------------------------------------------------------------------- the real README
def test_readme_results_block_is_what_the_committed_reports_give():
    assert not results.update(results.README, results.RUNS_DIR, check=True), (
        "README.md's results block differs from the reports in docs/runs/: run `make results`")


def test_check_exits_1_on_a_stale_block_and_0_once_regenerated(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_run(runs / "demo_cpu_128px")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- results:start -->\nspecificity +0.022 (typed by hand)\n<!-- results:end -->\n",
                      encoding="utf-8")
    args = ["--readme", str(readme), "--runs-dir", str(runs)]
    assert results.main(["--check", *args]) == 1
    assert "make results" in capsys.readouterr().err
    assert "typed by hand" in readme.read_text(encoding="utf-8")  # --check writes nothing
    assert results.main(args) == 0
    assert results.main(["--check", *args]) == 0
    text = readme.read_text(encoding="utf-8")
    assert "typed by hand" not in text and text.startswith("# x\n") and text.endswith("<!-- results:end -->\n")


def test_readme_without_markers_is_one_line_error(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n", encoding="utf-8")
    assert results.main(["--readme", str(readme), "--runs-dir", str(tmp_path)]) == 2
    assert "results:start" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- the renderer
def test_every_measured_row_states_its_scale_and_a_missing_report_says_not_measured(tmp_path):
    rows = rows_of(write_run(tmp_path / "run"))
    measured = [r for r in rows.values() if r.result != results.NOT_MEASURED]
    assert len(measured) >= 8
    for r in measured:
        assert "96 px · 2 + 5 epochs" in r.on, r.what
    for head in ("INT8", "shortcut", "ViT", "attribution leaderboard", "dataset shift", "local recalibration"):
        row = row_starting(rows, head)
        assert row.result == results.NOT_MEASURED and not re.search(r"\d\.\d", row.on + row.intervals), head


def test_operating_point_reports_the_rechosen_interval_and_labels_it(tmp_path):
    rows = rows_of(write_run(tmp_path / "run"))
    test_row = row_starting(rows, "test at the operating point")
    assert "specificity 0.500 [0.110, 0.920]" in test_row.result  # operating_point's, not the fixed one
    assert "re-chosen on each validation resample" in test_row.intervals
    val_row = row_starting(rows, "operating threshold")
    assert "threshold fixed" in val_row.intervals and "specificity 0.500 [0.300, 0.700]" in val_row.result
    metrics = copy.deepcopy(METRICS)
    del metrics["operating_point"]
    fallback = row_starting(rows_of(write_run(tmp_path / "no_op", metrics)), "test at the operating point")
    assert "specificity 0.500 [0.300, 0.700]" in fallback.result and "threshold fixed" in fallback.intervals


def test_a_negative_road_drop_renders_as_negative_never_as_a_win(tmp_path):
    row = rows_of(write_run(tmp_path / "run"))["ROAD faithfulness"]
    assert "-0.012" in row.result and "raised" in row.result
    assert "beats" not in row.result and "faithful" not in row.result.replace("no verdict", "")


def test_a_verdict_the_record_carries_is_rendered_with_its_sentence(tmp_path):
    own, diff = ci(-0.3, -0.5, -0.1), ci(-0.05, -0.2, 0.1)
    metrics = copy.deepcopy(METRICS)
    metrics["localisation"]["road"] = {"n": 9, "n_no_map": 1, "verdict": "not faithful",
                                       "sentence": road_sentence(own, diff, n_no_map=1, n_total=10)}
    row = rows_of(write_run(tmp_path / "run", metrics))["ROAD faithfulness"]
    assert row.result.startswith("**not faithful** — ") and "*raises*" in row.result and "1 of 10" in row.result


def test_localisation_verdict_comes_from_the_verdict_module(tmp_path):
    row = row_starting(rows_of(write_run(tmp_path / "run")), "localisation (near-pointing)")
    assert "0.800" in row.result and "lung-field prior" in row.result and "beats every image-blind baseline" in row.result
    metrics = copy.deepcopy(METRICS)
    metrics["localisation"]["verdict"]["near"]["difference"] = ci(0.01, -0.02, 0.04)
    tie = row_starting(rows_of(write_run(tmp_path / "tie", metrics)), "localisation (near-pointing)")
    assert "does not beat" in tie.result


def test_a_run_without_lesion_masks_says_localisation_is_not_measurable(tmp_path):
    metrics = copy.deepcopy(METRICS)
    metrics["localisation"].update(masks=False, chosen_on="nothing (no lesion masks)")
    del metrics["localisation"]["verdict"]
    row = row_starting(rows_of(write_run(tmp_path / "run", metrics)), "localisation")
    assert row.result.startswith("not measurable")


def test_run_json_names_the_test_split_and_the_provenance(tmp_path):
    run = {"splits": {"test": {"label": "pseudo-test"}}, "commit": "abc1234", "dirty": True, "date": "2026-12-06",
           "device": "cpu", "model": {"weights": "random initialisation"}, "made_by": "`python scripts/real_run.py`"}
    folder = write_run(tmp_path / "runs" / "real_heldout_cpu_128px", run=run)
    rows = rows_of(folder)
    assert row_starting(rows, "pseudo-test at the operating point").on.startswith("pseudo-test: 20 images, 15 patients")
    block = results.render_block(tmp_path / "runs")
    assert "Commit abc1234 with uncommitted changes" in block and "random initialisation · CPU" in block
    assert "no recorded run" in block  # the demo folder is absent: said so, no numbers


def test_the_shortcut_row_states_the_scale_of_notebook_08s_own_world(tmp_path):
    record = read_json(Path(results.RUNS_DIR) / "demo_cpu_128px" / "shortcut.json")  # the committed demo record
    row = row_starting(rows_of(write_run(tmp_path / "run", shortcut=record)), "shortcut learning")
    assert record["scale"]["world"] in row.on and "phantom-pretrained" not in row.on
    del record["scale"]["world"]  # a record without its world: the study's own size and epochs, the run's weights
    row = row_starting(rows_of(write_run(tmp_path / "old", shortcut=record)), "shortcut learning")
    assert f"{record['scale']['image_size']} px" in row.on


def test_table_cells_escape_pipes(tmp_path):
    block = results.render_block(tmp_path / "runs") + "\n" + results.render_run(
        results.RUNS[0], results.load_reports(write_run(tmp_path / "runs" / "demo_cpu_128px")))
    for line in block.splitlines():
        if line.startswith("| ") or line.startswith("|---"):
            assert len(re.findall(r"(?<!\\)\|", line)) == 5, line


def test_unmeasured_line_follows_the_recorded_scales(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "demo_cpu_128px")
    assert "a GPU run" in results.render_block(runs)
    write_run(runs / "real_heldout_cpu_128px", run={"device": "cuda"})
    assert "a GPU run" not in results.render_block(runs)


# ------------------------------------------------------------------------------------------- recording a run
def fake_project(root: Path, knobs=None, shortcut_fp="fp-data") -> Path:
    data = copy.deepcopy(DATA)
    metrics = copy.deepcopy(METRICS)
    if knobs is not None:
        data["run"] = knobs
        for sec in metrics.values():
            if "run" in sec:
                sec["run"] = knobs
    write_json(artifact("data_summary", root), data)
    write_json(artifact("metrics", root), metrics)
    write_json(artifact("shortcut", root), {"scale": {"fingerprint": shortcut_fp, "device": "cpu"}})
    return root


def test_record_demo_copies_one_runs_reports_and_removes_stale_ones(tmp_path):
    project, runs = fake_project(tmp_path / "project"), tmp_path / "runs"
    stale = runs / "demo_cpu_128px" / "vit_comparison.json"
    write_json(stale, {"from": "an older run"})
    written = results.record_demo(project, runs)
    dest = runs / "demo_cpu_128px"
    assert {p.name for p in written} == {"data_summary.json", "metrics.json", "shortcut.json", "run.json"}
    assert not stale.exists()
    assert read_json(dest / "metrics.json") == read_json(artifact("metrics", project))
    run = read_json(dest / "run.json")
    assert run["knobs"]["image_size"] == 96 and run["device"] == "cpu" and run["model"] is None
    assert {"commit", "dirty", "date", "machine"} <= set(run) and run["machine"]["cores_available"] >= 1


def test_a_record_names_paths_inside_the_checkout_relative_to_it(tmp_path):
    repo = tmp_path / "repo"
    layout = repo / ".realdata" / "layout"
    knobs = {**DATA["run"], "data_dir": str(layout)}
    project = fake_project(repo / ".realdata" / "project", knobs)
    dest = tmp_path / "runs" / "real"
    results.record_run(project, dest, {"project_root": str(project)}, repo)
    assert read_json(dest / "data_summary.json")["run"]["data_dir"] == ".realdata/layout"
    assert read_json(dest / "run.json")["project_root"] == ".realdata/project"
    outside = fake_project(tmp_path / "elsewhere")  # a root outside the checkout: its own paths relative to it
    write_json(artifact("int8_report", outside), {"fp32": {"path": str(outside / "model" / "m.pt")}})
    results.record_run(outside, dest, {}, repo)
    assert read_json(dest / "int8_report.json")["fp32"]["path"] == "model/m.pt"
    assert str(repo) not in "".join(p.read_text(encoding="utf-8") for p in dest.iterdir())


def test_record_refuses_reports_of_two_runs(tmp_path):
    project = fake_project(tmp_path / "project", shortcut_fp="fp-other")
    with pytest.raises(UserError, match="shortcut.json"):
        results.record_demo(project, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("change", [{"profile": "full"}, {"set_by": {"image_size": "CXR_IMAGE_SIZE"}}])
def test_record_demo_refuses_a_run_that_is_not_the_demo(tmp_path, change):
    project = fake_project(tmp_path / "project", knobs={**KNOBS, **change})
    with pytest.raises(UserError, match="record-demo records the demo"):
        results.record_demo(project, tmp_path / "runs")


def test_record_without_reports_is_one_line(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n", encoding="utf-8")
    code = results.main(["--record-demo", "--project", str(tmp_path / "empty"), "--readme", str(readme),
                         "--runs-dir", str(tmp_path / "runs")])
    assert code == 2 and "make demo" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- README's time line
def test_readme_time_line_is_read_from_the_demo_time_report(tmp_path):
    from scripts import nav

    report = tmp_path / "demo_time.json"
    assert "not measured yet" in nav.times_note(report)
    write_json(report, {"date": "2026-12-06", "commit": "abc1234", "knobs": {}, "total_s": 546.0,
                        "machine": {"cpu": "x86_64", "cores_available": 2},
                        "probe": {"size": 128, "batch": 32, "project_phase2_img_s": 41.6}})
    line = nav.times_note(report)
    assert "9.1 min in all on x86_64, 2 cores" in line and "42 images/s" in line and "commit abc1234" in line
    write_json(report, {"knobs": {"CXR_PROFILE": "full"}, "total_s": 5000.0})
    assert "min in all" not in nav.times_note(report)  # another profile's times are not the demo's


def test_real_data_epoch_time_is_read_from_the_recorded_run(tmp_path):
    from scripts import nav

    run = tmp_path / "real_run"
    assert nav.real_training_note(run) == ""  # no recorded run: nothing is said
    run.mkdir()
    (run / "history_phase2.csv").write_text("phase,epoch,seconds,images_per_s\nphase2,1,480.0,8.4\n"
                                            "phase2,2,540.0,7.4\nphase2,3,600.0,6.7\n", encoding="utf-8")
    write_json(run / "data_summary.json", {**DATA, "splits": {"train": {"images": 4005}}})
    line = nav.real_training_note(run)  # the median epoch: 540 s = 9.0 min, 7.4 images/s
    assert "9.0 min" in line and "(7 images/s)" in line and "4,005 training films" in line
    assert "96 px, 2 + 5 epochs" in line and "did not record" in line  # the knobs of data_summary; no run.json
    write_json(run / "run.json", {"machine": {"cpu": "x86_64", "cores_available": 2}})
    assert "on x86_64, 2 cores" in nav.real_training_note(run)
    (run / "history_phase2.csv").write_text("phase,epoch,seconds,images_per_s\n", encoding="utf-8")
    assert nav.real_training_note(run) == ""  # no epoch recorded: no sentence


def test_index_and_readme_carry_the_generated_time_lines_and_no_typed_run_numbers():
    """The lines under both notebook tables come from scripts/nav.py (the index links docs/ from notebooks/); the
    index's own prose types no measured time or speed (nav.py --check, in test_notebook_structure, keeps them fresh)."""
    import nbformat

    from scripts import nav

    index = nbformat.read(ROOT / "notebooks" / nav.INDEX_NAME, as_version=4)
    text = "\n".join(c.source for c in index.cells if c.cell_type == "markdown" and not nav.is_nav_cell(c))
    inside = text[text.index(nav.TABLE_START):text.index(nav.TABLE_END)]
    assert nav.times_notes(link_prefix="../") in inside and "(../docs/BENCHMARKS.md)" in inside
    assert nav.times_notes() in (ROOT / "README.md").read_text(encoding="utf-8")
    outside = text.replace(inside, "")
    typed = re.findall(r"\d[\d.,]*(?:\s*(?:images/s|img/s|minutes?\b|min\b)|×)", outside)  # "128 × 128" is a size
    assert typed == [], f"the index types run numbers outside the generated block: {typed}"
