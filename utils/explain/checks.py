"""Checking the maps against other implementations: the library's CAM methods and an oracle comparison.

* :func:`compare_methods` — our Grad-CAM next to GradCAM++, HiResCAM, ScoreCAM and EigenCAM from
  ``pytorch_grad_cam``, scored with the same localisation table;
* :func:`library_cam` — one ``pytorch_grad_cam`` method's maps;
* :func:`oracle_difference` — our hand-written Grad-CAM against the library's (must be ≈ 0).

The checks with verdicts against nulls that can win live in their own modules: :mod:`utils.explain.sanity`
(randomisation against a reference level, :func:`~utils.explain.sanity.randomisation_check`) and
:mod:`utils.explain.road` (ROAD in both orders, in logit margin, against a null of the map's own geometry,
:func:`~utils.explain.road.road_test`). ``cascading_randomisation`` and ``spearman_maps`` are re-exported here only
until utils/explain/attribution.py and utils/studies/leaderboard.py import them from :mod:`utils.explain.sanity`.

Nothing here changes the model passed in: the library methods run on deep copies.
"""
from __future__ import annotations

import copy
import time
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from torch import nn

from utils.explain import localisation as loc
from utils.explain._model import fixed_targets as _fixed_targets
from utils.explain._model import layer_name as _layer_name
from utils.explain._model import model_device as _device
from utils.explain.gradcam import Targets, gradcam
from utils.explain.sanity import cascading_randomisation, spearman_maps

__all__ = [
    "LIBRARY_METHODS",
    "ORACLE_METHODS",
    "cascading_randomisation",
    "compare_methods",
    "library_cam",
    "oracle_difference",
    "spearman_maps",
]


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
                    targets: Targets = None, batch_size: int = 16, tolerance_frac: float = loc.TOLERANCE_FRAC,
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
