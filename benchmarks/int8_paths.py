"""Which maintained INT8 path is faster on this CPU: ONNX Runtime static QDQ or torchao's PT2E flow?

    python -m benchmarks.int8_paths [--size 224] [--threads 2] [--runs 30] [--out assets/int8_paths.json] [--smoke]

Both quantise the same FP32 ResNet-18 (random weights: speed does not depend on them) with the same 32 calibration
images, static, per-channel int8 weights and 8-bit activations:

* **ORT** — :func:`utils.deploy.int8.quantize_int8` (the series' path: ``onnxruntime.quantization.quantize_static``,
  QDQ), run by :class:`utils.deploy.int8.Int8Model` (the runner notebook 07 and ``--int8`` use) with ``threads``
  intra-op threads;
* **torchao PT2E** — ``torch.export`` → ``prepare_pt2e`` with ``X86InductorQuantizer`` → calibrate →
  ``convert_pt2e`` → ``torch.compile`` (Inductor, freezing on), which is what makes PT2E INT8 fast on x86; the
  one-time compile is timed separately;
* the FP32 references: eager PyTorch and the FP32 ONNX graph in ONNX Runtime.

Latency = median of ``runs`` single preprocessed images (batch 1) after warm-ups; throughput = images/s of a batch of
16. The models are timed interleaved, so a busy CPU slows them alike. torchao is optional: without it the PT2E row
says why. The report records the CPU, threads and load average; put the numbers in docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.deploy.timing import machine_info
from utils.fileio import write_json


def _model(size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    from utils.config import IMAGENET_MEAN, IMAGENET_STD
    from utils.train.model import build_model

    model, _ = build_model("none", seed=0)
    meta = {"image_size": size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "classes": ["N", "P"]}
    return model.eval(), meta


def _time(fns: dict[str, Any], x1: torch.Tensor, xb: torch.Tensor, runs: int, warmup: int = 3) -> dict[str, Any]:
    lat: dict[str, list[float]] = {k: [] for k in fns}
    thr: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for k in range(warmup + runs):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(x1)
                if k >= warmup:
                    lat[name].append(time.perf_counter() - t0)
        for k in range(3):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(xb)
                if k:
                    thr[name].append(time.perf_counter() - t0)
    return {k: {"latency_ms_median": 1e3 * float(np.median(lat[k])),
                "latency_ms_p90": 1e3 * float(np.percentile(lat[k], 90)),
                "throughput_img_s": len(xb) / float(np.median(thr[k]))} for k in fns}


def _untie_relu(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a torchvision ResNet whose BasicBlocks use a *separate* ReLU after the residual addition.

    torchvision calls the same ``self.relu`` module twice per block; PT2E groups both calls into one partition with
    two outputs, and ``prepare_pt2e`` refuses it ("Input partition has more than one output node"). Same weights,
    same function."""
    import copy
    import types

    from torchvision.models.resnet import BasicBlock

    def forward(self: BasicBlock, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu_out(self.bn2(self.conv2(out)) + identity)

    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, BasicBlock):
            m.relu_out = torch.nn.ReLU()
            m.forward = types.MethodType(forward, m)  # type: ignore[method-assign]
    return model


def _pt2e(model: torch.nn.Module, calib: torch.Tensor, example: torch.Tensor) -> tuple[Any, dict[str, float]]:
    """The torchao PT2E INT8 model lowered with torch.compile, and the seconds spent quantising and compiling
    (``compile_s`` = what a process that loads the quantised model pays before its first prediction)."""
    import torch._inductor.config as inductor_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    t0 = time.perf_counter()
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(_untie_relu(model), (torch.cat([example] * 2),),
                                   dynamic_shapes={"x": {0: batch}}).module()
    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for i in range(0, len(calib), 8):
            prepared(calib[i:i + 8])
    converted = convert_pt2e(prepared)
    t1 = time.perf_counter()
    inductor_config.freezing = True
    compiled = torch.compile(converted)
    with torch.no_grad():
        compiled(example)  # compile now (batch 1) ...
        compiled(torch.cat([example] * 16))  # ... and for the batch shape
    return compiled, {"quantise_s": t1 - t0, "compile_s": time.perf_counter() - t1}


def _ort_first_prediction_s(path: Path, meta: dict[str, Any], threads: int, x1: torch.Tensor) -> float:
    """Seconds from an INT8 ONNX file on disk to its first prediction (session creation + one image)."""
    from utils.deploy.int8 import Int8Model

    t0 = time.perf_counter()
    Int8Model(path, meta, threads=threads)(x1)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--out", default="assets/int8_paths.json")
    p.add_argument("--smoke", action="store_true", help="64 px, 5 runs, no torchao compile: checks the script")
    a = p.parse_args(argv)
    size, runs = (64, 5) if a.smoke else (a.size, a.runs)
    from utils.train.model import cpu_threads

    with cpu_threads(a.threads):  # the caller gets its thread count back
        return _run(a, size, runs)


def _run(a: argparse.Namespace, size: int, runs: int) -> int:
    from utils.deploy.int8 import Int8Model, export_onnx, quantize_int8
    from utils.train.model import preprocess

    model, meta = _model(size)
    meta["image_size"] = size
    rng = np.random.default_rng(0)
    calib_u8 = rng.integers(0, 256, (32, size, size), dtype=np.uint8)
    calib = preprocess(torch.from_numpy(calib_u8), meta["mean"], meta["std"])
    x1, xb = calib[:1].contiguous(), torch.cat([calib[:16]] * (16 // min(16, len(calib))))[:16].contiguous()
    fns: dict[str, Any] = {"fp32 eager (torch)": lambda x: model(x)}
    notes: dict[str, str] = {}
    setup_s: dict[str, float] = {}
    first_s: dict[str, float] = {}  # a fresh process with the quantised model: seconds until its first prediction
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        t0 = time.perf_counter()
        quantize_int8(model, calib_u8, meta, int8, fp32_path=fp32)
        setup_s["int8 ORT QDQ"] = time.perf_counter() - t0
        first_s["int8 ORT QDQ"] = _ort_first_prediction_s(int8, meta, a.threads, x1)
        export_onnx(model, meta, fp32)
        fns["fp32 ONNX Runtime"] = Int8Model(fp32, meta, threads=a.threads)  # the runner predict uses, FP32 graph
        fns["int8 ORT QDQ"] = Int8Model(int8, meta, threads=a.threads)
        if a.smoke:
            notes["int8 torchao PT2E + compile"] = "skipped (--smoke)"
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    compiled, pt2e_s = _pt2e(model, calib, x1)
                setup_s["int8 torchao PT2E + compile"] = pt2e_s["quantise_s"] + pt2e_s["compile_s"]
                first_s["int8 torchao PT2E + compile"] = pt2e_s["compile_s"]
                fns["int8 torchao PT2E + compile"] = compiled
            except Exception as exc:  # torchao missing, no C++ toolchain, an unsupported op…
                notes["int8 torchao PT2E + compile"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        res = _time(fns, x1, xb, runs)
        sizes = {"fp32 ONNX Runtime": fp32.stat().st_size / 1e6, "int8 ORT QDQ": int8.stat().st_size / 1e6}
    report = {"size": size, "threads": a.threads, "runs": runs, "results": res, "setup_s": setup_s,
              "first_prediction_s": first_s, "notes": notes,
              "file_mb": sizes, "machine": machine_info(a.threads), "torch": torch.__version__, "smoke": a.smoke}
    out = Path(a.out)
    write_json(out, report)
    print(f"{'model':<30} {'latency ms (median, p90)':>26} {'img/s @16':>10}")
    for k, v in res.items():
        print(f"{k:<30} {v['latency_ms_median']:>14.1f} {v['latency_ms_p90']:>10.1f} {v['throughput_img_s']:>10.1f}")
    for k, v in notes.items():
        print(f"{k}: {v}")
    print(f"one-time setup (s): {({k: round(v, 1) for k, v in setup_s.items()})}")
    print(f"loaded model to first prediction (s): {({k: round(v, 2) for k, v in first_s.items()})} | report: {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / "cxr-inductor"))
    sys.exit(main())
