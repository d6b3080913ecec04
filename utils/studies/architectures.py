"""Two architectures on the same data, side by side (notebook 09: ResNet-18 vs ViT-Tiny).

Everything here reuses the series' own pieces — each model's validation-chosen threshold and main explanation as
recorded in its checkpoint (:func:`utils.explain.maps.main_maps`, read now), the paired, threshold-re-choosing
bootstrap of notebook 04 (:func:`utils.evaluate.metrics.operating_point_bootstrap`), the outside-lung and
in-lesion mass of notebooks 05–06, the one verdict rule (:mod:`utils.evaluate.verdicts`) and the CPU timer of
notebook 07 — so that a difference between the two columns is a difference between the models.

**The headline is specificity at matched validation sensitivity.** Each model's threshold is the highest one that
reaches the target recall on validation (:func:`utils.artifacts.threshold_for_recall`): the k-th highest validation
pneumonia score with k = ⌈target × positives⌉, so both models sit at the *same* validation sensitivity (k of the
positives; only tied scores could differ, and :func:`headline_sentence` says so). The test specificities at those
thresholds are then compared, paired, thresholds re-chosen on every validation resample.

**Maps at equal resolution, against a null.** A coarse map spreads more mass over the lung border than a fine one,
so comparing a ResNet ``layer4`` map (4×4 cells at 128 px) with a ViT patch map (8×8) measures the grids, not the
models. Both models' maps are averaged onto the *coarser* of their two cell grids (:func:`utils.explain.maps.map_grid`,
:func:`utils.explain.maps.pool_maps`) before any mass is counted; and each model's share is read against a **uniform
map** (the share it puts outside the lungs is the area outside them; in the lesion, the lesion's area) — the level a
map that never looked at the image reaches. Empty or constant maps are "no map" (:func:`utils.evaluate.verdicts.empty_maps`):
counted, never scored.

The images: the PNEUMONIA test images both models detect and both explain (*common true positives*), paired by
image, patients resampled. The reference project's hypothesis ("Vision Transformers … better capture global anatomical
context and reduce the localized distractions observed in the edge case study") becomes the claims of
:data:`CLAIMS`, each with a verdict from its interval (:func:`hypothesis_verdicts`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from utils.artifacts import operating_threshold
from utils.config import Config
from utils.data.bundle import DataBundle
from utils.deploy.timing import benchmark_cpu, file_size_mb, machine_info, torch_forward
from utils.evaluate.metrics import (
    format_ci,
    operating_point_bootstrap,
    outcome_groups,
    paired_difference_ci,
    threshold_metrics,
)
from utils.evaluate.verdicts import (
    difference_verdict,
    empty_maps,
    format_difference,
    interval_side,
    no_map_sentence,
    verdict_phrase,
)
from utils.explain.localisation import energy_inside, estimate_lung_fields, outside_lung_fractions
from utils.explain.maps import main_explanation, main_maps, map_grid, pool_maps
from utils.train.model import load_model, predict_proba, resolve_device

__all__ = ["CLAIMS", "MAP_METRICS", "ArchComparison", "ModelResult", "claim_verdict", "compare_architectures",
           "comparison_record", "comparison_table", "false_negative_table", "headline", "headline_sentence",
           "hypothesis_verdicts", "map_sentences", "n_parameters", "uniform_sentence"]

#: The hypothesis, as claims: (key, what is compared, direction that supports it). The first is the headline.
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("more_specific", "test specificity at matched validation sensitivity (ViT - ResNet)", "higher"),
    ("fewer_misses", "test sensitivity at matched validation sensitivity (ViT - ResNet)", "higher"),
    ("less_outside_lungs", "share of the PNEUMONIA map outside the lungs, equal grids, common true positives "
     "(ViT - ResNet)", "lower"),
    ("better_localisation", "share of the PNEUMONIA map in the lesion, equal grids, common true positives "
     "(ViT - ResNet; phantoms)", "higher"),
)
#: The map measurements: (score column, its uniform-map column, label, direction that beats the uniform map).
MAP_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("outside_lung", "uniform_outside", "outside the lungs", "below"),
    ("energy", "uniform_energy", "in the lesion", "above"),
)


@dataclass
class ModelResult:
    """One model of the comparison: what was read from its checkpoint and what was measured on the test set."""

    name: str
    path: Path
    meta: dict[str, Any]
    threshold: float
    explanation: dict[str, Any]
    val_probs: np.ndarray
    test_probs: np.ndarray
    outcome: np.ndarray  # "TP" "FN" "FP" "TN" per test image
    maps: np.ndarray  # main-explanation maps of the PNEUMONIA test images, at their own resolution
    grid: tuple[int, int]  # the cell grid of those maps (map_grid)
    scores: pd.DataFrame  # per PNEUMONIA test image, pooled onto the common grid: outside_lung, energy, no_map
    params: int
    size_mb: float


@dataclass
class ArchComparison:
    """What notebook 09 shows; built by :func:`compare_architectures`. ``a`` is the first model (the reference),
    differences read ``b - a``."""

    models: dict[str, ModelResult]
    positives: np.ndarray  # indices of the PNEUMONIA test images (the rows of every model's maps and scores)
    lung_source: str
    has_masks: bool
    grid: tuple[int, int]  # the common grid both models' maps are pooled onto
    operating: dict[str, Any]  # operating_point_bootstrap of the models (paired)
    val_sensitivity: dict[str, float] = field(default_factory=dict)  # at each model's full-validation threshold
    common_tp: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))  # rows of `positives`
    both_tp: int = 0  # pneumonias both models detect (before leaving out the images either cannot explain)
    vs_uniform: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> metric -> paired CI map - uniform
    map_differences: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> paired CI (b - a)
    latency: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    lung_masks: np.ndarray | None = None  # of the PNEUMONIA test images (ground truth, or the estimate)

    @property
    def names(self) -> tuple[str, str]:
        a, b = list(self.models)
        return a, b

    def no_maps(self, name: str) -> int:
        """Images among those both models detect whose map under ``name`` is empty or constant."""
        both = self._both_tp_rows()
        return int(self.models[name].scores["no_map"].to_numpy()[both].sum())

    def _both_tp_rows(self) -> np.ndarray:
        a, b = self.names
        return np.flatnonzero((self.models[a].outcome[self.positives] == "TP")
                              & (self.models[b].outcome[self.positives] == "TP"))


def n_parameters(model: torch.nn.Module) -> int:
    """Number of parameters."""
    return int(sum(p.numel() for p in model.parameters()))


def _map_scores(maps: np.ndarray, grid: tuple[int, int], lungs: np.ndarray, lesions: np.ndarray | None
                ) -> pd.DataFrame:
    """Per map: "no map" (empty or constant at its own resolution), and — pooled onto ``grid`` — the share outside
    the lungs and in the lesion (NaN for no map, and in the lesion without a lesion mask), with a uniform map's."""
    no_map = empty_maps(maps) if len(maps) else np.zeros(0, dtype=bool)
    pooled = pool_maps(maps, grid) if len(maps) else maps
    outside, _, _ = outside_lung_fractions(pooled, lungs, skip_empty=True)
    outside[no_map] = np.nan
    out = pd.DataFrame({"no_map": no_map, "outside_lung": outside,
                        "uniform_outside": 1.0 - lungs.reshape(len(lungs), -1).mean(axis=1)})
    if lesions is None:
        out["energy"] = out["uniform_energy"] = np.nan
        return out
    has = np.asarray(lesions.reshape(len(lesions), -1).any(axis=1), dtype=bool)
    out["energy"] = [energy_inside(m, lesion, skip_empty=True) if h and not e else np.nan
                     for m, lesion, h, e in zip(pooled, lesions, has.tolist(), no_map.tolist())]
    out["uniform_energy"] = np.where(has, lesions.reshape(len(lesions), -1).mean(axis=1), np.nan)
    return out


def compare_architectures(cfg: Config, bundle: DataBundle, paths: Mapping[str, str | Path], device: str = "auto",
                          latency_runs: int = 30, progress: bool = True) -> ArchComparison:
    """Measure the checkpoints ``paths`` (name -> shipped checkpoint, two of them: the first is the reference
    ``a``, differences read ``b - a``) on ``bundle``'s test set; see the module docstring."""
    if len(paths) != 2:
        raise ValueError(f"compare two models, got {len(paths)}")
    dev = resolve_device(device)
    val, test = bundle["val"], bundle["test"]
    pos = np.flatnonzero(test.labels == 1)
    has_masks = test.lesion_masks is not None
    lesions = None if test.lesion_masks is None else test.lesion_masks[pos]
    n_boot, seed = int(cfg["n_bootstrap"]), cfg["seed"]
    loaded, native = {}, {}
    for name, path in paths.items():
        model, meta = load_model(path, dev)
        spec = main_explanation(path, model)  # the record as it is now, checked against the model
        maps, _ = main_maps(model, path, test.images[pos])
        loaded[name] = (model, meta, spec, maps, map_grid(model, spec, bundle.image_size))
    grids = [v[4] for v in loaded.values()]
    grid = (min(g[0] for g in grids), min(g[1] for g in grids))  # the coarser grid: neither map gains detail
    if test.lung_masks is None:  # real films: the estimated lung field (biased upwards on pneumonia, notebook 06)
        lungs, lung_source = estimate_lung_fields(test.images[pos], progress), "estimated"
    else:
        lungs, lung_source = np.asarray(test.lung_masks[pos], bool), "ground truth"
    models: dict[str, ModelResult] = {}
    for name, path in paths.items():
        model, meta, spec, maps, own_grid = loaded[name]
        threshold, _ = operating_threshold(meta, path)
        p_val = predict_proba(model, val.images, meta, device=dev)
        p_test = predict_proba(model, test.images, meta, device=dev)
        native[name] = model
        models[name] = ModelResult(name, Path(path), meta, threshold, spec, p_val, p_test,
                                   outcome_groups(test.labels, p_test, threshold), maps, own_grid,
                                   _map_scores(maps, grid, lungs, lesions), n_parameters(model), file_size_mb(path))
    a, b = list(models)
    operating = operating_point_bootstrap(val.labels, {k: models[k].val_probs for k in (b, a)}, test.labels,
                                          {k: models[k].test_probs for k in (b, a)}, cfg["target_recall"],
                                          val.patient_ids, test.patient_ids, n_boot=n_boot, seed=seed)
    out = ArchComparison(models, pos, lung_source, has_masks, grid, operating, lung_masks=lungs)  # "b - a"
    out.val_sensitivity = {k: threshold_metrics(val.labels, m.val_probs, operating["models"][k]["threshold"]["value"])
                           ["sensitivity"] for k, m in models.items()}
    both = out._both_tp_rows()
    out.both_tp = len(both)
    explained = ~models[a].scores["no_map"].to_numpy()[both] & ~models[b].scores["no_map"].to_numpy()[both]
    out.common_tp = both[explained]
    groups = test.patient_ids[pos][out.common_tp]
    for metric, uniform, _, _ in MAP_METRICS:
        if metric == "energy" and not has_masks:
            continue
        col = {k: m.scores[metric].to_numpy()[out.common_tp] for k, m in models.items()}
        for k, m in models.items():
            out.vs_uniform.setdefault(k, {})[metric] = paired_difference_ci(
                col[k], m.scores[uniform].to_numpy()[out.common_tp], groups, n_boot=n_boot, seed=seed)
        out.map_differences[metric] = paired_difference_ci(col[b], col[a], groups, n_boot=n_boot, seed=seed)
    sample = test.images[: min(8, len(test))]
    threads = min(2, torch.get_num_threads())
    out.latency = benchmark_cpu({k: torch_forward(native[k].cpu()) for k in models}, sample, models[a].meta,
                                runs=latency_runs, batch=16, threads=threads)
    out.machine = machine_info(threads)
    for k in models:
        native[k].to(dev)
    return out


# ------------------------------------------------------------------------------------------- verdicts
def claim_verdict(diff: Mapping[str, float] | None, direction: str, margin: float = 0.0) -> str:
    """A claim's verdict from its difference ``b - a`` and interval (:func:`utils.evaluate.verdicts.difference_verdict`):
    ``"supported"`` (on the claimed side, ``direction`` "higher" or "lower", by at least ``margin``),
    ``"contradicted"`` (on the other side), ``"not shown"`` (the interval includes zero, or inside the margin) or
    ``"not measurable"`` (nothing was measured)."""
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")
    side = "not measured" if diff is None else difference_verdict(diff, margin)
    if side == "not measured":
        return "not measurable"
    good, bad = ("above", "below") if direction == "higher" else ("below", "above")
    return "supported" if side == good else "contradicted" if side == bad else "not shown"


def headline_sentence(names: tuple[str, str], val_sensitivity: Mapping[str, float],
                      specificity: Mapping[str, Mapping[str, float]], difference: Mapping[str, float], rule: str,
                      margin: float = 0.0) -> str:
    """The comparison's headline: test specificity of the two models ``names`` = (a, b) at matched validation
    sensitivity, and the verdict of the paired difference ``b - a`` (interval with thresholds re-chosen)."""
    a, b = names
    va, vb = float(val_sensitivity[a]), float(val_sensitivity[b])
    at = (f"At matched validation sensitivity ({va:.3f} for both; each threshold chosen on validation by {rule})"
          if abs(va - vb) < 1e-9 else
          f"At validation sensitivity {a} {va:.3f} and {b} {vb:.3f} (each threshold chosen on validation by {rule}; "
          "tied validation scores keep them from matching exactly)")
    verdict = difference_verdict(difference, margin)
    meaning = {"above": f"{b} is the more specific model at the same sensitivity",
               "below": f"{a} is the more specific model at the same sensitivity",
               "within": "the difference is detectable but too small to matter",
               "inconclusive": "this run cannot tell the two models apart (which is not evidence that they are equal)",
               "not measured": "nothing to compare"}[verdict]
    return (f"{at}, test specificity is {a} {format_ci(specificity[a])} and {b} {format_ci(specificity[b])}; "
            f"{b} − {a} {format_difference(difference)} (threshold re-chosen on every validation resample): "
            f"{verdict_phrase(verdict, margin, interval_side(difference))} — {meaning}.")


def uniform_sentence(model: str, where: str, map_value: float, uniform_value: float, difference: Mapping[str, float],
                     better: str, n: int, n_no_map: int = 0, grid: str = "", margin: float = 0.0) -> str:
    """One model's map against a uniform map (the same images, paired): ``where`` ("outside the lungs", "in the
    lesion"), the map's mean share and the uniform map's, the difference ``map - uniform`` with its interval and
    its verdict; ``better`` is the side that beats the uniform map ("below" for outside the lungs, "above" for in
    the lesion). ``n_no_map`` maps were empty or constant: counted, not scored."""
    if better not in ("above", "below"):
        raise ValueError(f"better must be 'above' or 'below', got {better!r}")
    empty = no_map_sentence(n_no_map, n + n_no_map, f"{model} maps")
    verdict = difference_verdict(difference, margin)
    if verdict == "not measured" or n == 0:
        return " ".join(s for s in (f"{model}: the share {where} was not scored (no image with a map).", empty) if s)
    worse = "above" if better == "below" else "below"
    meaning = {better: "the map beats a uniform map here",
               worse: "the map does worse than a uniform map here",
               "within": "detectably different from a uniform map, but by less than the margin",
               "inconclusive": "at the level of a uniform map: this share says nothing about where the model looked"
               }[verdict]
    on = f" ({grid})" if grid else ""
    words = verdict_phrase(verdict, margin, interval_side(difference))
    text = (f"{model}{on}: {map_value:.3f} of the map {where} vs {uniform_value:.3f} for a uniform map on the same "
            f"{n} images; map − uniform {format_difference(difference)}: {words} — {meaning}.")
    return " ".join(s for s in (text, empty) if s)


def _grid_text(grid: tuple[int, int]) -> str:
    return f"{grid[0]}×{grid[1]}"


def _pooled_text(own: tuple[int, int], common: tuple[int, int]) -> str:
    return f"{_grid_text(own)} grid" if tuple(own) == tuple(common) else \
        f"{_grid_text(own)} map pooled to {_grid_text(common)}"


def map_sentences(cmp: ArchComparison) -> list[str]:
    """The map comparison as sentences: each model against a uniform map, then ``b - a``, all at the common grid on
    the common true positives (both models detect the image and both have a map of it)."""
    a, b = cmp.names
    ct = cmp.common_tp
    out = [s for s in (no_map_sentence(cmp.no_maps(k), cmp.both_tp, f"{k} maps of the pneumonias both models detect")
                       for k in cmp.models) if s]
    if out:
        out.append(f"The maps are compared on the {len(ct)} images both models explain.")

    def mean(v: pd.Series) -> float:
        return float(np.mean(v.to_numpy()[ct])) if len(ct) else float("nan")

    for metric, uniform, where, better in MAP_METRICS:
        if metric not in cmp.map_differences:
            continue
        for k, m in cmp.models.items():
            out.append(uniform_sentence(k, where, mean(m.scores[metric]), mean(m.scores[uniform]),
                                        cmp.vs_uniform[k][metric], better, len(ct),
                                        grid=_pooled_text(m.grid, cmp.grid)))
        d = cmp.map_differences[metric]
        v = difference_verdict(d)
        words = verdict_phrase(v, 0.0, interval_side(d))
        out.append(f"{b} − {a}, share {where} at equal resolution: {format_difference(d)}: {words}.")
    return out


def hypothesis_verdicts(cmp: ArchComparison) -> pd.DataFrame:
    """Each claim of :data:`CLAIMS`: the measured difference ``b - a`` with its interval and its
    :func:`claim_verdict` (``not measurable`` without lesion masks for the lesion claim)."""
    a, b = cmp.names
    op = cmp.operating["differences"][f"{b} - {a}"]
    diffs = {"more_specific": op["specificity"], "fewer_misses": op["sensitivity"],
             "less_outside_lungs": cmp.map_differences.get("outside_lung"),
             "better_localisation": cmp.map_differences.get("energy")}
    rows = []
    for key, what, direction in CLAIMS:
        d = diffs[key]
        rows.append({"claim": key, "compared": what, "difference": np.nan if d is None else d["value"],
                     "ci_low": np.nan if d is None else d["ci_low"], "ci_high": np.nan if d is None else d["ci_high"],
                     "verdict": claim_verdict(d, direction)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- tables
def comparison_table(cmp: ArchComparison) -> pd.DataFrame:
    """The one table of notebook 09: rows = measurements, columns = the two models and ``b - a`` with its interval
    (test metrics: threshold re-chosen on every validation resample; maps: the common true positives)."""
    a, b = cmp.names
    A, B = cmp.models[a], cmp.models[b]
    op, diff_col = cmp.operating, f"{b} − {a}"
    rows: list[dict[str, Any]] = [{"measure": "validation sensitivity at the threshold (matched)",
                                   a: f"{cmp.val_sensitivity[a]:.3f}", b: f"{cmp.val_sensitivity[b]:.3f}", diff_col: ""},
                                  {"measure": "threshold (chosen on validation)", a: f"{A.threshold:.4g}",
                                   b: f"{B.threshold:.4g}", diff_col: ""}]
    for metric, label in (("specificity", "test specificity (95% CI, threshold re-chosen)"),
                          ("sensitivity", "test sensitivity (95% CI, threshold re-chosen)"),
                          ("roc_auc", "test ROC AUC (95% CI)")):
        d = op["differences"][f"{b} - {a}"][metric]
        rows.append({"measure": label, a: format_ci(op["models"][a][metric]),
                     b: format_ci(op["models"][b][metric]), diff_col: format_ci(d, signed=True)})
    rows.append({"measure": f"false negatives (of {len(cmp.positives)} pneumonias)",
                 a: str(int((A.outcome == "FN").sum())), b: str(int((B.outcome == "FN").sum())), diff_col: ""})
    rows.append({"measure": "explanation", a: A.explanation["name"], b: B.explanation["name"], diff_col: ""})
    rows.append({"measure": "map grid → compared at", a: f"{_grid_text(A.grid)} → {_grid_text(cmp.grid)}",
                 b: f"{_grid_text(B.grid)} → {_grid_text(cmp.grid)}", diff_col: ""})
    rows.append({"measure": f"no map (of {cmp.both_tp} pneumonias both detect)", a: str(cmp.no_maps(a)),
                 b: str(cmp.no_maps(b)), diff_col: ""})
    ct = cmp.common_tp
    for metric, uniform, where, _ in MAP_METRICS:
        if metric not in cmp.map_differences:
            continue
        label = f"share of map {where}" + (f" ({cmp.lung_source} lungs)" if metric == "outside_lung" else "")
        rows.append({"measure": f"{label}, {len(ct)} common TPs", a: f"{A.scores[metric].to_numpy()[ct].mean():.3f}",
                     b: f"{B.scores[metric].to_numpy()[ct].mean():.3f}",
                     diff_col: format_ci(cmp.map_differences[metric], signed=True)})
        rows.append({"measure": "  uniform map, same images (map − uniform)",
                     **{k: f"{m.scores[uniform].to_numpy()[ct].mean():.3f} "
                           f"({format_ci(cmp.vs_uniform[k][metric], signed=True)})" for k, m in cmp.models.items()},
                     diff_col: ""})
    for key, label in (("latency_ms_median", "CPU latency, batch 1 (ms, median)"),
                       ("throughput_img_s", "CPU throughput, batch 16 (img/s)")):
        rows.append({"measure": label, a: f"{cmp.latency[a][key]:.1f}", b: f"{cmp.latency[b][key]:.1f}", diff_col: ""})
    rows.append({"measure": "parameters (millions)", a: f"{A.params / 1e6:.2f}", b: f"{B.params / 1e6:.2f}",
                 diff_col: ""})
    rows.append({"measure": "checkpoint size (MB)", a: f"{A.size_mb:.1f}", b: f"{B.size_mb:.1f}", diff_col: ""})
    return pd.DataFrame(rows).set_index("measure")


def false_negative_table(cmp: ArchComparison, ids: np.ndarray, filed: Mapping[str, str] | None = None
                         ) -> pd.DataFrame:
    """Every false negative of either model: who missed it, both probabilities, and where each map looked (pooled
    onto the common grid; "no map" for an empty one). ``filed``: image id → the failure mode notebook 06 recorded for
    the first model's misses (``assets/false_negatives.csv``), shown as a column when given."""
    a, b = cmp.names
    rows = []
    for k, i in enumerate(cmp.positives):
        missed = [m for m in (a, b) if cmp.models[m].outcome[i] == "FN"]
        if not missed:
            continue
        row: dict[str, Any] = {"id": str(ids[i]), "missed by": " + ".join(missed)}
        for m in (a, b):
            res = cmp.models[m]
            row[f"P {m}"] = float(res.test_probs[i])
            for metric, _, where, _ in MAP_METRICS:
                if metric in cmp.map_differences:
                    row[f"{where} {m}"] = "no map" if res.scores["no_map"].iloc[k] else float(res.scores[metric].iloc[k])
        if filed is not None:
            row[f"06 filed the {a} miss as"] = filed.get(str(ids[i]), "–")
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_record(cmp: ArchComparison, scale: dict[str, Any], verdicts: pd.DataFrame,
                      fns: pd.DataFrame, target_recall: float) -> dict[str, Any]:
    """What ``assets/vit_comparison.json`` holds (``sentences``: the headline and the map verdicts, as printed)."""
    a, b = cmp.names
    ct = cmp.common_tp
    return {
        "what": f"{a} vs {b} on the same test set: paired intervals (patients resampled, thresholds re-chosen on "
                "every validation resample); maps pooled onto one grid and compared on the common true positives, "
                "each against a uniform map",
        "scale": scale,
        "models": {k: {"checkpoint": m.path.name, "weights": m.meta.get("weights"), "threshold": m.threshold,
                       "validation_sensitivity": cmp.val_sensitivity[k], "explanation": m.explanation,
                       "map_grid": list(m.grid), "false_negatives": int((m.outcome == "FN").sum()),
                       "no_map": cmp.no_maps(k), "parameters": m.params, "size_mb": m.size_mb, "latency": cmp.latency[k],
                       **{f"map_{metric}_common_tp": float(m.scores[metric].to_numpy()[ct].mean()) if len(ct) else None
                          for metric in cmp.map_differences}}
                   for k, m in cmp.models.items()},
        "operating_point": cmp.operating,
        "map_differences": {"pair": f"{b} - {a}", "images": len(ct), "both_detected": cmp.both_tp,
                            "grid": list(cmp.grid), "lung_masks": cmp.lung_source, **cmp.map_differences},
        "against_uniform": cmp.vs_uniform,
        "false_negatives": fns.to_dict("records"),
        "hypothesis": verdicts.to_dict("records"),
        "sentences": [headline(cmp, target_recall), *map_sentences(cmp)],
        "machine": cmp.machine,
    }


def headline(cmp: ArchComparison, target_recall: float) -> str:
    """:func:`headline_sentence` of a comparison (the rule named by the target recall)."""
    a, b = cmp.names
    op = cmp.operating
    return headline_sentence(cmp.names, cmp.val_sensitivity, {k: op["models"][k]["specificity"] for k in cmp.models},
                             op["differences"][f"{b} - {a}"]["specificity"], f"the rule recall ≥ {target_recall:g}")
