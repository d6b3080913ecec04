"""Benchmark of the training loop, the data path, evaluation, CPU inference latency and Grad-CAM.

    python -m benchmarks.bench [--smoke] [--device auto|cpu|cuda] [--size 224] [--batch 64]
                          [--out assets/benchmark.json] [--data-dir DIR] [--compile]

One run writes a JSON report (atomically) and prints a table, for the device it runs on:

1. **train** — images/s of the project's own loop (:func:`utils.train.engine.train_one_epoch` over a
   :class:`~utils.train.engine.DeviceData`: phase 1 with a frozen backbone, phase 2 with every parameter)
   against a *tight reference loop* timed in the same run on the same device (plain torchvision
   ResNet-18, data already on the device as uint8, augmentation drawn and applied on the device,
   bf16 autocast + channels_last on CUDA, plain Adam, no host synchronisation inside the loop).
   ``ratio_phase2`` = project / tight; the target is ≥ 0.70 on CUDA.
2. **data** — decode-once cache (:func:`utils.data.decode_cached`) against re-decoding the JPEGs with
   PIL every epoch (an ImageFolder-style loop: open → RGB → resize → tensor, one process).
3. **eval** — images/s of :func:`utils.train.engine.evaluate`; **latency** — single-image CPU latency of
   predict + Grad-CAM (model loaded once; one forward + one backward) and the wall time of the whole
   ``python -m utils.deploy.predict`` command in a subprocess.
4. **gradcam** — Grad-CAM maps/s at batch 1 and a large batch on the device.
5. **memory** — peak CPU RSS and, on CUDA, peak GPU memory allocated (overall and per section).

CPU latency always runs on the CPU (with every core the process may use); with ``--device auto`` on
a GPU machine the other sections run on CUDA. Only torch, numpy, pandas, scipy, scikit-learn, pillow
and tqdm are needed (matplotlib is optional: the predict command's overlay figure needs it, and the
benchmark then times that command with ``--no-overlay`` and says so). See docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.cli import EXIT_OK, Parser, run_main
from utils.config import IMAGENET_MEAN, IMAGENET_STD
from utils.errors import UserError
from utils.fileio import write_json
from utils.machine import cpu_count
from utils.paths import artifact, project_root

#: Kermany's chest_xray: 5,216 train + 16 val images, pooled; the full profile carves 15 % of them (by
#: patient) for validation. Used for the full-profile wall-time *estimate* only.
KERMANY_TRAIN, FULL_VAL_FRACTION = 5232, 0.15

#: Settings that ``--smoke`` changes (anything given on the command line wins).
SMOKE = {"size": 64, "batch": 8, "iters": 2, "warmup": 1, "repeats": 1, "eval_batch": 8, "eval_iters": 2,
         "data_images": 12, "jpeg_px": 128, "data_epochs": 1, "cam_batch": 4, "cam_reps": 2,
         "latency_runs": 20}
FULL_CUDA = {"size": 224, "batch": 64, "iters": 50, "warmup": 3, "repeats": 3, "eval_batch": 128, "eval_iters": 10,
             "data_images": 256, "jpeg_px": 1024, "data_epochs": 1, "cam_batch": 64, "cam_reps": 10,
             "latency_runs": 30}
#: On a CPU the same sizes, fewer timed iterations (one ResNet-18 step at 224 px, batch 64 takes seconds).
FULL_CPU = {**FULL_CUDA, "iters": 3, "warmup": 1, "repeats": 1, "eval_iters": 2, "cam_reps": 2}


# ---------------------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress(it, enabled: bool, **kw):
    if not enabled:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, leave=False, **kw)


def _r(x: float | None, nd: int = 2) -> float | None:
    """Round for the report; ``None``/NaN stay ``None`` (valid JSON)."""
    if x is None or not math.isfinite(float(x)):
        return None
    return round(float(x), nd)


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _rss_mib() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class _Laps:
    """Wall seconds spent in each section of the run (what a benchmark run costs)."""

    def __init__(self) -> None:
        self.t, self.laps = time.perf_counter(), {}

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name], self.t = now - self.t, now


class _GpuPeaks:
    """Peak GPU memory allocated per section (no-op on CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peaks = device, {}

    @contextmanager
    def section(self, name: str):
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize(self.device)
                peak = torch.cuda.max_memory_allocated(self.device) / 2**20
                self.peaks[name] = max(peak, self.peaks.get(name, 0.0))


def _random_data(n: int, size: int, device: torch.device, seed: int = 0):
    """``DeviceData`` of ``n`` random uint8 images (N,1,S,S) and balanced labels, on ``device``."""
    from utils.train.engine import DeviceData

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 2
    y = y[torch.randperm(n, generator=g)]
    return DeviceData(x.to(device), y.to(device))


# ---------------------------------------------------------------------------------------- 1. train
class _TightLoop:
    """The reference: the least a ResNet-18 training step on uint8 device data can cost here."""

    def __init__(self, device: torch.device, size: int, batch: int, pool, frozen: bool, compile_: bool) -> None:
        from torchvision.models import resnet18

        from utils.data.augment import AugmentSpec
        from utils.train.engine import autocast_for

        torch.manual_seed(0)
        self.device, self.batch, self.size = device, batch, size
        self.images, self.labels = pool.images, pool.labels
        model = resnet18(weights=None, num_classes=2).to(device)
        if frozen:  # phase-1 reference: only the head learns, frozen BatchNorm statistics
            for name, p in model.named_parameters():
                p.requires_grad = name.startswith("fc.")
        model.train()
        if frozen:
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        self.channels_last = device.type == "cuda"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if compile_ else model
        self.opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        self.ctx, dtype = autocast_for(device)
        self.scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        self.loss_fn = nn.CrossEntropyLoss()
        self.spec = AugmentSpec()
        self.gen = torch.Generator(device=device).manual_seed(0)  # drawn on the device: no host sync
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """The same transform family as :func:`utils.augment.augment`, parameters drawn on the device."""
        s, n = self.spec, x.shape[0]
        r = torch.rand(n, 6, device=self.device, generator=self.gen)
        ang = (r[:, 0] * 2 - 1) * (s.rotation * math.pi / 180)
        scale = s.scale[0] + r[:, 1] * (s.scale[1] - s.scale[0])
        tx, ty = (r[:, 2] * 2 - 1) * (2 * s.shift), (r[:, 3] * 2 - 1) * (2 * s.shift)
        cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        x = x.float() / 255.0
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        bright = ((r[:, 4] * 2 - 1) * s.brightness).view(n, 1, 1, 1)
        contrast = (s.contrast[0] + r[:, 5] * (s.contrast[1] - s.contrast[0])).view(n, 1, 1, 1)
        mean = x.mean(dim=(2, 3), keepdim=True)
        return ((x - mean) * contrast + mean + bright).clamp_(0, 1)

    def step(self) -> None:
        idx = torch.randint(0, len(self.labels), (self.batch,), device=self.device, generator=self.gen)
        x = self._augment(self.images[idx])
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.ctx:
            loss = self.loss_fn(self.model(x).float(), self.labels[idx])
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()

    def run(self, warmup: int, iters: int, progress: bool) -> float:
        """Images/s over ``iters`` timed steps after ``warmup`` untimed ones (cuDNN autotuning on)."""
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True  # part of "tight"; the project loop runs with the process's setting
        try:
            for _ in range(warmup):
                self.step()
            _sync(self.device)
            t0 = time.perf_counter()
            for _ in _progress(range(iters), progress, desc="tight loop", unit="batch"):
                self.step()
            _sync(self.device)
            return iters * self.batch / (time.perf_counter() - t0)
        finally:
            torch.backends.cudnn.benchmark = before


def bench_train(device: torch.device, s: dict, compile_: bool, progress: bool, peaks: _GpuPeaks
                ) -> tuple[dict[str, Any], nn.Module, dict]:
    """Tight reference (frozen and full) and the project's loop (phase 1, phase 2); returns the
    report section, the project model (trained a little) and its metadata."""
    from utils.checkpoint import make_meta
    from utils.data.augment import AugmentSpec
    from utils.train.engine import DeviceData, autocast_for, class_weights, setup_phase, train_one_epoch
    from utils.train.model import build_model

    size, batch, iters, warmup = s["size"], s["batch"], s["iters"], s["warmup"]
    pool = _random_data(max(iters, warmup) * batch, size, device)
    timed = DeviceData(pool.images[: iters * batch], pool.labels[: iters * batch])
    warm = DeviceData(pool.images[: warmup * batch], pool.labels[: warmup * batch])
    out: dict[str, Any] = {"iters": iters, "warmup": warmup, "compile": compile_,
                           "amp": str(autocast_for(device)[1]).replace("torch.", "") if device.type == "cuda" else None,
                           "channels_last": device.type == "cuda", "tight_cudnn_benchmark": True,
                           "project_cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}

    tight = _TightLoop(device, size, batch, pool, False, compile_)
    tight_frozen = _TightLoop(device, size, batch, pool, True, compile_)

    model, _ = build_model("none", seed=0)
    model = model.to(device)
    meta = make_meta(image_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, profile="bench", weights="none",
                     phase="bench", data_fingerprint="random", gradcam_layer="layer4")
    _, amp_dtype = autocast_for(device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None  # as utils.train.engine.fit
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # as utils.train.engine.fit
    run_model = torch.compile(model) if compile_ else model
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(timed.labels.cpu().numpy()).to(device))
    phases = {"phase1": {"freeze_backbone": True, "lr": 1e-3}, "phase2": {"lr": 1e-5}}

    def project(phase: str) -> float:
        opt, _ = setup_phase(model, phases[phase])  # on the plain module: parameter names without _orig_mod
        gen = torch.Generator().manual_seed(0)
        train_one_epoch(run_model, warm, opt, loss_fn, meta, batch, gen, scaler, AugmentSpec(), progress=False)
        _sync(device)
        t0 = time.perf_counter()
        train_one_epoch(run_model, timed, opt, loss_fn, meta, batch, gen, scaler, AugmentSpec(), progress=progress)
        _sync(device)
        return len(timed) / (time.perf_counter() - t0)

    # Round-robin repeats, best of each: the first loop in a process pays for clocks, autotuning and the
    # allocator, which would otherwise flatter whichever loop runs second.
    loops: dict[str, Callable[[], float]] = {
        "tight": lambda: tight.run(warmup, iters, progress),
        "tight_phase1": lambda: tight_frozen.run(warmup, iters, progress),
        "project_phase1": lambda: project("phase1"),
        "project_phase2": lambda: project("phase2"),
    }
    runs: dict[str, list[float]] = {k: [] for k in loops}
    for _ in range(s["repeats"]):
        for name, fn in loops.items():
            with peaks.section(f"train_{name}"):
                runs[name].append(fn())
    for name, values in runs.items():
        out[f"{name}_img_s"] = max(values)
        out[f"{name}_img_s_runs"] = values
    out["repeats"] = s["repeats"]
    model.eval()
    out["ratio_phase1"] = out["project_phase1_img_s"] / out["tight_phase1_img_s"]
    out["ratio_phase2"] = out["project_phase2_img_s"] / out["tight_img_s"]
    return out, model, meta


def full_profile_estimate(train: dict, eval_img_s: float | None) -> float | None:
    """Seconds for the full profile's 5 + 10 epochs on Kermany at these speeds (training + one
    validation pass per epoch; no decode, checkpoint or start-up time). Meaningful at 224 px, batch 64."""
    from utils.config import PROFILES

    full = PROFILES["full"]
    n_val = round(KERMANY_TRAIN * FULL_VAL_FRACTION)
    n_train = KERMANY_TRAIN - n_val
    e1, e2 = full["phase1"]["epochs"], full["phase2"]["epochs"]
    if not eval_img_s:
        return None
    return (e1 * n_train / train["project_phase1_img_s"] + e2 * n_train / train["project_phase2_img_s"]
            + (e1 + e2) * n_val / eval_img_s)


# ---------------------------------------------------------------------------------------- 2. data
def _phantom_jpegs(folder: Path, n: int, jpeg_px: int, seed: int = 7) -> list[Path]:
    """``n`` phantom chest X-rays saved as ``jpeg_px``² JPEGs in ``folder/{NORMAL,PNEUMONIA}/``."""
    from PIL import Image

    from utils.data import phantom

    spec = phantom.spec_for("default", min(jpeg_px, 128))
    samples = phantom.generate(max(2, math.ceil(n / 1.5)), seed, spec)
    while len(samples) < n:
        samples += phantom.generate(max(2, n - len(samples)), seed + len(samples), spec, first_pid=10_000 + len(samples))
    paths = []
    for smp in samples[:n]:
        d = folder / ("PNEUMONIA" if smp.label else "NORMAL")
        d.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(smp.image)
        if im.size != (jpeg_px, jpeg_px):
            im = im.resize((jpeg_px, jpeg_px), Image.Resampling.BICUBIC)
        p = d / f"{smp.image_id}.jpeg"
        im.save(p, quality=90)
        paths.append(p)
    return sorted(paths)


def _pick(paths: list[Path], n: int) -> list[Path]:
    """``n`` paths spread evenly over the sorted list (both classes of a Kermany folder)."""
    if len(paths) <= n:
        return paths
    idx = np.linspace(0, len(paths) - 1, n).round().astype(int)
    return [paths[i] for i in idx]


def bench_data(s: dict, data_dir: str | None, tmp: Path, progress: bool) -> tuple[dict[str, Any], list[Path]]:
    """Decode-once cache vs PIL re-decoding every epoch; returns the section and the image paths."""
    import pandas as pd
    import torchvision.transforms.functional as TF
    from PIL import Image

    from utils.data import decode_cached
    from utils.data.images import list_images

    size, n = s["size"], s["data_images"]
    if data_dir:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise UserError(f"--data-dir {root}: not a folder; pass a Kermany root or a folder of class subfolders.")
        paths = _pick(list_images(root, recursive=True), n)
        if not paths:
            raise UserError(f"--data-dir {root}: no images found (recursively); expected class sub-folders of JPEGs.")
        source = str(root)
    else:
        paths = _phantom_jpegs(tmp / "jpeg", n, s["jpeg_px"])
        source = f"phantom JPEGs ({s['jpeg_px']} px, written to a temporary folder)"
    with Image.open(paths[0]) as im0:
        first_px = list(im0.size)
    out: dict[str, Any] = {"source": source, "images": len(paths), "first_image_px": first_px,
                           "bytes_mean": float(np.mean([p.stat().st_size for p in paths]))}
    df = pd.DataFrame({"path": [str(p) for p in paths]})
    cache = tmp / "cache"

    t0 = time.perf_counter()
    images, _, bad = decode_cached(df, size, cache, progress=progress)  # cold: decode + hash + save
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    images2, _, _ = decode_cached(df, size, cache, progress=False)  # warm: what a re-run pays
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(s["data_epochs"]):  # an epoch from the in-memory cache: index + to tensor
        for i in range(0, len(images2), s["batch"]):
            torch.from_numpy(images2[i:i + s["batch"]]).unsqueeze(1)
    mem_epoch = (time.perf_counter() - t0) / s["data_epochs"]

    t0 = time.perf_counter()
    for _ in range(s["data_epochs"]):  # torchvision ImageFolder-style: PIL open → RGB → resize → tensor
        for p in _progress(paths, progress, desc="PIL epoch", unit="img"):
            with Image.open(p) as im:
                TF.to_tensor(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    pil_epoch = (time.perf_counter() - t0) / s["data_epochs"]
    n_ok = len(images) - len(bad)
    out.update({
        "unreadable": len(bad),
        "pil_epoch_s": pil_epoch, "pil_img_s": len(paths) / pil_epoch,
        "cache_build_s": build, "cache_build_img_s": n_ok / build,
        "cache_load_s": load, "cache_load_img_s": n_ok / load,
        "cache_epoch_img_s": n_ok / max(mem_epoch, 1e-9),
        "speedup_load_vs_pil": pil_epoch / load,
        "build_vs_pil_epoch": build / pil_epoch,
        "epochs": s["data_epochs"],
    })
    return out, paths


# ---------------------------------------------------------------------------------------- 3. eval, latency
def bench_eval(model: nn.Module, meta: dict, device: torch.device, s: dict, peaks: _GpuPeaks) -> dict[str, Any]:
    from utils.train.engine import evaluate

    eb = s["eval_batch"]
    data = _random_data(s["eval_iters"] * eb, s["size"], device, seed=1)
    with peaks.section("eval"):
        evaluate(model, type(data)(data.images[:eb], data.labels[:eb]), meta, batch_size=eb)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        evaluate(model, data, meta, batch_size=eb)
        _sync(device)
        secs = time.perf_counter() - t0
    return {"batch": eb, "images": len(data), "img_s": len(data) / secs}


def bench_latency(ckpt: Path, image: Path, s: dict, progress: bool, threads: int | None = None) -> dict[str, Any]:
    """Single-image CPU latency of exactly what the inference command runs per image:
    :func:`utils.deploy.predict.predict_images` on an already loaded model (decode, preprocess, the main
    explanation's one forward + backward, softmax, decision), without writing the overlay PNG; and the same call
    with ``explain=False`` (forward only) to show what the map costs."""
    from utils.deploy.predict import predict_images
    from utils.train.model import cpu_threads, load_model

    threads = threads or cpu_count()
    runs = max(20, s["latency_runs"])
    with cpu_threads(threads):
        model, meta = load_model(ckpt, "cpu")
        size = int(meta["image_size"])

        def once(explain: bool) -> float:
            t0 = time.perf_counter()
            _, failures = predict_images(model, meta, [image], threshold=float(meta["threshold"]),
                                               explain=explain)
            if failures:
                raise UserError(f"latency image failed: {failures[0][1]}")
            return (time.perf_counter() - t0) * 1e3

        for _ in range(3):
            once(True)
        e2e, forward = [], []
        for _ in _progress(range(runs), progress, desc="CPU latency", unit="img"):
            e2e.append(once(True))
            forward.append(once(False))
    return {"device": "cpu", "threads": threads, "runs": runs, "size": size, "image": image.name,
            "path": "utils.deploy.predict.predict_images (what pneumonia-predict runs per image)",
            "predict_gradcam_ms_median": float(np.median(e2e)), "predict_gradcam_ms_p90": _pct(e2e, 90),
            "predict_forward_ms_median": float(np.median(forward)), "predict_forward_ms_p90": _pct(forward, 90)}


def bench_predict_command(ckpt: Path, image: Path, tmp: Path, threads: int | None = None) -> dict[str, Any]:
    """Wall time of the whole ``python -m utils.deploy.predict`` process (start-up, imports, load, one image)."""
    root = Path(__file__).resolve().parent.parent
    if not (Path(__file__).resolve().parents[1] / "utils" / "deploy" / "predict.py").exists():
        return {"predict_cmd_wall_s": None, "predict_cmd_note": "utils/deploy/predict.py not found: not measured"}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])]),
               PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    base = [sys.executable, "-m", "utils.deploy.predict", "--image_path", str(image), "--model_path", str(ckpt),
            "--json", "--device", "cpu"]
    note = ""
    for extra in (["--output", str(tmp / "predict_overlay.png")], ["--no-overlay"]):
        cmd = base + extra
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            return {"predict_cmd_wall_s": None, "predict_cmd_note": "timed out after 600 s"}
        wall = time.perf_counter() - t0
        if proc.returncode == 0:
            try:
                prob = float(json.loads(proc.stdout)["probability"])
            except (ValueError, KeyError, TypeError):
                prob = None
            shown = " ".join(["python", "-m", "utils.deploy.predict", *cmd[3:]])
            return {"predict_cmd_wall_s": wall, "predict_cmd": shown, "predict_cmd_probability": prob,
                    "predict_cmd_note": note or "one image, --device cpu, overlay PNG written"}
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:200]
        if "matplotlib" in proc.stderr and "--no-overlay" not in cmd:
            note = "matplotlib missing: timed with --no-overlay (forward + Grad-CAM skipped)"
            continue
        return {"predict_cmd_wall_s": None, "predict_cmd_note": f"exit {proc.returncode}: {last}"}
    return {"predict_cmd_wall_s": None, "predict_cmd_note": note or "failed"}


# ---------------------------------------------------------------------------------------- 4. Grad-CAM
def bench_gradcam(model: nn.Module, meta: dict, device: torch.device, s: dict, progress: bool,
                  peaks: _GpuPeaks) -> dict[str, Any]:
    from utils.explain.gradcam import GradCAM
    from utils.train.model import preprocess

    out: dict[str, Any] = {"device": device.type, "layer": "layer4"}
    g = torch.Generator().manual_seed(2)
    with GradCAM(model, "layer4") as cam:
        for b in sorted({1, s["cam_batch"]}):
            reps = s["cam_reps"] * (5 if b == 1 else 1)
            x = preprocess(torch.randint(0, 256, (b, 1, s["size"], s["size"]), generator=g, dtype=torch.uint8
                                         ).to(device), meta["mean"], meta["std"])
            with peaks.section(f"gradcam_b{b}"):
                for _ in range(2):
                    cam(x, targets=1)
                _sync(device)
                t0 = time.perf_counter()
                for _ in _progress(range(reps), progress, desc=f"Grad-CAM b{b}", unit="batch"):
                    cam(x, targets=1)  # returns NumPy maps: includes the copy to the host
                _sync(device)
                out[f"b{b}_maps_s"] = b * reps / (time.perf_counter() - t0)
    out["batches"] = sorted({1, s["cam_batch"]})
    return out


# ---------------------------------------------------------------------------------------- report
def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def format_table(rep: dict) -> str:
    """A compact, human-readable view of the report."""
    t, d, e, lat, cam, mem = (rep.get(k) or {} for k in ("train", "data", "eval", "latency", "gradcam", "memory"))
    dev = rep["device"] + (f" ({rep['device_name']})" if rep.get("device_name") else "")
    rows = [
        ("train", "tight loop, all params (img/s)", t.get("tight_img_s")),
        ("train", "tight loop, frozen backbone (img/s)", t.get("tight_phase1_img_s")),
        ("train", "project phase 1, frozen (img/s)", t.get("project_phase1_img_s")),
        ("train", "project phase 2, all (img/s)", t.get("project_phase2_img_s")),
        ("train", "ratio phase 2 project/tight", t.get("ratio_phase2")),
        ("train", "ratio phase 1 project/tight", t.get("ratio_phase1")),
        ("train", "full profile estimate (s)", t.get("full_profile_estimate_s")),
        ("data", "PIL re-decode, per epoch (img/s)", d.get("pil_img_s")),
        ("data", "cache build, once (s)", d.get("cache_build_s")),
        ("data", "cache build (img/s)", d.get("cache_build_img_s")),
        ("data", "cache load on re-run (img/s)", d.get("cache_load_img_s")),
        ("eval", "evaluate (img/s)", e.get("img_s")),
        ("latency", f"CPU predict+Grad-CAM median (ms, {lat.get('threads')} thr)", lat.get("predict_gradcam_ms_median")),
        ("latency", "CPU predict+Grad-CAM p90 (ms)", lat.get("predict_gradcam_ms_p90")),
        ("latency", "CPU predict, forward only, median (ms)", lat.get("predict_forward_ms_median")),
        ("latency", "predict command, whole process (s)", lat.get("predict_cmd_wall_s")),
    ]
    rows += [("gradcam", f"batch {b} (maps/s)", cam.get(f"b{b}_maps_s")) for b in cam.get("batches", [])]
    rows += [("memory", "CPU peak RSS (MiB)", mem.get("cpu_peak_rss_mib")),
             ("memory", "GPU max allocated (MiB)", mem.get("gpu_max_allocated_mib"))]
    w = max(len(r[1]) for r in rows)
    head = (f"benchmark: {dev} | torch {rep['torch']} | {rep['size']} px | batch {rep['batch']} | "
            f"{t.get('iters')} iters, best of {t.get('repeats')} | compile {rep.get('compile')} | smoke {rep['smoke']}")
    lines = [head, "-" * len(head)]
    lines += [f"{sec:<8} {name:<{w}}  {_fmt(val):>10}" for sec, name, val in rows]
    for note in rep.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _rounded(obj: Any) -> Any:
    """The report with its floats rounded (4 digits under 10, else 2); ``write_json`` does the rest."""
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return _r(v, 4 if abs(v) < 10 else 2)
    return obj


# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Unset sizes take the --smoke values, else full values (fewer timed iterations on a CPU). "
                       "See docs/BENCHMARKS.md.")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: a seconds-long check that every section runs")
    p.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu or cuda")
    p.add_argument("--size", type=int, help="image side in px (full: 224, smoke: 64)")
    p.add_argument("--batch", type=int, help="training batch (full: 64, smoke: 8)")
    p.add_argument("--iters", type=int, help="timed training iterations per loop (CUDA 50, CPU 3, smoke 2)")
    p.add_argument("--warmup", type=int, help="untimed iterations before each timed loop (CUDA 3, CPU 1, smoke 1)")
    p.add_argument("--repeats", type=int, help="rounds of the four training loops, best kept (CUDA 3, CPU 1)")
    p.add_argument("--eval-batch", type=int, dest="eval_batch", help="evaluate() batch (full 128, smoke 8)")
    p.add_argument("--eval-iters", type=int, dest="eval_iters", help="timed evaluate() batches (CUDA 10, CPU 2)")
    p.add_argument("--data-dir", dest="data_dir", help="a Kermany root or a folder of class sub-folders "
                                                       "(default: temporary phantom JPEGs)")
    p.add_argument("--data-images", type=int, dest="data_images", help="images in the data benchmark (full 256, smoke 12)")
    p.add_argument("--jpeg-px", type=int, dest="jpeg_px", help="side of the phantom JPEGs (full 1024 ≈ Kermany, smoke 128)")
    p.add_argument("--data-epochs", type=int, dest="data_epochs", help="PIL epochs timed (default 1)")
    p.add_argument("--cam-batch", type=int, dest="cam_batch", help="large Grad-CAM batch (full 64, smoke 4)")
    p.add_argument("--cam-reps", type=int, dest="cam_reps", help="timed Grad-CAM calls at the large batch (×5 at batch 1)")
    p.add_argument("--latency-runs", type=int, dest="latency_runs", help="CPU latency runs (≥ 20; default 30)")
    p.add_argument("--threads", type=int, help="torch CPU threads for every section (default: torch's own for "
                                               "train/eval/gradcam, every usable core for the CPU latency)")
    p.add_argument("--cudnn-benchmark", dest="cudnn_benchmark", action="store_true",
                   help="switch cuDNN autotuning on for the project's loop too (the tight loop always has it)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in both training loops (default off)")
    p.add_argument("--no-predict-cmd", dest="predict_cmd", action="store_false",
                   help="skip timing the python -m utils.deploy.predict subprocess")
    p.add_argument("--out", default=None, help=f"JSON report (default: {artifact('benchmark', Path('.'))})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def resolve_settings(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    base = SMOKE if args.smoke else FULL_CUDA if device.type == "cuda" else FULL_CPU
    s = {k: (getattr(args, k) if getattr(args, k, None) is not None else v) for k, v in base.items()}
    for k, v in s.items():
        if v < 1:
            raise UserError(f"--{k.replace('_', '-')} must be at least 1, got {v}.")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}.")
    if s["size"] < 32:
        raise UserError(f"--size must be at least 32 (ResNet-18 downsamples 32×), got {s['size']}.")
    return s


def run(args: argparse.Namespace) -> dict[str, Any]:
    from utils.train.model import resolve_device

    device = resolve_device(args.device)
    s = resolve_settings(args, device)
    progress = not args.quiet
    out_path = Path(args.out).expanduser() if args.out else artifact("benchmark", project_root())
    peaks = _GpuPeaks(device)
    torch.manual_seed(0)
    threads_before, cudnn_before = torch.get_num_threads(), torch.backends.cudnn.benchmark
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()}, {cpu_count()} cores"
    rep: dict[str, Any] = {"device": device.type, "device_name": name, "torch": torch.__version__,
                           "size": s["size"], "batch": s["batch"], "compile": bool(args.compile),
                           "smoke": bool(args.smoke), "torch_threads": torch.get_num_threads(),
                           "python": platform.python_version(), "settings": s, "notes": []}
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
            rep["torch_threads"] = args.threads
        if args.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if progress:
            print(f"benchmark on {device.type} ({name}): train …", file=sys.stderr, flush=True)
        lap = _Laps()
        train, model, meta = bench_train(device, s, bool(args.compile), progress, peaks)
        rep["train"] = train
        lap("train")
        rep["eval"] = bench_eval(model, meta, device, s, peaks)
        lap("eval")
        train["full_profile_estimate_s"] = full_profile_estimate(train, rep["eval"]["img_s"])
        if s["size"] != 224 or s["batch"] != 64:
            rep["notes"].append("full_profile_estimate_s assumes the full profile's 224 px and batch 64")
        rep["gradcam"] = bench_gradcam(model, meta, device, s, progress, peaks)
        lap("gradcam")
        rep["data"], paths = bench_data(s, args.data_dir, tmp, progress)
        lap("data")

        from utils.checkpoint import save_checkpoint
        ckpt = save_checkpoint(tmp / "bench.pt", {"model": {k: v.detach().cpu().contiguous()
                                                            for k, v in model.state_dict().items()},
                                                  "meta": meta})
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rep["latency"] = bench_latency(ckpt, paths[0], s, progress, args.threads)
        lap("latency")
        if args.predict_cmd:
            rep["latency"].update(bench_predict_command(ckpt, paths[0], tmp, args.threads))
        else:
            rep["latency"].update(predict_cmd_wall_s=None, predict_cmd_note="skipped (--no-predict-cmd)")
        lap("predict_cmd")
        rep["section_s"] = lap.laps
        if device.type == "cuda":
            rep["notes"].append("latency runs on the CPU; train, eval and gradcam on CUDA")
    finally:
        torch.set_num_threads(threads_before)  # in-process callers (tests, notebooks) get theirs back
        torch.backends.cudnn.benchmark = cudnn_before
        shutil.rmtree(tmp, ignore_errors=True)
    mem = {"cpu_peak_rss_mib": _rss_mib(), "gpu_max_allocated_mib": max(peaks.peaks.values()) if peaks.peaks else None}
    mem.update({f"gpu_{k}_mib": v for k, v in peaks.peaks.items()})
    rep["memory"] = mem
    rep["wall_s"] = time.perf_counter() - t_start
    rep = _rounded(rep)
    write_json(out_path, rep)
    rep["_path"] = str(out_path)
    return rep


def _cli(argv: Sequence[str] | None) -> int:
    rep = run(build_parser().parse_args(argv))
    path = rep.pop("_path")
    print(format_table(rep))
    print(f"report: {path}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the exit code; user mistakes (e.g. ``--device cuda`` without a GPU) print one line, exit 2."""
    return run_main(_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
