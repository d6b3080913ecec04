"""The network: torchvision ResNet-18 with a 2-class head, its weights, freezing and inference helpers."""
from __future__ import annotations

import os
import re
import socket
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision import models

from utils.checkpoint import load_checkpoint
from utils.config import CLASSES, IMAGENET_MEAN, IMAGENET_STD
from utils.errors import UserError
from utils.machine import is_online
from utils.paths import shipped

WEIGHT_CHOICES = ("imagenet", "phantom", "none")
#: The architectures of the series: the ResNet-18 of notebooks 02–08 and the ViT-Tiny of notebook 09.
ARCHS = ("resnet18", "vit_tiny")
ARCH_NAMES = {"resnet18": "ResNet-18", "vit_tiny": "ViT-Tiny"}
#: Layer groups from input to output (used for freezing and discriminative learning rates).
LAYER_GROUPS = ("stem", "layer1", "layer2", "layer3", "layer4", "fc")


def _resnet18(num_classes: int) -> nn.Module:
    model = models.resnet18(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def fetch_state(what: str, cache: str, cached: bool, host: str,
                download: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor] | None:
    """Pretrained weights (``what``, e.g. "ImageNet weights") from a cache, or downloaded when ``host`` answers;
    ``None``, with one line saying so, when neither works — the run goes on from random initialisation. The
    download gets a 10 s socket timeout: a slow network fails fast, never hangs. Used for the ResNet's and the
    ViT's ImageNet weights."""
    if not cached and not is_online(host):
        print(f"{what} unavailable (offline, not in the {cache}); continuing from random initialisation.")
        return None
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        return download()
    except Exception as exc:
        print(f"{what} unavailable ({type(exc).__name__}: offline?); continuing from random initialisation.")
        return None
    finally:
        socket.setdefaulttimeout(old)


def _imagenet_state() -> dict[str, torch.Tensor] | None:
    """torchvision's ImageNet ResNet-18 weights (:func:`fetch_state`)."""
    weights = models.ResNet18_Weights.IMAGENET1K_V1
    cached = (Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name).exists()
    return fetch_state("ImageNet weights", "torch cache", cached, "download.pytorch.org",
                       lambda: weights.get_state_dict(progress=False))


def build_model(weights: str = "none", num_classes: int = len(CLASSES), seed: int | None = None,
                arch: str = "resnet18", image_size: int = 128) -> tuple[nn.Module, str]:
    """ResNet-18 (or, ``arch="vit_tiny"``, the ViT of :mod:`utils.train.vit`, built for ``image_size``) with a
    fresh ``num_classes`` head and the requested backbone weights.

    ``weights``: ``"imagenet"`` (torchvision's IMAGENET1K_V1, cache or download; falls back to random
    initialisation with a one-line message), ``"phantom"`` (the shipped phantom-pretrained backbone,
    the offline stand-in for ImageNet), ``"none"`` (random) or a path to a checkpoint/state dict.
    Returns the model and a description of the weights actually used.
    """
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}.")
    if arch == "vit_tiny":
        from utils.train.vit import build_vit

        return build_vit(weights, num_classes, image_size, seed)
    if seed is not None:
        torch.manual_seed(seed)
    model = _resnet18(num_classes)
    if weights == "none":
        return model, "random initialisation"
    if weights == "imagenet":
        state = _imagenet_state()
        if state is None:
            return model, "random initialisation (ImageNet weights unavailable offline)"
        desc = "ImageNet (torchvision IMAGENET1K_V1)"
    else:
        path = shipped("pretrained_backbone") if weights == "phantom" else Path(weights)
        if weights not in WEIGHT_CHOICES and not path.exists():
            raise UserError(f"unknown weights {weights!r}: choose {', '.join(WEIGHT_CHOICES)} or a checkpoint path.")
        if weights == "phantom" and not path.exists():
            raise UserError(f"the shipped phantom-pretrained backbone is missing: {path}; restore it from the "
                            "repository (git checkout -- model/phantom_resnet18_pretrained.pt) or use weights 'none'.")
        ckpt = load_checkpoint(path, require_meta=False, allow_state_dict=True)
        state = ckpt["model"]
        desc = f"phantom-pretrained backbone ({path.name})" if weights == "phantom" else f"checkpoint {path}"
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"{path}: its 'model' entry is not a state dict of tensors.")
    backbone = {k.removeprefix("module."): v.float() for k, v in state.items()
                if not k.removeprefix("module.").startswith("fc.")}
    try:
        missing, unexpected = model.load_state_dict(backbone, strict=False)
    except RuntimeError as exc:  # same names, other shapes (e.g. a ResNet-50)
        bad = re.findall(r"size mismatch for ([\w.]+)", str(exc))
        raise UserError(f"weights {weights!r} do not fit a ResNet-18 backbone (other shapes for {len(bad)} "
                        f"tensor(s), e.g. {', '.join(bad[:3])}).") from None
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise UserError(f"weights {weights!r} do not fit a ResNet-18 backbone "
                        f"(unexpected: {unexpected[:3]}, missing: {[k for k in missing if not k.startswith('fc.')][:3]}).")
    return model, desc


def head_prefix(model: nn.Module) -> str:
    """The parameter-name prefix of the classification head: ``fc.`` (ResNet) or ``head.`` (ViT)."""
    from utils.train.vit import is_vit

    return "head." if is_vit(model) else "fc."


def layer_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters by group, input to output: stem (conv1+bn1), layer1…layer4, fc (for a ViT, the same names
    over its patch embedding, four groups of blocks and its head: :func:`utils.train.vit.vit_layer_groups`)."""
    from utils.train.vit import is_vit, vit_layer_groups

    if is_vit(model):
        return vit_layer_groups(model)
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in LAYER_GROUPS}
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        groups["stem" if top in ("conv1", "bn1") else top].append(p)
    return groups


def freeze_backbone(model: nn.Module) -> None:
    """Phase 1: only the head learns; backbone parameters get no gradient."""
    head = head_prefix(model)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(head)


def unfreeze_all(model: nn.Module) -> None:
    """Phase 2: every parameter learns."""
    for p in model.parameters():
        p.requires_grad = True


def set_backbone_bn_eval(model: nn.Module) -> None:
    """Keep BatchNorm statistics of a frozen backbone fixed (call after ``model.train()``)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in m.parameters()):
            m.eval()


def param_groups(model: nn.Module, lr: float, discriminative: bool = False, decay: float = 0.5,
                 weight_decay: float = 0.0) -> list[dict]:
    """Optimizer groups. ``discriminative``: lr × decay^k for the k-th group below the head.

    With ``decay=0.5`` the head gets ``lr``, layer4 ``lr/2``, layer3 ``lr/4`` … the stem ``lr/32``:
    early, generic features move least. Without it, one learning rate for all (what the reference
    project mislabelled "differential").
    """
    out = []
    for depth, (name, params) in enumerate(reversed(layer_groups(model).items())):
        params = [p for p in params if p.requires_grad]
        if params:
            out.append({"params": params, "lr": lr * (decay ** depth if discriminative else 1.0),
                        "weight_decay": weight_decay, "name": name})
    return out


def preprocess(images: torch.Tensor, mean: Iterable[float] = IMAGENET_MEAN,
               std: Iterable[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 grayscale ``(N,S,S)`` or ``(N,1,S,S)`` (or float in [0,1]) → normalised float ``(N,3,S,S)``."""
    x = images if images.ndim == 4 else images.unsqueeze(1)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    m = torch.as_tensor(list(mean), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(list(std), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """A trained model from a project checkpoint (eval mode) and its metadata."""
    ckpt = load_checkpoint(path, map_location="cpu")
    meta = ckpt["meta"]
    arch = meta.get("arch")
    if arch not in ARCHS:
        raise UserError(f"{path} holds a {arch!r} model; this project expects one of {', '.join(ARCHS)}.")
    if arch == "vit_tiny":
        from utils.train.vit import _vit

        model = _vit(len(meta["classes"]), int(meta["image_size"]))
    else:
        model = _resnet18(len(meta["classes"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:160]
        raise UserError(f"{path}: weights do not match a {ARCH_NAMES[arch]} with {len(meta['classes'])} classes "
                        f"({first}).") from None
    return model.to(device).eval(), meta


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a :class:`UserError`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"unknown device {device!r}: choose auto, cpu or cuda.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto.")
    return torch.device(device)


#: The class whose probability the series reports and thresholds: P(PNEUMONIA) = softmax(logits)[:, PNEUMONIA].
PNEUMONIA = CLASSES.index("PNEUMONIA")


def pneumonia_probability(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """P(PNEUMONIA) of logits ``(N, 2)``: the softmax's PNEUMONIA column, float32 on the CPU (``(0,)`` for none).
    The one place this probability is computed (training, evaluation, maps, INT8, inference)."""
    t = torch.as_tensor(logits).detach()
    if t.numel() == 0:
        return np.zeros(0, np.float32)
    return torch.softmax(t.float(), dim=1)[:, PNEUMONIA].cpu().numpy()


def batched_logits(forward: Callable[[torch.Tensor], Any], images: np.ndarray | torch.Tensor, meta: Mapping[str, Any],
                   batch_size: int = 64, device: str | torch.device | None = None, progress: bool = False
                   ) -> np.ndarray:
    """Logits ``(N, C)`` of uint8 images ``(N,S,S)`` through any ``forward`` (a PyTorch model, the ONNX Runtime INT8
    model…), in batches of ``batch_size``, each preprocessed with ``meta``'s mean/std on ``device`` (default: the
    model's device, else the CPU). The one batched prediction loop of the series."""
    params = next(forward.parameters(), None) if isinstance(forward, nn.Module) else None
    device = torch.device(device) if device else (params.device if params is not None else torch.device("cpu"))
    x_all = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    starts: Iterable[int] = range(0, len(x_all), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="predict", unit="batch", leave=False)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in starts:
            x = preprocess(x_all[i:i + batch_size].to(device), meta["mean"], meta["std"])
            out.append(torch.as_tensor(forward(x)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(meta["classes"])), np.float32)


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray | torch.Tensor, meta: Mapping[str, Any], batch_size: int = 64,
                   device: str | torch.device | None = None, progress: bool = False) -> np.ndarray:
    """Logits ``(N, C)`` for uint8 images ``(N,S,S)`` (:func:`batched_logits`), in eval mode; the model's own
    train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        return batched_logits(model, images, meta, batch_size, device, progress)
    finally:
        model.train(was_training)


def predict_proba(model: nn.Module, images: np.ndarray | torch.Tensor, meta: Mapping[str, Any], batch_size: int = 64,
                  device: str | torch.device | None = None, progress: bool = False) -> np.ndarray:
    """P(PNEUMONIA) for each image (:func:`pneumonia_probability` of :func:`predict_logits`)."""
    return pneumonia_probability(predict_logits(model, images, meta, batch_size, device, progress))


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, then restore the previous setting."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
