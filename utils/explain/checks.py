"""Checking the maps: a sanity check, faithfulness curves, other CAM methods and an oracle comparison.

* :func:`cascading_randomisation` — Adebayo et al. (2018), "Sanity checks for saliency maps": if the
  maps barely change when the trained weights are replaced by random ones, top layers first, they
  explain the image (edges, brightness), not the model.
* :func:`deletion_insertion` — Petsiuk et al. (2018, RISE): remove the most salient pixels first and
  the class probability should fall fast (low deletion AUC); insert them into a blurred image and it
  should rise fast (high insertion AUC). Always read against a random map of the same smoothness.
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

import numpy as np
import pandas as pd
import torch
from scipy import stats
from scipy.integrate import trapezoid
from torch import nn

from utils.explain import localisation as loc
from utils.explain.gradcam import eval_mode, gradcam, resolve_layer

__all__ = ["cascading_randomisation", "deletion_insertion", "compare_methods", "oracle_difference",
           "library_cam", "LIBRARY_METHODS", "ORACLE_METHODS", "spearman_maps"]

Targets = int | Sequence[int] | None


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
def cascading_randomisation(model: nn.Module, x: torch.Tensor, targets: Targets = None,
                            layer: str | nn.Module = "layer4",
                            order: Sequence[str] = ("fc", "layer4", "layer3", "layer2", "layer1", "conv1"),
                            seed: int = 0, cam_fn: Callable[..., np.ndarray] | None = None) -> pd.DataFrame:
    """Re-initialise the weights block by block from the top and recompute Grad-CAM after each step.

    Runs on a deep copy (the model passed in is untouched); targets are fixed before randomising
    (None = the trained model's predictions). Returns one row per step: ``step`` (0 = trained),
    ``randomised`` (the block re-initialised at this step), ``blocks`` (all re-initialised so far),
    ``spearman`` / ``spearman_std`` (mean / sd over images of the rank correlation with the trained
    maps, see :func:`spearman_maps`: a map gone flat scores 0), ``n_flat`` (constant maps, e.g. all
    zero after the ReLU) and ``maps`` (N, H, W).

    ``cam_fn(model, x, layer_name, targets) -> maps`` computes the maps (default: plain Grad-CAM), so the
    same check runs on any explanation, e.g. ``lambda m, x, l, t: utils.explain.selection.explain(m, x, spec, t)[0]``.
    """
    name = _layer_name(model, layer)
    cam_fn = cam_fn or (lambda m, x_, layer_, t_: gradcam(m, x_, layer_, t_)[0])
    work = copy.deepcopy(model)
    t = _fixed_targets(work, x, targets)
    trained = cam_fn(work, x, name, t)
    rows = [{"step": 0, "randomised": "", "blocks": "none (trained)", "spearman": 1.0, "spearman_std": 0.0,
             "n_flat": int(sum(np.ptp(m) == 0 for m in trained)), "maps": trained}]
    done: list[str] = []
    for i, block in enumerate(order, start=1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            for m in work.get_submodule(block).modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()  # conv/linear: fresh random weights; batch-norm: stats and affine reset
        done.append(block)
        maps = cam_fn(work, x, name, t)
        rho = spearman_maps(trained, maps)
        ok = rho[np.isfinite(rho)]
        rows.append({"step": i, "randomised": block, "blocks": "+".join(done),
                     "spearman": float(ok.mean()) if len(ok) else float("nan"),
                     "spearman_std": float(ok.std()) if len(ok) else float("nan"),
                     "n_flat": int(sum(np.ptp(m) == 0 for m in maps)), "maps": maps})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- faithfulness
def _baseline(x: torch.Tensor, baseline: str | float | torch.Tensor) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        return baseline.to(x).expand_as(x)
    if isinstance(baseline, (int, float)):
        return torch.full_like(x, float(baseline))
    if baseline == "blur":  # a heavily blurred copy: removes local evidence, keeps the global layout
        from torchvision.transforms.functional import gaussian_blur
        sigma = max(x.shape[-2:]) / 16
        k = int(2 * round(3 * sigma) + 1)
        kx, ky = (min(k, 2 * (s // 2) - 1) for s in (x.shape[-1], x.shape[-2]))  # odd, within the image
        return gaussian_blur(x, [kx, ky], [sigma, sigma])
    if baseline == "mean":  # each image's own channel means
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if baseline == "zero":  # 0 after normalisation = the dataset's mean intensity
        return torch.zeros_like(x)
    raise ValueError(f"unknown baseline {baseline!r}: use 'blur', 'mean', 'zero', a number or a tensor")


def _curves(model: nn.Module, x: torch.Tensor, base: torch.Tensor, maps: np.ndarray, t: np.ndarray,
            fractions: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Target probabilities (N, S+1) while deleting / inserting pixels in decreasing map order."""
    n, _, h, w = x.shape
    order = np.argsort(-maps.reshape(n, -1), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(h * w)[None].repeat(n, 0), axis=1)
    counts = np.round(fractions * h * w).astype(int)
    masks = torch.from_numpy(rank[:, None, :] < counts[None, :, None]).view(n, len(fractions), 1, h, w)
    masks = masks.to(x.device)
    xs, bs = x[:, None], base[:, None]
    out = []
    for imgs in (torch.where(masks, bs, xs), torch.where(masks, xs, bs)):  # deletion, insertion
        flat = imgs.reshape(-1, *x.shape[1:])
        tt = torch.as_tensor(np.repeat(t, len(fractions)), device=x.device)
        probs = torch.cat([model(flat[i:i + batch_size]).softmax(1) for i in range(0, len(flat), batch_size)])
        out.append(probs.gather(1, tt[:, None]).view(n, len(fractions)).cpu().numpy())
    return out[0], out[1]


def deletion_insertion(model: nn.Module, x: torch.Tensor, cams: np.ndarray, target: Targets = None,
                       steps: int = 20, baseline: str | float | torch.Tensor = "blur", batch_size: int = 64,
                       seed: int = 0, smooth_px: float | None = None) -> dict:
    """Deletion / insertion curves of the target-class probability, for ``cams`` and for random maps.

    ``x`` (N, C, H, W) as fed to the model, ``cams`` (N, H, W); ``target`` None = predicted class. At
    step k the ``k/steps`` most salient pixels are replaced by the baseline (deletion) or copied into
    it (insertion). ``baseline``: ``"blur"`` (default), ``"mean"``, ``"zero"``, a number or a tensor.
    The random baseline uses :func:`utils.explain.localisation.random_map` maps (seeded, smoothed like a CAM).

    Returns ``{"fractions": (S+1,), "cam": {...}, "random": {...}, "summary": DataFrame}`` where each
    of ``cam`` / ``random`` holds ``deletion``, ``insertion`` (N, S+1) and ``deletion_auc``,
    ``insertion_auc`` (N,); the summary has their means (deletion: lower is better, insertion: higher).
    """
    cams = np.asarray(cams, dtype=np.float32)
    n, _, h, w = x.shape
    if cams.shape != (n, h, w):
        raise ValueError(f"cams {cams.shape} must be (N, H, W) = {(n, h, w)}")
    x = x.to(_device(model))
    t = _fixed_targets(model, x, target)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    rng = np.random.default_rng(seed)
    rand = np.stack([loc.random_map(rng, h, w, smooth_px) for _ in range(n)])
    result: dict = {"fractions": fractions}
    with torch.inference_mode(), eval_mode(model):
        base = _baseline(x, baseline)
        for key, maps in (("cam", cams), ("random", rand)):
            d, i = _curves(model, x, base, maps, t, fractions, batch_size)
            result[key] = {"deletion": d, "insertion": i,
                           "deletion_auc": trapezoid(d, fractions, axis=1),
                           "insertion_auc": trapezoid(i, fractions, axis=1)}
    result["summary"] = pd.DataFrame(
        {k: {"deletion_auc": float(result[k]["deletion_auc"].mean()),
             "insertion_auc": float(result[k]["insertion_auc"].mean()), "n": n} for k in ("cam", "random")}
    ).T.astype({"n": int})
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
                targets: Targets = None, batch_size: int = 16) -> np.ndarray:
    """Maps (N, H, W) in [0, 1] from a ``pytorch_grad_cam`` method (see :data:`LIBRARY_METHODS`).

    Runs on a deep copy with every parameter trainable (the library needs gradients to flow and calls
    ``model.eval()`` / ``zero_grad()`` itself), so ``model`` is untouched. ``batch_size`` is ScoreCAM's
    masked-input batch (ScoreCAM costs one forward per channel of the layer per image).
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
    cam = classes[method](work, [work.get_submodule(name)])
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
                      targets: Targets = None, method: str = "GradCAM") -> float:
    """Max |ours − pytorch_grad_cam.GradCAM| over all pixels, same layer and targets.

    ``method`` (:data:`ORACLE_METHODS`) compares another weighting the same way (``"XGradCAM"``:
    ours with ``weighting="xgradcam"`` against the library's XGradCAM).

    Like for like: the library applies ReLU, min-max scales the low-res map (ε = 1e-7), resizes it with
    ``cv2.resize`` (bilinear, half-pixel centres = ``align_corners=False``) and min-max scales again;
    ours applies ReLU, upsamples with ``F.interpolate(bilinear, align_corners=False)`` and min-max scales
    once. Bilinear resizing is linear and keeps constants, so both give the same map up to float error
    and the ε (expect < 1e-5 unless a raw map is near zero everywhere).
    """
    if method not in ORACLE_METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(ORACLE_METHODS)}")
    t = _fixed_targets(model, x, targets)
    ours, _ = gradcam(model, x, layer, t, weighting=ORACLE_METHODS[method])
    theirs = library_cam(method, model, x, layer, t)
    return float(np.abs(ours - theirs).max())
