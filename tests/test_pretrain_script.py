"""The script that made the shipped phantom backbone still runs end to end (tiny CPU smoke run)."""
import importlib.util
import json
from pathlib import Path

import torch

from utils.checkpoint import load_checkpoint
from utils.train.model import build_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_phantom_backbone.py"


def test_pretrain_smoke_run_writes_a_loadable_backbone(tmp_path):
    spec = importlib.util.spec_from_file_location("pretrain", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out, report = tmp_path / "backbone.pt", tmp_path / "report.json"
    assert mod.main(["--smoke", "--size", "64", "--workers", "1", "--out", str(out), "--report", str(report)]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt["meta"]["pretext"].startswith("label + layer3/layer4")
    assert not any(k.startswith("aux") for k in ckpt["model"])  # auxiliary heads are not shipped
    rep = json.loads(report.read_text())
    assert 0.0 <= rep["layer3_near"] <= 1.0 and rep["train_images"] > 0
    model, desc = build_model(str(out))
    assert "checkpoint" in desc
    assert torch.equal(model.conv1.weight.detach(), ckpt["model"]["conv1.weight"].float())


def test_shipped_backbone_carries_its_measurements():
    meta = load_checkpoint(Path(__file__).resolve().parents[1] / "model" / "phantom_resnet18_pretrained.pt")["meta"]
    assert meta["script"] == "scripts/pretrain_phantom_backbone.py"
    assert meta["measured"]["layer3_near"] > 0.7 and meta["measured"]["val_auc"] > 0.99
