"""Where things are: the project root, the files the repository ships, the artifact registry, the notebooks.

* :func:`project_root` — where run-time outputs live (``data/``, ``model/``, ``assets/``): ``CXR_PROJECT_ROOT``
  if set, else the repository checkout; :func:`repo_root` — the checkout itself.
* :data:`SHIPPED` / :func:`shipped` — files the repository ships (the phantom-pretrained backbones).
* :data:`ARTIFACTS` / :func:`artifact` / :func:`require` — the file name of every hand-over between notebooks.
* :data:`NOTEBOOKS` / :func:`notebook_path` — the notebook of each stage (every "run notebook NN first" message);
  :data:`PRODUCED_BY` — which notebook writes which artifact, built from it.
* :data:`GITHUB_REPO` / :data:`GITHUB_BRANCH` — every Colab link.

Every name is set here once; the rest of the package reads it from here.
"""
from __future__ import annotations

import os
from pathlib import Path

from utils.errors import UserError

#: GitHub ``owner/repo`` used by every Colab link (set in exactly one place).
GITHUB_REPO = "cxr-xai/explainable-pneumonia-gradcam"
GITHUB_BRANCH = "main"


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
    "shifted_phantom_dir": "data/phantom_chest_xray_shifted",  # notebook 04: the built-in shifted population
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
    "phase_scores": "assets/phase_scores.png",  # notebook 03: each validation image under phase 1 and phase 2
    "all_at_once": "assets/all_at_once.png",  # notebook 03: why two phases (all layers at once, no warm-up)
    "predictions": "assets/predictions_{split}.csv",
    "metrics": "assets/metrics.json",
    "final_cm": "assets/final_cm.png",
    "roc_pr": "assets/roc_pr.png",
    "reliability": "assets/reliability.png",
    "subtype_recall": "assets/subtype_recall.png",
    "model_comparison": "assets/model_comparison.png",
    "score_shift": "assets/score_shift.png",  # notebook 04: validation vs the new population
    "recalibration": "assets/recalibration.png",  # notebook 04: local recalibration on the new population
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
    "shortcut_attention": "assets/shortcut_attention.png",  # notebook 08: map mass on the marker, with / without it
    "shortcut_dose": "assets/shortcut_dose.png",  # notebook 08: AUC against the strength of the confounder
    "marker_finds": "assets/marker_finds.png",
    "marker_summary": "assets/marker_summary.csv",
    "vit_comparison": "assets/vit_comparison.json",  # notebook 09: ResNet-18 vs ViT-Tiny on the same test set
    "vit_training_curves": "assets/vit_training_curves.png",
    "vit_maps": "assets/vit_maps.png",
    "vit_false_negatives": "assets/vit_false_negatives.png",
    "attribution_leaderboard": "assets/attribution_leaderboard.json",  # notebook 10: every method, every check
    "attribution_leaderboard_figure": "assets/attribution_leaderboard.png",
    "attribution_maps": "assets/attribution_maps.png",
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


#: The notebook of each stage of the series (file names under ``notebooks/``): the one place they are spelled.
NOTEBOOKS: dict[str, str] = {
    "index": "00_index.ipynb",
    "data": "01_data_exploration.ipynb",
    "phase1": "02_phase1_warmup.ipynb",
    "phase2": "03_phase2_finetune.ipynb",
    "evaluation": "04_evaluation.ipynb",
    "explanation": "05_gradcam.ipynb",
    "failures": "06_false_negatives.ipynb",
    "int8": "07_int8_deployment.ipynb",
    "shortcut": "08_shortcut_learning.ipynb",
    "vit": "09_vit_comparison.ipynb",
    "attribution": "10_beyond_gradcam.ipynb",
}


def notebook_path(stage: str) -> str:
    """``notebooks/NN_name.ipynb`` of a stage of :data:`NOTEBOOKS`, as messages name it ("run … first")."""
    if stage not in NOTEBOOKS:
        raise KeyError(f"unknown stage {stage!r}; known: {', '.join(NOTEBOOKS)}")
    return f"notebooks/{NOTEBOOKS[stage]}"


#: Which notebook produces which artifact (used in "run notebook NN first" messages), from :data:`NOTEBOOKS`.
PRODUCED_BY: dict[str, str] = {name: NOTEBOOKS[stage] for name, stage in {
    "phantom_dir": "data",
    "data_summary": "data",
    "phase1_best": "phase1",
    "phase1_last": "phase1",
    "final_best": "phase2",
    "model": "evaluation",
    "history_phase1": "phase1",
    "history_phase2": "phase2",
    "predictions": "evaluation",
    "metrics": "evaluation",
    "final_cm": "evaluation",
    "localisation": "explanation",
    "int8_model": "int8",
    "shortcut": "shortcut",
    "vit_comparison": "vit",
    "attribution_leaderboard": "attribution",
}.items()}


def require(name: str, root: Path | None = None, tag: str | None = None, **fmt: str) -> Path:
    """Path of an artifact that must already exist; a :class:`UserError` names the notebook to run first."""
    path = artifact(name, root, tag, **fmt)
    if not path.exists():
        nb = PRODUCED_BY.get(name)
        hint = f"run notebooks/{nb} first" if nb else "create it first"
        raise UserError(f"{path} is missing: {hint}.")
    return path
