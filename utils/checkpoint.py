"""Checkpoints: one dict (weights + metadata [+ training state]), written atomically, loaded safely.

``torch.load(..., weights_only=True)`` refuses arbitrary pickles, so a checkpoint holds only tensors,
numbers, strings, lists and dicts. Writes go to a temporary file in the same folder, then
``os.replace`` — an interrupted save (a Colab disconnect) never leaves a half-written checkpoint.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from utils.config import CLASSES
from utils.errors import UserError
from utils.fileio import atomic_write

FORMAT = "cxr-checkpoint/1"
REQUIRED_META = ("format", "arch", "classes", "image_size", "mean", "std", "threshold")


def make_meta(*, image_size: int, mean, std, threshold: float = 0.5, arch: str = "resnet18",
              classes=CLASSES, **extra: Any) -> dict[str, Any]:
    """Metadata every checkpoint carries (extra keys: profile, data_fingerprint, weights, phase…)."""
    return {"format": FORMAT, "arch": arch, "classes": list(classes), "image_size": int(image_size),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "threshold": float(threshold), **extra}



def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> Path:
    """Write ``ckpt`` atomically (temp file in the same folder, then rename)."""
    return atomic_write(path, lambda fh: torch.save(ckpt, fh))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    require_meta: bool = True, allow_state_dict: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; every user mistake becomes a one-line :class:`UserError`.

    ``allow_state_dict``: also accept a bare ``state_dict`` file (returned as ``{"model": state_dict}``).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path} (notebooks 02-04 train it and choose its threshold, "
                        "or pass --model_path).")
    if path.is_dir():
        raise UserError(f"checkpoint path is a folder, not a file: {path}.")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint is empty (0 bytes): {path}; re-create it with notebooks 02-04.")
    if path.suffix.lower() == ".onnx":
        raise UserError(f"{path} is an ONNX model, not a PyTorch checkpoint: the INT8 model is read with --int8 "
                        "(pneumonia-predict) or utils.deploy.int8.load_int8.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():  # a legacy pickle read of random bytes
            raise UserError(f"cannot read checkpoint {path}: not a PyTorch checkpoint or truncated "
                            f"({type(exc).__name__}).") from None
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f": it holds a {found.group(1)} object" if found else ""
        raise UserError(f"refused to load {path}: not a plain checkpoint of tensors and metadata "
                        f"(weights_only=True rejected it{what}).") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, TypeError,
            AttributeError, IndexError, UnicodeDecodeError) as exc:  # torch's legacy reader on garbage bytes
        raise UserError(f"cannot read checkpoint {path}: not a PyTorch checkpoint or truncated "
                        f"({type(exc).__name__}).") from None
    if (allow_state_dict and isinstance(ckpt, dict) and "model" not in ckpt and ckpt
            and all(isinstance(v, torch.Tensor) for v in ckpt.values())):
        ckpt = {"model": ckpt}
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{path} is not a project checkpoint: expected a dict with 'model' weights and 'meta'.")
    if require_meta:
        meta = ckpt.get("meta")
        missing = [k for k in REQUIRED_META if not isinstance(meta, dict) or k not in meta]
        if missing:
            raise UserError(f"{path} has no usable metadata (missing {', '.join(missing)}); "
                            "save checkpoints with utils.checkpoint.make_meta.")
        problem = meta_problem(dict(meta)) if isinstance(meta, dict) else None
        if problem:
            raise UserError(f"checkpoint {path} has unusable metadata: {problem}; re-create it with notebooks 02-04.")
    return ckpt


def meta_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's required metadata values (None when they are usable)."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v

    size = meta.get("image_size")
    if not (isinstance(size, int) and not isinstance(size, bool) and 16 <= size <= 4096):
        return f"image_size {size!r} is not a whole number of pixels in 16..4096"
    for key in ("mean", "std"):
        v = meta.get(key)
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(number(x) for x in v)):
            return f"{key} {v!r} is not three numbers"
    if any(x <= 0 for x in meta["std"]):
        return f"std {meta['std']!r} has a value <= 0"
    classes = meta.get("classes")
    if not (isinstance(classes, (list, tuple)) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
        return f"classes {classes!r} is not a list of class names"
    t = meta.get("threshold")
    if not (number(t) and 0.0 <= float(t or 0.0) <= 1.0):
        return f"threshold {t!r} is not a probability in [0, 1]"
    return None


def state_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """A short content hash of model weights (names, shapes and values)."""
    h = hashlib.sha1()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def update_meta(path: str | os.PathLike, **changes: Any) -> dict[str, Any]:
    """Merge ``changes`` into a checkpoint's metadata (atomic rewrite); returns the new metadata.

    Notebook 04 records the validation-chosen operating threshold this way, notebook 05 the
    Grad-CAM layer; the inference command reads both.
    """
    ckpt = load_checkpoint(path)
    ckpt["meta"] = {**ckpt["meta"], **changes}
    save_checkpoint(path, ckpt)
    return ckpt["meta"]
