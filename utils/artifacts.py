"""What the notebooks hand each other, and the one rule for each hand-over.

* **The operating threshold.** :func:`threshold_for_recall` is *the* rule: the highest threshold whose
  validation recall reaches the target. Notebook 04 applies it and records the result in the shipped model's
  checkpoint (:func:`record_operating_point`); every later reader — notebooks 05–09 and the inference
  command — takes it from there (:func:`operating_threshold`) and never re-chooses it.
* **The chosen explanation.** Notebook 05 records the spec it chose (:func:`record_explanation`); every map
  of the series is computed from :func:`recorded_explanation` (through :func:`utils.explain.maps.main_explanation`).
* **Predictions.** ``assets/predictions_{split}.csv`` (:func:`predictions_frame`, :func:`read_predictions`)
  with a check that a file still matches the split it claims to describe (:func:`check_predictions_match`).
* **Does this model belong to this data?** :func:`data_mismatch` compares a checkpoint's data fingerprint
  and image size with a loaded bundle.

This module imports nothing from the stage packages, so every stage can use it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.checkpoint import load_checkpoint, update_meta
from utils.errors import UserError
from utils.paths import notebook_path

#: How the operating threshold is chosen, in words (stored next to the number); :func:`threshold_rule` fills it.
THRESHOLD_RULE = "highest threshold with validation recall >= {target:g}"

#: Columns of ``assets/predictions_{split}.csv``.
PREDICTION_COLUMNS: tuple[str, ...] = ("id", "label", "prob", "patient_id", "subtype", "split")


# ------------------------------------------------------------------------------------ the threshold rule
def threshold_rule(target_recall: float) -> str:
    """The operating rule in words for this target (a checkpoint's ``threshold_rule``, metrics.json's rule)."""
    return THRESHOLD_RULE.format(target=target_recall)


def rule_name(target_recall: float) -> str:
    """The operating rule's short name, e.g. ``"recall>=0.98"``: its key among the candidate thresholds."""
    return f"recall>={target_recall:g}"


def labels_and_probs(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(int labels, float probabilities)`` of equal length, labels 0 (NORMAL) / 1 (PNEUMONIA) only;
    every rule and metric on predictions checks its input here."""
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values but prob has {p.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must contain only 0 (NORMAL) and 1 (PNEUMONIA)")
    return y, p


def threshold_for_recall(y_true: Any, prob: Any, target_recall: float = 0.98) -> float:
    """Highest threshold whose recall on *these* data (validation) is at least ``target_recall``.

    Recall falls as the threshold rises, so this is the most specific operating point that still meets
    the target. Images scoring exactly the threshold are called positive; with ``target_recall=1.0`` the
    result is the lowest positive's probability.
    """
    y, p = labels_and_probs(y_true, prob)
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    pos = np.sort(p[y == 1])[::-1]
    if pos.size == 0:
        raise ValueError("threshold_for_recall needs at least one positive (PNEUMONIA) example")
    k = int(np.ceil(target_recall * pos.size - 1e-9))  # positives that must score >= the threshold
    return float(pos[max(k, 1) - 1])


def record_operating_point(path: str | os.PathLike, threshold: float, target_recall: float,
                           **extra: Any) -> dict[str, Any]:
    """Write the validation-chosen threshold (and how it was chosen) into a checkpoint's metadata."""
    return update_meta(path, threshold=float(threshold), threshold_rule=threshold_rule(target_recall),
                       target_recall=float(target_recall), **extra)


def operating_threshold(meta: Mapping[str, Any], path: str | os.PathLike | None = None) -> tuple[float, str]:
    """``(threshold, rule)`` recorded by notebook 04. A checkpoint's default 0.5 — which nobody chose — is
    never used: without a recorded rule this is a one-line error naming notebook 04."""
    if meta.get("threshold_rule") and meta.get("threshold") is not None:
        return float(meta["threshold"]), str(meta["threshold_rule"])
    where = f"{Path(path).name} " if path else "the checkpoint "
    raise UserError(f"{where}carries no operating threshold chosen on validation: run {notebook_path('evaluation')} "
                    "(or let the notebook rebuild it).")


# ------------------------------------------------------------------------------------ the explanation
def record_explanation(path: str | os.PathLike, spec: Mapping[str, Any], rule: str, **extra: Any) -> dict[str, Any]:
    """Write the chosen explanation spec (a plain dict) and the rule that chose it into a checkpoint."""
    return update_meta(path, explanation=dict(spec), explanation_rule=rule, gradcam_layer=spec["layer"], **extra)


def recorded_explanation(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The explanation spec notebook 05 recorded (unvalidated), or None."""
    spec = meta.get("explanation")
    return dict(spec) if isinstance(spec, Mapping) else None


# ------------------------------------------------------------------------------------ predictions
def predictions_frame(ids: Any, labels: Any, probs: Any, patient_ids: Any, subtypes: Any, split: str) -> pd.DataFrame:
    """One row per image with the columns of ``assets/predictions_{split}.csv`` (:data:`PREDICTION_COLUMNS`)."""
    frame = pd.DataFrame({"id": np.asarray(ids).astype(str), "label": np.asarray(labels).astype(np.int64),
                          "prob": np.asarray(probs, dtype=np.float64),
                          "patient_id": np.asarray(patient_ids).astype(str),
                          "subtype": np.asarray(subtypes).astype(str)})  # raises on unequal lengths
    frame["split"] = split
    return frame


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """Read a predictions CSV; a one-line error names missing columns."""
    frame = pd.read_csv(path, dtype={"id": str, "patient_id": str, "subtype": str, "split": str},
                        keep_default_na=False)
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(PREDICTION_COLUMNS)}); "
                        f"re-run {notebook_path('evaluation')}.")
    return frame


def check_predictions_match(frame: pd.DataFrame, ids: Any, labels: Any, what: str = "the split") -> None:
    """The predictions describe exactly these images (same ids, same order, same labels), or a one-line error."""
    ids, labels = np.asarray(ids).astype(str), np.asarray(labels).astype(np.int64)
    if len(frame) != len(ids) or not np.array_equal(frame["id"].to_numpy(str), ids):
        raise UserError(f"the predictions do not match {what} ({len(frame)} rows for {len(ids)} images): "
                        f"re-run {notebook_path('evaluation')} with this data.")
    if not np.array_equal(frame["label"].to_numpy(np.int64), labels):
        raise UserError(f"the predictions' labels differ from {what}: re-run {notebook_path('evaluation')}.")


# ------------------------------------------------------------------------------------ model vs data
def data_mismatch(meta: Mapping[str, Any], bundle: Any) -> str | None:
    """Why a checkpoint does not belong to ``bundle`` (other data or another image size), or None."""
    fp, size = meta.get("data_fingerprint"), meta.get("image_size")
    if fp is not None and fp != bundle.fingerprint:
        return f"it was trained on other data (fingerprint {fp}, this data: {bundle.fingerprint})"
    if size is not None and int(size) != int(bundle.image_size):
        return f"it was trained at {size} px, this data is {bundle.image_size} px"
    return None


def checkpoint_state(path: str | os.PathLike, bundle: Any, need: tuple[str, ...] = ()) -> str | None:
    """None when the checkpoint at ``path`` exists, belongs to ``bundle`` and has every metadata key of
    ``need``; else the reason (missing, unreadable, other data, not yet recorded)."""
    path = Path(path)
    if not path.exists():
        return "it is missing"
    try:
        meta = load_checkpoint(path)["meta"]
    except UserError as exc:
        return f"it cannot be used ({exc})"
    reason = data_mismatch(meta, bundle)
    if reason:
        return reason
    absent = [k for k in need if k not in meta]
    return f"it carries no {', '.join(absent)} yet" if absent else None
