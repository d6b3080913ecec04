"""Explaining a Vision Transformer (notebook 09): Grad-CAM through a reshape, and attention rollout.

**Grad-CAM on a ViT** needs a layer whose output is spatial and whose gradient is not zero. A ViT block's output is
tokens (N, 1 + h·w, C); laid out on the patch grid (:func:`utils.train.vit.tokens_to_grid`) they read like a
feature map. Which block? Not the **output of the last block**: the head reads only the [CLS] token from it, so the
patch tokens there never reach the score — their gradient is exactly zero, and so is the map. The pytorch-grad-cam
convention is the **first LayerNorm of the last block** (``blocks[-1].norm1``): its patch tokens still feed the
last attention, through which the [CLS] token reads them, so the gradient says which patches the final decision
drew on (:func:`vit_gradcam_layer`, :data:`VIT_GRADCAM_LAYER`).

**Attention rollout** (Abnar & Zuidema, 2020) ignores the class: it multiplies the attention matrices of all
blocks (averaged over heads, plus the identity for the residual path, rows renormalised) and reads how much the
[CLS] token, through the whole stack, attends to each patch (:func:`attention_rollout`). It shows where the model
*looked*, not what argued for PNEUMONIA.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from utils.explain.gradcam import eval_mode, normalise_maps
from utils.train.vit import DEPTH, is_vit, token_grid, tokens_to_grid


def vit_last_block(model_or_depth: Any) -> str:
    """The name of a ViT's last block (a model, or its number of blocks): its output feeds only the [CLS] token
    to the head, so Grad-CAM on it is all zero."""
    depth = model_or_depth if isinstance(model_or_depth, int) else len(model_or_depth.blocks)
    return f"blocks.{depth - 1}"


def vit_gradcam_layer(model_or_depth: Any) -> str:
    """The Grad-CAM layer of a ViT (a model, or its number of blocks): the first LayerNorm of its last block."""
    return f"{vit_last_block(model_or_depth)}.norm1"


#: The Grad-CAM layer of the series' ViT-Tiny (``blocks.11.norm1``): the one spelling of it.
VIT_GRADCAM_LAYER = vit_gradcam_layer(DEPTH)


def vit_reshape(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reshape transform of ``model``: its tokens → (N, C, h, w) on its patch grid, [CLS] dropped."""
    grid, prefix = token_grid(model), int(getattr(model, "num_prefix_tokens", 1))
    return lambda tokens: tokens_to_grid(tokens, grid, prefix)


def layer_reshape(model: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The reshape transform Grad-CAM needs for ``model``'s layers: :func:`vit_reshape` for a ViT, else None."""
    return vit_reshape(model) if is_vit(model) else None


@torch.no_grad()
def attention_rollout(model: Any, x: torch.Tensor, batch_size: int = 32) -> tuple[np.ndarray, torch.Tensor]:
    """Attention-rollout maps (N, H, W) in [0, 1] and the logits of the same forward pass.

    Each block's attention (softmax output, heads averaged) is mixed with the identity — ``0.5·A + 0.5·I``, the
    residual connection — rows renormalised, and the blocks multiplied in order; the [CLS] row over the patch tokens,
    laid out on the grid and upsampled bilinearly, is the map. The model's fused attention is switched off for the
    pass (so the matrices exist) and restored.
    """
    blocks = list(model.blocks)
    grid, prefix = token_grid(model), int(getattr(model, "num_prefix_tokens", 1))
    dev = next(model.parameters()).device
    maps, logits_all = [], []
    saved = [b.attn.fused_attn for b in blocks]
    store: list[torch.Tensor] = []
    handles = [b.attn.attn_drop.register_forward_hook(lambda m, i, o: store.append(o.detach())) for b in blocks]
    try:
        for b in blocks:
            b.attn.fused_attn = False
        with eval_mode(model):
            for i in range(0, len(x), batch_size):
                store.clear()
                xb = x[i:i + batch_size].to(dev)
                logits_all.append(model(xb).float().cpu())
                n, t = xb.shape[0], store[0].shape[-1]
                roll = torch.eye(t, device=dev).expand(n, t, t)
                for att in store:
                    a = 0.5 * att.mean(dim=1) + 0.5 * torch.eye(t, device=dev)
                    a = a / a.sum(dim=-1, keepdim=True)
                    roll = a @ roll
                cls = roll[:, 0, prefix:].reshape(n, 1, *grid)
                up = F.interpolate(cls, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
                maps.append(normalise_maps(up).cpu().numpy())
    finally:
        for h in handles:
            h.remove()
        for b, flag in zip(blocks, saved):
            b.attn.fused_attn = flag
    if not maps:
        return np.zeros((0, *x.shape[-2:]), np.float32), torch.zeros((0, 0))
    return np.concatenate(maps).astype(np.float32), torch.cat(logits_all)


def rollout_maps(model: Any, meta: dict[str, Any], images: np.ndarray) -> np.ndarray:
    """Attention-rollout maps (N, S, S) of uint8 images, preprocessed with the checkpoint's normalisation."""
    from utils.train.model import preprocess

    x = preprocess(torch.as_tensor(np.asarray(images)), meta["mean"], meta["std"])
    return attention_rollout(model, x)[0]
