"""The training engine: one epoch, evaluation, and a resumable two-phase ``fit``.

Data stay uint8 on the device (GPU when there is one) and are augmented there; on CUDA the loop
runs in mixed precision (bf16 where supported, else fp16 with a grad scaler) and ``channels_last``;
on CPU the same code runs without them. Each epoch writes an atomic "last" checkpoint (model,
optimizer, scheduler, RNG state, history) so a re-run resumes; the best epoch by validation AUC
(ties broken by recall) is saved separately and is the one later notebooks load.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.data.augment import AugmentSpec, augment
from utils.fileio import jsonable, write_csv
from utils.train.model import (
    freeze_backbone,
    param_groups,
    pneumonia_probability,
    preprocess,
    set_backbone_bn_eval,
    unfreeze_all,
)

#: The augmentation every training batch gets unless told otherwise (no horizontal flip).
DEFAULT_AUGMENT = AugmentSpec()


@dataclass
class DeviceData:
    """A split's images (uint8, N×1×S×S) and labels, resident on the training device."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_split(cls, split, device: torch.device) -> DeviceData:
        x = torch.from_numpy(np.ascontiguousarray(split.images)).unsqueeze(1)
        return cls(x.to(device), torch.from_numpy(split.labels).to(device))

    def __len__(self) -> int:
        return len(self.labels)


def autocast_for(device: torch.device) -> tuple[Any, torch.dtype | None]:
    """(autocast context, dtype): bf16 on GPUs that support it, fp16 on older GPUs, none on CPU."""
    if device.type != "cuda":
        return nullcontext(), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights ``N / (2 · n_c)``: each class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return torch.tensor(len(labels) / (2 * np.maximum(counts, 1)), dtype=torch.float32)


def train_one_epoch(model: nn.Module, data: DeviceData, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                    meta: dict, batch_size: int, gen: torch.Generator, scaler: torch.amp.GradScaler | None = None,
                    aug: AugmentSpec | None = DEFAULT_AUGMENT, progress: bool = True,
                    on_batch: Callable[[int], Any] | None = None) -> dict[str, float]:
    """One pass over ``data`` in a seeded random order; returns mean loss, seconds and images/s.

    ``progress`` shows a per-batch bar; ``on_batch`` (e.g. an outer bar's ``update``) is called with 1
    after every batch instead, so :func:`fit` can show one bar for the whole phase.
    """
    device = data.images.device
    model.train()
    set_backbone_bn_eval(model)  # a frozen backbone keeps its BatchNorm statistics
    ctx, _ = autocast_for(device)
    order = torch.randperm(len(data), generator=gen)
    # a last batch of one image would break BatchNorm in training mode: fold it into the previous batch
    starts = [i for i in range(0, len(order), batch_size) if not (i and len(order) - i == 1)]
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="train", unit="batch", leave=False)
    total, seen, t0 = 0.0, 0, time.perf_counter()
    for i in starts:
        idx = order[i:i + batch_size + (1 if len(order) - i == batch_size + 1 else 0)].to(device)
        x = augment(data.images[idx], gen, aug) if aug is not None else data.images[idx]
        x = preprocess(x, meta["mean"], meta["std"])
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        y = data.labels[idx]
        with ctx:
            loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += loss.detach().float().item() * len(idx)
        seen += len(idx)
        if on_batch is not None:
            on_batch(1)
    secs = time.perf_counter() - t0
    return {"train_loss": total / max(seen, 1), "seconds": secs, "images_per_s": seen / max(secs, 1e-9)}


@torch.inference_mode()
def evaluate(model: nn.Module, data: DeviceData, meta: dict, batch_size: int = 128,
             loss_fn: nn.Module | None = None) -> dict[str, Any]:
    """Loss, ROC AUC and recall/specificity at 0.5 on ``data``; ``probs`` holds P(PNEUMONIA)."""
    device = data.images.device
    was_training = model.training
    model.eval()
    ctx, _ = autocast_for(device)
    logits = []
    for i in range(0, len(data), batch_size):
        x = preprocess(data.images[i:i + batch_size], meta["mean"], meta["std"])
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with ctx:
            logits.append(model(x).float())
    model.train(was_training)
    logits_t = torch.cat(logits)
    y = data.labels
    probs = pneumonia_probability(logits_t)
    yn = y.cpu().numpy()
    pred = probs >= 0.5
    out = {"probs": probs,
           "val_loss": float((loss_fn or nn.CrossEntropyLoss())(logits_t, y).item()),
           "val_auc": float(roc_auc_score(yn, probs)) if len(np.unique(yn)) == 2 else float("nan"),
           "val_recall": float(pred[yn == 1].mean()) if (yn == 1).any() else float("nan"),
           "val_specificity": float((~pred[yn == 0]).mean()) if (yn == 0).any() else float("nan")}
    return out


def _score(row: dict) -> tuple[float, float]:
    """Model-selection key: validation AUC, ties broken by recall (recall-first)."""
    auc, rec = row["val_auc"], row["val_recall"]
    nan = lambda v: v is None or v != v  # noqa: E731 - a one-class validation set has no AUC
    return (-1.0 if nan(auc) else round(auc, 4), -1.0 if nan(rec) else rec)


def setup_phase(model: nn.Module, phase: dict) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Freeze/unfreeze, then Adam over (possibly discriminative) parameter groups and a StepLR."""
    if phase.get("freeze_backbone"):
        freeze_backbone(model)
    else:
        unfreeze_all(model)
    groups = param_groups(model, phase["lr"], phase.get("discriminative", False), phase.get("lr_decay", 0.5),
                          phase.get("weight_decay", 0.0))
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=phase.get("step_size", 10 ** 6),
                                            gamma=phase.get("gamma", 1.0))
    return opt, sched


#: A "last" checkpoint is resumed only when these metadata match (same data, phase and start weights).
RESUME_KEYS = ("data_fingerprint", "phase", "init", "image_size")


@dataclass
class FitResult:
    """What :func:`fit` returns: the per-epoch history and the best epoch's checkpoint."""

    history: pd.DataFrame
    best_epoch: int
    best_path: Path
    resumed_from: int


def fit(model: nn.Module, train: DeviceData, val: DeviceData, phase: dict, meta: dict, last_path: Path,
        best_path: Path, history_csv: Path, restart: bool = False, progress: bool = True,
        train_labels: np.ndarray | None = None) -> FitResult:
    """Run one training phase with per-epoch atomic checkpoints; resume unless ``restart``.

    ``phase``: name, epochs, lr, batch_size, seed, freeze_backbone, discriminative, lr_decay,
    step_size, gamma, weight_decay. ``meta`` goes into every checkpoint (classes, image size,
    normalisation, weights, profile, data fingerprint…). The model must already be on its device.
    """
    device = train.images.device
    opt, sched = setup_phase(model, phase)
    labels = train_labels if train_labels is not None else train.labels.cpu().numpy()
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(labels).to(device))
    _, amp_dtype = autocast_for(device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    gen = torch.Generator().manual_seed(int(phase.get("seed", 0)))
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    history: list[dict] = []
    start, best_key, best_epoch = 1, None, 0
    ck = load_checkpoint(last_path, map_location=device) if last_path.exists() and not restart else None
    if ck is not None and any(ck["meta"].get(k) != meta.get(k) for k in RESUME_KEYS):
        print(f"{last_path.name} is from another run (data, phase or start weights differ): starting over.")
        ck = None
    settings = jsonable({k: v for k, v in phase.items() if k != "epochs"})
    if ck is not None and ck.get("settings", settings) != settings:
        changed = sorted(k for k in set(settings) | set(ck["settings"]) if settings.get(k) != ck["settings"].get(k))
        print(f"{last_path.name} was trained with other settings ({', '.join(changed)} changed): starting over.")
        ck = None
    if ck is not None and not best_path.exists():
        print(f"{best_path.name} is missing next to {last_path.name}: starting over.")
        ck = None
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        gen.set_state(ck["rng"].cpu())  # a CPU generator, whatever map_location put the tensor on
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        history = list(ck["history"])
        start = int(ck["epoch"]) + 1
        best_epoch = int(ck.get("best_epoch", 0))
        if best_epoch:
            best_key = _score(history[best_epoch - 1])
        if progress and start <= phase["epochs"]:
            print(f"resuming {meta.get('phase')} at epoch {start} (checkpoint {last_path.name})")
        elif progress:
            print(f"{meta.get('phase')} already trained: {start - 1} epoch(s) in {last_path.name}, nothing to do "
                  "(restart=True trains again)")
    epochs = range(start, phase["epochs"] + 1)
    Path(history_csv).parent.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress and len(epochs):  # one bar over every batch of the phase: no nested bars in notebooks/logs
        with warnings.catch_warnings():  # without ipywidgets tqdm warns "IProgress not found", then uses a text bar
            warnings.simplefilter("ignore")
            from tqdm.auto import tqdm
        n_batches = -(-len(train) // phase["batch_size"])
        bar = tqdm(total=len(epochs) * n_batches, desc=str(meta.get("phase", "fit")), unit="batch")
    for epoch in epochs:
        lr = opt.param_groups[0]["lr"]
        if bar is not None:
            bar.set_description(f"{meta.get('phase', 'fit')} epoch {epoch}/{phase['epochs']}")
        stats = train_one_epoch(model, train, opt, loss_fn, meta, phase["batch_size"], gen, scaler,
                                AugmentSpec(hflip=bool(phase.get("hflip", False))), progress=False,
                                on_batch=None if bar is None else bar.update)
        ev = evaluate(model, val, meta, loss_fn=loss_fn)
        if bar is not None:
            bar.set_postfix_str(f"val AUC {ev['val_auc']:.3f} recall {ev['val_recall']:.3f}", refresh=False)
        sched.step()
        row = {"phase": meta.get("phase", ""), "epoch": epoch, "lr": lr, **stats,
               **{k: v for k, v in ev.items() if k != "probs"}}
        history.append(row)
        if best_key is None or _score(row) > best_key:
            best_key, best_epoch = _score(row), epoch
            save_checkpoint(best_path, {"model": model.state_dict(),
                                        "meta": {**meta, "epoch": epoch, "val_auc": row["val_auc"],
                                                 "val_recall": row["val_recall"]}})
        save_checkpoint(last_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(), "rng": gen.get_state(), "epoch": epoch,
                                    "history": history, "best_epoch": best_epoch, "meta": meta,
                                    "settings": settings, "scaler": scaler.state_dict() if scaler else {}})
        write_csv(history_csv, pd.DataFrame(history), index=False)
    if bar is not None:
        bar.close()
    if history and not history_csv.exists():
        write_csv(history_csv, pd.DataFrame(history), index=False)
    return FitResult(pd.DataFrame(history), best_epoch, best_path, start - 1)
