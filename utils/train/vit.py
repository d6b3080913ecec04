"""A small Vision Transformer beside the ResNet-18 (notebook 09): ViT-Tiny, patch 16, built with ``timm``.

The shape is DeiT-Tiny / ViT-Tiny (192-dim tokens, 12 blocks, 3 heads, 5.5 M parameters): the image is cut into
16 × 16-pixel patches (an 8 × 8 grid at the demo's 128 px, 14 × 14 at 224 px), each patch becomes a token, and a
learned ``[CLS]`` token gathers what the head classifies. Every block lets every token attend to every other —
the "global context" a ViT is said to bring.

Weights, as for the ResNet: ``"phantom"`` (``model/phantom_vit_tiny_pretrained.pt``, pretrained on phantoms with
labels only by ``scripts/pretrain_phantom_backbone.py --arch vit_tiny``), ``"imagenet"`` (timm's ImageNet
weights when online; offline a one-line message and random initialisation), ``"none"`` or a checkpoint path.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.paths import shipped
from utils.train.model import fetch_state

TIMM_NAME = "vit_tiny_patch16_224"
#: Blocks of :data:`TIMM_NAME` (the Grad-CAM layer of :mod:`utils.explain.vit` is named after the last one).
DEPTH = 12
IMAGENET_TAG = "augreg_in21k_ft_in1k"
PATCH = 16


def _vit(num_classes: int, image_size: int) -> Any:
    import timm

    if image_size % PATCH:
        raise UserError(f"IMAGE_SIZE={image_size} is not a multiple of the ViT's patch size {PATCH}: "
                        f"choose e.g. {image_size // PATCH * PATCH or PATCH} or {(image_size // PATCH + 1) * PATCH}.")
    return timm.create_model(TIMM_NAME, pretrained=False, num_classes=num_classes, img_size=image_size)


def _imagenet_state(image_size: int) -> dict[str, torch.Tensor] | None:
    """timm's ImageNet ViT-Tiny weights (position embeddings resized to ``image_size``) from the Hugging Face cache,
    or downloaded when online; None, with one line, when neither works."""
    import timm

    kw: dict[str, Any] = {}
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(f"timm/{TIMM_NAME}.{IMAGENET_TAG}", "model.safetensors")
        if isinstance(cached, str):
            kw["pretrained_cfg_overlay"] = {"file": cached}
    except ImportError:
        pass
    return fetch_state("ImageNet ViT weights", "Hugging Face cache", bool(kw), "huggingface.co",
                       lambda: timm.create_model(f"{TIMM_NAME}.{IMAGENET_TAG}", pretrained=True, num_classes=0,
                                                 img_size=image_size, **kw).state_dict())


def _resized_pos_embed(pos: torch.Tensor, model: nn.Module, weights: str) -> tuple[torch.Tensor, str]:
    """Position embeddings of weights trained at another image size, resampled (bicubic, [CLS] kept) to this
    model's token grid — what timm does for ImageNet weights — and a phrase saying so. A grid that is not
    square, or embeddings of another width, are refused with one line."""
    from timm.layers import resample_abs_pos_embed

    target: torch.Tensor = model.pos_embed  # type: ignore[assignment]
    old_n, new_n = pos.shape[1] - 1, target.shape[1] - 1
    old_side, new_side = math.isqrt(old_n), math.isqrt(new_n)
    if pos.shape[-1] != target.shape[-1] or old_side ** 2 != old_n or new_side ** 2 != new_n:
        raise UserError(f"ViT weights {weights!r} do not fit this model (position embedding {tuple(pos.shape)}, "
                        f"this model {tuple(target.shape)}): use weights of a ViT-Tiny/16.")
    out = resample_abs_pos_embed(pos, [new_side, new_side], [old_side, old_side], num_prefix_tokens=1)
    return out, (f"position embeddings resampled from a {old_side}x{old_side} to a {new_side}x{new_side} token grid "
                 f"(trained at {old_side * PATCH} px, this run {new_side * PATCH} px)")


def build_vit(weights: str = "none", num_classes: int = 2, image_size: int = 128, seed: int | None = None
              ) -> tuple[nn.Module, str]:
    """ViT-Tiny with a fresh ``num_classes`` head and the requested weights; returns ``(model, description)``."""
    if seed is not None:
        torch.manual_seed(seed)
    model = _vit(num_classes, image_size)
    if weights == "none":
        return model, "random initialisation"
    if weights == "imagenet":
        state = _imagenet_state(image_size)
        if state is None:
            return model, "random initialisation (ImageNet weights unavailable offline)"
        desc = f"ImageNet (timm {TIMM_NAME}.{IMAGENET_TAG})"
    else:
        path = shipped("vit_backbone") if weights == "phantom" else Path(weights)
        if not path.exists():
            raise UserError(f"ViT weights not found: {path}" + (" (shipped with the repository: git checkout -- "
                            "model/phantom_vit_tiny_pretrained.pt)" if weights == "phantom" else "") + ".")
        state = load_checkpoint(path, require_meta=False, allow_state_dict=True)["model"]
        desc = f"phantom-pretrained ViT ({path.name})" if weights == "phantom" else f"checkpoint {path}"
    backbone = {k: v.float() for k, v in state.items() if not k.startswith("head.")}
    if "pos_embed" in backbone and backbone["pos_embed"].shape != model.pos_embed.shape:
        backbone["pos_embed"], resampled = _resized_pos_embed(backbone["pos_embed"], model, weights)
        print(f"ViT weights {weights!r}: {resampled}.")
        desc += f"; {resampled}"
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise UserError(f"weights {weights!r} do not fit a ViT-Tiny (unexpected: {unexpected[:3]}, missing: "
                        f"{[k for k in missing if not k.startswith('head.')][:3]}).")
    return model, desc


ARCH = "vit_tiny"  # the architecture name in configs and checkpoint metadata


def is_vit(model_or_meta: nn.Module | Any) -> bool:
    """Whether a model is a timm Vision Transformer (token blocks, a patch embedding), or checkpoint metadata
    (a mapping) describes one."""
    if isinstance(model_or_meta, nn.Module):
        return hasattr(model_or_meta, "blocks") and hasattr(model_or_meta, "patch_embed")
    return hasattr(model_or_meta, "get") and model_or_meta.get("arch") == ARCH


def vit_layer_groups(model: Any) -> dict[str, list[nn.Parameter]]:
    """Parameters input to output, in the ResNet's five-plus-head shape so the same layer-wise learning rates
    apply: ``stem`` (patch embedding, [CLS], position embedding), ``layer1``…``layer4`` (blocks 0–2, 3–5, 6–8,
    9–11), ``fc`` (final norm and head)."""
    n = len(model.blocks)
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in ("stem", "layer1", "layer2", "layer3", "layer4", "fc")}
    for name, p in model.named_parameters():
        if name.startswith("blocks."):
            k = int(name.split(".")[1])
            groups[f"layer{min(4, 1 + k * 4 // n)}"].append(p)
        elif name.startswith(("norm.", "fc_norm.", "head.")):
            groups["fc"].append(p)
        else:
            groups["stem"].append(p)
    return groups


def token_grid(model: Any) -> tuple[int, int]:
    """The patch grid (rows, columns) of a ViT."""
    rows, cols = model.patch_embed.grid_size
    return int(rows), int(cols)


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int], prefix: int = 1) -> torch.Tensor:
    """``(N, prefix + h·w, C)`` tokens → ``(N, C, h, w)``: drop the [CLS] (prefix) tokens, lay the patch tokens
    out on their grid — the *reshape transform* that lets a CNN method (Grad-CAM) read a ViT layer."""
    n, t, c = tokens.shape
    h, w = grid
    if t - prefix != h * w:
        raise ValueError(f"{t} tokens do not fit {prefix} prefix token(s) + a {h}x{w} grid")
    return tokens[:, prefix:, :].reshape(n, h, w, c).permute(0, 3, 1, 2)
