"""The network: weights (none / imagenet offline / phantom / path), preprocessing, freezing, LR groups."""
from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models

from utils.checkpoint import load_checkpoint, make_meta, save_checkpoint
from utils.config import IMAGENET_MEAN, IMAGENET_STD
from utils.errors import UserError
from utils.paths import shipped
from utils.train.engine import DeviceData, class_weights, setup_phase, train_one_epoch
from utils.train.model import (
    LAYER_GROUPS,
    batched_logits,
    build_model,
    freeze_backbone,
    layer_groups,
    load_model,
    param_groups,
    pneumonia_probability,
    predict_logits,
    predict_proba,
    preprocess,
    resolve_device,
    set_backbone_bn_eval,
)

S = 32
META = make_meta(image_size=S, mean=IMAGENET_MEAN, std=IMAGENET_STD)



def _batch(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, S, S), dtype=np.uint8))


def test_build_none_shapes():
    model, desc = build_model("none", seed=0)
    assert desc == "random initialisation" and model.fc.out_features == 2
    out = model.eval()(preprocess(_batch()))
    assert out.shape == (4, 2) and torch.isfinite(out).all()
    again, _ = build_model("none", seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_imagenet_offline_never_tries_the_download(monkeypatch, capsys, tmp_path):
    """Offline and not cached: one line of ours, and no library download (which would print its own lines)."""
    import utils.train.model as model_module

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache
    monkeypatch.setattr(model_module, "is_online", lambda host, timeout=3.0: False)
    monkeypatch.setattr(models.ResNet18_Weights, "get_state_dict", lambda *a, **k: pytest.fail("tried to download"))
    model, desc = build_model("imagenet", seed=0)
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("ImageNet weights unavailable (offline") and not captured.err
    assert "random initialisation" in desc


def test_imagenet_download_failure_falls_back_with_one_line(monkeypatch, capsys, tmp_path):
    import utils.train.model as model_module

    def offline(self, *a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(model_module, "is_online", lambda host, timeout=3.0: True)  # reachable, then it fails
    monkeypatch.setattr(models.ResNet18_Weights, "get_state_dict", offline)
    model, desc = build_model("imagenet", seed=0)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "ImageNet weights unavailable" in out[0] and "URLError" in out[0]
    assert "random initialisation" in out[0] and "random initialisation" in desc
    logits = model.eval()(preprocess(_batch()))
    assert logits.shape == (4, 2) and torch.isfinite(logits).all()


def test_phantom_backbone_is_loaded_and_head_is_fresh():
    path = shipped("pretrained_backbone")
    assert path.exists(), "the shipped phantom backbone must be in the repository"
    model, desc = build_model("phantom", seed=0)
    random, _ = build_model("none", seed=0)
    assert "phantom" in desc
    stored = load_checkpoint(path, require_meta=False, allow_state_dict=True)["model"]
    sd, rd = model.state_dict(), random.state_dict()
    for k, v in sd.items():
        if k.startswith("fc."):
            assert torch.equal(v, rd[k])  # a fresh head, the same as a random model with this seed
        elif k in stored:
            assert torch.equal(v, stored[k].float()), k
    assert not torch.equal(sd["conv1.weight"], rd["conv1.weight"])
    assert not torch.equal(sd["layer4.1.conv2.weight"], rd["layer4.1.conv2.weight"])


def test_path_weights_accept_resnet18_and_refuse_others(tmp_path):
    donor, _ = build_model("none", seed=5)
    torch.save(donor.state_dict(), tmp_path / "bare.pt")  # a bare state dict
    save_checkpoint(tmp_path / "ckpt.pt", {"model": donor.state_dict(), "meta": META})
    for name in ("bare.pt", "ckpt.pt"):
        model, desc = build_model(str(tmp_path / name), seed=0)
        assert str(tmp_path / name) in desc
        assert torch.equal(model.state_dict()["layer2.0.conv1.weight"], donor.state_dict()["layer2.0.conv1.weight"])

    torch.save({"model": {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}}, tmp_path / "linear.pt")
    other = models.resnet18(weights=None)
    other.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # same names, other shapes
    torch.save({"model": other.state_dict()}, tmp_path / "gray.pt")
    for name, words in (("linear.pt", "do not fit a ResNet-18"), ("gray.pt", "conv1.weight"),
                        ("missing.pt", "unknown weights")):
        with pytest.raises(UserError, match=words) as exc:
            build_model(str(tmp_path / name))
        assert "\n" not in str(exc.value)


def test_preprocess_shapes_and_normalisation():
    x = torch.zeros(2, 1, S, S, dtype=torch.uint8)
    x[0] = 255
    out = preprocess(x, IMAGENET_MEAN, IMAGENET_STD)
    assert out.shape == (2, 3, S, S) and out.dtype == torch.float32
    for c in range(3):
        assert torch.allclose(out[0, c], torch.tensor((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))
        assert torch.allclose(out[1, c], torch.tensor(-IMAGENET_MEAN[c] / IMAGENET_STD[c]))
    b = _batch(3)
    assert torch.equal(preprocess(b), preprocess(b.unsqueeze(1)))  # (N,S,S) == (N,1,S,S)
    assert torch.allclose(preprocess(b), preprocess(b.float() / 255.0), atol=1e-6)  # float input in [0, 1]
    same = preprocess(b, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert torch.allclose(same[:, 0], (b.float() / 255 - 0.5) / 0.25)


def _snapshot_bn(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


def test_phase1_freezing_really_freezes():
    model, _ = build_model("phantom", seed=0)
    opt, _ = setup_phase(model, {"lr": 1e-3, "freeze_backbone": True})
    assert [g["name"] for g in opt.param_groups] == ["fc"]
    assert all(p.requires_grad == n.startswith("fc.") for n, p in model.named_parameters())
    model.train()
    set_backbone_bn_eval(model)
    model(preprocess(_batch())).sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == n.startswith("fc."), n
    # a real training step: head moves, backbone weights and BatchNorm statistics do not
    model.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = DeviceData(_batch(8).unsqueeze(1), torch.tensor([0, 1] * 4))
    train_one_epoch(model, data, opt, nn.CrossEntropyLoss(), META, 4, torch.Generator().manual_seed(0),
                    progress=False)
    after = model.state_dict()
    for k in before:
        same = torch.equal(before[k], after[k])
        assert same != k.startswith("fc."), k
    assert model.training  # train mode, but the frozen backbone's BatchNorm layers run in eval mode
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_phase2_everything_trains():
    model, _ = build_model("phantom", seed=0)
    freeze_backbone(model)
    opt, _ = setup_phase(model, {"lr": 1e-4, "freeze_backbone": False})
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters()} and all(p.requires_grad for p in model.parameters())
    bn = _snapshot_bn(model)
    data = DeviceData(_batch(8).unsqueeze(1), torch.tensor([0, 1] * 4))
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    train_one_epoch(model, data, opt, nn.CrossEntropyLoss(), META, 8, torch.Generator().manual_seed(0),
                    progress=False)
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(bn[k], after[k]) for k in bn)  # BatchNorm statistics update in phase 2


def test_discriminative_learning_rates_are_applied():
    lr, decay = 1e-3, 0.5
    model, _ = build_model("none", seed=0)
    opt, sched = setup_phase(model, {"lr": lr, "freeze_backbone": False, "discriminative": True, "lr_decay": decay,
                                     "weight_decay": 0.0, "step_size": 1, "gamma": 0.1})
    names = [g["name"] for g in opt.param_groups]
    assert names == list(reversed(LAYER_GROUPS))  # head first
    for k, g in enumerate(opt.param_groups):
        assert g["lr"] == pytest.approx(lr * decay ** k)
    groups = layer_groups(model)
    for g in opt.param_groups:
        assert {id(p) for p in g["params"]} == {id(p) for p in groups[g["name"]]}
    # one Adam step moves each parameter by about its group's learning rate (|m̂ / √v̂| = 1 at step 1)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    model.train()
    loss = nn.CrossEntropyLoss()(model(preprocess(_batch(4))), torch.tensor([0, 1, 0, 1]))
    opt.zero_grad()
    loss.backward()
    opt.step()
    for k, g in enumerate(opt.param_groups):
        step = max((p.detach() - before[id(p)]).abs().max().item() for p in g["params"])
        assert step == pytest.approx(lr * decay ** k, rel=0.02), g["name"]
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * lr * decay ** k for k in range(6)])
    flat = param_groups(model, lr, discriminative=False)
    assert {g["lr"] for g in flat} == {lr}


def test_class_weights_balance_the_classes():
    w = class_weights(np.array([0, 1, 1, 1]))
    assert torch.allclose(w, torch.tensor([2.0, 2 / 3]))
    assert float(w[0] * 1 + w[1] * 3) == pytest.approx(4.0)


def test_load_model_and_predict_proba(tmp_path):
    model, _ = build_model("none", seed=1)
    meta = make_meta(image_size=S, mean=IMAGENET_MEAN, std=IMAGENET_STD, threshold=0.4)
    save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "meta": meta})
    loaded, m = load_model(tmp_path / "m.pt")
    assert not loaded.training and m["threshold"] == 0.4
    x = _batch(5).numpy()
    p = predict_proba(loaded, x, m, batch_size=2)
    assert p.shape == (5,) and ((p >= 0) & (p <= 1)).all()
    logits = model.eval()(preprocess(torch.from_numpy(x)))
    np.testing.assert_allclose(p, torch.softmax(logits, 1)[:, 1].detach().numpy(), atol=1e-5)
    save_checkpoint(tmp_path / "bad.pt", {"model": {"x": torch.zeros(1)}, "meta": meta})
    with pytest.raises(UserError, match="do not match a ResNet-18"):
        load_model(tmp_path / "bad.pt")


def test_pneumonia_probability_is_the_softmax_column_of_pneumonia():
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0], [-3.0, 3.0]])
    expected = 1 / (1 + np.exp(-(logits[:, 1] - logits[:, 0]).numpy()))  # two-class softmax = logistic of the gap
    np.testing.assert_allclose(pneumonia_probability(logits), expected, rtol=1e-6)
    np.testing.assert_allclose(pneumonia_probability(logits.numpy().astype(np.float64)), expected, rtol=1e-6)
    assert pneumonia_probability(torch.zeros((0, 0))).shape == (0,)  # no image (an empty pass), no probability


def test_batched_logits_serve_any_forward_alike(tmp_path):
    """The one batched loop: a model, or any callable (the INT8 runner), gives the same logits in any batch size."""
    model, _ = build_model("none", seed=2)
    model.eval()
    x = _batch(5).numpy()
    ref = predict_logits(model, x, META, batch_size=5)
    with torch.inference_mode():
        as_callable = batched_logits(lambda t: model(t).numpy(), x, META, batch_size=2)  # numpy out, like ONNX Runtime
    np.testing.assert_allclose(as_callable, ref, atol=1e-5)
    assert batched_logits(model, x[:0], META).shape == (0, 2)
    model.train()
    predict_logits(model, x, META)
    assert model.training  # the caller's mode is restored


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device("cuda")
