"""Notebook 04's job as one call: predict once, choose thresholds and the shipped model on validation, score test.

:func:`evaluate_models` is what notebook 04 runs and what a later notebook, opened alone in a fresh runtime,
runs to rebuild the same artifacts (:mod:`utils.stages`): no second implementation. It writes

* ``model/pneumonia_model.pt`` — the model the series ships: a copy of the phase chosen on validation by
  :data:`SHIP_RULE`, with the operating threshold and its rule in the metadata;
* ``assets/predictions_{val,test}.csv`` — the shipped model's probabilities (notebooks 05–09 reuse them);
* ``assets/metrics.json`` sections ``test``, ``val``, ``test_other_phase``, ``model_choice`` and
  ``operating_point`` (the threshold-re-choosing, paired bootstrap of both phases).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from utils.artifacts import data_mismatch, predictions_frame, record_operating_point, rule_name, threshold_rule
from utils.checkpoint import state_fingerprint
from utils.config import Config
from utils.data.bundle import DataBundle
from utils.errors import UserError
from utils.evaluate import metrics as M
from utils.fileio import atomic_copy, update_json_section, write_csv
from utils.paths import notebook_path
from utils.train.model import load_model, predict_proba, resolve_device

#: The two candidates, by checkpoint artifact.
PHASES: dict[str, str] = {"phase 1": "phase1_best", "phase 2": "final_best"}

#: How the shipped model is chosen — on validation only, stated before looking at the test set.
SHIP_RULE = ("the phase with the higher validation specificity at its own recall-first threshold; a tie goes to "
             "the higher validation ROC AUC, then to phase 2")


@dataclass
class Evaluation:
    """Everything notebook 04 shows; the files listed in the module docstring are already written."""

    target_recall: float
    rule: str
    probs: dict[str, dict[str, np.ndarray]]  # phase -> split -> P(PNEUMONIA)
    thresholds: dict[str, dict[str, float]]  # phase -> candidate rule -> threshold (chosen on validation)
    choice: pd.DataFrame  # validation comparison behind the shipped-model choice
    shipped: str  # "phase 1" or "phase 2"
    test: dict[str, dict[str, Any]]  # phase -> evaluate_predictions at its operating threshold
    test_by_rule: dict[str, dict[str, Any]]  # candidate rule -> shipped model's test evaluation
    val: dict[str, Any]  # shipped model on validation at its threshold
    operating_point: dict[str, Any]  # operating_point_bootstrap of both phases
    calibration: dict[str, Any] | None
    fingerprints: dict[str, str] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        """The shipped model's operating threshold."""
        return self.thresholds[self.shipped][self.rule]


def choose_shipped(y_val: np.ndarray, val_probs: dict[str, np.ndarray], thresholds: dict[str, float]
                   ) -> tuple[str, pd.DataFrame]:
    """Apply :data:`SHIP_RULE`: returns the chosen phase and the validation table it was read from."""
    rows: list[dict[str, Any]] = []
    for name, p in val_probs.items():
        m = M.threshold_metrics(y_val, p, thresholds[name])
        rows.append({"model": name, "threshold": thresholds[name], "val_sensitivity": m["sensitivity"],
                     "val_specificity": m["specificity"],
                     "val_roc_auc": M.threshold_free_metrics(y_val, p)["roc_auc"],
                     "order": list(PHASES).index(name) if name in PHASES else len(rows)})
    table = pd.DataFrame(rows)
    ranked = table.sort_values(["val_specificity", "val_roc_auc", "order"], ascending=False)
    table["shipped"] = table["model"] == ranked["model"].iloc[0]
    return str(ranked["model"].iloc[0]), table.drop(columns="order")


def evaluate_models(cfg: Config, bundle: DataBundle, target_recall: float | None = None, n_boot: int | None = None,
                    temperature_scaling: bool = True, device: str = "auto", progress: bool = True,
                    tag: str | None = None) -> Evaluation:
    """Predict validation and test once per phase, choose every threshold and the shipped model on validation,
    then score the test set and write the artifacts (see the module docstring). ``tag`` evaluates another run of
    the two phases (notebook 09's ViT: ``tag="vit"``) into its own files (``model/vit_pneumonia_model.pt``…)."""
    target = float(cfg["target_recall"] if target_recall is None else target_recall)
    boots = int(cfg["n_bootstrap"] if n_boot is None else n_boot)
    dev = resolve_device(device)
    rule = rule_name(target)
    val, test = bundle["val"], bundle["test"]
    models, probs, fingerprints = {}, {}, {}
    for name, art in PHASES.items():
        path = cfg.require(art, tag)
        model, meta = load_model(path, dev)
        reason = data_mismatch(meta, bundle)
        if reason:
            raise UserError(f"{path.name} cannot be evaluated: {reason}; re-run {notebook_path('phase1')} and "
                            f"{notebook_path('phase2')} with these settings.")
        models[name] = (path, meta)
        fingerprints[name] = state_fingerprint(model.state_dict())
        probs[name] = {s: predict_proba(model, bundle[s].images, meta, batch_size=cfg["batch_size"], device=dev,
                                        progress=progress) for s in ("val", "test")}
    thresholds = {name: M.choose_thresholds(val.labels, probs[name]["val"], target) for name in PHASES}
    shipped, choice = choose_shipped(val.labels, {n: probs[n]["val"] for n in PHASES},
                                     {n: thresholds[n][rule] for n in PHASES})
    other = next(n for n in PHASES if n != shipped)
    t_ship = thresholds[shipped][rule]

    # the shipped model: a copy of the chosen phase, with the operating point in its metadata
    ship_path = cfg.path("model", tag)
    atomic_copy(models[shipped][0], ship_path)
    record_operating_point(ship_path, t_ship, target, chosen_phase=shipped, chosen_from=models[shipped][0].name,
                           ship_rule=SHIP_RULE, run=cfg.knobs)
    for split in ("val", "test"):
        s = bundle[split]
        write_csv(cfg.path("predictions", tag, split=split),
                  predictions_frame(s.ids, s.labels, probs[shipped][split], s.patient_ids, s.subtypes, split),
                  index=False)

    groups = test.patient_ids
    test_eval = {n: M.evaluate_predictions(test.labels, probs[n]["test"], thresholds[n][rule], groups=groups,
                                           n_boot=boots, seed=cfg["seed"]) for n in PHASES}
    by_rule = {r: (test_eval[shipped] if r == rule else
                   M.evaluate_predictions(test.labels, probs[shipped]["test"], t, groups=groups, n_boot=boots,
                                          seed=cfg["seed"]))
               for r, t in thresholds[shipped].items()}
    val_eval = M.evaluate_predictions(val.labels, probs[shipped]["val"], t_ship, groups=val.patient_ids,
                                      n_boot=boots, seed=cfg["seed"])
    op = M.operating_point_bootstrap(val.labels, {n: probs[n]["val"] for n in PHASES}, test.labels,
                                     {n: probs[n]["test"] for n in PHASES}, target, val.patient_ids, groups,
                                     n_boot=boots, seed=cfg["seed"])
    calibration = None
    if temperature_scaling:
        p_val, p_test = probs[shipped]["val"], probs[shipped]["test"]
        temp = M.fit_temperature(p_val, val.labels)
        p_cal = M.apply_temperature(p_test, temp)
        t_cal = float(M.apply_temperature([t_ship], temp)[0])
        calibration = {"temperature": temp, "threshold_mapped": t_cal,
                       "same_decisions": bool(np.array_equal(p_test >= t_ship, p_cal >= t_cal)),
                       "before": {"ece": M.expected_calibration_error(test.labels, p_test),
                                  "nll": M.nll(test.labels, p_test)},
                       "after": {"ece": M.expected_calibration_error(test.labels, p_cal),
                                 "nll": M.nll(test.labels, p_cal)}}

    rule_text = threshold_rule(target)
    common = {"profile": cfg.profile, "run": cfg.knobs, "data": bundle.describe()}
    records = {
        "test": M.metrics_record(test_eval[shipped], "test", rule_text, fingerprints[shipped], bundle.fingerprint,
                                 model=f"{ship_path.name} ({shipped})", candidate_thresholds=thresholds[shipped],
                                 at_other_thresholds={r: {"threshold": e["threshold"], "counts": e["counts"],
                                                          "metrics": e["metrics"]}
                                                      for r, e in by_rule.items() if r != rule},
                                 calibration=calibration, **common),
        "val": M.metrics_record(val_eval, "val", rule_text, fingerprints[shipped], bundle.fingerprint,
                                model=f"{ship_path.name} ({shipped})",
                                note="the split that chose the threshold and the model: optimistic by design", **common),
        "test_other_phase": M.metrics_record(test_eval[other], "test", rule_text, fingerprints[other],
                                             bundle.fingerprint, model=f"{models[other][0].name} ({other})",
                                             candidate_thresholds=thresholds[other], **common),
        "model_choice": {"rule": SHIP_RULE, "shipped": shipped, "validation": choice.to_dict("records"), **common},
        "operating_point": {**op, **common},
    }
    for key, record in records.items():
        update_json_section(cfg.path("metrics", tag), key, record)
    return Evaluation(target, rule, probs, thresholds, choice, shipped, test_eval, by_rule, val_eval, op,
                      calibration, fingerprints, records)
