"""Two architectures on the same data, side by side (notebook 09: ResNet-18 vs ViT-Tiny).

Everything here reuses the series' own pieces — each model's validation-chosen threshold and main explanation as
recorded in its checkpoint, the paired, threshold-re-choosing bootstrap of notebook 04
(:func:`utils.evaluate.metrics.operating_point_bootstrap`), the per-image localisation scores and the
best-baseline verdict of notebook 05 (:func:`utils.explain.choice.verdict_against_baselines`), the outside-lung
fraction of notebook 06 and the CPU timer of notebook 07 — so that a difference between the two columns is a
difference between the models, not between two evaluations.

Maps are compared on the same images: the PNEUMONIA test images both models detect (*common true positives*),
paired by image, patients resampled. The reference project's hypothesis ("Vision Transformers … better capture
global anatomical context and reduce the localized distractions observed in the edge case study") is turned into
three measurable claims (:data:`CLAIMS`) and each gets a verdict from its interval (:func:`hypothesis_verdicts`).
"""
from __future__ import annotations

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
from utils.evaluate import metrics as M
from utils.evaluate.verdicts import difference_verdict
from utils.explain import localisation as L
from utils.explain.choice import verdict_against_baselines
from utils.explain.localisation import TOLERANCE_FRAC
from utils.explain.maps import main_explanation, main_maps
from utils.train.model import load_model, predict_proba, resolve_device

#: The hypothesis, as three claims: (key, what is compared, direction that supports it).
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("fewer_misses", "test sensitivity at each model's validation threshold (ViT - ResNet)", "higher"),
    ("less_outside_lungs", "share of the PNEUMONIA map outside the lungs on common true positives (ViT - ResNet)",
     "lower"),
    ("better_localisation", "near-pointing at the lesion on common true positives (ViT - ResNet; phantoms)", "higher"),
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
    maps: np.ndarray  # main-explanation maps of the PNEUMONIA test images (explaining PNEUMONIA)
    scores: pd.DataFrame  # per PNEUMONIA test image: near, pointing, energy (NaN without masks), outside_lung
    params: int
    size_mb: float


@dataclass
class ArchComparison:
    """What notebook 09 shows; built by :func:`compare_architectures`."""

    models: dict[str, ModelResult]
    positives: np.ndarray  # indices of the PNEUMONIA test images (the rows of every model's maps and scores)
    lung_source: str
    has_masks: bool
    operating: dict[str, Any]  # operating_point_bootstrap of the models (paired)
    map_differences: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> paired CI (b - a)
    baseline_verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> metric -> verdict
    latency: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    common_tp: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))  # rows of `positives`


def n_parameters(model: torch.nn.Module) -> int:
    """Number of parameters."""
    return int(sum(p.numel() for p in model.parameters()))


def compare_architectures(cfg: Config, bundle: DataBundle, paths: dict[str, Path], device: str = "auto",
                          latency_runs: int = 30, progress: bool = True) -> ArchComparison:
    """Measure the checkpoints ``paths`` (name -> shipped checkpoint, two of them: the first is the reference
    ``a``, differences read ``b - a``) on ``bundle``'s test set; see the module docstring."""
    if len(paths) != 2:
        raise ValueError(f"compare two models, got {len(paths)}")
    dev = resolve_device(device)
    val, test, train = bundle["val"], bundle["test"], bundle["train"]
    pos = np.flatnonzero(test.labels == 1)
    has_masks = test.lesion_masks is not None and train.lesion_masks is not None
    lungs = None if test.lung_masks is None else test.lung_masks[pos]
    lung_masks, lung_source = None, "ground truth"
    models: dict[str, ModelResult] = {}
    loaded: dict[str, torch.nn.Module] = {}
    for name, path in paths.items():
        model, meta = load_model(path, dev)
        loaded[name] = model
        threshold, _ = operating_threshold(meta, path)
        p_val = predict_proba(model, val.images, meta, device=dev)
        p_test = predict_proba(model, test.images, meta, device=dev)
        spec = main_explanation(path, model)  # the record as it is now, checked against the model
        maps, _ = main_maps(model, path, test.images[pos])
        if lung_masks is None:
            _, lung_masks, lung_source = L.outside_lung_fractions(maps, lungs, test.images[pos], progress=progress)
        outside, _, _ = L.outside_lung_fractions(maps, lung_masks)
        if has_masks:
            assert test.lesion_masks is not None
            scores = L.per_image_scores(maps, test.lesion_masks[pos], TOLERANCE_FRAC)
        else:
            scores = pd.DataFrame({"pointing": np.nan, "near": np.nan, "energy": np.nan}, index=range(len(pos)))
        scores["outside_lung"] = outside
        models[name] = ModelResult(name, Path(path), meta, threshold, spec, p_val, p_test,
                                   M.outcome_groups(test.labels, p_test, threshold), maps, scores,
                                   n_parameters(model), file_size_mb(path))
    a, b = list(models)
    order = [b, a]  # operating_point_bootstrap reads differences as first - second: "b - a"
    operating = M.operating_point_bootstrap(val.labels, {k: models[k].val_probs for k in order}, test.labels,
                                            {k: models[k].test_probs for k in order}, cfg["target_recall"],
                                            val.patient_ids, test.patient_ids, n_boot=int(cfg["n_bootstrap"]),
                                            seed=cfg["seed"])
    out = ArchComparison(models, pos, lung_source, has_masks, operating)
    tp_a, tp_b = (models[k].outcome[pos] == "TP" for k in (a, b))
    out.common_tp = np.flatnonzero(tp_a & tp_b)
    groups = test.patient_ids[pos][out.common_tp]
    metrics = ("near", "energy", "outside_lung") if has_masks else ("outside_lung",)
    for metric in metrics:
        out.map_differences[metric] = M.paired_difference_ci(
            models[b].scores[metric].to_numpy()[out.common_tp], models[a].scores[metric].to_numpy()[out.common_tp],
            groups, n_boot=int(cfg["n_bootstrap"]), seed=cfg["seed"])
    if has_masks:
        assert train.lesion_masks is not None and test.lesion_masks is not None
        priors = L.prior_maps(train.lesion_masks[train.labels == 1], train.lung_masks)
        for name, res in models.items():
            own_tp = np.flatnonzero(res.outcome[pos] == "TP")
            out.baseline_verdicts[name] = {
                m: verdict_against_baselines(res.maps[own_tp], test.lesion_masks[pos][own_tp],
                                             test.patient_ids[pos][own_tp], priors, m, n_boot=int(cfg["n_bootstrap"]),
                                             seed=cfg["seed"]) for m in ("near", "energy")}
    meta_a = models[a].meta
    sample = test.images[: min(8, len(test))]
    out.latency = benchmark_cpu({k: torch_forward(loaded[k].cpu()) for k in models}, sample, meta_a,
                                runs=latency_runs, batch=16, threads=min(2, torch.get_num_threads()))
    out.machine = machine_info(min(2, torch.get_num_threads()))
    for k in models:
        loaded[k].to(dev)
    return out


def comparison_table(cmp: ArchComparison) -> pd.DataFrame:
    """The one table of notebook 09: rows = measurements, columns = the two models and ``b - a`` with its interval."""
    a, b = list(cmp.models)
    A, B = cmp.models[a], cmp.models[b]
    op = cmp.operating
    rows: list[dict[str, Any]] = []
    for metric in ("roc_auc", "sensitivity", "specificity"):
        d = op["differences"][f"{b} - {a}"][metric]
        rows.append({"measure": f"{metric} (test, 95% CI)", a: M.format_ci(op["models"][a][metric]),
                     b: M.format_ci(op["models"][b][metric]), f"{b} - {a}": M.format_ci(d, signed=True)})
    rows.append({"measure": "threshold (validation)", a: f"{A.threshold:.4f}", b: f"{B.threshold:.4f}",
                 f"{b} - {a}": ""})
    n_pos = len(cmp.positives)
    rows.append({"measure": f"false negatives (of {n_pos} pneumonias)", a: str(int((A.outcome == "FN").sum())),
                 b: str(int((B.outcome == "FN").sum())), f"{b} - {a}": ""})
    rows.append({"measure": "explanation", a: A.explanation["name"], b: B.explanation["name"], f"{b} - {a}": ""})
    for metric, label in (("near", "near-pointing"), ("energy", "energy in lesion"),
                          ("outside_lung", f"map mass outside lungs ({cmp.lung_source})")):
        if metric not in cmp.map_differences:
            continue
        d = cmp.map_differences[metric]
        ct = cmp.common_tp
        rows.append({"measure": f"{label}, {len(ct)} common TPs", a: f"{A.scores[metric].to_numpy()[ct].mean():.3f}",
                     b: f"{B.scores[metric].to_numpy()[ct].mean():.3f}",
                     f"{b} - {a}": M.format_ci(d, signed=True)})
    for metric in ("near", "energy"):
        if not cmp.baseline_verdicts:
            break
        va, vb = cmp.baseline_verdicts[a][metric], cmp.baseline_verdicts[b][metric]
        rows.append({"measure": f"{metric}: map - best image-blind baseline (own TPs)",
                     **{k: f"{M.format_ci(v['difference'], signed=True)} vs {v['best_baseline']}"
                        for k, v in ((a, va), (b, vb))},
                     f"{b} - {a}": ""})
    for key, label in (("latency_ms_median", "CPU latency, batch 1 (ms, median)"),
                       ("throughput_img_s", "CPU throughput, batch 16 (img/s)")):
        rows.append({"measure": label, a: f"{cmp.latency[a][key]:.1f}", b: f"{cmp.latency[b][key]:.1f}",
                     f"{b} - {a}": ""})
    rows.append({"measure": "parameters (M)", a: f"{A.params / 1e6:.2f}", b: f"{B.params / 1e6:.2f}", f"{b} - {a}": ""})
    rows.append({"measure": "checkpoint size (MB)", a: f"{A.size_mb:.1f}", b: f"{B.size_mb:.1f}", f"{b} - {a}": ""})
    return pd.DataFrame(rows).set_index("measure")


def hypothesis_verdicts(cmp: ArchComparison) -> pd.DataFrame:
    """Each claim of :data:`CLAIMS`: the measured difference ``b - a`` with its interval and a verdict —
    ``supported`` (interval entirely on the claimed side of 0), ``contradicted`` (entirely on the other side) or
    ``not shown`` (the interval includes 0: this run cannot tell) — or ``not measurable`` (no lesion masks)."""
    a, b = list(cmp.models)
    diffs = {"fewer_misses": cmp.operating["differences"][f"{b} - {a}"]["sensitivity"],
             "less_outside_lungs": cmp.map_differences.get("outside_lung"),
             "better_localisation": cmp.map_differences.get("near")}
    rows = []
    for key, what, direction in CLAIMS:
        d = diffs[key]
        if d is None or not np.isfinite(d.get("value", np.nan)):
            rows.append({"claim": key, "compared": what, "difference": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                         "verdict": "not measurable"})
            continue
        side = difference_verdict(d)  # "above" / "below" zero, or "inconclusive" (the interval includes 0)
        good, bad = ("above", "below") if direction == "higher" else ("below", "above")
        rows.append({"claim": key, "compared": what, "difference": d["value"], "ci_low": d["ci_low"],
                     "ci_high": d["ci_high"], "verdict": "supported" if side == good else "contradicted" if side == bad
                     else "not shown"})
    return pd.DataFrame(rows)


def false_negative_table(cmp: ArchComparison, ids: np.ndarray) -> pd.DataFrame:
    """Every false negative of either model: who missed it, both probabilities, and where each map looked."""
    a, b = list(cmp.models)
    rows = []
    for k, i in enumerate(cmp.positives):
        missed = [m for m in (a, b) if cmp.models[m].outcome[i] == "FN"]
        if not missed:
            continue
        row: dict[str, Any] = {"id": ids[i], "missed_by": " + ".join(missed)}
        for m in (a, b):
            res = cmp.models[m]
            row[f"p {m}"] = float(res.test_probs[i])
            row[f"outside lungs {m}"] = float(res.scores["outside_lung"].iloc[k])
            if cmp.has_masks:
                row[f"near {m}"] = float(res.scores["near"].iloc[k])
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_record(cmp: ArchComparison, scale: dict[str, Any], verdicts: pd.DataFrame,
                      fns: pd.DataFrame) -> dict[str, Any]:
    """What ``assets/vit_comparison.json`` holds."""
    a, b = list(cmp.models)
    return {
        "what": f"{a} vs {b} on the same test set: paired intervals (patients resampled, thresholds re-chosen on "
                "every validation resample); maps compared on the common true positives",
        "scale": scale,
        "models": {k: {"checkpoint": m.path.name, "weights": m.meta.get("weights"), "threshold": m.threshold,
                       "explanation": m.explanation, "false_negatives": int((m.outcome == "FN").sum()),
                       "parameters": m.params, "size_mb": m.size_mb, "latency": cmp.latency[k],
                       **{f"map_{c}_common_tp": float(m.scores[c].to_numpy()[cmp.common_tp].mean())
                          if len(cmp.common_tp) else None for c in ("near", "energy", "outside_lung")}}
                   for k, m in cmp.models.items()},
        "operating_point": cmp.operating,
        "map_differences": {"pair": f"{b} - {a}", "images": len(cmp.common_tp), "lung_masks": cmp.lung_source,
                            **cmp.map_differences},
        "against_best_baseline": cmp.baseline_verdicts,
        "false_negatives": fns.to_dict("records"),
        "hypothesis": verdicts.to_dict("records"),
        "machine": cmp.machine,
    }
