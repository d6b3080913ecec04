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

One forward and one backward per call, in eval mode; the model is handed back exactly as found
(per-module train/eval flags, ``requires_grad`` flags untouched, no hooks left after ``release``).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GradCAM", "gradcam", "eval_mode", "resolve_layer", "normalise_maps", "resize_map",
           "gray_to_float", "overlay"]


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


class GradCAM:
    """Grad-CAM on one layer of a classifier; use as a context manager so hooks never leak.

    >>> with GradCAM(model, "layer4") as cam:
    ...     maps, logits = cam(x)          # maps: np.float32 (N, H, W) in [0, 1]; logits: tensor (N, C)

    After a call, these attributes hold the steps of the method for the batch (NumPy, float32, CPU):
    ``activations`` (N, K, h, w), ``gradients`` (N, K, h, w), ``alphas`` (N, K),
    ``weighted`` (N, h, w) = sum_k alpha_k A^k before the ReLU, ``raw_maps`` (N, h, w) after the ReLU
    (low resolution, un-normalised), ``maps`` (N, H, W), ``logits`` (tensor) and ``targets`` (N,).
    """

    def __init__(self, model: nn.Module, target_layer: str | nn.Module = "layer4") -> None:
        self.model = model
        self.layer = resolve_layer(model, target_layer)
        self._recording = False
        self._acts: list[torch.Tensor] = []
        self._grads: list[torch.Tensor] = []
        self._handles = [self.layer.register_forward_hook(self._forward_hook)]
        self.activations = self.gradients = self.alphas = self.weighted = self.raw_maps = self.maps = None
        self.logits: torch.Tensor | None = None
        self.targets: np.ndarray | None = None

    # ------------------------------------------------------------------ hooks
    def _forward_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not self._recording:
            return None  # the model is used normally between CAM calls
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            what = f"shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"Grad-CAM needs a convolutional layer with (N, K, h, w) output; got {what}")
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
    def _targets(self, targets: int | Sequence[int] | None, logits: torch.Tensor) -> torch.Tensor:
        n, n_classes = logits.shape
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

    def __call__(self, x: torch.Tensor, targets: int | Sequence[int] | None = None
                 ) -> tuple[np.ndarray, torch.Tensor]:
        """Maps for a batch ``x`` (N, C, H, W). ``targets``: None = predicted class, an int, or N ints.

        Returns ``(maps, logits)``: NumPy float32 (N, H, W) in [0, 1] and the detached logits of the
        single forward pass (so callers get probabilities without a second pass).
        """
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
        finally:
            self._acts.clear()  # no graph kept alive between calls, even after an error
            self._grads.clear()
        with torch.no_grad():
            alphas = grad.mean(dim=(2, 3))  # (N, K): global-average-pooled gradients
            weighted = torch.einsum("nk,nkhw->nhw", alphas, act)
            raw = F.relu(weighted)
            up = F.interpolate(raw[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            maps = normalise_maps(up)
        as_np = lambda t_: t_.detach().float().cpu().numpy()  # noqa: E731
        self.activations, self.gradients, self.alphas = as_np(act), as_np(grad), as_np(alphas)
        self.weighted, self.raw_maps, self.maps = as_np(weighted), as_np(raw), as_np(maps)
        self.logits, self.targets = logits.detach(), t.cpu().numpy()
        return self.maps, self.logits


def gradcam(model: nn.Module, x: torch.Tensor, layer: str | nn.Module = "layer4",
            targets: int | Sequence[int] | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """One-shot Grad-CAM: ``(maps, logits)`` with hooks registered and removed around the call."""
    with GradCAM(model, layer) as cam:
        return cam(x, targets)


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
