"""Grad-CAM written by hand (Selvaraju et al., 2017), plus an RGB heat-map overlay.

For a class score :math:`y^c` and the activations :math:`A^k` (K channels, h×w) of a convolutional
layer, Grad-CAM weighs every channel by the spatial mean of its gradient and keeps the positive part::

    alpha_k = mean_{i,j} dy^c / dA^k_ij          (one number per channel: "how much does channel k help class c")
    L^c     = ReLU( sum_k alpha_k A^k )          (an h×w map: where those channels fire)

The low-resolution map is then upsampled bilinearly to the input size and scaled to [0, 1] per image.

How the pieces are caught (the part worth reading):

* a *forward hook* on the target layer sees its output ``A`` during the forward pass. It records
  ``A.detach().requires_grad_()`` (same values, a fresh leaf of the autograd graph) and hands a copy
  of it to the rest of the network. That
  makes the CAM work whatever the parameters' ``requires_grad`` flags are (a fully frozen model
  included) and cuts the graph below the layer, which Grad-CAM never needs;
* a *tensor hook* (``A.register_hook``) receives ``dy^c / dA`` during the backward pass. Module
  backward hooks are avoided on purpose (they are fragile with in-place ops and residual blocks);
* the backward pass is ``torch.autograd.grad(score, A)``: it computes only what is asked for, so no
  ``.grad`` is ever written on the model's parameters.

Two refinements use the same pass: other channel weightings (:data:`WEIGHTINGS`: XGradCAM,
Grad-CAM++) and :func:`shift_averaged_gradcam`, which averages the maps of a few shifted copies of the
image (batched into the one pass) to get a finer map out of a coarse layer.

Where the upsampling draws a cell is a choice too (:data:`ANCHORS`). The usual bilinear resize (PyTorch's
``align_corners=False``, OpenCV's ``cv2.resize`` in ``pytorch-grad-cam``) spreads the h cells evenly over the H
pixels: cell j lands on pixel (H/h)·j + (H/h − 1)/2, the centre of the j-th block of H/h pixels. A ResNet's cell j is
centred elsewhere: every stride-2 convolution or pooling with "same" padding is anchored at the top-left, so its
receptive field is centred on input pixel stride·j (:func:`receptive_field_geometry` finds stride and offset for
any CNN). The usual resize therefore draws a ResNet's map (stride − 1)/2 px down and right of where the network
saw it — 7.5 px on ``layer3``, 15.5 px on ``layer4``. ``cells=`` (:class:`CellGeometry`) draws every cell on its
receptive-field centre instead (:func:`upsample_cells`); the default keeps the library's convention, which the oracle
check against ``pytorch-grad-cam`` needs.

One forward and one backward per call, in eval mode; the model is handed back exactly as found
(per-module train/eval flags, ``requires_grad`` flags untouched, no hooks left after ``release``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ANCHORS",
    "BORDERS",
    "SHIFT_ALIGN",
    "SHIFT_BORDER",
    "WEIGHTINGS",
    "CamSteps",
    "CellGeometry",
    "GradCAM",
    "average_unshifted",
    "cam_steps",
    "channel_weights",
    "eval_mode",
    "gradcam",
    "gray_to_float",
    "library_geometry",
    "normalise_maps",
    "overlay",
    "receptive_field_geometry",
    "resize_map",
    "resolve_layer",
    "shift_averaged_gradcam",
    "shift_grid",
    "shift_images",
    "shifted_size",
    "upsample_cells",
]

#: How the channel weights alpha_k are computed from the activations A and gradients G of one pass:
#: ``"gradcam"`` (Selvaraju et al. 2017: the spatial mean of G), ``"xgradcam"`` (Fu et al. 2020:
#: sum_ij G * A / sum_ij A) and ``"gradcam++"`` (Chattopadhay et al. 2018). All three use the same single
#: forward and backward pass; they differ only in this one formula (pytorch-grad-cam's formulas, eps included).
WEIGHTINGS = ("gradcam", "xgradcam", "gradcam++")

#: What a map explains: a class index for every image, one per image, None (each image's predicted class), or a
#: callable mapping the pass's logits (N, C) to one of those.
Targets = int | Sequence[int] | np.ndarray | Callable[[torch.Tensor], Any] | None


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode, then restore every module's own ``training`` flag (mixed modes too)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    """The module named by a dotted path (``"layer4"``, ``"layer4.1"``, ``"layer3.0.conv2"``) or given directly."""
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError as e:
            names = [n for n, _ in model.named_children()]
            raise ValueError(f"no layer {layer!r} in the model; top-level layers: {', '.join(names)}") from e
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError("the target layer is not a submodule of the model")
        return layer
    raise TypeError(f"layer must be a dotted name or an nn.Module, not {type(layer).__name__}")


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of ``(N, H, W)`` to [0, 1]: subtract its min, divide by its max if positive.

    A constant map (an all-zero one included) becomes all zeros: never NaN.
    """
    flat = maps.flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    top = flat.max(dim=1, keepdim=True).values
    flat = torch.where(top > 0, flat / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(flat))
    return flat.view_as(maps)


def resize_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a map ``(H, W)`` or maps ``(N, H, W)`` to ``size = (rows, cols)``; values stay in range."""
    t = torch.as_tensor(np.asarray(cam, dtype=np.float32))
    batched = t.ndim == 3
    t = t if batched else t[None]
    out = F.interpolate(t[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0].numpy()
    return out if batched else out[0]


def channel_weights(act: torch.Tensor, grad: torch.Tensor, weighting: str = "gradcam") -> torch.Tensor:
    """Channel weights alpha (N, K) from activations and gradients (N, K, h, w); see :data:`WEIGHTINGS`."""
    if weighting == "gradcam":
        return grad.mean(dim=(2, 3))
    sum_act = act.sum(dim=(2, 3), keepdim=True)
    if weighting == "xgradcam":  # each position's gradient weighted by its share of the channel's activation
        return (grad * act / (sum_act + 1e-7)).sum(dim=(2, 3))
    if weighting == "gradcam++":  # eq. 19 of Chattopadhay et al., with the ReLU on the gradients (eq. 7)
        g2 = grad * grad
        aij = g2 / (2 * g2 + sum_act * g2 * grad + 1e-6)
        aij = torch.where(grad != 0, aij, torch.zeros_like(aij))
        return (F.relu(grad) * aij).sum(dim=(2, 3))
    raise ValueError(f"unknown weighting {weighting!r}: choose one of {', '.join(WEIGHTINGS)}")


# ------------------------------------------------------------------------------------- where cells sit
#: Where a map's low-resolution cells are drawn when it is upsampled (the ``anchor`` of an explanation spec,
#: :func:`utils.explain.spec.make_spec`): ``"library"`` — the usual bilinear resize, cells spread evenly over the image
#: (PyTorch ``align_corners=False``, ``pytorch-grad-cam``); ``"receptive_field"`` — each cell on the centre of its
#: receptive field (:func:`receptive_field_geometry`). For a ViT the two are the same: its patches do not overlap,
#: so the centre of patch j *is* the centre of the j-th block of pixels.
ANCHORS: tuple[str, ...] = ("library", "receptive_field")


class CellGeometry(NamedTuple):
    """Where a layer's cells sit on its input: cell (i, j) is centred on input pixel
    ``(offset[0] + stride[0]·i, offset[1] + stride[1]·j)`` (pixel centres at integer coordinates, rows then
    columns)."""

    stride: tuple[float, float]
    offset: tuple[float, float]


def library_geometry(grid: Sequence[int], size: Sequence[int]) -> CellGeometry:
    """Where the usual bilinear resize (``align_corners=False``) draws a ``grid`` = (h, w) of cells on an image of
    ``size`` = (H, W): stride H/h, cell 0 at (H/h − 1)/2 — the centre of the first block of H/h pixels."""
    stride = (int(size[0]) / int(grid[0]), int(size[1]) / int(grid[1]))
    return CellGeometry(stride, ((stride[0] - 1) / 2, (stride[1] - 1) / 2))


class _Stop(Exception):
    """Ends a probing forward pass once the probed layer has run."""


def _first_conv_channels(model: nn.Module) -> int:
    return next((int(m.in_channels) for m in model.modules() if isinstance(m, nn.Conv2d)), 3)


def receptive_field_geometry(model: nn.Module, layer: str | nn.Module, probe: int = 64) -> CellGeometry:
    """Stride and receptive-field centre of ``layer``'s cells on the input, measured on the model: for a CNN of
    convolutions and poolings (PyTorch pads them symmetrically) the layer's grid has
    ``n = floor((N − D) / S) + 1`` cells along an input of N pixels, and cell j is centred on input pixel
    ``S·j + (D − 1)/2`` (S: the product of the strides; D: the receptive field's size minus twice its padding).
    Both are read off the grid sizes: forward passes of all-zero inputs, each stopped as soon as ``layer`` has run,
    find (by bisection, per axis) the smallest input with ``n`` cells and the smallest with ``n + 1``; those differ
    by S. A ResNet-18 gives S = 2, 4, 4, 8, 16, 32 for ``conv1``, ``maxpool``, ``layer1`` … ``layer4``, always with
    D = 1: cell j centred on pixel S·j. ``probe``: the input size the search starts from (doubled until the model
    runs). ValueError when the grid does not grow with the input (not a CNN of this kind)."""
    module = resolve_layer(model, layer)
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    channels = _first_conv_channels(model)

    def grid(h: int, w: int) -> tuple[int, int] | None:
        shapes: list[tuple[int, int]] = []

        def hook(m: nn.Module, i: tuple, o: Any) -> None:
            if not isinstance(o, torch.Tensor) or o.ndim != 4:
                raise ValueError(f"layer output is not a (N, K, h, w) feature map: {type(o).__name__}")
            shapes.append((int(o.shape[-2]), int(o.shape[-1])))
            raise _Stop

        handle = module.register_forward_hook(hook)
        try:
            with torch.no_grad(), eval_mode(model):
                model(torch.zeros((1, channels, h, w), device=device))
        except _Stop:
            pass
        except (RuntimeError, AssertionError):  # too small an input for some layer before this one
            return None
        finally:
            handle.remove()
        return shapes[0] if shapes else None

    base = int(probe)
    while grid(base, base) is None:
        base *= 2
        if base > 4096:
            raise ValueError("the model runs on no input size up to 4096 px: cannot probe its grid")

    def axis(k: int) -> tuple[float, float]:
        def cells(n_pixels: int) -> int:
            got = grid(*((n_pixels, base) if k == 0 else (base, n_pixels)))
            return 0 if got is None else got[k]

        def smallest(lo: int, hi: int, target: int) -> int:  # the smallest n in (lo, hi] with cells(n) >= target
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if cells(mid) >= target else (mid, hi)
            return hi

        n0 = cells(base)
        hi = 2 * base
        while cells(hi) <= n0:
            hi *= 2
            if hi > 64 * base:
                raise ValueError(f"the grid of {layer!r} does not grow with the input: cannot find its stride")
        first = smallest(0, base, n0)  # = D + S·(n0 − 1)
        stride = smallest(base, hi, n0 + 1) - first  # the next cell appears S pixels later
        d = first - stride * (n0 - 1)
        return float(stride), (d - 1) / 2

    (sy, oy), (sx, ox) = axis(0), axis(1)
    return CellGeometry((sy, sx), (oy, ox))


def _axis_weights(n_pixels: int, n_cells: int, stride: float, offset: float, like: torch.Tensor) -> torch.Tensor:
    """(n_pixels, n_cells) linear-interpolation weights: pixel i between the cells whose centres
    (``offset + stride·j``) surround it; beyond the first/last centre the edge cell's value (replicate)."""
    u = ((torch.arange(n_pixels, dtype=torch.float64) - offset) / stride).clamp(0, n_cells - 1)
    lo = u.floor().long().clamp(max=n_cells - 1)
    hi = (lo + 1).clamp(max=n_cells - 1)
    frac = u - lo.to(u.dtype)
    w = torch.zeros((n_pixels, n_cells), dtype=torch.float64)
    rows = torch.arange(n_pixels)
    w.index_put_((rows, lo), 1 - frac, accumulate=True)
    w.index_put_((rows, hi), frac, accumulate=True)
    return w.to(dtype=like.dtype, device=like.device)


def upsample_cells(raw: torch.Tensor, size: Sequence[int], cells: CellGeometry | None = None) -> torch.Tensor:
    """Low-resolution maps (N, h, w) → (N, H, W) with ``size`` = (H, W), bilinear. ``cells=None``: the library
    convention (``F.interpolate(align_corners=False)``, cells spread evenly, :func:`library_geometry`); else each
    cell's value is drawn on its centre as ``cells`` says (:func:`receptive_field_geometry`), pixels between centres
    interpolated linearly per axis, pixels beyond the outer centres given the edge cell's value. With
    ``cells = library_geometry(...)`` both give the same map."""
    if cells is None:
        return F.interpolate(raw[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    (h, w), (big_h, big_w) = raw.shape[-2:], (int(size[0]), int(size[1]))
    wy = _axis_weights(big_h, h, cells.stride[0], cells.offset[0], raw)
    wx = _axis_weights(big_w, w, cells.stride[1], cells.offset[1], raw)
    return torch.einsum("Hh,nhw,Ww->nHW", wy, raw, wx)


class CamSteps(NamedTuple):
    """The steps of :func:`cam_steps` (tensors): ``alphas`` (N, K), ``weighted`` (N, h, w) = sum_k alpha_k A^k
    before the ReLU, ``raw`` (N, h, w) after it, and ``maps`` (N, H, W) in [0, 1] — one per image, or, with
    ``shifts``, one per image of the N // S unshifted ones."""

    alphas: torch.Tensor
    weighted: torch.Tensor
    raw: torch.Tensor
    maps: torch.Tensor


def cam_steps(act: torch.Tensor, grad: torch.Tensor, weighting: str, size: Sequence[int],
              shifts: Sequence[tuple[int, int]] | None = None, border: str | None = None,
              layout: Sequence[tuple[int, int]] | None = None, cells: CellGeometry | None = None) -> CamSteps:
    """THE map from one pass's activations and gradients (N, K, h, w): channel weights (:data:`WEIGHTINGS`),
    ReLU of the weighted sum, bilinear upsampling to ``size`` = (H, W) of the pass's input (:func:`upsample_cells`:
    ``cells=None`` the library's convention, else each cell on its receptive-field centre), then — when ``shifts``
    lists more than one shift of :func:`shift_images`' stacked copies (shift-major) — the copies shifted back and
    averaged (:func:`average_unshifted`, ``border`` and ``layout`` as there; with ``border="complete"`` ``size`` is
    the copies' size, :func:`shifted_size`), and each map scaled to [0, 1] (:func:`normalise_maps`). Every Grad-CAM
    map of the series (:class:`GradCAM`, its shift averaging, :func:`utils.explain.maps.candidate_maps`) comes from
    here."""
    alphas = channel_weights(act, grad, weighting)  # (N, K); Grad-CAM: mean of the gradients
    weighted = torch.einsum("nk,nkhw->nhw", alphas, act)
    raw = F.relu(weighted)
    up = upsample_cells(raw, size, cells)
    if shifts is not None and len(shifts) > 1:
        up = average_unshifted(up, shifts, border, layout)
    return CamSteps(alphas, weighted, raw, normalise_maps(up))


class GradCAM:
    """Grad-CAM on one layer of a classifier; use as a context manager so hooks never leak.

    >>> with GradCAM(model, "layer4") as cam:
    ...     maps, logits = cam(x)          # maps: np.float32 (N, H, W) in [0, 1]; logits: tensor (N, C)

    After a call, these attributes hold the steps of the method for the batch (NumPy, float32, CPU; computed by
    :func:`cam_steps`): ``activations`` (N, K, h, w), ``gradients`` (N, K, h, w), ``alphas`` (N, K),
    ``weighted`` (N, h, w) = sum_k alpha_k A^k before the ReLU, ``raw_maps`` (N, h, w) after the ReLU
    (low resolution, un-normalised), ``maps`` (N, H, W), ``logits`` (tensor) and ``targets`` (N,).

    ``weighting`` chooses the channel weights (:data:`WEIGHTINGS`; default plain Grad-CAM). ``cells``: where the
    upsampling draws the layer's cells (:func:`upsample_cells`; default None = the library's convention, e.g.
    ``cells=receptive_field_geometry(model, "layer3")`` for receptive-field centres). ``reshape`` makes a
    layer whose output is not a (N, K, h, w) feature map readable: it maps the layer's output (and, identically,
    its gradient) to one — for a Vision Transformer, tokens (N, 1 + h·w, C) to (N, C, h, w) without the [CLS]
    token (:func:`utils.train.vit.tokens_to_grid`; the pytorch-grad-cam convention).
    """

    def __init__(self, model: nn.Module, target_layer: str | nn.Module = "layer4",
                 weighting: str = "gradcam", reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 cells: CellGeometry | None = None) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}: choose one of {', '.join(WEIGHTINGS)}")
        self.model = model
        self.weighting = weighting
        self.cells = cells
        self.reshape = reshape
        self.layer = resolve_layer(model, target_layer)
        self._recording = False
        self._acts: list[torch.Tensor] = []
        self._grads: list[torch.Tensor] = []
        self._handles = [self.layer.register_forward_hook(self._forward_hook)]
        self.activations: np.ndarray | None = None
        self.gradients: np.ndarray | None = None
        self.alphas: np.ndarray | None = None
        self.weighted: np.ndarray | None = None
        self.raw_maps: np.ndarray | None = None
        self.maps: np.ndarray | None = None
        self.logits: torch.Tensor | None = None
        self.targets: np.ndarray | None = None

    # ------------------------------------------------------------------ hooks
    def _forward_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not self._recording:
            return None  # the model is used normally between CAM calls
        if not isinstance(output, torch.Tensor) or (output.ndim != 4 and self.reshape is None):
            what = f"shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"Grad-CAM needs a convolutional layer with (N, K, h, w) output (or a reshape); got {what}")
        if self._acts:
            raise RuntimeError("the target layer ran twice in one forward pass: choose a module used once")
        act = output.detach().requires_grad_(True)  # a new leaf: gradients exist even for a frozen model
        act.register_hook(self._grads.append)  # tensor hook: receives d score / d act in the backward
        self._acts.append(act)
        # The rest of the forward runs on a copy: later in-place ops (a ReLU(inplace=True), a residual
        # `out += identity`) may change it, but not the recorded leaf; gradients flow back unchanged.
        return act.clone()

    def release(self) -> None:
        """Remove the hooks (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._acts.clear()
        self._grads.clear()

    def __enter__(self) -> GradCAM:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()  # returns None: exceptions propagate

    # ------------------------------------------------------------------ the method
    def _targets(self, targets: Targets, logits: torch.Tensor) -> torch.Tensor:
        n, n_classes = logits.shape
        if callable(targets):  # computed from this pass's logits (e.g. one class for all shifted copies)
            targets = targets(logits.detach())
        if targets is None:
            t = logits.argmax(dim=1)
        elif isinstance(targets, (int, np.integer)):
            t = torch.full((n,), int(targets), dtype=torch.long, device=logits.device)
        else:
            t = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=logits.device).flatten()
            if t.numel() != n:
                raise ValueError(f"got {t.numel()} targets for {n} images")
        if t.numel() and (t.min() < 0 or t.max() >= n_classes):
            raise ValueError(f"targets must be class indices in [0, {n_classes - 1}]")
        return t

    def __call__(self, x: torch.Tensor, targets: Targets = None
                 ) -> tuple[np.ndarray, torch.Tensor]:
        """Maps for a batch ``x`` (N, C, H, W). ``targets``: None = predicted class, an int, N ints, or a
        callable mapping this pass's logits (N, C) to one of those.

        Returns ``(maps, logits)``: NumPy float32 (N, H, W) in [0, 1] and the detached logits of the
        single forward pass (so callers get probabilities without a second pass).
        """
        return self._run(x, targets)

    def _run(self, x: torch.Tensor, targets: Targets, shifts: Sequence[tuple[int, int]] | None = None,
             border: str | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """One forward + backward over ``x``; maps by :func:`cam_steps` (averaged over ``shifts`` when given)."""
        if not self._handles:
            raise RuntimeError("this GradCAM was released; create a new one")
        if x.ndim != 4:
            raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
        p = next(self.model.parameters(), None)
        device = p.device if p is not None else x.device
        self._acts.clear()
        self._grads.clear()
        try:
            with torch.inference_mode(False), torch.enable_grad(), eval_mode(self.model):
                x = x.to(device).detach().clone()  # clone: a normal tensor even if made under inference_mode
                self._recording = True
                try:
                    logits = self.model(x)
                finally:
                    self._recording = False
                if not self._acts:
                    raise RuntimeError("the target layer did not run in the forward pass")
                act = self._acts[0]
                t = self._targets(targets, logits)
                score = logits.gather(1, t[:, None]).sum()  # images are independent in eval mode
                # fires the tensor hook; writes no parameter .grad. An unused layer gets no gradient: zeros.
                torch.autograd.grad(score, act, allow_unused=True)
                grad = self._grads[0] if self._grads else torch.zeros_like(act)
                if self.reshape is not None:  # e.g. ViT tokens -> (N, C, h, w), the same map for both
                    act, grad = self.reshape(act.detach()), self.reshape(grad)
        finally:
            self._acts.clear()  # no graph kept alive between calls, even after an error
            self._grads.clear()
        with torch.no_grad():
            steps = cam_steps(act, grad, self.weighting, x.shape[-2:], shifts, border, cells=self.cells)

        def as_np(t_: torch.Tensor) -> np.ndarray:
            return t_.detach().float().cpu().numpy()

        maps_np = as_np(steps.maps)
        self.activations, self.gradients, self.alphas = as_np(act), as_np(grad), as_np(steps.alphas)
        self.weighted, self.raw_maps, self.maps = as_np(steps.weighted), as_np(steps.raw), maps_np
        self.logits, self.targets = logits.detach(), t.cpu().numpy()
        return maps_np, logits.detach()

    def shift_averaged(self, x: torch.Tensor, targets: Targets = None,
                       shifts: Sequence[tuple[int, int]] | None = None,
                       border: str | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """Shift-averaged maps for ``x`` (N, C, H, W): see :func:`shift_averaged_gradcam`.

        ONE forward and ONE backward pass over the S×N stacked shifted copies. Afterwards the recorded
        attributes (``activations``, ``raw_maps``…) hold all S×N copies, shift-major (copy s of image n
        at s×N + n; copy 0 is the unshifted one); ``maps`` holds the N averaged maps. With
        ``border="complete"`` the copies are larger than the image (:func:`shift_images`), so the returned logits
        (and the default targets) come from one extra forward pass of the images themselves (no backward).
        """
        shifts = _check_shifts(shifts, x.shape[-2:])
        border = _check_border(border)
        n, s = len(x), len(shifts)
        plain: torch.Tensor | None = None
        if border == "complete":
            p = next(self.model.parameters(), None)
            with torch.no_grad(), eval_mode(self.model):
                plain = self.model(x.to(p.device if p is not None else x.device)).detach()
            if targets is None:
                targets = plain.argmax(dim=1).cpu().numpy()
        if targets is None:  # the unshifted copy's predicted class, for all of its copies
            def t(logits: torch.Tensor) -> torch.Tensor:  # the unshifted copy's class, for all its copies
                return logits[:n].argmax(dim=1).repeat(s)
            tt: Targets = t
        elif isinstance(targets, (int, np.integer)):
            tt = int(targets)
        else:
            tt = np.tile(np.asarray(targets, dtype=np.int64).ravel(), s)
        maps, logits = self._run(shift_images(x, shifts, border), tt, shifts, border)
        return maps, (logits[:n] if plain is None else plain)


def gradcam(model: nn.Module, x: torch.Tensor, layer: str | nn.Module = "layer4",
            targets: Targets = None, weighting: str = "gradcam",
            reshape: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """One-shot Grad-CAM: ``(maps, logits)`` with hooks registered and removed around the call."""
    with GradCAM(model, layer, weighting, reshape) as cam:
        return cam(x, targets)


# ----------------------------------------------------------------------------------- shift averaging
#: How shifted copies treat the image border (:func:`shift_images`, :func:`average_unshifted`):
#:
#: * ``"partial"`` — each copy keeps the image's size: the content moves, the uncovered strip repeats the edge
#:   row/column, and a pixel whose content left the frame in some copies is averaged over the others only;
#: * ``"complete"`` — each copy is the image padded (edge rows/columns repeated) on the sides *complementary* to
#:   its shift, to (H + pad) × (W + pad), ``pad`` = the span of the shifts rounded up to :data:`SHIFT_ALIGN`: every
#:   copy keeps every pixel, so every pixel is averaged over all S copies, and the maps are cropped back to the
#:   image. Needs a model that accepts the larger input (a CNN with global pooling; not a ViT with fixed position
#:   embeddings).
#:
#: Why ``"partial"`` heats the border: near the far edges (the last ``max(shift)`` rows and columns) only the
#: copies whose content did not leave the frame count, and a CNN's map responds to its own frame (zero padding
#: inside the network): the unshifted copies' frame-edge response is averaged with fewer others there than
#: anywhere else — a hot strip as wide as the shift, and a corner square counted by the unshifted copy alone
#: (stair steps). The replicated strips also read as structure in the shifted copies; the coarse grid (16 px
#: cells on ``layer3`` at 128 px) spills that into the image's first rows. A cyclic shift (``roll``) is worse:
#: it pastes the opposite edge next to the border. tests/test_border.py shows both; notebook 05's text says so.
BORDERS: tuple[str, ...] = ("partial", "complete")
#: The border treatment used when a caller does not choose: ``"complete"`` (no border artefact). A ViT keeps
#: ``"partial"`` (:func:`utils.explain.maps.shift_border`): its position embeddings fix the input size.
SHIFT_BORDER = "complete"


def _check_border(border: str | None) -> str:
    border = SHIFT_BORDER if border is None else border
    if border not in BORDERS:
        raise ValueError(f"unknown border {border!r}: choose one of {', '.join(BORDERS)}")
    return border


#: The ``"complete"`` canvas grows by a multiple of this many pixels (the ResNet's total stride): a layer's grid then
#: covers the padded copy exactly as it covers the image (an image of 128 px: layer3's 8 cells of 16 px; a copy of
#: 160 px: 10 cells of 16 px), so the bilinear upsampling puts every cell where the network saw it. A copy of
#: 128 + 8 = 136 px would get 9 cells drawn 15.1 px apart instead of 16 — the map squeezed towards the top-left by up
#: to 7 px (measured on the demo model: its peak moved 4–6 px on average).
SHIFT_ALIGN = 32


def _canvas(shifts: Sequence[tuple[int, int]]) -> tuple[int, int, int, int]:
    """``(top, left, extra rows, extra columns)`` of the ``"complete"`` layout: where copy (0, 0) sits, and how much
    larger than the image every copy is (the shifts' span rounded up to :data:`SHIFT_ALIGN`). The rounding is split
    between the two sides, so the copies sit in the middle of the canvas and every image edge is treated alike."""
    dys, dxs = [int(s[0]) for s in shifts], [int(s[1]) for s in shifts]

    def layout(offsets: list[int]) -> tuple[int, int]:
        span = max(offsets) - min(offsets)
        extra = -(-span // SHIFT_ALIGN) * SHIFT_ALIGN
        return -min(offsets) + (extra - span) // 2, extra

    (top, extra_h), (left, extra_w) = layout(dys), layout(dxs)
    return top, left, extra_h, extra_w


def shifted_size(size: Sequence[int], shifts: Sequence[tuple[int, int]], border: str | None = None
                 ) -> tuple[int, int]:
    """The size of :func:`shift_images`' copies of an image of ``size`` = (H, W): the same for ``"partial"``,
    (H + span of the row shifts, W + span of the column shifts), each span rounded up to :data:`SHIFT_ALIGN`, for
    ``"complete"``."""
    h, w = int(size[0]), int(size[1])
    if _check_border(border) == "partial":
        return h, w
    _, _, extra_h, extra_w = _canvas(shifts)
    return h + extra_h, w + extra_w


def shift_grid(offsets: Sequence[int] = (0, 8)) -> list[tuple[int, int]]:
    """Every ``(dy, dx)`` pair of the per-axis ``offsets`` in pixels, ``(0, 0)`` first.

    ``(0, 8)`` gives 4 shifts (half a cell of an 8×8 ``layer3`` map at 128 px), ``(0, 4, 8, 12)`` 16.
    """
    offs = sorted({int(o) for o in offsets}, key=lambda o: (o != 0, o))
    if not offs or offs[0] != 0:
        raise ValueError(f"offsets must include 0 (the unshifted image), got {list(offsets)}")
    return [(dy, dx) for dy in offs for dx in offs]


def _check_shifts(shifts: Sequence[tuple[int, int]] | None, size: Sequence[int]) -> list[tuple[int, int]]:
    shifts = shift_grid() if shifts is None else [(int(dy), int(dx)) for dy, dx in shifts]
    if (0, 0) not in shifts:
        raise ValueError("shifts must include (0, 0): the unshifted copy gives the logits")
    if len(set(shifts)) != len(shifts):
        raise ValueError(f"repeated shifts in {shifts}")
    h, w = int(size[0]), int(size[1])
    if any(abs(dy) >= h or abs(dx) >= w for dy, dx in shifts):
        raise ValueError(f"shifts {shifts} must be smaller than the image ({h}×{w})")
    shifts.remove((0, 0))
    return [(0, 0), *shifts]


def _index(n: int, d: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device) - d


def shift_images(x: torch.Tensor, shifts: Sequence[tuple[int, int]], border: str | None = None) -> torch.Tensor:
    """Stack of shifted copies (S×N, C, H', W'), shift-major: copy s of image n at index s×N + n.

    Shift ``(dy, dx)`` moves the content ``dy`` pixels down and ``dx`` right. ``border`` (:data:`BORDERS`, default
    :data:`SHIFT_BORDER`): ``"partial"`` keeps the size, ``out[..., i, j] = x[..., clamp(i - dy), clamp(j - dx)]`` —
    the strip uncovered at the border repeats the edge row/column (replicate padding), the content pushed past
    the far edge is lost; ``"complete"`` pads instead of cropping: every copy is (H + pad, W + pad)
    (:func:`shifted_size`) with the whole image at ``(top + dy, left + dx)`` and the edge rows/columns repeated
    around it. Nothing wraps around from the opposite side.
    """
    h, w = x.shape[-2:]
    top, left, extra_h, extra_w = (0, 0, 0, 0) if _check_border(border) == "partial" else _canvas(shifts)
    out = []
    for dy, dx in shifts:
        rows = _index(h + extra_h, top + dy, x.device).clamp(0, h - 1)
        cols = _index(w + extra_w, left + dx, x.device).clamp(0, w - 1)
        out.append(x.index_select(-2, rows).index_select(-1, cols))
    return torch.cat(out)


def average_unshifted(maps: torch.Tensor, shifts: Sequence[tuple[int, int]], border: str | None = None,
                      layout: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
    """Shift maps (S×N, H', W') of :func:`shift_images`' copies back and average them: (N, H, W).

    ``"partial"``: copy ``(dy, dx)`` is read back at ``[i + dy, j + dx]``; a pixel whose content had left the frame
    in a copy is averaged over the other copies only (the unshifted copy always counts), so for a
    model whose maps move exactly with the image, the average equals the unshifted map. ``"complete"``: each copy
    is cropped where :func:`shift_images` put the image and all S crops are averaged — every pixel over every copy.
    ``layout``: the shifts the copies were *made* with, when ``maps`` holds only some of them (default ``shifts``).
    """
    s = len(shifts)
    if maps.ndim != 3 or maps.shape[0] % s:
        raise ValueError(f"maps {tuple(maps.shape)} must be (S×N, H, W) with S = {s} shifts")
    if _check_border(border) == "complete":
        top, left, extra_h, extra_w = _canvas(shifts if layout is None else layout)
        n, (h, w) = maps.shape[0] // s, (maps.shape[-2] - extra_h, maps.shape[-1] - extra_w)
        crops = [maps[k * n:(k + 1) * n, top + dy:top + dy + h, left + dx:left + dx + w]
                 for k, (dy, dx) in enumerate(shifts)]
        return torch.stack(crops).mean(dim=0)
    n, (h, w) = maps.shape[0] // s, maps.shape[-2:]
    total = torch.zeros((n, h, w), dtype=maps.dtype, device=maps.device)
    count = torch.zeros((1, h, w), dtype=maps.dtype, device=maps.device)
    for k, (dy, dx) in enumerate(shifts):
        rows, cols = _index(h, -dy, maps.device), _index(w, -dx, maps.device)  # i + dy, j + dx
        inside = (((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None]).to(maps.dtype)
        back = maps[k * n:(k + 1) * n].index_select(-2, rows.clamp(0, h - 1)).index_select(-1, cols.clamp(0, w - 1))
        total += back * inside
        count += inside
    return total / count


def shift_averaged_gradcam(model: nn.Module, x: torch.Tensor, layer: str | nn.Module = "layer3",
                           targets: Targets = None,
                           shifts: Sequence[tuple[int, int]] | None = None,
                           weighting: str = "gradcam", border: str | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """Grad-CAM averaged over small shifts of the input: a finer map from a coarse layer.

    A ``layer3`` map of a 128 px input is an 8×8 grid; upsampled, its maximum always sits on a cell
    centre, 16 px apart. Each copy of the image, shifted by ``(dy, dx)`` pixels (:func:`shift_images`,
    replicate padding), puts the grid at another phase; its map (ReLU, upsampled, *before* scaling) is
    shifted back (:func:`average_unshifted`), the maps are averaged and the mean is scaled to [0, 1].
    A test-time-augmentation smoothing in the spirit of Morbidelli et al. (2020), "Augmented Grad-CAM".

    ``shifts``: ``(dy, dx)`` pairs including ``(0, 0)`` (default :func:`shift_grid` ``((0, 8))``).
    ``targets`` None = the unshifted copy's predicted class, used for all its copies. ONE batched
    forward and backward pass over the S×N copies. Returns ``(maps (N, H, W) in [0, 1], logits of the
    unshifted copies (N, C))``. ``border`` (:data:`BORDERS`, default :data:`SHIFT_BORDER`): ``"complete"`` pads
    every copy so that every pixel is averaged over all copies (no hot strips or stair steps at the border).
    """
    with GradCAM(model, layer, weighting) as cam:
        return cam.shift_averaged(x, targets, shifts, border)


# ---------------------------------------------------------------------------------------- overlay
def gray_to_float(image: np.ndarray) -> np.ndarray:
    """A grayscale image as float32 in [0, 1]: uint8 is divided by 255, uint16 by 65535, floats are checked."""
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if np.issubdtype(a.dtype, np.floating):
        _check_unit(a, "image")
        return a.astype(np.float32)
    raise TypeError(f"unsupported image dtype {a.dtype}: pass uint8, uint16 or float in [0, 1]")


def _check_unit(a: np.ndarray, name: str) -> None:
    if not np.issubdtype(a.dtype, np.floating) and a.dtype != bool:
        raise ValueError(f"{name} must be float in [0, 1], got dtype {a.dtype} (see gray_to_float)")
    if a.size and not np.all((a >= 0) & (a <= 1)):  # also rejects NaN
        got = "NaN" if np.isnan(a).any() else f"min {a.min():.3g}, max {a.max():.3g}"
        raise ValueError(f"{name} values must lie in [0, 1] (got {got})")


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """Blend a heat-map over an X-ray: ``(1 - alpha) * gray + alpha * cmap(cam)``, float RGB (H, W, 3) in [0, 1].

    ``gray``: float (H, W) or (H, W, 3) in [0, 1] (convert uint8 with :func:`gray_to_float`);
    ``cam``: float (H, W) in [0, 1]. Colours come from a matplotlib colormap, in RGB order (with
    ``"jet"``, hot = red, cold = blue).
    """
    import matplotlib

    gray, cam = np.asarray(gray), np.asarray(cam)
    _check_unit(gray, "gray")
    _check_unit(cam, "cam")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    rgb_ok = gray.ndim == 2 or (gray.ndim == 3 and gray.shape[2] == 3)
    if cam.ndim != 2 or gray.shape[:2] != cam.shape or not rgb_ok:
        raise ValueError(f"shapes do not match: gray {gray.shape} (H, W)[, 3], cam {cam.shape} (H, W)")
    rgb = gray[..., None].repeat(3, axis=2) if gray.ndim == 2 else gray
    heat = matplotlib.colormaps[cmap](cam.astype(np.float64))[..., :3]
    return np.clip((1 - alpha) * rgb + alpha * heat, 0.0, 1.0).astype(np.float32)
