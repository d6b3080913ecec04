"""Notebook 07's INT8 stage as one call: quantise the shipped model, choose its threshold, record, compare.

:func:`quantise_and_record` is to notebook 07 what :func:`utils.evaluate.evaluation.evaluate_models` is to 04 and
:func:`utils.explain.choice.choose_and_record` to 05. On the shipped checkpoint (CPU: the INT8 kernels run there)
it

1. predicts validation and test with the FP32 model;
2. draws calibration images from ``train`` / ``val`` (never test, :func:`utils.deploy.int8.calibration_images`) and
   quantises with ONNX Runtime (:func:`utils.deploy.int8.quantize_int8`; the FP32 ONNX graph is kept beside it);
3. chooses the INT8 model's own threshold on its validation predictions with the series' rule
   (:func:`utils.artifacts.threshold_for_recall`), writes it into the ONNX file's metadata and reads the file back
   as a deployment would (:func:`utils.deploy.int8.load_int8`);
4. times FP32 (PyTorch), FP32 (ONNX Runtime) and INT8 interleaved on the CPU, scores each on test at its own
   threshold, counts the flipped decisions and bootstraps the paired INT8 − FP32 difference with thresholds
   re-chosen per resample (:func:`utils.evaluate.metrics.operating_point_bootstrap`);
5. writes ``assets/int8_report.json`` and the ``int8`` section of ``assets/metrics.json``.

``tag`` writes every file of the stage under its own name (``model/<tag>_pneumonia_model_int8.onnx``…) and leaves
``metrics.json`` alone: an exercise never overwrites the shipped INT8 model. :meth:`Int8Deployment.reading` states
what the run measured as sentences — each number printed from the run, each change read from its paired interval
with :func:`utils.evaluate.verdicts.difference_verdict`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from utils.artifacts import operating_threshold, threshold_for_recall, threshold_rule
from utils.checkpoint import state_fingerprint
from utils.config import Config
from utils.data.bundle import DataBundle
from utils.deploy import compare, int8, timing
from utils.evaluate.metrics import operating_point_bootstrap
from utils.evaluate.verdicts import difference_verdict, format_difference, interval_side, verdict_phrase
from utils.fileio import update_json_section, write_json
from utils.train.model import load_model, predict_proba

#: The three rows of the comparison: the FP32 model, the same FP32 graph in ONNX Runtime, the INT8 model.
FP32, FP32_ONNX, INT8 = "FP32 (PyTorch)", "FP32 (ONNX Runtime)", "INT8 (ONNX Runtime)"


@dataclass
class Int8Deployment:
    """What notebook 07 shows of its stage (the files are already written)."""

    fp32_path: Path
    model: nn.Module  # the FP32 model, on the CPU
    meta: dict[str, Any]
    t32: float
    t32_rule: str
    p32_val: np.ndarray
    p32_test: np.ndarray
    n_calib: int
    quantise_seconds: float
    int8_path: Path
    quantisation: pd.DataFrame  # one row per quantised tensor (utils.deploy.int8.quantisation_table)
    int8: int8.Int8Model  # as loaded back from the file
    meta8: dict[str, Any]
    t8: float
    p8_val: np.ndarray
    p8_test: np.ndarray
    timings: dict[str, Any]
    results: pd.DataFrame  # utils.deploy.compare.variant_row per model, indexed by model
    flipped: np.ndarray  # test indices whose INT8 decision differs from the FP32 one
    paired: dict[str, Any]
    changes: str  # the one-line summary (utils.deploy.compare.int8_changes)
    report: dict[str, Any]
    target_recall: float = 0.98  # the threshold rule's target (cfg["target_recall"])

    @property
    def difference(self) -> dict[str, Any]:
        """The paired INT8 − FP32 differences on test (thresholds re-chosen per resample)."""
        return self.paired["differences"]["INT8 - FP32"]

    def reading(self) -> list[str]:
        """What the comparison says, one sentence each, every number from this run: size, speed against both FP32
        runners, the paired changes of test sensitivity and specificity with their verdicts, the recall target on
        test, and the flips."""
        return int8_reading(self.results, self.difference, len(self.flipped), len(self.p32_test), self.target_recall)


def int8_reading(results: pd.DataFrame, difference: dict[str, Any], n_flipped: int, n_test: int,
                 target_recall: float) -> list[str]:
    """The sentences of :meth:`Int8Deployment.reading` from the comparison table (:data:`FP32`, :data:`FP32_ONNX`,
    :data:`INT8` rows of :func:`utils.deploy.compare.variant_row`) and the paired INT8 − FP32 differences."""
    r32, rs, r8 = results.loc[FP32], results.loc[FP32_ONNX], results.loc[INT8]
    size = r32.file_mb / r8.file_mb
    lines = [f"Size: {r32.file_mb:.1f} MB → {r8.file_mb:.1f} MB, {size:.2f}× smaller (one byte per weight instead of "
             "four would give 4×; scales, int32 biases and the graph take the rest)."]
    for what, key, better in (("Latency at batch 1", "latency_ms", "lower"),
                              ("Throughput at batch 32", "throughput_img_s", "higher")):
        gain = {name: (row[key] / r8[key] if better == "lower" else r8[key] / row[key])
                for name, row in ((FP32, r32), (FP32_ONNX, rs))}
        runtime = r32[key] / rs[key] if better == "lower" else rs[key] / r32[key]
        lines.append(f"{what}: INT8 is {gain[FP32]:.2f}× as fast as {FP32} and {gain[FP32_ONNX]:.2f}× as fast as "
                     f"{FP32_ONNX} (the runtime alone: {runtime:.2f}×) — "
                     + ("less than" if gain[FP32_ONNX] < size else "at least") + f" the {size:.2f}× of the file size.")
    for metric, col in (("sensitivity", "test_recall"), ("specificity", "test_specificity")):
        d = difference[metric]
        words = verdict_phrase(difference_verdict(d), 0.0, interval_side(d))
        lines.append(f"Test {metric}: {r32[col]:.3f} → {r8[col]:.3f}; INT8 − FP32 {format_difference(d)} (threshold "
                     f"re-chosen on every validation resample): {words}.")
    met = r8.test_recall >= target_recall
    lines.append(f"The INT8 model {'meets' if met else 'misses'} the recall target on test ({r8.test_recall:.3f} vs "
                 f"{target_recall:g}); {n_flipped} of {n_test} test decisions flipped.")
    return lines


def quantise_and_record(cfg: Config, bundle: DataBundle, calib_split: str = "train", n_calib: int = 64,
                        latency_runs: int = 20, threads: int = 2, tag: str | None = None) -> Int8Deployment:
    """Quantise, threshold, record and compare the shipped model (see the module docstring; ``tag``: write every
    file under that tag and leave ``metrics.json`` alone — for exercises)."""
    start = time.perf_counter()
    fp32_path = cfg.require("model")
    model, meta = load_model(fp32_path, "cpu")  # INT8 kernels run on the CPU: compare on the CPU
    val, test = bundle["val"], bundle["test"]
    t32, t32_rule = operating_threshold(meta, fp32_path)
    p32_val = predict_proba(model, val.images, meta, device="cpu")
    p32_test = predict_proba(model, test.images, meta, device="cpu")

    calib = int8.calibration_images(bundle.splits, calib_split, n=n_calib, seed=cfg["seed"])
    t0 = time.perf_counter()
    int8_path = int8.quantize_int8(model, calib, meta, cfg.path("int8_model", tag),
                                   fp32_path=cfg.path("onnx_fp32", tag))
    quantise_seconds = time.perf_counter() - t0
    quantisation = int8.quantisation_table(int8_path)

    unmarked = int8.Int8Model(int8_path, meta, threads=threads)  # no INT8 metadata yet: run it with the FP32 model's
    p8_val = unmarked.predict_proba(val.images)
    t8 = threshold_for_recall(val.labels, p8_val, cfg["target_recall"])
    meta8 = int8.int8_meta(meta, threshold=t8, fp32_fingerprint=state_fingerprint(model.state_dict()),
                           calibration={"split": calib_split, "n_images": len(calib), "seed": cfg["seed"]},
                           threshold_rule=threshold_rule(cfg["target_recall"]))
    int8.write_int8_meta(int8_path, meta8)
    int8_model = int8.load_int8(int8_path, threads=threads)  # exactly what a deployment (or `--int8`) loads
    p8_test = int8_model.predict_proba(test.images)

    fp32_onnx = int8.Int8Model(cfg.path("onnx_fp32", tag), meta, threads=threads)  # the same runner, FP32 graph
    forwards: dict[str, Callable[[torch.Tensor], Any]] = {FP32: timing.torch_forward(model), FP32_ONNX: fp32_onnx,
                                                          INT8: int8_model}
    timings = timing.benchmark_cpu(forwards, val.images[:8], meta, runs=latency_runs, threads=threads)
    p_onnx32 = fp32_onnx.predict_proba(test.images)
    flipped = compare.flips(p32_test, t32, p8_test, t8)
    rows = [compare.variant_row(FP32, file=fp32_path, timing=timings[FP32], threshold=t32, y_test=test.labels,
                                p_test=p32_test, n_flips=0),
            compare.variant_row(FP32_ONNX, file=cfg.path("onnx_fp32", tag), timing=timings[FP32_ONNX], threshold=t32,
                                y_test=test.labels, p_test=p_onnx32,
                                n_flips=len(compare.flips(p32_test, t32, p_onnx32, t32))),
            compare.variant_row(INT8, file=int8_path, timing=timings[INT8], threshold=t8, y_test=test.labels,
                                p_test=p8_test, n_flips=len(flipped))]
    results = pd.DataFrame(rows).set_index("model")
    paired = operating_point_bootstrap(val.labels, {"INT8": p8_val, "FP32": p32_val}, test.labels,
                                       {"INT8": p8_test, "FP32": p32_test}, cfg["target_recall"], val.patient_ids,
                                       test.patient_ids, n_boot=int(cfg["n_bootstrap"]), seed=cfg["seed"])
    changes = compare.int8_changes(results, paired["differences"]["INT8 - FP32"], len(flipped), len(test.labels))

    report = {"table": results.reset_index().to_dict("records"), "n_test": len(test.labels), "summary": changes,
              "fp32": {"path": str(fp32_path), "threshold": t32, "threshold_rule": t32_rule},
              "int8": {"path": str(int8_path), "threshold": t8, "api": int8.API,
                       "calibration": meta8["quantization"]["calibration"]},
              "paired": paired, "flipped_test_ids": list(test.ids[flipped]), "machine": timing.machine_info(threads),
              "timing": {k: timings[INT8][k] for k in ("runs", "batch", "batch_runs", "threads")},
              "run": cfg.knobs, "data": bundle.describe(), "runtime_s": round(time.perf_counter() - start, 1)}
    report["reading"] = int8_reading(results, paired["differences"]["INT8 - FP32"], len(flipped), len(test.labels),
                                     cfg["target_recall"])
    write_json(cfg.path("int8_report", tag), report)
    if tag is None:
        update_json_section(cfg.path("metrics"), "int8", {"split": "test", "summary": changes, **paired,
                                                          "run": cfg.knobs})
    return Int8Deployment(fp32_path, model, meta, t32, t32_rule, p32_val, p32_test, len(calib), quantise_seconds,
                          int8_path, quantisation, int8_model, meta8, t8, p8_val, p8_test, timings, results, flipped,
                          paired, changes, report, float(cfg["target_recall"]))
