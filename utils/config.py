"""Profiles, artifact paths and environment overrides: the one place names are set.

Every notebook calls :func:`get_config` with its parameters cell's values; environment variables
override them (``CXR_PROFILE``, ``CXR_DATA_DIR``, ``CXR_PROJECT_ROOT``), so CI and Colab can steer a
run without editing a notebook.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLASSES: tuple[str, str] = ("NORMAL", "PNEUMONIA")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: GitHub ``owner/repo`` used by every Colab link (set in exactly one place).
GITHUB_REPO = "cxr-xai/explainable-pneumonia-gradcam"
GITHUB_BRANCH = "main"


class UserError(Exception):
    """A mistake the user can fix (bad path, bad option, bad file): shown as one line, never a trace."""


def project_root() -> Path:
    """The repository root: ``CXR_PROJECT_ROOT`` if set, else the folder holding ``pyproject.toml``."""
    env = os.environ.get("CXR_PROJECT_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve().parent.parent
    return here


#: File names of every artifact passed between notebooks (relative to the project root).
ARTIFACTS: dict[str, str] = {
    # data
    "phantom_dir": "data/phantom_chest_xray",
    "cache_dir": "data/cache",
    # model/
    "pretrained_backbone": "model/phantom_resnet18_pretrained.pt",
    "phase1_last": "model/phase1_last.pt",
    "phase1_best": "model/phase1_best.pt",
    "phase2_last": "model/phase2_last.pt",
    "final_best": "model/pneumonia_final_best.pt",
    "int8_model": "model/pneumonia_final_int8.pt",
    "onnx_fp32": "model/pneumonia_final.onnx",
    "onnx_int8": "model/pneumonia_final_int8.onnx",
    # assets/
    "data_summary": "assets/data_summary.json",
    "sample_grid": "assets/sample_grid.png",
    "class_balance": "assets/class_balance.png",
    "images_per_patient": "assets/images_per_patient.png",
    "image_sizes": "assets/image_sizes.png",
    "intensity_histograms": "assets/intensity_histograms.png",
    "lesion_properties": "assets/lesion_properties.png",
    "augmentation_examples": "assets/augmentation_examples.png",
    "phase1_curves": "assets/phase1_curves.png",
    "history_phase1": "assets/history_phase1.csv",
    "history_phase2": "assets/history_phase2.csv",
    "training_curves": "assets/training_curves.png",
    "predictions": "assets/predictions_{split}.csv",
    "metrics": "assets/metrics.json",
    "final_cm": "assets/final_cm.png",
    "roc_pr": "assets/roc_pr.png",
    "reliability": "assets/reliability.png",
    "subtype_recall": "assets/subtype_recall.png",
    "model_comparison": "assets/model_comparison.png",
    "gradcam_steps": "assets/gradcam_steps.png",
    "sanity_check": "assets/sanity_check.png",
    "localisation_bars": "assets/localisation_bars.png",
    "faithfulness": "assets/faithfulness.png",
    "cam_methods": "assets/cam_methods.png",
    "final_gradcam": "assets/final_gradcam.png",
    "error_gradcam": "assets/error_gradcam.png",
    "false_negatives": "assets/false_negatives.csv",
    "fn_cases": "assets/false_negative_cases.png",
    "fn_outside_lung": "assets/false_negative_outside_lung.png",
    "localisation": "assets/localisation.csv",
    "int8_report": "assets/int8_report.json",
    "int8_gradcam": "assets/int8_gradcam.png",
    "benchmark": "assets/benchmark.json",
}


def artifact(name: str, root: Path | None = None, **fmt: str) -> Path:
    """Absolute path of the artifact ``name`` (see :data:`ARTIFACTS`); ``fmt`` fills placeholders."""
    if name not in ARTIFACTS:
        raise KeyError(f"unknown artifact {name!r}; known: {', '.join(sorted(ARTIFACTS))}")
    rel = ARTIFACTS[name].format(**fmt) if fmt else ARTIFACTS[name]
    return (root or project_root()) / rel


#: Which notebook produces which artifact (used in "run notebook NN first" messages).
PRODUCED_BY: dict[str, str] = {
    "phantom_dir": "01_data_exploration.ipynb",
    "data_summary": "01_data_exploration.ipynb",
    "phase1_best": "02_phase1_warmup.ipynb",
    "phase1_last": "02_phase1_warmup.ipynb",
    "final_best": "03_phase2_finetune.ipynb",
    "history_phase1": "02_phase1_warmup.ipynb",
    "history_phase2": "03_phase2_finetune.ipynb",
    "predictions": "04_evaluation.ipynb",
    "metrics": "04_evaluation.ipynb",
    "final_cm": "04_evaluation.ipynb",
    "localisation": "05_gradcam.ipynb",
    "int8_model": "07_int8_deployment.ipynb",
}


def require(name: str, root: Path | None = None, **fmt: str) -> Path:
    """Path of an artifact that must already exist; a :class:`UserError` names the notebook to run first."""
    path = artifact(name, root, **fmt)
    if not path.exists():
        nb = PRODUCED_BY.get(name)
        hint = f"run notebooks/{nb} first" if nb else "create it first"
        raise UserError(f"{path} is missing: {hint}.")
    return path


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
    "phase2": {"epochs": 3, "lr": 1e-4, "step_size": 2, "gamma": 0.3, "weight_decay": 1e-4,
               "discriminative": True, "lr_decay": 0.5},
    "target_recall": 0.98,
    "n_bootstrap": 500,
    "gradcam_layer": "auto",  # chosen on validation in notebook 05 among layer3 / layer4
}

_FULL: dict[str, Any] = {
    "name": "full",
    "description": "real data (Kermany folder layout or PneumoniaMNIST), ImageNet weights, GPU-sized",
    "source": "folder",  # or "medmnist"
    "image_size": 224,
    "weights": "imagenet",
    "phantom": _DEMO["phantom"],
    "val_fraction": 0.15,
    "batch_size": 64,
    "num_workers": 2,
    "seed": 42,
    "phase1": {"epochs": 5, "lr": 1e-3, "weight_decay": 0.0},
    "phase2": {"epochs": 10, "lr": 1e-5, "step_size": 5, "gamma": 0.1, "weight_decay": 0.0,
               "discriminative": False, "lr_decay": 0.5},
    "target_recall": 0.98,
    "n_bootstrap": 1000,
    "gradcam_layer": "layer4",
}

PROFILES: dict[str, dict[str, Any]] = {"demo": _DEMO, "full": _FULL}


@dataclass
class Config:
    """A resolved run configuration: the profile's settings plus where data and artifacts live."""

    profile: str
    data_dir: Path | None
    root: Path
    settings: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    def path(self, name: str, **fmt: str) -> Path:
        """Absolute path of an artifact under this run's root."""
        return artifact(name, self.root, **fmt)

    def require(self, name: str, **fmt: str) -> Path:
        """Path of an input artifact; a one-line error names the notebook to run first."""
        return require(name, self.root, **fmt)


def get_config(profile: str = "demo", data_dir: str | os.PathLike | None = None,
               **overrides: Any) -> Config:
    """Resolve a profile. ``CXR_PROFILE`` / ``CXR_DATA_DIR`` in the environment win over arguments.

    ``overrides`` replace top-level settings (e.g. ``image_size=64``) or, for nested ones, are dicts
    merged into them (e.g. ``phase1={"epochs": 1}``).
    """
    profile = os.environ.get("CXR_PROFILE") or profile
    if profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}.")
    env_dir = os.environ.get("CXR_DATA_DIR")
    chosen = env_dir or (str(data_dir) if data_dir else "")
    settings = copy.deepcopy(PROFILES[profile])
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key].update(value)
        else:
            settings[key] = value
    root = project_root()
    for sub in ("data", "model", "assets"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return Config(profile=profile, data_dir=Path(chosen).expanduser() if chosen else None,
                  root=root, settings=settings)
