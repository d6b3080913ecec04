"""The script that made the shipped phantom backbones still runs end to end (tiny CPU smoke runs), and the shipped
backbones say what they were trained on — labels only, never a lesion mask."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from utils.checkpoint import load_checkpoint
from utils.paths import shipped
from utils.train.model import build_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_phantom_backbone.py"


def _script():
    spec = importlib.util.spec_from_file_location("pretrain", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_label_only_smoke_run_never_uses_the_masks(tmp_path, monkeypatch):
    mod = _script()
    seen = []
    real = mod.augment_pair
    monkeypatch.setattr(mod, "augment_pair", lambda x, m, *a, **k: (seen.append(m), real(x, m, *a, **k))[1])
    out, report = tmp_path / "backbone.pt", tmp_path / "report.json"
    assert mod.main(["--smoke", "--size", "64", "--workers", "1", "--out", str(out), "--report", str(report)]) == 0
    assert seen and all(m is None for m in seen)  # the lesion masks never reached the training loop
    meta = load_checkpoint(out)["meta"]
    assert meta["uses_lesion_masks"] is False and meta["pretext"].startswith("labels only")
    assert meta["corpus"]["train"]["seed"] == 7 and "phantom_spec" in meta["corpus"]
    ckpt = load_checkpoint(out)
    assert not any(k.startswith("aux") for k in ckpt["model"])  # auxiliary heads are not shipped
    rep = json.loads(report.read_text())
    assert 0.0 <= rep["layer3_near"] <= 1.0 and rep["train_images"] > 0
    model, desc = build_model(str(out))
    assert "checkpoint" in desc
    assert torch.equal(model.conv1.weight.detach(), ckpt["model"]["conv1.weight"].float())


def test_the_mask_supervised_ablation_says_so(tmp_path):
    out = tmp_path / "ablation.pt"
    assert _script().main(["--smoke", "--size", "64", "--workers", "1", "--pretext", "label+lesion-map",
                           "--out", str(out)]) == 0
    meta = load_checkpoint(out)["meta"]
    assert meta["uses_lesion_masks"] is True and meta["pretext"].startswith("label + layer3/layer4")


def test_vit_smoke_run(tmp_path):
    out = tmp_path / "vit.pt"
    assert _script().main(["--smoke", "--arch", "vit_tiny", "--size", "64", "--workers", "1", "--out", str(out)]) == 0
    meta = load_checkpoint(out)["meta"]
    assert meta["arch"] == "vit_tiny" and meta["uses_lesion_masks"] is False
    assert 0.0 <= meta["measured"]["rollout_near"] <= 1.0
    with pytest.raises(SystemExit):
        _script().main(["--smoke", "--arch", "vit_tiny", "--pretext", "label+lesion-map", "--out", str(out)])


@pytest.mark.parametrize("name", ["pretrained_backbone", "vit_backbone"])
def test_shipped_backbones_were_trained_on_labels_only(name):
    meta = load_checkpoint(shipped(name))["meta"]
    assert meta["script"] == "scripts/pretrain_phantom_backbone.py"
    assert meta["uses_lesion_masks"] is False and meta["pretext"].startswith("labels only")
    assert meta["corpus"]["train"]["seed"] not in (2024, 2025)  # disjoint from the demo data's seeds
    # measured on held-out phantoms when it was made (ResNet-18 0.973, ViT-Tiny 0.882: docs/PHANTOM_BACKBONE.md)
    assert meta["measured"]["val_auc"] > {"pretrained_backbone": 0.95, "vit_backbone": 0.85}[name]


def test_shipped_vit_backbone_fits_the_bound_and_builds():
    path = shipped("vit_backbone")
    assert path.stat().st_size <= 25e6  # the bound for a shipped ViT
    meta = load_checkpoint(path)["meta"]
    assert meta["arch"] == "vit_tiny" and meta["image_size"] == 128
    model, desc = build_model("phantom", arch="vit_tiny", image_size=128, seed=0)
    assert "phantom-pretrained ViT" in desc
