"""Verdicts from numbers: one rule for "is this difference above, below or within a margin of zero", and the
sentences the notebooks print, each produced from the numbers it states.

Every comparison in the series is a paired difference with a 95 % interval (``{"value", "ci_low", "ci_high"}``,
as :func:`utils.evaluate.metrics.paired_difference_ci` and :func:`~utils.evaluate.metrics.operating_point_bootstrap`
return it). :func:`difference_verdict` reads one such difference against a practical ``margin``:

* ``"above"`` — the whole interval lies above zero **and** the estimate is at least ``margin`` away from zero;
* ``"below"`` — the whole interval lies below zero and the estimate is at least ``margin`` away from zero;
* ``"within"`` — the interval excludes zero but the estimate is closer to zero than ``margin``: detectable,
  too small to matter (only possible with ``margin > 0``); :func:`interval_side` says on which side;
* ``"inconclusive"`` — the interval includes zero (equal maps, a tie, too few images: this run cannot tell);
* ``"not measured"`` — the estimate is missing (NaN: nothing was scored).

**No map.** A map with no location — constant everywhere (all zero included) or with no finite value — is "no map"
(:func:`is_empty_map`, :func:`empty_maps`): every scorer counts it and never scores it, and every figure draws it as
such (one rule for :mod:`utils.explain` and :mod:`utils.viz`, which both import this layer).

The sentence functions (:func:`road_sentence`, :func:`sanity_sentence`, :func:`baseline_sentence`,
:func:`no_map_sentence`) take only numbers and return the words; tests feed them the edge cases (negative
drops, equal maps, empty maps, a difference inside the margin, an interval across zero). Pure functions: no
file, no model, no state.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from utils.evaluate.metrics import format_ci

__all__ = [
    "FLAT_SLOPE",
    "VERDICTS",
    "baseline_sentence",
    "baseline_verdict",
    "difference_verdict",
    "empty_maps",
    "format_difference",
    "interval_side",
    "is_empty_map",
    "no_map_sentence",
    "road_scale_sentence",
    "road_sentence",
    "road_verdict",
    "sanity_sentence",
    "sanity_step_verdict",
    "verdict_phrase",
]

#: The outcomes of :func:`difference_verdict`.
VERDICTS: tuple[str, ...] = ("above", "below", "within", "inconclusive", "not measured")


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def interval_side(diff: Mapping[str, float]) -> str:
    """Where the 95 % interval of ``diff`` lies: ``"above"`` zero, ``"below"`` zero, ``"across"`` it (zero
    included, or the interval is missing) or ``"not measured"`` (no estimate)."""
    if not _finite(diff.get("value")):
        return "not measured"
    lo, hi = diff.get("ci_low"), diff.get("ci_high")
    if _finite(lo) and float(lo) > 0:  # type: ignore[arg-type]
        return "above"
    if _finite(hi) and float(hi) < 0:  # type: ignore[arg-type]
        return "below"
    return "across"


def difference_verdict(diff: Mapping[str, float], margin: float = 0.0) -> str:
    """The verdict of one difference with its interval against a practical ``margin`` (see the module docstring):
    ``"above"``, ``"below"``, ``"within"``, ``"inconclusive"`` or ``"not measured"``.

    The interval decides the side; the estimate must then be at least ``margin`` from zero (``|value| >= margin``;
    with ``margin=0`` the interval alone decides)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    side = interval_side(diff)
    if side in ("not measured", "across"):
        return "inconclusive" if side == "across" else side
    return side if abs(float(diff["value"])) >= margin else "within"


def format_difference(diff: Mapping[str, float], digits: int = 3) -> str:
    """``"+0.012 [95% CI +0.004, +0.020]"`` (``"not measured"`` for a missing estimate)."""
    if not _finite(diff.get("value")):
        return "not measured"
    text = format_ci(diff, digits, signed=True)
    return text.replace("[", "[95% CI ", 1)


def verdict_phrase(verdict: str, margin: float = 0.0, side: str = "") -> str:
    """Words for a :func:`difference_verdict` outcome, e.g. ``"above zero"`` or ``"detectably above zero but within
    the margin of 0.005"`` (``side`` from :func:`interval_side` names the side of a ``"within"``)."""
    phrases = {"above": "above zero" + (f" by at least the margin of {margin:g}" if margin else ""),
               "below": "below zero" + (f" by at least the margin of {margin:g}" if margin else ""),
               "within": f"detectably {side or 'away from'} zero but within the margin of {margin:g}",
               "inconclusive": "not distinguishable from zero (the interval includes it)",
               "not measured": "not measured"}
    if verdict not in phrases:
        raise ValueError(f"unknown verdict {verdict!r}: one of {', '.join(VERDICTS)}")
    return phrases[verdict]


# ------------------------------------------------------------------------------------------- empty maps
def empty_maps(maps: np.ndarray) -> np.ndarray:
    """Boolean (N,): which maps of ``maps`` (N, H, W) are "no map" — constant over their finite values (all zero
    included) or without any finite value."""
    a = np.asarray(maps, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {a.shape}")
    flat = a.reshape(len(a), int(np.prod(a.shape[1:])))
    finite = np.isfinite(flat)
    top = np.where(finite, flat, -np.inf).max(axis=1, initial=-np.inf)
    low = np.where(finite, flat, np.inf).min(axis=1, initial=np.inf)
    return np.asarray(~finite.any(axis=1) | (top <= low), dtype=bool)


def is_empty_map(cam: np.ndarray) -> bool:
    """True for one map (H, W) with no location: constant everywhere (all zero included) or nothing finite."""
    return bool(empty_maps(np.asarray(cam)[None])[0])


def no_map_sentence(n_no_map: int, n_total: int, what: str = "maps") -> str:
    """How many of ``n_total`` maps were empty or constant (``"no map"``: counted, never scored); ``""`` when none."""
    if n_total < 0 or not 0 <= n_no_map <= n_total:
        raise ValueError(f"need 0 <= n_no_map <= n_total, got {n_no_map} of {n_total}")
    if n_no_map == 0:
        return ""
    if n_no_map == n_total:
        return f"All {n_total} {what} were empty or constant (no map): nothing could be scored."
    return (f"{n_no_map} of {n_total} {what} were empty or constant: counted as 'no map' and left out of the "
            f"scores ({n_total - n_no_map} scored).")


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


# ------------------------------------------------------------------------------------------- ROAD
def road_verdict(own_drop: Mapping[str, float], difference: Mapping[str, float], margin: float = 0.0) -> str:
    """ROAD's verdict from two intervals: ``own_drop`` (the mean fall of the target's logit margin when the map's
    most relevant pixels are removed) and ``difference`` (combined ROAD score, map − null, paired).

    ``"faithful"`` needs both above zero (``difference`` by at least ``margin``); ``"not faithful"`` when the drop
    is below zero (removing what the map points at *raises* the score) or the null beats the map; ``"no map"`` when
    nothing was scored; otherwise ``"not shown"`` (an interval includes zero, or a difference inside the margin)."""
    drop, diff = difference_verdict(own_drop), difference_verdict(difference, margin)
    if drop == "not measured" or diff == "not measured":
        return "no map"
    if drop == "above" and diff == "above":
        return "faithful"
    if drop == "below" or diff == "below":
        return "not faithful"
    return "not shown"


def road_sentence(own_drop: Mapping[str, float], difference: Mapping[str, float], null: str = "the same map "
                  "moved elsewhere", n_no_map: int = 0, n_total: int | None = None, margin: float = 0.0,
                  control: Mapping[str, float] | None = None, controls: str = "control images",
                  n_controls: int | None = None) -> str:
    """The ROAD verdict as a sentence (see :func:`road_verdict`): the drop and the map − null difference with their
    intervals, what they mean, and how many maps were 'no map'. ``control``: the mean change of the target's logit
    margin when the same pixels are removed from ``controls`` (images without the evidence); when its interval lies
    above zero the removal itself adds evidence, and the sentence says so. ``n_controls``: how many distinct control
    images (default: the interval's ``n``, the number of maps applied to them)."""
    n_total = int(own_drop.get("n", 0)) + n_no_map if n_total is None else n_total
    empty = no_map_sentence(n_no_map, n_total)
    verdict = road_verdict(own_drop, difference, margin)
    if verdict == "no map":
        return _join("ROAD was not scored:", empty or "no maps were given.")
    drop_txt = f"mean drop of the target's logit margin {format_difference(own_drop)}"
    diff_txt = f"combined ROAD score (map − {null}) {format_difference(difference)}"
    dv, fv = difference_verdict(own_drop), difference_verdict(difference, margin)
    if verdict == "faithful":
        head = (f"The map is faithful: removing its most relevant pixels lowers the target's logit margin "
                f"({drop_txt}), and it beats {null} ({diff_txt}).")
    elif dv == "below":
        head = (f"The map is not faithful: removing its most relevant pixels *raises* the target's logit margin "
                f"({drop_txt}).")
    elif fv == "below":
        head = f"The map is not faithful: {null} beats it ({diff_txt})."
    elif dv != "above":
        head = (f"Faithfulness not shown: removing the map's most relevant pixels does not detectably lower the "
                f"target's logit margin ({drop_txt}; the interval includes zero)" +
                (f", although the map beats {null} ({diff_txt})." if fv == "above" else "."))
    elif fv == "within":
        head = (f"Faithfulness not shown: the map beats {null} only by less than the margin of {margin:g} "
                f"({diff_txt}).")
    else:
        head = (f"Faithfulness not shown: removing the map's pixels lowers the logit margin ({drop_txt}), but no "
                f"more than removing {null}'s ({diff_txt}; the interval includes zero).")
    bias = ""
    if control is not None and difference_verdict(control) == "above":
        count = int(control.get("n", 0)) if n_controls is None else int(n_controls)
        bias = (f"The removal itself adds evidence here: removing the same pixels from {count} "
                f"{controls} raises their logit margin by {format_difference(control)} (the imputed patch reads as "
                f"evidence for the class), so a drop is biased towards zero" +
                (" — this ROAD cannot show faithfulness on this model." if verdict != "faithful" else "."))
    return _join(head, bias, empty)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


#: Below this dP/d(margin) = P(1 − P) (P beyond ≈ 0.95 or below ≈ 0.05) a probability curve is called flat: a change
#: of 1 in logit margin moves P by less than 0.05.
FLAT_SLOPE = 0.05


def road_scale_sentence(margin0: float, fractions: Sequence[float], map_change: Sequence[float],
                        null_change: Sequence[float], own_drop: Mapping[str, float],
                        control_change: Sequence[float] | None = None, control: Mapping[str, float] | None = None,
                        null: str = "another image's map", controls: str = "NORMAL images") -> str:
    """Why ROAD's curves can or cannot separate on this model, from its numbers.

    ``margin0``: the median logit margin of the target before any removal; ``fractions``: the removed fractions;
    ``map_change`` / ``null_change``: the mean change of the margin after removing each fraction, most relevant first,
    for the map and the null; ``own_drop``: the map's mean drop with its interval; ``control_change`` / ``control``:
    the same per fraction and overall (with interval) for the control images. Three statements: the scale (how far a
    change of 1 in logit margin moves P at ``margin0``: probability curves flatten near P = 1), what the removal
    does by itself (the control), and the reading — the curves **can** separate when the control's change is smaller
    than the map's own drop (or not detectably above zero), **cannot** when the removal adds at least as much as the
    map's pixels take away."""
    fr = [100 * float(f) for f in fractions]
    if not fr or len(map_change) != len(fr) or len(null_change) != len(fr):
        raise ValueError("road_scale_sentence needs one change per fraction for the map and the null")
    if not _finite(margin0):
        return "ROAD's scale was not measured (no map was scored)."
    p0 = _sigmoid(float(margin0))
    span = f"{fr[0]:g}–{fr[-1]:g} %" if len(fr) > 1 else f"{fr[0]:g} %"
    slope = p0 * (1 - p0)
    scale = (f"Scale: the logit margin, which starts at a median of {margin0:.2f} on these images (P = {p0:.3f}); "
             + (f"there a change of 1 in margin moves P by only {slope:.3f}, so curves of P would look flat whatever "
                f"the map does." if slope < FLAT_SLOPE else
                f"there a change of 1 in margin moves P by {slope:.3f}: P is not saturated on these images."))
    moved = (f"Removing {span} of the pixels, most relevant first, changes the margin by "
             f"{float(map_change[0]):+.2f} … {float(map_change[-1]):+.2f} for the map and "
             f"{float(null_change[0]):+.2f} … {float(null_change[-1]):+.2f} for {null}.")
    if control is None or control_change is None or not _finite(control.get("value")):
        return _join(scale, moved, "No control images were given: what the removal does by itself was not measured.")
    ctl = (f"The same removal on {controls} changes their margin by {float(control_change[0]):+.2f} … "
           f"{float(control_change[-1]):+.2f} (mean {format_difference(control)}): what imputing these pixels does by "
           f"itself.")
    drop = float(own_drop["value"]) if _finite(own_drop.get("value")) else 0.0
    rise = float(control["value"])
    if difference_verdict(control) != "above" or rise < max(drop, 0.0):
        reading = ("The removal is close to neutral next to what the map's pixels carry, so the curves can separate: "
                   f"a gap between the map and {null} is the map's.")
    else:
        reading = (f"The removal adds at least as much evidence as the map's pixels take away ({rise:+.2f} on "
                   f"{controls} against a mean drop of {drop:+.2f}), so the curves cannot separate for a reason that "
                   f"is the imputation's, not the map's; {null} removes the same kind of tissue and carries the "
                   f"same bias, which is why the verdict compares the map with it.")
    return _join(scale, moved, ctl, reading)


# ------------------------------------------------------------------------------------------- sanity check
def sanity_step_verdict(difference: Mapping[str, float], margin: float = 0.0) -> str:
    """One randomisation step: the similarity of the trained and randomised maps of the same image minus the
    reference level (e.g. the trained map against another image's randomised map), paired per image.
    ``"above the reference"`` when the interval is above zero (by at least ``margin``), ``"at the reference"``
    otherwise (inside the margin, across zero or below), ``"no map"`` when nothing was scored."""
    v = difference_verdict(difference, margin)
    if v == "not measured":
        return "no map"
    return "above the reference" if v == "above" else "at the reference"


def sanity_sentence(steps: Sequence[Mapping[str, Any]], metric: str = "|rho|", reference: str = "the trained map "
                    "against another image's randomised map", n_no_map: int = 0, n_total: int | None = None,
                    margin: float = 0.0) -> str:
    """The randomisation check as a sentence. ``steps``: from the first block that must have changed the map down to
    the stem, each ``{"blocks": "fc+layer4", "similarity": {value, ci_low, ci_high}, "reference": {...},
    "difference": {value, ci_low, ci_high}}`` (similarity − reference, paired). Passes when every step is at the
    reference level; the sentence names the worst step (the largest difference among the steps above the reference,
    else among all) with its numbers."""
    if not steps:
        raise ValueError("sanity_sentence needs at least one randomisation step")
    n_total = int(steps[0]["difference"].get("n", 0)) + n_no_map if n_total is None else n_total
    empty = no_map_sentence(n_no_map, n_total)
    verdicts = [sanity_step_verdict(s["difference"], margin) for s in steps]
    if all(v == "no map" for v in verdicts):
        return _join("The randomisation check was not scored:", empty or "no maps were given.")
    measured = [(s, v) for s, v in zip(steps, verdicts) if v != "no map"]
    above = [(s, v) for s, v in measured if v == "above the reference"]
    worst, _ = max(above or measured, key=lambda sv: float(sv[0]["difference"]["value"]))
    numbers = (f"{metric} {format_ci(worst['similarity'])} vs {format_ci(worst['reference'])} for {reference}; "
               f"difference {format_difference(worst['difference'])}")
    first = steps[0]["blocks"]
    if above:
        head = (f"{metric}: above the reference level at {len(above)} of {len(measured)} steps from {first} down to "
                f"the stem — with {worst['blocks']} randomised, the randomised map of an image still resembles its "
                f"trained map more than the reference does ({numbers}): part of the map reflects the image, not only "
                f"the trained weights.")
    else:
        head = (f"{metric}: at the reference level from {first} down to the stem — once randomised, the map of an image "
                f"resembles its trained map no more than the reference does (worst step, {worst['blocks']}: {numbers}): "
                f"the map depends on the trained weights.")
    return _join(head, empty)


# ------------------------------------------------------------------------------------------- localisation
def baseline_verdict(difference: Mapping[str, float], margin: float = 0.0) -> str:
    """The map against the best image-blind baseline (map − baseline, paired): ``"beats"``, ``"worse"``,
    ``"ties"`` (across zero or inside the margin) or ``"no map"``."""
    v = difference_verdict(difference, margin)
    return {"above": "beats", "below": "worse", "not measured": "no map"}.get(v, "ties")


def baseline_sentence(metric: str, map_value: float, baseline: str, baseline_value: float,
                      difference: Mapping[str, float], n: int, n_no_map: int = 0, margin: float = 0.0,
                      images: str = "test true positives") -> str:
    """The localisation verdict as a sentence: the map's score, the best baseline's, the paired difference with its
    interval, the verdict (:func:`baseline_verdict`) and the 'no map' count."""
    empty = no_map_sentence(n_no_map, n + n_no_map)
    verdict = baseline_verdict(difference, margin)
    if verdict == "no map":
        return _join(f"{metric}: not scored.", empty or f"No {images} to score.")
    numbers = (f"{metric}: the map {map_value:.3f} vs the best image-blind baseline, {baseline}, {baseline_value:.3f}; "
               f"difference {format_difference(difference)} on {n} {images}")
    tail = {"beats": "the map beats every image-blind baseline.",
            "worse": "the map is worse than the best image-blind baseline: it shows less than a map that never looks "
                     "at the image.",
            "ties": ("the map does not beat the best image-blind baseline" +
                     (f" by the margin of {margin:g}" if margin else "") + ": read its maps as hints, not locations.")}
    return _join(f"{numbers} — {tail[verdict]}", empty)
