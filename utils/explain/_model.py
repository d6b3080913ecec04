"""Small helpers the checks share: the model's device, fixed targets and a layer's dotted name."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from utils.explain.gradcam import Targets, eval_mode, resolve_layer


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def fixed_targets(model: nn.Module, x: torch.Tensor, targets: Targets) -> np.ndarray:
    """Targets as N ints; None = the model's predicted class (one inference pass)."""
    if targets is None:
        with torch.inference_mode(), eval_mode(model):
            return model(x.to(model_device(model))).argmax(1).cpu().numpy()
    if callable(targets):
        raise TypeError("fixed targets are class indices (an int, N ints or None), not a callable")
    return np.broadcast_to(np.asarray(targets, dtype=np.int64), (len(x),)).copy()


def layer_name(model: nn.Module, layer: str | nn.Module) -> str:
    """The dotted name of ``layer`` in ``model`` (so the same layer can be found in a deep copy)."""
    if isinstance(layer, str):
        resolve_layer(model, layer)
        return layer
    for name, m in model.named_modules():
        if m is layer:
            return name
    raise ValueError("the target layer is not a submodule of the model")
