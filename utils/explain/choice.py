"""Notebook 05's hand-over as one call: choose the main explanation on validation, measure it once on test.

:func:`choose_and_record` is what notebook 05 runs, and what a later notebook opened alone runs to rebuild the
choice (:mod:`utils.stages`). With lesion masks (phantoms) it

1. builds the two hard image-blind baselines from the **training** masks (mean-lesion and lung-field priors);
2. chooses among the candidates on the **validation** true positives (near-pointing, then pointing, energy);
3. scores the choice, plain Grad-CAM on ``layer4`` / ``layer3`` and every baseline on the **test** true
   positives, and compares the choice with the *best* baseline by a paired, patient-level bootstrap of the
   per-image difference (:func:`utils.evaluate.metrics.paired_difference_ci`);
4. writes ``assets/localisation.csv``, the ``localisation`` section of ``assets/metrics.json`` and the spec
   into the shipped checkpoint.

Without masks (real data) nothing can be measured: the spec is :data:`UNMEASURED_EXPLANATION`, recorded as
such. The model never sees a mask at any step; masks only score maps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from utils.artifacts import operating_threshold, record_explanation
from utils.checkpoint import state_fingerprint
from utils.config import Config
from utils.data.bundle import DataBundle
from utils.evaluate.metrics import paired_difference_ci
from utils.evaluate.verdicts import baseline_sentence, baseline_verdict
from utils.explain import localisation as L
from utils.explain.localisation import TOLERANCE_FRAC
from utils.explain.selection import choose_explanation, score_explanations
from utils.explain.spec import (
    VIT_EXPLANATION_CANDIDATES,
    candidates_for,
    check_spec,
    make_spec,
    unmeasured_explanation,
)
from utils.fileio import update_json_section, write_csv
from utils.train.model import load_model, resolve_device
from utils.train.vit import is_vit

SELECTION_RULE = "best near-pointing on validation true positives (ties: pointing, then energy)"
SCORE_KEYS = ("pointing", "near", "energy", "area", "n", "n_pointing", "n_near")


@dataclass
class ExplanationChoice:
    """What notebook 05 shows of the choice (the files are already written)."""

    spec: dict[str, Any]
    has_masks: bool
    val_table: pd.DataFrame | None = None
    test_table: pd.DataFrame | None = None
    test_maps: dict[str, np.ndarray] | None = None  # name -> maps of the test true positives
    test_tp: np.ndarray | None = None  # indices of those true positives in the test split
    priors: dict[str, np.ndarray] = field(default_factory=dict)
    verdict: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


#: How the localisation sentences name the metrics.
METRIC_NAMES = {"near": "near-pointing", "pointing": "pointing game", "energy": "energy inside the lesion"}


def verdict_against_baselines(maps: np.ndarray, lesion_masks: np.ndarray, groups: np.ndarray,
                              priors: dict[str, np.ndarray], metric: str = "near", n_boot: int = 1000,
                              seed: int = 0, tolerance_frac: float = TOLERANCE_FRAC, margin: float = 0.0,
                              images: str = "test true positives") -> dict[str, Any]:
    """Does the map beat the **best** image-blind baseline on ``metric``? Per-image scores of the map and of
    every baseline on the same images; the best baseline is the one with the highest mean; the difference is
    bootstrapped over patients (paired) and read by the series' one rule,
    :func:`utils.evaluate.verdicts.baseline_verdict` (``"beats"``, ``"ties"``, ``"worse"``, ``"no map"``), with its
    sentence (:func:`~utils.evaluate.verdicts.baseline_sentence`). Empty or constant maps are "no map": left out of
    the map's score *and* the baselines' (the comparison stays paired) and counted in ``n_no_map``.
    ``beats_best_baseline`` is ``verdict == "beats"``."""
    ours = L.per_image_scores(maps, lesion_masks, tolerance_frac)
    base = L.baseline_per_image(lesion_masks, priors, tolerance_frac, seed=seed)
    has = ours["has_lesion"].to_numpy()
    no_map = ours["no_map"].to_numpy() & has
    keep = has & ~no_map
    means = {name: float(df.loc[keep, metric].mean()) if keep.any() else float("nan") for name, df in base.items()}
    best = max(means, key=lambda k: (np.nan_to_num(means[k], nan=-np.inf), -list(means).index(k)))
    diff = paired_difference_ci(ours.loc[keep, metric].to_numpy(), base[best].loc[keep, metric].to_numpy(),
                                np.asarray(groups)[keep], n_boot=n_boot, seed=seed)
    value = float(ours.loc[keep, metric].mean()) if keep.any() else float("nan")
    verdict = baseline_verdict(diff, margin)
    sentence = baseline_sentence(METRIC_NAMES.get(metric, metric), value, best, means[best], diff, int(keep.sum()),
                                 int(no_map.sum()), margin, images)
    return {"metric": metric, "map": value, "best_baseline": best, "best_baseline_value": means[best],
            "baselines": means, "difference": diff, "verdict": verdict, "sentence": sentence, "margin": margin,
            "beats_best_baseline": verdict == "beats", "n": int(keep.sum()), "n_no_map": int(no_map.sum())}


def reference_specs(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """What the choice is reported beside on test: plain Grad-CAM on ``layer4`` and ``layer3`` for the ResNet,
    the ViT's other candidates for a ViT."""
    if is_vit(meta):
        return list(VIT_EXPLANATION_CANDIDATES)
    return [make_spec("gradcam", "layer4"), make_spec("gradcam", "layer3")]


def choose_and_record(cfg: Config, bundle: DataBundle, candidates: list[dict[str, Any]] | None = None,
                      device: str = "auto", progress: bool = True, tag: str | None = None) -> ExplanationChoice:
    """Choose, measure and record the main explanation of the shipped model (see the module docstring); ``tag``
    does the same for another run's model (notebook 09's ViT: its candidates, its files)."""
    path = cfg.require("model", tag)
    model, meta = load_model(path, resolve_device(device))
    threshold, rule = operating_threshold(meta, path)
    meta = {**meta, "threshold": threshold}
    val, test, train = bundle["val"], bundle["test"], bundle["train"]
    has_masks = all(s.lesion_masks is not None for s in (train, val, test))
    record: dict[str, Any] = {"split": "test", "tolerance_frac": TOLERANCE_FRAC, "threshold": threshold,
                              "threshold_rule": rule, "model_fingerprint": state_fingerprint(model.state_dict()),
                              "data_fingerprint": bundle.fingerprint, "run": cfg.knobs, "data": bundle.describe(),
                              "model_saw_masks": False}
    if not has_masks:
        spec = unmeasured_explanation(meta)
        record.update(chosen_on="nothing (no lesion masks: localisation cannot be measured on this data)",
                      explanation=spec, method=spec["method"], layer=spec["layer"], masks=False)
        update_json_section(cfg.path("metrics", tag), "localisation", record)
        record_explanation(path, spec, f"unmeasured: no lesion masks on this data ({spec['name']})")
        return ExplanationChoice(spec, False, record=record)

    assert train.lesion_masks is not None and val.lesion_masks is not None and test.lesion_masks is not None
    priors = L.prior_maps(train.lesion_masks[train.labels == 1], train.lung_masks)
    specs = [check_spec(c) for c in (candidates or candidates_for(meta))]
    spec, val_table = choose_explanation(model, val.images, val.lesion_masks, val.labels, meta, specs,
                                         TOLERANCE_FRAC, progress=progress, priors=priors)
    report = {s["name"]: s for s in (spec, *reference_specs(meta))}
    test_table, (test_maps, test_tp) = score_explanations(model, test.images, test.lesion_masks, test.labels, meta,
                                                          list(report.values()), TOLERANCE_FRAC, progress=progress,
                                                          return_maps=True, priors=priors)
    verdict = {m: verdict_against_baselines(test_maps[spec["name"]], test.lesion_masks[test_tp],
                                            test.patient_ids[test_tp], priors, m, n_boot=int(cfg["n_bootstrap"]),
                                            seed=cfg["seed"]) for m in ("near", "energy")}
    rows = test_table.set_index("method")
    pick = lambda name: {k: rows.loc[name, k] for k in SCORE_KEYS}  # noqa: E731
    record.update(chosen_on="val", selection_rule=SELECTION_RULE, explanation=spec, method=spec["method"],
                  layer=spec["layer"], masks=True, **pick(spec["name"]),
                  baselines={name: pick(name) for name in rows.index[rows["baseline"]]},
                  references={s["name"]: pick(s["name"]) for s in reference_specs(meta)},
                  verdict=verdict, beats_best_baseline=verdict["near"]["beats_best_baseline"],
                  validation={r["method"]: {k: r[k] for k in SCORE_KEYS} for _, r in val_table.iterrows()})
    per_method = pd.concat([val_table.assign(split="val"), test_table.assign(split="test")], ignore_index=True)
    per_method["chosen"] = per_method["method"] == spec["name"]
    write_csv(cfg.path("localisation", tag), per_method, index=False)
    update_json_section(cfg.path("metrics", tag), "localisation", record)
    record_explanation(path, spec, SELECTION_RULE)
    return ExplanationChoice(spec, True, val_table, test_table, test_maps, test_tp, priors, verdict, record)
