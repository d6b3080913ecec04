"""Notebook 07's INT8 stage as one call (:func:`utils.deploy.deployment.quantise_and_record`), on a tiny phantom
bundle: what it writes, and that every number it returns is the one its own rule gives."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import demo_project

from utils.artifacts import record_operating_point, threshold_for_recall
from utils.checkpoint import make_meta, save_checkpoint, state_fingerprint
from utils.config import IMAGENET_MEAN, IMAGENET_STD
from utils.deploy.compare import flips
from utils.deploy.deployment import FP32, FP32_ONNX, INT8, int8_reading, quantise_and_record
from utils.deploy.int8 import load_int8
from utils.fileio import read_json

SIZE = 64


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    from test_quantize import pretrained_fp32

    with demo_project(tmp_path_factory, SIZE, (8, 8, 10), masks=False, n_bootstrap=100) as (cfg, bundle):
        model = pretrained_fp32()
        path = save_checkpoint(cfg.path("model"), {"model": model.state_dict(),
                                                   "meta": make_meta(image_size=SIZE, mean=IMAGENET_MEAN,
                                                                     std=IMAGENET_STD)})
        record_operating_point(path, 0.5, cfg["target_recall"])
        yield cfg, bundle, state_fingerprint(model.state_dict()), quantise_and_record(cfg, bundle, n_calib=8,
                                                                                      latency_runs=2, threads=1)


def test_the_int8_threshold_is_the_series_rule_on_its_own_validation_predictions(deployed):
    cfg, bundle, fp32_weights, dep = deployed
    assert dep.t8 == threshold_for_recall(bundle["val"].labels, dep.p8_val, cfg["target_recall"])
    on_disk = load_int8(dep.int8_path)  # what a deployment (and pneumonia-predict --int8) reads
    assert on_disk.meta["threshold"] == dep.t8 and on_disk.meta["fp32_fingerprint"] == fp32_weights
    assert on_disk.meta["quantization"]["calibration"] == {"split": "train", "n_images": 8, "seed": cfg["seed"]}
    assert np.array_equal(on_disk.predict_proba(bundle["test"].images), dep.p8_test)
    assert (dep.t32, dep.t32_rule) == (0.5, dep.meta["threshold_rule"])


def test_the_comparison_counts_what_it_says(deployed):
    cfg, bundle, _, dep = deployed
    assert np.array_equal(dep.flipped, flips(dep.p32_test, dep.t32, dep.p8_test, dep.t8))
    assert list(dep.results.index) == [FP32, FP32_ONNX, INT8]
    assert dep.results.loc[INT8, "flips_vs_fp32"] == len(dep.flipped) and dep.results.loc[FP32, "flips_vs_fp32"] == 0
    assert f"{len(dep.flipped)} of {len(bundle['test'])} test decisions flipped" in dep.changes
    assert set(dep.difference) >= {"sensitivity", "specificity"}


def test_the_report_and_the_metrics_section_are_written(deployed):
    cfg, bundle, _, dep = deployed
    report = read_json(cfg.path("int8_report"))
    assert report["summary"] == dep.changes and report["int8"]["threshold"] == dep.t8
    assert report["flipped_test_ids"] == list(bundle["test"].ids[dep.flipped])
    assert [r["model"] for r in report["table"]] == [FP32, FP32_ONNX, INT8]
    section = read_json(cfg.path("metrics"))["int8"]
    assert section["summary"] == dep.changes and section["split"] == "test"
    assert cfg.path("onnx_fp32").exists()  # the FP32 graph the ONNX Runtime row was timed with


def test_the_reading_states_the_runs_numbers(deployed):
    cfg, bundle, _, dep = deployed
    lines = dep.reading()
    r32, r8 = dep.results.loc[FP32], dep.results.loc[INT8]
    assert lines[0].startswith(f"Size: {r32.file_mb:.1f} MB → {r8.file_mb:.1f} MB, {r32.file_mb / r8.file_mb:.2f}×")
    assert f"INT8 is {r32.latency_ms / r8.latency_ms:.2f}× as fast as {FP32}" in lines[1]
    assert f"{r32.test_recall:.3f} → {r8.test_recall:.3f}" in lines[3]
    assert lines[-1].endswith(f"{len(dep.flipped)} of {len(bundle['test'])} test decisions flipped.")
    assert dep.report["reading"] == lines


def _table(latency_int8: float) -> pd.DataFrame:
    rows = {FP32: (40.0, 8.0, 100.0, 0.99, 0.80), FP32_ONNX: (40.0, 6.0, 140.0, 0.99, 0.80),
            INT8: (10.5, latency_int8, 300.0, 0.97, 0.82)}
    cols = ["file_mb", "latency_ms", "throughput_img_s", "test_recall", "test_specificity"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=cols)


def test_the_speed_is_compared_with_the_measured_size_ratio_not_a_typed_four():
    diff = {"sensitivity": {"value": -0.02, "ci_low": -0.05, "ci_high": -0.01},
            "specificity": {"value": 0.02, "ci_low": -0.01, "ci_high": 0.05}}
    slow = int8_reading(_table(2.0), diff, 3, 100, 0.98)  # 6 / 2 = 3.00x < 40 / 10.5 = 3.81x
    assert "3.81× smaller" in slow[0] and "3.00× as fast as FP32 (ONNX Runtime)" in slow[1]
    assert "less than the 3.81× of the file size" in slow[1] and "(the runtime alone: 1.33×)" in slow[1]
    fast = int8_reading(_table(1.5), diff, 3, 100, 0.98)  # 6 / 1.5 = 4.00x >= 3.81x
    assert "at least the 3.81× of the file size" in fast[1]
    assert "below zero" in slow[3] and "not distinguishable from zero" in slow[4]
    assert slow[-1].startswith("The INT8 model misses the recall target on test (0.970 vs 0.98)")


def test_an_exercise_tag_leaves_the_shipped_int8_model_and_the_metrics_alone(deployed):
    cfg, bundle, _, dep = deployed
    shipped, section = dep.int8_path.read_bytes(), read_json(cfg.path("metrics"))["int8"]
    other = quantise_and_record(cfg, bundle, n_calib=4, latency_runs=1, threads=1, tag="exercise_calib")
    assert other.int8_path == cfg.path("int8_model", "exercise_calib") and other.int8_path.exists()
    assert read_json(cfg.path("int8_report", "exercise_calib"))["int8"]["calibration"]["n_images"] == 4
    assert dep.int8_path.read_bytes() == shipped and read_json(cfg.path("metrics"))["int8"] == section
