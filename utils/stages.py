"""Every notebook runs alone: what an upstream notebook would have written is rebuilt here when it is missing.

On Colab each notebook opened from its badge gets a fresh runtime, so notebook 05 cannot count on notebook 04
having run. Each ``ensure_*`` checks one hand-over (:mod:`utils.artifacts`) and, when it is missing or belongs
to other data, rebuilds it by calling **the same function the upstream notebook calls** — never a second
implementation — after printing one line that says what is rebuilt, why, and about how long it takes::

    ensure_phase1      → utils.train.pipeline.run_phase1          (notebook 02)
    ensure_phase2      → ensure_phase1, utils.train.pipeline.run_phase2          (notebook 03)
    ensure_evaluation  → ensure_phase2, utils.evaluate.evaluation.evaluate_models (notebook 04)
    ensure_explanation → ensure_evaluation, utils.explain.choice.choose_and_record (notebook 05)

Each returns the path of the checkpoint it guarantees. Rebuilding never touches data the user did not ask
for: the artifacts are rebuilt for the data and knobs of ``cfg``, in ``cfg.root``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from utils.artifacts import checkpoint_state
from utils.config import Config
from utils.data.bundle import DataBundle
from utils.paths import notebook_path

#: Measured training throughput (images/s) at 128 px: this project's loop on a 2-core CPU (ResNet-18, batch 32)
#: and, conservatively, a Colab-class GPU. Scaled by (128 / size)² for other sizes; only for the estimate.
_IMG_S_128 = {"cpu": {"frozen": 60.0, "full": 19.0, "predict": 70.0},
              "cuda": {"frozen": 3000.0, "full": 1000.0, "predict": 3000.0}}


def _rate(kind: str, size: int) -> float:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return _IMG_S_128[dev][kind] * (128.0 / max(size, 16)) ** 2


def estimate_seconds(stage: str, cfg: Config, bundle: DataBundle) -> float:
    """A rough wall-time estimate of rebuilding ``stage`` (phase1, phase2, evaluation, explanation) alone."""
    n_train, n_eval = len(bundle["train"]), len(bundle["val"]) + len(bundle["test"])
    size = bundle.image_size
    train_pass = n_train / _rate("frozen", size) + len(bundle["val"]) / _rate("predict", size)
    if stage == "phase1":
        return cfg["phase1"]["epochs"] * train_pass
    if stage == "phase2":
        return cfg["phase2"]["epochs"] * (n_train / _rate("full", size) + len(bundle["val"]) / _rate("predict", size))
    if stage == "evaluation":
        return 2 * n_eval / _rate("predict", size) + 5.0
    if stage == "explanation":  # candidates' maps on the validation and test images: ~1 training pass each
        return 1.5 * n_eval / _rate("full", size)
    raise ValueError(f"unknown stage {stage!r}")


def _say(what: str, why: str, stage: str, cfg: Config, bundle: DataBundle) -> None:
    secs = estimate_seconds(stage, cfg, bundle)
    when = f"about {secs / 60:.0f} min" if secs >= 90 else f"about {max(secs, 1):.0f} s"
    where = "this GPU" if torch.cuda.is_available() else "this CPU"
    print(f"rebuilding {what} ({why}) with the code of {notebook_path(stage)}: {when} on {where}")


def _root_path(cfg: Config, name: str, tag: str | None = None) -> Path:
    path = cfg.path(name, tag)
    return path.relative_to(cfg.root) if path.is_relative_to(cfg.root) else path


def ensure_phase1(cfg: Config, bundle: DataBundle, device: str = "auto", progress: bool = True,
                  tag: str | None = None) -> Path:
    """``model/phase1_best.pt`` for this data, trained now if missing or trained on other data. ``tag``: another
    run of the stage (``utils.paths.artifact``), e.g. notebook 09's ViT."""
    reason = checkpoint_state(cfg.path("phase1_best", tag), bundle)
    if reason:
        from utils.train.pipeline import run_phase1

        _say(str(_root_path(cfg, "phase1_best", tag)), reason, "phase1", cfg, bundle)
        run_phase1(cfg, bundle, device, progress=progress, tag=tag)
    return cfg.path("phase1_best", tag)


def ensure_phase2(cfg: Config, bundle: DataBundle, device: str = "auto", progress: bool = True,
                  tag: str | None = None) -> Path:
    """``model/pneumonia_final_best.pt`` (the best phase-2 epoch) for this data."""
    reason = checkpoint_state(cfg.path("final_best", tag), bundle)
    if reason:
        from utils.train.pipeline import run_phase2

        ensure_phase1(cfg, bundle, device, progress, tag)
        _say(str(_root_path(cfg, "final_best", tag)), reason, "phase2", cfg, bundle)
        run_phase2(cfg, bundle, device, progress=progress, tag=tag)
    return cfg.path("final_best", tag)


def ensure_evaluation(cfg: Config, bundle: DataBundle, device: str = "auto", progress: bool = True,
                      tag: str | None = None) -> Path:
    """``model/pneumonia_model.pt`` with its validation-chosen threshold, and the predictions files."""
    reason = checkpoint_state(cfg.path("model", tag), bundle, need=("threshold_rule",))
    if reason is None and not all(cfg.path("predictions", tag, split=s).exists() for s in ("val", "test")):
        reason = "the predictions files are missing"
    if reason:
        from utils.evaluate.evaluation import evaluate_models

        ensure_phase2(cfg, bundle, device, progress, tag)
        ensure_phase1(cfg, bundle, device, progress, tag)
        _say(str(_root_path(cfg, "model", tag)), reason, "evaluation", cfg, bundle)
        evaluate_models(cfg, bundle, device=device, progress=progress, tag=tag)
    return cfg.path("model", tag)


def ensure_explanation(cfg: Config, bundle: DataBundle, device: str = "auto", progress: bool = True,
                       tag: str | None = None) -> Path:
    """The shipped model with the explanation notebook 05 chose recorded in its metadata."""
    ensure_evaluation(cfg, bundle, device, progress, tag)
    reason = checkpoint_state(cfg.path("model", tag), bundle, need=("explanation",))
    if reason:
        from utils.explain.choice import choose_and_record

        _say("the main explanation" + (f" of the {tag} model" if tag else ""), reason, "explanation", cfg, bundle)
        choose_and_record(cfg, bundle, device=device, progress=progress, tag=tag)
    return cfg.path("model", tag)
