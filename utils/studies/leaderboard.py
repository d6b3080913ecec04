"""Notebook 10's leaderboard: pixel-attribution methods and the chosen Grad-CAM, measured by one harness.

The rows are saliency, SmoothGrad, Integrated Gradients with three baselines (black, blurred, the training mean
image), occlusion (:mod:`utils.explain.attribution`, from Captum) and the Grad-CAM notebook 05 chose
(:func:`utils.explain.maps.main_explanation`). Every row gets the same checks, each against a null that could win:

* **localisation** (phantoms: lesion masks) — near-pointing and energy inside the lesion on test true positives
  against the **best image-blind prior** (mean-lesion, lung-field, centre, random), paired patient bootstrap
  (:func:`utils.explain.choice.verdict_against_baselines`, the rule of notebook 05);
* **outside-lung mass** against a uniform map (ground-truth lungs on phantoms, estimated lungs on real films);
* **randomisation** — the cascading check of Adebayo et al. with its reference level
  (:mod:`utils.explain.checks`);
* **ROAD** in both orders against the same map moved elsewhere (:func:`utils.explain.road.road_test`);
* **the marker test of notebook 08** — map mass on a burned-in marker, confounded model − control model on the same
  marked images, against the uniform map's share of the marker as the margin; only where the confounded model of
  notebook 08 is on disk and current (it takes two training runs to build);
* **stability** (:func:`utils.explain.attribution.map_stability`) and **cost** (ms per image on this machine).

Method parameters are chosen on **validation** true positives (:func:`utils.explain.attribution.choose_parameters`),
never on the scored test images; without lesion masks (real data) nothing can choose them and each method keeps the
cheapest setting of its grid — said so in the record. :func:`leaderboard_sentences` turns the record into the
computed sentences of the notebook; :func:`leaderboard_panels` into the figure's panels
(:func:`utils.viz.attribution.plot_leaderboard`).
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from utils.artifacts import checkpoint_state, operating_threshold
from utils.config import Config
from utils.data.bundle import DataBundle, Split
from utils.errors import UserError
from utils.evaluate.metrics import format_ci, paired_difference_ci
from utils.evaluate.verdicts import (
    baseline_verdict,
    difference_verdict,
    format_difference,
    sanity_sentence,
    sanity_step_verdict,
)
from utils.explain import attribution as attr
from utils.explain import checks
from utils.explain import localisation as loc
from utils.explain import road as road_check
from utils.explain.choice import verdict_against_baselines
from utils.explain.maps import main_explanation
from utils.fileio import write_json
from utils.machine import cpu_count
from utils.stages import ensure_explanation
from utils.train.model import build_model, load_model, predict_proba, preprocess, resolve_device

__all__ = [
    "GRADCAM_ROW",
    "ROWS",
    "Knobs",
    "Leaderboard",
    "leaderboard_panels",
    "leaderboard_sentences",
    "leaderboard_table",
    "marker_row",
    "run_leaderboard",
    "sharpness",
]

#: The leaderboard's rows: key → label. The first six are groups of :func:`utils.explain.attribution.parameter_grid`.
ROWS: dict[str, str] = {
    "saliency": "Saliency",
    "smoothgrad": "SmoothGrad",
    "integrated_gradients (black)": "IG, black baseline",
    "integrated_gradients (blurred)": "IG, blurred baseline",
    "integrated_gradients (mean)": "IG, mean-image baseline",
    "occlusion": "Occlusion",
    "gradcam": "Grad-CAM (05's choice)",
}
GRADCAM_ROW = "gradcam"
#: Share of a map's pixels whose mass :func:`sharpness` reads (a uniform map holds exactly this share there).
SHARP_TOP = 0.05


@dataclass(frozen=True)
class Knobs:
    """What the leaderboard costs: images per check and the validation grid (notebook 10's parameters cell)."""

    n_images: int = 16  # test true positives scored (localisation, cost; the other checks use the first of them)
    n_val: int = 12  # validation true positives the parameters are chosen on
    n_sanity: int = 4  # images of the randomisation check (every method's maps, 6 steps + the reference)
    n_road: int = 12  # images of ROAD (both orders, map and null)
    n_stability: int = 8  # images of the stability check
    n_marker: int = 12  # marked test images of the marker test (when the confounded model exists)
    noises: tuple[float, ...] = (0.1, 0.2)  # SmoothGrad noise (fraction of the grey range)
    samples: tuple[int, ...] = (8,)  # SmoothGrad samples
    steps: tuple[int, ...] = (8, 16)  # IG steps
    window_fractions: tuple[int, ...] = (4, 8)  # occlusion windows: image side / f
    stability_level: float = 0.02  # σ of the grey noise of the stability check
    road_fractions: tuple[float, ...] = road_check.ROAD_FRACTIONS

    def check(self) -> Knobs:
        """Themselves, after a one-line error for a count < 1 or a level outside (0, 1)."""
        for name in ("n_images", "n_val", "n_sanity", "n_road", "n_stability", "n_marker"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise UserError(f"{name} must be a whole number >= 1, got {v!r}")
        if not 0 < self.stability_level < 1:
            raise UserError(f"stability_level must lie in (0, 1), got {self.stability_level!r}")
        return self


@dataclass
class Leaderboard:
    """What notebook 10 shows (the JSON is ``record``)."""

    record: dict[str, Any]
    table: pd.DataFrame
    sentences: list[str]
    specs: dict[str, dict[str, Any]]
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # row -> maps of the scored test images
    images: np.ndarray | None = None  # those images (uint8)
    lesion_masks: np.ndarray | None = None
    val_table: pd.DataFrame | None = None


# ------------------------------------------------------------------------------------------ small measures
def sharpness(maps: np.ndarray, top: float = SHARP_TOP) -> np.ndarray:
    """Per map: the share of its mass in its top ``top`` of pixels (a uniform map scores ``top``, a single hot pixel
    1). A property of the picture alone — it reads neither the model nor the lesion; NaN for an all-zero map."""
    m = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    k = max(1, round(top * m.shape[1]))
    total = m.sum(axis=1)
    head = -np.sort(-m, axis=1)[:, :k].sum(axis=1)
    return np.where(total > 0, head / np.where(total > 0, total, 1.0), np.nan)


def _ci(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: d.get(k) for k in ("value", "ci_low", "ci_high", "n")}


def _outside_lung(maps: np.ndarray, lung_masks: np.ndarray, groups: np.ndarray, n_boot: int, seed: int
                  ) -> dict[str, Any]:
    """Mass outside the lungs vs a uniform map (1 − lung area) on the same images, paired; empty maps left out."""
    frac = np.array([loc.outside_fraction(c, m, skip_empty=True) for c, m in zip(maps, lung_masks)])
    chance = 1.0 - np.asarray(lung_masks, bool).reshape(len(lung_masks), -1).mean(axis=1)
    ok = np.isfinite(frac)
    diff = paired_difference_ci(frac[ok], chance[ok], groups[ok], n_boot=n_boot, seed=seed)
    v = difference_verdict(diff)
    verdict = {"below": "inside the lungs more than a uniform map", "above": "outside the lungs more than a uniform "
               "map", "inconclusive": "no different from a uniform map", "not measured": "no map"}[v if v in (
                   "below", "above", "inconclusive", "not measured") else "inconclusive"]
    return {"value": float(frac[ok].mean()) if ok.any() else float("nan"),
            "uniform": float(chance[ok].mean()) if ok.any() else float("nan"),
            "difference": _ci(diff), "verdict": verdict, "n": int(ok.sum()), "n_no_map": int((~ok).sum())}


# ------------------------------------------------------------------------------------------ randomisation
def randomisation_row(model: nn.Module, x: torch.Tensor, cam_fn: Any, groups: np.ndarray, seed: int = 0,
                      n_boot: int = 1000, after: str = "layer4") -> dict[str, Any]:
    """The cascading randomisation check of one method, judged against a **reference level** measured in the same
    run: |ρ| between the maps of two independently initialised models of the same architecture on the same images.
    From ``after`` down to the stem, each step's |ρ| (trained vs randomised maps) minus the reference is bootstrapped
    over patients; the method is "at the reference" when no step stays above it
    (:func:`utils.evaluate.verdicts.sanity_step_verdict`)."""
    table = checks.cascading_randomisation(model, x, 1, "layer4", cam_fn=cam_fn, seed=seed)
    fresh = []
    for k in (1, 2):
        with torch.random.fork_rng(devices=[]):
            other, _ = build_model("none", seed=seed + 7919 * k)
        fresh.append(cam_fn(other.to(next(model.parameters()).device).eval(), x, "layer4", 1))
    reference = np.abs(np.nan_to_num(checks.spearman_maps(fresh[0], fresh[1]), nan=0.0))
    names = list(table["randomised"])
    steps = []
    for _, r in table.iloc[names.index(after):].iterrows():
        sim = np.abs(np.asarray(r["rho"], dtype=np.float64))
        ok = np.isfinite(sim)
        diff = paired_difference_ci(sim[ok], reference[ok], groups[ok], n_boot=n_boot, seed=seed)
        steps.append({"blocks": r["blocks"], "similarity": {"value": float(sim[ok].mean()) if ok.any() else np.nan,
                                                            **_boot_mean(sim[ok], groups[ok], n_boot, seed)},
                      "reference": {"value": float(reference[ok].mean()) if ok.any() else np.nan,
                                    **_boot_mean(reference[ok], groups[ok], n_boot, seed)},
                      "difference": _ci(diff), "verdict": sanity_step_verdict(diff)})
    verdicts = [s["verdict"] for s in steps]
    verdict = "no map" if all(v == "no map" for v in verdicts) else \
        "above the reference" if "above the reference" in verdicts else "at the reference"
    worst = max(steps, key=lambda s: float(np.nan_to_num(s["difference"]["value"], nan=-np.inf)))
    return {"verdict": verdict, "passes": verdict == "at the reference", "steps": steps,
            "worst_difference": worst["difference"], "worst_blocks": worst["blocks"],
            "summary": f"with {worst['blocks']} random, |ρ| {format_ci(worst['similarity'])} vs reference "
                       f"{format_ci(worst['reference'])}",
            "sentence": sanity_sentence(steps), "reference": "two independently initialised models"}


def _boot_mean(values: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    d = paired_difference_ci(values, np.zeros_like(values), groups, n_boot=n_boot, seed=seed)
    return {"ci_low": d["ci_low"], "ci_high": d["ci_high"]}


# ------------------------------------------------------------------------------------------ the marker test
def marker_row(maps_confounded: np.ndarray, maps_control: np.ndarray, regions: np.ndarray, groups: np.ndarray,
               n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """One method's marker test: map mass on the marker region, confounded model − control model on the same
    marked images (paired patient bootstrap), judged with the **uniform map's share of the marker** as the margin
    (a difference smaller than what a map spread evenly puts there would not tell a reader anything). Also the share
    of maps whose peak lies within 5 % of the side of the marker. Verdict: ``"exposes the shortcut"``,
    ``"detectable, below the uniform share"``, ``"does not expose it"`` or ``"no map"``."""
    regions = np.asarray(regions, bool)
    if not regions.reshape(len(regions), -1).any(axis=1).all():
        raise ValueError("every image of the marker test must carry a marker")
    mass = {k: np.array([loc.energy_inside(c, r) for c, r in zip(m, regions)])
            for k, m in (("confounded", maps_confounded), ("control", maps_control))}
    peak = {k: np.array([float(loc.near_pointing(c, r)) for c, r in zip(m, regions)])
            for k, m in (("confounded", maps_confounded), ("control", maps_control))}
    empty = loc.empty_maps(np.asarray(maps_confounded)) | loc.empty_maps(np.asarray(maps_control))
    keep = ~empty
    uniform = float(regions.reshape(len(regions), -1).mean())
    diff = paired_difference_ci(mass["confounded"][keep], mass["control"][keep], np.asarray(groups)[keep],
                                n_boot=n_boot, seed=seed)
    v = difference_verdict(diff, margin=uniform)
    verdict = {"above": "exposes the shortcut", "within": "detectable, below the uniform share",
               "not measured": "no map"}.get(v, "does not expose it")
    return {"verdict": verdict, "difference": _ci(diff), "margin": uniform,
            "confounded": float(mass["confounded"][keep].mean()) if keep.any() else float("nan"),
            "control": float(mass["control"][keep].mean()) if keep.any() else float("nan"),
            "peak_on_marker_confounded": float(peak["confounded"][keep].mean()) if keep.any() else float("nan"),
            "peak_on_marker_control": float(peak["control"][keep].mean()) if keep.any() else float("nan"),
            "n": int(keep.sum()), "n_no_map": int(empty.sum())}


def _confounded_world(cfg: Config, bundle: DataBundle) -> tuple[Any, DataBundle, Split, np.ndarray]:
    """Notebook 08's confounded model path, its training world and the decorrelated marked test with its regions."""
    from utils.data.confounder import MarkerSpec, confounded_bundle, confounded_split
    from utils.studies.shortcut import TAGS, TEST_MODES, TESTS

    spec = MarkerSpec()
    world = confounded_bundle(bundle, "correlated", cfg["seed"], spec)
    k = TESTS.index("decorrelated")
    test, regions, _ = confounded_split(bundle["test"], TEST_MODES["decorrelated"], cfg["seed"] + 100 + k, spec)
    return cfg.path("model", TAGS["confounded"]), world, test, regions


# ------------------------------------------------------------------------------------------ running
def _rows(methods: Sequence[str] | None) -> list[str]:
    rows = list(ROWS) if methods is None else list(methods)
    unknown = [m for m in rows if m not in ROWS]
    if unknown:
        raise UserError(f"unknown leaderboard method(s) {', '.join(map(repr, unknown))}: choose from "
                        f"{', '.join(ROWS)}")
    if not rows:
        raise UserError(f"the leaderboard needs at least one method: choose from {', '.join(ROWS)}")
    return rows


def _pick(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    return np.sort(rng.choice(pool, min(n, len(pool)), replace=False)).astype(int) if len(pool) else pool[:0]


def _scale(cfg: Config, bundle: DataBundle, device: torch.device) -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"data": bundle.source, "describe": bundle.describe(), "image_size": int(bundle.image_size),
            "profile": cfg.profile, "knobs": cfg.knobs, "device": device.type, "torch_threads": torch.get_num_threads(),
            "cpu_cores": cpu_count(), "load_average_1min": float(load[0])}


def run_leaderboard(cfg: Config, bundle: DataBundle, methods: Sequence[str] | None = None, knobs: Knobs = Knobs(),
                    device: str = "auto", progress: bool = True, write: bool = True) -> Leaderboard:
    """Measure every row of :data:`ROWS` (or ``methods``) with every check (see the module docstring) and, with
    ``write``, save ``assets/attribution_leaderboard.json``. The shipped model and its recorded Grad-CAM come through
    :func:`utils.stages.ensure_explanation` (rebuilt when missing, as every notebook does)."""
    rows = _rows(methods)
    knobs = knobs.check()
    dev = resolve_device(device)
    seed, n_boot = int(cfg["seed"]), int(cfg["n_bootstrap"])
    path = ensure_explanation(cfg, bundle, device, progress)
    model, meta = load_model(path, dev)
    threshold, rule = operating_threshold(meta, path)
    meta = {**meta, "threshold": threshold}
    train, val, test = bundle["train"], bundle["val"], bundle["test"]
    has_masks = all(s.lesion_masks is not None for s in (train, val, test))
    size = int(bundle.image_size)
    mean_image = attr.dataset_mean_image(train.images)
    grid = attr.parameter_grid(size, with_mean=True, noises=knobs.noises, samples=knobs.samples, steps=knobs.steps,
                               window_fractions=knobs.window_fractions)
    gradcam = {**main_explanation(path, model)}
    gradcam["name"] = f"{gradcam['name']} (05's choice)"
    val_table = None
    priors: dict[str, np.ndarray] = {}
    if has_masks:
        assert train.lesion_masks is not None and val.lesion_masks is not None
        priors = loc.prior_maps(train.lesion_masks[train.labels == 1], train.lung_masks)
        wanted = {g: grid[g] for g in rows if g != GRADCAM_ROW}
        chosen, val_table = attr.choose_parameters(model, val.images, val.lesion_masks, val.labels, meta, wanted,
                                                   mean_image, priors=priors, max_images=knobs.n_val,
                                                   progress=progress)
        chosen_on = f"validation true positives (first {val_table.attrs['n_true_positives']}), the series' rule"
    else:
        chosen = {g: dict(grid[g][0]) for g in rows if g != GRADCAM_ROW}
        chosen_on = "nothing: no lesion masks on this data, so each method keeps the cheapest setting of its grid"
    specs = {g: (gradcam if g == GRADCAM_ROW else chosen[g]) for g in rows}

    # the scored images: test true positives (seeded draw); real data with too few: the pneumonias the model rates
    p_test = predict_proba(model, test.images, meta, device=dev)
    rng = np.random.default_rng(seed)
    tp = np.flatnonzero((test.labels == 1) & (p_test >= threshold))
    if has_masks:
        assert test.lesion_masks is not None
        tp = tp[test.lesion_masks[tp].reshape(len(tp), -1).any(axis=1)]
    images_are = "test true positives"
    if len(tp) < 2:
        pos = np.flatnonzero(test.labels == 1)
        tp, images_are = pos[np.argsort(-p_test[pos], kind="stable")], "test PNEUMONIA images (too few detected)"
    if len(tp) < 2:
        raise UserError("the leaderboard needs at least two PNEUMONIA test images: this test split has "
                        f"{len(tp)}")
    idx = _pick(rng, tp, knobs.n_images)
    x = preprocess(torch.from_numpy(test.images[idx]), meta["mean"], meta["std"])
    groups = np.asarray(test.patient_ids[idx])
    spec_list = [specs[g] for g in rows]
    maps_by_name, _, seconds = attr.method_maps(model, x, spec_list, 1, meta, mean_image, progress=progress)
    maps = {g: maps_by_name[specs[g]["name"]] for g in rows}
    out: dict[str, dict[str, Any]] = {}
    for g in rows:
        s = specs[g]
        out[g] = {"row": g, "label": ROWS[g], "spec": s, "name": s["name"],
                  "sign": s["params"]["sign"] if g != GRADCAM_ROW else "positive (ReLU)",
                  "cost_ms": 1000.0 * seconds[s["name"]], "sharpness": float(np.nanmean(sharpness(maps[g]))),
                  "n_no_map": int(loc.empty_maps(maps[g]).sum())}

    # localisation against the priors (masks only)
    if has_masks:
        assert test.lesion_masks is not None
        for g in rows:
            out[g]["localisation"] = {}
            for metric in ("near", "energy"):
                v = verdict_against_baselines(maps[g], test.lesion_masks[idx], groups, priors, metric, n_boot, seed)
                out[g]["localisation"][metric] = {
                    "map": v["map"], "best_baseline": v["best_baseline"], "best_baseline_value": v["best_baseline_value"],
                    "baselines": v["baselines"], "difference": _ci(v["difference"]),
                    "verdict": baseline_verdict(v["difference"]), "n": v["n"]}
    # outside-lung mass (ground-truth lungs on phantoms, estimated lungs on real films)
    lungs = test.lung_masks[idx] if test.lung_masks is not None else loc.estimate_lung_fields(test.images[idx])
    lung_source = "ground truth" if test.lung_masks is not None else "estimated"
    for g in rows:
        out[g]["outside_lung"] = {**_outside_lung(maps[g], lungs, groups, n_boot, seed), "lung_masks": lung_source}

    # randomisation with its reference level
    n_s = min(knobs.n_sanity, len(idx))
    for g in rows:
        cam_fn = attr.cam_fn_for(specs[g], meta, mean_image)
        out[g]["randomisation"] = randomisation_row(model, x[:n_s], cam_fn, groups[:n_s], seed, n_boot)
    # ROAD, both orders, against the same map moved elsewhere
    n_r = min(knobs.n_road, len(idx))
    for g in rows:
        r = road_check.road_test(model, x[:n_r], maps[g][:n_r], groups[:n_r], 1, knobs.road_fractions, "shift",
                                 n_boot, seed)
        out[g]["road"] = {"verdict": r["verdict"], "own_drop": _ci(r["own_drop"]), "difference": _ci(r["difference"]),
                          "n": r["n"], "n_no_map": r["n_no_map"], "null": road_check.NULLS["shift"],
                          "sentence": r["sentence"]}
    # stability under a small grey noise that leaves the decision unchanged
    n_t = min(knobs.n_stability, len(idx))
    for g in rows:
        st = attr.map_stability(model, x[:n_t], attr.cam_fn_for(specs[g], meta, mean_image), meta, "noise",
                                knobs.stability_level, 1, seed=seed, maps=maps[g][:n_t])
        out[g]["stability"] = {k: st[k] for k in ("kind", "level", "n", "n_flipped", "n_kept", "median_rho", "q25",
                                                  "q75")}
    # the marker test of notebook 08 (only with the confounded model on disk and current)
    marker = _marker_test(cfg, bundle, model, meta, rows, specs, mean_image, knobs, dev, rng, n_boot, seed)
    for g in rows:
        out[g]["marker"] = marker["rows"].get(g)

    record = {
        "what": "pixel attribution vs the chosen Grad-CAM, every method with every check of the series",
        "scale": _scale(cfg, bundle, dev), "threshold": threshold, "threshold_rule": rule,
        "masks": has_masks, "parameters_chosen_on": chosen_on, "images": images_are, "n_images": len(idx),
        "n_sanity": n_s, "n_road": n_r, "n_stability": n_t, "n_bootstrap": n_boot, "knobs": asdict(knobs),
        "lung_masks": lung_source, "marker_test": {k: v for k, v in marker.items() if k != "rows"},
        "not_measurable": [] if has_masks else ["localisation (near-pointing, energy in the lesion, the priors): no "
                                                "lesion masks", "parameter choice on validation: no lesion masks"],
        "model_saw_masks": False, "rows": [out[g] for g in rows],
    }
    if write:
        write_json(cfg.path("attribution_leaderboard"), record)
    lb = Leaderboard(record, leaderboard_table(record), leaderboard_sentences(record), specs, maps,
                     test.images[idx], None if test.lesion_masks is None else test.lesion_masks[idx], val_table)
    return lb


def _marker_test(cfg: Config, bundle: DataBundle, model: nn.Module, meta: Mapping[str, Any], rows: Sequence[str],
                 specs: Mapping[str, Mapping[str, Any]], mean_image: np.ndarray, knobs: Knobs, dev: torch.device,
                 rng: np.random.Generator, n_boot: int, seed: int) -> dict[str, Any]:
    path, world, marked, regions = _confounded_world(cfg, bundle)
    reason = checkpoint_state(path, world, need=("threshold_rule",))
    if reason:
        rel = path.relative_to(cfg.root) if path.is_relative_to(cfg.root) else path
        return {"measured": False, "rows": {},
                "reason": f"notebook 08's confounded model ({rel}) is not usable here: {reason}; run "
                          "notebooks/08_shortcut_learning.ipynb first (two training runs), then this notebook again"}
    confounded, cmeta = load_model(path, dev)
    has = regions.reshape(len(regions), -1).any(axis=1)
    pick = np.r_[_pick(rng, np.flatnonzero(has & (marked.labels == 1)), (knobs.n_marker + 1) // 2),
                 _pick(rng, np.flatnonzero(has & (marked.labels == 0)), knobs.n_marker // 2)].astype(int)
    x = preprocess(torch.from_numpy(marked.images[pick]), meta["mean"], meta["std"])
    if list(cmeta["mean"]) != list(meta["mean"]) or list(cmeta["std"]) != list(meta["std"]):
        raise UserError(f"{path.name} normalises its inputs differently from the shipped model: rebuild it with "
                        "notebook 08")
    started = time.perf_counter()
    spec_list = [specs[g] for g in rows]
    by_model = {k: attr.method_maps(m, x, spec_list, 1, meta, mean_image)[0]
                for k, m in (("confounded", confounded), ("control", model))}
    out = {g: marker_row(by_model["confounded"][specs[g]["name"]], by_model["control"][specs[g]["name"]],
                         regions[pick], marked.patient_ids[pick], n_boot, seed) for g in rows}
    return {"measured": True, "rows": out, "n_images": len(pick), "images": "decorrelated marked test images "
            "(notebook 08), both classes, each explained for PNEUMONIA", "uniform_share": float(regions[pick].mean()),
            "seconds": time.perf_counter() - started}


# ------------------------------------------------------------------------------------------ reading the record
def leaderboard_table(record: Mapping[str, Any]) -> pd.DataFrame:
    """One row per method: cost, sharpness and every verdict with its number (interval as text)."""
    out = []
    for r in record["rows"]:
        locs = r.get("localisation") or {}
        mark = r.get("marker")
        near = locs.get("near")
        out.append({
            "method": r["label"], "parameters": r["name"], "ms / image": r["cost_ms"],
            "near-pointing": near["map"] if near else np.nan,
            "vs best prior (near)": (f"{near['verdict']} {format_difference(near['difference'])}" if near
                                     else "not measurable"),
            "vs best prior (energy)": (f"{locs['energy']['verdict']} {format_difference(locs['energy']['difference'])}"
                                       if locs.get("energy") else "not measurable"),
            "outside lungs": r["outside_lung"]["value"],
            "randomisation": r["randomisation"]["verdict"],
            "ROAD": r["road"]["verdict"],
            "marker (08)": mark["verdict"] if mark else "not measured",
            "stability ρ": r["stability"]["median_rho"],
            "sharpness": r["sharpness"],
        })
    return pd.DataFrame(out)


def _names(rows: Sequence[Mapping[str, Any]]) -> str:
    labels = [str(r["label"]) for r in rows]
    if not labels:
        return "none"
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def _ms(v: float) -> str:
    return f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms"


def leaderboard_sentences(record: Mapping[str, Any]) -> list[str]:
    """The lessons of the leaderboard as sentences computed from ``record`` (:func:`run_leaderboard`'s JSON): which
    methods pass the randomisation check, beat the prior, are faithful by ROAD, expose the shortcut, what each costs,
    and why a sharper-looking map is not thereby better. Every number comes from the record."""
    rows = list(record["rows"])
    out = []
    # randomisation
    passed = [r for r in rows if r["randomisation"]["verdict"] == "at the reference"]
    above = [r for r in rows if r["randomisation"]["verdict"] == "above the reference"]
    nomap = [r for r in rows if r["randomisation"]["verdict"] not in ("at the reference", "above the reference")]
    text = (f"Randomisation check ({record['n_sanity']} images, every block re-initialised from the top down to the "
            f"stem, judged against the reference level of unrelated random models): at the reference level — the map "
            f"depends on the trained weights — {_names(passed)}")
    if above:
        worst = "; ".join(f"{r['label']}: {r['randomisation']['summary']}" for r in above)
        text += f"; above it — part of the map survives random weights, so it reflects the image — {_names(above)} " \
                f"({worst})"
    if nomap:
        text += f"; not scored (no map): {_names(nomap)}"
    out.append(text + ".")
    # localisation
    if record["masks"]:
        for metric, words in (("near", "near-pointing"), ("energy", "energy inside the lesion")):
            by = {v: [r for r in rows if r["localisation"][metric]["verdict"] == v] for v in ("beats", "ties", "worse",
                                                                                            "no map")}
            first = rows[0]["localisation"][metric]
            parts = []
            for v, word in (("beats", "beat"), ("ties", "tie with"), ("worse", "fall below")):
                if by[v]:
                    nums = ", ".join(f"{r['label']} {r['localisation'][metric]['map']:.3f} "
                                     f"({format_difference(r['localisation'][metric]['difference'])})" for r in by[v])
                    parts.append(f"{word} it: {nums}")
            out.append(f"Against the best image-blind prior on {words} ({first['best_baseline']}, "
                       f"{first['best_baseline_value']:.3f}; {first['n']} {record['images']}, map − prior with a "
                       f"paired patient-bootstrap 95% CI): " + "; ".join(parts) + ".")
    else:
        out.append("Localisation cannot be measured on this data: there are no lesion masks, so near-pointing, the "
                   "energy inside the lesion and the comparison with the image-blind priors do not exist here — and "
                   "nothing could choose the methods' parameters on validation either (each keeps the cheapest setting "
                   "of its grid). What can be measured is below: randomisation, ROAD, the mass outside an estimated "
                   "lung field, stability and cost.")
    # ROAD
    verdicts = {v: [r for r in rows if r["road"]["verdict"] == v] for v in ("faithful", "not shown", "not faithful",
                                                                           "no map")}
    parts = [f"faithful — removing the map's top pixels lowers the logit margin and beats {rows[0]['road']['null']} — "
             f"{_names(verdicts['faithful'])}"]
    for v in ("not shown", "not faithful", "no map"):
        if verdicts[v]:
            nums = ", ".join(f"{r['label']} (map − null {format_difference(r['road']['difference'])})"
                             for r in verdicts[v])
            parts.append(f"{v}: {nums}")
    out.append(f"ROAD on {record['n_road']} images, both orders, in logit margin: " + "; ".join(parts) + ".")
    # marker
    mt = record.get("marker_test", {})
    if mt.get("measured"):
        exposes = [r for r in rows if r["marker"] and r["marker"]["verdict"] == "exposes the shortcut"]
        others = [r for r in rows if r not in exposes]
        nums = ", ".join(f"{r['label']} {format_difference(r['marker']['difference'])}" for r in exposes)
        rest = ", ".join(f"{r['label']} {format_difference(r['marker']['difference'])}" for r in others
                         if r["marker"])
        out.append(f"The marker test of notebook 08 ({mt['n_images']} marked test images; map mass on the marker, "
                   f"confounded model − control, margin = a uniform map's share of the marker, "
                   f"{mt['uniform_share']:.4f}): exposes the shortcut — {_names(exposes)}"
                   + (f" ({nums})" if exposes else "") + (f"; does not: {rest}" if rest else "") + ".")
    else:
        out.append(f"The marker test was not run: {mt.get('reason', 'no confounded model')}.")
    # cost
    cheapest = min(rows, key=lambda r: r["cost_ms"])
    costs = ", ".join(f"{r['label']} {_ms(r['cost_ms'])}" + (f" ({r['cost_ms'] / cheapest['cost_ms']:.0f}× "
                                                                f"{cheapest['label']})" if r is not cheapest and
                                                               cheapest["cost_ms"] > 0 else "") for r in rows)
    sc = record["scale"]
    out.append(f"Cost per image on this machine ({sc['device']}, {sc['torch_threads']} threads, {sc['image_size']} px, "
               f"load average {sc['load_average_1min']:.1f} at the start): {costs}.")
    # sharper is not better
    ranked = sorted((r for r in rows if np.isfinite(r["sharpness"])), key=lambda r: -r["sharpness"])
    if len(ranked) >= 2:
        sharp, smooth = ranked[0], ranked[-1]

        def verdicts_of(r: Mapping[str, Any]) -> str:
            parts = [f"randomisation {r['randomisation']['verdict']}", f"ROAD {r['road']['verdict']}"]
            if record["masks"]:
                parts.insert(0, f"near-pointing {r['localisation']['near']['map']:.3f} "
                                f"({r['localisation']['near']['verdict']} the prior)")
            return ", ".join(parts)

        out.append(f"Looking sharper is not being better: the sharpest maps here, {sharp['label']}, hold "
                   f"{sharp['sharpness']:.2f} of their mass in their top {100 * SHARP_TOP:.0f}% of pixels (a uniform "
                   f"map: {SHARP_TOP:.2f}) — {verdicts_of(sharp)}; the smoothest, {smooth['label']}, "
                   f"{smooth['sharpness']:.2f} — {verdicts_of(smooth)}. Sharpness is a property of the picture; it "
                   f"reads neither the model nor the lesion, so only the checks against their nulls say which map to "
                   f"trust.")
    return out


def _tone(verdict: str, good: Sequence[str], bad: Sequence[str]) -> str:
    return "good" if verdict in good else "bad" if verdict in bad else "neutral" if verdict else "none"


def leaderboard_panels(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The figure's panels (:func:`utils.viz.attribution.plot_leaderboard`) from ``record``: one per check, every
    row a method with its number, interval and verdict tone; unmeasured checks say why."""
    rows = list(record["rows"])

    def row(label: str, d: Mapping[str, Any] | None, tone: str, text: str = "") -> dict[str, Any]:
        if d is None:
            return {"label": label, "value": None, "tone": "none", "text": text or "not measured"}
        return {"label": label, "value": d.get("value"), "ci_low": d.get("ci_low"), "ci_high": d.get("ci_high"),
                "tone": tone, "text": text}

    panels = []
    for metric, title in (("near", "near-pointing: map − best prior"), ("energy", "energy in the lesion: map − best "
                                                                                 "prior")):
        prs = []
        for r in rows:
            lo = (r.get("localisation") or {}).get(metric)
            prs.append(row(r["label"], lo["difference"] if lo else None,
                           _tone(lo["verdict"], ("beats",), ("worse",)) if lo else "none",
                           "" if lo else "no lesion masks"))
        best = next(((r.get("localisation") or {}).get(metric) for r in rows if r.get("localisation")), None)
        panels.append({"title": title, "xlabel": "difference (95% CI)", "rows": prs,
                       "reference": {"x": 0.0, "label": f"the best prior ({best['best_baseline']})"} if best else None})
    panels.append({"title": f"mass outside the lungs ({record['lung_masks']}) − uniform map",
                   "xlabel": "difference (95% CI); below 0 = stays in the lungs",
                   "reference": {"x": 0.0, "label": "a uniform map"},
                   "rows": [row(r["label"], r["outside_lung"]["difference"],
                                _tone(r["outside_lung"]["verdict"], ("inside the lungs more than a uniform map",),
                                      ("outside the lungs more than a uniform map",))) for r in rows]})
    panels.append({"title": "randomisation: similarity to the trained map − reference (worst step)",
                   "xlabel": "|ρ| difference (95% CI)", "reference": {"x": 0.0, "label": "the reference level"},
                   "rows": [row(r["label"], r["randomisation"].get("worst_difference"),
                                _tone(r["randomisation"]["verdict"], ("at the reference",), ("above the reference",)))
                            for r in rows]})
    panels.append({"title": "ROAD: combined score, map − the same map moved", "xlabel": "logit-margin difference "
                   "(95% CI)", "reference": {"x": 0.0, "label": "the moved map"},
                   "rows": [row(r["label"], r["road"]["difference"],
                                _tone(r["road"]["verdict"], ("faithful",), ("not faithful",))) for r in rows]})
    mt = record.get("marker_test", {})
    panels.append({"title": "marker (08): mass on the marker, confounded − control", "xlabel": "share of map mass "
                   "(95% CI)", "reference": {"x": mt["uniform_share"], "label": "uniform map's share (margin)"}
                   if mt.get("measured") else None,
                   "rows": [row(r["label"], r["marker"]["difference"] if r.get("marker") else None,
                                _tone(r["marker"]["verdict"], ("exposes the shortcut",), ()) if r.get("marker")
                                else "none", "" if r.get("marker") else "no confounded model") for r in rows]})
    panels.append({"title": f"stability: Spearman ρ under grey noise σ={rows[0]['stability']['level']:g}",
                   "xlabel": "median ρ (bars: quartiles); 1 = unchanged", "reference": None,
                   "rows": [row(r["label"], {"value": r["stability"]["median_rho"], "ci_low": r["stability"]["q25"],
                                             "ci_high": r["stability"]["q75"]}, "info") for r in rows]})
    panels.append({"title": "cost on this machine", "xlabel": "ms per image (log scale)", "reference": None,
                   "log": True, "rows": [row(r["label"], {"value": r["cost_ms"]}, "info") for r in rows]})
    return panels
