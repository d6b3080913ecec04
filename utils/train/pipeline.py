"""The two training phases as one call each (used by notebooks 02 and 03 and from the command line).

    python -m utils.train.pipeline --profile full --data-dir /path/to/chest_xray [--image-size 128] [--weights imagenet]

Phase 1 trains only the new head on a frozen backbone (a warm-up: the random head's large early
gradients never reach the pretrained features); phase 2 unfreezes everything at a low learning rate
with Adam and StepLR, optionally with discriminative (per-layer-group) learning rates.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from utils.artifacts import data_mismatch
from utils.checkpoint import make_meta, state_fingerprint
from utils.cli import Parser, run_main
from utils.config import IMAGENET_MEAN, IMAGENET_STD, PROFILES, SOURCES, Config, get_config
from utils.data import DataBundle, load_data
from utils.errors import UserError
from utils.fileio import write_json
from utils.paths import notebook_path
from utils.train.engine import DeviceData, FitResult, fit
from utils.train.model import build_model, layer_groups, load_model, param_groups, resolve_device


def is_pretrained(weights: str) -> bool:
    """Whether a weights description (:func:`utils.train.model.build_model`'s) means pretrained features."""
    return not weights.startswith("random")


def phase_settings(cfg: Config, name: str, pretrained: bool = True) -> dict[str, Any]:
    """The settings of ``phase1`` / ``phase2``: the profile's, with batch size, seed and freezing filled in.

    Phase 2's ``lr`` is a *fine-tuning* rate (1e-4): right for weights that already know images. When the
    backbone started from random weights (offline, ImageNet unavailable) there is nothing to protect, so
    phase 2 uses the from-scratch rate ``lr_scratch`` (1e-3) instead, with one rate for every layer (layer-wise
    rates exist to keep pretrained early layers; random ones must all learn). ``recipe`` says which, in both
    phases (phase 1: a warm-up of the head on the frozen backbone), and every checkpoint records it.
    """
    settings = {"batch_size": cfg["batch_size"], "seed": cfg["seed"], "freeze_backbone": name == "phase1",
                **cfg[name]}
    if name == "phase1":
        start = "pretrained start" if pretrained else "random start"
        settings["recipe"] = f"warm-up ({start}): head only on the frozen backbone, lr {settings['lr']:g}"
    if name == "phase2":
        if pretrained:
            settings["recipe"] = "fine-tuning (pretrained start): lr {lr:g}, layer-wise".format(**settings)
        else:
            settings.update(lr=settings["lr_scratch"], discriminative=False,
                            recipe="from scratch (random start): lr {lr_scratch:g}, one rate for all layers"
                            .format(**settings))
    return settings


def base_meta(cfg: Config, bundle: DataBundle, weights: str, phase: str, init: str, recipe: str) -> dict[str, Any]:
    """Checkpoint metadata shared by both phases: what the weights were trained on, how they were started
    (``init``: the weights, or the fingerprint of the phase-1 model phase 2 started from) and trained
    (``recipe``, :func:`phase_settings`), and with which knobs."""
    return make_meta(image_size=bundle.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, threshold=0.5,
                     arch=cfg.get("arch", "resnet18"),
                     classes=bundle.classes, profile=cfg.profile, data_fingerprint=bundle.fingerprint,
                     data_source=bundle.source, trained_on=bundle.describe(), weights=weights,
                     pretrained=is_pretrained(weights), phase=phase, init=init, recipe=recipe, run=cfg.knobs)


def _device_data(bundle: DataBundle, device: torch.device) -> tuple[DeviceData, DeviceData]:
    return DeviceData.from_split(bundle["train"], device), DeviceData.from_split(bundle["val"], device)


def run_phase1(cfg: Config, bundle: DataBundle, device: str = "auto", restart: bool = False,
               progress: bool = True, tag: str | None = None) -> tuple[FitResult, str]:
    """Phase 1: frozen backbone, train the head. Returns the fit result and the weights used.

    ``tag`` keeps another run's files apart (``model/<tag>_phase1_best.pt``…): notebook 08's shortcut models,
    notebook 09's ViT (``cfg["arch"]``).
    """
    dev = resolve_device(device)
    model, weights = build_model(cfg["weights"], seed=cfg["seed"], arch=cfg.get("arch", "resnet18"),
                                 image_size=bundle.image_size)
    settings = phase_settings(cfg, "phase1", is_pretrained(weights))
    meta = base_meta(cfg, bundle, weights, "phase1", init=weights, recipe=settings["recipe"])
    train, val = _device_data(bundle, dev)
    res = fit(model.to(dev), train, val, settings, meta,
              cfg.path("phase1_last", tag), cfg.path("phase1_best", tag), cfg.path("history_phase1", tag),
              restart=restart, progress=progress)
    return res, weights


def run_phase2(cfg: Config, bundle: DataBundle, device: str = "auto", restart: bool = False,
               progress: bool = True, tag: str | None = None) -> tuple[FitResult, str]:
    """Phase 2: start from the phase-1 best, unfreeze everything, low LR + StepLR (``tag``: see run_phase1)."""
    dev = resolve_device(device)
    start = cfg.require("phase1_best", tag)
    model, meta1 = load_model(start, dev)
    reason = data_mismatch(meta1, bundle)
    if reason:
        raise UserError(f"{start.name} cannot start phase 2: {reason}; re-run "
                        f"{notebook_path('phase1')} with these settings.")
    settings = phase_settings(cfg, "phase2", bool(meta1.get("pretrained", is_pretrained(meta1["weights"]))))
    meta = base_meta(cfg, bundle, meta1["weights"], "phase2", init=state_fingerprint(model.state_dict()),
                     recipe=settings["recipe"])
    train, val = _device_data(bundle, dev)
    res = fit(model, train, val, settings, meta, cfg.path("phase2_last", tag),
              cfg.path("final_best", tag), cfg.path("history_phase2", tag), restart=restart, progress=progress)
    return res, meta1["weights"]


#: Notebook 03's counter-example keeps its files under this tag (``model/all_at_once_pneumonia_final_best.pt``…).
ALL_AT_ONCE_TAG = "all_at_once"


def all_at_once_settings(cfg: Config, pretrained: bool = True, epochs: int = 1, lr: float | None = None
                         ) -> dict[str, Any]:
    """The recipe phase 2 would be without a warm-up: every layer, including a fresh head, trained at once at one
    rate — by default the head's rate of phase 1 (``cfg["phase1"]["lr"]``), the natural naive choice — for
    ``epochs`` epochs, no layer-wise decay, no schedule."""
    rate = float(lr if lr is not None else cfg["phase1"]["lr"])
    start = "pretrained start" if pretrained else "random start"
    return {**phase_settings(cfg, "phase2", pretrained), "lr": rate, "discriminative": False, "epochs": int(epochs),
            "step_size": 10 ** 6, "gamma": 1.0,
            "recipe": f"all at once ({start}, no warm-up): every layer and a new head, lr {rate:g}, one rate"}


def run_all_at_once(cfg: Config, bundle: DataBundle, epochs: int = 1, lr: float | None = None, device: str = "auto",
                    restart: bool = False, progress: bool = True, tag: str = ALL_AT_ONCE_TAG) -> tuple[FitResult, str]:
    """Train the profile's pretrained model *without* the warm-up (:func:`all_at_once_settings`), under ``tag`` so the
    series' own checkpoints are never touched; resumes like the phases. Returns the fit result and the weights."""
    dev = resolve_device(device)
    model, weights = build_model(cfg["weights"], seed=cfg["seed"], arch=cfg.get("arch", "resnet18"),
                                 image_size=bundle.image_size)
    settings = all_at_once_settings(cfg, is_pretrained(weights), epochs, lr)
    meta = base_meta(cfg, bundle, weights, "all at once", init=weights, recipe=settings["recipe"])
    train, val = _device_data(bundle, dev)
    res = fit(model.to(dev), train, val, settings, meta, cfg.path("phase2_last", tag), cfg.path("final_best", tag),
              cfg.path("history_phase2", tag), restart=restart, progress=progress)
    return res, weights


def lr_table(model: torch.nn.Module, phase: dict[str, Any]) -> pd.DataFrame:
    """Phase-2 learning rate of each layer group, discriminative (``phase["lr_decay"]`` per group below
    the head) next to a single learning rate, with the number of parameters per group (head first)."""
    counts = {name: sum(p.numel() for p in ps) for name, ps in layer_groups(model).items()}
    disc = param_groups(model, phase["lr"], True, phase.get("lr_decay", 0.5))
    one = param_groups(model, phase["lr"], False)
    return pd.DataFrame({"group": [g["name"] for g in disc],
                         "parameters": [counts[g["name"]] for g in disc],
                         "lr discriminative": [g["lr"] for g in disc],
                         "lr single": [g["lr"] for g in one]})


def best_row(res: FitResult) -> dict[str, Any]:
    """The history row of the best epoch."""
    return res.history.iloc[res.best_epoch - 1].to_dict()


def _cli(argv: Sequence[str] | None) -> int:
    p = Parser(prog="python -m utils.train.pipeline",
               description="Run phase 1 and phase 2 of the series from the command line.")
    p.add_argument("--profile", default="demo", choices=list(PROFILES))
    p.add_argument("--data-dir", default="")
    p.add_argument("--source", default=None, choices=list(SOURCES))
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--epochs-phase1", type=int, default=None)
    p.add_argument("--epochs-phase2", type=int, default=None)
    p.add_argument("--weights", default=None, help="imagenet | phantom | none | checkpoint path")
    p.add_argument("--device", default="auto")
    p.add_argument("--restart", action="store_true")
    p.add_argument("--no-test", action="store_true", help="accept a data folder without test/")
    p.add_argument("--report", default="", help="write a JSON summary here")
    a = p.parse_args(argv)
    over: dict[str, Any] = {"weights": a.weights} if a.weights is not None else {}
    cfg = get_config(a.profile, a.data_dir or None, a.source, a.image_size, a.epochs_phase1, a.epochs_phase2,
                     require_test=not a.no_test, **over)
    t0 = time.perf_counter()
    bundle = load_data(cfg)
    t_data = time.perf_counter() - t0
    r1, weights = run_phase1(cfg, bundle, a.device, a.restart)
    t1 = time.perf_counter()
    r2, _ = run_phase2(cfg, bundle, a.device, a.restart)
    t2 = time.perf_counter()
    rep = {"profile": cfg.profile, "run": cfg.knobs, "data": bundle.describe(), "weights": weights,
           "image_size": bundle.image_size, "fingerprint": bundle.fingerprint, "sizes": bundle.summary().to_dict(),
           "device": str(resolve_device(a.device)), "seconds": {"data": round(t_data, 1),
           "phase1": round(t1 - t0 - t_data, 1), "phase2": round(t2 - t1, 1), "total": round(t2 - t0, 1)},
           "phase1_best": best_row(r1), "phase2_best": best_row(r2)}
    for name, r in (("phase1", r1), ("phase2", r2)):
        b = best_row(r)
        print(f"{name}: best epoch {r.best_epoch}/{len(r.history)}  val AUC {b['val_auc']:.4f}  "
              f"recall {b['val_recall']:.3f}  specificity {b['val_specificity']:.3f}  "
              f"{r.history['images_per_s'].mean():.0f} img/s")
    print(f"weights: {weights}; wall {rep['seconds']}")
    if a.report:
        write_json(a.report, rep)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: both phases with the notebooks' knobs, a one-line summary per phase, optional JSON report."""
    return run_main(_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
