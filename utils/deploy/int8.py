"""INT8 post-training quantisation for CPU deployment, its checkpoint, CPU benchmarks and an optional ONNX path.

**How** (PyTorch, eager tensors, FX graph mode: ``torch.ao.quantization.quantize_fx``)::

    prepare_fx(model, get_default_qconfig_mapping(backend), example)   # fuse conv+bn(+relu), insert observers
    prepared(calibration_batch) ...                                    # observers record activation ranges
    convert_fx(prepared)                                               # int8 weights, fixed scales / zero-points

The PT2E flow (``torch.ao.quantization.quantize_pt2e``) is not in torch 2.14 any more (it moved to the
separate ``torchao`` package, not a dependency here), so the FX API is used; it still ships and works in
torch 2.14 but announces its own deprecation. Those notices (``torch.ao.quantization is deprecated``,
``reduce_range`` on observers, quantised-tensor constructors), plus two that rebuilding a saved model
triggers (uncalibrated observers, ``TypedStorage``), are silenced by message with targeted filters only
(:func:`quiet_quantization`); every other warning still shows.

**What is quantised**: the whole ResNet-18 from the first convolution to the head. Weights are int8,
*per output channel* and symmetric; activations are uint8, per tensor, with a scale and zero-point fixed
by the calibration images (a histogram observer). **Preprocessing stays in float, outside the graph**:
the INT8 model takes exactly the tensor the FP32 model takes — :func:`utils.train.model.preprocess` (3 identical
channels, the checkpoint's mean/std) — and quantises it at its first node. So both models see identical
inputs, and :func:`utils.model.predict_proba` works for both (pass ``device="cpu"``).

**Calibration data**: train or validation images only, never test (:func:`calibration_images` refuses
``"test"``). Calibration uses no labels, but it does fit the model to the images it sees; test images
must stay unseen by every choice made about the model.

**The artefact** (``cfg.path("int8_model")``) is a project checkpoint: ``{"model": quantised state dict,
"meta": {...}}`` written atomically by :func:`utils.checkpoint.save_checkpoint` and read back with
``torch.load(weights_only=True)`` — tensors, numbers and strings only, no pickled code, no TorchScript.
Loading rebuilds the same quantised graph from torchvision's ResNet-18 and this torch's FX quantiser,
then loads the state dict strictly (same outputs, bit for bit). The metadata carries the classes, image
size, mean/std, the INT8 model's own threshold (chosen on validation), the backend and the fingerprint of
the FP32 checkpoint it came from. ``meta["arch"]`` is ``"resnet18-int8"``, so the FP32 loader refuses it
with a clear message instead of a shape error. (A TorchScript file — ``torch.jit.trace`` + ``torch.jit.save``
— works too and runs without Python, but TorchScript is deprecated in torch 2.14 and its loader compiles the
code stored in the file; the weights-only checkpoint keeps the series' one loading rule.)

**Backends**: ``"x86"`` (default; recent PyTorch's choice for Intel/AMD CPUs), ``"fbgemm"`` (the older x86
one) or ``"qnnpack"`` (ARM: phones, Raspberry Pi, Apple silicon). The quantised engine is a process-wide
setting (``torch.backends.quantized.engine``); :func:`quantize_int8` and :func:`load_int8` set it.
INT8 kernels run on the CPU only.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from utils.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from utils import fileio
from utils.config import UserError
from utils.train.model import cpu_threads

if TYPE_CHECKING:
    import pandas as pd

INT8_ARCH = "resnet18-int8"
BACKENDS = ("x86", "fbgemm", "qnnpack")
CALIBRATION_SPLITS = ("train", "val", "train+val")
API = "torch.ao.quantization.quantize_fx (prepare_fx / convert_fx, get_default_qconfig_mapping)"

#: Targeted filters: the FX quantiser's own deprecation notices in torch 2.14 (the module says it moves to
#: ``torchao``; it still ships and works here), nothing else.
_QUIET = (
    (r"torch\.ao\.quantization is deprecated.*", DeprecationWarning),
    (r".*reduce_range will be deprecated.*", UserWarning),
    (r".*quantized tensor creation functions.*deprecated.*", UserWarning),
    (r".*must run observer before calling calculate_qparams.*", UserWarning),  # rebuilding, see load_int8
    (r".*TypedStorage is deprecated.*", UserWarning),  # torch.load of quantised tensors
)


@contextmanager
def quiet_quantization() -> Iterator[None]:
    """Silence only the FX quantiser's known deprecation notices (see :data:`_QUIET`) inside the block."""
    with warnings.catch_warnings():
        for message, category in _QUIET:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


# ------------------------------------------------------------------------------------- calibration
def calibration_images(splits: Mapping[str, Any], split: str = "train", n: int = 64, seed: int = 0
                       ) -> np.ndarray:
    """``n`` uint8 images drawn (seeded, without replacement) from a train or validation split.

    ``splits`` is ``bundle.splits`` (each value has ``.images``). ``split``: ``"train"``, ``"val"`` or
    ``"train+val"``; ``"test"`` is refused — test images must never shape the model.
    """
    if split not in CALIBRATION_SPLITS:
        why = " (test images must stay unseen: calibrate on train or val)" if "test" in str(split) else ""
        raise UserError(f"calibration split {split!r} refused{why}; choose one of {', '.join(CALIBRATION_SPLITS)}.")
    if n < 1:
        raise UserError(f"calibration needs at least one image, got n={n}.")
    images = np.concatenate([np.asarray(splits[s].images) for s in split.split("+")])
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
    return images[idx]


def check_backend(backend: str) -> str:
    """``backend`` if this PyTorch build has that quantised engine, else a one-line :class:`UserError`."""
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if backend not in BACKENDS:
        raise UserError(f"unknown INT8 backend {backend!r}: choose one of {', '.join(BACKENDS)}.")
    if backend not in engines:
        raise UserError(f"this PyTorch build has no {backend!r} quantised engine (it has {', '.join(engines)}); "
                        "quantise again with one of those.")
    return backend


def _prepared(model: nn.Module, backend: str, image_size: int) -> nn.Module:
    """A copy of ``model`` (CPU, eval) with fused modules and observers inserted (FX graph mode)."""
    try:
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_fx
    except ImportError:
        raise UserError(f"torch {torch.__version__} has no FX graph-mode quantisation "
                        "(torch.ao.quantization.quantize_fx); use torch <= 2.14 for the INT8 path.") from None
    torch.backends.quantized.engine = backend
    fp32 = copy.deepcopy(model).cpu().eval()
    example = (torch.zeros(1, 3, image_size, image_size),)
    with quiet_quantization():
        return prepare_fx(fp32, get_default_qconfig_mapping(backend), example)


def quantize_int8(model: nn.Module, calib_images_uint8: np.ndarray | torch.Tensor, meta: Mapping[str, Any],
                  backend: str = "x86", batch_size: int = 32, progress: bool = False) -> nn.Module:
    """Post-training static INT8 quantisation of a float ResNet-18 (FX graph mode); returns the CPU model.

    ``calib_images_uint8``: (N, S, S) uint8 images from train/validation (see :func:`calibration_images`),
    preprocessed with ``meta``'s mean/std exactly as at inference. ``model`` itself is not modified.
    """
    from utils.train.model import preprocess

    check_backend(backend)
    images = torch.as_tensor(np.asarray(calib_images_uint8))
    size = int(meta["image_size"])
    if images.dtype != torch.uint8 or images.ndim != 3 or len(images) == 0:
        raise UserError(f"calibration images must be a non-empty uint8 array (N, S, S), got "
                        f"{images.dtype} {tuple(images.shape)}.")
    if tuple(images.shape[1:]) != (size, size):
        raise UserError(f"calibration images are {tuple(images.shape[1:])} but the model expects {size}×{size}.")
    prepared = _prepared(model, backend, size)
    from torch.ao.quantization.quantize_fx import convert_fx

    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="calibrate", unit="batch", leave=False)
    with torch.inference_mode(), quiet_quantization():
        for i in starts:
            prepared(preprocess(images[i:i + batch_size], meta["mean"], meta["std"]))
    with quiet_quantization():
        return convert_fx(prepared).eval()


# ---------------------------------------------------------------------------------------- artefact
#: FP32 metadata keys that describe the INT8 model too (the rest is kept under ``meta["fp32_meta"]``).
_SHARED_META = ("format", "classes", "image_size", "mean", "std", "profile", "data_source", "data_fingerprint",
                "gradcam_layer")


def int8_meta(fp32_meta: Mapping[str, Any], *, threshold: float, backend: str, fp32_fingerprint: str,
              calibration: Mapping[str, Any], threshold_rule: str | None = None, **extra: Any) -> dict[str, Any]:
    """Metadata of the INT8 checkpoint: what it shares with the FP32 model (classes, size, mean/std, data,
    Grad-CAM layer), its own ``threshold`` (and ``threshold_rule``), ``arch = "resnet18-int8"``, a
    ``quantization`` record, and the FP32 metadata it came from under ``fp32_meta``."""
    shared = {"format": FORMAT, **{k: fp32_meta[k] for k in _SHARED_META if k in fp32_meta}}
    meta = {**shared, "arch": INT8_ARCH, "threshold": float(threshold), "phase": "int8",
            "fp32_fingerprint": fp32_fingerprint, "fp32_meta": dict(fp32_meta),
            "quantization": {"method": "post-training static quantisation", "api": API, "backend": backend,
                             "weights": "int8, per output channel, symmetric (zero-point 0)",
                             "activations": "uint8, per tensor, affine (histogram observer)",
                             "preprocessing": "float, outside the graph (utils.train.model.preprocess)",
                             "calibration": dict(calibration), "torch": str(torch.__version__)},
            **extra}
    if threshold_rule:
        meta["threshold_rule"] = threshold_rule
    return meta


def save_int8(path: str | os.PathLike, qmodel: nn.Module, meta: Mapping[str, Any]) -> Path:
    """Write the INT8 checkpoint ``{"model": state dict, "meta": meta}`` atomically (tensors and plain data only)."""
    if meta.get("arch") != INT8_ARCH:
        raise ValueError("use int8_meta(...) to build the INT8 metadata")
    return save_checkpoint(path, {"model": qmodel.state_dict(), "meta": dict(meta)})


def load_int8(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The INT8 model (CPU, eval) and its metadata, from a checkpoint written by :func:`save_int8`.

    ``torch.load(weights_only=True)`` (no code is unpickled); the quantised graph is rebuilt with FX from a
    fresh ResNet-18 (the global RNG is left untouched) and the state dict loaded strictly.
    """
    from torchvision.models import resnet18

    with quiet_quantization():
        ckpt = load_checkpoint(path)
    meta = ckpt["meta"]
    if meta.get("arch") != INT8_ARCH:
        raise UserError(f"{path} is not an INT8 model (arch {meta.get('arch')!r}); create one with "
                        "notebooks/07_int8_deployment.ipynb, or pass an FP32 checkpoint as --model_path.")
    q = meta.get("quantization") or {}
    backend = check_backend(str(q.get("backend", "x86")))
    with torch.random.fork_rng(devices=[]):  # building the skeleton must not shift the caller's random stream
        skeleton = resnet18(weights=None, num_classes=len(meta["classes"]))
        prepared = _prepared(skeleton, backend, int(meta["image_size"]))
        from torch.ao.quantization.quantize_fx import convert_fx

        with quiet_quantization():
            qmodel = convert_fx(prepared)
    try:
        with quiet_quantization():
            qmodel.load_state_dict(ckpt["model"], strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()[0][:160]
        raise UserError(f"{path}: INT8 weights do not fit the graph torch {torch.__version__} builds (saved with "
                        f"torch {q.get('torch', '?')}): re-run notebooks/07_int8_deployment.ipynb ({first}).") from None
    return qmodel.eval(), meta


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


# --------------------------------------------------------------------------------------- benchmark
def torch_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> logits`` for a float or INT8 PyTorch model, on the CPU, without autograd."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), quiet_quantization():
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
    single = callable(forwards)
    fns = {"model": forwards} if single else dict(forwards)
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


def flips(p_ref: np.ndarray, t_ref: float, p_new: np.ndarray, t_new: float) -> np.ndarray:
    """Indices where the decisions ``p >= t`` of two models disagree (each at its own threshold)."""
    p_ref, p_new = np.asarray(p_ref, dtype=np.float64), np.asarray(p_new, dtype=np.float64)
    if p_ref.shape != p_new.shape:
        raise ValueError(f"{p_ref.shape} vs {p_new.shape}: predictions of the same images are needed")
    return np.flatnonzero((p_ref >= t_ref) != (p_new >= t_new))


def operating_threshold(meta: Mapping[str, Any], y_val: np.ndarray, p_val: np.ndarray,
                        target_recall: float) -> tuple[float, str]:
    """The FP32 model's threshold and where it came from.

    The checkpoint's ``threshold`` when notebook 04 recorded one (with its ``threshold_rule``, or any value
    but the default 0.5); when it is still the default 0.5, the rule notebook 04 applies
    (:func:`utils.evaluate.metrics.threshold_for_recall` on validation) is applied here.
    """
    from utils.evaluate.metrics import threshold_for_recall

    t = float(meta.get("threshold", 0.5))
    if meta.get("threshold_rule"):
        return t, f"checkpoint, notebook 04 ({meta['threshold_rule']})"
    if t != 0.5:
        return t, "checkpoint (notebook 04)"
    return (threshold_for_recall(y_val, p_val, target_recall),
            f"chosen here on validation for recall >= {target_recall:g}; the checkpoint holds only the default "
            "0.5 (notebook 04 has not recorded its threshold yet)")


def variant_row(name: str, *, file: str | os.PathLike | None, timing: Mapping[str, float], threshold: float,
                y_test: np.ndarray, p_test: np.ndarray, n_flips: int | None) -> dict[str, Any]:
    """One row of the FP32-vs-INT8 table: size, speed, and test metrics at the validation-chosen threshold."""
    from utils.evaluate.metrics import threshold_free_metrics, threshold_metrics

    tm = threshold_metrics(y_test, p_test, threshold)
    return {"model": name, "file_mb": file_size_mb(file) if file else math.nan,
            "latency_ms": timing["latency_ms_median"], "throughput_img_s": timing["throughput_img_s"],
            "threshold": float(threshold), "test_auc": threshold_free_metrics(y_test, p_test)["roc_auc"],
            "test_recall": tm["sensitivity"], "test_specificity": tm["specificity"],
            "flips_vs_fp32": n_flips}


def quantisation_table(qmodel: nn.Module) -> "pd.DataFrame":
    """One row per quantised layer: its type, weight dtype, number of weight scales (one per output
    channel), and the scale / zero-point of the uint8 activations it outputs."""
    import pandas as pd

    rows = []
    for name, m in qmodel.named_modules():
        weight = getattr(m, "weight", None)
        if not name or not callable(weight) or not hasattr(m, "scale"):
            continue
        w = weight()
        per_channel = w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        rows.append({"layer": name, "type": type(m).__name__, "weight": str(w.dtype).replace("torch.", ""),
                     "weight_scales": w.q_per_channel_scales().numel() if per_channel else 1,
                     "weight_zero_points": "all 0" if (w.q_per_channel_zero_points() == 0).all() else "mixed"
                     if per_channel else int(w.q_zero_point()),
                     "out_scale": float(m.scale), "out_zero_point": int(m.zero_point)})
    return pd.DataFrame(rows)


def closest_to_threshold(prob: np.ndarray, threshold: float, k: int = 4) -> np.ndarray:
    """The near-flips: the ``k // 2`` images just below ``threshold`` and the ``k - k // 2`` just above it
    (fewer on a side that has fewer), closest first."""
    p = np.asarray(prob, dtype=np.float64)
    dist = np.abs(p - threshold)
    below, above = np.flatnonzero(p < threshold), np.flatnonzero(p >= threshold)
    below, above = below[np.argsort(dist[below], kind="stable")], above[np.argsort(dist[above], kind="stable")]
    n_below = min(len(below), max(k // 2, k - len(above)))
    return np.concatenate([below[:n_below], above[:k - n_below]]).astype(np.int64)


def decision_titles(ids: Sequence[str], labels: Sequence[int], p_fp32: np.ndarray, t_fp32: float,
                    p_int8: np.ndarray, t_int8: float, classes: Sequence[str] = ("NORMAL", "PNEUMONIA")
                    ) -> list[str]:
    """Figure titles: id and true class, then each model's probability and decision at its own threshold."""
    def call(p: float, t: float) -> str:
        return classes[1] if p >= t else classes[0]
    return [f"{i} (truth: {classes[int(y)]})\nFP32 {a:.3g} → {call(a, t_fp32)}\nINT8 {b:.3g} → {call(b, t_int8)}"
            for i, y, a, b in zip(ids, labels, p_fp32, p_int8)]


def onnx_variants(model: nn.Module, meta: Mapping[str, Any], calib_images: np.ndarray, *, fp32_path: str | os.PathLike,
                  int8_path: str | os.PathLike, y_val: np.ndarray, val_images: np.ndarray, y_test: np.ndarray,
                  test_images: np.ndarray, p_ref_test: np.ndarray, t_ref: float, target_recall: float,
                  bench_images: np.ndarray, runs: int = 20, threads: int = 2) -> list[dict[str, Any]]:
    """The ONNX Runtime rows of the table: FP32 export (at the FP32 threshold) and its static INT8
    quantisation (threshold re-chosen on validation), each timed like the PyTorch models."""
    from utils.evaluate.metrics import threshold_for_recall

    fp32 = export_onnx(model, meta, fp32_path)
    int8 = quantize_onnx(fp32, int8_path, calib_images, meta)
    variants = {"FP32 (ONNX Runtime)": (fp32, False), "INT8 (ONNX Runtime, QDQ)": (int8, True)}
    forwards = {name: onnx_forward(path, threads) for name, (path, _) in variants.items()}
    timings = benchmark_cpu(forwards, bench_images, meta, runs=runs, threads=threads)
    rows = []
    for name, (path, is_int8) in variants.items():
        p_val, p_test = proba_with(forwards[name], val_images, meta), proba_with(forwards[name], test_images, meta)
        t = threshold_for_recall(y_val, p_val, target_recall) if is_int8 else t_ref
        rows.append(variant_row(name, file=path, timing=timings[name], threshold=t, y_test=y_test, p_test=p_test,
                                n_flips=len(flips(p_ref_test, t_ref, p_test, t))))
    return rows


def machine_info(threads: int) -> dict[str, Any]:
    """Where the timings were taken (they depend on the CPU and on what else runs on it)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"cpu": platform.processor() or platform.machine(), "cores_available": cores, "threads": threads,
            "torch": str(torch.__version__), "quantized_engine": torch.backends.quantized.engine,
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def write_json(path: str | os.PathLike, obj: Mapping[str, Any]) -> Path:
    """Write ``obj`` as strict JSON (nan → null), atomically."""
    from utils.evaluate.metrics import _jsonable

    return fileio.write_json(path, _jsonable(obj))


# ----------------------------------------------------------------------------------- optional ONNX
def onnx_status() -> tuple[bool, str]:
    """``(available, message)`` for the optional ONNX Runtime path (``pip install -e ".[onnx]"``)."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        return False, (f"ONNX path skipped: {exc.name or 'onnx/onnxruntime'} is not installed "
                       "(pip install -e \".[onnx]\" to add the ONNX Runtime rows).")
    return True, f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}"


def export_onnx(model: nn.Module, meta: Mapping[str, Any], path: str | os.PathLike, opset: int = 17) -> Path:
    """Export the FP32 model (input: the preprocessed float batch, dynamic batch size) to ONNX, atomically.

    Uses the TorchScript-based exporter (``dynamo=False``): it needs only ``onnx``, where the newer
    ``torch.export`` one also needs ``onnxscript``; its deprecation notice is silenced.
    """
    path = Path(path)
    size = int(meta["image_size"])
    with fileio.atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r".*The feature will be removed.*", category=DeprecationWarning)
        torch.onnx.export(copy.deepcopy(model).cpu().eval(), (torch.zeros(1, 3, size, size),), str(tmp),
                          input_names=["input"], output_names=["logits"], opset_version=opset,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


def quantize_onnx(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, calib_images_uint8: np.ndarray,
                  meta: Mapping[str, Any], batch_size: int = 16) -> Path:
    """ONNX Runtime static INT8 quantisation (QDQ, per-channel int8 weights, uint8 activations).

    The calibration reader feeds train/validation images, preprocessed as at inference.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from utils.train.model import preprocess

    images = np.asarray(calib_images_uint8)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, len(images), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self.starts, None)
            if i is None:
                return None
            x = preprocess(torch.from_numpy(images[i:i + batch_size]), meta["mean"], meta["std"])
            return {"input": x.numpy()}

    int8_path = Path(int8_path)
    pre = int8_path.with_name(f".{int8_path.name}.pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        with fileio.atomic_path(int8_path) as tmp:
            quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        pre.unlink(missing_ok=True)
    return int8_path


def onnx_forward(path: str | os.PathLike, threads: int = 2) -> Callable[[torch.Tensor], np.ndarray]:
    """``x -> logits`` through an ONNX Runtime CPU session with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def forward(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0]
    return forward


def proba_with(forward: Callable[[torch.Tensor], Any], images_uint8: np.ndarray, meta: Mapping[str, Any],
               batch_size: int = 64) -> np.ndarray:
    """P(PNEUMONIA) for uint8 images through any ``forward`` (PyTorch or ONNX Runtime)."""
    from utils.train.model import preprocess

    images = torch.as_tensor(np.asarray(images_uint8))
    out = [torch.as_tensor(np.asarray(forward(preprocess(images[i:i + batch_size], meta["mean"], meta["std"]))))
           for i in range(0, len(images), batch_size)]
    logits = torch.cat(out).float() if out else torch.zeros(0, len(meta["classes"]))
    return torch.softmax(logits, dim=1)[:, 1].numpy()


__all__ = ["quantize_int8", "calibration_images", "check_backend", "quiet_quantization", "int8_meta", "save_int8",
           "load_int8", "file_fingerprint", "file_size_mb", "cpu_threads", "torch_forward", "benchmark_cpu",
           "flips", "operating_threshold", "variant_row", "quantisation_table", "closest_to_threshold",
           "decision_titles", "onnx_variants", "machine_info", "write_json", "onnx_status", "export_onnx",
           "quantize_onnx", "onnx_forward", "proba_with", "INT8_ARCH", "BACKENDS", "API"]
