"""Pixel attribution beyond Grad-CAM, from Captum: gradients, SmoothGrad, Integrated Gradients and occlusion.

Grad-CAM (:mod:`utils.explain.gradcam`) reads a *layer*: its map is as coarse as that layer's grid. The methods here
attribute the class score to every *input pixel*:

* **saliency** (Simonyan et al., 2014) — the gradient of the class score with respect to the pixel: one forward and
  one backward pass. It says how sensitive the score is to a tiny change of each pixel, not what the model used.
* **SmoothGrad** (Smilkov et al., 2017) — the gradient averaged over ``samples`` noisy copies of the image (Gaussian
  noise of standard deviation ``noise`` × the grey range): Captum's ``NoiseTunnel`` over ``Saliency``.
* **Integrated Gradients** (Sundararajan et al., 2017) — the gradient integrated along the straight path from a
  *baseline* image to the image, times (image − baseline): the attributions add up to f(image) − f(baseline)
  (*completeness*; Captum's convergence delta is the quadrature's shortfall).
* **occlusion** (Zeiler & Fergus, 2014) — slide a ``window`` × ``window`` patch with ``stride``, replace it by the
  baseline and record the fall of the class score; each pixel gets the mean fall over the windows that cover it.
  One forward per window position: the most expensive here, and as coarse as its stride.

**The baseline is an assumption** (IG and occlusion, :data:`BASELINES`). On a chest X-ray:

* ``"black"`` — zero everywhere: "no tissue at all", i.e. air. An attribution is ∝ (image − baseline), so bright
  structures (bone, mediastinum, an opacity) can collect mass while the dark, air-filled lung, where pneumonia is,
  gets little even when it matters. Black *inside* the lung is barely a change: occluding with it removes an
  opacity but leaves normal lung nearly untouched.
* ``"blurred"`` — the image blurred with a Gaussian of ``blur`` pixels (default side / 16): the same anatomy without
  fine detail. It assumes the evidence is in structure finer than the blur; a large, diffuse consolidation survives
  the blur and so gets little attribution.
* ``"mean"`` — the training split's mean image (:func:`dataset_mean_image`, passed as ``mean_image``): "an average
  chest". Attributions then answer "what makes this image differ from the average one" — but the average contains
  pneumonia images too, and it is not itself a neutral input (check its probability).

**The maps** (:func:`to_maps`, the ONE adapter): every method runs on the grey image the three identical input
channels encode — the model is wrapped so that its input is the raw grey value in [0, 1], replicated and normalised
with the checkpoint's mean/std inside the wrapper — so there is one attribution per pixel (channels, if any, are
summed: for IG that keeps completeness). Then per the spec's ``sign`` (:data:`SIGNS`): ``"absolute"`` = |a| (how
much a pixel matters either way; saliency and SmoothGrad, as their authors show them), ``"positive"`` = max(a, 0)
(evidence *for* the target class, like Grad-CAM's ReLU; IG and occlusion) or ``"negative"`` = max(−a, 0). An optional
Gaussian post-smoothing (``smooth_px``, off by default; it changes what pointing measures, so it is a stated
parameter, never a silent default) comes next, and each map is divided by its maximum: float32 (N, H, W) in [0, 1],
zero where the method attributes nothing (an all-zero map stays zero). Every harness function of the series
(localisation, ROAD, randomisation) takes these maps unchanged.

A spec is a small JSON-able dict like the Grad-CAM specs of :mod:`utils.explain.selection`:
``{"name", "method", "params"}`` (:func:`make_attribution_spec`); :func:`method_maps` computes a list of specs —
Grad-CAM specs included — in one call, with the cost in seconds per image. Parameters are chosen on *validation*
true positives by the series' localisation rule (:func:`choose_parameters`); :func:`map_stability` measures how much a
map changes under a small perturbation that leaves the decision unchanged.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi
from torch import nn

from utils.config import IMAGENET_MEAN, IMAGENET_STD
from utils.errors import UserError
from utils.explain import localisation as loc
from utils.explain.checks import spearman_maps
from utils.explain.gradcam import WEIGHTINGS, eval_mode, normalise_maps, resolve_layer
from utils.explain.maps import explain
from utils.explain.selection import TOLERANCE_FRAC
from utils.explain.spec import ROLLOUT, check_spec
from utils.train.model import pneumonia_probability, preprocess

__all__ = [
    "BASELINES",
    "METHODS",
    "PERTURBATIONS",
    "SIGNS",
    "Attribution",
    "AttributionMethod",
    "attribution_maps",
    "cam_fn_for",
    "captum_gradcam_difference",
    "check_attribution_spec",
    "choose_parameters",
    "dataset_mean_image",
    "gray_input",
    "is_attribution_spec",
    "make_attribution_spec",
    "map_stability",
    "method_maps",
    "occlusion_windows",
    "parameter_grid",
    "perturb",
    "raw_attributions",
    "to_maps",
]

Spec = dict[str, Any]
#: What a map explains: one class index for every image, one per image, or None (each image's predicted class).
TargetsLike = int | Sequence[int] | np.ndarray | None

#: IG / occlusion baselines (what "absent" means; see the module docstring for what each assumes on an X-ray).
BASELINES: tuple[str, ...] = ("black", "blurred", "mean")
#: How a signed attribution becomes a non-negative map (:func:`to_maps`).
SIGNS: tuple[str, ...] = ("absolute", "positive", "negative")
#: Captum's integration rules for IG offered here (``"gausslegendre"``, its default, is exact for a path integrand
#: that is a polynomial of degree ≤ 2·steps − 1). Not ``"riemann_trapezoid"``: in Captum 0.9 its weights sum to
#: (steps − 1) / steps, not 1, so its attributions miss completeness by about 1 / steps whatever the model.
IG_RULES: tuple[str, ...] = ("gausslegendre", "riemann_middle", "riemann_left", "riemann_right")


@dataclass(frozen=True)
class AttributionMethod:
    """One pixel-attribution method: its display name, the Captum class that computes it, how its sign is shown
    by default (:data:`SIGNS`), its default parameters, what one image costs, and where it comes from."""

    label: str
    captum: str
    sign: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    passes: str = ""
    reference: str = ""


#: The registry: spec ``method`` → :class:`AttributionMethod`. ``sign`` is the default of the spec's ``sign``
#: parameter; every method also takes ``smooth_px`` (post-smoothing, default 0 = none).
METHODS: dict[str, AttributionMethod] = {
    "saliency": AttributionMethod(
        "Saliency", "Saliency", "absolute", {},
        "1 forward + 1 backward", "Simonyan et al. 2014"),
    "smoothgrad": AttributionMethod(
        "SmoothGrad", "NoiseTunnel(Saliency)", "absolute", {"noise": 0.15, "samples": 16, "seed": 0},
        "`samples` forwards + backwards", "Smilkov et al. 2017"),
    "integrated_gradients": AttributionMethod(
        "Integrated Gradients", "IntegratedGradients", "positive",
        {"steps": 32, "baseline": "black", "blur": None, "rule": "gausslegendre"},
        "`steps` forwards + backwards", "Sundararajan et al. 2017"),
    "occlusion": AttributionMethod(
        "Occlusion", "Occlusion", "positive", {"window": None, "stride": None, "baseline": "black", "blur": None},
        "1 forward per window position (+1)", "Zeiler & Fergus 2014"),
}
_COMMON = {"sign": None, "smooth_px": 0.0}


def _methods_hint() -> str:
    return (f"choose one of {', '.join(METHODS)} (or a Grad-CAM spec of utils.explain.selection: "
            f"method {', '.join(WEIGHTINGS)} with a layer)")


# ----------------------------------------------------------------------------------------------- specs
def _positive_int(value: Any, what: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or int(value) != value \
            or int(value) < 1:
        raise UserError(f"{what} must be a whole number >= 1, got {value!r}")
    return int(value)


def _check_params(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    info = METHODS[method]
    allowed = {**info.defaults, **_COMMON}
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise UserError(f"{method} takes no parameter {', '.join(map(repr, unknown))}: its parameters are "
                        f"{', '.join(allowed)}")
    p = {**allowed, **params}
    p["sign"] = info.sign if p["sign"] is None else p["sign"]
    if p["sign"] not in SIGNS:
        raise UserError(f"sign must be one of {', '.join(SIGNS)}, got {p['sign']!r}")
    smooth = p["smooth_px"]
    if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or not 0 <= float(smooth) < math.inf:
        raise UserError(f"smooth_px must be a number >= 0 (0 = no post-smoothing), got {smooth!r}")
    p["smooth_px"] = float(smooth)
    if "baseline" in p and p["baseline"] not in BASELINES:
        raise UserError(f"unknown baseline {p['baseline']!r}: choose one of {', '.join(BASELINES)}")
    if "blur" in p and p["blur"] is not None:
        if isinstance(p["blur"], bool) or not isinstance(p["blur"], (int, float)) or not float(p["blur"]) > 0:
            raise UserError(f"blur (the Gaussian sigma of the blurred baseline, in pixels) must be > 0, got {p['blur']!r}")
        p["blur"] = float(p["blur"])
    if method == "smoothgrad":
        if isinstance(p["noise"], bool) or not isinstance(p["noise"], (int, float)) or not float(p["noise"]) > 0:
            raise UserError(f"noise (a fraction of the grey range) must be > 0, got {p['noise']!r}")
        p["noise"] = float(p["noise"])
        p["samples"] = _positive_int(p["samples"], "samples")
        p["seed"] = int(p["seed"])
    if method == "integrated_gradients":
        p["steps"] = _positive_int(p["steps"], "steps")
        if p["rule"] not in IG_RULES:
            raise UserError(f"unknown IG rule {p['rule']!r}: choose one of {', '.join(IG_RULES)}")
    if method == "occlusion":
        p["window"] = _positive_int(p["window"], "window", allow_none=True)
        p["stride"] = _positive_int(p["stride"], "stride", allow_none=True)
    return p


def _default_name(method: str, p: Mapping[str, Any]) -> str:
    info = METHODS[method]
    if method == "saliency":
        name = "Saliency (gradient)"
    elif method == "smoothgrad":
        name = f"SmoothGrad (noise {p['noise']:g}, {p['samples']} samples)"
    elif method == "integrated_gradients":
        name = f"Integrated Gradients ({p['baseline']} baseline, {p['steps']} steps)"
    else:
        size = "auto window" if p["window"] is None else f"{p['window']} px window"
        stride = "" if p["stride"] is None else f", stride {p['stride']}"
        name = f"Occlusion ({size}{stride}, {p['baseline']} fill)"
    extra = [] if p["sign"] == info.sign else [f"{p['sign']} part" if p["sign"] != "absolute" else "absolute value"]
    if p["smooth_px"] > 0:
        extra.append(f"smoothed {p['smooth_px']:g} px")
    return name if not extra else f"{name[:-1]}, {', '.join(extra)})"


def make_attribution_spec(method: str, name: str | None = None, **params: Any) -> Spec:
    """A validated attribution spec ``{"name", "method", "params"}`` (plain, JSON-able; every parameter filled in).

    ``method`` is a key of :data:`METHODS`; ``params`` override its defaults (plus ``sign`` and ``smooth_px``).
    Unknown method, parameter or baseline: a one-line :class:`~utils.errors.UserError` naming the choices."""
    if method not in METHODS:
        raise UserError(f"unknown attribution method {method!r}: {_methods_hint()}")
    p = _check_params(method, params)
    return {"name": str(name or _default_name(method, p)), "method": method, "params": p}


def check_attribution_spec(spec: Mapping[str, Any]) -> Spec:
    """A spec read from elsewhere (JSON, a notebook), validated and completed (see :func:`make_attribution_spec`)."""
    if not isinstance(spec, Mapping) or "method" not in spec:
        raise UserError(f"an attribution spec is a dict with 'method' (and 'params'), got {spec!r}")
    params = spec.get("params") or {}
    if not isinstance(params, Mapping):
        raise UserError(f"an attribution spec's 'params' must be a dict, got {params!r}")
    return make_attribution_spec(spec["method"], spec.get("name"), **params)


def is_attribution_spec(spec: Mapping[str, Any]) -> bool:
    """True for a spec of this module (its method is in :data:`METHODS`), False for a Grad-CAM / rollout spec."""
    return isinstance(spec, Mapping) and spec.get("method") in METHODS


def _check_any_spec(model: nn.Module, spec: Mapping[str, Any]) -> Spec:
    """An attribution spec or a Grad-CAM spec (its layer checked on ``model``), validated; one-line errors."""
    if is_attribution_spec(spec):
        return check_attribution_spec(spec)
    method = spec.get("method", "gradcam") if isinstance(spec, Mapping) else None
    if method not in (*WEIGHTINGS, ROLLOUT):
        raise UserError(f"unknown explanation method {method!r}: {_methods_hint()}")
    try:
        checked = check_spec(spec)
        if checked["method"] != ROLLOUT:
            resolve_layer(model, checked["layer"])
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return checked


# ----------------------------------------------------------------------------------------------- the grey input
class _GrayInput(nn.Module):
    """``model`` seen from the raw grey image: input (N, 1, H, W) in [0, 1], replicated to three channels and
    normalised with ``mean`` / ``std`` inside (exactly :func:`utils.train.model.preprocess`)."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.as_tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.as_tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        return self.model((gray.expand(-1, 3, -1, -1) - self.mean) / self.std)


def gray_input(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
               ) -> torch.Tensor:
    """The raw grey image (N, 1, H, W) in [0, 1] behind a preprocessed batch ``x`` (N, 3, H, W).

    The series' inputs are one grey image in three channels; if the channels do not decode to the same grey
    (another mean/std, or a colour image) the attribution would be of something else: a one-line error."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise UserError(f"expected a preprocessed batch (N, 3, H, W), got shape {tuple(x.shape)}")
    m = torch.as_tensor(list(mean), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(list(std), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    raw = x.detach() * s + m
    if len(x) and float((raw - raw[:, :1]).abs().max()) > 1e-3:
        raise UserError("the three channels do not hold the same grey image: preprocess the uint8 images with the "
                        "checkpoint's mean/std (utils.train.model.preprocess) and pass the same meta here")
    return raw[:, :1].contiguous()


def dataset_mean_image(images: np.ndarray) -> np.ndarray:
    """The mean image (H, W) in [0, 1] of uint8 (or [0, 1] float) images (N, H, W): the ``"mean"`` baseline.

    Compute it on the **training** split (never on the images you explain or score)."""
    a = np.asarray(images)
    if a.ndim != 3 or not len(a):
        raise UserError(f"expected images (N, H, W), got shape {a.shape}")
    mean = a.astype(np.float64).mean(axis=0)
    return (mean / 255.0 if a.dtype == np.uint8 else mean).astype(np.float32)


def _blur(gray: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (N, 1, H, W) (reflect padding; the kernel capped at the image side)."""
    from torchvision.transforms.functional import gaussian_blur

    half = max(1, min(math.ceil(3 * sigma), min(gray.shape[-2:]) - 1))
    return gaussian_blur(gray, [2 * half + 1, 2 * half + 1], [sigma, sigma])


def _baseline(kind: str, gray: torch.Tensor, blur: float | None, mean_image: np.ndarray | torch.Tensor | None
              ) -> torch.Tensor:
    """The baseline images (N, 1, H, W) of ``kind`` for the grey batch ``gray``."""
    if kind == "black":
        return torch.zeros_like(gray)
    if kind == "blurred":
        return _blur(gray, blur if blur is not None else max(gray.shape[-2:]) / 16)
    h, w = gray.shape[-2:]
    if mean_image is None:
        raise UserError("the 'mean' baseline needs the training split's mean image: pass "
                        "mean_image=dataset_mean_image(train_images)")
    arr = np.asarray(mean_image)
    ref = torch.as_tensor(arr / 255.0 if arr.dtype == np.uint8 else arr, dtype=torch.float32)
    if ref.ndim not in (2, 3, 4) or tuple(ref.shape[-2:]) != (h, w) or (ref.ndim == 4 and ref.shape[1] != 1) \
            or len(ref.reshape(-1, h * w)) not in (1, len(gray)):
        raise UserError(f"the baseline image has shape {tuple(ref.shape)} but the images are {h}×{w}: pass the "
                        f"training mean at their size, dataset_mean_image(train_images) -> ({h}, {w})")
    ref = ref.reshape(-1, 1, h, w).to(gray.device)
    return ref.expand(len(gray), -1, -1, -1).contiguous()


# ----------------------------------------------------------------------------------------------- occlusion geometry
def occlusion_windows(size: int, window: int | None = None, stride: int | None = None) -> tuple[int, int, list[int]]:
    """``(window, stride, origins)`` of occlusion along one image side of ``size`` pixels.

    Window ``k`` at origin ``o`` covers pixels ``o .. o + k - 1``; origins are ``0, stride, …, size - k``. Defaults:
    ``window = size // 8`` and the largest stride ≤ window / 2 that tiles the side exactly. The windows must cover
    every pixel (``(size - window) % stride == 0``), else a one-line error names strides that do."""
    k = max(1, size // 8) if window is None else int(window)
    if not 1 <= k <= size:
        raise UserError(f"occlusion window {k} px does not fit a {size} px image: choose 1..{size}")
    if stride is None:
        s = max(d for d in range(1, max(1, k // 2) + 1) if (size - k) % d == 0)
    else:
        s = int(stride)
        if s < 1 or (size - k) % s:
            ok = [d for d in range(1, k + 1) if (size - k) % d == 0]
            raise UserError(f"occlusion stride {s} leaves pixels of a {size} px side uncovered by a {k} px window "
                            f"(size - window must be a multiple of the stride): use one of {ok}")
        if s > k:
            raise UserError(f"occlusion stride {s} > window {k} leaves gaps between windows: use a stride <= {k}")
    return k, s, list(range(0, size - k + 1, s))


# ----------------------------------------------------------------------------------------------- computing
@dataclass
class Attribution:
    """Raw attributions of one spec: ``values`` float32 (N, 1, H, W) on the grey image (signed, unscaled),
    ``delta`` (N,) Captum's convergence delta for IG (sum of attributions − (f(x) − f(baseline))), else None,
    ``logits`` (N, C) of the images, ``targets`` (N,), ``seconds_per_image``."""

    spec: Spec
    values: np.ndarray
    logits: np.ndarray
    targets: np.ndarray
    delta: np.ndarray | None = None
    seconds_per_image: float = 0.0


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _logits(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Logits (N, C) on the CPU of a preprocessed batch, in chunks, eval mode, no graph."""
    dev = _device(model)
    with torch.inference_mode(), eval_mode(model):
        parts = [model(x[sl].to(dev)).float().cpu() for sl in _chunks(len(x), batch_size)]
    return torch.cat(parts) if parts else torch.zeros((0, 2))


def _resolve_targets(targets: TargetsLike, logits: torch.Tensor) -> torch.Tensor:
    n, c = logits.shape
    if targets is None:
        t = logits.argmax(1)
    elif isinstance(targets, (int, np.integer)):
        t = torch.full((n,), int(targets), dtype=torch.long)
    else:
        t = torch.as_tensor(np.asarray(targets, dtype=np.int64)).flatten()
        if t.numel() != n:
            raise UserError(f"got {t.numel()} targets for {n} images")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= c):
        raise UserError(f"targets must be class indices in 0..{c - 1}")
    return t.cpu()


@contextmanager
def _grad_mode(model: nn.Module) -> Iterator[None]:
    """Gradients on (even inside ``torch.inference_mode``), the model in eval mode, Captum's input warnings quiet."""
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(requires_grad|required_grads|grad_fn).*")
        yield


def _chunks(n: int, per: int) -> list[slice]:
    per = max(1, per)
    return [slice(i, min(n, i + per)) for i in range(0, n, per)]


def raw_attributions(model: nn.Module, x: torch.Tensor, spec: Mapping[str, Any], targets: TargetsLike = 1,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     mean_image: np.ndarray | None = None, batch_size: int = 64, progress: bool = False
                     ) -> Attribution:
    """The raw (signed, unscaled) attributions of one attribution spec for a preprocessed batch ``x`` (N, 3, H, W).

    ``targets``: the class explained (default 1 = PNEUMONIA), N classes, or None (each image's predicted class).
    ``mean`` / ``std``: the checkpoint's normalisation (``meta["mean"]``, ``meta["std"]``). ``mean_image``: the
    training split's mean image, for the ``"mean"`` baseline. Work is batched: each forward holds at most about
    ``batch_size`` images (noisy copies, path steps or occluded copies included), images in chunks with a
    ``tqdm.auto`` bar when ``progress``. SmoothGrad's noise is drawn from its ``seed`` for each chunk: the same images
    in the same order and ``batch_size`` give the same maps. Works inside ``torch.inference_mode``."""
    spec = check_attribution_spec(spec)
    p, method = spec["params"], spec["method"]
    dev = _device(model)
    gray_all = gray_input(x, mean, std)
    n, _, h, w = gray_all.shape
    if method == "occlusion":
        wy = occlusion_windows(h, p["window"], p["stride"])
        wx = occlusion_windows(w, p["window"], p["stride"])
        copies = len(wy[2]) * len(wx[2])
    else:
        copies = {"saliency": 1, "smoothgrad": p.get("samples", 1), "integrated_gradients": p.get("steps", 1)}[method]
    if p.get("baseline") == "mean":
        _baseline("mean", gray_all, None, mean_image)  # a missing or wrong-shape baseline fails before any work
    per = max(1, batch_size // copies) if method != "occlusion" else min(max(n, 1), batch_size)
    values, deltas, logits_all, targets_all = [], [], [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n, desc=METHODS[method].label, unit="img", leave=False)
    start = time.perf_counter()
    from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency

    with _grad_mode(model):
        front = _GrayInput(model, mean, std).to(dev)  # made here: no inference-mode tensor enters the graph
        for sl in _chunks(n, per):
            gray = gray_all[sl].to(dev).clone()
            with torch.no_grad():
                logits = front(gray)
            t = _resolve_targets(targets if targets is None or isinstance(targets, (int, np.integer))
                                 else np.asarray(targets).ravel()[sl], logits).to(dev)
            inp = gray.clone().requires_grad_(True)
            if method == "saliency":
                a = Saliency(front).attribute(inp, target=t, abs=False)
            elif method == "smoothgrad":
                with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                    torch.manual_seed(p["seed"])
                    a = NoiseTunnel(Saliency(front)).attribute(
                        inp, nt_type="smoothgrad", nt_samples=p["samples"],
                        nt_samples_batch_size=max(1, min(p["samples"], batch_size // len(gray))),
                        stdevs=p["noise"], target=t, abs=False)
            elif method == "integrated_gradients":
                base = _baseline(p["baseline"], gray, p["blur"], mean_image)
                a, d = IntegratedGradients(front).attribute(
                    inp, baselines=base, target=t, n_steps=p["steps"], method=p["rule"],
                    internal_batch_size=max(len(gray), batch_size), return_convergence_delta=True)
                deltas.append(d.detach().float().cpu().numpy())
            else:
                base = _baseline(p["baseline"], gray, p["blur"], mean_image)
                a = Occlusion(front).attribute(
                    inp, sliding_window_shapes=(1, wy[0], wx[0]), strides=(1, wy[1], wx[1]), baselines=base,
                    target=t, perturbations_per_eval=max(1, batch_size // len(gray)))
            values.append(a.detach().float().cpu().numpy())
            logits_all.append(logits.detach().float().cpu().numpy())
            targets_all.append(t.cpu().numpy())
            if bar is not None:
                bar.update(len(gray))
    if bar is not None:
        bar.close()
    seconds = (time.perf_counter() - start) / max(n, 1)
    cat = (lambda parts, shape: np.concatenate(parts) if parts else np.zeros(shape, np.float32))  # noqa: E731
    return Attribution(spec, cat(values, (0, 1, h, w)), cat(logits_all, (0, 2)),
                       np.concatenate(targets_all) if targets_all else np.zeros(0, np.int64),
                       np.concatenate(deltas) if deltas else None, seconds)


def to_maps(values: np.ndarray | torch.Tensor, sign: str = "absolute", smooth_px: float = 0.0) -> np.ndarray:
    """THE adapter: raw attributions (N, C, H, W) or (N, H, W) → the series' maps, float32 (N, H, W) in [0, 1].

    Channels are summed (one grey value per pixel; for IG this keeps completeness); ``sign`` (:data:`SIGNS`):
    ``"absolute"`` |a|, ``"positive"`` max(a, 0), ``"negative"`` max(−a, 0); then an optional Gaussian blur of
    ``smooth_px`` pixels; then each map is divided by its maximum (an all-zero map stays zero — no min-max shift,
    so "no attribution" stays 0 and the energy inside a mask is unchanged by the scaling)."""
    a = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, np.float32)
    if a.ndim == 4:
        a = a.sum(axis=1)
    if a.ndim != 3:
        raise ValueError(f"attributions must be (N, C, H, W) or (N, H, W), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("attributions are not finite (NaN or inf): check the model and the inputs")
    if sign == "absolute":
        m = np.abs(a)
    elif sign == "positive":
        m = np.maximum(a, 0)
    elif sign == "negative":
        m = np.maximum(-a, 0)
    else:
        raise UserError(f"sign must be one of {', '.join(SIGNS)}, got {sign!r}")
    if smooth_px > 0:
        m = ndi.gaussian_filter(m, (0, smooth_px, smooth_px), mode="reflect")
    top = m.reshape(len(m), -1).max(axis=1) if m.size else np.zeros(len(m))
    scale = np.where(top > 0, top, 1.0)[:, None, None]
    return np.where(top[:, None, None] > 0, m / scale, 0.0).astype(np.float32)


def attribution_maps(model: nn.Module, x: torch.Tensor, spec: Mapping[str, Any], targets: TargetsLike = 1,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     mean_image: np.ndarray | None = None, batch_size: int = 64, progress: bool = False
                     ) -> np.ndarray:
    """Maps (N, H, W) in [0, 1] of one attribution spec: :func:`raw_attributions` through :func:`to_maps`."""
    att = raw_attributions(model, x, spec, targets, mean, std, mean_image, batch_size, progress)
    return to_maps(att.values, att.spec["params"]["sign"], att.spec["params"]["smooth_px"])


def _meta_norm(meta: Mapping[str, Any] | None) -> tuple[Sequence[float], Sequence[float]]:
    meta = meta or {}
    return meta.get("mean", IMAGENET_MEAN), meta.get("std", IMAGENET_STD)


def method_maps(model: nn.Module, x: torch.Tensor, specs: Sequence[Mapping[str, Any]], targets: TargetsLike = 1,
                meta: Mapping[str, Any] | None = None, mean_image: np.ndarray | None = None, batch_size: int = 64,
                progress: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, float]]:
    """Maps of several specs — attribution specs and Grad-CAM specs (:mod:`utils.explain.selection`, e.g. the
    recorded ``main_explanation(meta)``) side by side — for one preprocessed batch ``x`` (N, 3, H, W).

    Every spec is checked before any work (unknown method, a layer the model lacks, a baseline of the wrong shape:
    one-line :class:`~utils.errors.UserError`). Returns ``({name: maps (N, H, W) in [0, 1]}, P(PNEUMONIA) (N,),
    {name: seconds per image})``. ``meta`` gives the checkpoint's mean/std (default ImageNet's)."""
    mean, std = _meta_norm(meta)
    checked = [_check_any_spec(model, s) for s in specs]
    names = [s["name"] for s in checked]
    if len(set(names)) != len(names):
        raise UserError(f"spec names must be unique, got {names}")
    gray = gray_input(x, mean, std)
    for s in checked:
        if is_attribution_spec(s) and s["params"].get("baseline") == "mean":
            _baseline("mean", gray, None, mean_image)
        if s["method"] == "occlusion":
            occlusion_windows(x.shape[-2], s["params"]["window"], s["params"]["stride"])
            occlusion_windows(x.shape[-1], s["params"]["window"], s["params"]["stride"])
    maps: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    logits: torch.Tensor | None = None  # every method runs a forward pass anyway: the probabilities come from one
    for s in checked:
        start = time.perf_counter()
        if is_attribution_spec(s):
            att = raw_attributions(model, x, s, targets, mean, std, mean_image, batch_size, progress)
            maps[s["name"]] = to_maps(att.values, att.spec["params"]["sign"], att.spec["params"]["smooth_px"])
            lg = torch.from_numpy(att.logits)
        else:
            maps[s["name"]], lg = explain(model, x, s, targets, batch_size)
        seconds[s["name"]] = (time.perf_counter() - start) / max(len(x), 1)
        logits = lg if logits is None else logits
    probs = pneumonia_probability(logits if logits is not None and len(logits) == len(x) else _logits(model, x, batch_size))
    return maps, probs, seconds


def cam_fn_for(spec: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
               mean_image: np.ndarray | None = None, batch_size: int = 64
               ) -> Callable[[nn.Module, torch.Tensor, Any, TargetsLike], np.ndarray]:
    """``cam_fn(model, x, layer, targets) -> maps`` for ``spec`` — the callable
    :func:`utils.explain.checks.cascading_randomisation` and :func:`map_stability` take. The ``layer`` argument is
    ignored: an attribution spec reads the input, a Grad-CAM spec its own layer."""
    frozen = dict(spec)

    def cam_fn(model: nn.Module, x: torch.Tensor, layer: Any = None, targets: TargetsLike = 1) -> np.ndarray:
        maps, _, _ = method_maps(model, x, [frozen], targets, meta, mean_image, batch_size)
        return next(iter(maps.values()))

    return cam_fn


def captum_gradcam_difference(model: nn.Module, x: torch.Tensor, layer: str = "layer4",
                              targets: TargetsLike = None) -> float:
    """Max |ours − Captum's ``LayerGradCam``| over all pixels (an oracle for the hand-written Grad-CAM; ≈ 0).

    Captum: ReLU of the channel-weighted layer, ``LayerAttribution.interpolate`` (bilinear, half-pixel centres),
    then min-max per map as ours; a layer the model lacks is a one-line error."""
    from captum.attr import LayerAttribution, LayerGradCam

    try:
        module = resolve_layer(model, layer)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    dev = _device(model)
    t = _resolve_targets(targets, _logits(model, x))
    ours, _ = explain(model, x, check_spec({"method": "gradcam", "layer": layer}), t.numpy())
    with _grad_mode(model):
        a = LayerGradCam(model, module).attribute(x.to(dev).clone().requires_grad_(True), target=t.to(dev),
                                                  relu_attributions=True)
        up = LayerAttribution.interpolate(a.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    theirs = normalise_maps(up.float().cpu()).numpy()
    return float(np.abs(ours - theirs).max()) if ours.size else 0.0


# ----------------------------------------------------------------------------------------------- choosing parameters
def parameter_grid(image_size: int, with_mean: bool = False, noises: Sequence[float] = (0.05, 0.15, 0.3),
                   samples: Sequence[int] = (8, 16), steps: Sequence[int] = (8, 16),
                   window_fractions: Sequence[int] = (4, 8), fills: Sequence[str] = ("black",)
                   ) -> dict[str, list[Spec]]:
    """The small grid :func:`choose_parameters` searches, as ``{group: [specs]}``, cheapest first in each group (ties
    go to the earlier, cheaper one). SmoothGrad: ``noises`` × ``samples``; IG, one group per baseline (black, blurred,
    and the training mean when ``with_mean``): ``steps``; occlusion: windows of side / f for f in
    ``window_fractions`` (stride half the window, :func:`occlusion_windows`) × the ``fills`` (:data:`BASELINES`) the
    occluded window is replaced with — for occlusion the baseline is a parameter to choose, like the window.

    Cost per image in model passes: SmoothGrad Σ samples × len(noises), IG Σ steps per baseline, occlusion
    (side / stride − 1)² forwards per window and fill (49 for side / 4, 225 for side / 8)."""
    unknown = [f for f in fills if f not in BASELINES]
    if unknown or not fills:
        raise UserError(f"unknown occlusion fill {unknown or list(fills)}: choose from {', '.join(BASELINES)}")
    if "mean" in fills and not with_mean:
        raise UserError("the 'mean' occlusion fill needs the training mean image: pass with_mean=True (and mean_image "
                        "to choose_parameters)")
    grid: dict[str, list[Spec]] = {"saliency": [make_attribution_spec("saliency")]}
    grid["smoothgrad"] = [make_attribution_spec("smoothgrad", samples=n, noise=s) for n in samples for s in noises]
    for base in ("black", "blurred", *(("mean",) if with_mean else ())):
        grid[f"integrated_gradients ({base})"] = [make_attribution_spec("integrated_gradients", steps=k, baseline=base)
                                                  for k in steps]
    occ: list[Spec] = []
    for frac in sorted(window_fractions):  # the largest window (fewest positions, cheapest) first
        k, s, _ = occlusion_windows(image_size, max(1, image_size // frac))
        for fill in fills:
            spec = make_attribution_spec("occlusion", window=k, stride=s, baseline=fill)
            if spec["name"] not in {o["name"] for o in occ}:
                occ.append(spec)
    grid["occlusion"] = occ
    return grid


def choose_parameters(model: nn.Module, val_images: np.ndarray, val_lesion_masks: np.ndarray,
                      val_labels: np.ndarray, meta: Mapping[str, Any],
                      grid: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                      mean_image: np.ndarray | None = None, tolerance_frac: float = TOLERANCE_FRAC,
                      priors: Mapping[str, np.ndarray] | None = None, max_images: int | None = None,
                      batch_size: int = 64, progress: bool = False, split: str = "validation"
                      ) -> tuple[dict[str, Spec], pd.DataFrame]:
    """Each method's parameters, chosen on **validation** by the series' localisation rule
    (:func:`utils.explain.selection.choose_explanation`'s): on the validation true positives (label 1,
    P(PNEUMONIA) ≥ ``meta["threshold"]``) with a lesion mask, the best near-pointing, then pointing, then energy
    inside the lesion; ties go to the earlier (cheaper) candidate of the group.

    ``grid``: ``{group: [specs]}`` (default :func:`parameter_grid`); ``max_images``: score only the first so many true
    positives (cost; in file order, no randomness). ``split`` names where the arrays come from and refuses
    ``"test"``: choosing on the scored images would make every reported score optimistic.
    Returns ``({group: chosen spec}, table)``: :func:`utils.explain.localisation.localisation_table`'s rows for every
    candidate (baselines last) with ``group``, ``params`` (JSON), ``seconds_per_image``, ``rank`` and ``chosen``."""
    if split == "test":
        raise UserError("parameters are chosen on validation data, never on the scored test images: pass the "
                        "validation split")
    images, labels, masks = loc.scored_inputs(val_images, val_labels, val_lesion_masks, UserError)
    grid = grid if grid is not None else parameter_grid(images.shape[-1], mean_image is not None)
    groups = {g: [check_attribution_spec(s) if is_attribution_spec(s) else _check_any_spec(model, s) for s in specs]
              for g, specs in grid.items()}
    every = [s for specs in groups.values() for s in specs]
    x_all = preprocess(torch.as_tensor(images), meta["mean"], meta["std"])
    probs = pneumonia_probability(_logits(model, x_all, batch_size))
    has = masks.reshape(len(masks), -1).any(axis=1) if len(masks) else np.zeros(0, bool)
    tp = np.flatnonzero((labels == 1) & (probs >= float(meta["threshold"])) & has)
    if not len(tp):
        raise UserError("no validation true positive with a lesion mask to choose on: the model detects none")
    tp = tp[:max_images] if max_images else tp
    maps, _, seconds = method_maps(model, x_all[tp], every, 1, meta, mean_image, batch_size, progress)
    table = loc.localisation_table(maps, masks[tp], tolerance_frac, priors=priors)
    group_of = {s["name"]: g for g, specs in groups.items() for s in specs}
    by_name = {s["name"]: s for s in every}
    table["group"] = table["method"].map(lambda n: group_of.get(n, ""))
    table["params"] = table["method"].map(
        lambda n: json.dumps({k: v for k, v in by_name[n].items() if k != "name"}, sort_keys=True) if n in by_name else "")
    table["seconds_per_image"] = table["method"].map(seconds)
    table["order"] = np.arange(len(table))
    table["rank"] = 0
    chosen: dict[str, Spec] = {}
    for g in groups:
        rows = table[table["group"] == g].sort_values(["near", "pointing", "energy", "order"],
                                                      ascending=[False, False, False, True])
        table.loc[rows.index, "rank"] = np.arange(1, len(rows) + 1)
        chosen[g] = dict(by_name[rows["method"].iloc[0]])
    table["chosen"] = table["method"].isin([s["name"] for s in chosen.values()])
    table = table.drop(columns="order")
    table.attrs["n_true_positives"] = len(tp)
    return chosen, table


# ----------------------------------------------------------------------------------------------- stability
#: Small input changes for :func:`map_stability`: additive grey noise (σ = level) or a gamma change (γ = 1 + level).
PERTURBATIONS: tuple[str, ...] = ("noise", "gamma")


def perturb(x: torch.Tensor, kind: str = "noise", level: float = 0.02, seed: int = 0,
            mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """A slightly changed copy of a preprocessed batch ``x``: on the grey image in [0, 1], ``"noise"`` adds Gaussian
    noise of σ = ``level`` (seeded), ``"gamma"`` raises it to the power 1 + ``level``; the result is clipped to
    [0, 1], quantised to 8 bits (it is still an image the pipeline could read) and preprocessed again."""
    if kind not in PERTURBATIONS:
        raise UserError(f"unknown perturbation {kind!r}: choose one of {', '.join(PERTURBATIONS)}")
    gray = gray_input(x, mean, std).cpu().double()
    if kind == "noise":
        rng = np.random.default_rng(seed)
        gray = gray + torch.from_numpy(rng.standard_normal(tuple(gray.shape))) * float(level)
    else:
        gray = gray.clamp(0, 1) ** (1.0 + float(level))
    u8 = (gray.clamp(0, 1) * 255).round().to(torch.uint8)
    return preprocess(u8, mean, std).to(x.device)


def map_stability(model: nn.Module, x: torch.Tensor, cam_fn: Callable[..., np.ndarray],
                  meta: Mapping[str, Any], kind: str = "noise", level: float = 0.02, targets: TargetsLike = 1,
                  threshold: float | None = None, layer: Any = None, seed: int = 0,
                  maps: np.ndarray | None = None) -> dict[str, Any]:
    """How much a map changes under a small perturbation (:func:`perturb`) that leaves the decision unchanged.

    The decision is P(PNEUMONIA) ≥ ``threshold`` (default ``meta["threshold"]``) before and after; images whose
    decision flips are counted (``n_flipped``) and left out. For the others, ``rho`` is the Spearman rank correlation
    of the two maps (:func:`utils.explain.checks.spearman_maps`; 1 = same ranking). ``cam_fn(model, x, layer,
    targets)`` computes the maps (:func:`cam_fn_for`); ``maps`` — the maps of ``x`` already computed with the same
    ``targets`` (one shared pass) — saves recomputing them. Returns ``{"kind", "level", "n", "n_flipped", "n_kept",
    "rho" (n_kept,), "median_rho", "mean_rho", "q25", "q75", "max_abs_dprob"}``."""
    mean, std = _meta_norm(meta)
    thr = float(meta["threshold"] if threshold is None else threshold)
    x2 = perturb(x, kind, level, seed, mean, std)
    p1, p2 = pneumonia_probability(_logits(model, x)), pneumonia_probability(_logits(model, x2))
    keep = np.flatnonzero((p1 >= thr) == (p2 >= thr))
    t = targets if targets is None or isinstance(targets, (int, np.integer)) else np.asarray(targets).ravel()[keep]
    if maps is not None and np.shape(maps) != (len(x), *x.shape[-2:]):
        raise UserError(f"maps of shape {np.shape(maps)} do not match the {len(x)} images of {x.shape[-2]}×{x.shape[-1]}"
                        " px: pass the maps of exactly these images (or none)")
    rho = np.zeros(0)
    if len(keep):
        before = np.asarray(maps)[keep] if maps is not None else cam_fn(model, x[keep], layer, t)
        rho = spearman_maps(before, cam_fn(model, x2[keep], layer, t))
    ok = rho[np.isfinite(rho)]
    stat = (lambda f: float(f(ok)) if ok.size else float("nan"))  # noqa: E731
    return {"kind": kind, "level": float(level), "n": len(x), "n_flipped": len(x) - len(keep), "n_kept": len(keep),
            "rho": rho, "median_rho": stat(np.median), "mean_rho": stat(np.mean),
            "q25": stat(lambda v: np.percentile(v, 25)), "q75": stat(lambda v: np.percentile(v, 75)),
            "max_abs_dprob": float(np.abs(p1 - p2).max()) if len(x) else float("nan")}
