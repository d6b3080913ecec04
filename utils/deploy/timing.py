"""CPU timings for deployment (notebook 07, the benchmark and the inference command): latency and throughput,
timed interleaved so that a busy CPU slows every model alike, plus file sizes and where the timings came from."""
from __future__ import annotations

import hashlib
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.machine import cpu_count
from utils.train.model import cpu_threads


def file_fingerprint(path: str | os.PathLike) -> str:
    """A short content hash of a file (SHA-1, 16 hex digits)."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def file_size_mb(path: str | os.PathLike) -> float:
    """File size in MB (10^6 bytes)."""
    return Path(path).stat().st_size / 1e6


def torch_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> logits`` for a float or INT8 PyTorch model, on the CPU, without autograd."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)
    return forward


def benchmark_cpu(forwards: Callable[[torch.Tensor], Any] | Mapping[str, Callable[[torch.Tensor], Any]],
                  images_uint8: np.ndarray, meta: Mapping[str, Any], *, runs: int = 20, warmup: int = 2,
                  batch: int = 32, batch_runs: int = 2, threads: int = 2) -> dict[str, Any]:
    """CPU latency per image (batch 1) and throughput (batch ``batch``), preprocessing included.

    ``forwards``: one ``x -> logits`` callable (a preprocessed float batch (N, 3, S, S) in), or a dict of
    them (``{"fp32": ..., "int8": ...}``), which are then timed **interleaved** — run k of every model
    back to back — so that a CPU busy with other work slows them alike. Latency: ``runs`` timed single
    images (median and 90th percentile, ms) after ``warmup`` untimed ones; throughput: images/s of the
    median of ``batch_runs`` timed batches. All under ``torch.set_num_threads(threads)``. Returns one
    result dict, or a dict of them keyed like ``forwards``.
    """
    from utils.train.model import preprocess

    if runs < 1 or batch_runs < 1:
        raise ValueError("runs and batch_runs must be >= 1")
    single = not isinstance(forwards, Mapping)
    fns: dict[str, Callable[[torch.Tensor], Any]] = {"model": forwards} if not isinstance(forwards, Mapping) \
        else dict(forwards)
    imgs = torch.as_tensor(np.asarray(images_uint8))
    mean, std = meta["mean"], meta["std"]
    big = imgs.repeat(math.ceil(batch / len(imgs)), 1, 1)[:batch]
    lat: dict[str, list[float]] = {k: [] for k in fns}
    thr: dict[str, list[float]] = {k: [] for k in fns}
    with cpu_threads(threads):
        for k in range(warmup + runs):
            x = imgs[k % len(imgs)][None]
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(preprocess(x, mean, std))
                if k >= warmup:
                    lat[name].append(time.perf_counter() - t0)
        for k in range(1 + batch_runs):  # the first pass at the large batch size is a warm-up
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(preprocess(big, mean, std))
                if k:
                    thr[name].append(time.perf_counter() - t0)
    out = {name: {"latency_ms_median": 1e3 * float(np.median(lat[name])),
                  "latency_ms_p90": 1e3 * float(np.percentile(lat[name], 90)),
                  "throughput_img_s": batch / float(np.median(thr[name])), "runs": runs, "batch": batch,
                  "batch_runs": batch_runs, "threads": threads, "interleaved_with": [n for n in fns if n != name]}
           for name in fns}
    return out["model"] if single else out


def machine_info(threads: int) -> dict[str, Any]:
    """Where the timings were taken (they depend on the CPU and on what else runs on it)."""
    return {"cpu": platform.processor() or platform.machine(), "cores_available": cpu_count(), "threads": threads,
            "torch": str(torch.__version__),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


