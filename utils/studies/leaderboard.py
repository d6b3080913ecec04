"""Notebook 10's leaderboard: pixel-attribution methods and the chosen Grad-CAM, measured by one harness.

The rows are saliency, SmoothGrad, Integrated Gradients with three baselines (black, blurred, the training mean
image), occlusion (:mod:`utils.explain.attribution`, from Captum) and the Grad-CAM notebook 05 chose
(:func:`utils.explain.maps.main_explanation`). Every row gets the same checks, each against a null that could win:

* **localisation** (phantoms: lesion masks) — near-pointing and energy inside the lesion on test true positives
  against the **best image-blind prior** (mean-lesion, lung-field, centre, random), paired patient bootstrap
  (:func:`utils.explain.choice.verdict_against_baselines`, the rule of notebook 05);
* **outside-lung mass** against a uniform map (ground-truth lungs on phantoms, estimated lungs on real films);
* **randomisation** — the cascading check of Adebayo et al. judged against its reference level, the trained map
  against another image's randomised map, on |Spearman ρ| and SSIM (:func:`utils.explain.sanity.randomisation_check`);
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
from utils.data.bundle import DataBundle
from utils.deploy.timing import machine_info
from utils.errors import UserError
from utils.evaluate.metrics import format_ci, paired_difference_ci
from utils.evaluate.verdicts import (
    difference_verdict,
    format_difference,
)
from utils.explain import attribution as attr
from utils.explain import localisation as loc
from utils.explain import road as road_check
from utils.explain import sanity
from utils.explain.choice import verdict_against_baselines
from utils.explain.maps import main_explanation
from utils.explain.spec import without_shifts
from utils.fileio import write_json
from utils.paths import notebook_path
from utils.stages import ensure_explanation
from utils.studies import shortcut
from utils.train.model import load_model, predict_proba, preprocess, resolve_device

__all__ = [
    "GRADCAM_ROW",
    "ROWS",
    "Knobs",
    "Leaderboard",
    "MarkerInputs",
    "confounded_inputs",
    "leaderboard_panels",
    "leaderboard_sentences",
    "leaderboard_table",
    "marker_row",
    "measure_leaderboard",
    "randomisation_entry",
    "run_leaderboard",
    "sharpness",
    "spec_at_size",
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
    n_val: int = 6  # validation true positives the parameters are chosen on
    n_sanity: int = 4  # images of the randomisation check (every method's maps at 6 randomised steps); >= 2
    n_road: int = 8  # images of ROAD (both orders, map and null)
    n_stability: int = 4  # images of the stability check
    n_marker: int = 8  # marked test images of the marker test (when the confounded model exists)
    noises: tuple[float, ...] = (0.1, 0.2)  # SmoothGrad noise (fraction of the grey range)
    samples: tuple[int, ...] = (8,)  # SmoothGrad samples
    steps: tuple[int, ...] = (4, 8)  # IG steps
    window_fractions: tuple[int, ...] = (4,)  # occlusion windows: image side / f (stride: half the window)
    fills: tuple[str, ...] = ("black", "blurred", "mean")  # what an occluded window is replaced with
    stability_level: float = 0.02  # σ of the grey noise of the stability check
    road_fractions: tuple[float, ...] = road_check.ROAD_FRACTIONS

    def check(self) -> Knobs:
        """Themselves, after a one-line error for a count < 1 or a level outside (0, 1)."""
        for name in ("n_images", "n_val", "n_sanity", "n_road", "n_stability", "n_marker"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise UserError(f"{name} must be a whole number >= 1, got {v!r}")
        if self.n_sanity < 2:
            raise UserError(f"n_sanity must be at least 2 (the reference is another image's map), got {self.n_sanity}")
        if not 0 < self.stability_level < 1:
            raise UserError(f"stability_level must lie in (0, 1), got {self.stability_level!r}")
        return self


@dataclass
class Leaderboard:
    """What notebook 10 shows (the JSON is ``record``); ``model`` / ``meta`` (threshold included) and ``mean_image``
    are what the maps were computed with, for the explorer."""

    record: dict[str, Any]
    table: pd.DataFrame
    sentences: list[str]
    specs: dict[str, dict[str, Any]]
    model: nn.Module
    meta: dict[str, Any]
    mean_image: np.ndarray
    index: np.ndarray  # the scored images: indices into the test split
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
    frac, masks, _ = loc.outside_lung_fractions(maps, lung_masks, skip_empty=True)
    chance = 1.0 - masks.reshape(len(masks), -1).mean(axis=1)
    ok = np.isfinite(frac)
    diff = paired_difference_ci(frac[ok], chance[ok], groups[ok], n_boot=n_boot, seed=seed)
    verdict = {"below": "inside the lungs more than a uniform map", "above": "outside the lungs more than a uniform "
               "map", "inconclusive": "no different from a uniform map", "not measured": "no map"}[
                   difference_verdict(diff)]  # margin 0: never "within"
    return {"value": float(frac[ok].mean()) if ok.any() else float("nan"),
            "uniform": float(chance[ok].mean()) if ok.any() else float("nan"),
            "difference": _ci(diff), "verdict": verdict, "n": int(ok.sum()), "n_no_map": int((~ok).sum())}


# ------------------------------------------------------------------------------------------ randomisation
def randomisation_entry(check: Mapping[str, Any], metric: str = "abs_spearman") -> dict[str, Any]:
    """The record's view of :func:`utils.explain.sanity.randomisation_check`: its verdict, and the worst step on
    ``metric`` (the largest similarity − reference difference, from ``layer4`` down to the stem) with its numbers."""
    steps = list(check["steps"].get(metric, []))
    verdict = {"at the reference level": "at the reference", "above the reference level": "above the reference"}.get(
        check["verdict"], "no map")
    scored = [st for st in steps if np.isfinite(float(st["difference"]["value"]))]
    above = [st for st in scored if st["verdict"] == "above the reference"]
    worst = max(above or scored, key=lambda st: float(st["difference"]["value"])) if scored else None
    entry: dict[str, Any] = {
        "verdict": verdict, "passes": bool(check["passes"]), "metric": metric, "n": check["n"],
        "n_no_map": check["n_no_map"], "sentence": check["sentence"],
        "steps": {m: [{k: st[k] for k in ("blocks", "similarity", "reference", "difference", "verdict")} for st in rows]
                  for m, rows in check["steps"].items()},
        "worst_difference": _ci(worst["difference"]) if worst else None,
        "worst_verdict": worst["verdict"] if worst else "no map",
        "worst_blocks": worst["blocks"] if worst else None,
        "summary": (f"with {worst['blocks']} random, {sanity.SIMILARITIES[metric]} {format_ci(worst['similarity'])} "
                    f"vs {format_ci(worst['reference'])} for another image's map") if worst else "no map"}
    return entry


# ------------------------------------------------------------------------------------------ the marker test
#: 08's map verdict (:func:`utils.studies.shortcut.marker_map_verdict`) in the leaderboard's words.
MARKER_WORDS = {"shown": "exposes the shortcut", "own maps only": "its own maps moved, no map to compare",
                "below the uniform share": "detectable, below the uniform share", "not shown": "does not expose it",
                "not measured": "no map"}


def _marker_unmeasured(entry: Mapping[str, Any]) -> str:
    """Why a marker row has no verdict, in a few words: how many images had a map from every model."""
    n, total = int(entry.get("n", 0)), int(entry.get("n", 0)) + int(entry.get("n_no_map", 0))
    return f"a map from every model, with and without the marker, on {n} of {total} images"


def marker_row(maps: Mapping[str, np.ndarray], maps_without: Mapping[str, np.ndarray], regions: np.ndarray,
               groups: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """One method's marker test — notebook 08's, with 08's rule. ``maps[model]``: the maps of marked images by
    ``"confounded"``, ``"control"`` (and ``"remedy"`` where there is one); ``maps_without[model]``: the same
    model's maps of the same images without the marker (each as that model is given them). The mass the marker
    *drew* into each model's map (with − without, so overall map shape cancels) is compared between models, paired
    by image, patients resampled (:func:`utils.studies.shortcut.marker_attention`), and read by
    :func:`utils.studies.shortcut.marker_map_verdict` with the uniform map's share of the marker as the margin.
    ``difference``: the drawn mass, confounded − control; ``own``: the confounded model's with − without;
    ``vs_remedy``: confounded − remedy. Verdict: one of :data:`MARKER_WORDS`."""
    regions = np.asarray(regions, bool)
    if not regions.reshape(len(regions), -1).any(axis=1).all():
        raise ValueError("every image of the marker test must carry a marker")
    if not {"confounded", "control"} <= set(maps) or set(maps) != set(maps_without):
        raise ValueError("the marker test needs the confounded and the control model's maps, with and without it")
    table, diffs, uniform = shortcut.marker_attention(dict(maps), dict(maps_without), regions, groups,
                                                      n_boot=n_boot, seed=seed)
    per = table.set_index("model")
    both = diffs["confounded - control"]["marker_drawn"]
    remedy = diffs.get("confounded - remedy", {}).get("marker_drawn")
    return {"verdict": MARKER_WORDS[shortcut.marker_map_verdict(diffs, uniform)], "difference": _ci(both),
            "own": _ci(diffs["confounded: with - without marker"]["marker_mass"]),
            "vs_remedy": None if remedy is None else _ci(remedy), "margin": uniform,
            "drawn": {m: float(per.loc[m, "marker_drawn"]) for m in per.index},
            "peak_on_marker": {m: [float(per.loc[m, "marker_pointing"]), float(per.loc[m, "marker_pointing_without"])]
                               for m in per.index},
            "n": int(both["n"]), "n_no_map": len(regions) - int(both["n"])}


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


def _patients_first(idx: np.ndarray, patient_ids: np.ndarray) -> np.ndarray:
    """``idx`` reordered so that its first images come from distinct patients (each patient's first image, in order,
    then each patient's second …): the checks that read only the first few images then bootstrap over patients."""
    count: dict[Any, int] = {}
    rank = []
    for patient in np.asarray(patient_ids)[idx]:
        rank.append(count.get(patient, 0))
        count[patient] = rank[-1] + 1
    return np.asarray(idx)[np.argsort(rank, kind="stable")]


class _Clock:
    """Wall seconds of each phase (``laps``), for the record: what each check costs on this machine."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 2)
        self.last = now


@dataclass
class MarkerInputs:
    """What the marker test needs: notebook 08's confounded model, the models it is compared with, and marked test
    images with their true marker regions and the same images without the marker (images without a marker are left
    out by the test). Notebook 08 may train in a world of its own (another image size, data, start): ``control`` is
    that world's control model (None: the shipped model is the control), ``remedy`` its remedy (None: not compared),
    ``mean_image`` that world's training mean (None: the shipped run's) — the methods' parameters are carried over
    to its image size (:func:`spec_at_size`)."""

    model: nn.Module
    images: np.ndarray  # uint8 (N, S, S), markers burned in
    clean_images: np.ndarray  # uint8 (N, S, S), the same images without the marker
    regions: np.ndarray  # bool (N, S, S)
    labels: np.ndarray
    patient_ids: np.ndarray
    source: str = ""
    control: nn.Module | None = None
    remedy: nn.Module | None = None
    mean_image: np.ndarray | None = None
    world: str = "the shipped run's"


def spec_at_size(spec: Mapping[str, Any], from_size: int, to_size: int) -> dict[str, Any]:
    """An attribution spec chosen at ``from_size`` px carried over to ``to_size`` px: the occlusion window scaled with
    the image (its stride re-derived so the windows tile the side); every other parameter is size-free (the blurred
    baseline's default blur is side / 16 already) — a Grad-CAM spec is returned unchanged."""
    if not attr.is_attribution_spec(spec) or from_size == to_size or spec["method"] != "occlusion":
        return dict(spec)
    p = dict(spec["params"])
    if p.get("window") is not None:
        p["window"], p["stride"], _ = attr.occlusion_windows(to_size, max(1, round(p["window"] * to_size / from_size)))
    if p.get("blur") is not None:
        p["blur"] = p["blur"] * to_size / from_size
    return attr.make_attribution_spec("occlusion", **p)


def confounded_inputs(cfg: Config, bundle: DataBundle, device: torch.device | str = "cpu") -> MarkerInputs | str:
    """Notebook 08's confounded model, its control and remedy, and its decorrelated marked test with the same images
    unmarked — or, when a model is missing or belongs to other data, the reason, in one line naming the notebook to
    run (never trained here: three training runs). 08's world, training sets and marked test come from
    :mod:`utils.studies.shortcut` (:func:`~utils.studies.shortcut.world_setup`,
    :func:`~utils.studies.shortcut.confounded_world`, :func:`~utils.studies.shortcut.cleaned_bundle`,
    :func:`~utils.studies.shortcut.marked_test`) and its checkpoints from ``shortcut.TAGS``; in the shipped run's
    world (real data) the shipped model is the control."""
    from utils.data.confounder import MarkerSpec

    spec, dev = MarkerSpec(), resolve_device(str(device))
    wcfg, clean, shipped_world = shortcut.world_setup(cfg, bundle)
    _, world = shortcut.confounded_world(cfg, bundle, spec)
    path = {m: wcfg.path("model", shortcut.TAGS[m]) for m in shortcut.MODELS}
    checks = [("confounded", lambda: world)] + ([] if shipped_world else [("control", lambda: clean)])
    checks.append(("remedy", lambda: shortcut.cleaned_bundle(world)))  # cleaned only when the others are current
    for name, data in checks:
        reason = checkpoint_state(path[name], data(), need=("threshold_rule",))
        if reason:
            return (f"notebook 08's {path[name].name} is not usable here: {reason}; run {notebook_path('shortcut')} "
                    "first (it trains its models), then this notebook again")
    marked, regions = shortcut.marked_test(cfg, bundle, "decorrelated", spec, clean_test=clean["test"])
    models = {m: load_model(path[m], dev)[0] for m in shortcut.MODELS if m != "control" or not shipped_world}
    rel = path["confounded"].relative_to(cfg.root) if path["confounded"].is_relative_to(cfg.root) else path["confounded"]
    return MarkerInputs(models["confounded"], marked.images, clean["test"].images, regions, marked.labels,
                        marked.patient_ids, str(rel), models.get("control"), models["remedy"],
                        None if shipped_world else attr.dataset_mean_image(clean["train"].images),
                        "the shipped run's" if shipped_world else "notebook 08's own")


def run_leaderboard(cfg: Config, bundle: DataBundle, methods: Sequence[str] | None = None, knobs: Knobs = Knobs(),
                    device: str = "auto", progress: bool = True, write: bool = True) -> Leaderboard:
    """Notebook 10's call: the shipped model and its recorded Grad-CAM through :func:`utils.stages.ensure_explanation`
    (rebuilt when missing, as every notebook does), notebook 08's confounded model when it is there
    (:func:`confounded_inputs`), then :func:`measure_leaderboard`; with ``write``, it saves
    ``assets/attribution_leaderboard.json``."""
    rows, knobs = _rows(methods), knobs.check()
    dev = resolve_device(device)
    path = ensure_explanation(cfg, bundle, device, progress)
    model, meta = load_model(path, dev)
    threshold, rule = operating_threshold(meta, path)
    marker = confounded_inputs(cfg, bundle, dev)
    board = measure_leaderboard(model, {**meta, "threshold": threshold, "threshold_rule": rule}, bundle,
                                main_explanation(path, model), rows, knobs, int(cfg["seed"]), int(cfg["n_bootstrap"]),
                                marker, progress)
    board.record["scale"].update(profile=cfg.profile, knobs=cfg.knobs)
    if write:
        write_json(cfg.path("attribution_leaderboard"), board.record)
    return board


def measure_leaderboard(model: nn.Module, meta: Mapping[str, Any], bundle: DataBundle, gradcam: Mapping[str, Any],
                        methods: Sequence[str] | None = None, knobs: Knobs = Knobs(), seed: int = 0,
                        n_boot: int = 1000, marker: MarkerInputs | str | None = None,
                        progress: bool = False) -> Leaderboard:
    """Every check of the module docstring for every row, on ``bundle``'s splits: parameters chosen on its validation
    split (with lesion masks), everything scored on a seeded draw of its test true positives. ``meta`` holds the
    normalisation and the operating ``threshold``; ``gradcam`` is the Grad-CAM spec of the row ``"gradcam"``;
    ``marker``: the marker test's inputs, or why it cannot run."""
    rows, knobs = _rows(methods), knobs.check()
    clock = _Clock()
    machine = machine_info(torch.get_num_threads())  # the load average at the start, as the cost sentence says
    dev = next(model.parameters()).device
    meta = dict(meta)
    threshold = float(meta["threshold"])
    train, val, test = bundle["train"], bundle["val"], bundle["test"]
    has_masks = all(s.lesion_masks is not None for s in (train, val, test))
    mean_image = attr.dataset_mean_image(train.images)
    grid = attr.parameter_grid(int(bundle.image_size), with_mean=True, noises=knobs.noises, samples=knobs.samples,
                               steps=knobs.steps, window_fractions=knobs.window_fractions, fills=knobs.fills)
    val_table = None
    priors: dict[str, np.ndarray] = {}
    wanted = {g: grid[g] for g in rows if g != GRADCAM_ROW}
    if has_masks:
        assert train.lesion_masks is not None and val.lesion_masks is not None
        priors = loc.prior_maps(train.lesion_masks[train.labels == 1], train.lung_masks)
        chosen, val_table = attr.choose_parameters(model, val.images, val.lesion_masks, val.labels, meta, wanted,
                                                   mean_image, priors=priors, max_images=knobs.n_val,
                                                   progress=progress) if wanted else ({}, None)
        chosen_on = (f"validation true positives (the first {val_table.attrs['n_true_positives']}), 05's rule"
                     if val_table is not None else "nothing to choose")
    else:
        chosen = {g: dict(specs[0]) for g, specs in wanted.items()}
        chosen_on = "nothing: no lesion masks on this data, so each method keeps the cheapest setting of its grid"
    gradcam_spec = {**gradcam, "name": f"{gradcam['name']} (05's choice)"}
    specs = {g: (gradcam_spec if g == GRADCAM_ROW else chosen[g]) for g in rows}
    clock.lap("parameter choice (validation)")

    # the scored images: test true positives (seeded draw); with too few, the PNEUMONIA images the model rates highest
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
        raise UserError(f"the leaderboard needs at least two PNEUMONIA test images: this test split has {len(tp)}")
    idx = _patients_first(_pick(rng, tp, knobs.n_images), test.patient_ids)
    x = preprocess(torch.from_numpy(test.images[idx]), meta["mean"], meta["std"])
    groups = np.asarray(test.patient_ids[idx])
    maps_by_name, _, seconds = attr.method_maps(model, x, [specs[g] for g in rows], 1, meta, mean_image,
                                                progress=progress)
    maps = {g: maps_by_name[specs[g]["name"]] for g in rows}
    out: dict[str, dict[str, Any]] = {}
    for g in rows:
        s = specs[g]
        out[g] = {"row": g, "label": ROWS[g], "spec": s, "name": s["name"],
                  "sign": s["params"]["sign"] if g != GRADCAM_ROW else "positive (ReLU)",
                  "cost_ms": 1000.0 * seconds[s["name"]], "sharpness": float(np.nanmean(sharpness(maps[g]))),
                  "n_no_map": int(loc.empty_maps(maps[g]).sum())}
    clock.lap("maps of the scored images")
    # localisation against the priors (masks only)
    if has_masks:
        assert test.lesion_masks is not None
        for g in rows:
            out[g]["localisation"] = {}
            for metric in ("near", "energy"):
                v = verdict_against_baselines(maps[g], test.lesion_masks[idx], groups, priors, metric, n_boot, seed)
                out[g]["localisation"][metric] = {
                    "map": v["map"], "best_baseline": v["best_baseline"], "best_baseline_value": v["best_baseline_value"],
                    "baselines": v["baselines"], "difference": _ci(v["difference"]), "verdict": v["verdict"],
                    "n": v["n"], "n_no_map": v["n_no_map"], "sentence": v["sentence"]}
    # outside-lung mass (ground-truth lungs on phantoms, estimated lungs on real films)
    lungs = test.lung_masks[idx] if test.lung_masks is not None else loc.estimate_lung_fields(test.images[idx])
    lung_source = "ground truth" if test.lung_masks is not None else "estimated"
    for g in rows:
        out[g]["outside_lung"] = {**_outside_lung(maps[g], lungs, groups, n_boot, seed), "lung_masks": lung_source}
    clock.lap("localisation and outside-lung mass")
    # randomisation with its reference level
    n_s = min(knobs.n_sanity, len(idx))
    for g in rows:
        cam_fn = attr.cam_fn_for(specs[g], meta, mean_image)
        check = sanity.randomisation_check(model, x[:n_s], 1, "layer4", seed=seed, cam_fn=cam_fn, groups=groups[:n_s],
                                           n_boot=n_boot, random_models=False)
        out[g]["randomisation"] = randomisation_entry(check)
    clock.lap("randomisation")
    # ROAD, both orders, against the same map moved elsewhere
    n_r = min(knobs.n_road, len(idx))
    for g in rows:
        r = road_check.road_test(model, x[:n_r], maps[g][:n_r], groups[:n_r], 1, knobs.road_fractions, "shift",
                                 n_boot, seed)
        out[g]["road"] = {"verdict": r["verdict"], "own_drop": _ci(r["own_drop"]), "difference": _ci(r["difference"]),
                          "n": r["n"], "n_no_map": r["n_no_map"], "null": road_check.NULLS["shift"],
                          "sentence": r["sentence"]}
    clock.lap("ROAD")
    # stability under a small grey noise that leaves the decision unchanged
    n_t = min(knobs.n_stability, len(idx))
    for g in rows:
        st = attr.map_stability(model, x[:n_t], attr.cam_fn_for(specs[g], meta, mean_image), meta, "noise",
                                knobs.stability_level, 1, seed=seed, maps=maps[g][:n_t])
        out[g]["stability"] = {k: st[k] for k in ("kind", "level", "n", "n_flipped", "n_kept", "median_rho", "q25",
                                                  "q75")}
    clock.lap("stability")
    # the marker test of notebook 08 (only with the confounded model)
    if isinstance(marker, MarkerInputs):
        marker_test = _marker_test(marker, model, meta, rows, specs, mean_image, knobs.n_marker, rng, n_boot, seed)
    else:
        marker_test = {"measured": False, "rows": {}, "reason": marker or "no confounded model was given"}
    for g in rows:
        out[g]["marker"] = marker_test["rows"].get(g)
    clock.lap("marker test")

    load = machine["load_average_1min"]
    record = {
        "what": "pixel attribution vs the chosen Grad-CAM, every method with every check of the series",
        "scale": {"data": bundle.source, "describe": bundle.describe(), "image_size": int(bundle.image_size),
                  "device": dev.type, "torch_threads": machine["threads"], "cpu_cores": machine["cores_available"],
                  "load_average_1min": float("nan") if load is None else float(load)},
        "threshold": threshold, "threshold_rule": meta.get("threshold_rule"),
        "masks": has_masks, "parameters_chosen_on": chosen_on, "images": images_are, "n_images": len(idx),
        "n_sanity": n_s, "n_road": n_r, "n_stability": n_t, "n_bootstrap": n_boot, "knobs": asdict(knobs),
        "lung_masks": lung_source, "marker_test": {k: v for k, v in marker_test.items() if k != "rows"},
        "not_measurable": [] if has_masks else [
            "localisation (near-pointing, energy inside the lesion, the comparison with the image-blind priors): no "
            "lesion masks", "the choice of each method's parameters on validation: no lesion masks"],
        "model_saw_masks": False, "seconds": {**clock.laps, "total": round(time.perf_counter() - clock.start, 2)},
        "rows": [out[g] for g in rows],
    }
    return Leaderboard(record, leaderboard_table(record), leaderboard_sentences(record), specs, model, meta,
                       mean_image, idx, maps, test.images[idx],
                       None if test.lesion_masks is None else test.lesion_masks[idx], val_table)


def _marker_test(marker: MarkerInputs, model: nn.Module, meta: Mapping[str, Any], rows: Sequence[str],
                 specs: Mapping[str, Mapping[str, Any]], mean_image: np.ndarray, n_marker: int,
                 rng: np.random.Generator, n_boot: int, seed: int) -> dict[str, Any]:
    """:func:`marker_row` for every row on up to ``n_marker`` marked images (half PNEUMONIA, half NORMAL where
    possible), each explained for PNEUMONIA by the confounded model, the control and the remedy (same specs, carried
    over to the marked images' size), with and without the marker, each model given the images as notebook 08 gives
    them (the remedy: cleaned by :func:`utils.studies.shortcut.remedy_view`)."""
    has = np.asarray(marker.regions).reshape(len(marker.regions), -1).any(axis=1)
    labels = np.asarray(marker.labels)
    pick = np.r_[_pick(rng, np.flatnonzero(has & (labels == 1)), (n_marker + 1) // 2),
                 _pick(rng, np.flatnonzero(has & (labels == 0)), n_marker // 2)].astype(int)
    if len(pick) < 2:
        return {"measured": False, "rows": {}, "reason": f"only {len(pick)} marked test image(s)"}
    started = time.perf_counter()
    marked, clean = np.asarray(marker.images)[pick], np.asarray(marker.clean_images)[pick]
    size = int(marked.shape[-1])
    # as notebook 08 reads its models: on the image as it is (a CAM's shift averaging left out, spec.without_shifts)
    moved = {g: {**without_shifts(spec_at_size(specs[g], int(mean_image.shape[-1]), size)), "name": specs[g]["name"]}
             for g in rows}
    base = marker.mean_image if marker.mean_image is not None else mean_image
    models = {"confounded": marker.model, "control": marker.control if marker.control is not None else model,
              **({"remedy": marker.remedy} if marker.remedy is not None else {})}
    with_, without = {}, {}
    for name, net in models.items():
        pair = (shortcut.remedy_view(marked), shortcut.remedy_view(clean)) if name == "remedy" else (marked, clean)
        x = preprocess(torch.from_numpy(np.ascontiguousarray(np.concatenate(pair))), meta["mean"], meta["std"])
        maps = attr.method_maps(net, x, [moved[g] for g in rows], 1, meta, base)[0]
        with_[name] = {k: v[:len(pick)] for k, v in maps.items()}
        without[name] = {k: v[len(pick):] for k, v in maps.items()}
    regions = np.asarray(marker.regions, bool)[pick]
    groups = np.asarray(marker.patient_ids)[pick]
    out = {g: marker_row({m: with_[m][moved[g]["name"]] for m in models},
                         {m: without[m][moved[g]["name"]] for m in models}, regions, groups, n_boot, seed)
           for g in rows}
    return {"measured": True, "rows": out, "n_images": len(pick), "model": marker.source, "world": marker.world,
            "image_size": size, "specs": {g: moved[g] for g in rows}, "models": list(models),
            "images": "decorrelated marked test images (notebook 08), both classes, each explained for PNEUMONIA "
                      "with and without the marker",
            "uniform_share": float(regions.mean()), "seconds": round(time.perf_counter() - started, 2)}


# ------------------------------------------------------------------------------------------ reading the record
def _verdict_cell(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "not measurable"
    return "no map" if entry["verdict"] == "no map" else f"{entry['verdict']} {format_difference(entry['difference'])}"


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
            "vs best prior (near)": _verdict_cell(near),
            "vs best prior (energy)": _verdict_cell(locs.get("energy")),
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


def _vs_prior(label: str, loc_entry: Mapping[str, Any]) -> str:
    """``"Saliency 0.550 vs mean-lesion prior 0.500 (+0.050 [95% CI …])"`` (+ how many maps were empty)."""
    empty = f", {loc_entry['n_no_map']} empty maps left out" if loc_entry.get("n_no_map") else ""
    return (f"{label} {loc_entry['map']:.3f} vs {loc_entry['best_baseline']} {loc_entry['best_baseline_value']:.3f} "
            f"({format_difference(loc_entry['difference'])}{empty})")


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
            f"stem; from layer4 on, the similarity of trained and randomised maps of the same image is judged against "
            f"the reference level, another image's randomised map, on |Spearman rho| and SSIM): at the reference level "
            f"— the map depends on the trained weights — {_names(passed)}")
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
            parts = []
            for v, word in (("beats", "beat it"), ("ties", "tie with it"), ("worse", "fall below it")):
                if by[v]:
                    nums = ", ".join(_vs_prior(r["label"], r["localisation"][metric]) for r in by[v])
                    parts.append(f"{word}: {nums}")
            if by["no map"]:
                parts.append(f"no map (every map empty or constant): {_names(by['no map'])}")
            n_max = max(r["localisation"][metric]["n"] for r in rows)
            out.append(f"Against the best image-blind prior on {words} (map − prior on the same images, up to {n_max} "
                       f"{record['images']}, paired patient-bootstrap 95% CI): " + "; ".join(parts) + ".")
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
            nums = ", ".join(f"{r['label']} (drop of the logit margin, most relevant first, "
                             f"{format_difference(r['road']['own_drop'])}; map − null "
                             f"{format_difference(r['road']['difference'])})" for r in verdicts[v])
            parts.append(f"{v}: {nums}")
    out.append(f"ROAD on {record['n_road']} images, both orders, in logit margin: " + "; ".join(parts) + ".")
    # marker
    mt = record.get("marker_test", {})
    if mt.get("measured"):
        groups = {v: [r for r in rows if r.get("marker") and r["marker"]["verdict"] == v] for v in MARKER_WORDS.values()}
        parts = []
        for v in MARKER_WORDS.values():
            if groups[v] or v == MARKER_WORDS["shown"]:
                nums = ", ".join(f"{r['label']} ({_marker_unmeasured(r['marker'])})" if v == MARKER_WORDS["not measured"]
                                 else f"{r['label']} {format_difference(r['marker']['difference'], 4)}" for r in groups[v])
                parts.append(f"{v} — {nums or 'none'}")
        others = " and minus ".join(f"the {m}'s" for m in mt.get("models", ["control"]) if m != "confounded")
        out.append(f"The marker test of notebook 08, with 08's rule ({mt['n_images']} marked test images, each mapped "
                   f"with and without the marker; the map mass the marker drew in the confounded model's maps minus "
                   f"{others}, paired 95% CI; shown when every comparison clears a uniform map's share of the marker, "
                   f"{mt['uniform_share']:.4f}; the numbers below: confounded − control): " + "; ".join(parts) + ".")
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
            near = r["localisation"]["near"] if record["masks"] else None
            if near is not None:
                parts.insert(0, "near-pointing: no map" if near["verdict"] == "no map" else
                             f"near-pointing {near['map']:.3f} ({near['verdict']} the prior)")
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


def _randomisation_tone(r: Mapping[str, Any]) -> str:
    """Green only when the method passes (every step at the reference on every similarity); red when the |ρ| step
    shown is above the reference; grey when it fails on SSIM alone."""
    rand = r["randomisation"]
    if rand["verdict"] == "at the reference":
        return "good"
    if rand["verdict"] == "no map":
        return "none"
    return "bad" if rand.get("worst_verdict", rand["verdict"]) == "above the reference" else "neutral"


def leaderboard_panels(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The figure's panels (:func:`utils.viz.attribution.plot_leaderboard`) from ``record``: one per check, every
    row a method with its number, interval and verdict tone; unmeasured checks say why."""
    rows = list(record["rows"])

    def row(label: str, d: Mapping[str, Any] | None, tone: str, text: str = "") -> dict[str, Any]:
        if d is None:
            return {"label": label, "value": None, "tone": "none", "text": text or "not measured"}
        return {"label": label, "value": d.get("value"), "ci_low": d.get("ci_low"), "ci_high": d.get("ci_high"),
                "tone": tone, "text": text}

    panels: list[dict[str, Any]] = []
    for metric, title in (("near", "near-pointing: map − best prior"), ("energy", "energy in the lesion: map − best "
                                                                                 "prior")):
        prs = []
        for r in rows:
            lo = (r.get("localisation") or {}).get(metric)
            prs.append(row(r["label"], lo["difference"] if lo else None,
                           _tone(lo["verdict"], ("beats",), ("worse",)) if lo else "none",
                           "" if lo else "no lesion masks"))
        best = sorted({r["localisation"][metric]["best_baseline"] for r in rows if r.get("localisation")})
        label = f"the best prior ({best[0]})" if len(best) == 1 else "the best prior on each method's images"
        panels.append({"title": title, "xlabel": "difference (95% CI)", "rows": prs,
                       "reference": {"x": 0.0, "label": label} if best else None})
    panels.append({"title": f"mass outside the lungs ({record['lung_masks']}) − uniform map",
                   "xlabel": "difference (95% CI); below 0 = stays in the lungs",
                   "reference": {"x": 0.0, "label": "a uniform map"},
                   "rows": [row(r["label"], r["outside_lung"]["difference"],
                                _tone(r["outside_lung"]["verdict"], ("inside the lungs more than a uniform map",),
                                      ("outside the lungs more than a uniform map",))) for r in rows]})
    panels.append({"title": "randomisation: |ρ| to the trained map − reference (worst step)",
                   "xlabel": "|ρ| difference (95% CI); the table's verdict also reads SSIM",
                   "reference": {"x": 0.0, "label": "another image's map"},
                   "rows": [row(r["label"], r["randomisation"].get("worst_difference"), _randomisation_tone(r))
                            for r in rows]})
    panels.append({"title": "ROAD: combined score, map − the same map moved", "xlabel": "logit-margin difference "
                   "(95% CI)", "reference": {"x": 0.0, "label": "the moved map"},
                   "rows": [row(r["label"], r["road"]["difference"],
                                _tone(r["road"]["verdict"], ("faithful",), ("not faithful",))) for r in rows]})
    mt = record.get("marker_test", {})
    panels.append({"title": "marker (08): mass the marker drew, confounded − control", "xlabel": "share of map mass "
                   "(95% CI)", "reference": {"x": mt["uniform_share"], "label": "uniform map's share (margin)"}
                   if mt.get("measured") else None,
                   "rows": [row(r["label"], None, "none", f"no map on {r['marker']['n_no_map']} of "
                                f"{r['marker']['n'] + r['marker']['n_no_map']} images")
                            if r.get("marker") and r["marker"]["verdict"] == MARKER_WORDS["not measured"] else
                            row(r["label"], r["marker"]["difference"] if r.get("marker") else None,
                                _tone(r["marker"]["verdict"], (MARKER_WORDS["shown"],), ()) if r.get("marker")
                                else "none", "" if r.get("marker") else "no confounded model") for r in rows]})
    panels.append({"title": f"stability: Spearman ρ under grey noise σ={rows[0]['stability']['level']:g}",
                   "xlabel": "median ρ (bars: quartiles); 1 = unchanged", "reference": None,
                   "rows": [row(r["label"], {"value": r["stability"]["median_rho"], "ci_low": r["stability"]["q25"],
                                             "ci_high": r["stability"]["q75"]}, "info") for r in rows]})
    panels.append({"title": "cost on this machine", "xlabel": "ms per image (log scale)", "reference": None,
                   "log": True, "rows": [row(r["label"], {"value": r["cost_ms"]}, "info") for r in rows]})
    return panels
