"""Notebook 05's review of the chosen map, one call per section: every map here is the shipped model's map as its
checkpoint records it *now* (:func:`utils.explain.maps.main_maps` with the checkpoint's path), so the gallery, the
method table and the outside-lung table show the explanation :func:`utils.explain.choice.choose_and_record` chose —
not a spec loaded before the choice was written.

* :func:`load_review` — the shipped model, its threshold, the test predictions and the detected pneumonias;
* :func:`oracle_table` — the hand-written weightings against ``pytorch-grad-cam``, per method and layer;
* :func:`gallery` — correctly classified test images of both classes (seeded), each explained for its true class;
* :func:`anchoring` — where a layer's cells sit on the image, where the library's upsampling draws them, and what
  the difference does to the chosen map's peaks on the test true positives;
* :func:`sanity_check` — the randomisation check against its reference level
  (:func:`utils.explain.sanity.randomisation_check`), |Spearman ρ| and SSIM;
* :func:`road_check` — ROAD in both orders, in logit margin, against another image's map, with the NORMAL images
  as controls (:func:`utils.explain.road.road_test`);
* :func:`method_maps` — the chosen map beside ``pytorch-grad-cam``'s methods on the chosen layer;
* :func:`outside_lung` — the share of each PNEUMONIA map outside the lungs, test true positives and false
  negatives, against the estimated and (phantoms) the true lung fields;
* :func:`verdict_sentences`, :func:`road_setting`, :func:`record`, :func:`record_line` — the verdicts as sentences,
  and all of it into the ``localisation`` section of ``assets/metrics.json`` (the README's results block reads the
  sentences from there).

The checks and their rules are not re-implemented here: every verdict comes from the series' one rule
(:func:`utils.evaluate.verdicts.difference_verdict`) through the check that owns it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi
from torch import nn

from utils.artifacts import check_predictions_match, operating_threshold, read_predictions
from utils.data.bundle import DataBundle, Split
from utils.errors import UserError
from utils.evaluate.metrics import format_ci, outcome_groups, paired_difference_ci
from utils.evaluate.verdicts import empty_maps
from utils.explain import checks
from utils.explain import localisation as loc
from utils.explain.choice import ExplanationChoice
from utils.explain.gradcam import ANCHORS, library_geometry
from utils.explain.maps import (
    Checkpoint,
    candidate_maps,
    cell_geometry,
    checkpoint_meta,
    explain,
    main_explanation,
    main_maps,
    map_grid,
)
from utils.explain.road import ROAD_FRACTIONS, road_record, road_test
from utils.explain.sanity import randomisation_check, sanity_record
from utils.explain.spec import make_spec
from utils.fileio import update_json_section
from utils.train.model import load_model, preprocess, resolve_device

__all__ = ["LIBRARY_METHODS", "MAX_SCORECAM", "OFFSET_COLUMN", "Anchoring", "Gallery", "MethodMaps", "Review",
           "anchoring", "gallery", "load_review", "method_maps", "oracle_table", "outside_lung", "peak_centre", "record",
           "record_line", "road_check", "road_setting", "sanity_check", "verdict_sentences"]

#: The ``pytorch-grad-cam`` methods shown beside the chosen map (Score-CAM, one pass per channel, separately).
LIBRARY_METHODS = ("GradCAM", "GradCAM++", "HiResCAM", "XGradCAM", "EigenCAM")
#: Score-CAM costs one forward pass per channel per image (256 on ``layer3``): it runs on at most this many images.
MAX_SCORECAM = 3


def _x(checkpoint: Checkpoint, images: np.ndarray) -> torch.Tensor:
    meta = checkpoint_meta(checkpoint)
    return preprocess(torch.from_numpy(np.asarray(images)), meta["mean"], meta["std"])


@dataclass
class Review:
    """What notebook 05 works on: the shipped model (``path`` is read again by every map), its metadata, threshold
    and rule, the test split with its recorded probabilities, and the detected pneumonias (``tp``: test true
    positives at the threshold, indices into ``test``)."""

    path: Path
    model: nn.Module
    meta: dict[str, Any]
    threshold: float
    rule: str
    test: Split
    probs: np.ndarray
    tp: np.ndarray

    @property
    def has_masks(self) -> bool:
        return self.test.lesion_masks is not None

    @property
    def size(self) -> int:
        return int(self.meta["image_size"])

    def x(self, idx: np.ndarray | Sequence[int]) -> torch.Tensor:
        """The preprocessed test images ``idx``, on the model's device."""
        p = next(self.model.parameters())
        return _x(self.path, self.test.images[np.asarray(idx, dtype=int)]).to(p.device)

    def example(self) -> int:
        """One detected pneumonia to build Grad-CAM on by hand: the largest lesion (phantoms), else the most
        confident true positive."""
        if self.test.lesion_masks is not None:
            return int(self.tp[np.argmax(self.test.lesion_masks[self.tp].sum(axis=(1, 2)))])
        return int(self.tp[np.argmax(self.probs[self.tp])])

    def header(self) -> str:
        """One line: the model, its threshold and rule, how many true positives, whether masks exist."""
        masks = "yes (phantoms)" if self.has_masks else "no (real data: localisation cannot be measured)"
        return (f"{self.path.name} ({self.meta.get('chosen_phase', '?')}) | threshold {self.threshold:.4f} "
                f"({self.rule}) | {len(self.tp)} true positives on test | lesion masks: {masks}")


def load_review(path: Path, bundle: DataBundle, predictions: Path, device: str = "auto") -> Review:
    """The shipped model at ``path`` with its operating threshold, and the test split's recorded probabilities
    (``predictions``, checked against the split). A test set without a detected pneumonia is a one-line
    :class:`~utils.errors.UserError`: nothing could be explained."""
    model, meta = load_model(path, resolve_device(device))
    threshold, rule = operating_threshold(meta, path)
    test = bundle["test"]
    frame = read_predictions(predictions)
    check_predictions_match(frame, test.ids, test.labels, "the test split")
    probs = frame["prob"].to_numpy()
    tp = np.flatnonzero(outcome_groups(test.labels, probs, threshold) == "TP")
    if not len(tp):
        raise UserError(f"{path.name} detects none of the {int((test.labels == 1).sum())} pneumonias of the test set "
                        f"at its threshold {threshold:.4f}: there is nothing to explain; retrain (notebooks 02-04).")
    return Review(Path(path), model, dict(meta), float(threshold), str(rule), test, probs, tp)


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
    """The gallery's images (indices into the split: NORMAL first, then PNEUMONIA), their maps for their true class,
    the titles of the plain images (class and probability) and of the overlays (what the map shows)."""

    picks: np.ndarray
    maps: np.ndarray
    image_titles: list[str]
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
    image_titles = [f"{classes[c]} · P(pneumonia)={probs[i]:.3f}" for i, c in zip(picks, true_class)]
    titles = [f"map: evidence for {classes[c]}" for c in true_class]
    return Gallery(picks, maps, image_titles, titles)


def peak_centre(cam: np.ndarray) -> np.ndarray:
    """``(row, column)`` of a map's maximum; a flat top (several pixels at the maximum) gives its centre."""
    return np.argwhere(cam == cam.max()).mean(axis=0)


def _lesion_centre(mask: np.ndarray, near: np.ndarray) -> np.ndarray:
    """The centre of mass of the lesion (connected component of ``mask``) whose centre is nearest ``near``."""
    labels, n = ndi.label(mask)
    centres = np.array(ndi.center_of_mass(mask, labels, range(1, n + 1)), dtype=float).reshape(-1, 2)
    return centres[np.argmin(((centres - near) ** 2).sum(axis=1))]


#: The column of :attr:`Anchoring.geometry` that says how far the library draws a layer's first cell from its centre.
OFFSET_COLUMN = "library's offset of cell 0 (px)"


@dataclass
class Anchoring:
    """Where the cells of a layer sit on the image and where the library's upsampling draws them (``geometry``: one
    row per layer), and what it does to the chosen map's peaks (:func:`anchoring`): ``offsets[anchor]`` = the mean
    signed offset of the peak from the lesion's centre, rows then columns (paired-bootstrap entries; empty without
    lesion masks), ``moved`` = the mean move of the peak from the receptive-field anchor to the library's (px),
    ``near`` = near-pointing per anchor, ``n`` images (maps with a location), and the ``sentence`` saying it."""

    geometry: pd.DataFrame
    offsets: dict[str, tuple[dict[str, float], dict[str, float]]]
    moved: tuple[float, float]
    near: dict[str, float]
    n: int
    sentence: str


def _geometry_rows(model: nn.Module, layers: Sequence[str], size: int) -> pd.DataFrame:
    rows = []
    for layer in layers:
        grid = map_grid(model, make_spec("gradcam", layer), size)
        rf = cell_geometry(model, make_spec("gradcam", layer, anchor="receptive_field"))
        lib = library_geometry(grid, (size, size))
        assert rf is not None
        rows.append({"layer": layer, "grid": f"{grid[0]}×{grid[1]}", "stride (px)": rf.stride[0],
                     "cell j centred on pixel": f"{rf.stride[0]:g}·j + {rf.offset[0]:g}",
                     "library draws cell j at": f"{lib.stride[0]:g}·j + {lib.offset[0]:g}",
                     OFFSET_COLUMN: lib.offset[0] - rf.offset[0]})
    return pd.DataFrame(rows)


def anchoring(model: nn.Module, checkpoint: Checkpoint, split: Split, idx: np.ndarray, seed: int = 0,
              n_boot: int = 1000, layers: Sequence[str] = ("layer3", "layer4")) -> Anchoring:
    """Where a map's evidence sits. ``geometry``: for each of ``layers`` (and the chosen one) its grid on the
    checkpoint's image size, where its cell j is centred on the image (the receptive field's centre,
    :func:`utils.explain.gradcam.receptive_field_geometry`) and where the library's bilinear resize draws it — the
    difference is the library's offset, (stride − 1)/2 px down and right on a ResNet. Then the main explanation's
    knobs with **both** anchors (:data:`utils.explain.gradcam.ANCHORS`, one shared pass) on the images ``idx`` of
    ``split`` (PNEUMONIA maps): how far their peaks move, and, with lesion masks, the mean signed offset of each
    peak from the centre of the lesion it is nearest (rows, columns; paired over patients) and near-pointing."""
    spec = main_explanation(checkpoint, model)
    size = int(split.images.shape[-1])
    geometry = _geometry_rows(model, list(dict.fromkeys((*layers, spec["layer"]))), size)
    specs = {a: make_spec(spec["method"], spec["layer"], spec["shifts"], anchor=a) for a in ANCHORS}
    idx = np.asarray(idx, dtype=int)
    p = next(model.parameters())
    maps, _, _ = candidate_maps(model, _x(checkpoint, split.images[idx]).to(p.device), list(specs.values()), targets=1)
    by_anchor = {a: maps[s["name"]] for a, s in specs.items()}
    keep = ~np.logical_or.reduce([empty_maps(m) for m in by_anchor.values()])
    peaks = {a: np.array([peak_centre(m) for m in by_anchor[a][keep]]).reshape(-1, 2) for a in ANCHORS}
    move = (peaks["library"] - peaks["receptive_field"]).mean(axis=0) if keep.any() else np.full(2, np.nan)
    moved = (float(move[0]), float(move[1]))
    knobs = specs["library"]["name"]
    offset = float(geometry.set_index("layer").loc[spec["layer"], OFFSET_COLUMN])
    sentence = (f"Between the two anchors the peak of {knobs} moves by {moved[0]:+.1f} px down and {moved[1]:+.1f} px "
                f"right on average over {int(keep.sum())} test true positives (the table's offset for {spec['layer']}: "
                f"{offset:g} px).")
    offsets: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
    near: dict[str, float] = {}
    if split.lesion_masks is not None and keep.any():
        masks, groups = split.lesion_masks[idx][keep], split.patient_ids[idx][keep]
        middle = (peaks["library"] + peaks["receptive_field"]) / 2  # the same lesion for both anchors
        centres = np.array([_lesion_centre(m, c) for m, c in zip(masks, middle)])
        for a in ANCHORS:
            d = peaks[a] - centres
            rows_ci, cols_ci = (paired_difference_ci(d[:, k], np.zeros(len(d)), groups, n_boot, seed) for k in (0, 1))
            offsets[a] = (rows_ci, cols_ci)
            near[a] = float(loc.per_image_scores(by_anchor[a][keep], masks)["near"].mean())
        said = {a: f"{format_ci(offsets[a][0], 1, signed=True)} px down, {format_ci(offsets[a][1], 1, signed=True)} "
                   f"px right" for a in ANCHORS}
        sentence += (f" From the centre of the nearest lesion the peak lies on average {said['library']} with the "
                     f"library's upsampling, and {said['receptive_field']} with cells at receptive-field centres; "
                     f"near-pointing {near['library']:.3f} against {near['receptive_field']:.3f}.")
    return Anchoring(geometry, offsets, moved, near, int(keep.sum()), sentence)


def _cam_fn(checkpoint: Checkpoint, model: nn.Module) -> Any:
    spec = main_explanation(checkpoint, model)
    return spec, (lambda m, xx, layer, tt: explain(m, xx, spec, tt)[0])


def sanity_check(model: nn.Module, checkpoint: Checkpoint, images: np.ndarray, groups: np.ndarray, seed: int,
                 n_boot: int, after: str = "layer4") -> dict[str, Any]:
    """The randomisation check of the main explanation's PNEUMONIA maps of uint8 ``images``
    (:func:`utils.explain.sanity.randomisation_check`: blocks re-initialised from ``fc`` down to the stem; every step
    from ``after`` down compared, per image and paired over patients ``groups``, with the reference level — the
    trained map against another image's randomised map — by |Spearman ρ| and SSIM). Needs two images at least."""
    spec, cam_fn = _cam_fn(checkpoint, model)
    return randomisation_check(model, _x(checkpoint, images), targets=1, layer=spec["layer"], seed=seed, cam_fn=cam_fn,
                               groups=groups, after=after, n_boot=n_boot)


def road_check(model: nn.Module, checkpoint: Checkpoint, split: Split, idx: np.ndarray, controls: np.ndarray,
               seed: int, n_boot: int, cached: tuple[np.ndarray, np.ndarray] | None = None,
               fractions: Sequence[float] = ROAD_FRACTIONS, progress: bool = True) -> dict[str, Any]:
    """ROAD (:func:`utils.explain.road.road_test`) of the main explanation's PNEUMONIA maps of the images ``idx`` of
    ``split``: most and least relevant first, in logit margin, against another image's map, bootstrapped over
    patients; the images ``controls`` of ``split`` (its NORMAL images) get the same pixels removed, which measures
    what the removal does by itself. ``cached`` = ``(indices, maps)`` already computed for the same spec (e.g.
    ``(choice.test_tp, choice.test_maps[name])``) is used when it holds every image of ``idx``. An empty ``idx`` is
    a one-line :class:`~utils.errors.UserError`."""
    idx, controls = np.asarray(idx, dtype=int), np.asarray(controls, dtype=int)
    x = _x(checkpoint, split.images[idx])
    maps: np.ndarray | None = None
    if cached is not None and np.isin(idx, cached[0]).all():
        where = {int(k): j for j, k in enumerate(np.asarray(cached[0]))}
        maps = np.asarray(cached[1])[[where[int(k)] for k in idx]]
    elif len(idx):
        maps = explain(model, x, main_explanation(checkpoint, model), 1)[0]
    return road_test(model, x, np.zeros((0, *x.shape[-2:])) if maps is None else maps, split.patient_ids[idx], 1,
                     fractions, n_boot=n_boot, seed=seed, progress=progress,
                     controls=_x(checkpoint, split.images[controls]) if len(controls) else None)


def road_setting(split: Split, idx: np.ndarray, controls: np.ndarray, fractions: Sequence[float] = ROAD_FRACTIONS
                 ) -> str:
    """One line: the fractions ROAD removes, how many images and controls, and (with masks) the mean lesion area of
    those images — the scale the fractions are chosen against."""
    area = (f"{split.lesion_masks[np.asarray(idx, dtype=int)].mean():.1%} of the image"
            if split.lesion_masks is not None and len(idx) else "unknown (no lesion masks)")
    return (f"ROAD removes {', '.join(f'{f:.1%}' for f in fractions)} of the pixels | {len(idx)} true positives, "
            f"{len(controls)} NORMAL controls | mean lesion area of these true positives: {area}")


@dataclass
class MethodMaps:
    """The chosen map beside the library's methods on the same images (:func:`method_maps`)."""

    layer: str
    maps: dict[str, np.ndarray]  # method -> PNEUMONIA maps (N, H, W); the chosen map first, under its spec's name
    scorecam: np.ndarray  # Score-CAM maps of the first images only
    table: pd.DataFrame | None  # localisation of every method (with lesion masks), else None
    shown_idx: np.ndarray  # the images (indices into the split) Score-CAM ran on: the comparison figure's

    def shown(self, n: int | None = None) -> dict[str, np.ndarray]:
        """The maps of the first ``n`` images (default: those Score-CAM ran on), Score-CAM last: what the comparison
        figure shows."""
        n = len(self.shown_idx) if n is None else n
        return {**{k: v[:n] for k, v in self.maps.items()}, "ScoreCAM": self.scorecam[:n]}


def method_maps(model: nn.Module, checkpoint: Checkpoint, split: Split, idx: np.ndarray, n_scorecam: int,
                priors: dict[str, np.ndarray] | None = None, methods: tuple[str, ...] = LIBRARY_METHODS) -> MethodMaps:
    """PNEUMONIA maps of the images ``idx`` of ``split``: the main explanation (named by its spec) and each library
    method on the chosen layer, plus Score-CAM on the first ``n_scorecam`` images (one forward pass per channel: at
    most :data:`MAX_SCORECAM`);
    with lesion masks, their localisation table (:func:`utils.explain.localisation.localisation_table`, ``priors``
    as baselines)."""
    spec = main_explanation(checkpoint, model)
    images = split.images[idx]
    x = _x(checkpoint, images)
    maps = {spec["name"]: main_maps(model, checkpoint, images)[0],
            **{m: checks.library_cam(m, model, x, spec["layer"], 1) for m in methods}}
    n_scorecam = min(int(n_scorecam), MAX_SCORECAM, len(idx))
    scorecam = checks.library_cam("ScoreCAM", model, x[:n_scorecam], spec["layer"], 1, batch_size=64)
    table = None if split.lesion_masks is None else loc.localisation_table(maps, split.lesion_masks[idx], priors=priors)
    return MethodMaps(spec["layer"], maps, scorecam, table, np.asarray(idx, dtype=int)[:n_scorecam])


def outside_lung(model: nn.Module, checkpoint: Checkpoint, split: Split, probs: np.ndarray, threshold: float,
                 progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The share of each PNEUMONIA map (main explanation, read now) outside the lungs, for the true positives and
    false negatives of ``split`` at ``threshold``: ``(summary, per_image)``. ``summary`` has one block per lung
    field (estimated; the true masks too when the split has them) of
    :func:`utils.explain.localisation.outside_lung_summary`; ``per_image`` one row per image (``id``, ``group``,
    ``estimated`` and, with masks, ``true``). An empty or constant map is "no map" (counted, never scored)."""
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


def verdict_sentences(choice: ExplanationChoice) -> list[str]:
    """The localisation verdicts of the choice on test, one sentence per metric (near-pointing, energy), as
    :func:`utils.explain.choice.verdict_against_baselines` wrote them."""
    return [v["sentence"] for v in choice.verdict.values()]


def record_line(section: dict[str, Any]) -> str:
    """The ``localisation`` section written by :func:`record`, in one line: the explanation and every verdict."""
    verdicts = ", ".join(f"{m} {v['verdict']}" for m, v in section.get("verdict", {}).items()) or "not measurable"
    return (f"explanation {section['explanation']['name']!r} | localisation vs the best image-blind baseline: {verdicts}"
            f" | randomisation: {section['sanity']['verdict']} | ROAD: {section['road']['verdict']}")


def record(metrics_path: Path, choice: ExplanationChoice, sanity: dict[str, Any], road: dict[str, Any],
           outside: pd.DataFrame) -> dict[str, Any]:
    """The ``localisation`` section of ``assets/metrics.json``: the choice's record (:func:`choose_and_record`, whose
    ``verdict.<metric>`` carry ``verdict`` and ``sentence``) with ``sanity`` (:func:`utils.explain.sanity.sanity_record`
    of :func:`sanity_check`), ``road`` (:func:`utils.explain.road.road_record` of :func:`road_check`) and
    ``outside_lung`` (:func:`outside_lung`'s summary). Returns the whole file."""
    extra = {"sanity": sanity_record(sanity), "road": road_record(road),
             "outside_lung": outside.reset_index().to_dict("records")}
    return update_json_section(metrics_path, "localisation", {**choice.record, **extra})
