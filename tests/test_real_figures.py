"""scripts/real_figures.py and utils.viz.gallery: the real figures are redrawn from a recorded run without ever
reading the official test folder or copying an image, and a notebook finds them from any working directory."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.artifacts import predictions_frame, threshold_rule
from utils.checkpoint import make_meta, save_checkpoint
from utils.config import IMAGENET_MEAN, IMAGENET_STD
from utils.data.fixture import FixtureSpec, build_kermany_fixture
from utils.data.images import read_image
from utils.data.patients import patient_id_from_name, subtype_from_name
from utils.fileio import write_csv
from utils.paths import artifact
from utils.train.model import build_model, predict_proba
from utils.viz import gallery

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "real_figures.py"
SIZE = 64


def call(script, *args) -> int:
    return script.main([str(a) for a in args])


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("real_figures", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def kermany(tmp_path_factory) -> Path:
    """The official layout (real file names, synthetic pixels), small."""
    return build_kermany_fixture(tmp_path_factory.mktemp("fx") / "chest_xray",
                                 FixtureSpec(test_patients=4, train_patients=12, cross_folder=2, image_px=(64, 96)))


def record_model(root: Path, files: list[Path], tag: str | None = None, arch: str = "resnet18") -> None:
    """A recorded run of a tiny random model: checkpoint with its threshold, pseudo-test predictions of ``files``
    (the model's own probabilities, so the script's consistency check holds)."""
    model, weights = build_model("none", seed=0, arch=arch, image_size=SIZE)
    model.eval()
    images = np.stack([read_image(f, SIZE) for f in files])
    labels = np.array([int(f.parent.name == "PNEUMONIA") for f in files])
    probs = predict_proba(model, images, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD})
    threshold = float(np.median(probs[labels == 1]))  # some true positives, some false negatives
    meta = make_meta(image_size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD, arch=arch, threshold=threshold,
                     threshold_rule=threshold_rule(0.98), target_recall=0.98, weights=weights, profile="full",
                     phase="phase 2", run={"profile": "full", "image_size": SIZE, "epochs_phase1": 1,
                                           "epochs_phase2": 2}, data_fingerprint="fake")
    save_checkpoint(artifact("model", root, tag), {"model": model.state_dict(), "meta": meta})
    ids = [f.stem for f in files]
    write_csv(artifact("predictions", root, tag, split="test"),
              predictions_frame(ids, labels, probs, [patient_id_from_name(f.name) for f in files],
                                [subtype_from_name(f.name) for f in files], "test"), index=False)


@pytest.fixture(scope="module")
def run_root(kermany, tmp_path_factory) -> Path:
    """A project root as the series writes it on the training folder split by patient: the pseudo-test is a
    set of training-folder films; a ResNet-18 and notebook 09's ViT."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("run")
    files = sorted((kermany / "train" / "NORMAL").glob("*.jpeg"))[:8] + \
        sorted((kermany / "train" / "PNEUMONIA").glob("*.jpeg"))[:12]
    record_model(root, files)
    record_model(root, files, tag="vit", arch="vit_tiny")
    return root


def test_real_figures_from_a_recorded_run(script, run_root, kermany, tmp_path, capsys):
    out = tmp_path / "real"
    code = call(script, "--run", run_root, "--images", kermany / "train", "--out", out, "--n-tp", "4")
    printed = capsys.readouterr().out
    assert code == 0, printed
    names = set(gallery.REAL_FIGURES)
    assert {p.name for p in out.iterdir()} == {f"{n}.png" for n in names} | {gallery.MANIFEST}  # no image copied
    assert sum(p.stat().st_size for p in out.iterdir()) < 3e6  # a few MB at most
    manifest = json.loads((out / gallery.MANIFEST).read_text())
    assert set(manifest["figures"]) == names and manifest["attribution"] == gallery.ATTRIBUTION
    assert manifest["source_run"]["pseudo_test"] == {"images": 20, "patients": manifest["source_run"]["pseudo_test"]
                                                     ["patients"], "positives": 12}
    for name, entry in manifest["figures"].items():
        caption = entry["caption"]
        assert gallery.ATTRIBUTION in caption and gallery.SPLIT in caption, name
        assert f"{SIZE} px, 1 + 2 epochs, random initialisation, full profile" in caption, name
        assert entry["date"] == manifest["date"] and (out / entry["file"]).read_bytes()[:4] == b"\x89PNG"
    fn = manifest["figures"]["real_gradcam_fn"]
    assert fn["false_negatives"] == fn["images"] >= 1  # every false negative is drawn
    assert manifest["figures"]["real_gradcam_tp"]["images"] == 4
    assert manifest["figures"]["real_gradcam_tp"]["max_probability_difference"] < 1e-4
    assert f"{len(names)} figures" in printed


def test_refuses_the_official_test_folder(script, run_root, kermany, tmp_path, capsys):
    out = tmp_path / "real"
    for images in (kermany, kermany / "test"):  # the official layout's root holds test/; test/ itself
        code = call(script, "--run", run_root, "--images", images, "--out", out)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "official test folder" in err[0], err
    assert not out.exists()  # nothing written


def test_refuses_a_run_scored_on_official_test_files(script, kermany, tmp_path, capsys):
    root = tmp_path / "run"
    files = [f for c in ("NORMAL", "PNEUMONIA") for f in sorted((kermany / "test" / c).glob("*.jpeg"))[:2]]
    record_model(root, files)
    train_copy = tmp_path / "images"  # even where those names sit outside a folder called test
    for f in files:
        (train_copy / f.parent.name).mkdir(parents=True, exist_ok=True)
        (train_copy / f.parent.name / f"x{f.name}").write_bytes(b"")  # other names: the folder itself passes
    code = call(script, "--run", root, "--images", train_copy, "--out", tmp_path / "real")
    err = capsys.readouterr().err
    assert code == 2 and "file(s) of the official test folder" in err and not (tmp_path / "real").exists()


def test_refuses_images_the_run_did_not_read(script, run_root, kermany, tmp_path, capsys):
    pred_path = artifact("predictions", run_root, split="test")
    original = pred_path.read_bytes()
    try:
        frame = __import__("pandas").read_csv(pred_path)
        frame["prob"] = (frame["prob"] + 0.3).clip(0, 1)  # as if another model or another folder
        frame.to_csv(pred_path, index=False)
        code = call(script, "--run", run_root, "--images", kermany / "train", "--out", tmp_path / "real")
    finally:
        pred_path.write_bytes(original)
    err = capsys.readouterr().err
    assert code == 2 and "is not the folder this run read" in err
    code = call(script, "--run", run_root, "--images", kermany / "val", "--out", tmp_path / "real")
    assert code == 2 and "not under" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ the helper
@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    """A repository copy holding one real figure and its manifest; the helper searches only there."""
    repo = tmp_path / "repo"
    (repo / gallery.REAL_DIR).mkdir(parents=True)
    (repo / gallery.REAL_DIR / "real_samples.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (repo / gallery.REAL_DIR / gallery.MANIFEST).write_text(json.dumps(
        {"figures": {"real_samples": {"caption": "real films · 128 px · Kermany et al. 2018, CC BY 4.0"}}}))
    monkeypatch.setattr(gallery, "_search_roots", lambda: [repo])
    return repo


def test_show_real_figure_finds_its_file_from_any_working_directory(checkout, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(gallery, "_display", lambda path, caption: shown.append((path, caption)))
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    assert gallery.show_real_figure("real_samples") is None  # a cell shows the figure, never a path
    path = checkout / gallery.REAL_DIR / "real_samples.png"
    assert shown == [(path, "real films · 128 px · Kermany et al. 2018, CC BY 4.0")]
    gallery.show_real_figure("real_samples.png", caption="mine")
    assert shown[-1] == (path, "mine")


def test_show_real_figure_says_in_one_line_which_file_is_missing(checkout, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    gallery.show_real_figure("real_vit_maps")  # never raises
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "docs/real/real_vit_maps.png" in lines[0] and "scripts/real_figures.py" in lines[0]
    monkeypatch.setattr(gallery, "repo_root", lambda: None)  # a pip install without the repository
    gallery.show_real_figure("real_vit_maps")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "git clone" in lines[0] and "docs/real/real_vit_maps.png" in lines[0]


def test_repository_files_are_found_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = gallery.find_repo_file("docs/DESIGN.md")
    assert found is not None and found.is_absolute() and found.read_text().startswith("# Design notes")
    assert gallery.find_repo_file("docs/no_such_file.png") is None


def test_show_real_figure_displays_in_ipython(checkout, monkeypatch):
    import IPython.display

    calls = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: calls.extend(objs))
    gallery.show_real_figure("real_samples")
    assert [type(c).__name__ for c in calls] == ["Image", "Markdown"] and "CC BY 4.0" in calls[1].data


# ---------------------------------------------------------------------------------- the recorded real run
@pytest.fixture
def recorded(tmp_path, monkeypatch) -> Path:
    """A repository copy holding a recorded real run: a phase-1 history, a data summary, no run.json."""
    repo = tmp_path / "repo"
    run = repo / gallery.REAL_RUN
    run.mkdir(parents=True)
    (run / "history_phase1.csv").write_text("phase,epoch,val_auc,val_recall\nphase1,1,0.84,0.10\n")
    (run / "data_summary.json").write_text(json.dumps(
        {"run": {"profile": "full", "image_size": 128, "epochs_phase1": 1, "epochs_phase2": 2}}))
    (run / "vit_comparison.json").write_text(json.dumps(
        {"models": {"ResNet-18": {"weights": "random initialisation"}}, "scale": {"device": "cpu"}}))
    monkeypatch.setattr(gallery, "_search_roots", lambda: [repo])
    return run


def test_real_run_tables_and_reports_are_read_from_any_working_directory(recorded, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    history = gallery.read_real_run("history_phase1")
    assert list(history.columns) == ["phase", "epoch", "val_auc", "val_recall"] and history["val_auc"].iloc[0] == 0.84
    assert gallery.read_real_run("data_summary")["run"]["image_size"] == 128
    # the scale comes from the records: knobs from the data summary, weights and device from notebook 09's record
    assert gallery.real_run_scale() == "128 px · 1 + 2 epochs · random initialisation · CPU · full profile"
    (recorded / "run.json").write_text(json.dumps({"device": "cuda", "knobs": {"image_size": 224, "epochs_phase1": 5,
                                                   "epochs_phase2": 10, "profile": "full"},
                                                   "model": {"weights": "ImageNet (torchvision IMAGENET1K_V1)"}}))
    assert gallery.real_run_scale() == "224 px · 5 + 10 epochs · ImageNet (torchvision IMAGENET1K_V1) · GPU · full profile"
    assert gallery.REAL_RUN in gallery.real_run_caption() and gallery.ATTRIBUTION in gallery.real_run_caption()


def test_a_missing_or_broken_record_is_one_line_never_an_error(recorded, capsys):
    assert gallery.read_real_run("history_phase2") is None
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and f"{gallery.REAL_RUN}/history_phase2.csv" in lines[0]
    (recorded / "metrics.json").write_text("{not json")
    assert gallery.read_real_run("metrics") is None
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "metrics.json could not be read" in lines[0]
    assert gallery.read_real_run("history_phase2", quiet=True) is None and capsys.readouterr().out == ""
    (recorded / "data_summary.json").unlink()
    (recorded / "vit_comparison.json").unlink()
    assert gallery.real_run_scale() == ("image size not recorded · epochs not recorded · weights not recorded · "
                                        "device not recorded · profile not recorded")
    with pytest.raises(KeyError, match="unknown artifact"):
        gallery.real_run_path("no_such_artifact")


def test_the_committed_real_run_has_the_tables_the_notebooks_show():
    """Notebooks 01–03 show these records of the committed real run (refreshed by scripts/real_run.py)."""
    for name in ("history_phase1", "history_phase2", "data_summary"):
        assert gallery.real_run_path(name) is not None, name
    history = gallery.read_real_run("history_phase2")
    assert {"epoch", "val_auc", "val_recall", "val_specificity"} <= set(history.columns)
