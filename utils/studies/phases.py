"""Phase 1 against phase 2, measured on validation (notebook 03): did fine-tuning the whole network change what the
warm-up had learned, and by how much?

Both checkpoints (``model/phase1_best.pt``, ``model/pneumonia_final_best.pt``) score the *same* validation images,
so the comparison is paired: each bootstrap resample draws whole validation patients with replacement and scores
both models on it, and the interval of ``phase 2 − phase 1`` is the interval of the difference. Three measures:

* **ROC AUC** — how well the scores rank sick above healthy children (threshold-free);
* **log loss** — the mean cross-entropy of P(PNEUMONIA) per image (lower is better): confidence where it is right;
* **specificity at the recall-first threshold** — each model's threshold chosen for recall ≥ the target *on the
  resample itself* (in-sample: both models get the same optimistic advantage); the rule notebook 04 uses, on
  validation, to choose which phase ships.

Nothing here reads the test split.

**Why two phases?** (:func:`study_all_at_once`) The counter-example: the same pretrained network with a new head,
every layer trained at once at the head's rate, no warm-up — beside the warm-up-only and the two-phase models, with
what happened to the pretrained features (how far each layer group moved; how similar the pooled features stay to
the pretrained ones, by linear CKA) and the paired comparison of the validation scores.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from utils.artifacts import threshold_for_recall
from utils.config import IMAGENET_MEAN, IMAGENET_STD, Config
from utils.data import DataBundle
from utils.evaluate.metrics import bootstrap_indices, format_ci, mann_whitney_auc, percentile_interval
from utils.evaluate.verdicts import difference_verdict, format_difference, verdict_phrase
from utils.train.model import (
    build_model,
    head_prefix,
    layer_groups,
    load_model,
    predict_logits,
    predict_proba,
    resolve_device,
)
from utils.train.pipeline import run_all_at_once

#: The two models compared, in order (the difference is the second minus the first).
PHASES: tuple[str, str] = ("phase 1", "phase 2")
#: Measure -> whether higher is better.
MEASURES: dict[str, bool] = {"ROC AUC": True, "log loss": False, "specificity at recall-first threshold": True}
_EPS = 1e-7


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(np.where(y == 1, np.log(q), np.log(1 - q))))


def _specificity_at_recall(y: np.ndarray, p: np.ndarray, target_recall: float) -> float:
    if not y.any() or y.all():
        return math.nan
    t = threshold_for_recall(y, p, target_recall)
    return float(np.mean(p[y == 0] < t))


def phase_measures(y: np.ndarray, p: np.ndarray, target_recall: float) -> list[float]:
    """The :data:`MEASURES` of one model's validation probabilities ``p`` (labels ``y``), in order."""
    return [mann_whitney_auc(y, p), _log_loss(y, p), _specificity_at_recall(y, p, target_recall)]


@dataclass
class PhaseComparison:
    """Two models (by default phase 1 and phase 2) on the same validation images (see the module docstring)."""

    labels: np.ndarray
    probs: dict[str, np.ndarray]  # model -> P(PNEUMONIA) per validation image
    values: dict[str, dict[str, float]]  # model -> measure -> value on the full validation split
    differences: dict[str, dict[str, float]]  # measure -> {value, ci_low, ci_high, p_le_0} of second − first
    thresholds: dict[str, float]  # model -> its recall-first threshold on the full validation split
    n_patients: int
    target_recall: float
    bootstrap: dict[str, Any] = field(default_factory=dict)
    names: tuple[str, str] = PHASES

    def table(self) -> pd.DataFrame:
        """One row per measure: each model's value and the paired difference with its 95 % interval."""
        first, second = self.names
        how = {"ROC AUC": "threshold-free", "log loss": "threshold-free, per image",
               "specificity at recall-first threshold": f"threshold re-chosen on each resample for recall ≥ "
                                                        f"{self.target_recall:g}"}
        rows = [{"measure": m, "better": "higher" if up else "lower", first: self.values[first][m],
                 second: self.values[second][m],
                 f"{second} − {first} [95% CI]": format_ci(self.differences[m], 3, signed=True),
                 f"{second} is": judgement(self.differences[m], up), "how": how[m]}
                for m, up in MEASURES.items()]
        return pd.DataFrame(rows)

    @property
    def sentence(self) -> str:
        """What the run says, computed: which measures moved (and which way), which did not, with intervals."""
        return comparison_sentence(self.differences, len(self.labels), self.n_patients, self.bootstrap, self.names)


def judgement(difference: Mapping[str, float], higher_is_better: bool) -> str:
    """``"better"`` / ``"worse"`` when the 95 % interval of ``second − first`` excludes zero (in the measure's good
    or bad direction), ``"no measurable change"`` when it includes zero, ``"not measured"`` without an estimate."""
    verdict = difference_verdict(difference)
    if verdict not in ("above", "below"):
        return "not measured" if verdict == "not measured" else "no measurable change"
    return "better" if (verdict == "above") == higher_is_better else "worse"


def comparison_sentence(differences: Mapping[str, Mapping[str, float]], n_images: int, n_patients: int,
                        bootstrap: Mapping[str, Any] | None = None, names: tuple[str, str] = PHASES) -> str:
    """The verdict on ``second − first`` (``names``; by default phase 2 − phase 1) for each of :data:`MEASURES`,
    from the numbers only: ``better`` / ``worse`` where the 95 % interval excludes zero, "no measurable change"
    where it includes it."""
    boot = dict(bootstrap or {})
    first, second = names
    better: list[str] = []
    worse: list[str] = []
    same: list[str] = []
    for m, up in MEASURES.items():
        d = differences.get(m, {})
        verdict = difference_verdict(d)
        text = f"{m} {format_difference(d)}"
        if verdict in ("above", "below"):
            (better if (verdict == "above") == up else worse).append(text)
        else:
            same.append(f"{text}: {verdict_phrase(verdict)}")
    unit = "patients" if boot.get("unit", "patient") == "patient" else "images"
    head = (f"{second[:1].upper()}{second[1:]} − {first} on the same {n_images} validation images ({n_patients} "
            f"patients; paired bootstrap over {unit}, {boot.get('n_boot', '?')} resamples).")
    parts = [head]
    if better:
        parts.append(f"{second[:1].upper()}{second[1:]} is measurably better in " + "; ".join(better) + ".")
    if worse:
        parts.append(f"{second[:1].upper()}{second[1:]} is measurably worse in " + "; ".join(worse) + ".")
    if same:
        parts.append("No measurable change in " + "; ".join(same) + ".")
    if not better and not worse and tuple(names) == PHASES:
        parts.append("On this run fine-tuning the whole network did not change what the warm-up had learned by more "
                     "than these intervals allow.")
    return " ".join(parts)


def compare_phases(labels: Any, probs: Mapping[str, Any], groups: Any = None, target_recall: float = 0.98,
                   n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                   names: tuple[str, str] = PHASES) -> PhaseComparison:
    """Compare the validation probabilities of the two models ``names`` (``probs``: name -> P(PNEUMONIA) on the same
    images; the difference is the second minus the first), resampling whole patients (``groups``: one patient id
    per image) or images."""
    y = np.asarray(labels).astype(np.int64).ravel()
    names = (str(names[0]), str(names[1]))
    missing = [name for name in names if name not in probs]
    if missing:
        raise ValueError(f"probs lacks {missing}: give P(PNEUMONIA) of {', '.join(names)}")
    p = {name: np.asarray(probs[name], dtype=np.float64).ravel() for name in names}
    if any(v.size != y.size for v in p.values()):
        raise ValueError(f"need one probability per label ({y.size}) for each phase")
    if y.size == 0 or y.all() or not y.any():
        raise ValueError("comparing phases needs validation images of both classes")
    values = {name: dict(zip(MEASURES, phase_measures(y, p[name], target_recall))) for name in names}
    draws = np.array([[b - a for a, b in zip(phase_measures(y[idx], p[names[0]][idx], target_recall),
                                               phase_measures(y[idx], p[names[1]][idx], target_recall))]
                      for idx in bootstrap_indices(y.size, groups, n_boot, seed)])
    differences = {}
    for j, m in enumerate(MEASURES):
        col = draws[:, j]
        ok = col[np.isfinite(col)]
        differences[m] = {"value": values[names[1]][m] - values[names[0]][m], **percentile_interval(col, alpha),
                          "p_le_0": float(np.mean(ok <= 0)) if ok.size else math.nan}
    n_patients = int(np.unique(np.asarray(groups)).size) if groups is not None else int(y.size)
    return PhaseComparison(labels=y, probs=p, values=values, differences=differences,
                           thresholds={name: threshold_for_recall(y, p[name], target_recall) for name in names},
                           n_patients=n_patients, target_recall=float(target_recall),
                           bootstrap={"n_boot": int(n_boot), "seed": seed, "alpha": alpha,
                                      "unit": "patient" if groups is not None else "image",
                                      "threshold": "re-chosen on each resample"}, names=names)


def compare_phase_checkpoints(cfg: Config, bundle: DataBundle, device: str = "auto", n_boot: int | None = None,
                              tag: str | None = None) -> PhaseComparison:
    """Notebook 03's comparison: the phase-1 best and the phase-2 best checkpoints of this run (``tag``: another
    run's files) on the validation split, by patient, with the profile's recall target and bootstrap size."""
    dev = resolve_device(device)
    val = bundle["val"]
    probs = {}
    for name, artifact in zip(PHASES, ("phase1_best", "final_best")):
        model, meta = load_model(cfg.require(artifact, tag), dev)
        probs[name] = predict_proba(model, val.images, meta)
    return compare_phases(val.labels, probs, val.patient_ids, cfg["target_recall"],
                          int(n_boot or cfg["n_bootstrap"]), int(cfg["seed"]))


# ------------------------------------------------------------------------------ why two phases (notebook 03)
#: The models of notebook 03's "why two phases?" section, in the order of its table.
WARM_UP, TWO_PHASES, ALL_AT_ONCE = "warm-up only (phase 1)", "warm-up, then fine-tuning (phase 2)", "all at once"


@torch.inference_mode()
def pooled_features(model: nn.Module, images: np.ndarray, meta: Mapping[str, Any], batch_size: int = 64
                    ) -> np.ndarray:
    """The features the head sees (its input: ResNet's 512 pooled channels, ViT's class token), one row per image."""
    head = getattr(model, head_prefix(model).rstrip("."))
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0].detach().float().cpu()))
    try:
        predict_logits(model, images, meta, batch_size)
    finally:
        handle.remove()
    return torch.cat(captured).reshape(len(images), -1).numpy()


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) of two feature matrices of the same images (rows):
    1 when one is a rotation and uniform scaling of the other, near 0 for unrelated features. Invariant to the
    features' order, an orthogonal transform and a common scale — a similarity of *representations*."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need two (images, features) matrices of the same images, got {x.shape} and {y.shape}")
    x, y = x - x.mean(0), y - y.mean(0)
    denominator = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(np.linalg.norm(y.T @ x) ** 2 / denominator) if denominator > 0 else math.nan


def weight_change(model: nn.Module, reference: nn.Module) -> dict[str, float]:
    """How far each layer group of ``model`` moved from ``reference`` (the pretrained weights): ‖Δw‖ / ‖w‖ over the
    group's parameters. The head is left out (it starts random in both)."""
    out = {}
    ref_groups = layer_groups(reference)
    for group, params in layer_groups(model).items():
        if group in ("fc", "head"):
            continue
        ref = ref_groups[group]
        moved = sum(float(((p.detach().cpu() - r.detach().cpu()) ** 2).sum()) for p, r in zip(params, ref))
        size = sum(float((r.detach().cpu() ** 2).sum()) for r in ref)
        out[group] = math.sqrt(moved / size) if size > 0 else math.nan
    return out


@dataclass
class AllAtOnceStudy:
    """Notebook 03's answer to "why two phases?": the warm-up-only model, the series' two-phase model and a model
    trained all at once without warm-up, on the same validation images."""

    table: pd.DataFrame  # one row per model: how it was trained, validation AUC and log loss, feature similarity
    weight_change: pd.DataFrame  # layer group x model: ‖Δw‖ / ‖w‖ from the pretrained backbone
    comparison: PhaseComparison | None  # all at once − two phases, paired by patient (None when skipped)
    epochs: int
    skipped: str = ""  # why nothing was trained (a random start has no pretrained features to protect)

    @property
    def ran(self) -> bool:
        """Whether the counter-example was trained and measured."""
        return not self.skipped

    @property
    def sentence(self) -> str:
        """What the run says, computed from the numbers above (or why it was not run)."""
        if self.skipped or self.comparison is None:
            return self.skipped or "not measured"
        cka = self.table.set_index("model")["feature similarity (CKA)"]
        moved = self.weight_change.iloc[0]  # the earliest layer group
        return (f"After {self.epochs} epoch(s) of training every layer at once, the features the head sees kept a "
                f"linear CKA of {cka[ALL_AT_ONCE]:.3f} with the pretrained backbone's (warm-up, then fine-tuning: "
                f"{cka[TWO_PHASES]:.3f}); its first layer group ({self.weight_change.index[0]}) moved by "
                f"{100 * moved[ALL_AT_ONCE]:.2g} % of its norm (two phases: {100 * moved[TWO_PHASES]:.2g} %). "
                + self.comparison.sentence)


def study_all_at_once(cfg: Config, bundle: DataBundle, epochs: int = 1, lr: float | None = None, device: str = "auto",
                      n_boot: int | None = None, progress: bool = True) -> AllAtOnceStudy:
    """Train (or resume) the all-at-once model under its own tag, then put it beside this run's phase-1 and phase-2
    best checkpoints on the validation split: AUC and log loss, the similarity of each model's pooled features to
    the pretrained backbone's on the same images (linear CKA), how far each layer group moved, and the paired
    patient-bootstrap comparison with the two-phase model. Skipped (nothing trained, :attr:`AllAtOnceStudy.skipped`
    says why) for ``epochs`` 0 and when this run's phase 1 started from random weights."""
    if int(epochs) < 1:
        return AllAtOnceStudy(pd.DataFrame(), pd.DataFrame(), None, int(epochs),
                              skipped="Section skipped: ALL_AT_ONCE_EPOCHS is 0.")
    meta1 = load_model(cfg.require("phase1_best"))[1]
    if not meta1.get("pretrained", True):
        return AllAtOnceStudy(pd.DataFrame(), pd.DataFrame(), None, int(epochs), skipped=(
            f"Section skipped: this run started from {meta1.get('weights', 'random weights')}, so there are no "
            "pretrained features to protect — the warm-up's reason to exist is absent, and phase 2 already trains "
            "every layer at one from-scratch rate (section 2)."))
    res, _ = run_all_at_once(cfg, bundle, epochs, lr, device, progress=progress)
    dev = resolve_device(device)
    val = bundle["val"]
    reference, _ = build_model(cfg["weights"], seed=cfg["seed"], arch=cfg.get("arch", "resnet18"),
                               image_size=bundle.image_size)
    paths = {WARM_UP: cfg.require("phase1_best"), TWO_PHASES: cfg.require("final_best"), ALL_AT_ONCE: res.best_path}
    base = pooled_features(reference.to(dev).eval(), val.images, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD})
    rows, probs, moved = [], {}, {}
    for name, path in paths.items():
        model, meta = load_model(path, dev)
        probs[name] = predict_proba(model, val.images, meta)
        moved[name] = weight_change(model, reference)
        y = val.labels.astype(np.int64)
        rows.append({"model": name, "training": meta.get("recipe", "not recorded"), "epoch kept": int(meta["epoch"]),
                     "val ROC AUC": mann_whitney_auc(y, probs[name]), "val log loss": _log_loss(y, probs[name]),
                     "feature similarity (CKA)": linear_cka(base, pooled_features(model, val.images, meta))})
    comparison = compare_phases(val.labels, probs, val.patient_ids, cfg["target_recall"],
                                int(n_boot or cfg["n_bootstrap"]), int(cfg["seed"]), names=(TWO_PHASES, ALL_AT_ONCE))
    return AllAtOnceStudy(table=pd.DataFrame(rows), weight_change=pd.DataFrame(moved)[[TWO_PHASES, ALL_AT_ONCE]],
                          comparison=comparison, epochs=int(epochs))
