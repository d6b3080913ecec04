"""Checking the maps: a sanity check, faithfulness curves, other CAM methods and an oracle comparison.

* :func:`cascading_randomisation` — Adebayo et al. (2018), "Sanity checks for saliency maps": if the
  maps barely change when the trained weights are replaced by random ones, top layers first, they
  explain the image (edges, brightness), not the model.
* :func:`road` — faithfulness by ROAD (Rong et al., 2022, "Remove and debias"): remove the most relevant
  pixels first, *imputing* them from their neighbours (pytorch-grad-cam's noisy linear imputer) instead of
  painting a constant — a grey or blurred patch on a chest film looks like an opacity and would *raise*
  P(pneumonia) — and read the fall of the probability against random maps of the same smoothness.
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
from scipy import stats
from torch import nn

from utils.data.images import linear_impute
from utils.explain import localisation as loc
from utils.explain.gradcam import Targets, eval_mode, gradcam, resolve_layer

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



def _layer_name(model: nn.Module, layer: str | nn.Module) -> str:
    """The dotted name of ``layer`` in ``model`` (so the same layer can be found in a deep copy)."""
    if isinstance(layer, str):
        resolve_layer(model, layer)
        return layer
    for name, m in model.named_modules():
        if m is layer:
            return name
    raise ValueError("the target layer is not a submodule of the model")


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _fixed_targets(model: nn.Module, x: torch.Tensor, targets: Targets) -> np.ndarray:
    """Targets as N ints; None = the model's predicted class."""
    if targets is None:
        device = _device(model)
        with torch.inference_mode(), eval_mode(model):
            return model(x.to(device)).argmax(1).cpu().numpy()
    t = np.broadcast_to(np.asarray(targets, dtype=np.int64), (len(x),)).copy()
    return t


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


# ----------------------------------------------------------------------------- sanity check
#: The blocks of a ResNet, randomised top first (the stem = conv1 + bn1, the last one reached).
RANDOMISATION_ORDER: tuple[str, ...] = ("fc", "layer4", "layer3", "layer2", "layer1", "stem")
#: The |Spearman ρ| below which a map "no longer resembles" the trained one (Adebayo et al. use rank correlation).
SANITY_RHO = 0.5


def _reset_block(model: nn.Module, block: str) -> None:
    """Re-initialise every parameter (and BatchNorm statistic) of ``block``; ``"stem"`` = conv1 + bn1."""
    names = ["conv1", "bn1"] if block == "stem" else [block]
    for top in (model.get_submodule(n) for n in names):
        for m in top.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
                m.reset_parameters()  # conv/linear: fresh random weights; batch-norm: affine and statistics reset


def cascading_randomisation(model: nn.Module, x: torch.Tensor, targets: Targets = None,
                            layer: str | nn.Module = "layer4", order: Sequence[str] = RANDOMISATION_ORDER,
                            seed: int = 0, cam_fn: Callable[..., np.ndarray] | None = None) -> pd.DataFrame:
    """Re-initialise the weights block by block from the top — down to the stem — and recompute the maps.

    Runs on a deep copy (the model passed in is untouched); targets are fixed before randomising
    (None = the trained model's predictions). Returns one row per step: ``step`` (0 = trained),
    ``randomised`` (the block re-initialised at this step), ``blocks`` (all so far), ``rho`` (per-image
    Spearman rank correlations with the trained maps, an array: a map gone flat scores 0), ``spearman`` /
    ``abs_spearman`` (means of ρ and |ρ|), ``spearman_std``, ``q25`` / ``q75`` (quartiles of |ρ|),
    ``n_flat`` (constant maps) and ``maps`` (N, H, W). A map that keeps a large **|ρ|** — positive or
    negative, an inverted map still reproduces the image's structure — after its model was randomised
    explains the image, not the model (:func:`sanity_verdict`).

    ``cam_fn(model, x, layer_name, targets) -> maps`` computes the maps (default: plain Grad-CAM), so the
    same check runs on any explanation, e.g. ``lambda m, x, l, t: utils.explain.explain(m, x, spec, t)[0]``.
    """
    name = _layer_name(model, layer)
    cam_fn = cam_fn or (lambda m, x_, layer_, t_: gradcam(m, x_, layer_, t_)[0])
    work = copy.deepcopy(model)
    t = _fixed_targets(work, x, targets)
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


def road_images(x: torch.Tensor, maps: np.ndarray, fractions: Sequence[float] = ROAD_FRACTIONS,
                most_relevant_first: bool = True, noise: float = 0.01, seed: int = 0) -> torch.Tensor:
    """The perturbed copies (N × S, C, H, W) of ROAD: for each image and fraction f, the f most (or least)
    relevant pixels of its map removed and imputed (:func:`linear_impute`). The imputation runs on one channel
    and is copied to the others (the series' images are three identical channels)."""
    n, c, h, w = x.shape
    rng = np.random.default_rng(seed)
    gray = x[:, 0].detach().cpu().numpy()
    out = np.empty((n, len(fractions), h, w), dtype=np.float32)
    for i in range(n):
        rank = np.argsort(-maps[i].ravel() if most_relevant_first else maps[i].ravel(), kind="stable")
        for k, f in enumerate(fractions):
            keep = np.ones(h * w, dtype=bool)
            keep[rank[:max(1, round(f * h * w))]] = False
            out[i, k] = linear_impute(gray[i], keep.reshape(h, w), noise, rng)
    return torch.from_numpy(out).view(n * len(fractions), 1, h, w).expand(-1, c, -1, -1).to(x.dtype)


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
