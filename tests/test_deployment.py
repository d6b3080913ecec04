"""Notebook 07's INT8 stage as one call (:func:`utils.deploy.deployment.quantise_and_record`), on a tiny phantom
bundle: what it writes, and that every number it returns is the one its own rule gives."""
from __future__ import annotations

import numpy as np
import pytest

from utils.artifacts import record_operating_point, threshold_for_recall
from utils.checkpoint import make_meta, save_checkpoint, state_fingerprint
from utils.config import IMAGENET_MEAN, IMAGENET_STD, get_config
from utils.data import phantom
from utils.data.bundle import DataBundle, Split, fingerprint, pixel_hashes
from utils.deploy.compare import flips
from utils.deploy.deployment import FP32, FP32_ONNX, INT8, quantise_and_record
from utils.deploy.int8 import load_int8
from utils.fileio import read_json

SIZE = 64


def _split(name: str, n_patients: int, seed: int, first_pid: int) -> Split:
    data = phantom.stack(phantom.generate(n_patients, seed, phantom.spec_for("default", SIZE), first_pid=first_pid))
    return Split(name, data["images"], data["labels"], np.asarray(data["ids"]), np.asarray(data["patient_ids"]),
                 np.asarray(data["subtypes"]), pixel_hashes(data["images"]))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    from test_quantize import pretrained_fp32

    mp = pytest.MonkeyPatch()
    mp.setenv("CXR_PROJECT_ROOT", str(tmp_path_factory.mktemp("project")))
    cfg = get_config("demo", image_size=SIZE, quiet=True, n_bootstrap=100)
    splits = {name: _split(name, n, seed, pid) for name, n, seed, pid in
              (("train", 8, 1, 1), ("val", 8, 2, 501), ("test", 10, 3, 901))}
    bundle = DataBundle("phantom", SIZE, splits, fingerprint(splits))
    model = pretrained_fp32()
    path = save_checkpoint(cfg.path("model"), {"model": model.state_dict(),
                                               "meta": make_meta(image_size=SIZE, mean=IMAGENET_MEAN,
                                                                 std=IMAGENET_STD)})
    record_operating_point(path, 0.5, cfg["target_recall"])
    yield cfg, bundle, state_fingerprint(model.state_dict()), quantise_and_record(cfg, bundle, n_calib=8,
                                                                                  latency_runs=2, threads=1)
    mp.undo()


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
