"""Dataset shift: the same model and threshold on a new population, and the standard remedy, honestly.

* :func:`compare_populations` puts the validation split (the population that chose the threshold) and a new
  population side by side: per class the score distribution, specificity and sensitivity at the operating
  threshold, AUC — each with a patient-bootstrap interval, and the new-minus-validation difference with one —
  and :func:`shift_sentence` says in one computed sentence what changed.
* :func:`recalibrate` is **local recalibration**: a small labelled sample of the new population's patients
  (:func:`recalibration_split`, by patient, seeded, blind to labels and scores) re-chooses the threshold with the
  series' own rule (:func:`utils.artifacts.threshold_for_recall`, same target recall); the result is reported
  only on the remaining patients, original against recalibrated threshold, with paired intervals from
  :func:`utils.evaluate.metrics.operating_point_bootstrap` (the threshold is re-chosen on every resample of the
  recalibration patients). It costs labelled local data and cannot change the ranking (AUC).
  :func:`recalibration_draws` repeats it for other draws of the labelled patients and :func:`draws_sentence` says
  how much the draw decides, and why (at a high recall target one labelled pneumonia sets the threshold).
* :func:`load_new_population` names the new population of a run: the test folder of a real dataset (on the
  official Kaggle layout a separately collected population) or, on phantoms, a built-in shifted phantom
  population (:func:`utils.data.phantom.shifted_spec`) written once under ``data/`` like the demo data
  (``cfg.path("shifted_phantom_dir")``; other exposures, e.g. the demo's own as a null, beside it).
* :func:`study_shift` is notebook 04's section 10 as one call.

Conventions as in :mod:`utils.evaluate.metrics`: 0 = NORMAL, 1 = PNEUMONIA, positive when ``prob >= threshold``.
"""
from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from utils.artifacts import labels_and_probs, threshold_for_recall
from utils.config import CLASSES, Config
from utils.data import phantom
from utils.data.bundle import DataBundle, Split
from utils.data.images import list_images
from utils.data.patients import patient_id_from_name, subtype_from_name
from utils.data.sources import decode_cached
from utils.data.splits import check_no_leaks
from utils.errors import UserError
from utils.evaluate import metrics as M

if TYPE_CHECKING:
    from utils.evaluate.evaluation import Evaluation

#: The numbers :func:`compare_populations` puts side by side (rows of :meth:`PopulationComparison.table`).
COMPARED: tuple[str, ...] = ("median_normal", "median_pneumonia", "specificity", "sensitivity", "roc_auc")
LABELS: dict[str, str] = {"median_normal": "median P(pneumonia), NORMAL",
                          "median_pneumonia": "median P(pneumonia), PNEUMONIA",
                          "specificity": "specificity at the threshold", "sensitivity": "sensitivity at the threshold",
                          "roc_auc": "ROC AUC"}
#: Score quantiles reported per class and population.
QUANTILES: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
#: Default share of the new population's patients labelled for recalibration.
RECAL_FRACTION = 0.2


# ------------------------------------------------------------------------------------ side by side
def _population_numbers(y: np.ndarray, p: np.ndarray, threshold: float) -> list[float]:
    """The :data:`COMPARED` numbers of one (resampled) population; nan where undefined (a class missing).
    Rates and AUC come from the bootstrap's own NumPy path of :mod:`utils.evaluate.metrics` (checked against
    scikit-learn there and in tests/test_shift.py)."""
    neg, pos = p[y == 0], p[y == 1]
    rates = dict(zip(M.HEADLINE_METRICS, M._headline_fast(y, p, threshold)))
    return [float(np.median(neg)) if neg.size else math.nan, float(np.median(pos)) if pos.size else math.nan,
            rates["specificity"], rates["sensitivity"], rates["roc_auc"]]


def _check(y: Any, p: Any, groups: Any, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validated labels, scores and patient ids of one population; a bad one is a one-line :class:`UserError`."""
    try:
        y_, p_ = labels_and_probs(y, p)
    except ValueError as exc:
        raise UserError(f"{what}: {exc} — pass one 0/1 label and one score per image.") from None
    if not ((y_ == 0).any() and (y_ == 1).any()):
        raise UserError(f"{what} needs NORMAL and PNEUMONIA images, but it has {int((y_ == 0).sum())} NORMAL and "
                        f"{int((y_ == 1).sum())} PNEUMONIA: use a population with both classes.")
    g = None if groups is None else np.asarray(groups).astype(str).ravel()
    if g is not None and g.size != y_.size:
        raise UserError(f"{what}: {g.size} patient ids for {y_.size} images — pass one per image.")
    return y_, p_, g


@dataclass
class PopulationComparison:
    """:func:`compare_populations`' result. ``metrics[population][name]`` and ``differences[name]`` (new minus
    reference) are ``{"value", "ci_low", "ci_high"}``; ``scores`` holds the per-class score quantiles."""

    names: tuple[str, str]
    threshold: float
    metrics: dict[str, dict[str, dict[str, float]]]
    differences: dict[str, dict[str, float]]
    counts: dict[str, dict[str, int]]
    scores: pd.DataFrame
    bootstrap: dict[str, Any]
    sentence: str = ""

    def table(self, digits: int = 3) -> pd.DataFrame:
        """Rows :data:`COMPARED`, columns the two populations and the change, cells ``value [95% CI]``."""
        ref, new = self.names
        rows = {LABELS[m]: {ref: M.format_ci(self.metrics[ref][m], digits), new: M.format_ci(self.metrics[new][m], digits),
                            f"change ({new} − {ref})": M.format_ci(self.differences[m], digits, signed=True)}
                for m in COMPARED}
        return pd.DataFrame(rows).T

    def record(self) -> dict[str, Any]:
        """A JSON-ready record (for ``assets/metrics.json``)."""
        from utils.fileio import jsonable
        return jsonable({"populations": list(self.names), "threshold": self.threshold, "metrics": self.metrics,
                         "differences": self.differences, "counts": self.counts,
                         "score_quantiles": self.scores.to_dict("records"), "bootstrap": self.bootstrap,
                         "sentence": self.sentence})


def compare_populations(y_ref: Any, p_ref: Any, y_new: Any, p_new: Any, threshold: float,
                        groups_ref: Any = None, groups_new: Any = None,
                        names: tuple[str, str] = ("validation", "test"), n_boot: int = 1000, seed: int = 0,
                        alpha: float = 0.05, quantiles: Sequence[float] = QUANTILES) -> PopulationComparison:
    """One model's scores on a reference population (validation: it chose ``threshold``) and a new one.

    Per population: the median P(pneumonia) of each class, specificity and sensitivity at the same frozen
    ``threshold`` and ROC AUC, with percentile intervals over ``n_boot`` resamples of whole patients
    (``groups_*``; images without them); the two populations are resampled independently (they share no
    patient), so the interval of each new-minus-reference difference comes from pairing independent draws.
    ``sentence`` is :func:`shift_sentence` of these numbers.
    """
    ref_name, new_name = names
    if ref_name == new_name:
        raise ValueError(f"the two populations need two names, got {names}")
    data = {ref_name: _check(y_ref, p_ref, groups_ref, f"the {ref_name} population"),
            new_name: _check(y_new, p_new, groups_new, f"the {new_name} population")}
    seeds = np.random.default_rng(seed).integers(0, 2**31, size=2)
    draws: dict[str, np.ndarray] = {}
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    counts: dict[str, dict[str, int]] = {}
    rows: list[dict[str, Any]] = []
    for (name, (y, p, g)), s in zip(data.items(), seeds):
        draws[name] = np.array([_population_numbers(y[idx], p[idx], threshold)
                                for idx in M.bootstrap_indices(y.size, g, n_boot, int(s))]).reshape(n_boot, -1)
        point = _population_numbers(y, p, threshold)
        metrics[name] = {m: {"value": point[i], **M.percentile_interval(draws[name][:, i], alpha)}
                         for i, m in enumerate(COMPARED)}
        tm = M.threshold_metrics(y, p, threshold)
        counts[name] = {"images": int(y.size), "normal": int((y == 0).sum()), "pneumonia": int((y == 1).sum()),
                        "patients": int(np.unique(g).size) if g is not None else int(y.size),
                        **{k: int(tm[k]) for k in ("tp", "fp", "tn", "fn")}}
        for label, cls in ((0, "NORMAL"), (1, "PNEUMONIA")):
            q = np.quantile(p[y == label], quantiles)
            rows.append({"population": name, "class": cls, "images": int((y == label).sum()),
                         **{f"q{round(100 * k):02d}": float(v) for k, v in zip(quantiles, q)}})
    diff = draws[new_name] - draws[ref_name]
    differences = {m: {"value": metrics[new_name][m]["value"] - metrics[ref_name][m]["value"],
                       **M.percentile_interval(diff[:, i], alpha)} for i, m in enumerate(COMPARED)}
    out = PopulationComparison(names, float(threshold), metrics, differences, counts, pd.DataFrame(rows),
                               {"n_boot": int(n_boot), "seed": seed, "alpha": alpha,
                                "unit": "patient" if groups_ref is not None and groups_new is not None else "image",
                                "populations": "resampled independently"})
    out.sentence = shift_sentence(out.metrics, out.differences, names, threshold, counts[new_name])
    return out


def _moved(diff: Mapping[str, float]) -> int:
    """+1 / -1 when the interval of a difference lies above / below 0, else 0 (noise cannot be ruled out)."""
    if diff["ci_low"] > 0:
        return 1
    if diff["ci_high"] < 0:
        return -1
    return 0


def shift_sentence(metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
                   differences: Mapping[str, Mapping[str, float]], names: tuple[str, str] = ("validation", "test"),
                   threshold: float | None = None, counts_new: Mapping[str, int] | None = None) -> str:
    """What changed between the two populations, in one computed sentence.

    ``metrics[population][name]`` and ``differences[name]`` are as in :class:`PopulationComparison`. A number
    "fell" or "rose" only when the interval of its difference excludes 0; otherwise it "held". The sentence
    names the class whose scores moved and what that did to specificity / sensitivity at the same threshold,
    then the AUC: held means the shift moved the scores, not their order (a threshold re-chosen on local data
    can fix that); fell means the ranking itself suffered (no threshold can).
    """
    ref, new = names

    def val(m: str, n: str) -> float:
        return metrics[n][m]["value"]

    at = f"at the same threshold ({threshold:.3f}) " if threshold is not None else "at the same threshold "
    clauses: list[str] = []
    held: list[str] = []
    for cls, median, rate in (("normals", "median_normal", "specificity"),
                              ("pneumonias", "median_pneumonia", "sensitivity")):
        d_med, d_rate = _moved(differences[median]), _moved(differences[rate])
        if d_rate:
            effect = f"{rate} {'rose' if d_rate > 0 else 'fell'} from {val(rate, ref):.3f} to {val(rate, new):.3f}"
            if rate == "specificity" and counts_new is not None:
                effect += f" ({counts_new['fp']} false alarms among {counts_new['normal']} normals)"
        else:
            effect = f"{rate} held ({val(rate, new):.3f} against {val(rate, ref):.3f})"
        if d_med or d_rate:
            clauses.append(f"{cls} score a median P(pneumonia) of {val(median, new):.3f} on {new} against "
                           f"{val(median, ref):.3f} on {ref}, and {'' if clauses else at}{effect}")
        else:
            held.append(effect)
    if clauses:
        parts = clauses + held
    else:
        parts = [f"{new} and {ref} agree within the patient-bootstrap intervals: {at}" + " and ".join(held)]
    d_auc, auc = _moved(differences["roc_auc"]), differences["roc_auc"]
    span = f"{val('roc_auc', ref):.3f} → {val('roc_auc', new):.3f}, change {M.format_ci(auc, signed=True)}"
    if d_auc < 0:
        tail = (f"AUC {'also ' if clauses else ''}fell ({span}): the ranking itself got worse, which no threshold "
                "can repair")
    elif d_auc > 0:
        tail = f"AUC rose ({span})"
    elif clauses:
        tail = f"AUC held ({span}): the scores moved, not their order — a threshold re-chosen on local data can fix that"
    else:
        tail = f"AUC held ({span})"
    text = "; ".join([*parts, tail]) + "."
    return text[0].upper() + text[1:]


# ------------------------------------------------------------------------------- local recalibration
def recalibration_split(patient_ids: Any, fraction: float = RECAL_FRACTION, seed: int = 0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(recalibration, scored)`` of a new population: ``round(fraction × patients)`` whole patients,
    drawn at random (seeded) from the patient ids alone — no label and no score is looked at — form the labelled
    recalibration sample; every image of every other patient is scored. The two never share a patient."""
    g = np.asarray(patient_ids).astype(str).ravel()
    if not 0.0 < fraction < 1.0:
        raise UserError(f"the recalibration fraction must be between 0 and 1 (exclusive), got {fraction}: "
                        f"use e.g. {RECAL_FRACTION}.")
    pids = np.unique(g)
    k = round(fraction * pids.size)
    if k < 1 or k >= pids.size:
        raise UserError(f"cannot split {pids.size} patient(s) into a recalibration sample of {fraction:.0%} and a "
                        "scored rest: use a larger new population or a fraction that leaves patients on both sides.")
    chosen = np.random.default_rng(seed).permutation(pids)[:k]
    in_recal = np.isin(g, chosen)
    recal, scored = np.flatnonzero(in_recal), np.flatnonzero(~in_recal)
    if set(g[recal]) & set(g[scored]):  # cannot happen by construction; the lesson depends on it
        raise RuntimeError("recalibration and scored parts share a patient")
    return recal, scored


@dataclass
class Recalibration:
    """:func:`recalibrate`'s result. ``bootstrap`` is :func:`~utils.evaluate.metrics.operating_point_bootstrap`'s
    output for the models ``recalibrated`` and ``original`` (same scores, two thresholds) on the scored part;
    ``bootstrap["differences"]["recalibrated - original"]`` holds the paired intervals."""

    target_recall: float
    thresholds: dict[str, float]
    recal_index: np.ndarray
    scored_index: np.ndarray
    labelled: dict[str, int]  # the recalibration sample: images, patients, normal, pneumonia
    scored: dict[str, int]  # the scored part: images, patients, normal, pneumonia
    counts: dict[str, dict[str, int]]  # threshold -> tp fp tn fn on the scored part
    bootstrap: dict[str, Any]
    sentence: str = ""
    fraction: float = RECAL_FRACTION
    seed: int = 0

    def table(self, digits: int = 3) -> pd.DataFrame:
        """Sensitivity, specificity and AUC on the scored part at both thresholds, and the paired difference."""
        models, diff = self.bootstrap["models"], self.bootstrap["differences"]["recalibrated - original"]
        rows = {m: {f"original threshold {self.thresholds['original']:.3f}": M.format_ci(models["original"][m], digits),
                    f"recalibrated {self.thresholds['recalibrated']:.3f}": M.format_ci(models["recalibrated"][m], digits),
                    "difference (paired)": M.format_ci(diff[m], digits, signed=True)}
                for m in ("sensitivity", "specificity", "roc_auc")}
        return pd.DataFrame(rows).T.rename(index={"roc_auc": "ROC AUC"})

    def record(self) -> dict[str, Any]:
        """A JSON-ready record (for ``assets/metrics.json``)."""
        from utils.fileio import jsonable
        return jsonable({"target_recall": self.target_recall, "thresholds": self.thresholds,
                         "fraction": self.fraction, "seed": self.seed, "labelled": self.labelled,
                         "scored": self.scored, "counts": self.counts, "bootstrap": self.bootstrap,
                         "sentence": self.sentence})


def _sizes(y: np.ndarray, g: np.ndarray) -> dict[str, int]:
    return {"images": int(y.size), "patients": int(np.unique(g).size), "normal": int((y == 0).sum()),
            "pneumonia": int((y == 1).sum())}


def recalibrate(y_true: Any, prob: Any, patient_ids: Any, threshold: float, target_recall: float,
                fraction: float = RECAL_FRACTION, seed: int = 0, n_boot: int = 1000,
                alpha: float = 0.05) -> Recalibration:
    """Local recalibration of a frozen model on a new population, reported only on patients it did not use.

    :func:`recalibration_split` draws the labelled sample; :func:`utils.artifacts.threshold_for_recall` re-chooses
    the threshold there for ``target_recall`` (the rule that chose ``threshold`` on validation). The scored part
    is evaluated at both thresholds by :func:`utils.evaluate.metrics.operating_point_bootstrap`: each resample
    draws recalibration patients and scored patients, re-chooses the threshold on the recalibration resample
    and scores both thresholds on the *same* scored resample, so the difference is paired. The original
    threshold enters as a "model" whose recalibration scores all equal it — the rule returns it unchanged in
    every resample: it is frozen, as shipped.
    """
    y, p, g = _check(y_true, prob, patient_ids, "the new population")
    if g is None:
        raise UserError("recalibration needs patient ids: pass one per image (images of a patient stay together).")
    recal, scored = recalibration_split(g, fraction, seed)
    labelled, rest = _sizes(y[recal], g[recal]), _sizes(y[scored], g[scored])
    if not labelled["pneumonia"]:
        raise UserError(f"the recalibration sample ({labelled['patients']} patients, {labelled['images']} images) holds "
                        "no PNEUMONIA image, so no threshold can be chosen for a recall: raise the fraction (now "
                        f"{fraction:g}) or try another seed.")
    if not (rest["normal"] and rest["pneumonia"]):
        raise UserError(f"the scored part ({rest['patients']} patients) lacks a class ({rest['normal']} NORMAL, "
                        f"{rest['pneumonia']} PNEUMONIA), so sensitivity and specificity are undefined there: lower "
                        f"the fraction (now {fraction:g}) or use a larger new population.")
    t_new = threshold_for_recall(y[recal], p[recal], target_recall)
    thresholds = {"original": float(threshold), "recalibrated": float(t_new)}
    boot = M.operating_point_bootstrap(
        y[recal], {"recalibrated": p[recal], "original": np.full(recal.size, float(threshold))},
        y[scored], {"recalibrated": p[scored], "original": p[scored]}, target_recall,
        g[recal], g[scored], n_boot=n_boot, seed=seed, alpha=alpha,
        metrics=("sensitivity", "specificity", "precision", "roc_auc"))
    counts = {k: {c: int(M.threshold_metrics(y[scored], p[scored], t)[c]) for c in ("tp", "fp", "tn", "fn")}
              for k, t in thresholds.items()}
    out = Recalibration(float(target_recall), thresholds, recal, scored, labelled, rest, counts, boot,
                        fraction=float(fraction), seed=seed)
    out.sentence = recalibration_sentence(out)
    return out


def recalibration_sentence(r: Recalibration) -> str:
    """What recalibration changed on the scored part, what it cost and what it cannot fix (computed)."""
    models, diff = r.bootstrap["models"], r.bootstrap["differences"]["recalibrated - original"]
    lab, rest, t = r.labelled, r.scored, r.thresholds
    verb = {1: "rose", -1: "fell", 0: "did not change measurably"}

    def change(m: str) -> str:
        return (f"{m} {verb[_moved(diff[m])]} ({models['original'][m]['value']:.3f} → "
                f"{models['recalibrated'][m]['value']:.3f}, paired difference {M.format_ci(diff[m], signed=True)})")

    fp0, fp1 = r.counts["original"]["fp"], r.counts["recalibrated"]["fp"]
    fn0, fn1 = r.counts["original"]["fn"], r.counts["recalibrated"]["fn"]
    n_pos = lab["pneumonia"]
    misses = n_pos - max(math.ceil(r.target_recall * n_pos - 1e-9), 1)  # as threshold_for_recall counts them
    which = ("the score of its lowest-scoring one" if misses == 0 else
             f"the score that leaves {misses} of them below it")
    return (f"Re-choosing the threshold on {lab['images']} labelled images of {lab['patients']} patients "
            f"({lab['pneumonia']} PNEUMONIA, {lab['normal']} NORMAL) of the new population moved it from "
            f"{t['original']:.3f} to {t['recalibrated']:.3f}. On the other {rest['images']} images "
            f"({rest['patients']} patients), {change('specificity')} and {change('sensitivity')}: false alarms "
            f"{fp0} → {fp1}, missed pneumonias {fn0} → {fn1}. The cost: those {lab['images']} images had to be "
            f"labelled locally and cannot be scored. What it cannot fix: the ranking — AUC on the scored part is "
            f"{models['original']['roc_auc']['value']:.3f} at either threshold; nor the size of the sample — a "
            f"recall of {r.target_recall:g} on {n_pos} PNEUMONIA images puts the threshold at {which}, so the "
            "sensitivity on new patients is only as sure as its interval.")


# ---------------------------------------------------------------------------------- the draw decides
#: How many draws of the labelled patients :func:`recalibration_draws` makes by default.
N_DRAWS = 20
#: Columns of :func:`recalibration_draws` (one row per draw).
DRAW_COLUMNS: tuple[str, ...] = ("seed", "labelled patients", "labelled PNEUMONIA", "lowest labelled P(PNEUMONIA)",
                                 "re-chosen threshold", "specificity, original", "specificity, re-chosen",
                                 "sensitivity, original", "sensitivity, re-chosen")


def recalibration_draws(y_true: Any, prob: Any, patient_ids: Any, threshold: float, target_recall: float,
                        fraction: float = RECAL_FRACTION, seeds: Sequence[int] = tuple(range(N_DRAWS))
                        ) -> pd.DataFrame:
    """Local recalibration repeated for other draws of the labelled patients (point values, no bootstrap).

    One row per seed (:data:`DRAW_COLUMNS`): the labelled sample of :func:`recalibration_split` (its patients and
    PNEUMONIA images, the lowest P(PNEUMONIA) among them), the threshold :func:`utils.artifacts.threshold_for_recall`
    re-chooses there, and specificity and sensitivity on *that draw's* scored patients at the original and the
    re-chosen threshold. A draw whose labelled sample holds no PNEUMONIA (no threshold can be chosen) keeps its row
    with NaN from the threshold on; a population too small to split at all is a one-line :class:`UserError`."""
    y, p, g = _check(y_true, prob, patient_ids, "the new population")
    if g is None:
        raise UserError("recalibration needs patient ids: pass one per image (images of a patient stay together).")
    rows = []
    for seed in seeds:
        recal, scored = recalibration_split(g, fraction, int(seed))
        yr, pr, ys, ps = y[recal], p[recal], y[scored], p[scored]
        row: dict[str, Any] = dict.fromkeys(DRAW_COLUMNS, math.nan)
        row.update({"seed": int(seed), "labelled patients": int(np.unique(g[recal]).size),
                    "labelled PNEUMONIA": int((yr == 1).sum())})
        before = M.threshold_metrics(ys, ps, float(threshold))
        row.update({"specificity, original": before["specificity"], "sensitivity, original": before["sensitivity"]})
        if (yr == 1).any():
            t_new = threshold_for_recall(yr, pr, target_recall)
            after = M.threshold_metrics(ys, ps, t_new)
            row.update({"lowest labelled P(PNEUMONIA)": float(pr[yr == 1].min()), "re-chosen threshold": t_new,
                        "specificity, re-chosen": after["specificity"], "sensitivity, re-chosen": after["sensitivity"]})
        rows.append(row)
    return pd.DataFrame(rows, columns=list(DRAW_COLUMNS))


def draws_sentence(draws: pd.DataFrame, target_recall: float, fraction: float = RECAL_FRACTION) -> str:
    """How much the draw of the labelled patients decides, and why (computed from :func:`recalibration_draws`)."""
    done = draws.dropna(subset=["re-chosen threshold"])
    if done.empty:
        return (f"None of the {len(draws)} draws of {fraction:.0%} of the patients held a PNEUMONIA image, so no "
                "threshold could be re-chosen: this population is too small for local recalibration.")
    n, n_pos = len(done), done["labelled PNEUMONIA"].astype(int)
    below = int((done["sensitivity, re-chosen"] < target_recall).sum())

    def rng(col: str) -> str:
        return f"{done[col].min():.3f} to {done[col].max():.3f} (median {done[col].median():.3f})"

    skipped = len(draws) - n
    first = (f"Over {n} draws of {fraction:.0%} of the patients ({n_pos.min()}–{n_pos.max()} labelled PNEUMONIA "
             f"images each{f'; {skipped} more drew none and re-chose nothing' if skipped else ''}), the re-chosen "
             f"threshold ranged from {rng('re-chosen threshold')}. On each draw's scored patients, specificity at "
             f"the re-chosen threshold ranged from {rng('specificity, re-chosen')} — at the original threshold "
             f"{rng('specificity, original')} — and sensitivity from {rng('sensitivity, re-chosen')}, below the "
             f"{target_recall:g} target in {below} of {n} draws.")
    head = draws.iloc[0]
    if not math.isnan(head["re-chosen threshold"]) and n > 1:  # where the first draw (the one shown) sits among them
        spec = done["specificity, re-chosen"]
        first += (f" The first draw (seed {int(head['seed'])}) reached a specificity of "
                  f"{head['specificity, re-chosen']:.3f}: {int((spec < head['specificity, re-chosen']).sum())} of the "
                  f"other {n - 1} draws did worse, {int((spec > head['specificity, re-chosen']).sum())} better.")
    land = "whether the hardest pneumonias happened to be labelled decides where specificity and sensitivity land."
    if target_recall >= 1:
        return first + (f" Why: a recall of {target_recall:g} keeps every labelled pneumonia, so the threshold is the "
                        f"score of the lowest-scoring one — one child's image sets it, and {land}")
    free = max(1, math.ceil(1 / (1 - target_recall) - 1e-9))
    by_lowest = int((n_pos < free).sum())  # draws whose threshold is their lowest labelled pneumonia's score
    why = f" Why: a recall of {target_recall:g} may miss a labelled pneumonia only once there are {free} or more of them"
    if by_lowest == n:
        return first + (f"{why}, and no draw had that many: in every draw the threshold is the score of the single "
                        f"lowest-scoring labelled pneumonia — one child's image sets it, so {land}")
    if by_lowest:
        return first + (f"{why}; in {by_lowest} of {n} draws there were fewer, and the threshold is the score of the "
                        "single lowest-scoring labelled pneumonia — one child's image sets it; in the others one of the "
                        f"lowest few does. Either way, {land}")
    return first + (f"{why}, and every draw had that many: the threshold is set by one of the lowest few labelled "
                    f"pneumonias rather than by the lowest alone — yet {land}")


# ------------------------------------------------------------------------------------- the new population
#: Name of the built-in shifted phantom population in tables, figures and ``assets/metrics.json``.
SHIFTED_NAME = "shifted phantoms"


@dataclass
class NewPopulation:
    """The population a run meets after validation: its images (a :class:`~utils.data.bundle.Split`), a short
    ``name`` for tables and a one-line ``description`` saying which population it is."""

    split: Split
    name: str
    description: str
    root: Path | None = None


def _exposure(exposure: float | None) -> float:
    """The exposure of a shifted phantom population (None: :data:`utils.data.phantom.SHIFTED_EXPOSURE`)."""
    e = phantom.SHIFTED_EXPOSURE if exposure is None else float(exposure)
    if not (math.isfinite(e) and e > 0):
        raise UserError(f"the phantom exposure must be a positive number, got {exposure!r}: e.g. "
                        f"{phantom.SHIFTED_EXPOSURE:g} (the built-in shift) or "
                        f"{phantom.PhantomSpec.exposure:g} (the demo's own exposure).")
    return e


def shifted_phantom_dir(cfg: Config, exposure: float | None = None) -> Path:
    """Where a shifted phantom population is written (``cfg.path("shifted_phantom_dir")``, beside the demo phantoms,
    never inside them); another ``exposure`` than the built-in one gets its own folder (``…_exposure2.2``)."""
    base, e = cfg.path("shifted_phantom_dir"), _exposure(exposure)
    return base if e == phantom.SHIFTED_EXPOSURE else base.with_name(f"{base.name}_exposure{e:g}")


def shifted_name(exposure: float | None = None) -> str:
    """The population's name in tables and figures: :data:`SHIFTED_NAME` for the built-in shift."""
    e = _exposure(exposure)
    return SHIFTED_NAME if e == phantom.SHIFTED_EXPOSURE else f"phantoms at exposure {e:g}"


def _shifted_draw(settings: Mapping[str, Any]) -> dict[str, Any]:
    """How the shifted population is drawn from the demo's phantom settings: as many patients as the demo test
    set, its own seed, and patient numbers after every demo train and test patient."""
    first_test = max(5001, settings["n_patients_train"] + 1)  # as utils.data.sources.ensure_phantom_dataset
    return {"population": SHIFTED_NAME, "n_patients": int(settings["n_patients_test"]),
            "seed": int(settings["seed"]) + 2, "first_pid": max(9001, first_test + int(settings["n_patients_test"]))}


def ensure_shifted_phantoms(root: str | Path, size: int, settings: Mapping[str, Any], progress: bool = True,
                            exposure: float | None = None) -> Path:
    """Write the shifted phantom population as ``root/test/{NORMAL,PNEUMONIA}/*.png`` (with the phantom sidecars
    and stamp, :func:`utils.data.phantom.write_kermany_layout`) unless the same one is already there. ``settings``
    are the profile's phantom settings; the spec is :func:`utils.data.phantom.shifted_spec` at ``exposure`` (None:
    the built-in one). Deterministic: the same settings give the same images, and every exposure the same patients,
    lesions and acquisitions — only the exposure technique differs."""
    root = Path(root)
    spec = phantom.shifted_spec(size, settings.get("difficulty", "default"), _exposure(exposure))
    drawn = {**_shifted_draw(settings), "population": shifted_name(exposure)}
    if phantom.stamp_matches(root, phantom.dataset_stamp(spec, **drawn)):
        return root
    if root.exists():
        shutil.rmtree(root)
    samples = phantom.generate(drawn["n_patients"], drawn["seed"], spec, first_pid=drawn["first_pid"],
                               progress=progress)
    return phantom.write_kermany_layout(root, {"test": samples}, spec, **drawn)


def read_population(folder: str | Path, size: int, cache_dir: Path, name: str = "new",
                    progress: bool = True) -> Split:
    """The images of ``folder/{NORMAL,PNEUMONIA}`` as a :class:`~utils.data.bundle.Split` (decoded once through
    :func:`utils.data.sources.decode_cached`; patient ids and subtypes from the Kermany file names)."""
    folder = Path(folder)
    rows = [{"path": str(f), "label": label, "id": f.stem, "patient_id": patient_id_from_name(f.name),
             "subtype": subtype_from_name(f.name)}
            for label, cls in enumerate(CLASSES) for f in list_images(folder / cls)]
    df = pd.DataFrame(rows, columns=["path", "label", "id", "patient_id", "subtype"])
    if df.empty:
        raise UserError(f"no images in {folder}/{{NORMAL,PNEUMONIA}}: delete {folder.parent} to regenerate it.")
    images, hashes, bad = decode_cached(df, size, cache_dir, progress)
    if bad:
        raise UserError(f"{len(bad)} unreadable image(s) in {folder} (e.g. {bad[0]}): delete {folder.parent} to "
                        "regenerate it.")
    col = lambda c: df[c].to_numpy().astype(str)  # noqa: E731
    return Split(name, images, df["label"].to_numpy(np.int64), col("id"), col("patient_id"), col("subtype"), hashes)


def load_new_population(cfg: Config, bundle: DataBundle, progress: bool = True,
                        exposure: float | None = None) -> NewPopulation:
    """The new population of this run, and which one it is.

    Real data (a Kermany folder, PneumoniaMNIST): the **test** split. On the official Kaggle layout the test folder
    was collected separately from the training folder (PneumoniaMNIST's test split is that folder, resized), so it
    is a new population, not a held-out part of the old one. Phantoms: the built-in shifted population
    (:func:`ensure_shifted_phantoms`, written once under ``data/`` beside the demo phantoms), checked to share no
    patient and no image with the demo splits; ``exposure`` draws the same patients at another exposure technique
    (the demo's own, :attr:`utils.data.phantom.PhantomSpec.exposure`, gives a new sample of the demo population).
    """
    if bundle.source != "phantom":
        if exposure is not None:
            raise UserError(f"exposure={exposure!r} changes the built-in shifted phantoms, but this run uses real data "
                            "(its new population is the test folder): leave exposure out, or use the phantom demo.")
        if "test" not in bundle.splits:
            raise UserError(f"{bundle.root or 'this dataset'} has no test split, and on real data the new population is "
                            "the test folder: use a data folder with test/{NORMAL,PNEUMONIA} (the Kaggle layout).")
        test = bundle["test"]
        where = f" of {bundle.root}" if bundle.root is not None else ""
        what = ("PneumoniaMNIST's test split (the official Kermany test folder, resized)" if bundle.source == "medmnist"
                else f"the test folder{where}")
        return NewPopulation(test, "test", f"{what}: on the official Kaggle layout a separately collected population "
                             f"— {len(test)} images of {len(np.unique(test.patient_ids))} patients", bundle.root)
    settings, name, e = cfg["phantom"], shifted_name(exposure), _exposure(exposure)
    root = ensure_shifted_phantoms(shifted_phantom_dir(cfg, e), bundle.image_size, settings, progress, e)
    split = read_population(root / "test", bundle.image_size, cfg.path("cache_dir"), name, progress)
    check_no_leaks({**bundle.splits, name: split})
    default = phantom.spec_for(settings.get("difficulty", "default"), bundle.image_size).exposure
    size = f"{len(split)} images of {len(np.unique(split.patient_ids))} new patients"
    if e == default:
        what = (f"new phantom patients at the demo's own exposure ({e:g}): {size}, a new sample of the population the "
                "model was trained and validated on — the null, where nothing should change")
    else:
        what = (f"{'built-in shifted phantoms' if name == SHIFTED_NAME else 'shifted phantoms'} — another hospital's "
                f"exposure technique (exposure {e:g} instead of {default:g}; same anatomy and lesion model): {size}, "
                "the offline stand-in for a separately collected test folder")
    return NewPopulation(split, name, what, root)


# ------------------------------------------------------------------------------------------- one call
@dataclass
class ShiftStudy:
    """Notebook 04's dataset-shift section as one result (see :func:`study_shift`)."""

    population: NewPopulation
    prob: np.ndarray  # the shipped model's P(PNEUMONIA) on the new population
    comparison: PopulationComparison
    recalibration: Recalibration | None  # None when the population is too small to recalibrate (``note`` says why)
    draws: pd.DataFrame  # recalibration_draws: the same recalibration with other labelled patients
    draws_sentence: str
    note: str = ""


def study_shift(cfg: Config, bundle: DataBundle, evaluation: Evaluation, fraction: float = RECAL_FRACTION,
                n_boot: int | None = None, device: str = "auto", progress: bool = True,
                exposure: float | None = None, n_draws: int = N_DRAWS, record: bool = True) -> ShiftStudy:
    """The shipped model on the new population (:func:`load_new_population`; ``exposure``: phantoms only): validation
    against it (:func:`compare_populations`), local recalibration (:func:`recalibrate`, ``fraction`` of its
    patients, seed ``cfg["seed"]``) and the same recalibration for ``n_draws`` draws of the labelled patients
    (:func:`recalibration_draws`, seeds ``cfg["seed"]`` on: the first is the one above), all at the operating
    threshold and target recall of ``evaluation`` (:func:`utils.evaluate.evaluation.evaluate_models`). A population
    too small to recalibrate gives ``recalibration=None`` and a one-line ``note``. With ``record`` the result is
    written into ``assets/metrics.json`` as section ``dataset_shift`` (exercises pass ``record=False``)."""
    from utils.data.bundle import fingerprint
    from utils.fileio import update_json_section
    from utils.train.model import load_model, predict_proba, resolve_device

    pop = load_new_population(cfg, bundle, progress, exposure)
    boots, seed = int(cfg["n_bootstrap"] if n_boot is None else n_boot), int(cfg["seed"])
    shipped, val = evaluation.shipped, bundle["val"]
    if pop.split is bundle.splits.get("test"):
        prob = evaluation.probs[shipped]["test"]
    else:
        dev = resolve_device(device)
        model, meta = load_model(cfg.require("model"), dev)
        prob = predict_proba(model, pop.split.images, meta, batch_size=cfg["batch_size"], device=dev,
                             progress=progress)
    comparison = compare_populations(val.labels, evaluation.probs[shipped]["val"], pop.split.labels, prob,
                                     evaluation.threshold, val.patient_ids, pop.split.patient_ids,
                                     names=("validation", pop.name), n_boot=boots, seed=seed)
    args = (pop.split.labels, prob, pop.split.patient_ids, evaluation.threshold, evaluation.target_recall, fraction)
    recal: Recalibration | None = None
    note, draws = "", pd.DataFrame(columns=list(DRAW_COLUMNS))
    try:
        recal = recalibrate(*args, seed=seed, n_boot=boots)
    except UserError as exc:
        note = f"Local recalibration cannot run on {pop.name}: {exc}"
    try:
        draws = recalibration_draws(*args, seeds=range(seed, seed + n_draws))
    except UserError as exc:
        note = note or f"Local recalibration cannot run on {pop.name}: {exc}"
    sentence = draws_sentence(draws, evaluation.target_recall, fraction) if len(draws) else ""
    if record:
        update_json_section(cfg.path("metrics"), "dataset_shift", {
            "population": pop.name, "description": pop.description, "comparison": comparison.record(),
            "recalibration": None if recal is None else recal.record(), "note": note,
            "recalibration_draws": {"table": draws.to_dict("records"), "sentence": sentence},
            "model": f"{cfg.path('model').name} ({shipped})",
            "model_fingerprint": evaluation.fingerprints.get(shipped), "data_fingerprint": bundle.fingerprint,
            "population_fingerprint": fingerprint({pop.name: pop.split}), "profile": cfg.profile, "run": cfg.knobs})
    return ShiftStudy(pop, prob, comparison, recal, draws, sentence, note)
