"""INT8 post-training static quantisation for CPU deployment, with ONNX Runtime (a maintained path).

**How** (``onnxruntime.quantization.quantize_static``, QDQ format)::

    export_onnx(model, meta, fp32.onnx)               # the FP32 graph: preprocessed float batch in, logits out
    quant_pre_process(fp32.onnx)                      # fold batch-norms, infer shapes (what ORT recommends)
    quantize_static(..., calibration reader)          # observers record activation ranges on calibration images,
                                                      # then every Conv/Gemm gets int8 weights and Q/DQ pairs

The old eager/FX flow (``torch.ao.quantization``) is deprecated upstream and not used. Its successor in the
PyTorch world is torchao's PT2E flow (x86 inductor quantiser, lowered with ``torch.compile``). Both were measured
on the 2-core CPU at 224 px, 2 threads (``benchmarks/int8_paths.py``; ``docs/BENCHMARKS.md``): ONNX Runtime INT8
was the faster of the two at batch 1 (about 21 ms vs 25 ms for PT2E; FP32: 40–44 ms in ONNX Runtime, 67 ms eager)
and at batch 16 (52–64 vs 41–59 img/s), and reaches its first prediction 0.07 s after loading the file, where
PT2E compiles for 14 s in every new process (and needs a C++ toolchain). So ONNX Runtime is the primary path; its
file is what a deployment would ship anyway.

**What is quantised**: every convolution and the head. Weights are int8 *per output channel* and symmetric
(zero-point 0); activations are uint8, per tensor, with a scale and zero-point fixed by the calibration images.
**Preprocessing stays in float, outside the graph**: the INT8 model takes exactly the tensor the FP32 model takes
(:func:`utils.train.model.preprocess`), so any difference between the two comes from the quantisation alone.

**Calibration data**: train or validation images only, never test (:func:`calibration_images` refuses
``"test"``). Calibration uses no labels, but it does fit the model to the images it sees.

**The artefact** (``model/pneumonia_model_int8.onnx``) is a plain ONNX file — no pickled code: ONNX Runtime
reads a graph of operators and tensors. The series' metadata (classes, image size, mean/std, the INT8 model's
own threshold chosen on validation, the fingerprint of the FP32 checkpoint it came from, the calibration set,
the knobs of the run) lives in the file's ``metadata_props`` under ``cxr_meta`` as JSON (:func:`load_int8`
refuses a file without it with one line).
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from utils import fileio
from utils.checkpoint import FORMAT
from utils.errors import UserError
from utils.paths import notebook_path

if TYPE_CHECKING:
    import pandas as pd

INT8_ARCH = "resnet18-int8-onnx"
CALIBRATION_SPLITS = ("train", "val", "train+val")
API = "onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights, uint8 activations)"
META_KEY = "cxr_meta"


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


def onnx_status() -> tuple[bool, str]:
    """``(available, message)``: are ``onnx`` and ``onnxruntime`` importable (they are core dependencies)?"""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        return False, (f"the INT8 path needs {exc.name or 'onnx/onnxruntime'}: pip install -e . (core dependencies).")
    return True, f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}"


def _require_onnx() -> None:
    ok, msg = onnx_status()
    if not ok:
        raise UserError(msg)


# ------------------------------------------------------------------------------------- the graphs
def export_onnx(model: nn.Module, meta: Mapping[str, Any], path: str | os.PathLike, opset: int = 17) -> Path:
    """Export the FP32 model (input: the preprocessed float batch, dynamic batch size) to ONNX, atomically.

    Uses the TorchScript-based exporter (``dynamo=False``): it needs only ``onnx``, where the newer
    ``torch.export`` one also needs ``onnxscript``; its deprecation notice is silenced by message.
    """
    _require_onnx()
    path = Path(path)
    size = int(meta["image_size"])
    with fileio.atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r".*The feature will be removed.*", category=DeprecationWarning)
        torch.onnx.export(copy.deepcopy(model).cpu().eval(), (torch.zeros(1, 3, size, size),), str(tmp),
                          input_names=["input"], output_names=["logits"], opset_version=opset,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


def quantize_int8(model: nn.Module, calib_images_uint8: np.ndarray, meta: Mapping[str, Any],
                  int8_path: str | os.PathLike, fp32_path: str | os.PathLike | None = None,
                  batch_size: int = 16) -> Path:
    """Static INT8 quantisation of a float ResNet-18 with ONNX Runtime; returns the path of the INT8 ONNX file.

    ``calib_images_uint8``: (N, S, S) uint8 images from train/validation (:func:`calibration_images`),
    preprocessed with ``meta``'s mean/std exactly as at inference. The FP32 export goes to ``fp32_path`` (kept)
    or a temporary file next to ``int8_path``. ``model`` itself is not modified. Record the metadata with
    :func:`write_int8_meta` once the INT8 threshold is chosen.
    """
    _require_onnx()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from utils.train.model import preprocess

    images = np.asarray(calib_images_uint8)
    size = int(meta["image_size"])
    if images.dtype != np.uint8 or images.ndim != 3 or len(images) == 0:
        raise UserError(f"calibration images must be a non-empty uint8 array (N, S, S), got {images.dtype} "
                        f"{images.shape}.")
    if images.shape[1:] != (size, size):
        raise UserError(f"calibration images are {images.shape[1:]} but the model expects {size}×{size}.")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, len(images), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self.starts, None)
            if i is None:
                return None
            return {"input": preprocess(torch.from_numpy(images[i:i + batch_size]), meta["mean"], meta["std"]).numpy()}

    int8_path = Path(int8_path)
    keep_fp32 = fp32_path is not None
    fp32 = Path(fp32_path) if fp32_path is not None else int8_path.with_name(f".{int8_path.name}.fp32.onnx")
    pre = int8_path.with_name(f".{int8_path.name}.pre.onnx")
    try:
        export_onnx(model, meta, fp32)
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        with fileio.atomic_path(int8_path) as tmp:
            quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        pre.unlink(missing_ok=True)
        if not keep_fp32:
            fp32.unlink(missing_ok=True)
    return int8_path


# ------------------------------------------------------------------------------------- metadata
#: FP32 metadata keys that describe the INT8 model too.
_SHARED_META = ("classes", "image_size", "mean", "std", "profile", "data_source", "data_fingerprint", "trained_on",
                "explanation", "run")


def int8_meta(fp32_meta: Mapping[str, Any], *, threshold: float, fp32_fingerprint: str,
              calibration: Mapping[str, Any], threshold_rule: str, **extra: Any) -> dict[str, Any]:
    """Metadata of the INT8 model: what it shares with the FP32 one (classes, size, mean/std, data, explanation,
    knobs), its own ``threshold`` and ``threshold_rule``, ``arch``, and a ``quantization`` record."""
    import onnxruntime

    return {"format": FORMAT, **{k: fp32_meta[k] for k in _SHARED_META if k in fp32_meta}, "arch": INT8_ARCH,
            "threshold": float(threshold), "threshold_rule": threshold_rule, "phase": "int8",
            "fp32_fingerprint": fp32_fingerprint, "fp32_phase": fp32_meta.get("chosen_phase", fp32_meta.get("phase")),
            "quantization": {"method": "post-training static quantisation", "api": API,
                             "weights": "int8, per output channel, symmetric (zero-point 0)",
                             "activations": "uint8, per tensor, affine (min/max calibration)",
                             "preprocessing": "float, outside the graph (utils.train.model.preprocess)",
                             "calibration": dict(calibration), "onnxruntime": onnxruntime.__version__},
            **extra}


def write_int8_meta(path: str | os.PathLike, meta: Mapping[str, Any]) -> Path:
    """Store ``meta`` (JSON) in the ONNX file's ``metadata_props`` under :data:`META_KEY`, atomically."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != META_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=META_KEY, value=json.dumps(fileio.jsonable(dict(meta))))
    with fileio.atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


class Int8Model:
    """An INT8 ONNX model on the CPU with its metadata: ``model(x)`` maps a preprocessed float batch to logits
    (a torch tensor), so it is called like the FP32 network; :meth:`predict_proba` takes uint8 images."""

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any], threads: int = 2) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
        # no busy-waiting after a run: idle ORT threads would otherwise spin on the cores the next model (or a
        # notebook cell) needs, and interleaved timings would charge ORT's spinning to PyTorch
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path, self.meta = Path(path), dict(meta)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out)

    def predict_proba(self, images_uint8: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """P(PNEUMONIA) for uint8 images (N, S, S): the series' batched loop and probability, through this model."""
        from utils.train.model import batched_logits, pneumonia_probability

        return pneumonia_probability(batched_logits(self, images_uint8, self.meta, batch_size))


def load_int8(path: str | os.PathLike, threads: int = 2) -> Int8Model:
    """The INT8 model written by notebook 07; a one-line error for a missing, foreign or unmarked file."""
    _require_onnx()
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"INT8 model not found: {path} (create it with {notebook_path('int8')}).")
    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as exc:
        raise UserError(f"cannot read {path} as an ONNX model ({type(exc).__name__}); pass the INT8 model written "
                        f"by {notebook_path('int8')}.") from None
    if META_KEY not in props:
        raise UserError(f"{path} is an ONNX file without this project's metadata (no {META_KEY!r}); create the INT8 "
                        f"model with {notebook_path('int8')}.")
    meta = json.loads(props[META_KEY])
    if meta.get("arch") != INT8_ARCH:
        raise UserError(f"{path} holds a {meta.get('arch')!r} model, not {INT8_ARCH!r}.")
    return Int8Model(path, meta, threads)


def quantisation_table(path: str | os.PathLike) -> pd.DataFrame:
    """One row per quantised tensor of the INT8 graph, in graph order: the layer it belongs to (the ONNX node it
    feeds, e.g. ``/conv1/Conv``), whether it is a weight, a bias or an activation, its integer type, how many
    scales it has (one per output channel for weights) and its zero-point(s)."""
    import onnx
    import pandas as pd
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    feeds: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            feeds.setdefault(name, []).append(node.name or node.op_type)
    rows = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source, scale, zero = (list(node.input) + [""] * 3)[:3]
        scales, zeros = init.get(scale), init.get(zero) if zero else None
        if source in init:
            kind, dtype = ("bias" if init[source].dtype == np.int32 else "weight"), str(init[source].dtype)
        else:
            kind, dtype = "activation", str(zeros.dtype) if zeros is not None else "uint8"
        zp = ("all 0" if zeros is None or np.all(zeros == 0) else
              (int(zeros) if np.size(zeros) == 1 else "mixed"))
        rows.append({"layer": ", ".join(feeds.get(node.output[0], [])), "kind": kind, "dtype": dtype,
                     "scales": int(np.size(scales)) if scales is not None else 0, "zero_points": zp,
                     "scale": float(np.ravel(scales)[0]) if scales is not None and np.size(scales) == 1 else None})
    return pd.DataFrame(rows)
