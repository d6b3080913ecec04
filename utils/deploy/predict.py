"""The inference command: diagnosis, P(pneumonia) and a Grad-CAM overlay for X-ray files.

    python -m utils.deploy.predict --image_path x.jpeg [--model_path model/pneumonia_model.pt]
    pneumonia-predict --image_path folder/ other.png --output results.csv --json

The model is loaded once (``utils.train.model.load_model``: ``weights_only=True``, validated metadata); every
image goes through :func:`utils.data.images.read_image` (the same decoding as training), then ONE forward and
ONE backward pass of the main explanation (:func:`utils.explain.maps.resolve_explanation`: the map notebook 05
chose, explaining the PNEUMONIA class; the probability comes from the logits of that same forward pass). The
threshold is the one notebook 04 chose on validation (:func:`utils.artifacts.operating_threshold`); a checkpoint
without one needs ``--threshold``. See docs/INFERENCE.md.

``--int8 [PATH]`` predicts with the INT8 ONNX model of notebook 07 instead (:func:`utils.deploy.int8.load_int8`;
threshold from its own metadata). ONNX Runtime computes no gradients, so no map can be taken from it: the
overlay is computed with the FP32 checkpoint only when ``--model_path`` is given explicitly (and it must be the
checkpoint the INT8 model was quantised from); otherwise there is no overlay and the output says why.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.artifacts import operating_threshold
from utils.cli import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, Parser, one_line, print_error, run_main
from utils.data.images import IMAGE_SUFFIXES, image_warnings, list_images, read_image
from utils.errors import UserError
from utils.fileio import atomic_write
from utils.paths import ARTIFACTS, artifact, notebook_path, project_root

#: Two-panel overlay figure: 10 × 5 inches at 100 dpi = a 1000 × 500 px PNG.
FIG_SIZE, FIG_DPI = (10.0, 5.0), 100
FIELDS = ("image", "diagnosis", "probability", "threshold", "threshold_source", "explanation", "layer",
          "layer_source", "explained_class", "overlay", "warnings", "model_path", "fingerprint")
#: Extra columns with --int8: the precision that decided, and the FP32 checkpoint the overlay came from (or empty).
INT8_FIELDS = ("precision", "explained_by", "overlay_note")
INT8_NO_CAM = ("the INT8 model has no gradients, so no map; add --model_path FP32.pt to explain with the "
               "FP32 checkpoint it was quantised from")

EPILOG = f"""\
outputs:
  one image  a short report on stdout (--json: one JSON object) and a two-panel PNG (X-ray | Grad-CAM)
             at --output (a .png path or a folder); default assets/predictions/<stem>_gradcam.png
             under the project root.
  batch      (several paths, a folder, or --output X.csv) one CSV row per image, on stdout or in X.csv
             (--json: a JSON list on stdout). Overlays go to X_overlays/ beside X.csv, else to --output
             when it is a folder, else to assets/predictions/. A bad file is reported on stderr in one
             line and skipped; the other images still get results.
The map is the main explanation of the series: the one notebook 05 chose on validation and recorded in the
checkpoint as 'explanation' (without one, the unmeasured default utils.explain.spec.UNMEASURED_EXPLANATION;
a recorded one the model cannot use is an error); it explains the PNEUMONIA class (red = evidence for
pneumonia). --layer asks for plain Grad-CAM on another layer. Diagnosis = PNEUMONIA when
P(pneumonia) >= threshold: the one notebook 04 chose on validation and recorded in the checkpoint, unless
--threshold (a checkpoint without a recorded threshold needs --threshold). An image that does not look like the
grayscale radiographs the model was trained on (colour, or under 64 px) gets a warning. Inputs are never
overwritten; files are written atomically.

INT8 (--int8, the model of {notebook_path('int8')}; the flag alone means {ARTIFACTS["int8_model"]}):
  diagnosis and P(pneumonia) come from the INT8 ONNX model on the CPU, at its own threshold (chosen on
  validation for it). ONNX Runtime has no autograd, so no map can be taken from the INT8 model: with an
  explicit --model_path, the overlay is the main explanation of that FP32 checkpoint (it must be the
  one the INT8 model was quantised from; the figure says "FP32 model"); without it, no overlay is made and
  the output says why. Results then carry precision=int8, explained_by (the FP32 checkpoint, or empty) and
  overlay_note (why there is no overlay, or empty).

exit codes:
  0  every image succeeded
  1  some images failed (reported on stderr); results for the others were written
  2  nothing could be done: usage error, bad model/checkpoint, or every image failed
"""


# ----------------------------------------------------------------------------------------- outputs
def default_output_dir() -> Path:
    """Where overlays go by default: ``assets/predictions/`` under the project root."""
    return project_root() / "assets" / "predictions"


def plan_overlays(images: Sequence[Path], folder: Path, protected: Iterable[Path] = ()) -> dict[Path, Path]:
    """``<folder>/<stem>_gradcam.png`` for each image; clashes (same stem, or an input file) get ``-2``, ``-3``…"""
    taken = {Path(p).resolve() for p in [*images, *protected]}
    plan: dict[Path, Path] = {}
    for img in images:
        cand, n = folder / f"{img.stem}_gradcam.png", 2
        while cand.resolve() in taken:
            cand, n = folder / f"{img.stem}_gradcam-{n}.png", n + 1
        taken.add(cand.resolve())
        plan[img] = cand
    return plan


@dataclass
class OutputPlan:
    """Where results go, decided from ``--output`` and the number of inputs (:func:`plan_outputs`)."""

    batch: bool  # several images (or a folder, or a .csv output): a table instead of a report
    csv_path: Path | None = None
    overlay_dir: Path | None = None
    single_png: Path | None = None


def plan_outputs(inputs: Sequence[Path], output: str | None) -> OutputPlan:
    """Single image or batch, and the table / overlay paths ``--output`` asks for; a one-line error for an output
    that does not fit (a .png for several images, another suffix for one)."""
    out = Path(output).expanduser() if output else None
    out_is_dir = out is not None and (out.is_dir() or str(output).endswith(("/", os.sep)))
    suffix = out.suffix.lower() if out is not None and not out_is_dir else ""
    plan = OutputPlan(batch=len(inputs) > 1 or any(p.is_dir() for p in inputs) or suffix == ".csv")
    if plan.batch:
        if suffix == ".csv" and out is not None:
            plan.csv_path, plan.overlay_dir = out, out.parent / f"{out.stem}_overlays"
        elif suffix:
            raise UserError(f"--output {out}: with several images, give a .csv path or a folder for the overlays.")
        elif out is not None:
            plan.overlay_dir = out
    elif out is not None:
        if out_is_dir:
            plan.overlay_dir = out
        elif suffix == ".png":
            plan.single_png = out
        else:
            raise UserError(f"--output {out}: give a .png path (or a folder) for the overlay of a single image.")
    return plan


def collect_images(inputs: Sequence[Path], recursive: bool) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The image files of ``inputs`` (folders expanded, each file once) and the empty folders as failures (each
    reported on stderr in one line)."""
    files: list[Path] = []
    failures: list[tuple[Path, str]] = []
    for p in inputs:
        if p.is_dir():
            found = list_images(p, recursive=recursive)
            if not found:
                failures.append((p, f"{p}: folder holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                                    f"{'' if recursive else 'use -r for sub-folders, or '}check the path."))
                print_error(failures[-1][1])
            files += found
        else:
            files.append(p)
    seen: set[Path] = set()
    unique = []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique, failures


def check_outputs(plan: OutputPlan, files: Sequence[Path]) -> None:
    """No output overwrites an input, and the table's folder can be written — or a one-line error."""
    inputs = {f.resolve() for f in files}
    if plan.csv_path is not None and plan.csv_path.resolve() in inputs:
        raise UserError(f"--output {plan.csv_path} is one of the input files; it will not be overwritten.")
    if plan.single_png is not None and plan.single_png.resolve() in inputs:
        raise UserError(f"--output {plan.single_png} is the input image; it will not be overwritten.")
    if plan.csv_path is not None:
        writable(plan.csv_path, "the --output table")


def writable(path: Path, what: str) -> Path:
    """``path`` (a file to write, or a folder to write into) can be written, or a one-line error naming it."""
    folder = path if path.suffix == "" else path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".cxr-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write {what} {path}: {exc.strerror or type(exc).__name__} — choose another "
                        "location.") from None
    return path


def overlay_files(plan: OutputPlan, files: Sequence[Path]) -> dict[Path, Path]:
    """The PNG of each image: ``--output`` as given, else (only now: explicit outputs and --no-overlay need no
    project folder) ``assets/predictions/``."""
    if plan.single_png is not None:
        return {files[0]: writable(plan.single_png, "the overlay")}
    plan.overlay_dir = plan.overlay_dir if plan.overlay_dir is not None else default_output_dir()
    return plan_overlays(files, writable(plan.overlay_dir, "the overlay"))


def save_overlay_figure(path: Path, gray: np.ndarray, cam_map: np.ndarray, *, probability: float,
                        diagnosis: str, threshold: float, layer: str, name: str, evidence: bool = True) -> Path:
    """Two panels (the X-ray as the model saw it | the map's overlay), written atomically as a PNG. ``evidence``:
    the map explains PNEUMONIA (Grad-CAM); False for a class-agnostic map (attention rollout)."""
    from matplotlib.figure import Figure

    from utils.explain.gradcam import overlay

    fig = Figure(figsize=FIG_SIZE, dpi=FIG_DPI)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.imshow(gray, cmap="gray", vmin=0, vmax=255)
    ax1.set_title(f"X-ray: {name}", fontsize=10)
    ax2.imshow(overlay(gray.astype(np.float32) / 255.0, np.clip(cam_map, 0.0, 1.0)))
    what = "evidence for PNEUMONIA" if evidence else "where the model attended (no class)"
    ax2.set_title(f"{layer}: {what}\nP(pneumonia) = {probability:.3f}", fontsize=10)
    for ax in (ax1, ax2):
        ax.axis("off")
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.84, wspace=0.06)
    fig.suptitle(f"{diagnosis}  (P(pneumonia) = {probability:.3f}, threshold {threshold:.3f})", fontsize=12)
    return atomic_write(Path(path), lambda fh: fig.savefig(fh, format="png", dpi=FIG_DPI))


# ------------------------------------------------------------------------------------------ the core
def _stderr_line(text: str, progress: bool) -> None:
    """One line on stderr that does not break a running progress bar."""
    if progress:
        from tqdm.auto import tqdm
        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


def predict_images(model, meta: dict, paths: Sequence[str | os.PathLike], *, threshold: float | None = None,
                   layer: str | None = None, overlays: dict[Path, Path] | None = None, explain: bool = True,
                   progress: bool = False, on_error: Callable[[Path, str], None] | None = None,
                   scorer: Callable[[Any], Any] | None = None, explained_by: Mapping[str, Any] | None = None,
                   explained_name: str | None = None) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Predict (and explain) every image; returns ``(results, failures)``.

    ``results``: one dict per successful image (keys of :data:`FIELDS` but model_path/fingerprint).
    ``failures``: ``(path, one-line message)``; ``on_error`` is called as each happens. ``overlays`` maps
    an image path to its PNG (missing = no figure); ``explain=False`` skips Grad-CAM (forward only).
    The map is :func:`utils.explain.maps.resolve_explanation` of ``explained_by`` (the metadata of the checkpoint
    that explains; default ``meta``; ``explained_name`` names it in messages). Hooks are registered once and always
    removed; the model's train/eval flags are restored. ``scorer`` (the INT8 model: CPU input → logits) gives the
    probability instead; ``model`` then only explains (Grad-CAM of the FP32 model) and may be ``None`` when
    ``explain=False``.
    """
    from contextlib import nullcontext

    import torch

    from utils.explain.gradcam import eval_mode
    from utils.explain.maps import Explainer, resolve_explanation
    from utils.explain.spec import ROLLOUT
    from utils.train.model import PNEUMONIA, pneumonia_probability, preprocess

    files = [Path(p) for p in paths]
    overlays = overlays or {}
    if threshold is None:
        t, rule = operating_threshold(meta)
        t_source = f"{'INT8 model' if scorer is not None else 'checkpoint'}: {rule}"
    else:
        t, t_source = float(threshold), "--threshold"
    if model is None and (scorer is None or explain):
        raise ValueError("predict_images needs a model (a scorer alone cannot explain)")
    spec, layer_source = (resolve_explanation(explained_by if explained_by is not None else meta, model, layer,
                                              name=explained_name) if explain else (None, None))
    classes, size = list(meta["classes"]), int(meta["image_size"])
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    results: list[dict[str, Any]] = []
    failures: list[tuple[Path, str]] = []
    it: Iterable[Path] = files
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(files, desc="predict", unit="img", file=sys.stderr, disable=None)
    # the main explanation (notebook 05's choice; plain Grad-CAM on --layer): ONE batched forward + backward
    cam = Explainer(model, spec) if spec is not None else None
    rollout = spec is not None and spec["method"] == ROLLOUT
    explained = None if spec is None else ("none (attention rollout is class-agnostic)" if rollout
                                           else classes[PNEUMONIA])
    try:
        with eval_mode(model) if model is not None else nullcontext():
            for p in it:
                try:
                    notes = image_warnings(p)
                    for note in notes:
                        _stderr_line(f"warning: {note}", progress)
                    gray = read_image(p, size)
                    x = preprocess(torch.from_numpy(gray)[None].to(device), meta["mean"], meta["std"])
                    if cam is not None:
                        maps, logits = cam(x, targets=PNEUMONIA)
                    elif scorer is None:
                        with torch.inference_mode():
                            logits = model(x)
                    if scorer is not None:
                        logits = torch.as_tensor(scorer(x.cpu()))
                    prob = float(pneumonia_probability(logits)[0])
                    diagnosis = classes[PNEUMONIA] if prob >= t else classes[1 - PNEUMONIA]
                    out = overlays.get(p) if cam is not None else None
                    if out is not None and spec is not None:
                        label = spec["name"] if scorer is None else f"{spec['name']}, FP32 model"
                        try:
                            save_overlay_figure(out, gray, maps[0], probability=prob, diagnosis=diagnosis,
                                                threshold=t, name=p.name, layer=label, evidence=not rollout)
                        except OSError as exc:
                            raise UserError(f"cannot write the overlay {out}: {exc.strerror or type(exc).__name__} "
                                            "— choose another --output.") from None
                    results.append({"image": str(p), "diagnosis": diagnosis, "probability": prob, "threshold": t,
                                    "threshold_source": t_source, "explanation": spec["name"] if spec else None,
                                    "layer": spec["layer"] if spec else None, "layer_source": layer_source,
                                    "warnings": "; ".join(notes) or None,
                                    "explained_class": explained,
                                    "overlay": str(out) if out is not None else None})
                except (UserError, OSError, RuntimeError, ValueError) as exc:
                    msg = (one_line(exc) if isinstance(exc, UserError)
                           else f"{p}: {type(exc).__name__}: {one_line(exc)[:200]}")
                    failures.append((p, msg))
                    if on_error is not None:
                        on_error(p, msg)
    finally:
        if cam is not None:
            cam.release()
    return results, failures


# ------------------------------------------------------------------------------------------- the CLI
def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number strictly between 0 and 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (see ``--help``)."""
    p = Parser(prog="pneumonia-predict", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Pneumonia diagnosis and Grad-CAM overlay for chest X-rays (a teaching model, "
                            "not a medical device).", epilog=EPILOG)
    p.add_argument("--image_path", "--image-path", nargs="+", required=True, metavar="PATH",
                   help=f"image file(s) ({', '.join(IMAGE_SUFFIXES)}) and/or folders")
    p.add_argument("--model_path", "--model-path", default=None,
                   help=f"project checkpoint (default: {ARTIFACTS['model']}, the shipped model); "
                        "with --int8: the FP32 checkpoint "
                        "whose Grad-CAM explains the INT8 decision (no default: without it, no overlay)")
    p.add_argument("--output", "-o", help="single image: overlay .png path or folder; batch: .csv path or overlay folder")
    p.add_argument("--threshold", type=_threshold,
                   help="decision threshold in (0, 1) (default: the one notebook 04 chose, from the checkpoint)")
    p.add_argument("--json", action="store_true", help="print JSON (an object; a list in batch mode)")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda}", help="default: %(default)s")
    p.add_argument("--layer", help="plain Grad-CAM on this layer instead of the main explanation")
    p.add_argument("--no-overlay", "--no_overlay", dest="overlay", action="store_false",
                   help="skip Grad-CAM and the PNG (forward pass only)")
    p.add_argument("-r", "--recursive", action="store_true", help="look for images in sub-folders too")
    p.add_argument("--int8", nargs="?", const="", default=None, metavar="PATH",
                   help=f"predict with the INT8 model of notebook 07 (PATH, or the flag alone for "
                        f"{ARTIFACTS['int8_model']}); maps: see INT8 below")
    return p


@dataclass
class Predictor:
    """What predicts and what explains (:func:`load_predictor`)."""

    model: Any  # the FP32 model (None: INT8 without --model_path)
    meta: dict[str, Any]  # the deciding model's metadata (threshold, size, classes, normalisation)
    model_path: Path | None  # the FP32 checkpoint
    explained_by: dict[str, Any] | None = None  # the metadata of the checkpoint whose record chooses the map
    scorer: Any = None  # the INT8 model, or None
    int8_path: Path | None = None
    why_none: str = "--no-overlay"  # why there is no overlay, when there is none
    explain: bool = True
    fingerprint: str = field(default="", repr=False)


def load_predictor(args: argparse.Namespace) -> Predictor:
    """Load the model(s) once and check, before any work, that a threshold and the map can be had: a checkpoint
    without a recorded threshold needs --threshold; a bad --layer or an unusable recorded map is a usage error."""
    from utils.checkpoint import state_fingerprint
    from utils.explain.maps import resolve_explanation
    from utils.train.model import load_model, resolve_device

    if args.int8 is not None:
        pred = _load_int8(args)
    else:
        path = Path(args.model_path or artifact("model"))
        model, meta = load_model(path, resolve_device(args.device))
        pred = Predictor(model, meta, path, meta, explain=args.overlay,
                         fingerprint=state_fingerprint(model.state_dict()))
    if args.threshold is None:  # before any work: name the file and the way out
        try:
            operating_threshold(pred.meta, pred.int8_path if pred.int8_path is not None else pred.model_path)
        except UserError as exc:
            raise UserError(f"{exc} Or pass --threshold T to set one yourself.") from None
    if pred.model is not None and pred.explain:
        resolve_explanation(pred.explained_by or pred.meta, pred.model, args.layer, name=str(pred.model_path))
    return pred


def _load_int8(args: argparse.Namespace) -> Predictor:
    """The INT8 model for ``--int8``, and the FP32 checkpoint that explains it when ``--model_path`` is given (it
    must be the one the INT8 model was quantised from)."""
    from utils.checkpoint import state_fingerprint
    from utils.deploy.int8 import load_int8
    from utils.deploy.timing import file_fingerprint
    from utils.train.model import load_model, resolve_device

    int8_path = Path(args.int8).expanduser() if args.int8 else artifact("int8_model")
    if not int8_path.exists():
        hint = f"run {notebook_path('int8')} first" if not args.int8 else "check the path"
        raise UserError(f"INT8 model not found: {int8_path} ({hint}).")
    device = resolve_device(args.device)  # a bad --device is a usage error here too
    int8 = load_int8(int8_path)
    pred = Predictor(None, int8.meta, None, scorer=int8, int8_path=int8_path, explain=False,
                     fingerprint=file_fingerprint(int8_path))
    if args.model_path is None or not args.overlay:
        if args.layer is not None:
            raise UserError("--layer needs a map, which the INT8 model cannot give: add --model_path FP32.pt "
                            "(the checkpoint it was quantised from).")
        if args.overlay:  # no FP32 checkpoint: nothing can explain the INT8 decision
            pred.why_none = INT8_NO_CAM
        return pred
    model, fp32_meta = load_model(args.model_path, device)
    found, expected = state_fingerprint(model.state_dict()), int8.meta.get("fp32_fingerprint")
    if found != expected:
        raise UserError(f"--model_path {args.model_path} is not the checkpoint {int8_path} was quantised from "
                        f"(weights {found}, expected {expected}): its map would explain another model.")
    pred.model, pred.model_path, pred.explained_by, pred.explain = model, Path(args.model_path), fp32_meta, True
    return pred


def add_provenance(results: list[dict[str, Any]], pred: Predictor, model_path_arg: str | None) -> tuple[str, ...]:
    """The model columns of every result (which file decided, its fingerprint; with --int8 the precision, the FP32
    checkpoint that explained and why there is no overlay); returns the table's columns."""
    if pred.int8_path is None:
        for r in results:
            r.update(model_path=str(model_path_arg or pred.model_path), fingerprint=pred.fingerprint)
        return FIELDS
    for r in results:
        r.update(model_path=str(pred.int8_path), fingerprint=pred.fingerprint, precision="int8",
                 explained_by=str(model_path_arg) if r["layer"] else None,
                 overlay_note=None if r["overlay"] else pred.why_none)
    return FIELDS + INT8_FIELDS


def print_report(r: dict[str, Any], int8: bool, why_none: str) -> None:
    """The single-image report on stdout."""
    if int8:
        print(f"model:         INT8 {r['model_path']} (quantised, CPU)")
    print(f"image:         {r['image']}\n"
          f"diagnosis:     {r['diagnosis']}\n"
          f"P(pneumonia):  {r['probability']:.4f}  (PNEUMONIA when >= threshold)\n"
          f"threshold:     {r['threshold']:.3f}  (from {r['threshold_source']})")
    if r["layer"]:
        src = r["layer_source"] if r["layer_source"].startswith("default") else f"from {r['layer_source']}"
        of = f" of the FP32 checkpoint {r['explained_by']} (the INT8 model has no gradients)" if int8 else ""
        what = ("explaining the PNEUMONIA class (red = evidence for pneumonia)"
                if r["explained_class"] == "PNEUMONIA" else "class-agnostic (where the model attended)")
        print(f"map:           {r['explanation']} ({src}){of}, {what}")
    if r["warnings"]:
        print(f"warning:       {r['warnings']}")
    print(f"overlay:       {r['overlay'] or f'(none: {why_none})'}\n"
          "note:          a teaching model, not a medical device.")


def write_table(results: list[dict[str, Any]], fields: tuple[str, ...], csv_path: Path | None, as_json: bool) -> None:
    """The batch results: a CSV (atomically at ``csv_path``, else on stdout) and/or a JSON list on stdout."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in results)
    if csv_path is not None:
        try:
            atomic_write(csv_path, lambda fh: fh.write(buf.getvalue()), binary=False)
        except OSError as exc:
            raise UserError(f"cannot write the --output table {csv_path}: {exc.strerror or type(exc).__name__}.") from None
    if as_json:
        print(json.dumps(results, indent=1))
    elif csv_path is None:
        sys.stdout.write(buf.getvalue())


def run(args: argparse.Namespace) -> int:
    """Execute parsed arguments; returns the exit code (raises :class:`UserError` for usage mistakes)."""
    if args.layer is not None and not args.overlay:  # contradictory: a map on a layer, and no map at all
        raise UserError(f"--layer {args.layer} chooses the map and --no-overlay asks for none: drop one of them.")
    inputs = [Path(p).expanduser() for p in args.image_path]
    plan = plan_outputs(inputs, args.output)
    files, failures = collect_images(inputs, args.recursive)
    check_outputs(plan, files)
    if not files:  # only empty folders: already reported
        return EXIT_USAGE
    if not plan.batch:
        read_image(files[0])  # fail fast on a bad single image, before importing torch and loading the model
    pred = load_predictor(args)
    overlays = overlay_files(plan, files) if pred.explain else {}
    from tqdm.auto import tqdm

    def report(path: Path, msg: str) -> None:  # one line per bad file, without breaking the progress bar
        tqdm.write(f"error: {one_line(msg)}", file=sys.stderr)

    results, failed = predict_images(pred.model, pred.meta, files, threshold=args.threshold, layer=args.layer,
                                     overlays=overlays, explain=pred.explain, progress=plan.batch, on_error=report,
                                     scorer=pred.scorer, explained_by=pred.explained_by,
                                     explained_name=str(pred.model_path))
    failures += failed
    if not results:
        if plan.batch:
            print_error(f"no image could be processed ({len(failures)} failed).")
        return EXIT_USAGE
    fields = add_provenance(results, pred, args.model_path)
    if not plan.batch:
        if args.json:
            print(json.dumps(results[0]))
        else:
            print_report(results[0], pred.int8_path is not None, pred.why_none)
        return EXIT_OK
    write_table(results, fields, plan.csv_path, args.json)
    where = f"; table: {plan.csv_path}" if plan.csv_path else ""
    pics = f"; overlays in {plan.overlay_dir}" if pred.explain else ""
    if pred.why_none == INT8_NO_CAM:
        pics = "; no overlays (INT8 has no gradients: add --model_path for Grad-CAM of its FP32 checkpoint)"
    print(f"{len(results)} of {len(results) + len(failures)} images predicted{where}{pics}.", file=sys.stderr)
    return EXIT_PARTIAL if failures else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``pneumonia-predict``): returns the exit code; user mistakes print one line."""
    return run_main(lambda a: run(build_parser().parse_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
