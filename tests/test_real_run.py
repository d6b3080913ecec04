"""scripts/real_run.py: the held-out-patient layout (whole patients, seeded, links, never the official test folder,
never inside the repository) and the run's orchestration (knobs, order, times, record, figures) with fake runners."""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import real_run
from utils.data.fixture import official_names
from utils.data.patients import patient_id_from_name
from utils.errors import UserError
from utils.fileio import read_json, write_json
from utils.paths import artifact


def fake_source(folder: Path, n_patients: int = 24) -> Path:
    """``folder/{NORMAL,PNEUMONIA}``: every file of the first ``n_patients`` patients of each class of the official
    training list (the real names, a few bytes each)."""
    for cls in ("NORMAL", "PNEUMONIA"):
        by_patient: dict[str, list[str]] = defaultdict(list)
        for name in official_names("train"):
            if Path(name).parent.name == cls:
                by_patient[patient_id_from_name(Path(name).name)].append(Path(name).name)
        (folder / cls).mkdir(parents=True)
        for pid in sorted(by_patient)[:n_patients]:
            for name in by_patient[pid]:
                (folder / cls / name).write_bytes(b"not an image")
    return folder


def layout_files(root: Path, split: str) -> list[Path]:
    return sorted(p for p in (root / split).rglob("*") if p.is_symlink() or p.is_file())


def patients(files: list[Path]) -> set[str]:
    return {patient_id_from_name(p.name) for p in files}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return fake_source(tmp_path_factory.mktemp("kermany") / "train")


# ------------------------------------------------------------------------------------------- the layout
def test_layout_is_by_whole_patients_of_links_and_records_its_rule(source, tmp_path):
    repo = tmp_path / "repo"
    dest = repo / ".realdata" / "heldout"
    manifest = real_run.build_layout(source, dest, fraction=0.25, seed=7, repo=repo)
    train, test = layout_files(dest, "train"), layout_files(dest, "test")
    assert patients(train).isdisjoint(patients(test))
    originals = sorted(p for p in source.rglob("*") if p.is_file())
    assert sorted(p.resolve() for p in train + test) == [p.resolve() for p in originals]  # every file, once
    assert all(p.is_symlink() for p in train + test)  # links, never copies
    for split, files in (("train", train), ("test", test)):
        assert {p.parent.name for p in files} == {"NORMAL", "PNEUMONIA"}
        assert manifest["splits"][split]["images"] == len(files)
        assert manifest["splits"][split]["patients"] == len(patients(files))
    n_normal = len({patient_id_from_name(p.name) for p in originals if p.parent.name == "NORMAL"})
    assert len(patients([p for p in test if p.parent.name == "NORMAL"])) == round(0.25 * n_normal)
    assert read_json(dest / real_run.LAYOUT_FILE) == manifest
    assert manifest["seed"] == 7 and manifest["test_fraction"] == 0.25 and "patient_split" in manifest["rule"]


def test_layout_is_seeded(source, tmp_path):
    repo = tmp_path / "repo"
    a = real_run.build_layout(source, repo / ".realdata" / "a", 0.25, 7, repo=repo)
    b = real_run.build_layout(source, repo / ".realdata" / "b", 0.25, 7, repo=repo)
    c = real_run.build_layout(source, repo / ".realdata" / "c", 0.25, 8, repo=repo)
    assert a["test_patients_sha256"] == b["test_patients_sha256"]
    assert patients(layout_files(repo / ".realdata" / "a", "test")) == patients(layout_files(repo / ".realdata" / "b",
                                                                                             "test"))
    assert a["test_patients_sha256"] != c["test_patients_sha256"]


def test_an_existing_layout_is_reused_only_when_it_is_the_same(source, tmp_path):
    repo, dest = tmp_path / "repo", tmp_path / "repo" / ".realdata" / "heldout"
    first = real_run.build_layout(source, dest, 0.25, 7, repo=repo)
    assert real_run.build_layout(source, dest, 0.25, 7, repo=repo) == first
    with pytest.raises(UserError, match="another layout"):
        real_run.build_layout(source, dest, 0.25, 9, repo=repo)


def test_layout_refuses_the_official_test_folder_and_writes_nothing(tmp_path):
    named_test = fake_source(tmp_path / "chest_xray" / "test", 2)
    with pytest.raises(UserError, match="official test folder"):
        real_run.build_layout(named_test, tmp_path / "out1", repo=tmp_path / "repo")
    holds_test = fake_source(tmp_path / "mine", 2)
    test_file = next(Path(n) for n in official_names("test") if Path(n).parent.name == "PNEUMONIA")
    (holds_test / "PNEUMONIA" / test_file.name).write_bytes(b"x")
    with pytest.raises(UserError, match="official test folder"):
        real_run.build_layout(holds_test, tmp_path / "out2", repo=tmp_path / "repo")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_layout_never_writes_into_the_repository_outside_realdata(source, tmp_path):
    repo = tmp_path / "repo"
    for dest in (repo / "data" / "heldout", repo / "heldout", repo):
        with pytest.raises(UserError, match="inside the repository"):
            real_run.build_layout(source, dest, repo=repo)
    assert not repo.exists()


def test_source_that_is_not_a_class_folder_pair_is_one_line(tmp_path):
    root = tmp_path / "chest_xray"
    fake_source(root / "train", 2)
    with pytest.raises(UserError, match=r"--source .*train"):
        real_run.build_layout(root, tmp_path / "out", repo=tmp_path / "repo")
    with pytest.raises(UserError, match="not found"):
        real_run.build_layout(tmp_path / "nowhere", tmp_path / "out", repo=tmp_path / "repo")


# ------------------------------------------------------------------------------------------- the run
def fake_notebooks(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    for name in ("00_index.ipynb", "01_data.ipynb", "02_train.ipynb", "10_more.ipynb"):
        (folder / name).write_text("{}", encoding="utf-8")
    return folder


def fake_reports(root: Path) -> None:
    """What the notebooks would write under ``root/assets`` (one run: one data fingerprint)."""
    knobs = {"profile": "full", "source": "folder", "image_size": 128, "epochs_phase1": 1, "epochs_phase2": 2}
    write_json(artifact("data_summary", root), {"run": knobs, "fingerprint": "fp", "splits": {
        "test": {"images": 5, "patients": 4}}})
    write_json(artifact("metrics", root), {"test": {"n": 5, "n_patients": 4, "run": knobs, "data_fingerprint": "fp",
                                                    "threshold": {"rule": "r", "value": 0.5},
                                                    "metrics": {}, "counts": {"tp": 1, "fp": 1, "tn": 1, "fn": 2}}})


def run_args(source: Path, tmp_path: Path, *extra: str):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n", encoding="utf-8")
    argv = ["--source", str(source), "--layout", str(tmp_path / "layout"), "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "runs" / "real_heldout_cpu_128px"), "--runs-dir", str(tmp_path / "runs"),
            "--readme", str(readme), "--notebooks", str(fake_notebooks(tmp_path / "nbs")),
            "--figures-out", str(tmp_path / "figs"), "--repo", str(tmp_path / "repo"), "--threads", "1",
            "--quiet", *extra]
    args = real_run.build_parser().parse_args(argv)
    args.argv = argv
    return args


def test_run_executes_every_numbered_notebook_with_the_knobs_and_records_it(source, tmp_path):
    calls, figures = [], []

    def runner(nb, out, cwd, env):
        calls.append((nb.name, dict(env)))
        fake_reports(Path(env["CXR_PROJECT_ROOT"]))
        return 0, ""

    def figure_runner(project, layout, out, env):
        figures.append((project, layout, out))
        return 0, "ok"

    rep = real_run.run(run_args(source, tmp_path), runner, figure_runner)
    assert [name for name, _ in calls] == ["01_data.ipynb", "02_train.ipynb", "10_more.ipynb"]  # the index is not run
    env = calls[0][1]
    layout, project = (tmp_path / "layout").resolve(), tmp_path / "work" / "project"
    assert {k: env[k] for k in ("CXR_PROFILE", "CXR_SOURCE", "CXR_DATA_DIR", "CXR_IMAGE_SIZE", "CXR_EPOCHS_PHASE1",
                                "CXR_EPOCHS_PHASE2", "OMP_NUM_THREADS", "CXR_PROJECT_ROOT")} == {
        "CXR_PROFILE": "full", "CXR_SOURCE": "folder", "CXR_DATA_DIR": str(layout), "CXR_IMAGE_SIZE": "128",
        "CXR_EPOCHS_PHASE1": "1", "CXR_EPOCHS_PHASE2": "2", "OMP_NUM_THREADS": "1", "CXR_PROJECT_ROOT": str(project)}
    assert figures == [(project, layout, tmp_path / "figs")]
    out = tmp_path / "runs" / "real_heldout_cpu_128px"
    run = read_json(out / "run.json")
    assert set(run["seconds"]) == {"01", "02", "10"} and run["layout"] == read_json(layout / real_run.LAYOUT_FILE)
    assert run["splits"]["test"]["label"] == "pseudo-test" and run["figures"]["exit_code"] == 0
    assert run["made_by"].startswith("`python scripts/real_run.py --source")
    assert read_json(out / "metrics.json")["test"]["counts"]["fn"] == 2
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "pseudo-test at the operating point" in readme and "2 FN" in readme
    assert rep["threads"] == 1


def test_a_failing_notebook_stops_the_run_naming_it_and_keeps_the_progress(source, tmp_path):
    def runner(nb, out, cwd, env):
        return (1, "ValueError: boom") if nb.name.startswith("02") else (0, "")

    with pytest.raises(UserError, match=r"02_train\.ipynb failed .*boom"):
        real_run.run(run_args(source, tmp_path), runner, lambda *a: (0, ""))
    progress = read_json(tmp_path / "work" / "progress.json")
    assert set(progress["seconds"]) == {"01"} and progress["failed"]["notebook"] == "02_train.ipynb"
    assert not (tmp_path / "runs").exists()  # nothing recorded from a run cut short


def test_layout_only_runs_no_notebook(source, tmp_path):
    def runner(*a):
        raise AssertionError("no notebook may run with --layout-only")

    rep = real_run.run(run_args(source, tmp_path, "--layout-only"), runner, runner)
    assert (tmp_path / "layout" / "test").is_dir() and set(rep) == {"layout"}


def test_the_run_folder_must_stay_out_of_the_repository(source, tmp_path):
    args = run_args(source, tmp_path)
    args.work = tmp_path / "repo" / "model"
    with pytest.raises(UserError, match="inside the repository"):
        real_run.run(args, lambda *a: (0, ""), lambda *a: (0, ""))


def test_unknown_notebook_number_is_one_line(source, tmp_path, capsys):
    args = run_args(source, tmp_path, "--only", "42")
    assert real_run.main(args.argv) == 2
    assert "no notebook numbered 42" in capsys.readouterr().err


def test_a_run_done_in_parts_records_every_part_and_forgets_another_run(source, tmp_path):
    def runner(nb, out, cwd, env):
        fake_reports(Path(env["CXR_PROJECT_ROOT"]))
        return 0, ""

    real_run.run(run_args(source, tmp_path, "--only", "01", "02", "--no-figures"), runner, runner)
    real_run.run(run_args(source, tmp_path, "--only", "10", "--no-figures"), runner, runner)
    run = read_json(tmp_path / "runs" / "real_heldout_cpu_128px" / "run.json")
    assert set(run["seconds"]) == {"01", "02", "10"}
    assert run["notebooks"] == ["01_data.ipynb", "02_train.ipynb", "10_more.ipynb"]
    assert run["made_by"].count("`python scripts/real_run.py") == 2 and "--only 01 02" in run["made_by"]
    # the same notebook again replaces its own time; another scale starts a new record
    real_run.run(run_args(source, tmp_path, "--only", "02", "--image-size", "96", "--no-figures"), runner, runner)
    run = read_json(tmp_path / "runs" / "real_heldout_cpu_128px" / "run.json")
    assert set(run["seconds"]) == {"02"} and run["made_by"].count("`python") == 1
