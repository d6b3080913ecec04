"""FP32 against INT8 (notebook 07): decisions that flip, the comparison table, the cases to look at."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from utils.deploy.timing import file_size_mb


def flips(p_ref: np.ndarray, t_ref: float, p_new: np.ndarray, t_new: float) -> np.ndarray:
    """Indices where the decisions ``p >= t`` of two models disagree (each at its own threshold)."""
    p_ref, p_new = np.asarray(p_ref, dtype=np.float64), np.asarray(p_new, dtype=np.float64)
    if p_ref.shape != p_new.shape:
        raise ValueError(f"{p_ref.shape} vs {p_new.shape}: predictions of the same images are needed")
    return np.flatnonzero((p_ref >= t_ref) != (p_new >= t_new))


def variant_row(name: str, *, file: str | os.PathLike | None, timing: Mapping[str, float], threshold: float,
                y_test: np.ndarray, p_test: np.ndarray, n_flips: int | None) -> dict[str, Any]:
    """One row of the FP32-vs-INT8 table: size, speed, and test metrics at the validation-chosen threshold."""
    from utils.evaluate.metrics import threshold_free_metrics, threshold_metrics

    tm = threshold_metrics(y_test, p_test, threshold)
    return {"model": name, "file_mb": file_size_mb(file) if file else math.nan,
            "latency_ms": timing["latency_ms_median"], "throughput_img_s": timing["throughput_img_s"],
            "threshold": float(threshold), "test_auc": threshold_free_metrics(y_test, p_test)["roc_auc"],
            "test_recall": tm["sensitivity"], "test_specificity": tm["specificity"],
            "flips_vs_fp32": n_flips}


def closest_to_threshold(prob: np.ndarray, threshold: float, k: int = 4) -> np.ndarray:
    """The near-flips: the ``k // 2`` images just below ``threshold`` and the ``k - k // 2`` just above it
    (fewer on a side that has fewer), closest first."""
    p = np.asarray(prob, dtype=np.float64)
    dist = np.abs(p - threshold)
    below, above = np.flatnonzero(p < threshold), np.flatnonzero(p >= threshold)
    below, above = below[np.argsort(dist[below], kind="stable")], above[np.argsort(dist[above], kind="stable")]
    n_below = min(len(below), max(k // 2, k - len(above)))
    return np.concatenate([below[:n_below], above[:k - n_below]]).astype(np.int64)


def decision_titles(ids: Sequence[str], labels: Sequence[int], p_fp32: np.ndarray, t_fp32: float,
                    p_int8: np.ndarray, t_int8: float, classes: Sequence[str] = ("NORMAL", "PNEUMONIA")
                    ) -> list[str]:
    """Figure titles: id and true class, then each model's probability and decision at its own threshold."""
    def call(p: float, t: float) -> str:
        return classes[1] if p >= t else classes[0]
    return [f"{i} (truth: {classes[int(y)]})\nFP32 {a:.3g} → {call(a, t_fp32)}\nINT8 {b:.3g} → {call(b, t_int8)}"
            for i, y, a, b in zip(ids, labels, p_fp32, p_int8)]


def int8_changes(results: Any, diff: Mapping[str, Mapping[str, float]], n_flipped: int, n_test: int,
                 fp32: str = "FP32 (PyTorch)", fp32_same_runtime: str = "FP32 (ONNX Runtime)",
                 int8: str = "INT8 (ONNX Runtime)") -> str:
    """One line stating every change the FP32-vs-INT8 table shows: file size against the FP32 checkpoint; latency
    and throughput against **both** FP32 runners (the same-runtime one isolates what quantisation itself buys);
    test AUC, sensitivity and specificity with the paired INT8 − FP32 interval; flipped decisions.
    ``results`` is the table of :func:`variant_row` rows indexed by model name."""
    from utils.evaluate.metrics import format_ci

    r32, rs, r8 = results.loc[fp32], results.loc[fp32_same_runtime], results.loc[int8]

    def ci(metric: str) -> str:
        return format_ci(diff[metric], signed=True)

    def speed(ref: Any) -> str:
        return (f"latency {ref.latency_ms:.1f} -> {r8.latency_ms:.1f} ms ({ref.latency_ms / r8.latency_ms:.2f}x), "
                f"throughput {ref.throughput_img_s:.1f} -> {r8.throughput_img_s:.1f} img/s "
                f"({r8.throughput_img_s / ref.throughput_img_s:.2f}x)")

    return (f"file {r32.file_mb / r8.file_mb:.1f}x smaller; vs {fp32}: {speed(r32)}; vs {fp32_same_runtime}: "
            f"{speed(rs)}; test AUC {r32.test_auc:.4f} -> {r8.test_auc:.4f}; sensitivity {r32.test_recall:.3f} -> "
            f"{r8.test_recall:.3f} ({ci('sensitivity')}); specificity {r32.test_specificity:.3f} -> "
            f"{r8.test_specificity:.3f} ({ci('specificity')}); {n_flipped} of {n_test} test decisions flipped")
