"""The training engine: exact resume, restart, foreign checkpoints, determinism, and that it learns."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from utils.checkpoint import make_meta
from utils.config import IMAGENET_MEAN, IMAGENET_STD
from utils.data import phantom
from utils.train import engine as T
from utils.train.engine import DeviceData, evaluate, fit
from utils.train.model import build_model, load_model

S = 32
TIMING = ["seconds", "images_per_s"]
PHASE = {"epochs": 2, "lr": 1e-3, "batch_size": 8, "seed": 3, "freeze_backbone": False, "discriminative": True,
         "lr_decay": 0.5, "step_size": 1, "gamma": 0.5, "weight_decay": 1e-4}



def _meta(fingerprint: str = "fpA", phase: str = "phase2") -> dict:
    return make_meta(image_size=S, mean=IMAGENET_MEAN, std=IMAGENET_STD, data_fingerprint=fingerprint,
                     phase=phase, init="random", weights="none", profile="test")


def _data(n: int, seed: int) -> DeviceData:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 200, (n, 1, S, S), dtype=np.uint8)
    x[y == 1, :, S // 4:S // 2, S // 4:S // 2] = 255  # a learnable "lesion"
    return DeviceData(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))


TRAIN, VAL = _data(24, 0), _data(12, 1)


class TinyResNet(nn.Module):
    """A few-thousand-parameter network with ResNet-18's layer names (conv1, bn1, layer1-4, fc), so freezing,
    discriminative groups and every line of ``fit`` apply to it, at a fraction of ResNet-18's cost."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4)
        block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())  # noqa: E731
        self.layer1, self.layer2, self.layer3, self.layer4 = block(4, 4), block(4, 8), block(8, 8), block(8, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _fit(folder, phase=None, meta=None, restart=False, model=None):
    model = model or TinyResNet(seed=0)
    res = fit(model, TRAIN, VAL, {**PHASE, **(phase or {})}, meta or _meta(), folder / "last.pt", folder / "best.pt",
              folder / "history.csv", restart=restart, progress=False)
    return res, model


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], dict):
            _same_state(a[k], b[k])
        elif isinstance(a[k], list) and a[k] and isinstance(a[k][0], dict):
            for x, y in zip(a[k], b[k]):
                _same_state(x, y)
        else:
            assert a[k] == b[k], k


def _history(res) -> pd.DataFrame:
    return res.history.drop(columns=TIMING)


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    full, model_full = _fit(tmp_path / "full")
    assert full.resumed_from == 0 and list(full.history["epoch"]) == [1, 2]

    calls = {"n": 0}
    real = T.train_one_epoch

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the user stops the notebook during epoch 2
        return real(*a, **k)
    monkeypatch.setattr(T, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "cut")
    monkeypatch.undo()
    assert len(pd.read_csv(tmp_path / "cut/history.csv")) == 1

    resumed, model_resumed = _fit(tmp_path / "cut", model=TinyResNet(seed=1))  # a fresh session
    assert resumed.resumed_from == 1
    pd.testing.assert_frame_equal(_history(resumed), _history(full), check_exact=True)
    _same_state(model_resumed.state_dict(), model_full.state_dict())
    a = torch.load(tmp_path / "full/last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut/last.pt", weights_only=True)
    _same_state(a["optimizer"], b["optimizer"])
    assert a["scheduler"] == b["scheduler"] and torch.equal(a["rng"], b["rng"]) and a["epoch"] == b["epoch"] == 2
    assert b["optimizer"]["param_groups"][0]["lr"] == pytest.approx(PHASE["lr"] * PHASE["gamma"] ** 2)
    assert resumed.best_epoch == full.best_epoch
    _same_state(torch.load(tmp_path / "full/best.pt", weights_only=True)["model"],
                torch.load(tmp_path / "cut/best.pt", weights_only=True)["model"])
    assert len(pd.read_csv(tmp_path / "cut/history.csv")) == 2

    done, _ = _fit(tmp_path / "cut")  # everything trained already: nothing to do
    assert done.resumed_from == 2
    pd.testing.assert_frame_equal(_history(done), _history(full), check_exact=True)


def test_restart_foreign_checkpoints_and_determinism(tmp_path, capsys):
    one = {"epochs": 1}
    first, m1 = _fit(tmp_path / "a", one)
    again, m2 = _fit(tmp_path / "b", one)  # same seed, same data, CPU: the same history and weights
    pd.testing.assert_frame_equal(_history(first), _history(again), check_exact=True)
    _same_state(m1.state_dict(), m2.state_dict())

    restarted, m3 = _fit(tmp_path / "a", one, restart=True)
    assert restarted.resumed_from == 0 and len(restarted.history) == 1
    pd.testing.assert_frame_equal(_history(restarted), _history(first), check_exact=True)
    _same_state(m3.state_dict(), m1.state_dict())

    capsys.readouterr()
    other, _ = _fit(tmp_path / "a", one, meta=_meta(fingerprint="fpB"))  # other data: not resumed
    assert other.resumed_from == 0 and list(other.history["epoch"]) == [1]
    assert "from another run" in capsys.readouterr().out
    assert torch.load(tmp_path / "a/last.pt", weights_only=True)["meta"]["data_fingerprint"] == "fpB"

    changed, _ = _fit(tmp_path / "a", {"epochs": 1, "lr": 5e-4}, meta=_meta(fingerprint="fpB"))  # other settings
    assert changed.resumed_from == 0
    assert "lr changed" in capsys.readouterr().out


def test_checkpoints_are_plain_and_carry_metadata(tmp_path):
    res, _ = _fit(tmp_path, {"epochs": 1})
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    for ck in (best, last):
        assert ck["meta"]["data_fingerprint"] == "fpA" and ck["meta"]["image_size"] == S
        assert ck["meta"]["mean"] == list(IMAGENET_MEAN) and ck["meta"]["phase"] == "phase2"
    assert best["meta"]["epoch"] == 1 and best["meta"]["val_auc"] == pytest.approx(res.history["val_auc"][0])
    assert {"optimizer", "scheduler", "rng", "history", "epoch", "best_epoch"} <= set(last)
    assert res.best_path == tmp_path / "best.pt"
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist.columns[:3]) == ["phase", "epoch", "lr"]
    assert {"train_loss", "val_loss", "val_auc", "val_recall", "val_specificity"} <= set(hist.columns)


def test_model_selection_copes_with_one_class_validation():
    nan_row = {"val_auc": float("nan"), "val_recall": 0.9}
    assert T._score({"val_auc": 0.6, "val_recall": 0.1}) > T._score(nan_row)
    assert T._score({"val_auc": float("nan"), "val_recall": 1.0}) > T._score(nan_row)
    assert T._score({"val_auc": 0.8, "val_recall": 0.9}) > T._score({"val_auc": 0.8, "val_recall": 0.5})


def test_a_short_cpu_fit_learns_easy_phantoms(tmp_path):
    spec = phantom.spec_for("easy", 64)
    tr = phantom.stack(phantom.generate(40, 0, spec))
    va = phantom.stack(phantom.generate(20, 1, spec, first_pid=1000))
    dev = lambda a: DeviceData(torch.from_numpy(a["images"]).unsqueeze(1), torch.from_numpy(a["labels"]))  # noqa: E731
    train, val = dev(tr), dev(va)
    model, _ = build_model("phantom", seed=0)
    with torch.no_grad():  # a neutral head: every image scores 0.5, an AUC of exactly 0.5 before training
        model.fc.weight.zero_()
        model.fc.bias.zero_()
    meta = make_meta(image_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD, phase="phase1", data_fingerprint="x",
                     init="phantom")
    before = evaluate(model, val, meta)["val_auc"]
    assert before == 0.5
    res = fit(model, train, val, {"epochs": 2, "lr": 1e-3, "batch_size": 32, "seed": 0, "freeze_backbone": True},
              meta, tmp_path / "l.pt", tmp_path / "b.pt", tmp_path / "h.csv", progress=False)
    best = res.history["val_auc"].max()
    assert best > 0.75, res.history["val_auc"].tolist()
    reloaded, meta_best = load_model(tmp_path / "b.pt")  # the best checkpoint is the best epoch's model
    assert meta_best["epoch"] == res.best_epoch
    assert evaluate(reloaded, val, meta_best)["val_auc"] == pytest.approx(best, abs=1e-6)


def test_a_last_batch_of_one_image_is_folded_into_the_previous_one():
    """BatchNorm cannot train on a batch of one 1×1 feature map: such a batch must never be formed."""
    model = TinyResNet()
    model.layer4 = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(8))  # 1×1 maps: a batch of 1 raises
    data = _data(9, 3)  # batch 8 → batches of 8 and 1 without the fold
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    seen = []
    model.register_forward_hook(lambda m, inp, out: seen.append(len(out)))
    stats = T.train_one_epoch(model, data, opt, nn.CrossEntropyLoss(), _meta(), 8, torch.Generator().manual_seed(0),
                              progress=False)
    assert seen == [9] and np.isfinite(stats["train_loss"])
