"""Checking the maps: a sanity check, faithfulness curves, other CAM methods and an oracle comparison.

The checks with verdicts against nulls that can win live in their own modules: :mod:`utils.explain.sanity`
(randomisation against a reference level, :func:`~utils.explain.sanity.randomisation_check`) and
:mod:`utils.explain.road` (ROAD in both orders, in logit margin, against a null of the map's own geometry,
:func:`~utils.explain.road.road_test`). This module keeps the series' first versions until the notebooks switch:

* :func:`cascading_randomisation` (from :mod:`utils.explain.sanity`) with :func:`sanity_verdict`, a fixed
  mean-|ρ| threshold (:data:`SANITY_RHO`) without a reference level;
* :func:`road` — faithfulness by ROAD (Rong et al., 2022, "Remove and debias"): remove the most relevant
  pixels first, *imputing* them from their neighbours (pytorch-grad-cam's noisy linear imputer) instead of
  painting a constant — a grey or blurred patch on a chest film looks like an opacity and would *raise*
  P(pneumonia) — and read the fall of the probability against random maps of the same smoothness (most
  relevant first only, probability scale, smoothed-noise maps: superseded by ``road_test``).
* :func:`compare_methods` — our Grad-CAM next to GradCAM++, HiResCAM, ScoreCAM and EigenCAM from
  ``pytorch_grad_cam``, scored with the same localisation table.
* :func:`oracle_difference` — our hand-written Grad-CAM against the library's (must be ≈ 0).

Nothing here changes the model passed in: the library methods and the randomisation run on deep copies.
"""
from __future__ import annotations

import copy
import time
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from utils.explain import localisation as loc
from utils.explain._model import fixed_targets as _fixed_targets
from utils.explain._model import layer_name as _layer_name
from utils.explain._model import model_device as _device
from utils.explain.gradcam import Targets, eval_mode, gradcam
from utils.explain.road import linear_impute, road_images
from utils.explain.sanity import (
    RANDOMISATION_ORDER,
    _reset_block,  # noqa: F401  (tests reach the stem's reset through this module)
    cascading_randomisation,
    spearman_maps,
)

__all__ = [
    "LIBRARY_METHODS",
    "ORACLE_METHODS",
    "RANDOMISATION_ORDER",
    "ROAD_FRACTIONS",
    "SANITY_RHO",
    "cascading_randomisation",
    "compare_methods",
    "library_cam",
    "linear_impute",
    "oracle_difference",
    "road",
    "road_images",
    "sanity_verdict",
    "spearman_maps",
]


# ----------------------------------------------------------------------------- sanity check (first version)
#: The |Spearman ρ| below which a map "no longer resembles" the trained one (Adebayo et al. use rank correlation).
SANITY_RHO = 0.5


def sanity_verdict(table: pd.DataFrame, after: str = "layer4", rho: float = SANITY_RHO) -> dict[str, Any]:
    """The pass rule: once every block down to ``after`` is randomised, the mean **|ρ|** with the trained maps
    must be below ``rho`` — and it must stay below for every later step (all the way to the stem)."""
    steps = table[table["step"] > 0].reset_index(drop=True)
    names = list(steps["randomised"])
    if after not in names:
        raise ValueError(f"{after!r} is not one of the randomised blocks {names}")
    tail = steps.iloc[names.index(after):]
    worst = float(tail["abs_spearman"].max())
    return {"rule": f"mean |rho| < {rho} from {after} down to the stem", "after": after, "threshold": rho,
            "abs_spearman_at": float(tail["abs_spearman"].iloc[0]), "worst_after": worst,
            "passes": bool(worst < rho), "n_images": len(table["rho"].iloc[0])}


# ----------------------------------------------------------------------------- faithfulness: ROAD
#: Fractions of the pixels removed, most relevant first: 0.5 % steps up to 10 % (a phantom lesion is ~3 %).
ROAD_FRACTIONS: tuple[float, ...] = tuple(round(0.005 * k, 4) for k in range(1, 21))


def road(model: nn.Module, x: torch.Tensor, maps: np.ndarray, target: Targets = 1,
         fractions: Sequence[float] = ROAD_FRACTIONS, batch_size: int = 64, seed: int = 0,
         smooth_px: float | None = None, progress: bool = False) -> dict[str, Any]:
    """ROAD, most-relevant-first, for ``maps`` and for random maps of the same smoothness, on the same images.

    For every image the probability of ``target`` is recorded after removing (and imputing) the top
    ``fractions`` of pixels of its map, and of one smoothed-noise map. ``drop`` = the mean fall of the
    probability over the fractions (higher = removing what the map points at hurts the prediction more:
    a faithful map). Returns ``{"fractions", "p0" (N,), "map": {"probs" (N, S), "drop" (N,)},
    "random": {...}, "difference": per-image drop(map) − drop(random) (N,)}``.
    """
    maps = np.asarray(maps, dtype=np.float32)
    n, _, h, w = x.shape
    if maps.shape != (n, h, w):
        raise ValueError(f"maps {maps.shape} must be (N, H, W) = {(n, h, w)}")
    dev = _device(model)
    t = torch.as_tensor(_fixed_targets(model, x, target), device=dev)
    rand = loc.random_maps(n, h, w, seed, 0, smooth_px)
    result: dict[str, Any] = {"fractions": np.asarray(fractions, dtype=np.float64)}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=2 * n, desc="ROAD", unit="img", leave=False)
    with torch.inference_mode(), eval_mode(model):
        p0 = model(x.to(dev)).softmax(1).gather(1, t[:, None])[:, 0].cpu().numpy()
        result["p0"] = p0
        for key, m in (("map", maps), ("random", rand)):
            probs = np.zeros((n, len(fractions)))
            for i0 in range(0, n, max(1, batch_size // len(fractions))):
                sl = slice(i0, min(n, i0 + max(1, batch_size // len(fractions))))
                imgs = road_images(x[sl], m[sl], fractions, seed=seed + i0)
                tt = t[sl].repeat_interleave(len(fractions))
                out = model(imgs.to(dev)).softmax(1).gather(1, tt[:, None])[:, 0].cpu().numpy()
                probs[sl] = out.reshape(-1, len(fractions))
                if bar is not None:
                    bar.update(sl.stop - sl.start)
            result[key] = {"probs": probs, "drop": (p0[:, None] - probs).mean(axis=1)}
    if bar is not None:
        bar.close()
    result["difference"] = result["map"]["drop"] - result["random"]["drop"]
    return result


# ----------------------------------------------------------------------------- other methods
def _library_classes() -> dict[str, type]:
    import pytorch_grad_cam as pgc
    return {"GradCAM": pgc.GradCAM, "GradCAM++": pgc.GradCAMPlusPlus, "HiResCAM": pgc.HiResCAM,
            "ScoreCAM": pgc.ScoreCAM, "EigenCAM": pgc.EigenCAM, "XGradCAM": pgc.XGradCAM,
            "LayerCAM": pgc.LayerCAM}


LIBRARY_METHODS = ("GradCAM", "GradCAM++", "HiResCAM", "ScoreCAM", "EigenCAM", "XGradCAM", "LayerCAM")


@contextmanager
def _quiet_score_cam() -> Iterator[None]:
    """ScoreCAM prints a tqdm bar per image; silence it for the duration (restored afterwards)."""
    import pytorch_grad_cam.score_cam as sc
    saved = sc.tqdm
    sc.tqdm = types.SimpleNamespace(tqdm=lambda it, *a, **k: it)
    try:
        yield
    finally:
        sc.tqdm = saved


def library_cam(method: str, model: nn.Module, x: torch.Tensor, layer: str | nn.Module,
                targets: Targets = None, batch_size: int = 16,
                reshape: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Maps (N, H, W) in [0, 1] from a ``pytorch_grad_cam`` method (see :data:`LIBRARY_METHODS`).

    Runs on a deep copy with every parameter trainable (the library needs gradients to flow and calls
    ``model.eval()`` / ``zero_grad()`` itself), so ``model`` is untouched. ``batch_size`` is ScoreCAM's
    masked-input batch (ScoreCAM costs one forward per channel of the layer per image). ``reshape`` is the
    library's ``reshape_transform`` (a ViT's tokens to a feature map, :func:`utils.explain.vit.vit_reshape`).
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = _library_classes()
    if method not in classes:
        raise ValueError(f"unknown method {method!r}: choose from {', '.join(classes)}")
    name = _layer_name(model, layer)
    t = _fixed_targets(model, x, targets)
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(True)
    cam = classes[method](work, [work.get_submodule(name)], reshape_transform=reshape)
    cam.batch_size = batch_size
    try:
        with _quiet_score_cam(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            maps = cam(x.to(_device(work)), [ClassifierOutputTarget(int(k)) for k in t])
    finally:
        cam.activations_and_grads.release()  # not `with cam:` — its __exit__ swallows IndexError
    return np.asarray(maps, dtype=np.float32)


def compare_methods(model: nn.Module, x: torch.Tensor, lesion_masks: np.ndarray, layer: str | nn.Module = "layer4",
                    methods: Sequence[str] = ("GradCAM (ours)", "GradCAM++", "HiResCAM", "ScoreCAM", "EigenCAM"),
                    targets: Targets = None, batch_size: int = 16, tolerance_frac: float = 0.05,
                    lung_masks: np.ndarray | None = None, n_random: int = 10
                    ) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Maps of several CAM methods on the same layer and targets, and their localisation table.

    ``"GradCAM (ours)"`` is :class:`utils.explain.gradcam.GradCAM`; other names are ``pytorch_grad_cam``
    methods (:data:`LIBRARY_METHODS`). ``targets`` None = the predicted class (fixed once for all
    methods; EigenCAM ignores targets: it is the first principal component of the activations). Pass
    few images when ScoreCAM is included. Returns ``(maps, table)``: ``{method: (N, H, W)}`` and
    :func:`utils.localisation.localisation_table` with baselines, plus ``seconds_per_image``.
    """
    unknown = [m for m in methods if m != "GradCAM (ours)" and m not in LIBRARY_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}: use 'GradCAM (ours)' or one of {', '.join(LIBRARY_METHODS)}")
    t = _fixed_targets(model, x, targets)
    maps: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        start = time.perf_counter()
        if method == "GradCAM (ours)":
            maps[method] = gradcam(model, x, layer, t)[0]
        else:
            maps[method] = library_cam(method, model, x, layer, t, batch_size)
        seconds[method] = (time.perf_counter() - start) / max(len(x), 1)
    table = loc.localisation_table(maps, lesion_masks, tolerance_frac, lung_masks, n_random=n_random)
    table["seconds_per_image"] = table["method"].map(seconds)
    return maps, table


#: Library method -> the weighting of :class:`utils.explain.gradcam.GradCAM` that implements it.
ORACLE_METHODS = {"GradCAM": "gradcam", "XGradCAM": "xgradcam", "GradCAM++": "gradcam++"}


def oracle_difference(model: nn.Module, x: torch.Tensor, layer: str | nn.Module = "layer4",
                      targets: Targets = None, method: str = "GradCAM",
                      reshape: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Max |ours − pytorch_grad_cam.GradCAM| over all pixels, same layer and targets.

    ``method`` (:data:`ORACLE_METHODS`) compares another weighting the same way (``"XGradCAM"``:
    ours with ``weighting="xgradcam"`` against the library's XGradCAM).

    Like for like: the library applies ReLU, min-max scales the low-res map (ε = 1e-7), resizes it with
    ``cv2.resize`` (bilinear, half-pixel centres = ``align_corners=False``) and min-max scales again;
    ours applies ReLU, upsamples with ``F.interpolate(bilinear, align_corners=False)`` and min-max scales
    once. Bilinear resizing is linear and keeps constants, so both give the same map up to float error
    and the ε (expect < 1e-5 unless a raw map is near zero everywhere). ``reshape``: both sides read the layer
    through the same reshape transform (a ViT).
    """
    if method not in ORACLE_METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(ORACLE_METHODS)}")
    t = _fixed_targets(model, x, targets)
    ours, _ = gradcam(model, x, layer, t, weighting=ORACLE_METHODS[method], reshape=reshape)
    theirs = library_cam(method, model, x, layer, t, reshape=reshape)
    return float(np.abs(ours - theirs).max())
