"""``pneumonia-predict --int8``: the INT8 model decides, Grad-CAM only from its FP32 parent (or no overlay)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

from utils.checkpoint import load_checkpoint, make_meta, save_checkpoint, state_fingerprint
from utils.config import IMAGENET_MEAN, IMAGENET_STD
from utils.data import phantom
from utils.data.images import read_image
from utils.deploy.int8 import int8_meta, load_int8, quantize_int8, write_int8_meta
from utils.deploy.predict import FIELDS, INT8_FIELDS, main
from utils.paths import shipped
from utils.train.model import predict_proba

SIZE = 128
INT8_THRESHOLD = 0.37  # distinct from the FP32 checkpoint's, to see which one is used


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An FP32 checkpoint (the shipped phantom-pretrained ResNet-18 with its head), its INT8 model, phantom PNGs."""
    from torchvision.models import resnet18

    root = tmp_path_factory.mktemp("int8")
    state = load_checkpoint(shipped("pretrained_backbone"), require_meta=False)["model"]
    model = resnet18(num_classes=2)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval()
    spec = {"name": "Grad-CAM @ layer3", "method": "gradcam", "layer": "layer3", "shifts": [0]}
    meta = make_meta(image_size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD, threshold=0.6, threshold_rule="fp32 rule",
                     explanation=spec, gradcam_layer="layer3")
    fp32 = save_checkpoint(root / "fp32.pt", {"model": model.state_dict(), "meta": meta})
    other_model = resnet18(num_classes=2)
    other = save_checkpoint(root / "other.pt", {"model": other_model.state_dict(), "meta": meta})
    spec = phantom.spec_for("default", SIZE)
    calib = phantom.stack(phantom.generate(6, seed=5, spec=spec))["images"]
    int8 = quantize_int8(model, calib, meta, root / "int8.onnx")
    write_int8_meta(int8, int8_meta(meta, threshold=INT8_THRESHOLD, fp32_fingerprint=state_fingerprint(model.state_dict()),
                                    calibration={"split": "phantoms seed 5", "n_images": len(calib)},
                                    threshold_rule="int8 rule"))
    imgs = phantom.stack(phantom.generate(2, seed=9, spec=spec))["images"][:2]
    pngs = []
    for k, im in enumerate(imgs):
        pngs.append(root / f"x{k}.png")
        Image.fromarray(im).save(pngs[-1])
    return {"fp32": fp32, "other": other, "int8": int8, "pngs": pngs, "root": root}


@pytest.fixture(autouse=True)
def _project_root(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path))  # default outputs land in tmp, not the repo


def _run(capsys, *args) -> tuple[int, str, list[str]]:
    return run_cli(capsys, main, *args)


def test_int8_json_without_fp32_has_no_overlay_and_says_why(files, capsys, tmp_path):
    img = files["pngs"][0]
    code, stdout, err = _run(capsys, "--image_path", img, "--int8", files["int8"], "--json")
    assert code == 0 and not err
    r = json.loads(stdout)
    ref = float(load_int8(files["int8"]).predict_proba(read_image(img, SIZE)[None])[0])
    assert abs(r["probability"] - ref) < 1e-6
    assert (r["threshold"], r["threshold_source"], r["precision"]) == (INT8_THRESHOLD, "INT8 model: int8 rule", "int8")
    assert r["diagnosis"] == ("PNEUMONIA" if ref >= INT8_THRESHOLD else "NORMAL")
    assert r["overlay"] is None and r["layer"] is None and r["explained_by"] is None
    assert "no gradients" in r["overlay_note"] and "--model_path" in r["overlay_note"]
    assert r["model_path"] == str(files["int8"]) and len(r["fingerprint"]) == 16
    assert not (tmp_path / "assets").exists()  # no figure was written anywhere


def test_int8_with_fp32_parent_explains_with_it(files, capsys, tmp_path):
    img, out = files["pngs"][1], tmp_path / "fig.png"
    code, stdout, err = _run(capsys, "--image_path", img, "--int8", files["int8"], "--model_path", files["fp32"],
                             "-o", out)
    assert code == 0 and not err
    assert "INT8" in stdout and "of the FP32 checkpoint" in stdout and "Grad-CAM @ layer3 (from checkpoint" in stdout
    assert f"{INT8_THRESHOLD:.3f}" in stdout and str(out) in stdout
    with Image.open(out) as im:
        assert im.format == "PNG"
    code, stdout, _ = _run(capsys, "--image_path", img, "--int8", files["int8"], "--model_path", files["fp32"],
                           "--json", "-o", tmp_path / "fig2.png")
    r = json.loads(stdout)
    ref = float(load_int8(files["int8"]).predict_proba(read_image(img, SIZE)[None])[0])
    assert abs(r["probability"] - ref) < 1e-6  # the INT8 model decides, the FP32 model only explains
    assert abs(r["probability"] - float(predict_proba(load_model_fp32(files), read_image(img, SIZE)[None],
                                                      {"mean": IMAGENET_MEAN, "std": IMAGENET_STD})[0])) > 0
    assert r["explained_by"] == str(files["fp32"]) and r["layer"] == "layer3" and r["overlay_note"] is None


def load_model_fp32(files):
    from utils.train.model import load_model

    return load_model(files["fp32"])[0]


def test_int8_batch_csv(files, capsys, tmp_path):
    out = tmp_path / "t.csv"
    code, stdout, err = _run(capsys, "--image_path", *files["pngs"], "--int8", files["int8"], "-o", out)
    assert code == 0 and stdout == "" and "no overlays (INT8" in err[-1]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and tuple(rows[0]) == FIELDS + INT8_FIELDS
    assert all(r["precision"] == "int8" and r["overlay"] == "" and float(r["threshold"]) == INT8_THRESHOLD
               for r in rows)


def test_int8_mistakes_are_one_line(files, capsys, tmp_path):
    img = files["pngs"][0]
    cases = [
        (["--int8", files["fp32"]], "cannot read"),
        (["--model_path", files["int8"]], "is an ONNX model"),
        (["--int8", tmp_path / "nope.onnx"], "INT8 model not found"),
        (["--int8"], "run notebooks/07_int8_deployment.ipynb first"),  # the default artefact is missing here
        (["--int8", files["int8"], "--model_path", files["other"]], "was quantised from"),
        (["--int8", files["int8"], "--layer", "layer2"], "--layer needs a map"),
    ]
    for args, words in cases:
        code, stdout, err = _run(capsys, "--image_path", img, *args)
        assert code == 2 and stdout == "" and len(err) == 1 and err[0].startswith("error:") and words in err[0], args


def test_int8_subprocess_end_to_end(files):
    proc = subprocess.run([sys.executable, "-m", "utils.deploy.predict", "--image_path", str(files["pngs"][0]),
                           "--int8", str(files["int8"]), "--json"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, timeout=300,
                          env={**os.environ, "CXR_PROJECT_ROOT": str(files["root"])})
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["precision"] == "int8" and r["diagnosis"] in ("NORMAL", "PNEUMONIA") and 0 <= r["probability"] <= 1
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
    assert np.isclose(r["threshold"], INT8_THRESHOLD)
