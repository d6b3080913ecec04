"""Profiles, artifact paths and environment overrides: the one place names are set.

Every notebook calls :func:`get_config` with its parameters cell's values; environment variables
override them (``CXR_PROFILE``, ``CXR_DATA_DIR``, ``CXR_PROJECT_ROOT``), so CI and Colab can steer a
run without editing a notebook.
"""
from __future__ import annotations

import copy
import os
import socket
from dataclasses import dataclass, field, replace
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


def repo_root() -> Path | None:
    """The repository checkout this package was imported from, or None (a non-editable install).

    A checkout is recognised by ``pyproject.toml`` and ``notebooks/`` next to the ``utils`` package; inside
    site-packages neither is there, so nothing is ever written next to an installed package.
    """
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").is_file() and (here / "notebooks").is_dir() else None


def project_root() -> Path:
    """Where run-time outputs live (``data/``, ``model/``, ``assets/``): ``CXR_PROJECT_ROOT`` if set, else
    the repository checkout. Without either (an installed package, no checkout) a one-line error asks for
    ``CXR_PROJECT_ROOT``."""
    env = os.environ.get("CXR_PROJECT_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    repo = repo_root()
    if repo is None:
        raise UserError("no project folder: set CXR_PROJECT_ROOT to the folder where data/, model/ and assets/ "
                        "should live (the package is installed without its repository).")
    return repo


#: Files the repository ships (found in the checkout whatever ``CXR_PROJECT_ROOT`` says).
SHIPPED: dict[str, str] = {
    "pretrained_backbone": "model/phantom_resnet18_pretrained.pt",
    "vit_backbone": "model/phantom_vit_tiny_pretrained.pt",
}


def shipped(name: str) -> Path:
    """Path of a file the repository ships: in the checkout, else under the project root (``model/``)."""
    if name not in SHIPPED:
        raise KeyError(f"unknown shipped file {name!r}; known: {', '.join(sorted(SHIPPED))}")
    repo = repo_root()
    if repo is not None and (repo / SHIPPED[name]).exists():
        return repo / SHIPPED[name]
    if os.environ.get("CXR_PROJECT_ROOT") or repo is not None:
        return project_root() / SHIPPED[name]
    return Path(SHIPPED[name])  # neither: a relative path that names the file in the error message


#: File names of every artifact passed between notebooks (relative to the project root).
ARTIFACTS: dict[str, str] = {
    # data
    "phantom_dir": "data/phantom_chest_xray",
    "cache_dir": "data/cache",
    # model/
    "phase1_last": "model/phase1_last.pt",
    "phase1_best": "model/phase1_best.pt",
    "phase2_last": "model/phase2_last.pt",
    "final_best": "model/pneumonia_final_best.pt",
    "model": "model/pneumonia_model.pt",  # the shipped model: the phase chosen on validation, with its threshold
    "int8_model": "model/pneumonia_model_int8.onnx",  # ONNX Runtime static INT8 (notebook 07)
    "onnx_fp32": "model/pneumonia_model.onnx",  # the FP32 export it was quantised from
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
    "shortcut": "assets/shortcut.json",  # notebook 08: the controlled shortcut experiment and the real-data finds
    "shortcut_examples": "assets/shortcut_examples.png",
    "shortcut_metrics": "assets/shortcut_metrics.png",
    "shortcut_maps": "assets/shortcut_maps.png",
    "marker_finds": "assets/marker_finds.png",
    "marker_summary": "assets/marker_summary.csv",
    "vit_comparison": "assets/vit_comparison.json",  # notebook 09: ResNet-18 vs ViT-Tiny on the same test set
    "vit_training_curves": "assets/vit_training_curves.png",
    "vit_maps": "assets/vit_maps.png",
    "vit_false_negatives": "assets/vit_false_negatives.png",
}


def artifact(name: str, root: Path | None = None, tag: str | None = None, **fmt: str) -> Path:
    """Absolute path of the artifact ``name`` (see :data:`ARTIFACTS`); ``fmt`` fills placeholders. A ``tag``
    names another run of the same stage — the ViT of notebook 09 (``vit``), the shortcut models of notebook 08 —
    whose files sit beside the main ones with the tag in front (``model/vit_phase1_best.pt``)."""
    if name not in ARTIFACTS:
        raise KeyError(f"unknown artifact {name!r}; known: {', '.join(sorted(ARTIFACTS))}")
    rel = Path(ARTIFACTS[name].format(**fmt) if fmt else ARTIFACTS[name])
    if tag:
        rel = rel.with_name(f"{tag}_{rel.name}")
    return (root or project_root()) / rel


#: Which notebook produces which artifact (used in "run notebook NN first" messages).
PRODUCED_BY: dict[str, str] = {
    "phantom_dir": "01_data_exploration.ipynb",
    "data_summary": "01_data_exploration.ipynb",
    "phase1_best": "02_phase1_warmup.ipynb",
    "phase1_last": "02_phase1_warmup.ipynb",
    "final_best": "03_phase2_finetune.ipynb",
    "model": "04_evaluation.ipynb",
    "history_phase1": "02_phase1_warmup.ipynb",
    "history_phase2": "03_phase2_finetune.ipynb",
    "predictions": "04_evaluation.ipynb",
    "metrics": "04_evaluation.ipynb",
    "final_cm": "04_evaluation.ipynb",
    "localisation": "05_gradcam.ipynb",
    "int8_model": "07_int8_deployment.ipynb",
    "shortcut": "08_shortcut_learning.ipynb",
    "vit_comparison": "09_vit_comparison.ipynb",
}


def require(name: str, root: Path | None = None, tag: str | None = None, **fmt: str) -> Path:
    """Path of an artifact that must already exist; a :class:`UserError` names the notebook to run first."""
    path = artifact(name, root, tag, **fmt)
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


def is_online(host: str, timeout: float = 3.0) -> bool:
    """Whether ``host`` answers on port 443 within ``timeout`` seconds: every download asks this first, so that
    offline a download fails in one line at once instead of hanging or printing a library's traceback."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
