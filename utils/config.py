"""Profiles and knobs: what a run is (its classes, normalisation, profile and the named knobs).

Every notebook calls :func:`get_config` with its parameters cell's values; environment variables
override them (``CXR_PROFILE``, ``CXR_DATA_DIR``, ``CXR_SOURCE``, ``CXR_IMAGE_SIZE``, ``CXR_EPOCHS_PHASE1/2``),
so CI and Colab can steer a run without editing a notebook. Where files live (the project root, the artifact
registry, the notebooks) is :mod:`utils.paths`; the one user-error type is :mod:`utils.errors`.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from utils.errors import UserError
from utils.paths import artifact, project_root, require

CLASSES: tuple[str, str] = ("NORMAL", "PNEUMONIA")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------- profiles
_DEMO: dict[str, Any] = {
    "name": "demo",
    "description": "offline: procedural phantom chest X-rays, CPU-sized, phantom-pretrained backbone",
    "source": "phantom",
    "image_size": 128,
    "weights": "phantom",  # the offline stand-in for ImageNet (model/phantom_resnet18_pretrained.pt)
    "phantom": {"n_patients_train": 330, "n_patients_test": 110, "seed": 2024, "difficulty": "default"},
    "val_fraction": 0.2,
    "batch_size": 32,
    "num_workers": 0,
    "seed": 42,
    "phase1": {"epochs": 3, "lr": 1e-3, "weight_decay": 1e-4},
    # lr: a fine-tuning rate for pretrained weights; lr_scratch replaces it when the start was random
    "phase2": {"epochs": 3, "lr": 1e-4, "lr_scratch": 1e-3, "step_size": 2, "gamma": 0.3, "weight_decay": 1e-4,
               "discriminative": True, "lr_decay": 0.5},
    "target_recall": 0.98,
    "n_bootstrap": 500,
}

_FULL: dict[str, Any] = {
    "name": "full",
    "description": "real data (Kermany folder layout or PneumoniaMNIST), ImageNet weights, GPU-sized",
    "source": "folder",
    "image_size": 224,
    "weights": "imagenet",
    "phantom": _DEMO["phantom"],
    "val_fraction": 0.15,
    "batch_size": 64,
    "num_workers": 2,
    "seed": 42,
    "phase1": {"epochs": 5, "lr": 1e-3, "weight_decay": 0.0},
    "phase2": {"epochs": 10, "lr": 1e-4, "lr_scratch": 1e-3, "step_size": 5, "gamma": 0.1, "weight_decay": 0.0,
               "discriminative": True, "lr_decay": 0.5},
    "target_recall": 0.98,
    "n_bootstrap": 1000,
}

PROFILES: dict[str, dict[str, Any]] = {"demo": _DEMO, "full": _FULL}

#: Where the data come from: ``auto`` = ``DATA_DIR`` if set, else the phantoms (with a banner).
SOURCES = ("auto", "folder", "medmnist", "phantom")

#: The named knobs of every notebook's parameters cell and the environment variables that override them.
KNOB_ENV: dict[str, str] = {"profile": "CXR_PROFILE", "data_dir": "CXR_DATA_DIR", "source": "CXR_SOURCE",
                            "image_size": "CXR_IMAGE_SIZE", "epochs_phase1": "CXR_EPOCHS_PHASE1",
                            "epochs_phase2": "CXR_EPOCHS_PHASE2"}

#: What to set when real data was asked for and none is there (one line, shown by every real-data error).
REAL_DATA_HINT = ('set DATA_DIR (or CXR_DATA_DIR) to a Kermany folder ROOT/{train,test}/{NORMAL,PNEUMONIA}, '
                  'DATA_DIR="kaggle" to download it with kagglehub (needs internet and a Kaggle token), '
                  'or SOURCE="medmnist" for PneumoniaMNIST; SOURCE="auto" falls back to the phantoms')


@dataclass
class Config:
    """A resolved run configuration: the profile's settings plus where data and artifacts live.

    ``knobs`` holds the values of the named knobs this run uses (profile, source, data_dir, image_size,
    epochs_phase1, epochs_phase2); every artifact records them.
    """

    profile: str
    data_dir: Path | None
    root: Path
    settings: dict[str, Any] = field(default_factory=dict)
    knobs: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    @property
    def source(self) -> str:
        """``folder``, ``medmnist`` or ``phantom`` (``auto`` is resolved when the config is made)."""
        return str(self.settings["source"])

    def path(self, name: str, tag: str | None = None, **fmt: str) -> Path:
        """Absolute path of an artifact under this run's root (``tag``: see :func:`artifact`)."""
        return artifact(name, self.root, tag, **fmt)

    def require(self, name: str, tag: str | None = None, **fmt: str) -> Path:
        """Path of an input artifact; a one-line error names the notebook to run first."""
        return require(name, self.root, tag, **fmt)

    def variant(self, **settings: Any) -> Config:
        """A copy with ``settings`` replaced (nested dicts merged), the same data, knobs and root: another model
        on the same run, e.g. notebook 09's ``cfg.variant(arch="vit_tiny")``."""
        merged = copy.deepcopy(self.settings)
        for key, value in settings.items():
            merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) \
                else value
        return replace(self, settings=merged, knobs=dict(self.knobs), notes=list(self.notes))

    def describe(self) -> str:
        """One line: profile, source, image size, epochs, data folder and project root."""
        k = self.knobs
        data = f" | data {self.data_dir}" if self.data_dir else ""
        return (f"profile {k['profile']!r} | source {k['source']!r} | {k['image_size']} px | epochs "
                f"{k['epochs_phase1']} + {k['epochs_phase2']}{data} | outputs in {self.root}")


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _whole(value: Any, name: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high]; a one-line error names the knob otherwise."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise UserError(f"{name}={value!r} is not a whole number; set it to one in {low}..{high}.") from None
    if not low <= number <= high:
        raise UserError(f"{name}={number} is out of range: choose a value in {low}..{high}.")
    return number


def get_config(profile: str = "demo", data_dir: str | os.PathLike | None = None, source: str | None = None,
               image_size: int | None = None, epochs_phase1: int | None = None, epochs_phase2: int | None = None,
               quiet: bool = False, **overrides: Any) -> Config:
    """Resolve a run from the named knobs of a parameters cell; the environment wins over every argument.

    ``profile`` (``CXR_PROFILE``), ``data_dir`` (``CXR_DATA_DIR``), ``source`` (``CXR_SOURCE``: auto, folder,
    medmnist, phantom; None = the profile's, or ``folder`` when a data folder is given), ``image_size``
    (``CXR_IMAGE_SIZE``), ``epochs_phase1`` / ``epochs_phase2`` (``CXR_EPOCHS_PHASE1`` / ``_PHASE2``); None =
    the profile's value. ``source="auto"`` without a data folder falls back to the phantoms and the demo
    profile, with a banner (the only fallback there is); ``folder`` without a data folder is a one-line
    error naming what to set. ``overrides`` replace other settings (nested ones are dicts merged in, e.g.
    ``phase1={"lr": 1e-2}``). ``quiet`` suppresses the banner.
    """
    given = {"profile": profile, "data_dir": data_dir, "source": source, "image_size": image_size,
             "epochs_phase1": epochs_phase1, "epochs_phase2": epochs_phase2}
    knob_from = {k: ("cell" if v not in (None, "") else "profile") for k, v in given.items()}
    for key, var in KNOB_ENV.items():
        if _env(var) is not None:
            given[key], knob_from[key] = _env(var), var
    prof = str(given["profile"] or "demo")
    if prof not in PROFILES:
        raise UserError(f"unknown profile {prof!r}: choose one of {', '.join(PROFILES)}.")
    chosen_dir = str(given["data_dir"]).strip() if given["data_dir"] not in (None, "") else ""
    src = given["source"]
    if src is not None and str(src) not in SOURCES:
        raise UserError(f"unknown source {src!r}: choose one of {', '.join(SOURCES)}.")
    src = str(src) if src is not None else ("folder" if chosen_dir else PROFILES[prof]["source"])
    notes: list[str] = []
    if src == "auto":
        if chosen_dir:
            src = "folder"
        else:
            src = "phantom"
            if prof != "demo":
                notes.append(f"SOURCE='auto' found no real data (DATA_DIR is empty): the {prof!r} profile was replaced "
                             "by the demo profile on the embedded PHANTOM images; nothing below is a real-data result")
                prof = "demo"
    if src == "folder" and not chosen_dir:
        raise UserError(f"no real data: SOURCE={src!r} needs a data folder — {REAL_DATA_HINT}.")
    if src == "phantom" and chosen_dir:
        notes.append(f"DATA_DIR={chosen_dir!r} is not used: SOURCE is 'phantom'")
    settings = copy.deepcopy(PROFILES[prof])
    settings["source"] = src
    if given["image_size"] is not None:
        settings["image_size"] = _whole(given["image_size"], "IMAGE_SIZE", 16, 1024)
    for phase, key in (("phase1", "epochs_phase1"), ("phase2", "epochs_phase2")):
        if given[key] is not None:
            settings[phase]["epochs"] = _whole(given[key], key.upper(), 1, 1000)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key].update(value)
        else:
            settings[key] = value
    root = project_root()
    for sub in ("data", "model", "assets"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    knobs = {"profile": prof, "source": src, "data_dir": chosen_dir or None,
             "image_size": int(settings["image_size"]), "epochs_phase1": int(settings["phase1"]["epochs"]),
             "epochs_phase2": int(settings["phase2"]["epochs"]),
             "set_by": {k: v for k, v in knob_from.items() if v != "profile"}}
    if prof != str(given["profile"] or "demo"):
        knobs["requested_profile"] = str(given["profile"])
    if not quiet:
        for note in notes:
            print(banner(f"PHANTOM FALLBACK: {note}") if "replaced" in note else f"note: {note}")
    return Config(profile=prof, data_dir=Path(chosen_dir).expanduser() if chosen_dir else None,
                  root=root, settings=settings, knobs=knobs, notes=notes)


def banner(text: str, width: int = 100) -> str:
    """``text`` between two rules of ``=``: for what a reader must not miss."""
    return f"{'=' * width}\n{text}\n{'=' * width}"

