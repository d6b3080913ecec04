"""Augmentation of uint8 image batches on the device they live on (GPU when there is one).

Chest-X-ray-suited: small rotation, scale and shift (patient positioning), brightness and contrast
(exposure). No horizontal flip by default: anatomy is not mirror-symmetric (the heart is on the
patient's left), so a flipped film is not a plausible radiograph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentSpec:
    """Ranges of the random transforms (degrees, relative scale, fraction of the image)."""

    rotation: float = 7.0
    scale: tuple[float, float] = (0.92, 1.08)
    shift: float = 0.06
    brightness: float = 0.08
    contrast: tuple[float, float] = (0.85, 1.15)
    hflip: bool = False


def _draw(n: int, gen: torch.Generator, spec: AugmentSpec) -> dict[str, torch.Tensor]:
    """Random parameters for ``n`` images, drawn from a CPU generator (reproducible on any device)."""
    u = lambda lo, hi: torch.rand(n, generator=gen) * (hi - lo) + lo  # noqa: E731
    ang = u(-spec.rotation, spec.rotation) * math.pi / 180
    scale = u(*spec.scale)
    tx, ty = u(-spec.shift, spec.shift) * 2, u(-spec.shift, spec.shift) * 2
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if spec.hflip else torch.ones(n)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    return {"theta": theta, "bright": u(-spec.brightness, spec.brightness), "contrast": u(*spec.contrast)}


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment(images: torch.Tensor, gen: torch.Generator, spec: AugmentSpec | None = None) -> torch.Tensor:
    """uint8 ``(N,1,S,S)`` (any device) → augmented float ``(N,1,S,S)`` in [0, 1] on the same device."""
    return augment_pair(images, None, gen, spec)[0]


def augment_pair(images: torch.Tensor, masks: torch.Tensor | None, gen: torch.Generator,
                 spec: AugmentSpec | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`augment`, moving ``masks`` (N,1,S,S) with the same geometry (returned as float in [0, 1])."""
    spec = spec or AugmentSpec()
    p = _draw(images.shape[0], gen, spec)
    x = _warp(images.float() / 255.0, p["theta"])
    n = x.shape[0]
    mean = x.mean(dim=(2, 3), keepdim=True)
    contrast = p["contrast"].view(n, 1, 1, 1).to(x.device)
    x = ((x - mean) * contrast + mean + p["bright"].view(n, 1, 1, 1).to(x.device)).clamp_(0, 1)
    return x, None if masks is None else _warp(masks.float(), p["theta"])
