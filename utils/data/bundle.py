"""The shape every data source returns: a :class:`DataBundle` of :class:`Split` s.

A split holds uint8 images decoded once (N×S×S), labels (0 = NORMAL, 1 = PNEUMONIA), image and patient ids,
the pneumonia subtype, content hashes and — for phantoms — lung and lesion masks and a lesion table.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.config import CLASSES

SPLITS = ("train", "val", "test")

#: How each source is named in reports and figure captions.
SOURCE_NAMES = {"folder": "Kermany chest X-rays", "medmnist": "PneumoniaMNIST", "phantom": "phantom X-rays"}


@dataclass
class Split:
    """One split: images decoded once (uint8, N×S×S) with per-image labels and metadata."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    patient_ids: np.ndarray
    subtypes: np.ndarray
    hashes: np.ndarray
    lung_masks: np.ndarray | None = None
    lesion_masks: np.ndarray | None = None
    info: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray, name: str | None = None) -> Split:
        """The images at ``idx`` (masks and info follow)."""
        idx = np.asarray(idx)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        info = None if self.info is None else self.info.iloc[idx].reset_index(drop=True)
        return Split(name or self.name, self.images[idx], self.labels[idx], self.ids[idx],
                     self.patient_ids[idx], self.subtypes[idx], self.hashes[idx],
                     pick(self.lung_masks), pick(self.lesion_masks), info)

    def summary(self) -> dict[str, Any]:
        """Counts: images per class, patients, subtypes."""
        return {"images": len(self), "NORMAL": int((self.labels == 0).sum()),
                "PNEUMONIA": int((self.labels == 1).sum()),
                "patients": len(np.unique(self.patient_ids)),
                "bacteria": int((self.subtypes == "bacteria").sum()),
                "virus": int((self.subtypes == "virus").sum())}


@dataclass
class DataBundle:
    """What every source returns."""

    source: str
    image_size: int
    splits: dict[str, Split]
    fingerprint: str
    classes: tuple[str, ...] = CLASSES
    notes: list[str] = field(default_factory=list)
    root: Path | None = None

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]

    def describe(self) -> str:
        """One line: the source, where it came from, and the split sizes (for reports and captions)."""
        sizes = " / ".join(f"{k} {len(s)}" for k, s in self.splits.items())
        where = f" from {self.root}" if self.root is not None and self.source == "folder" else ""
        return f"{SOURCE_NAMES.get(self.source, self.source)}{where}: {sizes} images at {self.image_size} px"

    def summary(self) -> pd.DataFrame:
        """One row per split with class, patient and subtype counts."""
        return pd.DataFrame({k: s.summary() for k, s in self.splits.items()}).T


def pixel_hashes(images: np.ndarray) -> np.ndarray:
    """SHA-1 of each image's pixels (the content hash of images made in memory: phantoms, marked or cleaned copies)."""
    return np.array([hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images])


def fingerprint(splits: dict[str, Split]) -> str:
    """Content fingerprint of a dataset: split, id, label and image hash of every image."""
    h = hashlib.sha1()
    for name in sorted(splits):
        s = splits[name]
        for i in np.argsort(s.ids, kind="stable"):
            h.update(f"{name}|{s.ids[i]}|{s.labels[i]}|{s.hashes[i]}\n".encode())
    return h.hexdigest()[:16]
