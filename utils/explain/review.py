"""Notebook 05's review of the chosen map, one call per section: every map here is the shipped model's map as its
checkpoint records it *now* (:func:`utils.explain.maps.main_maps` with the checkpoint's path), so the gallery, the
method table and the outside-lung table show the explanation :func:`utils.explain.choice.choose_and_record` chose —
not a spec loaded before the choice was written.

* :func:`oracle_table` — the hand-written weightings against ``pytorch-grad-cam``, per method and layer;
* :func:`gallery` — correctly classified test images of both classes (seeded), each explained for its true class;
* :func:`sanity_check` — the cascading-randomisation check (:mod:`utils.explain.checks`) of the chosen map;
* :func:`road_check` — ROAD against random maps, with the paired, patient-level interval of the difference;
* :func:`method_maps` — the chosen map beside ``pytorch-grad-cam``'s methods on the chosen layer;
* :func:`outside_lung` — the share of each PNEUMONIA map outside the lungs, test true positives and false
  negatives, against the estimated and (phantoms) the true lung fields;
* :func:`verdict_lines`, :func:`sanity_sentence`, :func:`road_sentence` — the verdicts as the notebook prints them;
* :func:`record` — all of it into the ``localisation`` section of ``assets/metrics.json``.

The checks themselves (sanity, ROAD) are wrapped, not re-implemented: their rules live in :mod:`utils.explain.checks`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from utils.data.bundle import Split
from utils.evaluate.metrics import outcome_groups, paired_difference_ci
from utils.explain import checks
from utils.explain import localisation as loc
from utils.explain.choice import ExplanationChoice
from utils.explain.maps import Checkpoint, checkpoint_meta, explain, main_explanation, main_maps
from utils.fileio import update_json_section
from utils.train.model import preprocess

__all__ = ["LIBRARY_METHODS", "Gallery", "MethodMaps", "gallery", "method_maps", "oracle_table", "outside_lung", "record",
           "road_check", "road_sentence", "sanity_check", "sanity_sentence", "verdict_lines"]

#: The ``pytorch-grad-cam`` methods shown beside the chosen map (Score-CAM, one pass per channel, separately).
LIBRARY_METHODS = ("GradCAM", "GradCAM++", "HiResCAM", "XGradCAM", "EigenCAM")


def _x(checkpoint: Checkpoint, images: np.ndarray) -> torch.Tensor:
    meta = checkpoint_meta(checkpoint)
    return preprocess(torch.from_numpy(np.asarray(images)), meta["mean"], meta["std"])


def oracle_table(model: nn.Module, checkpoint: Checkpoint, images: np.ndarray,
                 layers: tuple[str, ...] = ("layer4", "layer3")) -> pd.DataFrame:
    """Our Grad-CAM weightings against ``pytorch-grad-cam`` (:func:`utils.explain.checks.oracle_difference`) on uint8
    ``images`` for PNEUMONIA: one row per (method, layer) with the largest absolute difference of the maps."""
    x = _x(checkpoint, images)
    return pd.DataFrame([{"method": m, "layer": layer, "max |ours - library|": checks.oracle_difference(model, x, layer, 1,
                                                                                                      method=m)}
                         for m in checks.ORACLE_METHODS for layer in layers])


@dataclass
class Gallery:
    """The gallery's images (indices into the split: NORMAL first, then PNEUMONIA), their maps for their true class
    and their titles."""

    picks: np.ndarray
    maps: np.ndarray
    titles: list[str]


def gallery(model: nn.Module, checkpoint: Checkpoint, split: Split, probs: np.ndarray, threshold: float,
            per_class: int, seed: int, classes: tuple[str, ...]) -> Gallery:
    """Up to ``per_class`` true negatives and true positives of ``split`` at ``threshold`` (drawn with ``seed``),
    each mapped for its **true** class with the main explanation of ``checkpoint`` (read now)."""
    rng = np.random.default_rng(seed)
    outcome = outcome_groups(split.labels, probs, threshold)
    tn, tp = np.flatnonzero(outcome == "TN"), np.flatnonzero(outcome == "TP")
    picks = np.r_[rng.choice(tn, min(per_class, len(tn)), replace=False),
                  rng.choice(tp, min(per_class, len(tp)), replace=False)].astype(int)
    true_class = split.labels[picks]
    maps, _ = main_maps(model, checkpoint, split.images[picks], targets=true_class)
    titles = [f"{classes[c]} · p={probs[i]:.3f}\nmap: evidence for {classes[c]}" for i, c in zip(picks, true_class)]
    return Gallery(picks, maps, titles)


def sanity_check(model: nn.Module, checkpoint: Checkpoint, images: np.ndarray, seed: int,
                 after: str = "layer4") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Cascading randomisation of the main explanation on uint8 ``images`` (PNEUMONIA maps) and its verdict:
    ``(table, verdict)`` of :func:`utils.explain.checks.cascading_randomisation` / ``sanity_verdict``."""
    spec = main_explanation(checkpoint, model)
    table = checks.cascading_randomisation(model, _x(checkpoint, images), targets=1, layer=spec["layer"], seed=seed,
                                           cam_fn=lambda m, xx, layer, tt: explain(m, xx, spec, tt)[0])
    return table, checks.sanity_verdict(table, after=after)


def sanity_sentence(verdict: dict[str, Any]) -> str:
    """The sanity check's verdict in one sentence, with its numbers."""
    return (f"{verdict['rule']} on {verdict['n_images']} images: worst mean |rho| {verdict['worst_after']:.2f} -> "
            + ("PASS: the map depends on the trained weights" if verdict["passes"] else
               "FAIL: the map survives randomisation — it explains the image, not the model"))


def road_check(model: nn.Module, checkpoint: Checkpoint, images: np.ndarray, groups: np.ndarray, seed: int,
               n_boot: int, maps: np.ndarray | None = None, progress: bool = True) -> dict[str, Any]:
    """ROAD (:func:`utils.explain.checks.road`) of the main explanation's PNEUMONIA maps of uint8 ``images``
    (``maps`` when already computed) against random maps, and the paired difference of the mean drops bootstrapped
    over ``groups`` (patients). Returns ``{"road", "difference", "beats_random", "record"}``."""
    x = _x(checkpoint, images)
    if maps is None:
        maps = explain(model, x, main_explanation(checkpoint, model), 1)[0]
    road = checks.road(model, x, maps, target=1, seed=seed, progress=progress)
    faith = paired_difference_ci(road["map"]["drop"], road["random"]["drop"], groups, n_boot=n_boot, seed=seed)
    beats = bool(faith["ci_low"] > 0)
    record = {"n": len(road["p0"]), "fractions": road["fractions"], "drop_map": float(road["map"]["drop"].mean()),
              "drop_random": float(road["random"]["drop"].mean()), "difference": faith, "beats_random": beats}
    return {"road": road, "difference": faith, "beats_random": beats, "record": record}


def road_sentence(result: dict[str, Any]) -> str:
    """ROAD's verdict in one sentence, with its numbers."""
    road, faith = result["road"], result["difference"]
    return (f"mean drop of P(pneumonia): map {road['map']['drop'].mean():.3f}, random "
            f"{road['random']['drop'].mean():.3f}; difference {faith['value']:+.3f} [95% CI {faith['ci_low']:+.3f}, "
            f"{faith['ci_high']:+.3f}] -> "
            + ("the map BEATS random maps: removing what it points at hurts the prediction more."
               if result["beats_random"] else
               "the map does NOT beat random maps: removing what it points at hurts the prediction no more than "
               "removing random regions."))


@dataclass
class MethodMaps:
    """The chosen map beside the library's methods on the same images (:func:`method_maps`)."""

    layer: str
    maps: dict[str, np.ndarray]  # method -> PNEUMONIA maps (N, H, W); the chosen map first, under its spec's name
    scorecam: np.ndarray  # Score-CAM maps of the first images only
    table: pd.DataFrame | None  # localisation of every method (with lesion masks), else None


def method_maps(model: nn.Module, checkpoint: Checkpoint, split: Split, idx: np.ndarray, n_scorecam: int,
                priors: dict[str, np.ndarray] | None = None, methods: tuple[str, ...] = LIBRARY_METHODS) -> MethodMaps:
    """PNEUMONIA maps of the images ``idx`` of ``split``: the main explanation (named by its spec) and each library
    method on the chosen layer, plus Score-CAM on the first ``n_scorecam`` images (one forward pass per channel);
    with lesion masks, their localisation table (:func:`utils.explain.localisation.localisation_table`, ``priors``
    as baselines)."""
    spec = main_explanation(checkpoint, model)
    images = split.images[idx]
    x = _x(checkpoint, images)
    maps = {spec["name"]: main_maps(model, checkpoint, images)[0],
            **{m: checks.library_cam(m, model, x, spec["layer"], 1) for m in methods}}
    scorecam = checks.library_cam("ScoreCAM", model, x[:n_scorecam], spec["layer"], 1, batch_size=64)
    table = None if split.lesion_masks is None else loc.localisation_table(maps, split.lesion_masks[idx], priors=priors)
    return MethodMaps(spec["layer"], maps, scorecam, table)


def outside_lung(model: nn.Module, checkpoint: Checkpoint, split: Split, probs: np.ndarray, threshold: float,
                 progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The share of each PNEUMONIA map (main explanation, read now) outside the lungs, for the true positives and
    false negatives of ``split`` at ``threshold``: ``(summary, per_image)``. ``summary`` has one block per lung
    field (estimated; the true masks too when the split has them) of
    :func:`utils.explain.localisation.outside_lung_summary`; ``per_image`` one row per image (``id``, ``group``,
    ``estimated`` and, with masks, ``true``)."""
    outcome = outcome_groups(split.labels, probs, threshold)
    idx = np.concatenate([np.flatnonzero(outcome == g) for g in ("TP", "FN")])
    group_of = outcome[idx]
    maps, _ = main_maps(model, checkpoint, split.images[idx], targets=1)
    est, est_masks, _ = loc.outside_lung_fractions(maps, images=split.images[idx], progress=progress)
    summaries = {"estimated lung field": loc.outside_lung_summary(est, group_of, est_masks)}
    per_image = pd.DataFrame({"id": split.ids[idx], "group": group_of, "estimated": est})
    if split.lung_masks is not None:
        true_frac, _, _ = loc.outside_lung_fractions(maps, lung_masks=split.lung_masks[idx])
        summaries["true lung masks"] = loc.outside_lung_summary(true_frac, group_of, split.lung_masks[idx])
        per_image["true"] = true_frac
    summary = pd.concat(summaries, names=["lung field", "row"]).reset_index(level="row", drop=True)
    return summary, per_image


def record(metrics_path: Path, choice: ExplanationChoice, sanity: dict[str, Any], road: dict[str, Any],
           outside: pd.DataFrame) -> dict[str, Any]:
    """The ``localisation`` section of ``assets/metrics.json``: the choice's record (:func:`choose_and_record`) with the
    sanity verdict, ROAD's record (:func:`road_check`) and the outside-lung summary (:func:`outside_lung`)."""
    extra = {"sanity": sanity, "road": road["record"], "outside_lung": outside.reset_index().to_dict("records")}
    return update_json_section(metrics_path, "localisation", {**choice.record, **extra})


def verdict_lines(choice: ExplanationChoice) -> list[str]:
    """One markdown line per metric of the choice's test verdict against the best image-blind baseline."""
    lines = []
    for metric, v in choice.verdict.items():
        d = v["difference"]
        lines.append(f"- **{metric}**: the map {v['map']:.3f} vs the best baseline, *{v['best_baseline']}*, "
                     f"{v['best_baseline_value']:.3f}: difference {d['value']:+.3f} [95% CI {d['ci_low']:+.3f}, "
                     f"{d['ci_high']:+.3f}] on {v['n']} test true positives — "
                     + ("**the map beats every image-blind baseline.**" if v["beats_best_baseline"] else
                        "**the map does not beat the best image-blind baseline**: read its maps as hints, not "
                        "locations."))
    return lines
