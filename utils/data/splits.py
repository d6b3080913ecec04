"""Patient-wise splits and the leak guard.

Validation is carved from the training pool **by patient** (:func:`patient_split`); :func:`check_no_leaks`
refuses splits that share a patient or an identical image (content hash). :func:`file_level_leak`
measures what a naive file-level split would have leaked, for notebook 01.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from utils.data.bundle import Split
from utils.errors import UserError


class LeakageError(UserError):
    """Two splits share a patient or an identical image."""


def patient_split(patient_ids: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): whole patients go to val, stratified by patient label, seeded."""
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    df = pd.DataFrame({"pid": patient_ids, "y": labels})
    per_patient = df.groupby("pid")["y"].max()
    rng = np.random.default_rng(seed)
    val_pids: list[str] = []
    for _, pids in per_patient.groupby(per_patient):
        pids = np.array(sorted(pids.index))
        rng.shuffle(pids)
        k = round(val_fraction * len(pids))
        if len(pids) >= 2:  # both classes in val (an AUC needs them), at least one patient left to train on
            k = min(max(k, 1), len(pids) - 1)
        val_pids.extend(pids[:k])
    in_val = df["pid"].isin(set(val_pids)).to_numpy()
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


@dataclass
class LeakReport:
    """Patients and identical images (content hash) shared between splits."""

    shared_patients: dict[str, list[str]]
    shared_images: dict[str, list[str]]

    @property
    def ok(self) -> bool:
        return not any(self.shared_patients.values()) and not any(self.shared_images.values())

    def summary(self) -> str:
        parts = [f"{pair}: {len(v)} patients (e.g. {', '.join(v[:3])})"
                 for pair, v in self.shared_patients.items() if v]
        parts += [f"{pair}: {len(v)} identical images (e.g. {', '.join(v[:3])})"
                  for pair, v in self.shared_images.items() if v]
        return "; ".join(parts) or "no patient or identical image is shared between splits"


def find_leaks(splits: dict[str, Split]) -> LeakReport:
    """Report patients and exact-duplicate images (by content hash) that appear in two splits."""
    names = sorted(splits)
    pats: dict[str, list[str]] = {}
    imgs: dict[str, list[str]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pair = f"{a}/{b}"
            pats[pair] = sorted(set(splits[a].patient_ids) & set(splits[b].patient_ids))
            common = set(splits[a].hashes) & set(splits[b].hashes)
            imgs[pair] = sorted(splits[a].ids[np.isin(splits[a].hashes, list(common))]) if common else []
    return LeakReport(pats, imgs)


def check_no_leaks(splits: dict[str, Split]) -> LeakReport:
    """:func:`find_leaks`, raising :class:`LeakageError` when any split pair leaks."""
    report = find_leaks(splits)
    if not report.ok:
        raise LeakageError(f"leaking splits — {report.summary()}. Split by patient (utils.data.patient_split).")
    return report


def duplicate_groups(split: Split) -> list[list[str]]:
    """Groups of image ids with identical content inside one split."""
    groups = pd.Series(split.ids).groupby(split.hashes).agg(list)
    return sorted(g for g in groups if len(g) > 1)


def file_level_leak(split: Split, val_fraction: float, seed: int) -> dict[str, int]:
    """What a naive file-level re-split of ``split`` would leak (patients and identical images in both parts)."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(split))
    n_val = round(val_fraction * len(split))
    a, b = split.subset(idx[n_val:], "train"), split.subset(idx[:n_val], "val")
    rep = find_leaks({"train": a, "val": b})
    val_leaky = np.isin(b.patient_ids, rep.shared_patients["train/val"])
    return {"val_images": len(b), "val_images_with_patient_in_train": int(val_leaky.sum()),
            "shared_patients": len(rep.shared_patients["train/val"]),
            "identical_images_across": len(rep.shared_images["train/val"])}


def duplicate_table(splits: dict[str, Split]) -> pd.DataFrame:
    """One row per group of identical images inside a split: split, copies, ids, patients, same patient?"""
    rows = []
    for name, s in splits.items():
        for group in duplicate_groups(s):
            pids = sorted(set(s.patient_ids[np.isin(s.ids, group)]))
            rows.append({"split": name, "copies": len(group), "ids": ", ".join(group),
                         "patients": ", ".join(pids), "same_patient": len(pids) == 1})
    return pd.DataFrame(rows, columns=["split", "copies", "ids", "patients", "same_patient"])
