"""The inference command, in-process through ``main([...])`` (plus one real subprocess)."""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image

from utils.data.images import read_image
from utils.deploy import predict
from utils.deploy.predict import FIG_DPI, FIG_SIZE, main, predict_images
from utils.errors import UserError
from utils.explain.maps import main_explanation, resolve_explanation
from utils.explain.spec import UNMEASURED_EXPLANATION, VIT_EXPLANATION_CANDIDATES
from utils.paths import project_root
from utils.train.model import load_model, predict_proba

try:
    from tests import bad_inputs
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    import bad_inputs

PNG_SIZE = (int(FIG_SIZE[0] * FIG_DPI), int(FIG_SIZE[1] * FIG_DPI))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    return {"ckpt": bad_inputs.write_tiny_checkpoint(root / "tiny.pt", threshold=0.4),
            "good": bad_inputs.write_good_images(root / "good"),
            "bad": bad_inputs.write_bad_images(root / "bad"), "root": root}


@pytest.fixture(scope="module")
def loaded(corpus):
    return load_model(corpus["ckpt"])


@pytest.fixture(scope="module")
def bad_ckpts(tmp_path_factory):
    return bad_inputs.write_bad_checkpoints(tmp_path_factory.mktemp("ckpts"))


@pytest.fixture(autouse=True)
def _project_root(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path))  # default outputs land in tmp, not the repo


def _run(capsys, *args) -> tuple[int, str, list[str]]:
    return run_cli(capsys, main, *args)


def _assert_png(path, size=PNG_SIZE) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == size
        im.load()


def _no_hooks(model) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def test_single_image_json_matches_notebook_path(corpus, loaded, capsys, tmp_path):
    img, out = corpus["good"]["gray_L.jpeg"], tmp_path / "figs" / "x.png"
    code, stdout, err = _run(capsys, "--image_path", img, "--model_path", corpus["ckpt"], "--json", "--output", out,
                             "--device", "cpu")
    assert code == 0 and not err
    r = json.loads(stdout)
    model, meta = loaded
    ref = float(predict_proba(model, read_image(img, meta["image_size"])[None], meta)[0])
    assert abs(r["probability"] - ref) < 1e-5
    assert r["diagnosis"] == ("PNEUMONIA" if ref >= 0.4 else "NORMAL")
    assert (r["threshold"], r["threshold_source"], r["layer"], r["explained_class"]) == (
        0.4, "checkpoint: test rule", "layer4", "PNEUMONIA")
    assert r["explanation"] == "Grad-CAM @ layer4" and r["warnings"] is None
    assert r["overlay"] == str(out) and r["model_path"] == str(corpus["ckpt"]) and len(r["fingerprint"]) == 16
    _assert_png(out)


def test_single_image_human_report_and_default_output(corpus, capsys, tmp_path):
    img = corpus["good"]["gray_L.jpeg"]
    before = img.read_bytes()
    code, stdout, err = _run(capsys, "--image_path", img, "--model_path", corpus["ckpt"], "--threshold", "0.999")
    assert code == 0 and not err
    expected = project_root() / "assets" / "predictions" / "gray_L_gradcam.png"
    assert project_root() == tmp_path and expected.is_file()
    _assert_png(expected)
    for text in ("diagnosis:     NORMAL", "P(pneumonia):", "0.999  (from --threshold)", "layer4 (default)",
                 "PNEUMONIA class", str(expected)):
        assert text in stdout
    assert img.read_bytes() == before


def test_layer_and_no_overlay(corpus, capsys, tmp_path):
    code, stdout, _ = _run(capsys, "--image_path", corpus["good"]["palette.png"], "--model_path", corpus["ckpt"],
                           "--json", "--layer", "layer3.1", "-o", tmp_path)
    r = json.loads(stdout)
    assert code == 0 and (r["layer"], r["layer_source"]) == ("layer3.1", "--layer")
    _assert_png(tmp_path / "palette_gradcam.png")
    code, stdout, _ = _run(capsys, "--image_path", corpus["good"]["palette.png"], "--model_path", corpus["ckpt"],
                           "--json", "--no-overlay")
    r = json.loads(stdout)
    assert code == 0 and r["overlay"] is None and r["layer"] is None
    assert not (tmp_path / "assets").exists()


@pytest.mark.parametrize("int8", [False, True])
def test_layer_with_no_overlay_is_a_usage_error(corpus, capsys, int8):
    extra = ("--int8", str(corpus["ckpt"].with_suffix(".onnx"))) if int8 else ()
    code, stdout, err = _run(capsys, "--image_path", corpus["good"]["palette.png"], "--model_path", corpus["ckpt"],
                             "--layer", "layer3", "--no-overlay", *extra)
    assert code != 0 and stdout == ""
    assert len(err) == 1 and "--layer layer3" in err[0] and "--no-overlay" in err[0]


def test_the_map_is_decided_once_from_the_checkpoint(loaded):
    """resolve_explanation is the one decision (the inference command, the notebooks and the studies call it)."""
    model, meta = loaded
    spec = {"name": "Grad-CAM @ layer3", "method": "gradcam", "layer": "layer3", "shifts": [0]}
    chosen, source = resolve_explanation({**meta, "explanation": spec}, model)
    assert (chosen["layer"], source) == ("layer3", "checkpoint (notebook 05)")
    assert resolve_explanation(meta, model) == (UNMEASURED_EXPLANATION, "default")
    plain, source = resolve_explanation({**meta, "explanation": {**spec, "method": "xgradcam"}}, model, "layer3")
    assert (plain["method"], plain["layer"], source) == ("gradcam", "layer3", "--layer")  # --layer: plain Grad-CAM
    with pytest.raises(UserError, match="not a layer Grad-CAM can read"):
        resolve_explanation(meta, model, "fc")


def test_a_recorded_map_the_model_cannot_use_is_a_one_line_error(corpus, loaded, capsys, tmp_path):
    """A spec naming a layer the model lacks (a ViT's, in a ResNet checkpoint) is refused with the fix named, never
    replaced by a default in silence — in the library and in the command."""
    from utils.checkpoint import update_meta

    model, meta = loaded
    foreign = {"name": "Grad-CAM @ blocks.11.norm1", "method": "gradcam", "layer": "blocks.11.norm1", "shifts": [0]}
    with pytest.raises(UserError, match=r"names layer 'blocks.11.norm1', which this model does not have.*05_gradcam"):
        resolve_explanation({**meta, "explanation": foreign}, model)
    with pytest.raises(UserError, match="cannot be read"):
        resolve_explanation({**meta, "explanation": {"junk": 1}}, model)
    ckpt = tmp_path / "foreign.pt"
    shutil.copy(corpus["ckpt"], ckpt)
    update_meta(ckpt, explanation=foreign)
    code, stdout, err = _run(capsys, "--image_path", corpus["good"]["palette.png"], "--model_path", ckpt, "-o", tmp_path)
    assert code == 2 and stdout == "" and len(err) == 1 and "foreign.pt" in err[0] and "--layer" in err[0]
    assert not list(tmp_path.glob("*.png"))  # refused before any work
    code, stdout, _ = _run(capsys, "--image_path", corpus["good"]["palette.png"], "--model_path", ckpt, "--json",
                           "--layer", "layer4", "-o", tmp_path)
    assert code == 0 and json.loads(stdout)["layer_source"] == "--layer"  # the named way out works


def test_outputs_are_planned_from_the_inputs_and_output(tmp_path):
    one, two = tmp_path / "a.png", tmp_path / "b.png"
    assert predict.plan_outputs([one], None) == predict.OutputPlan(batch=False)
    assert predict.plan_outputs([one], str(tmp_path / "o.png")).single_png == tmp_path / "o.png"
    table = predict.plan_outputs([one, two], str(tmp_path / "r.csv"))
    assert table.batch and table.csv_path == tmp_path / "r.csv" and table.overlay_dir == tmp_path / "r_overlays"
    assert predict.plan_outputs([one], str(tmp_path / "r.csv")).batch  # a table asked for: batch, even for one
    assert predict.plan_outputs([one, two], f"{tmp_path}/maps/").overlay_dir == tmp_path / "maps"
    for inputs, output in (([one, two], "x.png"), ([one], "x.jpg")):
        with pytest.raises(UserError, match="--output"):
            predict.plan_outputs(inputs, str(tmp_path / output))


def test_the_map_of_a_vit():
    from utils.train.vit import build_vit

    vit, _ = build_vit("none", 2, 64, seed=0)
    meta = {"arch": "vit_tiny"}
    assert main_explanation(meta, vit) == VIT_EXPLANATION_CANDIDATES[0]
    assert main_explanation(meta, vit, "blocks.9.norm1")["layer"] == "blocks.9.norm1"
    rollout = {"name": "attention rollout", "method": "rollout", "layer": "blocks", "shifts": [0]}
    assert main_explanation({**meta, "explanation": rollout}, vit)["method"] == "rollout"


def test_a_checkpoint_without_a_chosen_threshold_needs_one(corpus, capsys, tmp_path):
    unchosen = bad_inputs.write_tiny_checkpoint(tmp_path / "unchosen.pt", threshold=0.5, threshold_rule=None)
    code, stdout, err = _run(capsys, "--image_path", corpus["good"]["gray_L.jpeg"], "--model_path", unchosen,
                             "--no-overlay")
    assert code == 2 and stdout == "" and len(err) == 1 and "no operating threshold chosen on validation" in err[0]
    assert "unchosen.pt" in err[0] and "--threshold" in err[0]  # names the file and the way out
    code, stdout, _ = _run(capsys, "--image_path", corpus["good"]["gray_L.jpeg"], "--model_path", unchosen,
                           "--no-overlay", "--threshold", "0.3", "--json")
    assert code == 0 and json.loads(stdout)["threshold_source"] == "--threshold"


def test_images_unlike_the_training_data_get_a_warning(corpus, capsys, tmp_path):
    small = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40)).astype(np.uint8)).save(small)
    code, stdout, err = _run(capsys, "--image_path", corpus["good"]["rgb.png"], small, "--model_path", corpus["ckpt"],
                             "--no-overlay", "--json")
    rows = {Path(r["image"]).name: r for r in json.loads(stdout)}
    assert code == 0 and "colour image" in rows["rgb.png"]["warnings"] and "40x30 px" in rows["small.png"]["warnings"]
    assert sum("warning:" in line for line in err) == 2


def test_unwritable_output_names_the_output(corpus, capsys, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder is needed: nothing can be written below it, not even by root\n")
    for out in (blocker / "x.png", blocker / "table.csv"):
        extra = [corpus["good"]["la.png"]] if out.suffix == ".csv" else []
        code, stdout, err = _run(capsys, "--image_path", corpus["good"]["gray_L.jpeg"], *extra, "--model_path",
                                 corpus["ckpt"], "--output", out)
        assert code == 2 and stdout == "" and len(err) == 1 and "cannot write" in err[0] and str(out) in err[0]
        assert str(corpus["good"]["gray_L.jpeg"]) not in err[0]  # the output is to blame, not the input image


def test_batch_with_a_bad_file(corpus, loaded, capsys, tmp_path):
    folder = tmp_path / "in"
    (folder / "NORMAL").mkdir(parents=True)
    (folder / "PNEUMONIA").mkdir()
    shutil.copy(corpus["good"]["gray_L.jpeg"], folder / "NORMAL" / "p1.png")
    shutil.copy(corpus["good"]["cmyk.jpeg"], folder / "PNEUMONIA" / "p1.jpeg")  # same stem: no overlay clash
    shutil.copy(corpus["bad"]["truncated_jpeg"], folder / "PNEUMONIA" / "broken.jpeg")
    out = tmp_path / "res" / "table.csv"
    code, stdout, err = _run(capsys, "--image_path", folder, corpus["bad"]["missing"], "-r",
                             "--model_path", corpus["ckpt"], "--output", out)
    assert code == 1 and stdout == ""
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 2 and "broken.jpeg" in errors[0] and "truncated" in errors[0] and "not found" in errors[1]
    assert "2 of 4 images predicted" in err[-1]
    rows = list(csv.DictReader(out.open()))
    assert [r["image"].split("/")[-1] for r in rows] == ["p1.png", "p1.jpeg"]
    overlays = sorted((tmp_path / "res" / "table_overlays").iterdir())
    assert [p.name for p in overlays] == ["p1_gradcam-2.png", "p1_gradcam.png"]
    for p in overlays:
        _assert_png(p)
    model, meta = loaded
    ref = predict_proba(model, np.stack([read_image(folder / "NORMAL" / "p1.png", 64)]), meta)[0]
    assert abs(float(rows[0]["probability"]) - ref) < 1e-5


def test_batch_json_and_csv_on_stdout(corpus, capsys, tmp_path):
    imgs = [corpus["good"][n] for n in ("la.png", "one_bit.png", "sixteen_bit.png")]
    code, stdout, err = _run(capsys, "--image_path", *imgs, "--model_path", corpus["ckpt"], "--json", "--no-overlay")
    results = json.loads(stdout)
    assert code == 0 and isinstance(results, list) and [r["image"] for r in results] == [str(p) for p in imgs]
    assert not any(line.startswith("error:") for line in err)
    code, stdout, err = _run(capsys, "--image_path", *imgs[:2], "--model_path", corpus["ckpt"], "-o", tmp_path / "ov")
    rows = list(csv.DictReader(io.StringIO(stdout)))
    assert code == 0 and len(rows) == 2 and rows[0]["overlay"] == str(tmp_path / "ov" / "la_gradcam.png")
    assert abs(float(rows[0]["probability"]) - results[0]["probability"]) < 1e-6


def test_batch_where_everything_fails(corpus, capsys, tmp_path):
    (tmp_path / "empty_dir").mkdir()
    code, stdout, err = _run(capsys, "--image_path", corpus["bad"]["text"], corpus["bad"]["empty"], tmp_path / "empty_dir",
                             "--model_path", corpus["ckpt"], "-o", tmp_path / "r.csv")
    assert code == 2 and stdout == "" and not (tmp_path / "r.csv").exists()
    assert len(err) == 4 and all(line.startswith("error:") for line in err) and "holds no images" in err[0]


@pytest.mark.parametrize("case, words", [
    ("missing", "not found"), ("folder", "is a folder"), ("empty", "empty"), ("text", "not an image"),
    ("truncated_jpeg", "truncated"), ("truncated_png", "truncated"), ("huge_png", "50,000,000"),
    ("big_png", "above the limit"),
])
def test_bad_images(corpus, capsys, case, words):
    code, stdout, err = _run(capsys, "--image_path", corpus["bad"][case], "--model_path", corpus["ckpt"])
    if case == "folder":  # a folder means batch mode: no images in it
        words = "holds no images"
    assert code == 2 and stdout == "" and len(err) == 1 and err[0].startswith("error:") and words in err[0]


@pytest.mark.parametrize("case, words", [
    ("missing", "not found"), ("folder", "folder"), ("empty", "empty"),
    ("text", ("cannot read checkpoint", "refused to load")),
    ("resnet34", "'resnet34' model"), ("wrong_shapes", "do not match"), ("no_meta", "no usable metadata"),
    ("bare_state_dict", "not a project checkpoint"), ("pickled_object", "weights_only=True rejected"),
    ("bad_image_size", "image_size 0 is not a whole number"),
])
def test_bad_checkpoints(corpus, bad_ckpts, capsys, case, words):
    code, stdout, err = _run(capsys, "--image_path", corpus["good"]["gray_L.jpeg"], "--model_path", bad_ckpts[case])
    words = (words,) if isinstance(words, str) else words  # a text file reads as a refused legacy pickle
    assert code == 2 and stdout == "" and len(err) == 1 and err[0].startswith("error:")
    assert str(bad_ckpts[case]) in err[0] and any(w in err[0] for w in words)


@pytest.mark.parametrize("args, words", [
    (["--threshold", "1"], "strictly between 0 and 1"), (["--threshold", "0"], "strictly between"),
    (["--threshold", "abc"], "strictly between"), (["--threshold", "nan"], "strictly between"),
    (["--layer", "fc"], "not a layer Grad-CAM can read"), (["--layer", "nope"], "not a layer Grad-CAM can read"),
    (["--device", "tpu"], "unknown device"), (["--bogus"], "unrecognized arguments"),
    (["-o", "x.txt"], ".png path"),
])
def test_usage_errors(corpus, capsys, args, words):
    code, stdout, err = _run(capsys, "--image_path", corpus["good"]["gray_L.jpeg"], "--model_path", corpus["ckpt"], *args)
    assert code == 2 and stdout == "" and len(err) == 1 and err[0].startswith("error:") and words in err[0]


def test_required_argument_help_and_cuda(corpus, capsys):
    code, _, err = _run(capsys)
    assert code == 2 and len(err) == 1 and "--image_path" in err[0]
    code, stdout, _ = _run(capsys, "--help")
    assert code == 0 and "exit codes:" in stdout and "assets/predictions" in stdout
    code, _, err = _run(capsys, "--image_path", corpus["good"]["gray_L.jpeg"], "--model_path", corpus["ckpt"],
                        "--device", "cuda", "--no-overlay")
    assert code == (0 if torch.cuda.is_available() else 2)
    if code:
        assert len(err) == 1 and "no CUDA GPU" in err[0]


def test_never_overwrites_inputs(corpus, capsys, tmp_path):
    img = tmp_path / "x.png"
    shutil.copy(corpus["good"]["gray_L.jpeg"], img)
    before = img.read_bytes()
    code, _, err = _run(capsys, "--image_path", img, "--model_path", corpus["ckpt"], "--output", img)
    assert code == 2 and "will not be overwritten" in err[0] and img.read_bytes() == before
    victim = tmp_path / "x_gradcam.png"  # an input that has an overlay's name
    shutil.copy(corpus["good"]["gray_L.jpeg"], victim)
    code, stdout, _ = _run(capsys, "--image_path", img, victim, "--model_path", corpus["ckpt"], "-o", tmp_path)
    assert code == 0 and victim.read_bytes() == before
    assert {r["overlay"] for r in csv.DictReader(io.StringIO(stdout))} == {
        str(tmp_path / "x_gradcam-2.png"), str(tmp_path / "x_gradcam_gradcam.png")}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_predict_images_releases_hooks(corpus, loaded, tmp_path, monkeypatch):
    model, meta = loaded
    model.train()  # mode flags are restored too
    paths = [corpus["good"]["gray_L.jpeg"], corpus["bad"]["empty"]]
    results, failures = predict_images(model, meta, paths, overlays={paths[0]: tmp_path / "o.png"})
    assert len(results) == 1 and len(failures) == 1 and "empty" in failures[0][1]
    assert _no_hooks(model) and model.training and all(p.grad is None for p in model.parameters())
    _assert_png(tmp_path / "o.png")

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(predict, "save_overlay_figure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict_images(model, meta, paths[:1], overlays={paths[0]: tmp_path / "o2.png"})
    assert _no_hooks(model) and model.training and not (tmp_path / "o2.png").exists()
    model.eval()


def test_subprocess_bad_input_is_one_line(corpus):
    proc = subprocess.run([sys.executable, "-m", "utils.deploy.predict", "--image_path", str(corpus["bad"]["text"]),
                           "--model_path", str(corpus["ckpt"]), "--no-overlay"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
                          timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error:") and "not an image" in proc.stderr
    assert "Traceback" not in proc.stderr
