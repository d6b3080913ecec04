"""Shortcut learning, measured (notebook 08): does the explanation catch a model that reads a marker?

The experiment, on the phantoms, where everything is known:

* **control** — the series' shipped model, trained on clean images;
* **confounded** — the same recipe (both phases, the shipping rule, the threshold rule — the same functions) on
  images whose burned-in marker follows the label (:func:`utils.data.confounder.confounded_bundle`);
* **remedy** — the same recipe on the confounded images with every marker the heuristic finds imputed away
  (:func:`remove_markers`), and the same cleaning at test time.

Each model is tested on three versions of the same clean test images: markers that follow the label as in training
(``in-distribution``), markers independent of the label (``decorrelated``) and the correlation reversed
(``reversed``). A model that learned the lesion barely notices; a model that learned the marker falls apart — and
its maps, read on the images that carry a marker, should say where it looked (:func:`marker_scores`).

On real data (no masks, no known confounder) the same question is asked of the shipped model with the marker
heuristic: how often does the map's peak, and how much of its mass, fall on a marker or burned-in text
(:func:`real_marker_summary`)?
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi

from utils.artifacts import operating_threshold
from utils.config import Config
from utils.data.bundle import DataBundle, Split, fingerprint, pixel_hashes
from utils.data.confounder import MarkerSpec, confounded_bundle, confounded_split, find_markers_all
from utils.evaluate import metrics as M
from utils.evaluate.verdicts import difference_verdict, interval_side
from utils.explain import localisation as L
from utils.explain.maps import explain, main_explanation
from utils.explain.road import linear_impute
from utils.stages import ensure_evaluation
from utils.train.model import load_model, predict_proba, preprocess, resolve_device

MODELS = ("control", "confounded", "remedy")
_PAIRING = ("confounded", "remedy", "control")  # bootstrap order: the paired differences read "confounded - control"…
TESTS = ("in-distribution", "decorrelated", "reversed")
TEST_MODES = {"in-distribution": "correlated", "decorrelated": "decorrelated", "reversed": "reversed"}
TAGS = {"confounded": "shortcut_confounded", "remedy": "shortcut_remedy"}


def marker_scores(maps: np.ndarray, marker_masks: np.ndarray, lesion_masks: np.ndarray | None = None,
                  tolerance_frac: float = 0.05) -> pd.DataFrame:
    """Per image: the map's mass on the marker region (``marker_mass``) and whether its peak points at it
    (``marker_pointing``, within ``tolerance_frac`` of the side), and — with lesion masks — the same for the lesion
    (``lesion_mass``, ``lesion_near``). Images without a marker get NaN marker scores."""
    maps, marker_masks = np.asarray(maps), np.asarray(marker_masks, dtype=bool)
    has = np.asarray(marker_masks.reshape(len(marker_masks), -1).any(axis=1))
    rows = []
    for k, (cam, mark) in enumerate(zip(maps, marker_masks)):
        row = {"has_marker": bool(has[k]),
               "marker_mass": L.energy_inside(cam, mark) if has[k] else np.nan,
               "marker_pointing": float(L.near_pointing(cam, mark, tolerance_frac)) if has[k] else np.nan}
        if lesion_masks is not None:
            les = np.asarray(lesion_masks[k], dtype=bool)
            row.update(lesion_mass=L.energy_inside(cam, les) if les.any() else np.nan,
                       lesion_near=float(L.near_pointing(cam, les, tolerance_frac)) if les.any() else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def remove_markers(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The remedy: every masked pixel imputed from its neighbours (ROAD's linear imputation without noise,
    :func:`utils.explain.road.linear_impute`) — the marker is gone, the surrounding background continues."""
    out = np.array(images, copy=True)
    for i in np.flatnonzero(np.asarray(masks).reshape(len(masks), -1).any(axis=1)):
        filled = linear_impute(out[i].astype(np.float64), ~masks[i], noise=0.0)
        out[i] = np.clip(np.round(filled), 0, 255).astype(np.uint8)
    return out


def cleaned_split(split: Split) -> Split:
    """``split`` with every marker the heuristic finds imputed away (the remedy's preprocessing)."""
    images = remove_markers(split.images, find_markers_all(split.images))
    return replace(split, images=images, hashes=pixel_hashes(images))


def cleaned_bundle(bundle: DataBundle) -> DataBundle:
    """``bundle`` with :func:`cleaned_split` applied to train and validation."""
    splits = {**bundle.splits, **{s: cleaned_split(bundle[s]) for s in ("train", "val")}}
    return replace(bundle, splits=splits, fingerprint=fingerprint(splits),
                   notes=[*bundle.notes, "markers found by utils.data.confounder.find_markers imputed away"])


@dataclass
class ShortcutRun:
    """Everything notebook 08 shows; built by :func:`run_shortcut_experiment`."""

    spec: MarkerSpec
    explanation: dict[str, Any]  # the one explanation all three models are read with (the series' main one)
    paths: dict[str, Any]  # model -> checkpoint
    thresholds: dict[str, float]  # model -> its operating threshold, chosen on its own validation images
    tests: dict[str, Split]  # test version -> the marked test split (as the control and confounded models see it)
    seen: dict[str, dict[str, Split]]  # test version -> model -> the images that model is given
    regions: dict[str, np.ndarray]  # test version -> true marker regions (N, S, S)
    probs: dict[str, dict[str, np.ndarray]]  # model -> test version -> P(PNEUMONIA)
    val_probs: dict[str, np.ndarray]  # model -> P(PNEUMONIA) on its own validation images
    paired: dict[str, dict[str, Any]]  # test version -> operating_point_bootstrap of the three models
    table: pd.DataFrame  # model × test × metric: value and 95% CI (threshold re-chosen in every resample)
    map_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))  # decorrelated test images mapped
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # model -> maps of those images (decorrelated version)
    attention: pd.DataFrame | None = None  # per model: marker / lesion mass and pointing
    attention_diff: dict[str, Any] = field(default_factory=dict)  # "confounded - control"… -> metric -> paired CI


def shortcut_table(paired: dict[str, dict[str, Any]], metrics: tuple[str, ...] = ("roc_auc", "sensitivity",
                                                                                    "specificity")) -> pd.DataFrame:
    """The long table of :func:`utils.evaluate.metrics.operating_point_bootstrap` results per test version."""
    rows = [{"model": model, "test": version, "metric": metric, **res[metric]}
            for version, boot in paired.items() for model, res in boot["models"].items() for metric in metrics]
    return pd.DataFrame(rows)


def differences_table(paired: dict[str, dict[str, Any]], metrics: tuple[str, ...] = ("roc_auc", "sensitivity",
                                                                                       "specificity")) -> pd.DataFrame:
    """The paired differences between the models per test version, long: value, interval and a printable
    ``estimate [95% CI]``."""
    rows = [{"test": version, "difference": pair, "metric": metric, **{k: d[metric][k] for k in ("value", "ci_low",
                                                                                                    "ci_high")},
             "estimate [95% CI]": M.format_ci(d[metric], signed=True)}
            for version, boot in paired.items() for pair, d in boot["differences"].items() for metric in metrics]
    return pd.DataFrame(rows)


def attention_table(attention_diff: dict[str, dict[str, dict[str, float]]]) -> pd.DataFrame:
    """:attr:`ShortcutRun.attention_diff` as a table: one row per difference and map metric."""
    return pd.DataFrame([{"difference": pair, "metric": metric, "value": d["value"], "ci_low": d["ci_low"],
                          "ci_high": d["ci_high"], "n": d.get("n")}
                         for pair, by_metric in attention_diff.items() for metric, d in by_metric.items()])


def run_shortcut_experiment(cfg: Config, bundle: DataBundle, control_path: Any, spec: MarkerSpec = MarkerSpec(),
                            n_maps: int = 40, device: str = "auto", progress: bool = True) -> ShortcutRun:
    """Train (or reuse) the confounded and remedy models with the series' own stage functions, test the three
    models on the three test versions, and measure where their maps look (see the module docstring)."""
    dev = resolve_device(device)
    worlds = {"control": bundle, "confounded": confounded_bundle(bundle, "correlated", cfg["seed"], spec)}
    worlds["remedy"] = cleaned_bundle(worlds["confounded"])
    paths: dict[str, Any] = {"control": control_path}
    for name, tag in TAGS.items():
        paths[name] = ensure_evaluation(cfg, worlds[name], device, progress, tag=tag)
    models = {name: load_model(p, dev) for name, p in paths.items()}
    thresholds = {name: operating_threshold(meta, paths[name])[0] for name, (_, meta) in models.items()}
    tests, regions = {}, {}
    for k, version in enumerate(TESTS):
        tests[version], regions[version], _ = confounded_split(bundle["test"], TEST_MODES[version],
                                                               cfg["seed"] + 100 + k, spec)
    seen = {v: {"control": t, "confounded": t, "remedy": cleaned_split(t)} for v, t in tests.items()}
    probs = {name: {v: predict_proba(model, seen[v][name].images, meta, device=dev) for v in TESTS}
             for name, (model, meta) in models.items()}
    val_probs = {name: predict_proba(model, worlds[name]["val"].images, meta, device=dev)
                 for name, (model, meta) in models.items()}
    paired = {v: M.operating_point_bootstrap(bundle["val"].labels, {n: val_probs[n] for n in _PAIRING},
                                             bundle["test"].labels, {n: probs[n][v] for n in _PAIRING},
                                             cfg["target_recall"],
                                             bundle["val"].patient_ids, bundle["test"].patient_ids,
                                             n_boot=int(cfg["n_bootstrap"]), seed=cfg["seed"]) for v in TESTS}
    explanation = main_explanation(control_path, models["control"][0])  # the shipped model's, as recorded now
    run = ShortcutRun(spec, explanation, paths, thresholds, tests, seen, regions, probs, val_probs, paired,
                      shortcut_table(paired))
    measure_attention(run, {k: m for k, (m, _) in models.items()}, models["control"][1], bundle["test"], n_maps,
                      seed=cfg["seed"], n_boot=int(cfg["n_bootstrap"]))
    return run


def measure_attention(run: ShortcutRun, models: dict[str, torch.nn.Module], meta: dict[str, Any], test: Split,
                      n_maps: int = 40, seed: int = 0, n_boot: int = 1000) -> None:
    """Maps of every model — all read with ``run.explanation``, explaining PNEUMONIA — of up to ``n_maps`` images
    of the **decorrelated** test that carry a marker (half PNEUMONIA, half NORMAL where possible), and their mass on /
    pointing at the marker and, for pneumonias, the lesion. Fills ``run.map_index``, ``run.maps``, ``run.attention``
    and the patient-paired differences to the control, ``run.attention_diff``."""
    version = "decorrelated"
    marked = run.regions[version].reshape(len(test), -1).any(axis=1)
    rng = np.random.default_rng(seed)
    per_class = []
    for label in (1, 0):
        pool = np.flatnonzero(marked & (test.labels == label))
        per_class.append(rng.permutation(pool))
    k1 = min(len(per_class[0]), max(n_maps - len(per_class[1]), n_maps // 2))
    idx = np.sort(np.r_[per_class[0][:k1], per_class[1][:max(0, n_maps - k1)]]).astype(int)
    run.map_index = idx
    lesions = None if test.lesion_masks is None else test.lesion_masks[idx]
    per_image: dict[str, pd.DataFrame] = {}
    rows = []
    for name, model in models.items():
        x = preprocess(torch.from_numpy(run.seen[version][name].images[idx]), meta["mean"], meta["std"])
        maps, _ = explain(model, x, run.explanation, targets=1) if len(idx) else (np.zeros((0, *test.images.shape[1:])),
                                                                                  None)
        run.maps[name] = maps
        scores = marker_scores(maps, run.regions[version][idx], lesions)
        per_image[name] = scores
        rows.append({"model": name, "images": len(idx), **{c: float(np.nanmean(scores[c])) if scores[c].notna().any()
                                                            else np.nan for c in scores.columns if c != "has_marker"}})
    run.attention = pd.DataFrame(rows)
    groups = test.patient_ids[idx]
    for name in ("confounded", "remedy"):
        a, b = per_image[name], per_image["control"]
        run.attention_diff[f"{name} - control"] = {
            metric: M.paired_difference_ci(a[metric], b[metric], groups, n_boot=n_boot, seed=seed)
            for metric in ("marker_mass", "marker_pointing")}
        if lesions is not None:
            keep = a["lesion_mass"].notna().to_numpy()
            run.attention_diff[f"{name} - control"].update({
                metric: M.paired_difference_ci(a.loc[keep, metric], b.loc[keep, metric], groups[keep], n_boot=n_boot,
                                               seed=seed) for metric in ("lesion_mass", "lesion_near")})


def finder_check(marked_images: np.ndarray, true_regions: np.ndarray, clean_images: np.ndarray) -> dict[str, Any]:
    """How well :func:`utils.data.confounder.find_markers` does where the truth is known: the share of burned-in
    markers it overlaps (``recall``), the share of its finds on marked images that touch no marker
    (``false_finds_share``), and the share of clean images on which it finds anything (``clean_flagged``)."""
    found = find_markers_all(marked_images)
    has = true_regions.reshape(len(true_regions), -1).any(axis=1)
    hit = (found & true_regions).reshape(len(found), -1).any(axis=1)
    blobs = false = 0
    for f, t in zip(found, true_regions):
        lab, n = ndi.label(f)
        blobs += n
        false += sum(not t[lab == j].any() for j in range(1, n + 1))
    clean = find_markers_all(clean_images).reshape(len(clean_images), -1).any(axis=1)
    return {"markers": int(has.sum()), "recall": float(hit[has].mean()) if has.any() else float("nan"),
            "finds": int(blobs), "false_finds_share": float(false / blobs) if blobs else 0.0,
            "clean_images": len(clean_images), "clean_flagged": float(clean.mean()) if len(clean_images) else float("nan")}


def finds_sample(found: np.ndarray, n: int = 18, n_found: int = 12) -> np.ndarray:
    """Indices for a grid that lets a reader judge the heuristic: up to ``n_found`` images with a find, then
    images without one, ``n`` in all, each in its original order."""
    has = np.asarray(found).reshape(len(found), -1).any(axis=1)
    yes = np.flatnonzero(has)[:n_found]
    no = np.flatnonzero(~has)[:max(0, n - len(yes))]
    more = np.flatnonzero(has)[len(yes):len(yes) + max(0, n - len(yes) - len(no))]
    return np.sort(np.r_[yes, no, more]).astype(int)


def real_marker_summary(maps: np.ndarray, marker_masks: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    """Per group (TP, FN, FP…): how many images the heuristic found a marker on, how often the map's peak falls in a
    found marker region, and the median share of the map's mass there (images with a found marker only)."""
    scores = marker_scores(maps, marker_masks)
    groups = np.asarray(groups).astype(str)
    rows = []
    for g in dict.fromkeys(groups):
        sel = groups == g
        s = scores[sel]
        with_marker = s[s["has_marker"]]
        rows.append({"group": g, "images": int(sel.sum()), "with_marker": len(with_marker),
                     "peak_on_marker": int(with_marker["marker_pointing"].sum()) if len(with_marker) else 0,
                     "peak_on_marker_share": float(with_marker["marker_pointing"].mean()) if len(with_marker) else np.nan,
                     "median_mass_on_marker": float(with_marker["marker_mass"].median()) if len(with_marker) else np.nan})
    return pd.DataFrame(rows)


def shortcut_record(run: ShortcutRun, finder: dict[str, Any] | None, real: pd.DataFrame | None,
                    scale: dict[str, Any]) -> dict[str, Any]:
    """What ``assets/shortcut.json`` holds: the marker, the three models' AUC, sensitivity and specificity per test
    version (with CIs and paired differences), the attention measurements, the heuristic's check and the real finds."""
    auc = {m: {v: run.paired[v]["models"][m]["roc_auc"] for v in TESTS} for m in MODELS}
    return {
        "what": "controlled shortcut experiment: a burned-in marker that follows the label in training; control = "
                "clean training, confounded = marked training, remedy = marked training with found markers imputed",
        "scale": scale,
        "marker": asdict(run.spec),
        "explanation": run.explanation["name"],
        "thresholds": run.thresholds,
        "auc": auc,
        "operating_point": {v: {"models": run.paired[v]["models"], "differences": run.paired[v]["differences"],
                                "bootstrap": run.paired[v]["bootstrap"]} for v in TESTS},
        "attention_decorrelated_test": {"images": len(run.map_index),
                                        "per_model": [] if run.attention is None else run.attention.to_dict("records"),
                                        "paired_differences": run.attention_diff},
        "marker_finder": finder,
        "real_data_marker_finds": None if real is None else real.to_dict("records"),
    }


def shortcut_verdict(record: dict[str, Any], min_auc: float = 0.01, min_mass: float = 0.005) -> list[str]:
    """Three sentences computed from :func:`shortcut_record`'s output (or ``assets/shortcut.json``): did the
    confounded model use the marker (its reversed-test AUC against the control's, paired CI), did the explanation
    show it (map mass on the marker, confounded − control, paired CI), and did the remedy hold up (remedy − control
    on the reversed test). A difference counts as *shown* when its 95% interval excludes zero in the stated
    direction **and** the estimate is at least the practical margin (``min_auc`` of AUC, ``min_mass`` of the map's
    mass); an interval that excludes zero around a smaller estimate is reported as detectable but negligible
    (:func:`utils.evaluate.verdicts.difference_verdict`: ``"above"`` / ``"below"`` / ``"within"`` the margin)."""
    def ci(d: dict[str, float]) -> str:
        return M.format_ci(d, signed=True)

    diffs = record["operating_point"]["reversed"]["differences"]
    used = diffs["confounded - control"]["roc_auc"]
    lines = []
    if difference_verdict(used, min_auc) == "below":
        lines.append(f"The confounded model used the marker: on the reversed test its AUC is lower than the "
                     f"control's by {ci(used)} (paired 95% CI).")
    elif interval_side(used) == "below":
        lines.append(f"The confounded model's reversed-test AUC is detectably but negligibly below the control's "
                     f"({ci(used)}, smaller than {min_auc}): no shortcut that matters at this scale.")
    else:
        lines.append(f"No evidence that the confounded model used the marker at this scale: reversed-test AUC, "
                     f"confounded − control {ci(used)} (paired 95% CI includes zero or is positive).")
    att = record["attention_decorrelated_test"]["paired_differences"].get("confounded - control", {})
    mass = att.get("marker_mass")
    if mass is None or difference_verdict(mass, min_mass) == "not measured":
        lines.append("The maps were not measured against the marker (no marked test images were mapped).")
    elif difference_verdict(mass, min_mass) == "above":
        lines.append(f"The explanation showed it: the confounded model's maps put more mass on the marker than the "
                     f"control's, {ci(mass)} (share of map mass, paired 95% CI).")
    elif interval_side(mass) == "above":
        lines.append(f"The maps' mass on the marker differs detectably but negligibly between the confounded model "
                     f"and the control ({ci(mass)} of the map, below {min_mass}): the explanation would not have "
                     f"told a reader anything.")
    else:
        lines.append(f"The explanation did not separate the two models on the marker: map mass on the marker, "
                     f"confounded − control {ci(mass)} (paired 95% CI includes zero or is negative).")
    remedy = diffs["remedy - control"]["roc_auc"]
    word = difference_verdict(remedy, min_auc)
    if word in ("above", "below"):
        lines.append(f"The remedy's reversed-test AUC is {word} the control's: {ci(remedy)}.")
    else:
        lines.append(f"The remedy matches the control on the reversed test within the noise or the margin "
                     f"({min_auc}): AUC {ci(remedy)}.")
    return lines
