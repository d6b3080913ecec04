"""INT8 post-training quantisation: a meaningful model (the shipped phantom-pretrained ResNet-18 with its own
2-class head), calibrated on one set of phantoms and compared with FP32 on another."""
from __future__ import annotations

import time
import types
import warnings

import numpy as np
import pytest
import torch

from utils.data import phantom
from utils.checkpoint import load_checkpoint, make_meta, save_checkpoint, state_fingerprint
from utils.config import IMAGENET_MEAN, IMAGENET_STD, UserError, artifact, shipped
from utils.train.model import load_model, predict_proba
from utils.deploy.int8 import (INT8_ARCH, benchmark_cpu, calibration_images, check_backend, closest_to_threshold,
                            file_size_mb, flips, int8_meta, load_int8, operating_threshold, proba_with,
                            quantize_int8, save_int8, torch_forward)

SIZE = 128
N_TEST_PATIENTS = 28  # one or more images each


def pretrained_fp32() -> torch.nn.Module:
    """The shipped phantom-pretrained ResNet-18, backbone *and* its pretrained 2-class head (fp16 → fp32)."""
    from torchvision.models import resnet18

    state = load_checkpoint(shipped("pretrained_backbone"), require_meta=False)["model"]
    model = resnet18(num_classes=2)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


@pytest.fixture(scope="module")
def setup():
    spec = phantom.spec_for("default", SIZE)
    calib = phantom.stack(phantom.generate(10, seed=11, spec=spec, first_pid=1))
    test = phantom.stack(phantom.generate(N_TEST_PATIENTS, seed=22, spec=spec, first_pid=1000))  # ~40 images
    meta = make_meta(image_size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD, threshold=0.5, profile="test")
    model = pretrained_fp32()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qmodel = quantize_int8(model, calib["images"], meta, backend="x86")
    return types.SimpleNamespace(model=model, qmodel=qmodel, meta=meta, calib=calib, test=test, caught=caught)


def test_int8_runs_on_cpu_and_agrees_with_fp32(setup):
    s = setup
    qconvs = [m for m in s.qmodel.modules() if isinstance(m, torch.ao.nn.quantized.Conv2d)]
    assert len(qconvs) >= 20 and qconvs[0].weight().dtype == torch.qint8  # really int8, per-channel weights
    w = qconvs[0].weight()
    assert w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)  # one scale per output channel
    assert w.q_per_channel_scales().numel() == w.shape[0] and (w.q_per_channel_zero_points() == 0).all()  # symmetric
    images, labels = s.test["images"], s.test["labels"]
    assert len(images) >= N_TEST_PATIENTS and 0 < labels.mean() < 1
    p32 = predict_proba(s.model, images, s.meta)
    p8 = predict_proba(s.qmodel, images, s.meta, device="cpu")
    assert np.isfinite(p8).all() and p8.shape == p32.shape
    assert roc_ok(labels, p32)  # a meaningful model: flips are not coin tosses
    agree = 1 - len(flips(p32, 0.5, p8, 0.5)) / len(images)
    assert agree >= 0.95, f"INT8 agrees with FP32 on only {agree:.0%} of phantom test images"
    assert np.abs(p32 - p8).mean() < 0.05
    assert not np.array_equal(p32, p8)  # it is a different (quantised) model, not a copy
    # the FX quantiser's deprecation notices are silenced; nothing else was
    assert not [w for w in s.caught if "quantiz" in str(w.message).lower() or "reduce_range" in str(w.message)]


def roc_ok(labels, probs) -> bool:
    from sklearn.metrics import roc_auc_score
    return roc_auc_score(labels, probs) > 0.9


def test_int8_file_is_smaller_and_round_trips(setup, tmp_path):
    s = setup
    fp32_path = save_checkpoint(tmp_path / "fp32.pt", {"model": s.model.state_dict(), "meta": s.meta})
    meta8 = int8_meta(s.meta, threshold=0.42, backend="x86", fp32_fingerprint=state_fingerprint(s.model.state_dict()),
                      calibration={"split": "phantom seed 11", "n_images": len(s.calib["images"])})
    int8_path = save_int8(tmp_path / "int8.pt", s.qmodel, meta8)
    assert file_size_mb(int8_path) < file_size_mb(fp32_path) / 3  # ~4x: int8 weights instead of fp32
    assert not list(tmp_path.glob("*.tmp"))  # atomic write
    before = torch.get_rng_state()
    qmodel2, meta2 = load_int8(int8_path)
    assert torch.equal(torch.get_rng_state(), before)  # loading does not shift the caller's random stream
    assert meta2["threshold"] == 0.42 and meta2["arch"] == INT8_ARCH and meta2["image_size"] == SIZE
    assert meta2["quantization"]["backend"] == "x86" and meta2["classes"] == ["NORMAL", "PNEUMONIA"]
    assert meta2["fp32_meta"] == s.meta and "threshold_rule" not in meta2  # the FP32 rule is not inherited
    assert int8_meta({**s.meta, "threshold_rule": "fp32 rule"}, threshold=0.3, backend="x86", fp32_fingerprint="x",
                     calibration={}, threshold_rule="int8 rule")["threshold_rule"] == "int8 rule"
    x = torch.from_numpy(s.test["images"][:6])
    a = predict_proba(s.qmodel, x, s.meta, device="cpu")
    b = predict_proba(qmodel2, x, meta2, device="cpu")
    assert np.array_equal(a, b)  # bit-identical after the round trip
    assert np.allclose(proba_with(torch_forward(qmodel2), x.numpy(), meta2), b, atol=1e-6)
    # weights only: the file holds tensors and plain data, nothing torch.load(weights_only=True) refuses
    raw = torch.load(int8_path, weights_only=True)
    assert set(raw) == {"model", "meta"}


def test_loaders_refuse_the_wrong_kind_of_file(setup, tmp_path):
    s = setup
    fp32_path = save_checkpoint(tmp_path / "fp32.pt", {"model": s.model.state_dict(), "meta": s.meta})
    with pytest.raises(UserError, match="not an INT8 model"):
        load_int8(fp32_path)
    meta8 = int8_meta(s.meta, threshold=0.5, backend="x86", fp32_fingerprint="x", calibration={})
    int8_path = save_int8(tmp_path / "int8.pt", s.qmodel, meta8)
    with pytest.raises(UserError, match="'resnet18-int8' model"):
        load_model(int8_path)  # the FP32 loader says what the file is, not a shape error
    with pytest.raises(UserError, match="not found"):
        load_int8(tmp_path / "missing.pt")
    broken = tmp_path / "broken.pt"
    state = dict(s.qmodel.state_dict())
    state.pop(next(iter(state)))
    save_checkpoint(broken, {"model": state, "meta": meta8})
    with pytest.raises(UserError, match="do not fit"):
        load_int8(broken)


def test_calibration_images_come_from_train_or_val_only():
    rng = np.random.default_rng(0)
    splits = {name: types.SimpleNamespace(images=np.full((n, 8, 8), k, np.uint8))
              for k, (name, n) in enumerate([("train", 30), ("val", 10), ("test", 10)])}
    for bad in ("test", "val+test", "TEST", "all"):
        with pytest.raises(UserError, match="refused"):
            calibration_images(splits, split=bad)
    with pytest.raises(UserError, match="test images must stay unseen"):
        calibration_images(splits, split="test")
    a = calibration_images(splits, "train", n=12, seed=3)
    assert a.shape == (12, 8, 8) and (a == 0).all()
    assert np.array_equal(a, calibration_images(splits, "train", n=12, seed=3))  # seeded
    both = calibration_images(splits, "train+val", n=100, seed=rng.integers(100))
    assert len(both) == 40 and set(np.unique(both)) == {0, 1}  # never a test image (value 2)


def test_bad_quantisation_inputs(setup):
    s = setup
    with pytest.raises(UserError, match="unknown INT8 backend"):
        check_backend("tensorrt")
    with pytest.raises(UserError, match="expects 128"):
        quantize_int8(s.model, np.zeros((2, 64, 64), np.uint8), s.meta)
    with pytest.raises(UserError, match="uint8"):
        quantize_int8(s.model, np.zeros((2, SIZE, SIZE), np.float32), s.meta)
    with pytest.raises(UserError, match="non-empty"):
        quantize_int8(s.model, np.zeros((0, SIZE, SIZE), np.uint8), s.meta)


def test_flips_thresholds_and_benchmark(setup):
    p_ref, p_new = np.array([0.1, 0.6, 0.9, 0.45]), np.array([0.2, 0.55, 0.95, 0.5])
    assert flips(p_ref, 0.5, p_new, 0.5).tolist() == [3]
    assert flips(p_ref, 0.5, p_new, 0.58).tolist() == [1]  # each model at its own threshold
    y, p = np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.3, 0.35, 0.8, 0.9])
    assert operating_threshold({"threshold": 0.27}, y, p, 0.98) == (0.27, "checkpoint (notebook 04)")
    t, source = operating_threshold({"threshold": 0.5, "threshold_rule": "recall>=0.98 on val"}, y, p, 0.98)
    assert t == 0.5 and "recall>=0.98 on val" in source  # recorded by notebook 04, even if it is 0.5
    t, source = operating_threshold({"threshold": 0.5}, y, p, 0.98)
    assert t == pytest.approx(0.35) and "default 0.5" in source
    assert closest_to_threshold(p, 0.33, k=4).tolist() == [1, 0, 2, 3]  # two below, two above, nearest first
    assert closest_to_threshold(p, 0.05, k=3).tolist() == [0, 1, 2]  # nothing below: all from above
    assert closest_to_threshold(p, 0.95, k=2).tolist() == [4, 3]
    s = setup
    r = benchmark_cpu(torch_forward(s.qmodel), s.test["images"][:3], s.meta, runs=3, warmup=1, batch=4,
                      batch_runs=1, threads=1)
    assert r["latency_ms_median"] > 0 and r["latency_ms_p90"] >= r["latency_ms_median"] > 0
    assert r["throughput_img_s"] > 0 and (r["runs"], r["batch"], r["threads"]) == (3, 4, 1)
    calls = []
    slow = lambda x: (calls.append(("slow", len(x))), time.sleep(0.02))  # noqa: E731
    fast = lambda x: calls.append(("fast", len(x)))  # noqa: E731
    both = benchmark_cpu({"slow": slow, "fast": fast}, s.test["images"][:2], s.meta, runs=3, warmup=1, batch=5,
                         batch_runs=2, threads=1)
    assert [c[0] for c in calls[:4]] == ["slow", "fast", "slow", "fast"]  # interleaved, run by run
    assert calls[-1] == ("fast", 5) and len(calls) == 2 * (1 + 3) + 2 * (1 + 2)
    assert both["slow"]["latency_ms_median"] >= 20 > both["fast"]["latency_ms_median"]
    assert both["fast"]["throughput_img_s"] > both["slow"]["throughput_img_s"]


def test_onnx_runtime_path(setup, tmp_path):
    """Optional dependency (pip install -e ".[onnx]"): skipped when onnx / onnxruntime are not installed."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from utils.deploy.int8 import export_onnx, onnx_forward, quantize_onnx

    s = setup
    fp32 = export_onnx(s.model, s.meta, tmp_path / "m.onnx")
    int8 = quantize_onnx(fp32, tmp_path / "m_int8.onnx", s.calib["images"], s.meta)
    assert file_size_mb(int8) < file_size_mb(fp32) / 3 and not list(tmp_path.glob("*.tmp"))
    images = s.test["images"]
    p32 = predict_proba(s.model, images, s.meta)
    assert np.allclose(proba_with(onnx_forward(fp32), images, s.meta), p32, atol=1e-4)
    p8 = proba_with(onnx_forward(int8), images, s.meta)
    assert 1 - len(flips(p32, 0.5, p8, 0.5)) / len(images) >= 0.95
