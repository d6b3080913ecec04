"""The randomisation sanity check (Adebayo et al., 2018, "Sanity checks for saliency maps"), read against a
reference level measured in the same run.

:func:`cascading_randomisation` re-initialises the model block by block from the top (``fc``, ``layer4`` … the
stem) and recomputes the maps. If they barely change, the maps explain the image (edges, brightness, the upsampling
grid), not the model. But "barely" needs a yardstick: maps of chest films share their geometry (lungs in the same
places, the same upsampling grid, the same border behaviour), so a rank correlation never falls to zero — on real
data it stays near 0.4 down to the stem. A fixed threshold (0.5) cannot tell that floor from a map that survived.

:func:`randomisation_check` measures the floor at every step, per image and paired: the similarity of the trained
map of image *i* to the randomised map of **another image** *j* (a derangement) — everything the two share is
generic, nothing is specific to image *i*. Against it, the similarity of the trained and randomised maps of the
*same* image, with a patient-bootstrap interval on the difference:

* **at the reference level** — the randomised model's map of this image resembles the trained map no more than
  another image's does: randomisation removed everything image-specific, the map depends on the trained weights;
* **above it** — part of the trained map survives randomisation: it reflects this image, not only the model.

A method whose map does not depend on the weights at all (an edge detector) is above the reference at every step
(its randomised map *is* the trained one, another image's is not); a map the weights alone draw is at it. As a
second reading, :func:`randomisation_check` also reports how alike two independently initialised models' maps of the
same image are (``random_models``), against their maps of different images: well above means the *method* follows
the image whatever the weights.

Similarity is measured both ways Adebayo et al. report: |Spearman ρ| (:func:`spearman_maps`; an inverted map still
reproduces the image's structure) and SSIM (:func:`ssim`, Wang et al. 2004). Empty or constant maps are "no map":
counted, never scored. The sentence comes from :func:`utils.evaluate.verdicts.sanity_sentence`.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi
from scipy import stats
from torch import nn

from utils.errors import UserError
from utils.evaluate.metrics import paired_difference_ci
from utils.evaluate.verdicts import no_map_sentence, sanity_sentence, sanity_step_verdict
from utils.explain._model import fixed_targets, layer_name
from utils.explain.gradcam import Targets, gradcam
from utils.explain.localisation import empty_maps
from utils.explain.road import derangement

__all__ = [
    "RANDOMISATION_ORDER",
    "REFERENCE",
    "SIMILARITIES",
    "cascading_randomisation",
    "random_model",
    "randomisation_check",
    "sanity_record",
    "spearman_maps",
    "ssim",
    "ssim_maps",
]

#: The blocks of a ResNet, randomised top first (the stem = conv1 + bn1, the last one reached).
RANDOMISATION_ORDER: tuple[str, ...] = ("fc", "layer4", "layer3", "layer2", "layer1", "stem")

#: The similarity measures of :func:`randomisation_check` and how a sentence names them.
SIMILARITIES: dict[str, str] = {"abs_spearman": "|Spearman rho|", "ssim": "SSIM"}

CamFn = Callable[[nn.Module, torch.Tensor, str, np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------------ similarity
def spearman_maps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of flattened maps, per image.

    A constant (flat) map has no ranking: against a structured map it scores 0 (nothing shared);
    when both maps are flat the value is NaN (undefined) and is left out of means.
    """
    out = np.full(len(a), np.nan)
    for i, (u, v) in enumerate(zip(a, b)):
        flat_u, flat_v = np.ptp(u) == 0, np.ptp(v) == 0
        if not (flat_u or flat_v):
            out[i] = stats.spearmanr(u.ravel(), v.ravel()).statistic
        elif flat_u != flat_v:
            out[i] = 0.0
    return out


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> float:
    """Mean structural similarity of two 2-D maps (Wang et al. 2004): local means, variances and covariance under a
    Gaussian window (sigma 1.5, truncated at 3.5 sigma: 11 × 11), ``C1 = (k1 L)²``, ``C2 = (k2 L)²`` with
    ``L = data_range``, population (not sample) covariances, reflected borders, and the mean taken over the pixels
    at least a window radius from the edge — the conventions of scikit-image's ``structural_similarity`` with
    ``gaussian_weights=True``. 1 for identical maps; for two constant maps ``(2 a b + C1) / (a² + b² + C1)``."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"ssim compares two 2-D maps of one shape, got {x.shape} and {y.shape}")
    truncate = 3.5
    radius = int(truncate * sigma + 0.5)
    if min(x.shape) <= 2 * radius:
        raise ValueError(f"maps of {x.shape} are too small for an SSIM window of {2 * radius + 1} px")

    def blur(z: np.ndarray) -> np.ndarray:
        return ndi.gaussian_filter(z, sigma, mode="reflect", truncate=truncate)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s[radius:-radius, radius:-radius].mean())


def ssim_maps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`ssim` per image of two stacks of maps (N, H, W) in [0, 1]."""
    return np.array([ssim(u, v) for u, v in zip(a, b)], dtype=np.float64)


# ------------------------------------------------------------------------------------ randomisation
def _reset_block(model: nn.Module, block: str) -> None:
    """Re-initialise every parameter (and BatchNorm statistic) of ``block``; ``"stem"`` = conv1 + bn1."""
    names = ["conv1", "bn1"] if block == "stem" else [block]
    for top in (model.get_submodule(n) for n in names):
        for m in top.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
                m.reset_parameters()  # conv/linear: fresh random weights; batch-norm: affine and statistics reset


def random_model(model: nn.Module, seed: int, order: Sequence[str] = RANDOMISATION_ORDER) -> nn.Module:
    """A deep copy of ``model`` with every block of ``order`` re-initialised (seeded): an untrained model of the same
    architecture. Two seeds give two independently initialised models (the reference of :func:`randomisation_check`)."""
    work = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for block in order:
            _reset_block(work, block)
    return work


def _default_cam(m: nn.Module, x: torch.Tensor, layer: str, t: np.ndarray) -> np.ndarray:
    return gradcam(m, x, layer, t)[0]


def cascading_randomisation(model: nn.Module, x: torch.Tensor, targets: Targets = None,
                            layer: str | nn.Module = "layer4", order: Sequence[str] = RANDOMISATION_ORDER,
                            seed: int = 0, cam_fn: CamFn | None = None) -> pd.DataFrame:
    """Re-initialise the weights block by block from the top — down to the stem — and recompute the maps.

    Runs on a deep copy (the model passed in is untouched); targets are fixed before randomising
    (None = the trained model's predictions). Returns one row per step: ``step`` (0 = trained),
    ``randomised`` (the block re-initialised at this step), ``blocks`` (all so far), ``rho`` (per-image
    Spearman rank correlations with the trained maps, an array: a map gone flat scores 0), ``spearman`` /
    ``abs_spearman`` (means of ρ and |ρ|), ``spearman_std``, ``q25`` / ``q75`` (quartiles of |ρ|),
    ``n_flat`` (constant maps) and ``maps`` (N, H, W). A map that keeps a large **|ρ|** — positive or
    negative, an inverted map still reproduces the image's structure — after its model was randomised
    explains the image, not the model (:func:`randomisation_check` reads it against a reference level).

    ``cam_fn(model, x, layer_name, targets) -> maps`` computes the maps (default: plain Grad-CAM), so the
    same check runs on any explanation, e.g. ``lambda m, x, l, t: utils.explain.maps.explain(m, x, spec, t)[0]``.
    """
    name = layer_name(model, layer)
    cam_fn = cam_fn or _default_cam
    work = copy.deepcopy(model)
    t = fixed_targets(work, x, targets)
    trained = cam_fn(work, x, name, t)

    def row(step: int, block: str, blocks: str, maps: np.ndarray, rho: np.ndarray) -> dict:
        ok = rho[np.isfinite(rho)]
        a = np.abs(ok)
        return {"step": step, "randomised": block, "blocks": blocks, "rho": rho,
                "spearman": float(ok.mean()) if ok.size else float("nan"),
                "abs_spearman": float(a.mean()) if a.size else float("nan"),
                "spearman_std": float(ok.std()) if ok.size else float("nan"),
                "q25": float(np.percentile(a, 25)) if a.size else float("nan"),
                "q75": float(np.percentile(a, 75)) if a.size else float("nan"),
                "n_flat": int(sum(np.ptp(m) == 0 for m in maps)), "maps": maps}

    rows = [row(0, "", "none (trained)", trained, np.ones(len(trained)))]
    done: list[str] = []
    for i, block in enumerate(order, start=1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            _reset_block(work, block)
        done.append(block)
        maps = cam_fn(work, x, name, t)
        rows.append(row(i, block, "+".join(done), maps, spearman_maps(trained, maps)))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ the check
#: How the sentence names the reference of :func:`randomisation_check`.
REFERENCE = "the trained map against another image's randomised map"


def _similarity(a: np.ndarray, b: np.ndarray, metric: str, keep: np.ndarray) -> np.ndarray:
    """Per-image similarity of two stacks of maps; NaN where ``keep`` is False."""
    out = np.full(len(a), np.nan)
    if keep.any():
        out[keep] = np.abs(spearman_maps(a[keep], b[keep])) if metric == "abs_spearman" else ssim_maps(a[keep], b[keep])
    return out


def _mean_ci(values: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    return paired_difference_ci(values, np.zeros_like(values), groups, n_boot=n_boot, seed=seed)


def randomisation_check(model: nn.Module, x: torch.Tensor, targets: Targets = None,
                        layer: str | nn.Module = "layer4", order: Sequence[str] = RANDOMISATION_ORDER,
                        seed: int = 0, cam_fn: CamFn | None = None, groups: Sequence[Any] | np.ndarray | None = None,
                        after: str = "layer4", metrics: Sequence[str] = tuple(SIMILARITIES), margin: float = 0.0,
                        n_boot: int = 1000, table: pd.DataFrame | None = None,
                        random_models: bool = True) -> dict[str, Any]:
    """The sanity check with its reference level (see the module docstring).

    Runs :func:`cascading_randomisation` (or reads ``table``, its output for the same ``x``, targets and seed) and,
    for every step from ``after`` down to the stem and every similarity in ``metrics``, the per-image difference
    *similarity(trained_i, randomised_i) − similarity(trained_i, randomised_j)* (j: another image, a fixed
    derangement), bootstrapped over patients (``groups``). The check passes when every step is at the reference
    level for every metric. ``random_models``: also map the images with two independently initialised models
    (:func:`random_model`, seeds ``seed + 1000`` and ``seed + 2000``) and report their same-image and
    other-image similarity.

    Returns ``{"table", "pairing", "steps": {metric: [{"blocks", "similarity", "reference", "difference", "verdict",
    "n_flat"}]}, "random_models": {metric: {"same_image", "other_image", "n_no_map"}} (or {}), "passes", "verdict",
    "sentences": {metric: str}, "sentence", "n", "n_no_map", "after", "n_boot", "margin"}``; images whose trained map
    is empty are "no map". :func:`sanity_record` makes it JSON.
    Bad input (fewer than two images, an unknown metric or block) is a one-line :class:`~utils.errors.UserError`."""
    if len(x) < 2:
        raise UserError(f"the randomisation check compares each image with another one: pass at least two images "
                        f"(got {len(x)}).")
    unknown = [m for m in metrics if m not in SIMILARITIES]
    if unknown or not metrics:
        raise UserError(f"unknown similarity {unknown or list(metrics)}: choose from {', '.join(SIMILARITIES)}.")
    if groups is not None and len(groups) != len(x):
        raise UserError(f"got {len(groups)} patient ids for {len(x)} images: pass one per image (or None).")
    name = layer_name(model, layer)
    cam_fn = cam_fn or _default_cam
    t = fixed_targets(model, x, targets)
    if table is None:
        table = cascading_randomisation(model, x, t, name, order, seed, cam_fn)
    steps = table[table["step"] > 0].reset_index(drop=True)
    names = list(steps["randomised"])
    if after not in names:
        raise UserError(f"{after!r} is not one of the randomised blocks {names}: choose one of them for 'after'.")
    trained = np.asarray(table["maps"].iloc[0])
    grp = np.arange(len(x)) if groups is None else np.asarray(groups)
    other = derangement(len(x), seed)
    has_map = ~empty_maps(trained)
    out: dict[str, Any] = {"table": table, "pairing": other, "steps": {}, "random_models": {}, "sentences": {},
                           "n": int(has_map.sum()), "n_no_map": int((~has_map).sum()), "after": after,
                           "n_boot": int(n_boot), "margin": float(margin)}
    passes = True
    for metric in metrics:
        rows = []
        for _, st in steps.iloc[names.index(after):].iterrows():
            maps = np.asarray(st["maps"])
            mapped = has_map & ~empty_maps(maps)
            keep = mapped & mapped[other]
            sim = _similarity(trained, maps, metric, keep)
            ref = _similarity(trained, maps[other], metric, keep)
            diff = paired_difference_ci(sim[keep], ref[keep], grp[keep], n_boot=n_boot, seed=seed)
            verdict = sanity_step_verdict(diff, margin)
            passes &= verdict != "above the reference"
            rows.append({"blocks": st["blocks"], "similarity": _mean_ci(sim[keep], grp[keep], n_boot, seed),
                         "reference": _mean_ci(ref[keep], grp[keep], n_boot, seed), "difference": diff,
                         "verdict": verdict, "n_flat": int((has_map & empty_maps(maps)).sum())})
        out["steps"][metric] = rows
        out["sentences"][metric] = sanity_sentence(rows, SIMILARITIES[metric], REFERENCE, margin=margin)
    if random_models:
        a, b = (cam_fn(random_model(model, seed + k, order), x, name, t) for k in (1000, 2000))
        ok = ~empty_maps(a) & ~empty_maps(b)
        keep = ok & ok[other]
        for metric in metrics:
            same, diff_img = _similarity(a, b, metric, keep), _similarity(a, b[other], metric, keep)
            out["random_models"][metric] = {"same_image": _mean_ci(same[keep], grp[keep], n_boot, seed),
                                            "other_image": _mean_ci(diff_img[keep], grp[keep], n_boot, seed),
                                            "n_no_map": int((~ok).sum())}  # a random model's map is often empty
    measured = out["n"] > 0 and any(r["verdict"] != "no map" for rows in out["steps"].values() for r in rows)
    out["passes"] = bool(passes and measured)
    out["verdict"] = ("no map" if not measured else
                      "at the reference level" if passes else "above the reference level")
    out["sentence"] = " ".join([*(out["sentences"][m] for m in metrics),
                                no_map_sentence(out["n_no_map"], len(x))]).strip()
    return out


def sanity_record(check: Mapping[str, Any]) -> dict[str, Any]:
    """A :func:`randomisation_check` result as JSON for ``assets/metrics.json`` (the maps left out): ``verdict``,
    ``passes``, ``sentence``, ``sentences`` (per similarity, named as in :data:`SIMILARITIES`), ``n``, ``n_no_map``,
    ``after``, ``reference`` (what the reference level is), ``steps`` and ``random_models`` (intervals per step and
    similarity) and ``bootstrap`` (how the intervals were made)."""
    def clean(d: Mapping[str, Any]) -> dict[str, Any]:
        return {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
                    else clean(v) if isinstance(v, Mapping) else v) for k, v in d.items()}

    return {"verdict": check["verdict"], "passes": bool(check["passes"]), "sentence": check["sentence"],
            "sentences": {SIMILARITIES[m]: text for m, text in check["sentences"].items()}, "n": int(check["n"]),
            "n_no_map": int(check["n_no_map"]), "after": check["after"], "reference": REFERENCE,
            "steps": {m: [clean(row) for row in rows] for m, rows in check["steps"].items()},
            "random_models": {m: clean(v) for m, v in check["random_models"].items()},
            "bootstrap": {"unit": "patient", "n_boot": int(check["n_boot"]), "paired": True}}
