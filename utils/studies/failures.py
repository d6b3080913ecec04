"""False-negative case study (notebook 06): select the misses, measure where the model looked, sort them.

Conventions (as in :mod:`utils.evaluate.metrics`): ``label`` 1 = PNEUMONIA, ``prob`` = P(PNEUMONIA), an image is
called positive when ``prob >= threshold``. So a **false negative** is ``label == 1 and prob < threshold``
(``prob == threshold`` is a detection), and every selected row carries

    margin = threshold - prob      (> 0: missed by that much; <= 0: detected with that much to spare)

Pieces, small and separately tested:

* selectors: :func:`select_false_negatives` (all of them, no cap), :func:`select_near_misses` (the
  detected pneumonias closest to the threshold, for contrast), :func:`select_true_positives`;
* attention outside the lungs: :func:`outside_lung_fractions` (Grad-CAM mass outside the lung fields,
  ground-truth lung masks on phantoms, :func:`utils.explain.localisation.estimate_lung_field` on real images)
  and :func:`compare_groups` (Mann-Whitney U, two-sided); an empty or constant map is "no map" (NaN: counted,
  never scored);
* the image border (:func:`border_check`): the share of the outside-lung mass within :func:`border_width` pixels of
  the edge against a uniform map's share. When the band holds more than a uniform map puts there (by
  :data:`BORDER_MARGIN`), heat on the frame — a padding or shift-averaging artefact — would count as "outside the
  lungs", and the study reads the share with the band left out (:attr:`FailureStudy.reading`);
* lesion properties of misses vs detections on the phantoms (:func:`lesion_property_table`);
* a rule-based failure taxonomy (:func:`classify_failure`, rules in :data:`RULES`, in order);
* the per-case table saved as ``assets/false_negatives.csv`` (:func:`case_table`).

Only :func:`class_gradcams` touches a model; everything else is pure pandas/NumPy/SciPy.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from utils.config import CLASSES
from utils.data.phantom import HARD_KINDS
from utils.errors import UserError
from utils.evaluate import verdicts
from utils.evaluate.metrics import paired_difference_ci
from utils.explain.localisation import border_band, outside_lung_fractions
from utils.explain.maps import Checkpoint, main_maps
from utils.paths import notebook_path

__all__ = [
    "BORDER_FRAC",
    "BORDER_MARGIN",
    "CASE_COLUMNS",
    "CATEGORIES",
    "DEFAULT_CUTOFFS",
    "HIDDEN_LOCATIONS",
    "LESION_COLUMNS",
    "RULES",
    "BorderCheck",
    "FailureStudy",
    "OutsideLungComparison",
    "align_to_split",
    "border_check",
    "border_shares",
    "border_width",
    "case_table",
    "category_counts",
    "check_probabilities",
    "class_gradcams",
    "classify_failure",
    "classify_failures",
    "compare_groups",
    "compare_outside_lung",
    "failure_cutoffs",
    "lesion_property_table",
    "select_false_negatives",
    "select_near_misses",
    "select_true_positives",
    "study_failures",
    "threshold_cost",
    "threshold_tradeoff",
]

# ------------------------------------------------------------------------------------------ selectors
def _checked(df: pd.DataFrame, threshold: float) -> pd.DataFrame:
    missing = [c for c in ("label", "prob") if c not in df.columns]
    if missing:
        raise ValueError(f"predictions need the column(s) {', '.join(missing)}")
    if not (isinstance(threshold, (int, float, np.floating)) and math.isfinite(float(threshold))):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return df


def _with_margin(rows: pd.DataFrame, threshold: float) -> pd.DataFrame:
    out = rows.copy()
    out["margin"] = float(threshold) - out["prob"].astype(float)
    return out.sort_values("prob", kind="stable")


def select_false_negatives(df: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Every row with ``label == 1`` and ``prob < threshold``, sorted by ``prob`` (most confident miss
    first), with ``margin = threshold - prob`` (> 0). The original index is kept."""
    df = _checked(df, threshold)
    return _with_margin(df[(df["label"] == 1) & (df["prob"] < threshold)], threshold)


def select_true_positives(df: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Every row with ``label == 1`` and ``prob >= threshold``, sorted by ``prob``, with ``margin`` (<= 0)."""
    df = _checked(df, threshold)
    return _with_margin(df[(df["label"] == 1) & (df["prob"] >= threshold)], threshold)


def select_near_misses(df: pd.DataFrame, threshold: float, k: int = 6) -> pd.DataFrame:
    """The ``k`` detected pneumonias closest to the threshold (``prob >= threshold``, smallest
    ``prob - threshold`` first): the cases that would be missed first if the threshold rose."""
    if int(k) < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return select_true_positives(df, threshold).head(int(k))


def threshold_cost(df: pd.DataFrame, threshold: float, new_threshold: float) -> dict[str, int]:
    """Misses and false alarms at ``threshold`` and at ``new_threshold`` (the threshold trade-off in counts).

    Keys: ``fn``, ``fp`` (at ``threshold``), ``fn_new``, ``fp_new``, ``n_positive``, ``n_negative``.
    Computed on whatever rows are given: on the *test* set this illustrates a trade-off; it is not a
    way to choose a threshold (that is done on validation data, notebook 04).
    """
    df = _checked(df, threshold)
    y, p = df["label"].to_numpy(), df["prob"].to_numpy(float)
    count = lambda t: (int(((y == 1) & (p < t)).sum()), int(((y == 0) & (p >= t)).sum()))  # noqa: E731
    (fn, fp), (fn_new, fp_new) = count(threshold), count(new_threshold)
    return {"fn": fn, "fp": fp, "fn_new": fn_new, "fp_new": fp_new,
            "n_positive": int((y == 1).sum()), "n_negative": int((y == 0).sum())}


# ------------------------------------------------------------------------------------ the inputs
def align_to_split(df: pd.DataFrame, ids: Sequence[str], labels: Sequence[int] | None = None) -> np.ndarray:
    """Positions in a split (``ids``) of the rows of a predictions frame, in the frame's order.

    A :class:`UserError` when ids are missing or labels disagree (predictions from other data).
    """
    where = {str(i): k for k, i in enumerate(np.asarray(ids).astype(str))}
    idx = np.array([where.get(str(i), -1) for i in df["id"]], dtype=np.int64)
    if (idx < 0).any():
        n = int((idx < 0).sum())
        raise UserError(f"{n} predicted image id(s) are not in this data set (e.g. {df['id'][idx < 0].iloc[0]}): "
                        f"the predictions come from other data; run {notebook_path('evaluation')} again.")
    if labels is not None and not np.array_equal(np.asarray(labels)[idx], df["label"].to_numpy()):
        raise UserError("labels in the predictions file differ from the data set's: "
                        f"run {notebook_path('evaluation')} again.")
    return idx


# ------------------------------------------------------------------------------------ Grad-CAM
def class_gradcams(model: Any, images: np.ndarray, checkpoint: Checkpoint, batch_size: int = 32,
                   progress: bool = True, classes: Sequence[str] = CLASSES) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Maps of the main explanation (:func:`utils.explain.maps.main_maps`, the one every notebook uses; pass the
    checkpoint's path so its record is read now) of uint8 images ``(N, S, S)`` for each class in ``classes``
    (default both), and P(PNEUMONIA) of the same pass.

    Returns ``({"PNEUMONIA": maps, "NORMAL": maps}, probs)``, maps float32 ``(N, S, S)`` in [0, 1]. The
    PNEUMONIA map is the evidence the model saw *for* pneumonia; the NORMAL map, what pulled it the
    other way.
    """

    images = np.asarray(images)
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or not classes:
        raise ValueError(f"classes must be a non-empty subset of {CLASSES}, got {list(classes)}")
    maps: dict[str, np.ndarray] = {}
    probs = np.zeros(len(images), np.float64)
    names = list(classes)
    if progress:
        from tqdm.auto import tqdm
        names = tqdm(names, desc="maps per class", unit="class", leave=False)
    for name in names:
        maps[name], probs = main_maps(model, checkpoint, images, targets=CLASSES.index(name), batch_size=batch_size)
    return maps, probs


def check_probabilities(recorded: Sequence[float] | np.ndarray, recomputed: Sequence[float] | np.ndarray,
                       tol: float = 0.02) -> float:
    """Largest difference between the predictions file and the model now; :class:`UserError` above ``tol``
    (the checkpoint or the data changed after notebook 04 ran)."""
    diff = float(np.max(np.abs(np.asarray(recorded, float) - np.asarray(recomputed, float)), initial=0.0))
    if diff > tol:
        raise UserError(f"the predictions file disagrees with the checkpoint (max |Δp| = {diff:.3f}): "
                        f"the model or data changed since; run {notebook_path('evaluation')} again.")
    return diff


def compare_groups(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, names: tuple[str, str] = ("FN", "TP"),
                   few: int = 10) -> dict[str, Any]:
    """Two-sided Mann-Whitney U test of two samples (e.g. outside-lung fraction, FN vs TP).

    Returns ``{"U", "p", "n_a", "n_b", "median_a", "median_b", "names", "note"}``; U and p are nan when a
    group is empty. ``note`` warns that the test has little power when the smaller group has < ``few``.
    """
    av, bv = (np.asarray(v, float) for v in (a, b))
    av, bv = av[~np.isnan(av)], bv[~np.isnan(bv)]

    def med(v: np.ndarray) -> float:
        return float(np.median(v)) if v.size else float("nan")

    out: dict[str, Any] = {"names": tuple(names), "n_a": int(av.size), "n_b": int(bv.size), "median_a": med(av),
                           "median_b": med(bv), "U": float("nan"), "p": float("nan"), "note": ""}
    if av.size == 0 or bv.size == 0:
        out["note"] = f"no test: the {names[0] if av.size == 0 else names[1]} group is empty"
        return out
    res = mannwhitneyu(av, bv, alternative="two-sided")
    out["U"], out["p"] = float(res.statistic), float(res.pvalue)
    if min(av.size, bv.size) < few:
        out["note"] = (f"only {min(av.size, bv.size)} case(s) in the smaller group: the test has little power, "
                       "so a large p-value is not evidence of 'no difference'")
    return out


# -------------------------------------------------------------------------------- lesion properties
#: Phantom lesion properties carried into the per-case table (columns of ``split.info``).
LESION_COLUMNS: tuple[str, ...] = ("kind", "n_lesions", "lesion_area_frac", "contrast", "lesion_radius",
                                   "location", "hard")
HIDDEN_LOCATIONS: tuple[str, ...] = ("retrocardiac", "retrodiaphragmatic")


def _text(value: Any) -> str:
    """'' for None/NaN, else the stripped string (CSV round-trips turn '' into NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def failure_cutoffs(info: pd.DataFrame | None = None, outside_reference: Sequence[float] | np.ndarray | None = None,
                    q: float = 0.1, q_outside: float = 0.9) -> dict[str, float]:
    """Data-driven cut-offs for :func:`classify_failure` (only the keys that can be computed).

    ``contrast`` / ``lesion_area``: the ``q`` quantile of ``contrast`` and ``lesion_area_frac`` over the
    pneumonia images of ``info`` (rows with ``label == 1`` when that column exists): "faint" and
    "small" mean *among the faintest / smallest tenth*. ``outside_lung``: the ``q_outside`` quantile of
    ``outside_reference`` (the outside-lung fractions of the *detected* pneumonias): "distracted" means
    looking outside the lungs more than nine in ten detections do. A coarse Grad-CAM spreads its mass
    well beyond the lungs even when it peaks on the lesion, so a fixed cut-off such as 0.5 can fire on
    every case; a reference from the same model and layer does not.
    """
    out: dict[str, float] = {}
    if info is not None:
        pos = info[info["label"] == 1] if "label" in info.columns else info
        if not pos.empty:
            out["contrast"] = float(pos["contrast"].quantile(q))
            out["lesion_area"] = float(pos["lesion_area_frac"].quantile(q))
    if outside_reference is not None:
        ref = np.asarray(outside_reference, float)
        ref = ref[~np.isnan(ref)]
        if ref.size:
            out["outside_lung"] = float(np.quantile(ref, q_outside))
    return out


def lesion_property_table(info: pd.DataFrame, is_fn: Sequence[bool],
                          names: tuple[str, str] = ("missed (FN)", "detected (TP)")) -> pd.DataFrame:
    """Lesion properties of missed vs detected pneumonia images, per lesion kind and overall.

    ``info``: one row per *pneumonia* image (phantom ``split.info`` columns: kind, lesion_area_frac,
    contrast, lesion_radius, location, hard); ``is_fn``: True where the image was missed. One row per
    (kind, outcome) with ``n``, medians of area / contrast / radius, ``hard_fraction`` (share with any
    hard flag), ``hidden_fraction`` (retrocardiac or retrodiaphragmatic) and ``n_<flag>`` counts per
    hard flag. Kind ``"all"`` pools every kind; an outcome with no image gets ``n = 0`` and NaNs.
    """
    fn_mask = np.asarray(is_fn, dtype=bool)
    if len(info) != fn_mask.size:
        raise ValueError(f"info has {len(info)} rows but fn_mask has {fn_mask.size} values")
    df = info.reset_index(drop=True).copy()
    df["hard"] = df["hard"].map(_text) if "hard" in df else ""
    df["location"] = df["location"].map(_text) if "location" in df else ""
    df["kind"] = df["kind"].map(_text).replace("", "unknown") if "kind" in df else "unknown"
    df["outcome"] = np.where(fn_mask, names[0], names[1])
    rows = []
    for kind in [*sorted(df["kind"].unique()), "all"]:
        sub = df if kind == "all" else df[df["kind"] == kind]
        for outcome in names:
            g = sub[sub["outcome"] == outcome]
            hidden = g["location"].map(lambda s: any(h in s for h in HIDDEN_LOCATIONS))
            row = {"kind": kind, "outcome": outcome, "n": len(g)}
            for col in ("lesion_area_frac", "contrast", "lesion_radius"):
                row[f"median_{col}"] = float(g[col].median()) if len(g) and col in g else float("nan")
            row["hard_fraction"] = float((g["hard"] != "").mean()) if len(g) else float("nan")
            row["hidden_fraction"] = float(hidden.mean()) if len(g) else float("nan")
            row.update({f"n_{h}": int((g["hard"] == h).sum()) for h in HARD_KINDS})
            rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- the taxonomy
NO_LESION = "label doubt / no visible lesion"
HIDDEN = "lesion hidden by heart/diaphragm"
FAINT = "faint or small opacity"
DISTRACTION = "distraction by dense normal anatomy"
OTHER = "other"
#: The categories, in display order.
CATEGORIES: tuple[str, ...] = (HIDDEN, FAINT, DISTRACTION, NO_LESION, OTHER)

#: Cut-offs of the rules. ``contrast`` / ``lesion_area`` None: that part of the faint/small rule is off
#: (notebook 06 sets them from the data with :func:`failure_cutoffs`).
DEFAULT_CUTOFFS: dict[str, float | None] = {
    "no_lesion_area": 1e-3,   # lesion area below 0.1 % of the image = nothing to see
    "contrast": None,         # "faint": lesion contrast below this
    "lesion_area": None,      # "small": lesion area fraction below this
    "outside_lung": 0.5,      # "distraction": more than half of the PNEUMONIA map outside the lungs
    "label_doubt_frac": 0.25,  # real data: prob below this fraction of the threshold = a confident NORMAL
}

#: The rules, tried in this order; the first that fires names the case.
RULES: tuple[tuple[str, str], ...] = (
    (NO_LESION, "phantom: lesion area < no_lesion_area (nothing visible to find)"),
    (HIDDEN, "phantom: a lesion located retrocardiac or retrodiaphragmatic"),
    (FAINT, "phantom: hard flag 'faint' or 'small', or contrast < contrast, or lesion area < lesion_area"),
    (DISTRACTION, "map: outside_lung_fraction of the PNEUMONIA map > outside_lung (default 0.5; see failure_cutoffs; "
                  "the border band left out when it is hotter than a uniform map's)"),
    (NO_LESION, "no lesion info (real data): prob < label_doubt_frac × threshold (confident NORMAL call)"),
    (OTHER, "none of the above"),
)


def _number(row: Mapping[str, Any], key: str) -> float:
    try:
        v = float(row.get(key, float("nan")))
    except (TypeError, ValueError):
        return float("nan")
    return v


def classify_failure(row: Mapping[str, Any], cutoffs: Mapping[str, float | None] | None = None) -> str:
    """The failure mode of one missed (or nearly missed) pneumonia image, by the rules of :data:`RULES`.

    ``row`` needs ``prob``, ``threshold`` and ``outside_lung_fraction``; phantom rows add
    ``lesion_area_frac``, ``location``, ``hard`` and ``contrast`` (a row without a finite
    ``lesion_area_frac`` is treated as real data: only the map and probability rules apply).
    """
    cut = {**DEFAULT_CUTOFFS, **(cutoffs or {})}
    area = _number(row, "lesion_area_frac")
    phantom = math.isfinite(area)
    if phantom:
        location, hard, contrast = _text(row.get("location")), _text(row.get("hard")), _number(row, "contrast")
        if area < (cut["no_lesion_area"] or 0.0):
            return NO_LESION
        if any(h in location for h in HIDDEN_LOCATIONS) or hard in HIDDEN_LOCATIONS:
            return HIDDEN
        c_contrast, c_area = cut["contrast"], cut["lesion_area"]
        if (hard in ("faint", "small") or (c_contrast is not None and contrast < c_contrast)
                or (c_area is not None and area < c_area)):
            return FAINT
    outside, c_outside = _number(row, "outside_lung_fraction"), cut["outside_lung"]
    if math.isfinite(outside) and c_outside is not None and outside > c_outside:
        return DISTRACTION
    prob, thr, doubt = _number(row, "prob"), _number(row, "threshold"), cut["label_doubt_frac"]
    if not phantom and doubt is not None and math.isfinite(prob) and math.isfinite(thr) and prob < doubt * thr:
        return NO_LESION
    return OTHER


def classify_failures(table: pd.DataFrame, cutoffs: Mapping[str, float | None] | None = None) -> pd.Series:
    """:func:`classify_failure` for every row of ``table`` (same index)."""
    return pd.Series([classify_failure(r, cutoffs) for r in table.to_dict("records")], index=table.index,
                     dtype=object, name="category")


def category_counts(categories: Sequence[str]) -> pd.DataFrame:
    """Count per category, every category listed (zeros included), in :data:`CATEGORIES` order."""
    s = pd.Series(list(categories), dtype=object)
    unknown = sorted(set(s) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown categories: {unknown}")
    counts = s.value_counts()
    return pd.DataFrame({"category": CATEGORIES, "n": [int(counts.get(c, 0)) for c in CATEGORIES]})


# ---------------------------------------------------------------------------------- the case table
#: Columns of ``assets/false_negatives.csv`` (phantoms add :data:`LESION_COLUMNS`).
CASE_COLUMNS: tuple[str, ...] = ("id", "patient_id", "subtype", "prob", "threshold", "margin",
                                 "outside_lung_fraction", "category")


def case_table(cases: pd.DataFrame, threshold: float, outside: Sequence[float],
               info: pd.DataFrame | None = None, cutoffs: Mapping[str, float | None] | None = None
               ) -> pd.DataFrame:
    """The per-case table: :data:`CASE_COLUMNS` (+ :data:`LESION_COLUMNS` when ``info`` is given).

    ``cases``: selected prediction rows (id, patient_id, subtype, prob); ``outside``: the outside-lung
    fraction of each case's PNEUMONIA map; ``info``: the phantom lesion rows of the same cases, same order.
    """
    outside_v = np.asarray(outside, float)
    if len(cases) != outside_v.size or (info is not None and len(info) != len(cases)):
        raise ValueError("cases, outside fractions and info must have one entry per case")
    out = pd.DataFrame({"id": cases["id"].astype(str).to_numpy(),
                        "patient_id": cases["patient_id"].astype(str).to_numpy(),
                        "subtype": cases["subtype"].map(_text).to_numpy(),
                        "prob": cases["prob"].astype(float).to_numpy()})
    out["threshold"] = float(threshold)
    out["margin"] = float(threshold) - out["prob"]
    out["outside_lung_fraction"] = outside_v
    if info is not None:
        for col in LESION_COLUMNS:
            if col in info.columns:
                out[col] = info[col].to_numpy()
    out["category"] = classify_failures(out, cutoffs).to_numpy()
    lesion = [c for c in LESION_COLUMNS if c in out.columns]
    return out[list(CASE_COLUMNS) + lesion]


# ------------------------------------------------------------------------------------ the image border
#: The border band of :func:`border_check`, as a fraction of the image side (8 px at 128 px, 14 px at 224 px): the
#: width of the strip shift averaging can heat (8-px shifts at 128 px) and about a ``layer3`` cell's spill from the
#: network's own zero padding. The lungs never reach that close to the edge.
BORDER_FRAC = 1 / 16
#: How much more of the outside-lung mass the band must hold than a uniform map puts there (share of that mass)
#: before the study leaves the band out: less is no practical difference.
BORDER_MARGIN = 0.05


def border_width(image_size: int) -> int:
    """The border band's width in pixels for square images of ``image_size`` (:data:`BORDER_FRAC`, at least 1)."""
    return max(1, round(int(image_size) * BORDER_FRAC))


def border_shares(maps: np.ndarray, lung_masks: np.ndarray, width_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Per map (N, H, W): the share of its mass *outside the lungs* that lies within ``width_px`` of the image edge,
    and the share a uniform map puts there (the band's part of the area outside the lungs). NaN for a map with no
    mass outside the lungs (an empty map included)."""
    maps, lungs = np.asarray(maps, dtype=np.float64), np.asarray(lung_masks, bool)
    if maps.shape != lungs.shape or maps.ndim != 3:
        raise ValueError(f"maps {maps.shape} and lung masks {lungs.shape} must both be (N, H, W)")
    outside = ~lungs
    band = border_band(maps.shape[1], maps.shape[2], width_px)[None] & outside
    mass = (maps * outside).sum(axis=(1, 2))
    share = np.divide((maps * band).sum(axis=(1, 2)), mass, out=np.full(len(maps), np.nan), where=mass > 0)
    area = outside.sum(axis=(1, 2))
    uniform = np.divide(band.sum(axis=(1, 2)), area, out=np.full(len(maps), np.nan), where=area > 0)
    share[verdicts.empty_maps(maps) if len(maps) else np.zeros(0, bool)] = np.nan
    return share, uniform


@dataclass
class BorderCheck:
    """Does heat on the image frame drive "outside the lungs"? (:func:`border_check`)"""

    width_px: int
    share: np.ndarray  # per map: share of its outside-lung mass within the band (NaN: nothing outside, or no map)
    uniform: np.ndarray  # per map: the same share for a uniform map
    difference: dict[str, float]  # paired share - uniform, patients resampled
    verdict: str  # verdicts.difference_verdict(difference, margin)
    margin: float

    @property
    def matters(self) -> bool:
        """The band holds more of the outside mass than a uniform map, by at least the margin."""
        return self.verdict == "above"

    def sentence(self) -> str:
        """The check's finding, with its numbers, and what the study does about it."""
        if self.verdict == "not measured":
            return "Border: not measured (no map with mass outside the lungs)."
        ok = np.isfinite(self.share)
        head = (f"Border: {np.mean(self.share[ok]):.3f} of the outside-lung mass lies within {self.width_px} px of the "
                f"image edge, where a uniform map puts {np.mean(self.uniform[ok]):.3f}; map − uniform "
                f"{verdicts.format_difference(self.difference)} over {int(ok.sum())} maps: "
                f"{verdicts.verdict_phrase(self.verdict, self.margin, verdicts.interval_side(self.difference))}")
        if self.matters:
            return (f"{head} — heat on the frame would count as 'outside the lungs', so this notebook reads that share "
                    "with the border band left out from here on.")
        return f"{head} — the border does not drive 'outside the lungs'; the share is read over the whole image."


def border_check(maps: np.ndarray, lung_masks: np.ndarray, width_px: int, groups: np.ndarray | None = None,
                 n_boot: int = 1000, seed: int = 0, margin: float = BORDER_MARGIN) -> BorderCheck:
    """:func:`border_shares` of ``maps`` and the paired verdict of (share − uniform share) against ``margin``
    (:func:`utils.evaluate.verdicts.difference_verdict`; ``groups``: patient ids to resample)."""
    share, uniform = border_shares(maps, lung_masks, width_px)
    ok = np.isfinite(share) & np.isfinite(uniform)
    diff = paired_difference_ci(share[ok], uniform[ok], None if groups is None else np.asarray(groups)[ok],
                                n_boot=n_boot, seed=seed)
    return BorderCheck(int(width_px), share, uniform, diff, verdicts.difference_verdict(diff, margin), float(margin))


# ------------------------------------------------------------------------------------ the study
@dataclass
class FailureStudy:
    """The bookkeeping of notebook 06 in one place: which images are misses, near misses and detections, where
    each sits in the split, and its map, masks, lesion record and outside-lung fraction — looked up by id.

    Built by :func:`study_failures`. ``focus`` is the false negatives, or the near misses when there is none;
    ``rest`` the detections it is compared with (without the near misses in the second case).
    """

    threshold: float
    fn: pd.DataFrame
    tp: pd.DataFrame
    near: pd.DataFrame
    positives: pd.DataFrame  # every pneumonia image: the misses first, with its row in the split
    maps: np.ndarray  # PNEUMONIA maps of ``positives`` (main explanation)
    probs: np.ndarray  # P(PNEUMONIA) recomputed in the same pass
    outside: np.ndarray  # share of each map outside the lung fields (NaN: no map), as notebook 05 computes it
    lung_masks: np.ndarray
    lung_source: str  # "ground truth" or "estimated"
    images_all: np.ndarray
    lesion_masks_all: np.ndarray | None
    info_all: pd.DataFrame | None
    no_map: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # empty or constant maps
    inner: np.ndarray = field(default_factory=lambda: np.zeros(0))  # outside share with the border band left out
    border: BorderCheck | None = None

    @property
    def reading(self) -> str:
        """Which outside-lung share the study reads: the whole image, or with the border band left out."""
        if self.border is not None and self.border.matters:
            return f"outside the lungs, {self.border.width_px}-px border band left out"
        return "outside the lungs"

    @property
    def has_fn(self) -> bool:
        return not self.fn.empty

    @property
    def focus(self) -> pd.DataFrame:
        return self.fn if self.has_fn else self.near

    @property
    def rest(self) -> pd.DataFrame:
        return self.tp if self.has_fn else self.tp[~self.tp["id"].isin(self.near["id"])]

    @property
    def names(self) -> tuple[str, str]:
        """Display names of (focus, rest)."""
        return ("FN", "TP") if self.has_fn else ("near miss", "other TP")

    def _pos(self, ids: Sequence[str]) -> np.ndarray:
        at = {i: k for k, i in enumerate(self.positives["id"])}
        return np.array([at[i] for i in ids], dtype=np.int64)

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Positions of ``ids`` in the split."""
        return self.positives["row"].to_numpy()[self._pos(ids)]

    def images(self, ids: Sequence[str]) -> np.ndarray:
        return self.images_all[self.rows(ids)]

    def cams(self, ids: Sequence[str]) -> np.ndarray:
        return self.maps[self._pos(ids)]

    def lungs(self, ids: Sequence[str]) -> np.ndarray:
        return self.lung_masks[self._pos(ids)]

    def lesions(self, ids: Sequence[str]) -> np.ndarray | None:
        return None if self.lesion_masks_all is None else self.lesion_masks_all[self.rows(ids)]

    def info(self, ids: Sequence[str]) -> pd.DataFrame | None:
        return None if self.info_all is None else self.info_all.iloc[self.rows(ids)].reset_index(drop=True)

    def outside_of(self, ids: Sequence[str]) -> np.ndarray:
        """The share of each map outside the lungs over the whole image (notebook 05's number; NaN: no map)."""
        return self.outside[self._pos(ids)]

    def read_of(self, ids: Sequence[str]) -> np.ndarray:
        """The outside-lung share the study reads (:attr:`reading`): :meth:`outside_of`, or the share with the
        border band left out when :func:`border_check` found the band hotter than a uniform map's."""
        read = self.inner if self.border is not None and self.border.matters else self.outside
        return read[self._pos(ids)]


def study_failures(model: Any, checkpoint: Checkpoint, split: Any, predictions: pd.DataFrame, threshold: float,
                   n_near: int = 6, progress: bool = True) -> FailureStudy:
    """Align the predictions with the split, select the misses, near misses and detections, compute the main
    explanation's PNEUMONIA map of every pneumonia image (``checkpoint``: the model's path, read now; checking the
    probabilities against the predictions file) and the share of each map outside the lung fields (true lung masks
    when the data have them, else the estimate)."""

    frame = predictions.copy()
    frame["row"] = align_to_split(frame, split.ids, split.labels)
    fn = select_false_negatives(frame, threshold)
    tp = select_true_positives(frame, threshold)
    near = select_near_misses(frame, threshold, n_near)
    pos = pd.concat([fn, tp]).reset_index(drop=True)
    rows = pos["row"].to_numpy()
    maps, probs = class_gradcams(model, split.images[rows], checkpoint, progress=progress, classes=["PNEUMONIA"])
    check_probabilities(pos["prob"], probs)
    lungs = None if split.lung_masks is None else split.lung_masks[rows]
    cams = maps["PNEUMONIA"]
    outside, masks, source = outside_lung_fractions(cams, lungs, split.images[rows], progress, skip_empty=True)
    width = border_width(cams.shape[-1]) if len(cams) else 1
    inner, _, _ = outside_lung_fractions(cams, masks, skip_empty=True, ignore_border_px=width)
    border = border_check(cams, masks, width, pos["patient_id"].astype(str).to_numpy() if "patient_id" in pos
                          else None)
    return FailureStudy(float(threshold), fn, tp, near, pos, cams, probs, outside, masks, source, split.images,
                        split.lesion_masks, split.info,
                        verdicts.empty_maps(cams) if len(cams) else np.zeros(0, bool), inner, border)


# ------------------------------------------------------------------------------- the study's two readings
@dataclass
class OutsideLungComparison:
    """Where the focus group's PNEUMONIA maps looked against the other detections (:func:`compare_outside_lung`)."""

    groups: dict[str, np.ndarray]  # outside-lung fractions of the misses, the near misses and every detection
    stats: dict[str, Any]  # compare_groups of the focus group against the rest
    cutoff: float  # the 90th percentile of the rest: "distracted" (failure_cutoffs)
    chance: float  # a uniform map's outside fraction (median over the images' lung masks)
    above: tuple[int, int]  # focus and rest cases above the cut-off
    lines: list[str]  # the findings, one sentence each


def _border_of_focus(study: FailureStudy) -> str:
    """The border check for the focus group alone (a few misses can sit on the frame while the rest do not): their
    outside share with and without the band, and the band's part of their outside mass against a uniform map's."""
    if study.border is None or study.focus.empty:
        return ""
    k = study._pos(study.focus["id"])
    share, uniform = study.border.share[k], study.border.uniform[k]
    ok = np.isfinite(share) & np.isfinite(uniform)
    if not ok.any():
        return ""
    return (f"{study.names[0]} ({int(ok.sum())} map(s), medians): {np.nanmedian(study.outside[k][ok]):.3f} outside the "
            f"lungs over the whole image, {np.nanmedian(study.inner[k][ok]):.3f} with the {study.border.width_px}-px "
            f"border band left out; the band holds {np.median(share[ok]):.3f} of their outside mass (a uniform map: "
            f"{np.median(uniform[ok]):.3f}).")


def compare_outside_lung(study: FailureStudy) -> OutsideLungComparison:
    """The outside-lung shares the study reads (:meth:`FailureStudy.read_of`) of the focus group (the misses, or the
    near misses) against the other detections: Mann-Whitney U (:func:`compare_groups`), the data-driven cut-off of
    :func:`failure_cutoffs` (falling back to :data:`DEFAULT_CUTOFFS`), the chance level of a uniform map, the border
    check and the "no map" count, as sentences. Empty maps (NaN) are left out of every number and counted."""
    focus_name, rest_name = study.names
    focus, rest = study.read_of(study.focus["id"]), study.read_of(study.rest["id"])
    groups = {"FN": study.read_of(study.fn["id"]), "near miss": study.read_of(study.near["id"]),
              "TP (all)": study.read_of(study.tp["id"])}
    stats = compare_groups(focus, rest, (focus_name, rest_name))
    default = DEFAULT_CUTOFFS["outside_lung"]
    assert default is not None
    cut = failure_cutoffs(outside_reference=rest).get("outside_lung", default)
    chance = float(np.median(1 - study.lung_masks.mean(axis=(1, 2))))
    above = (int((focus > cut).sum()), int((rest > cut).sum()))
    lines = [s for s in (study.border.sentence() if study.border is not None else "", _border_of_focus(study),
                         verdicts.no_map_sentence(int(np.sum(study.no_map)), len(study.maps), "PNEUMONIA maps")) if s]
    lines += [f"share read: {study.reading}; lung masks: {study.lung_source}; chance level (uniform map) {chance:.3f}; "
              f"90th percentile of {rest_name} {cut:.3f}",
              f"median outside-lung share: {focus_name} {stats['median_a']:.3f} (n={stats['n_a']}) vs "
              f"{rest_name} {stats['median_b']:.3f} (n={stats['n_b']})",
              f"Mann-Whitney U = {stats['U']:.1f}, two-sided p = {stats['p']:.3g}" if np.isfinite(stats["p"])
              else "no test"]
    if study.border is not None and study.border.matters:
        whole = compare_groups(study.outside_of(study.focus["id"]), study.outside_of(study.rest["id"]))
        lines.append(f"over the whole image (notebook 05's number) the medians would be {whole['median_a']:.3f} vs "
                     f"{whole['median_b']:.3f}")
    if stats["note"]:
        lines.append(f"note: {stats['note']}")
    lines.append(f"cases above that percentile ({cut:.1%} outside): {above[0]} of {len(focus)} {focus_name}, "
                 f"{above[1]} of {len(rest)} {rest_name}")
    return OutsideLungComparison(groups, stats, float(cut), chance, above, lines)


def threshold_tradeoff(study: FailureStudy, predictions: pd.DataFrame) -> list[str]:
    """What moving the threshold would cost, in counts, as sentences: with misses, the threshold that would just catch
    the lowest-scoring miss; without, one just above the near misses (:func:`threshold_cost` on ``predictions``).
    An illustration on the test set, not a way to choose a threshold (notebook 04 does that on validation)."""
    threshold = study.threshold
    if study.has_fn:
        lower = float(study.fn["prob"].min())  # the threshold that would have caught every miss above
        c = threshold_cost(predictions, threshold, lower)
        return [f"at threshold {threshold:.4f}: {c['fn']} missed, {c['fp']} false alarms (of {c['n_negative']} NORMAL)",
                f"at threshold {lower:.4f} (just catching the lowest-scoring miss): {c['fn_new']} missed, "
                f"{c['fp_new']} false alarms, i.e. {c['fp_new'] - c['fp']} more children recalled per "
                f"{c['fn'] - c['fn_new']} more pneumonia(s) caught"]
    upper = float(study.near["prob"].max()) if len(study.near) else threshold
    c = threshold_cost(predictions, threshold, np.nextafter(upper, 1.0))
    return [f"no miss at {threshold:.4f} ({c['fp']} false alarms of {c['n_negative']} NORMAL); a threshold just above "
            f"the near misses ({upper:.4f}) would miss {c['fn_new']} and raise {c['fp_new']} false alarms"]
