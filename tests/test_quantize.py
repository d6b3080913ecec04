"""INT8 with ONNX Runtime: a meaningful model (the shipped phantom-pretrained ResNet-18 with its own 2-class head),
calibrated on one set of phantoms and compared with FP32 on another; the file, its metadata and its loader."""
from __future__ import annotations

import time
import types

import numpy as np
import pytest
import torch

from utils.checkpoint import load_checkpoint, make_meta, state_fingerprint
from utils.config import IMAGENET_MEAN, IMAGENET_STD
from utils.data import phantom
from utils.deploy.compare import closest_to_threshold, flips
from utils.deploy.int8 import (
    INT8_ARCH,
    META_KEY,
    Int8Model,
    calibration_images,
    export_onnx,
    int8_meta,
    load_int8,
    quantisation_table,
    quantize_int8,
    write_int8_meta,
)
from utils.deploy.timing import benchmark_cpu, file_size_mb, torch_forward
from utils.errors import UserError
from utils.paths import shipped
from utils.train.model import load_model, predict_proba

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
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    spec = phantom.spec_for("default", SIZE)
    calib = phantom.stack(phantom.generate(10, seed=11, spec=spec, first_pid=1))
    test = phantom.stack(phantom.generate(N_TEST_PATIENTS, seed=22, spec=spec, first_pid=1000))  # ~40 images
    meta = make_meta(image_size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD, threshold=0.5, profile="test",
                     threshold_rule="fp32 rule")
    model = pretrained_fp32()
    fp32 = root / "m.onnx"
    int8 = quantize_int8(model, calib["images"], meta, root / "m_int8.onnx", fp32_path=fp32)
    return types.SimpleNamespace(model=model, meta=meta, calib=calib, test=test, root=root, fp32=fp32, int8=int8)


def roc_ok(labels, probs) -> bool:
    from sklearn.metrics import roc_auc_score
    return roc_auc_score(labels, probs) > 0.9


def test_int8_is_really_int8_and_agrees_with_fp32(setup):
    s = setup
    table = quantisation_table(s.int8)
    weights = table[table["kind"] == "weight"]
    assert len(weights) >= 20 and set(weights["dtype"]) == {"int8"}  # every conv and the head
    first = weights.iloc[0]
    assert first["scales"] > 1 and first["zero_points"] == "all 0"  # per output channel, symmetric
    acts = table[table["kind"] == "activation"]
    assert len(acts) >= 20 and (acts["scales"] == 1).all() and set(acts["dtype"]) == {"uint8"}  # per tensor
    images, labels = s.test["images"], s.test["labels"]
    assert len(images) >= N_TEST_PATIENTS and 0 < labels.mean() < 1
    p32 = predict_proba(s.model, images, s.meta)
    p8 = Int8Model(s.int8, s.meta).predict_proba(images)
    assert np.isfinite(p8).all() and p8.shape == p32.shape
    assert roc_ok(labels, p32)  # a meaningful model: flips are not coin tosses
    agree = 1 - len(flips(p32, 0.5, p8, 0.5)) / len(images)
    assert agree >= 0.95, f"INT8 agrees with FP32 on only {agree:.0%} of phantom test images"
    assert np.abs(p32 - p8).mean() < 0.05
    assert not np.array_equal(p32, p8)  # it is a different (quantised) model, not a copy
    p_onnx32 = Int8Model(s.fp32, s.meta).predict_proba(images)
    assert np.allclose(p_onnx32, p32, atol=1e-4)  # the FP32 export is the same model
    assert not list(s.root.glob(".*"))  # temporary files (pre-processed graph) removed


def test_int8_file_is_smaller_and_carries_its_metadata(setup, tmp_path):
    s = setup
    assert file_size_mb(s.int8) < file_size_mb(s.fp32) / 3  # ~4x: int8 weights instead of fp32
    meta8 = int8_meta(s.meta, threshold=0.42, fp32_fingerprint=state_fingerprint(s.model.state_dict()),
                      calibration={"split": "phantom seed 11", "n_images": len(s.calib["images"])},
                      threshold_rule="int8 rule")
    path = tmp_path / "int8.onnx"
    path.write_bytes(s.int8.read_bytes())
    write_int8_meta(path, meta8)
    loaded = load_int8(path, threads=1)
    assert loaded.meta["threshold"] == 0.42 and loaded.meta["arch"] == INT8_ARCH and loaded.meta["image_size"] == SIZE
    assert loaded.meta["threshold_rule"] == "int8 rule" and loaded.meta["classes"] == ["NORMAL", "PNEUMONIA"]
    assert loaded.meta["fp32_fingerprint"] == state_fingerprint(s.model.state_dict())
    write_int8_meta(path, {**meta8, "threshold": 0.3})  # rewriting replaces the record, never duplicates it
    import onnx

    assert [p.key for p in onnx.load(str(path)).metadata_props].count(META_KEY) == 1
    assert load_int8(path).meta["threshold"] == 0.3
    x = s.test["images"][:6]
    assert np.array_equal(loaded.predict_proba(x), Int8Model(s.int8, s.meta).predict_proba(x))  # same graph
    assert np.allclose(loaded.predict_proba(x, batch_size=4), loaded.predict_proba(x), atol=1e-6)  # batches: 4 + 2
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))  # atomic writes


def test_loaders_refuse_the_wrong_kind_of_file(setup, tmp_path):
    s = setup
    with pytest.raises(UserError, match="without this project's metadata"):
        load_int8(s.fp32)  # a plain ONNX file
    with pytest.raises(UserError, match="not found"):
        load_int8(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(UserError, match="cannot read .* as an ONNX model") as exc:
        load_int8(junk)
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="is an ONNX model, not a PyTorch checkpoint.*--int8"):
        load_model(s.int8)  # the FP32 loader says what the file is, not a pickle error


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


def test_bad_quantisation_inputs(setup, tmp_path):
    s = setup
    with pytest.raises(UserError, match="expects 128"):
        quantize_int8(s.model, np.zeros((2, 64, 64), np.uint8), s.meta, tmp_path / "a.onnx")
    with pytest.raises(UserError, match="uint8"):
        quantize_int8(s.model, np.zeros((2, SIZE, SIZE), np.float32), s.meta, tmp_path / "a.onnx")
    with pytest.raises(UserError, match="non-empty"):
        quantize_int8(s.model, np.zeros((0, SIZE, SIZE), np.uint8), s.meta, tmp_path / "a.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_export_keeps_the_model_untouched(setup, tmp_path):
    s = setup
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    export_onnx(s.model, s.meta, tmp_path / "x.onnx")
    assert all(torch.equal(before[k], v) for k, v in s.model.state_dict().items()) and not s.model.training


def test_flips_near_flips_and_interleaved_benchmark(setup):
    p_ref, p_new = np.array([0.1, 0.6, 0.9, 0.45]), np.array([0.2, 0.55, 0.95, 0.5])
    assert flips(p_ref, 0.5, p_new, 0.5).tolist() == [3]
    assert flips(p_ref, 0.5, p_new, 0.58).tolist() == [1]  # each model at its own threshold
    p = np.array([0.1, 0.3, 0.35, 0.8, 0.9])
    assert closest_to_threshold(p, 0.33, k=4).tolist() == [1, 0, 2, 3]  # two below, two above, nearest first
    assert closest_to_threshold(p, 0.05, k=3).tolist() == [0, 1, 2]  # nothing below: all from above
    assert closest_to_threshold(p, 0.95, k=2).tolist() == [4, 3]
    s = setup
    r = benchmark_cpu(Int8Model(s.int8, s.meta, threads=1), s.test["images"][:3], s.meta, runs=3, warmup=1,
                      batch=4, batch_runs=1, threads=1)
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
    assert torch_forward(s.model)(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 2)


def test_int8_changes_states_both_fp32_baselines_and_specificity():
    import pandas as pd

    from utils.deploy.compare import int8_changes

    rows = [{"model": "FP32 (PyTorch)", "file_mb": 44.8, "latency_ms": 80.0, "throughput_img_s": 25.0,
             "test_auc": 0.99, "test_recall": 0.97, "test_specificity": 0.90},
            {"model": "FP32 (ONNX Runtime)", "file_mb": 44.7, "latency_ms": 30.0, "throughput_img_s": 40.0,
             "test_auc": 0.99, "test_recall": 0.97, "test_specificity": 0.90},
            {"model": "INT8 (ONNX Runtime)", "file_mb": 11.2, "latency_ms": 40.0, "throughput_img_s": 80.0,
             "test_auc": 0.98, "test_recall": 0.97, "test_specificity": 0.85}]
    ci = {"value": -0.05, "ci_low": -0.09, "ci_high": -0.01}
    line = int8_changes(pd.DataFrame(rows).set_index("model"), {"sensitivity": ci, "specificity": ci}, 3, 100)
    assert "4.0x smaller" in line
    assert "80.0 -> 40.0 ms (2.00x)" in line  # against eager PyTorch: faster
    assert "30.0 -> 40.0 ms (0.75x)" in line  # against the same runtime: slower at batch 1, and it says so
    assert "specificity 0.900 -> 0.850 (-0.050 [-0.090, -0.010])" in line and "3 of 100" in line
