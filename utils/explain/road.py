"""Faithfulness by ROAD (Rong et al., 2022, "A consistent and efficient evaluation strategy for attribution
methods"): remove pixels in the order a map ranks them, *impute* them from their neighbours, and watch the model.

* **Removal without new evidence.** Painting removed pixels grey or blurring them draws something a chest classifier
  reads as an opacity; :func:`linear_impute` (ROAD's noisy linear imputation, the same equations as
  pytorch-grad-cam's ``NoisyLinearImputer``) fills each removed pixel with the weighted mean of its neighbours.
* **Both orders.** Most relevant first (MoRF) should lower the target's score fast, least relevant first (LeRF)
  slowly. A map's ROAD score is their gap, averaged over the removed fractions (pytorch-grad-cam's
  ``ROADCombined``: ``(LeRF − MoRF) / 2`` of the score after removal).
* **A scale that can move.** Scores are the target's **logit margin** (its logit minus the largest other logit;
  for two classes the log-odds), not its probability, which squashes every change near p = 1.
* **A null of the map's own geometry.** Another image's map (:func:`deranged_maps`, the default) or the same map
  moved to another place (:func:`shifted_maps`: a cyclic shift, which keeps every value, hence the map's histogram
  and shape, and changes only where it points). Smoothed noise is no such null: a scatter of small blobs and one
  large blob differ in geometry, and geometry alone can decide a removal curve. Another image's map is the default
  because it also removes the same *kind* of tissue — chest films put their lungs in the same places, so it points
  into the lungs too, where a moved map often lands on the mediastinum or outside the body; whatever the removal
  does by itself to lung (see the controls below) then weighs on the map and the null alike. A map that ignores the
  image (a prior) ties with it by construction.
* **Controls.** The map's most relevant pixels are also removed from images *without* the evidence (NORMAL films):
  their change measures what the removal does by itself. On the phantoms an imputed patch of lung raises
  P(pneumonia) (it is smoother and brighter than the lung it replaces, like an opacity), more with every
  percent removed — which is why :data:`ROAD_FRACTIONS` stay at the size of a lesion's core, and why
  :func:`utils.evaluate.verdicts.road_scale_sentence` says, from the run's numbers, whether the curves can separate.

:func:`road_test` is the verdict: the map is **faithful** only if removing its most relevant pixels lowers the
logit margin (a patient-bootstrap interval above zero) *and* its ROAD score beats the null's on the same images
(paired interval above zero); the sentence comes from :func:`utils.evaluate.verdicts.road_sentence`. Empty or
constant maps are "no map": counted, never scored.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.errors import UserError
from utils.evaluate.metrics import paired_difference_ci
from utils.evaluate.verdicts import road_scale_sentence, road_sentence, road_verdict
from utils.explain._model import fixed_targets, model_device
from utils.explain.gradcam import Targets, eval_mode
from utils.explain.localisation import empty_maps

__all__ = [
    "NULLS",
    "ROAD_FRACTIONS",
    "deranged_maps",
    "derangement",
    "linear_impute",
    "logit_margin",
    "mean_changes",
    "null_maps",
    "removal_order",
    "road_curves",
    "road_images",
    "road_record",
    "road_test",
    "shifted_maps",
]

#: Fractions of the pixels removed (each order): up to 2 %, inside a lesion's core (a phantom lesion covers ~3 % of
#: the image). Beyond it the removal reaches dark lung, and an imputed patch of lung reads as an opacity. Measured on
#: the demo model (128 px, test NORMAL images as controls): removing the map's pixels from NORMAL films raised their
#: logit margin by +0.1 at 0.5 %, +0.5 at 1 %, +3.6 at 2 % and +9 at 5 %, while on the detected pneumonias the drop
#: peaked near 1–2 %. :func:`road_test`'s ``controls`` measure that bias in every run, and
#: :func:`utils.evaluate.verdicts.road_scale_sentence` reads it.
ROAD_FRACTIONS: tuple[float, ...] = (0.005, 0.01, 0.015, 0.02)

#: The nulls of :func:`null_maps`, and how a sentence names them.
NULLS: dict[str, str] = {"shift": "the same map moved elsewhere", "derangement": "another image's map"}


# ------------------------------------------------------------------------------------ imputation
#: The neighbour weights of ROAD's noisy linear imputation (Rong et al., 2022; as in pytorch-grad-cam).
_NEIGHBOURS: tuple[tuple[tuple[int, int], float], ...] = (
    ((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
    ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


def linear_impute(image: np.ndarray, keep: np.ndarray, noise: float = 0.01,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """Noisy linear imputation of one image (ROAD's, Rong et al. 2022): every pixel where ``keep`` is False
    becomes the weighted mean of its eight neighbours (solved jointly as one sparse linear system), plus Gaussian
    noise of sd ``noise``. The same equations as pytorch-grad-cam's ``NoisyLinearImputer`` (a test checks the two
    agree with ``noise=0``), with the system assembled from arrays instead of element by element — about ten times
    faster, which is what makes ROAD on 100 images affordable on a CPU. Notebook 08 uses it to remove burned-in
    markers too (:func:`utils.studies.markers.remove_markers`).

    ``image`` is (H, W) or (C, H, W): the channels share the system (one factorisation) and one noise field, so
    channels that were copies of one grey image before normalisation stay so after the imputation."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        flat_channels = img.reshape(len(img), -1)
    elif img.ndim == 2:
        flat_channels = img.reshape(1, -1)
    else:
        raise ValueError(f"an image to impute must be (H, W) or (C, H, W), got shape {img.shape}")
    keep = np.asarray(keep, dtype=bool)
    h, w = img.shape[-2:]
    if keep.shape != (h, w):
        raise ValueError(f"keep {keep.shape} must match the image's (H, W) = {(h, w)}")
    missing = np.flatnonzero(~keep.ravel())
    out = img.copy()
    if missing.size == 0:
        return out
    var = np.full(h * w, -1)
    var[missing] = np.arange(missing.size)
    r, c = np.divmod(missing, w)
    diag = np.zeros(missing.size)
    rhs = np.zeros((missing.size, len(flat_channels)))
    rows, cols, vals = [], [], []
    flat_keep = keep.ravel()
    for (dr, dc), weight in _NEIGHBOURS:
        rr, cc = r + dr, c + dc
        inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        eq, nb = np.flatnonzero(inside), rr[inside] * w + cc[inside]
        diag[eq] += weight
        known = flat_keep[nb]
        np.subtract.at(rhs, eq[known], weight * flat_channels[:, nb[known]].T)
        rows.append(eq[~known])
        cols.append(var[nb[~known]])
        vals.append(np.full(int((~known).sum()), weight))
    rows.append(np.arange(missing.size))
    cols.append(np.arange(missing.size))
    vals.append(-diag)
    system = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(missing.size, missing.size)).tocsc()
    solved = np.asarray(spsolve(system, rhs if rhs.shape[1] > 1 else rhs[:, 0])).reshape(missing.size, -1)
    if noise:
        solved = solved + (rng or np.random.default_rng()).normal(0.0, noise, (missing.size, 1))
    filled = out.reshape(len(flat_channels), -1)
    filled[:, missing] = solved.T
    return filled.reshape(img.shape)


# ------------------------------------------------------------------------------------ perturbed images
def removal_order(cam: np.ndarray, most_relevant_first: bool = True,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """Flat pixel indices of ``cam`` in removal order. Equal values (the zeros a ReLU leaves) come in raster order,
    or — given ``rng`` — in random order, so that least-relevant-first does not remove the top rows first."""
    flat = np.asarray(cam, dtype=np.float64).ravel()
    key = -flat if most_relevant_first else flat
    if rng is None:
        return np.argsort(key, kind="stable")
    return np.lexsort((rng.random(flat.size), key))


def road_images(x: torch.Tensor, maps: np.ndarray, fractions: Sequence[float] = ROAD_FRACTIONS,
                most_relevant_first: bool = True, noise: float = 0.01, seed: int = 0,
                random_ties: bool = False, per_channel: bool = False) -> torch.Tensor:
    """The perturbed copies (N × S, C, H, W) of ROAD: for each image and fraction f, the f most (or least)
    relevant pixels of its map removed and imputed (:func:`linear_impute`). ``random_ties``: equal map values are
    removed in a random order (seeded per image, :func:`removal_order`) instead of raster order.

    ``per_channel=False`` (the series' first ROAD) imputes channel 0 and copies it to every channel — after
    ImageNet normalisation the three channels of a grey image differ by an affine map, so the copy also shifts
    channels 1 and 2 everywhere; ``per_channel=True`` imputes every channel (one system, one noise field)."""
    n, c, h, w = x.shape
    rng = np.random.default_rng(seed)
    pixels = x.detach().cpu().numpy() if per_channel else x[:, :1].detach().cpu().numpy()
    out = np.empty((n, len(fractions), *pixels.shape[1:]), dtype=np.float32)
    for i in range(n):
        rank = removal_order(maps[i], most_relevant_first, np.random.default_rng([seed, i]) if random_ties else None)
        for k, f in enumerate(fractions):
            keep = np.ones(h * w, dtype=bool)
            keep[rank[:max(1, round(f * h * w))]] = False
            out[i, k] = linear_impute(pixels[i], keep.reshape(h, w), noise, rng)
    flat = torch.from_numpy(out).view(n * len(fractions), -1, h, w)
    return (flat if per_channel else flat.expand(-1, c, -1, -1)).to(x.dtype)


# ------------------------------------------------------------------------------------ nulls
def shifted_maps(maps: np.ndarray, seed: int = 0, min_frac: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Each map cyclically shifted (``np.roll``) by its own random offset ``(dy, dx)``, each drawn from
    ``[min_frac, 1 - min_frac]`` × the side, so the map's hot region lands at least a quarter of the image away.

    Why a cyclic shift: it is a permutation of the map's pixels, so every value — the histogram, the ranking ROAD
    reads, the blob's shape (cut at the seam where it wraps) — is kept and only the place changes. A translation
    that kept the map inside the frame would have to invent values for the strip it uncovers (a different histogram)
    or would only move maps with a compact support. Returns ``(shifted maps, offsets (N, 2))``."""
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {maps.shape}")
    if not 0 <= min_frac <= 0.5:
        raise ValueError(f"min_frac must lie in [0, 0.5], got {min_frac}")
    n, h, w = maps.shape
    rng = np.random.default_rng(seed)

    def draw(side: int) -> np.ndarray:
        lo = max(1, round(min_frac * side)) if side > 1 else 0
        return np.asarray(rng.integers(lo, max(lo, side - lo) + 1, size=n))

    offsets = np.stack([draw(h), draw(w)], axis=1)
    out = np.stack([np.roll(m, (int(dy), int(dx)), axis=(0, 1)) for m, (dy, dx) in zip(maps, offsets)]) \
        if n else maps.copy()
    return out, offsets


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A random permutation of ``range(n)`` with no fixed point (seeded): each item paired with another one."""
    if n < 2:
        raise ValueError("pairing each image with another one needs at least two images")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    while np.any(perm == np.arange(n)):  # rejection: about e ≈ 2.7 draws on average
        perm = rng.permutation(n)
    return perm


def deranged_maps(maps: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each image gets another image's map (:func:`derangement`). Returns ``(maps[perm], perm)``; needs at least two
    maps."""
    maps = np.asarray(maps)
    perm = derangement(len(maps), seed)
    return maps[perm], perm


def null_maps(maps: np.ndarray, kind: str = "shift", seed: int = 0) -> np.ndarray:
    """The null maps of :data:`NULLS`: ``"shift"`` (:func:`shifted_maps`) or ``"derangement"`` (:func:`deranged_maps`)."""
    if kind == "shift":
        return shifted_maps(maps, seed)[0]
    if kind == "derangement":
        return deranged_maps(maps, seed)[0]
    raise ValueError(f"unknown null {kind!r}: choose one of {', '.join(NULLS)}")


# ------------------------------------------------------------------------------------ curves
def logit_margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The target's logit minus the largest other logit, per row (for two classes: the log-odds of the target)."""
    z = logits.float()
    own = z.gather(1, targets[:, None])[:, 0]
    others = z.scatter(1, targets[:, None], float("-inf"))
    return own - others.max(dim=1).values


def road_curves(model: nn.Module, x: torch.Tensor, maps: Mapping[str, np.ndarray], targets: np.ndarray,
                fractions: Sequence[float] = ROAD_FRACTIONS, noise: float = 0.01, seed: int = 0,
                batch_size: int = 64, progress: bool = False, orders: Sequence[str] = ("morf", "lerf")
                ) -> dict[str, Any]:
    """The target's logit margin after removing each fraction, most (``"morf"``) and least (``"lerf"``) relevant
    first, for every set of ``maps`` (``{name: (N, H, W)}``, all on the same images ``x``; ties in random, seeded
    order; every channel imputed). Returns ``{"margin0": (N,), name: {"morf": (N, S), "lerf": (N, S)}, ...}``.
    Inputs are trusted (see :func:`road_test`)."""
    n = len(x)
    dev = model_device(model)
    t = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=dev)
    s = len(fractions)
    per_image = len(orders) * s * max(1, len(maps))
    chunk = max(1, batch_size // per_image)
    out: dict[str, Any] = {name: {order: np.zeros((n, s)) for order in orders} for name in maps}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n, desc="ROAD", unit="img", leave=False)
    with torch.inference_mode(), eval_mode(model):
        out["margin0"] = torch.cat([logit_margin(model(x[i:i + chunk].to(dev)), t[i:i + chunk]).cpu()
                                    for i in range(0, n, chunk)]).numpy().astype(np.float64) if n else np.zeros(0)
        for i0 in range(0, n, chunk):
            sl = slice(i0, min(n, i0 + chunk))
            xs, k = x[sl], sl.stop - sl.start
            keys = [(name, order) for name in maps for order in orders]
            imgs = torch.cat([road_images(xs, np.asarray(maps[name])[sl], fractions, order == "morf", noise,
                                          seed + i0, random_ties=True, per_channel=True) for name, order in keys])
            tt = t[sl].repeat_interleave(s).repeat(len(keys))
            margins = torch.cat([logit_margin(model(imgs[j:j + batch_size].to(dev)), tt[j:j + batch_size]).cpu()
                                 for j in range(0, len(imgs), batch_size)]).numpy()
            for q, (name, order) in enumerate(keys):
                out[name][order][sl] = margins[q * k * s:(q + 1) * k * s].reshape(k, s)
            if bar is not None:
                bar.update(k)
    if bar is not None:
        bar.close()
    return out


def _scores(margin0: np.ndarray, curves: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per image: the mean drop of the logit margin MoRF and LeRF, and the combined ROAD score (MoRF − LeRF) / 2."""
    morf = margin0 - curves["morf"].mean(axis=1)
    lerf = margin0 - curves["lerf"].mean(axis=1)
    return {**curves, "morf_drop": morf, "lerf_drop": lerf, "combined": (morf - lerf) / 2}


# ------------------------------------------------------------------------------------ the test
def _check_inputs(x: torch.Tensor, maps: np.ndarray, fractions: Sequence[float], groups: Any) -> np.ndarray:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise UserError(f"ROAD needs a batch of images (N, C, H, W); got {getattr(x, 'shape', type(x).__name__)}: "
                        "preprocess the images first (utils.train.model.preprocess).")
    n, _, h, w = x.shape
    if n == 0:
        raise UserError("ROAD got an empty image set: pass at least one image with its map (e.g. the detected "
                        "pneumonias of the test set).")
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape != (n, h, w):
        raise UserError(f"ROAD needs one map per image at the image's size, (N, H, W) = {(n, h, w)}; got maps of shape "
                        f"{maps.shape}: resize them with utils.explain.gradcam.resize_map(maps, ({h}, {w})) and pass "
                        "one per image.")
    if not np.isfinite(maps).all():
        raise UserError("ROAD got maps with NaN or infinite values: pass finite maps (e.g. scaled to [0, 1]).")
    if not fractions or not all(0 < f < 1 for f in fractions):
        raise UserError(f"ROAD fractions must be a non-empty list of numbers between 0 and 1, got {list(fractions)}.")
    if groups is not None and len(groups) != n:
        raise UserError(f"ROAD got {len(groups)} patient ids for {n} images: pass one per image (or None).")
    return maps


def road_test(model: nn.Module, x: torch.Tensor, maps: np.ndarray, groups: Sequence[Any] | np.ndarray | None = None,
              target: Targets = 1, fractions: Sequence[float] = ROAD_FRACTIONS, null: str = "derangement",
              n_boot: int = 1000, seed: int = 0, noise: float = 0.01, margin: float = 0.0, batch_size: int = 64,
              progress: bool = False, controls: torch.Tensor | None = None) -> dict[str, Any]:
    """ROAD in both orders, in logit margin, for ``maps`` and for a null of their own geometry (:func:`null_maps`),
    on the same images, with the verdict (see the module docstring).

    ``groups`` (patient ids) make the bootstrap resample whole patients; ``target`` is the class explained (None =
    each image's predicted class); ``margin`` is the practical margin of the map − null difference. Empty or constant
    maps are "no map" (counted, NaN scores). ``controls``: images *without* the evidence (e.g. the NORMAL images of
    the test set); the maps' most relevant pixels are removed from them too (map k from control k mod M) and
    ``"control"`` holds the mean change of their target logit margin — above zero, the removal itself adds evidence.
    Returns ``{"fractions", "targets", "margin0" (N,), "no_map" (N,), "null_kind", "null_maps", "map" / "null":
    {"morf", "lerf" (N, S) margins after removal, "morf_drop", "lerf_drop", "combined" (N,)}, "own_drop" (mean MoRF
    drop with interval), "difference" (combined, map − null, paired interval), "control" (or None),
    "control_curves" ({"margin0" (K,), "morf" (K, S)} of the K scored maps on their control images, or None),
    "n_controls", "n", "n_no_map", "n_boot", "verdict", "sentence", "scale_sentence"}`` (:func:`road_record` makes
    it JSON).

    Bad input (no images, maps of another shape, NaN maps, fractions outside (0, 1)) is a one-line
    :class:`~utils.errors.UserError` naming the fix."""
    maps = _check_inputs(x, maps, fractions, groups)
    if null not in NULLS:
        raise UserError(f"unknown ROAD null {null!r}: choose one of {', '.join(NULLS)}.")
    n = len(x)
    no_map = empty_maps(maps)
    scored = np.flatnonzero(~no_map)
    if null == "derangement" and len(scored) == 1:
        raise UserError("ROAD's 'derangement' null needs at least two images with a map: pass more images or use "
                        "null='shift'.")
    t = fixed_targets(model, x, target)
    grp = np.arange(n) if groups is None else np.asarray(groups)
    result: dict[str, Any] = {"fractions": np.asarray(fractions, dtype=np.float64), "targets": t, "no_map": no_map,
                              "null_kind": null, "n": len(scored), "n_no_map": int(no_map.sum())}
    nan = np.full((n, len(fractions)), np.nan)
    empty = {"morf": nan.copy(), "lerf": nan.copy()}
    result["null_maps"] = np.zeros_like(maps)
    if len(scored):
        result["null_maps"][scored] = null_maps(maps[scored], null, seed)
        curves = road_curves(model, x[scored], {"map": maps[scored], "null": result["null_maps"][scored]}, t[scored],
                             fractions, noise, seed, batch_size, progress)
        margin0 = np.full(n, np.nan)
        margin0[scored] = curves["margin0"]
        for key in ("map", "null"):
            full = {order: nan.copy() for order in ("morf", "lerf")}
            for order in full:
                full[order][scored] = curves[key][order]
            result[key] = _scores(margin0, full)
        result["margin0"] = margin0
    else:
        result["margin0"] = np.full(n, np.nan)
        result["map"] = result["null"] = _scores(result["margin0"], empty)
    own, diff = result["map"]["morf_drop"][scored], result["map"]["combined"][scored] - result["null"]["combined"][scored]
    result["own_drop"] = paired_difference_ci(own, np.zeros_like(own), grp[scored], n_boot=n_boot, seed=seed)
    result["difference"] = paired_difference_ci(diff, np.zeros_like(diff), grp[scored], n_boot=n_boot, seed=seed)
    result["control"], result["control_curves"], result["n_boot"] = None, None, int(n_boot)
    result["n_controls"] = 0 if controls is None else len(controls)
    if controls is not None and len(scored):
        shape = tuple(x.shape[1:])
        if not isinstance(controls, torch.Tensor) or tuple(controls.shape[1:]) != shape or not len(controls):
            raise UserError(f"ROAD controls must be a non-empty batch of images shaped like the tested ones, (M, *{shape}); "
                            f"got {getattr(controls, 'shape', type(controls).__name__)}.")
        xc = controls[np.arange(len(scored)) % len(controls)]
        ctl = road_curves(model, xc, {"control": maps[scored]}, t[scored], fractions, noise, seed + 1, batch_size,
                          progress, orders=("morf",))
        rise = ctl["control"]["morf"].mean(axis=1) - ctl["margin0"]
        result["control"] = paired_difference_ci(rise, np.zeros_like(rise), np.arange(len(rise)) % len(controls),
                                                 n_boot=n_boot, seed=seed)
        result["control_curves"] = {"margin0": ctl["margin0"], "morf": ctl["control"]["morf"]}
    result["verdict"] = road_verdict(result["own_drop"], result["difference"], margin)
    result["sentence"] = road_sentence(result["own_drop"], result["difference"], NULLS[null], result["n_no_map"], n,
                                       margin, result["control"], n_controls=result["n_controls"] or None)
    changes = mean_changes(result)
    result["scale_sentence"] = road_scale_sentence(
        float(np.nanmedian(result["margin0"])) if len(scored) else float("nan"), fractions, changes["map_morf"],
        changes["null_morf"], result["own_drop"], changes.get("control_morf"), result["control"], NULLS[null])
    return result


def mean_changes(result: Mapping[str, Any]) -> dict[str, list[float]]:
    """The mean change of the logit margin after each removed fraction (curve − start, averaged over the scored
    images) of a :func:`road_test` result: ``map_morf``, ``map_lerf``, ``null_morf``, ``null_lerf`` and, with
    controls, ``control_morf``; NaN where nothing was scored."""
    out: dict[str, list[float]] = {}
    start = np.asarray(result["margin0"], dtype=np.float64)[:, None]
    for key in ("map", "null"):
        for order in ("morf", "lerf"):
            delta = np.asarray(result[key][order], dtype=np.float64) - start
            ok = np.isfinite(delta).all(axis=1)
            out[f"{key}_{order}"] = (delta[ok].mean(axis=0) if ok.any() else np.full(delta.shape[1], np.nan)).tolist()
    ctl = result.get("control_curves")
    if ctl is not None:
        out["control_morf"] = (np.asarray(ctl["morf"]) - np.asarray(ctl["margin0"])[:, None]).mean(axis=0).tolist()
    return out


def road_record(result: Mapping[str, Any]) -> dict[str, Any]:
    """A :func:`road_test` result as JSON for ``assets/metrics.json``: ``verdict``, ``sentence``, ``scale_sentence``,
    ``sentences`` (both), ``n``, ``n_no_map``, ``n_controls``, ``null``, ``fractions``, ``own_drop``, ``difference``,
    ``control`` (intervals), ``margin0_median``, ``mean_change`` (:func:`mean_changes`) and ``bootstrap`` (how the
    intervals were made)."""
    def clean(d: Mapping[str, Any] | None) -> dict[str, float] | None:
        return None if d is None else {k: float(v) for k, v in d.items()}

    m0 = np.asarray(result["margin0"], dtype=np.float64)
    return {"verdict": result["verdict"], "sentence": result["sentence"], "scale_sentence": result["scale_sentence"],
            "sentences": [result["sentence"], result["scale_sentence"]], "n": int(result["n"]),
            "n_no_map": int(result["n_no_map"]), "n_controls": int(result["n_controls"]),
            "null": NULLS[result["null_kind"]], "fractions": [float(f) for f in result["fractions"]],
            "scale": "logit margin of the target class", "orders": ["most relevant first", "least relevant first"],
            "own_drop": clean(result["own_drop"]), "difference": clean(result["difference"]),
            "control": clean(result["control"]),
            "margin0_median": float(np.nanmedian(m0)) if np.isfinite(m0).any() else None,
            "mean_change": mean_changes(result),
            "bootstrap": {"unit": "patient", "n_boot": int(result["n_boot"]), "paired": True}}
