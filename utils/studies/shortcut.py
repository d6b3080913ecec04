"""Shortcut learning, measured (notebook 08): does the explanation catch a model that reads a marker?

The experiment, on the phantoms, where everything is known — three models trained in **one world** (the same
images, start and recipe: :class:`ShortcutWorld`, :func:`world_setup`) that differ only in what their training
images carry:

* **control** — clean images;
* **confounded** — the same images with a burned-in marker that follows the label
  (:func:`utils.data.confounder.confounded_bundle`);
* **remedy** — the confounded images with every marker the heuristic finds imputed away
  (:func:`remove_markers`), and the same cleaning at test time.

A shortcut is learned when it is easier than the pathology. The demo's shipped model starts from a backbone that
already detects phantom lesions, so in its world nothing pushes a model to cheat; the demo's world
(:data:`DEMO_WORLD`) is therefore small phantoms from a random start, where a bright letter in a corner is the
cheaper signal — as it was for the real-data run from a random start. On real data the world is the loaded data and
the shipped model is the control.

Each model is tested on three versions of the same clean test images: markers that follow the label as in training
(``in-distribution``), markers independent of the label (``decorrelated``) and the correlation reversed
(``reversed``); one paired bootstrap over every (model, version) gives the differences between models and between
versions of one model (:func:`paired_bootstrap`). The maps are read on the same images with and without the marker,
so that only the marker can explain a difference (:func:`marker_attention`); :func:`dose_response` repeats the
confounded model at other strengths of the confounder.

On real data (no masks, no known confounder) the same question is asked of the shipped model with the marker
heuristic: how often does the map's peak, and how much of its mass, fall on a marker or burned-in text
(:func:`real_marker_summary`)?
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi

from utils.artifacts import operating_threshold
from utils.config import Config
from utils.data import load_data
from utils.data.bundle import SOURCE_NAMES, DataBundle, Split, fingerprint, pixel_hashes
from utils.data.confounder import MarkerSpec, confounded_bundle, confounded_split, find_markers_all
from utils.errors import UserError
from utils.evaluate import metrics as M
from utils.evaluate.verdicts import difference_verdict, interval_side
from utils.explain import localisation as L
from utils.explain.maps import explain, main_explanation
from utils.explain.road import linear_impute
from utils.explain.spec import without_shifts
from utils.stages import ensure_evaluation
from utils.train.model import load_model, predict_proba, preprocess, resolve_device

MODELS = ("control", "confounded", "remedy")
_PAIRING = ("confounded", "remedy", "control")  # bootstrap order: the paired differences read "confounded - control"…
TESTS = ("in-distribution", "decorrelated", "reversed")
TEST_MODES = {"in-distribution": "correlated", "decorrelated": "decorrelated", "reversed": "reversed"}
TAGS = {"control": "shortcut_control", "confounded": "shortcut_confounded", "remedy": "shortcut_remedy"}


def marker_scores(maps: np.ndarray, marker_masks: np.ndarray, lesion_masks: np.ndarray | None = None,
                  tolerance_frac: float = L.TOLERANCE_FRAC, skip_empty: bool = True) -> pd.DataFrame:
    """Per image: the map's mass on the marker region (``marker_mass``) and whether its peak points at it
    (``marker_pointing``, within ``tolerance_frac`` of the side), and — with lesion masks — the same for the lesion
    (``lesion_mass``, ``lesion_near``). Images without a marker get NaN marker scores. ``no_map``: the map is empty
    or constant (:func:`utils.explain.localisation.is_empty_map`); with ``skip_empty`` (the default, as every scorer
    of :mod:`utils.explain.localisation`) it gets NaN scores — counted, never read as a map that looks nowhere near
    the marker; ``skip_empty=False`` scores it as a miss with mass 0 or the uniform share (the series' first rule)."""
    maps, marker_masks = np.asarray(maps), np.asarray(marker_masks, dtype=bool)
    has = np.asarray(marker_masks.reshape(len(marker_masks), -1).any(axis=1))
    rows = []
    for k, (cam, mark) in enumerate(zip(maps, marker_masks)):
        row = {"has_marker": bool(has[k]),
               "marker_mass": L.energy_inside(cam, mark, skip_empty) if has[k] else np.nan,
               "marker_pointing": float(L.near_pointing(cam, mark, tolerance_frac, skip_empty)) if has[k] else np.nan}
        if lesion_masks is not None:
            les = np.asarray(lesion_masks[k], dtype=bool)
            row.update(lesion_mass=L.energy_inside(cam, les, skip_empty) if les.any() else np.nan,
                       lesion_near=float(L.near_pointing(cam, les, tolerance_frac, skip_empty)) if les.any() else np.nan)
        row["no_map"] = L.is_empty_map(cam)
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


def remedy_view(images: np.ndarray) -> np.ndarray:
    """What the remedy is given: ``images`` with every marker the heuristic finds imputed away."""
    return remove_markers(images, find_markers_all(images))


def cleaned_split(split: Split) -> Split:
    """``split`` with every marker the heuristic finds imputed away (the remedy's preprocessing)."""
    images = remedy_view(split.images)
    return replace(split, images=images, hashes=pixel_hashes(images))


def cleaned_bundle(bundle: DataBundle) -> DataBundle:
    """``bundle`` with :func:`cleaned_split` applied to train and validation."""
    splits = {**bundle.splits, **{s: cleaned_split(bundle[s]) for s in ("train", "val")}}
    return replace(bundle, splits=splits, fingerprint=fingerprint(splits),
                   notes=[*bundle.notes, "markers found by utils.data.confounder.find_markers imputed away"])


@dataclass(frozen=True)
class ShortcutWorld:
    """Where notebook 08 trains its three models — one world, one initialisation, one recipe for all three.

    ``None`` keeps what the notebook loaded: its data, image size, initial weights and epochs (then the shipped
    model *is* the control, trained on the same images with the same recipe). On the phantoms the demo builds a
    world of its own (:data:`DEMO_WORLD`): the shipped backbone already detects phantom lesions before it sees a
    marker, so nothing there pushes a model to cheat — the cheap signal has to be the marker, as it was on real
    films from a random start. ``image_size`` is never above the notebook's; ``epochs`` apply unless the notebook's
    epochs were set (cell or environment: then those); ``phantom`` overrides the profile's phantom settings
    (``difficulty``, patients) and ``phase2`` its phase-2 settings (e.g. ``step_size``).
    """

    image_size: int | None = None
    weights: str | None = None
    epochs: tuple[int, int] | None = None
    phantom: dict[str, Any] | None = None
    phase2: dict[str, Any] | None = None

    def describe(self, cfg: Config, started: str | None = None) -> str:
        """One line: image size, start, epochs and lesions of the world under ``cfg``. ``started``: how the models
        were actually initialised (a checkpoint's ``weights``, e.g. a random start where ImageNet weights could not
        be fetched); without it, what the world asks for."""
        wcfg = self.settings(cfg)
        start = started or {"none": "a random start", "phantom": "the phantom-pretrained backbone",
                            "imagenet": "ImageNet weights where they can be fetched (else a random start; the "
                                        "checkpoints say which)"}.get(wcfg["weights"], wcfg["weights"])
        p2 = wcfg["phase2"]
        held = f" (phase-2 rate held for {p2['step_size']})" if self.phase2 and "step_size" in self.phase2 else ""
        lesions = f", {self.phantom['difficulty']} phantom lesions" if self.phantom and "difficulty" in self.phantom \
            else ""
        return (f"{wcfg['image_size']} px, {start}, {wcfg['phase1']['epochs']} + {p2['epochs']} epochs{held}"
                f"{lesions}")

    def settings(self, cfg: Config) -> Config:
        """``cfg`` with this world's settings (the notebook's where a field is ``None``; see the class)."""
        size = min(self.image_size or int(cfg["image_size"]), int(cfg["image_size"]))
        set_by = cfg.knobs.get("set_by", {})
        chosen = any(k in set_by for k in ("epochs_phase1", "epochs_phase2"))
        e1, e2 = (self.epochs if self.epochs and not chosen else
                  (int(cfg["phase1"]["epochs"]), int(cfg["phase2"]["epochs"])))
        wcfg = cfg.variant(image_size=size, weights=self.weights or str(cfg["weights"]), phase1={"epochs": e1},
                           phase2={**(self.phase2 or {}), "epochs": e2},
                           phantom={**cfg["phantom"], **(self.phantom or {})})
        wcfg.knobs.update(image_size=size, epochs_phase1=e1, epochs_phase2=e2)
        return wcfg


#: The demo's world: 64 px phantoms with ``easy`` lesions (large, dense, no hard cases), a random start, 3 + 5 epochs
#: with the from-scratch rate held for 4 — four times cheaper per image than the series' 128 px. From a random start
#: a network needs more than the 3 fine-tuning epochs of the series to learn the lesions at all.
DEMO_WORLD = ShortcutWorld(image_size=64, weights="none", epochs=(3, 5), phantom={"difficulty": "easy"},
                           phase2={"step_size": 4})


def default_world(source: str) -> ShortcutWorld:
    """Notebook 08's world for a data source: :data:`DEMO_WORLD` on the phantoms, the loaded run elsewhere."""
    return DEMO_WORLD if source == "phantom" else ShortcutWorld()


def world_from_knobs(source: str, image_size: int | None = None, start: str | None = None,
                     lesions: str | None = None) -> ShortcutWorld:
    """The world of notebook 08's parameters cell: on the phantoms :data:`DEMO_WORLD` with its image size, start
    (``"none"``, ``"phantom"``…) and lesion difficulty replaced where given; elsewhere the loaded run."""
    world = default_world(source)
    if source != "phantom":
        return world
    phantom = {**(world.phantom or {}), **({"difficulty": lesions} if lesions else {})}
    return replace(world, image_size=image_size or world.image_size, weights=start or world.weights, phantom=phantom)


def world_setup(cfg: Config, bundle: DataBundle, world: ShortcutWorld | None = None
                ) -> tuple[Config, DataBundle, bool]:
    """``(config, clean bundle, is_shipped_world)`` of ``world`` (None: :func:`default_world`): ``is_shipped_world``
    when nothing differs from the loaded run, so the shipped model can serve as the control. The phantom world gets
    its own folder (``data/shortcut_phantom_chest_xray``); the main phantoms are never rewritten."""
    wcfg = (world or default_world(cfg.source)).settings(cfg)
    keys = ("image_size", "weights", "phase1", "phase2") + (("phantom",) if cfg.source == "phantom" else ())
    if all(wcfg[k] == cfg[k] for k in keys):
        return cfg, bundle, True
    wcfg.knobs["world"] = "notebook 08's shortcut world"
    if cfg.source != "phantom" and wcfg["image_size"] == bundle.image_size:
        return wcfg, bundle, False
    return wcfg, load_data(wcfg, progress=False, tag="shortcut" if cfg.source == "phantom" else None), False


def confounded_world(cfg: Config, bundle: DataBundle, spec: MarkerSpec = MarkerSpec(),
                     world: ShortcutWorld | None = None) -> tuple[Config, DataBundle]:
    """``(config, bundle)`` the confounded model is trained on — exactly as :func:`run_shortcut_experiment` builds
    it — so ``checkpoint_state(config.path("model", TAGS["confounded"]), bundle)`` says whether the model on disk
    is current (notebook 10 reads it without re-running 08)."""
    wcfg, clean, _ = world_setup(cfg, bundle, world)
    return wcfg, confounded_bundle(clean, "correlated", cfg["seed"], spec)


def marked_test(cfg: Config, bundle: DataBundle, version: str = "decorrelated", spec: MarkerSpec = MarkerSpec(),
                world: ShortcutWorld | None = None, clean_test: Split | None = None) -> tuple[Split, np.ndarray]:
    """``(marked test split, true marker regions)`` of one test ``version`` (:data:`TESTS`), as notebook 08 builds
    it; ``clean_test``: the world's clean test split when it is already loaded."""
    if version not in TESTS:
        raise ValueError(f"unknown test version {version!r}: choose one of {', '.join(TESTS)}")
    test = clean_test if clean_test is not None else world_setup(cfg, bundle, world)[1]["test"]
    split, regions, _ = confounded_split(test, TEST_MODES[version], cfg["seed"] + 100 + TESTS.index(version), spec)
    return split, regions


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
    paired: dict[str, dict[str, Any]]  # test version -> the three models, paired (differences between models)
    table: pd.DataFrame  # model × test × metric: value and 95% CI (threshold re-chosen in every resample)
    shift: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> differences between test versions
    world: str = ""  # one line: where the three models were trained
    clean_test: Split | None = None  # the test images without any marker (the world's)
    map_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))  # decorrelated test images mapped
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # model -> maps of those images (decorrelated version)
    maps_clean: dict[str, np.ndarray] = field(default_factory=dict)  # model -> maps of the same images, no marker
    attention: pd.DataFrame | None = None  # per model: marker mass with / without the marker, pointing, lesion
    attention_diff: dict[str, Any] = field(default_factory=dict)  # "confounded - control"… -> metric -> paired CI
    uniform_share: float = float("nan")  # the share of a uniform map on the marker region (mean over mapped images)


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


def version_table(shift: dict[str, dict[str, Any]], metrics: tuple[str, ...] = ("roc_auc", "sensitivity",
                                                                                 "specificity")) -> pd.DataFrame:
    """Each model's change between test versions (``in-distribution - reversed``…), paired on the same patients:
    value, interval and a printable ``estimate [95% CI]``."""
    rows = [{"model": model, "difference": pair, "metric": metric,
             **{k: d[metric][k] for k in ("value", "ci_low", "ci_high")},
             "estimate [95% CI]": M.format_ci(d[metric], signed=True)}
            for model, diffs in shift.items() for pair, d in diffs.items() for metric in metrics]
    return pd.DataFrame(rows)


def paired_bootstrap(y_val: np.ndarray, val_probs: dict[str, np.ndarray], y_test: np.ndarray,
                     probs: dict[str, dict[str, np.ndarray]], target_recall: float, groups_val: np.ndarray,
                     groups_test: np.ndarray, n_boot: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """One :func:`utils.evaluate.metrics.operating_point_bootstrap` over every (model, test version): all numbers
    share the same resamples of patients, so differences between models on one version (``paired[version]``) and
    between versions for one model (``shift[model]``, e.g. ``in-distribution - reversed``) are both paired."""
    key = lambda m, v: f"{m} @ {v}"  # noqa: E731
    keys = [(m, v) for v in TESTS for m in _PAIRING]
    boot = M.operating_point_bootstrap(y_val, {key(m, v): val_probs[m] for m, v in keys}, y_test,
                                       {key(m, v): probs[m][v] for m, v in keys}, target_recall, groups_val,
                                       groups_test, n_boot=n_boot, seed=seed)
    d = boot["differences"]
    paired = {v: {"models": {m: boot["models"][key(m, v)] for m in _PAIRING},
                  "differences": {f"{a} - {b}": d[f"{key(a, v)} - {key(b, v)}"]
                                  for i, a in enumerate(_PAIRING) for b in _PAIRING[i + 1:]},
                  "bootstrap": boot["bootstrap"]} for v in TESTS}
    shift = {m: {f"{a} - {b}": d[f"{key(m, a)} - {key(m, b)}"] for a, b in
                 (("in-distribution", "decorrelated"), ("in-distribution", "reversed"))} for m in MODELS}
    return paired, shift


def run_shortcut_experiment(cfg: Config, bundle: DataBundle, control_path: Any, spec: MarkerSpec = MarkerSpec(),
                            n_maps: int = 40, device: str = "auto", progress: bool = True,
                            world: ShortcutWorld | None = None) -> ShortcutRun:
    """Train (or reuse) the three models of ``world`` (:func:`world_setup`; None: :func:`default_world`) with the
    series' own stage functions, test them on the three test versions, and measure where their maps look with and
    without the marker (see the module docstring). ``control_path`` (the shipped model) is the control only when
    the world is the shipped one; its explanation is the one every map here is read with."""
    dev = resolve_device(device)
    wcfg, clean, shipped_world = world_setup(cfg, bundle, world)
    worlds = {"control": clean, "confounded": confounded_bundle(clean, "correlated", cfg["seed"], spec)}
    worlds["remedy"] = cleaned_bundle(worlds["confounded"])
    paths: dict[str, Any] = {"control": control_path} if shipped_world else {}
    for name in MODELS:
        if name not in paths:
            paths[name] = ensure_evaluation(wcfg, worlds[name], device, progress, tag=TAGS[name])
    models = {name: load_model(paths[name], dev) for name in MODELS}
    thresholds = {name: operating_threshold(meta, paths[name])[0] for name, (_, meta) in models.items()}
    tests, regions = {}, {}
    for version in TESTS:
        tests[version], regions[version] = marked_test(cfg, bundle, version, spec, clean_test=clean["test"])
    seen = {v: {"control": t, "confounded": t, "remedy": cleaned_split(t)} for v, t in tests.items()}
    probs = {name: {v: predict_proba(model, seen[v][name].images, meta, device=dev) for v in TESTS}
             for name, (model, meta) in models.items()}
    val_probs = {name: predict_proba(model, worlds[name]["val"].images, meta, device=dev)
                 for name, (model, meta) in models.items()}
    paired, shift = paired_bootstrap(clean["val"].labels, val_probs, clean["test"].labels, probs,
                                     cfg["target_recall"], clean["val"].patient_ids, clean["test"].patient_ids,
                                     int(cfg["n_bootstrap"]), cfg["seed"])
    # the shipped model's explanation, read now, on the image as it is (spec.without_shifts says why)
    explanation = without_shifts(main_explanation(control_path, models["control"][0]))
    run = ShortcutRun(spec, explanation, paths, thresholds, tests, seen, regions, probs, val_probs, paired,
                      shortcut_table(paired), shift,
                      world=(world or default_world(cfg.source)).describe(cfg, models["confounded"][1].get("weights")),
                      clean_test=clean["test"])
    measure_attention(run, {k: m for k, (m, _) in models.items()}, models["control"][1], n_maps,
                      seed=cfg["seed"], n_boot=int(cfg["n_bootstrap"]))
    return run


#: The confounder strengths notebook 08 trains besides its own on phantoms (a model each, seconds on the demo).
PHANTOM_DOSE_LEVELS: tuple[float, ...] = (0.5, 0.7)


def dose_levels(source: str, levels: Sequence[float] | None = None) -> tuple[float, ...]:
    """The levels :func:`dose_response` trains: ``levels`` as given (``()`` none), or by default
    :data:`PHANTOM_DOSE_LEVELS` on phantoms and none on real data, where each level is another model trained on the
    whole training split (minutes to hours)."""
    if levels is None:
        return PHANTOM_DOSE_LEVELS if source == "phantom" else ()
    bad = [q for q in levels if not 0.0 <= float(q) <= 1.0]
    if bad:
        raise UserError(f"dose levels are probabilities P(marker | PNEUMONIA) in [0, 1], got {bad}")
    return tuple(float(q) for q in levels)


def dose_response(cfg: Config, bundle: DataBundle, run: ShortcutRun, levels: tuple[float, ...] = (0.5, 0.7, 1.0),
                  world: ShortcutWorld | None = None, device: str = "auto", progress: bool = True,
                  n_boot: int | None = None) -> pd.DataFrame:
    """The same experiment at other strengths of the confounder: for each ``level`` q a confounded model trained
    (same world, recipe and seed) with P(marker | PNEUMONIA) = q and P(marker | NORMAL) = 1 − q, tested on the run's
    decorrelated and reversed test images. q = 0.5 is no confounder at all (markers everywhere, carrying nothing);
    ``run``'s own confounded model and control are added as they are. Long table: model, level, test, AUC and its
    95% CI (patients resampled)."""
    wcfg, clean, _ = world_setup(cfg, bundle, world)
    dev = resolve_device(device)
    n_boot = int(cfg["n_bootstrap"]) if n_boot is None else n_boot
    test = clean["test"]
    probs: dict[tuple[str, float], dict[str, np.ndarray]] = {}
    for q in levels:
        spec = replace(run.spec, p_marker_pneumonia=float(q), p_marker_normal=float(round(1 - q, 6)))
        if spec == run.spec:  # the run's own confounded model, added below
            continue
        path = ensure_evaluation(wcfg, confounded_bundle(clean, "correlated", cfg["seed"], spec), device, progress,
                                 tag=f"{TAGS['confounded']}_q{round(100 * q):03d}")
        model, meta = load_model(path, dev)
        probs[("confounded", q)] = {v: predict_proba(model, run.seen[v]["confounded"].images, meta, device=dev)
                                    for v in ("decorrelated", "reversed")}
    probs[("confounded", run.spec.p_marker_pneumonia)] = run.probs["confounded"]
    probs[("control", float("nan"))] = run.probs["control"]
    rows = []
    for (name, q), by_test in probs.items():
        for v in ("decorrelated", "reversed"):
            auc = M.evaluate_predictions(test.labels, by_test[v], 0.5, test.patient_ids, n_boot=n_boot,
                                         seed=cfg["seed"])["metrics"]["roc_auc"]  # threshold-free: 0.5 is unused
            rows.append({"model": name, "p_marker_pneumonia": q, "test": v, "roc_auc": auc["value"],
                         "ci_low": auc["ci_low"], "ci_high": auc["ci_high"]})
    return pd.DataFrame(rows).sort_values(["model", "p_marker_pneumonia", "test"], ignore_index=True)


def _mapped_images(regions: np.ndarray, labels: np.ndarray, n_maps: int, seed: int) -> np.ndarray:
    """Up to ``n_maps`` images that carry a marker, half PNEUMONIA and half NORMAL where possible (sorted)."""
    marked = regions.reshape(len(regions), -1).any(axis=1)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(marked & (labels == label))) for label in (1, 0)]
    k1 = min(len(per_class[0]), max(n_maps - len(per_class[1]), n_maps // 2))
    return np.sort(np.r_[per_class[0][:k1], per_class[1][:max(0, n_maps - k1)]]).astype(int)


def measure_attention(run: ShortcutRun, models: dict[str, torch.nn.Module], meta: dict[str, Any],
                      n_maps: int = 40, seed: int = 0, n_boot: int = 1000) -> None:
    """Every model's map — all read with ``run.explanation``, explaining PNEUMONIA — of up to ``n_maps`` images of
    the **decorrelated** test that carry a marker (half PNEUMONIA, half NORMAL), **and of the same images without
    the marker** (each as that model is given it: the remedy's cleaned), scored by :func:`marker_attention`. Fills
    ``run.map_index``, ``run.maps``, ``run.maps_clean``, ``run.attention``, ``run.attention_diff`` and
    ``run.uniform_share``."""
    version, test = "decorrelated", run.clean_test
    if test is None:
        raise ValueError("run.clean_test is missing: build the run with run_shortcut_experiment")
    idx = _mapped_images(run.regions[version], test.labels, n_maps, seed)
    run.map_index = idx
    without = {"control": test.images[idx], "confounded": test.images[idx],
               "remedy": remedy_view(test.images[idx])}
    for name, model in models.items():
        for store, images in ((run.maps, run.seen[version][name].images[idx]), (run.maps_clean, without[name])):
            x = preprocess(torch.from_numpy(np.ascontiguousarray(images)), meta["mean"], meta["std"])
            store[name] = explain(model, x, run.explanation, targets=1)[0] if len(idx) else \
                np.zeros((0, *test.images.shape[1:]))
    run.attention, run.attention_diff, run.uniform_share = marker_attention(
        run.maps, run.maps_clean, run.regions[version][idx], test.patient_ids[idx],
        None if test.lesion_masks is None else test.lesion_masks[idx], n_boot=n_boot, seed=seed)


def map_examples(run: ShortcutRun, n_pneumonia: int = 3, n_normal: int = 2) -> dict[str, Any]:
    """The arguments of :func:`utils.viz.shortcut.plot_shortcut_maps` for a few mapped images (PNEUMONIA first, in
    ``run.map_index`` order): each model's map on the image it was given, and the confounded model's on the same
    image without the marker (column ``"confounded, no marker"``). Titles: the image, its class and P(PNEUMONIA)
    of control / confounded / remedy on the decorrelated test."""
    idx, test = run.map_index, run.clean_test
    if test is None:
        raise ValueError("run.clean_test is missing: build the run with run_shortcut_experiment")
    show = np.r_[idx[test.labels[idx] == 1][:n_pneumonia], idx[test.labels[idx] == 0][:n_normal]].astype(int)
    pos = np.searchsorted(idx, show)
    titles = [f"{test.ids[i]}\n{'PNEUMONIA' if test.labels[i] else 'NORMAL'} · p = "
              + " / ".join(f"{run.probs[m]['decorrelated'][i]:.2f}" for m in MODELS) for i in show]
    columns = {"control": "control", "confounded": "confounded", "confounded, no marker": "confounded",
               "remedy": "remedy"}
    clean = {c: c.endswith("no marker") for c in columns}
    return {"images": {c: test.images[show] if clean[c] else run.seen["decorrelated"][m].images[show]
                       for c, m in columns.items()},
            "maps": {c: (run.maps_clean[m] if clean[c] else run.maps[m])[pos] for c, m in columns.items()},
            "regions": run.regions["decorrelated"][show], "titles": titles,
            "lesion_masks": None if test.lesion_masks is None else test.lesion_masks[show]}


def marker_attention(maps: dict[str, np.ndarray], maps_without: dict[str, np.ndarray], regions: np.ndarray,
                     groups: np.ndarray, lesion_masks: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0
                     ) -> tuple[pd.DataFrame, dict[str, dict[str, dict[str, float]]], float]:
    """Where the maps look, measured so that only the marker can explain a difference.

    ``maps[model]`` are maps of images that carry a marker in ``regions``; ``maps_without[model]`` the same model's
    maps of the same images without it. Per image: the share of the map's mass on the marker region with the marker
    and without it (the same region, now empty), their difference — the mass the marker *drew* — and whether the
    peak points at it. Returns ``(per-model means, paired differences, uniform share)``: the differences are each
    model with − without the marker, and between models (``"confounded - control"``…, paired by image, patients
    resampled) the drawn mass and the pointing — overall map shape cancels because each model is first compared
    with itself. The uniform share — the region's share of the image, what a map that looks nowhere in particular
    puts there — is the margin a difference must clear to be something a reader could see."""
    per_image: dict[str, pd.DataFrame] = {}
    for name in maps:
        with_ = marker_scores(maps[name], regions, lesion_masks)
        without = marker_scores(maps_without[name], regions)
        scores = pd.DataFrame({"no_map": with_["no_map"].astype(float), "no_map_without": without["no_map"].astype(float),
                               "marker_mass": with_["marker_mass"], "marker_mass_without": without["marker_mass"],
                               "marker_drawn": with_["marker_mass"] - without["marker_mass"],
                               "marker_pointing": with_["marker_pointing"],
                               "marker_pointing_without": without["marker_pointing"]})
        if lesion_masks is not None:
            scores["lesion_mass"], scores["lesion_near"] = with_["lesion_mass"], with_["lesion_near"]
        per_image[name] = scores
    table = pd.DataFrame([{"model": name, "images": len(s),
                           **{c: (int(s[c].sum()) if c.startswith("no_map") else
                                  float(np.nanmean(s[c])) if s[c].notna().any() else np.nan) for c in s.columns}}
                          for name, s in per_image.items()])
    groups = np.asarray(groups)

    def paired(a: pd.Series, b: pd.Series) -> dict[str, float]:  # images where both maps exist ("no map": left out)
        keep = (a.notna() & b.notna()).to_numpy()
        return M.paired_difference_ci(a[keep], b[keep], groups[keep], n_boot=n_boot, seed=seed)

    diffs: dict[str, dict[str, dict[str, float]]] = {}
    for name, s in per_image.items():
        diffs[f"{name}: with - without marker"] = {metric: paired(s[metric], s[f"{metric}_without"])
                                                   for metric in ("marker_mass", "marker_pointing")}
    for a, b in (("confounded", "control"), ("confounded", "remedy"), ("remedy", "control")):
        if a in per_image and b in per_image:
            diffs[f"{a} - {b}"] = {metric: paired(per_image[a][metric], per_image[b][metric])
                                   for metric in ("marker_drawn", "marker_pointing", "lesion_mass", "lesion_near")
                                   if metric in per_image[a]}
    regions = np.asarray(regions, dtype=bool)
    uniform = float(regions.reshape(len(regions), -1).mean(axis=1).mean()) if len(regions) else float("nan")
    return table, diffs, uniform


#: :func:`marker_map_verdict`'s answers, in the order a reader meets them.
MAP_VERDICTS = ("shown", "own maps only", "below the uniform share", "not shown", "not measured")


def marker_map_verdict(diffs: dict[str, dict[str, dict[str, float]]], uniform: float) -> str:
    """Did the maps show the shortcut? One rule for notebooks 08 and 10, read from :func:`marker_attention`'s
    paired differences. The confounded model's *drawn* mass (the same image with − without the marker) is compared
    with every other model's (``"confounded - control"``, ``"confounded - remedy"``, those measured), each read by
    :func:`~utils.evaluate.verdicts.difference_verdict` with the uniform map's share of the marker as the margin:

    * ``"shown"`` — every comparison above the margin;
    * ``"own maps only"`` — the confounded model's own maps moved by more than the margin, but a model to compare
      with gave no map;
    * ``"below the uniform share"`` — every comparison's interval above zero, not every estimate at the margin:
      detectable, not something a reader would see;
    * ``"not shown"`` — any other outcome; ``"not measured"`` — no confounded-model map with and without the
      marker, or no other model to compare with.

    A difference over fewer than two images is not measured (one image's bootstrap interval has no width)."""
    def read(d: dict[str, float] | None) -> str:
        if d is None or not _measured(d) or int(d.get("n", 2)) < 2:
            return "not measured"
        return difference_verdict(d, uniform)

    own = read(diffs.get("confounded: with - without marker", {}).get("marker_mass"))
    vs = [d.get("marker_drawn") for k, d in diffs.items() if k.startswith("confounded - ")]
    if own == "not measured" or not np.isfinite(uniform) or not vs:
        return "not measured"
    verdicts = {read(d) for d in vs}
    if verdicts == {"above"}:
        return "shown"
    if "not measured" in verdicts and verdicts <= {"above", "not measured"} and own == "above":
        return "own maps only"
    if all(d is not None and interval_side(d) == "above" for d in vs):
        return "below the uniform share"
    return "not shown"


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
    """Per group (TP, FN, FP…): how many images the heuristic found a marker on, how many of their maps were "no
    map" (empty or constant: counted, not scored), how often the map's peak falls in a found marker region, and the
    median share of the map's mass there (images with a found marker and a map only)."""
    scores = marker_scores(maps, marker_masks)
    groups = np.asarray(groups).astype(str)
    rows = []
    for g in dict.fromkeys(groups):
        sel = groups == g
        with_marker = scores[sel & scores["has_marker"].to_numpy()]
        scored = with_marker[~with_marker["no_map"]]
        rows.append({"group": g, "images": int(sel.sum()), "with_marker": len(with_marker),
                     "no_map": int(with_marker["no_map"].sum()),
                     "peak_on_marker": int(scored["marker_pointing"].sum()) if len(scored) else 0,
                     "peak_on_marker_share": float(scored["marker_pointing"].mean()) if len(scored) else np.nan,
                     "median_mass_on_marker": float(scored["marker_mass"].median()) if len(scored) else np.nan})
    return pd.DataFrame(rows)


def shortcut_record(run: ShortcutRun, finder: dict[str, Any] | None, real: pd.DataFrame | None,
                    scale: dict[str, Any], dose: pd.DataFrame | None = None) -> dict[str, Any]:
    """What ``assets/shortcut.json`` holds: the world and the marker, the three models' AUC, sensitivity and
    specificity per test version (with CIs, paired differences between models and between test versions), the
    attention measurements with and without the marker, the heuristic's check and the real finds."""
    auc = {m: {v: run.paired[v]["models"][m]["roc_auc"] for v in TESTS} for m in MODELS}
    return {
        "what": "controlled shortcut experiment: a burned-in marker that follows the label in training; control = "
                "clean training, confounded = marked training, remedy = marked training with found markers imputed; "
                "all three trained in one world with one recipe",
        "scale": scale,
        "world": run.world,
        "marker": asdict(run.spec),
        "explanation": run.explanation["name"],
        "thresholds": run.thresholds,
        "auc": auc,
        "operating_point": {v: {"models": run.paired[v]["models"], "differences": run.paired[v]["differences"],
                                "bootstrap": run.paired[v]["bootstrap"]} for v in TESTS},
        "version_differences": run.shift,
        "attention_decorrelated_test": {"images": len(run.map_index), "uniform_share": run.uniform_share,
                                        "per_model": [] if run.attention is None else run.attention.to_dict("records"),
                                        "paired_differences": run.attention_diff},
        "dose_response": None if dose is None else dose.to_dict("records"),
        "marker_finder": finder,
        "real_data_marker_finds": None if real is None else real.to_dict("records"),
    }


def compare_records(records: dict[str, dict[str, Any] | None]) -> pd.DataFrame:
    """One row per record and model (confounded, control): the scale, the AUC on each test version and the
    in-distribution − reversed drop — every number read from the records (``None`` records are skipped)."""
    rows = []
    for name, rec in records.items():
        if rec is None:
            continue
        sc = rec.get("scale", {})
        data = SOURCE_NAMES.get(sc.get("data", ""), sc.get("data", "?"))
        where = rec.get("world") or sc.get("world") or (f"{sc.get('image_size', '?')} px, "
                                                        f"{' + '.join(str(e) for e in sc.get('epochs', []))} epochs")
        scale = f"{data}: {where}"
        for model in ("confounded", "control"):
            auc = {v: float(rec["auc"][model][v]["value"]) for v in TESTS}
            rows.append({"run": name, "scale": scale, "model": model, **auc,
                         "in-distribution - reversed": auc["in-distribution"] - auc["reversed"]})
    return pd.DataFrame(rows)


def _negated(d: dict[str, float]) -> dict[str, float]:
    """``b - a`` from ``a - b``: the estimate and the interval, sign flipped."""
    return {"value": -d["value"], "ci_low": -d["ci_high"], "ci_high": -d["ci_low"]}


def _measured(d: dict[str, float] | None) -> bool:
    return d is not None and interval_side(d) != "not measured"


def shortcut_verdict(record: dict[str, Any], min_auc: float = 0.02) -> list[str]:
    """Three sentences computed from :func:`shortcut_record`'s output (or ``assets/shortcut.json``). Each difference
    is read by :func:`utils.evaluate.verdicts.difference_verdict`: *shown* when its 95% interval lies above zero and
    the estimate reaches the margin (``"above"``), *detectable but negligible* when the interval is above zero and
    the estimate is not (``"within"``).

    1. **Did the confounded model use the marker?** Its own AUC, in-distribution − reversed test (the same patients,
       paired 95% CI), beside the control's: *used* when the confounded model's drop is shown with the margin
       ``min_auc`` and the control's is not.
    2. **Did the explanation show it?** The mass the marker *drew* into each model's map (the same image with − without
       the marker), confounded − control and confounded − remedy: *shown* when both are shown with the uniform map's
       share of the marker region as the margin (a map that looks nowhere in particular puts that much there; less
       is not something a reader could see). Marker pointing and the "no map" counts are reported beside it.
    3. **Did the remedy hold up?** Its own in-distribution − reversed drop, and remedy − confounded on the reversed
       test.

    A record of the first design (no ``version_differences``: no model compared with itself across test versions,
    no map on the same image without the marker) gets one sentence saying so: its map test was not specific to the
    marker, and no verdict is read from it.
    """
    if "version_differences" not in record:
        return ["This record is of notebook 08's first design: its maps were not compared on the same images with "
                "and without the marker, so a difference between models could be overall map shape, not attention "
                "to the marker — no verdict is read from it; run notebook 08 again to measure it."]

    def ci(d: dict[str, float]) -> str:
        return M.format_ci(d, signed=True)

    shift = record["version_differences"]
    drop = {m: shift[m]["in-distribution - reversed"]["roc_auc"] for m in MODELS}
    rev = record["operating_point"]["reversed"]["differences"]
    lines = []
    used, control_moved = (difference_verdict(drop[m], min_auc) for m in ("confounded", "control"))
    both = (f"from the in-distribution to the reversed test its AUC fell by {ci(drop['confounded'])}, the control's "
            f"by {ci(drop['control'])} (paired 95% CIs, the same patients)")
    if used == "above" and control_moved != "above":
        lines.append(f"The confounded model used the marker: {both}; on the reversed test it is "
                     f"{ci(rev['confounded - control']['roc_auc'])} AUC against the control.")
    elif used == "above":
        lines.append(f"Both the confounded model and the control lost AUC when the marker was reversed ({both}): the "
                     f"marker itself disturbs a model that never learned it; confounded − control on the reversed "
                     f"test {ci(rev['confounded - control']['roc_auc'])}.")
    elif used == "within" and interval_side(drop["confounded"]) == "above":
        lines.append(f"The confounded model's AUC fell detectably but negligibly (less than {min_auc}) when the "
                     f"marker was reversed ({both}): no shortcut that matters at this scale.")
    else:
        lines.append(f"No evidence that the confounded model used the marker: {both}.")
    att = record["attention_decorrelated_test"]
    diffs, uniform = att["paired_differences"], float(att.get("uniform_share", float("nan")))
    own = diffs.get("confounded: with - without marker", {}).get("marker_mass")
    vs = {b: diffs.get(f"confounded - {b}", {}).get("marker_drawn") for b in ("control", "remedy")}
    per_model = {r["model"]: r for r in att.get("per_model", [])}
    shown = marker_map_verdict(diffs, uniform)
    if shown == "not measured":
        conf = per_model.get("confounded", {})
        counts = (f": the confounded model gave no map (empty or constant) on {int(conf['no_map'])} of "
                  f"{int(conf['images'])} marked images with the marker and on {int(conf['no_map_without'])} of "
                  f"{int(conf['images'])} without it" if all(k in conf for k in ("no_map", "no_map_without", "images"))
                  else "")
        lines.append(f"The maps were not measured against the marker (no marked test image had a confounded-model "
                     f"map with and without the marker){counts}.")
    else:
        point = "; peak on the marker with / without it: " + ", ".join(
            f"{m} {per_model[m]['marker_pointing']:.2f} / {per_model[m]['marker_pointing_without']:.2f}"
            for m in MODELS if m in per_model and np.isfinite(per_model[m]["marker_pointing"]))
        empty = [f"{m} {int(per_model[m]['no_map'])} of {int(per_model[m]['images'])}" for m in MODELS
                 if m in per_model and per_model[m].get("no_map")]
        no_map = f"; no map (empty, left out): {', '.join(empty)}" if empty else ""
        than = " and ".join(f"than the {b}'s by {ci(d)}" if d is not None and _measured(d)
                            else f"not comparable with the {b}'s (no map)" for b, d in vs.items())
        said = (f"adding the marker drew {ci(own)} of the confounded model's map onto it (the same images with − "
                f"without it), more {than}; a uniform map puts {uniform:.3f} there{point}{no_map}")
        if shown == "shown":
            lines.append(f"The explanation showed it: {said}.")
        elif shown == "own maps only":
            lines.append(f"The confounded model's own maps moved to the marker, but not every other model gave a map "
                         f"to compare with: {said}.")
        elif shown == "below the uniform share":
            lines.append(f"The maps moved to the marker detectably but by less than a uniform map's share of its "
                         f"region ({uniform:.3f}) — not something a reader would see: {said}.")
        else:
            lines.append(f"The explanation did not single out the confounded model's use of the marker: {said}.")
    fixed = difference_verdict(drop["remedy"], min_auc) != "above"
    gain = _negated(rev["confounded - remedy"]["roc_auc"])  # remedy - confounded
    text = (f"its AUC fell by {ci(drop['remedy'])} from the in-distribution to the reversed test; on the reversed "
            f"test it is {ci(gain)} against the confounded model and {ci(rev['remedy - control']['roc_auc'])} "
            f"against the control")
    if fixed and interval_side(gain) == "above":
        lines.append(f"The remedy recovered: {text}.")
    elif fixed:
        lines.append(f"The remedy lost no AUC to the reversed marker, but is not measurably better than the "
                     f"confounded model there: {text}.")
    else:
        lines.append(f"The remedy did not remove the shortcut: {text}.")
    return lines
