"""The map runtime: the maps of a spec, and THE map of the series — decided once, from the checkpoint as it is now.

* :func:`resolve_explanation` / :func:`main_explanation` decide which spec explains a model: ``layer`` given
  (``--layer``) → plain Grad-CAM there; else the spec notebook 05 recorded in the checkpoint
  (:func:`utils.artifacts.recorded_explanation`); else, when none was recorded,
  :func:`utils.explain.spec.unmeasured_explanation`. A recorded spec that is unreadable, or names a layer the
  model lacks, is a one-line :class:`~utils.errors.UserError` naming the fix — never silently replaced.
* :func:`main_maps` — "the map of these images under the shipped model": every notebook, the studies and the
  inference command call it. Given the checkpoint's **path**, it reads the metadata *now*, so a notebook that
  recorded a new choice (notebook 05's :func:`utils.explain.choice.choose_and_record`) maps with that choice.
* :class:`Explainer` / :func:`explain` compute the maps of one spec in ONE batched forward + backward pass (the
  shifted copies are stacked); :func:`candidate_maps` computes every candidate of a choice from one shared pass.
* :func:`cell_geometry` — where a spec's cells are drawn when its map is upsampled (its ``anchor``): None for the
  library's convention, else each cell's receptive-field centre, measured once per model and layer;
* :func:`map_grid` / :func:`pool_maps` — the cell grid a spec's map is computed on, and maps averaged onto a
  coarser grid: two maps are compared at *equal resolution* (notebook 09) by pooling both onto the coarser grid.
"""
from __future__ import annotations

import os
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.artifacts import recorded_explanation
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.explain import gradcam as gradcam_module
from utils.explain.gradcam import (
    CellGeometry,
    GradCAM,
    Targets,
    cam_steps,
    eval_mode,
    receptive_field_geometry,
    resolve_layer,
    shift_grid,
    shifted_size,
)
from utils.explain.spec import ROLLOUT, Spec, check_spec, make_spec, unmeasured_explanation
from utils.explain.vit import VIT_GRADCAM_LAYER, attention_rollout, layer_reshape
from utils.paths import notebook_path
from utils.train.model import pneumonia_probability, preprocess
from utils.train.vit import is_vit, token_grid

__all__ = [
    "CHECKPOINT_SOURCE",
    "DEFAULT_SOURCE",
    "LAYER_SOURCE",
    "Checkpoint",
    "Explainer",
    "candidate_maps",
    "cell_geometry",
    "checkpoint_meta",
    "explain",
    "main_explanation",
    "main_maps",
    "map_grid",
    "pool_maps",
    "resolve_explanation",
    "shift_border",
]

#: A checkpoint as the map functions take it: its path (read *now*) or its metadata (the caller vouches that it is
#: the current record).
Checkpoint = str | os.PathLike | Mapping[str, Any]
#: Where :func:`resolve_explanation`'s spec came from (shown by the inference command).
LAYER_SOURCE, CHECKPOINT_SOURCE, DEFAULT_SOURCE = "--layer", "checkpoint (notebook 05)", "default"


# ----------------------------------------------------------------------------------------- the decision
def checkpoint_meta(checkpoint: Checkpoint) -> Mapping[str, Any]:
    """The metadata of ``checkpoint``: read from the file now when it is a path, else the mapping itself."""
    if isinstance(checkpoint, Mapping):
        return checkpoint
    return load_checkpoint(checkpoint)["meta"]


def _where(checkpoint: Checkpoint) -> str:
    return Path(checkpoint).name if not isinstance(checkpoint, Mapping) else "the checkpoint"


def _has_layer(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return bool(name) and (not is_vit(model) or name.startswith("blocks."))  # ViT: token layers, read reshaped


def _gradcam_layers(model: nn.Module) -> list[str]:
    """Top-level layers a user may name with ``--layer``: those holding a convolution (a ViT: its blocks)."""
    if is_vit(model):
        return [VIT_GRADCAM_LAYER]
    return [n for n, m in model.named_children() if any(isinstance(c, nn.Conv2d) for c in m.modules())]


def _check_asked_layer(model: nn.Module, layer: str) -> None:
    ok = _has_layer(model, layer) and (is_vit(model) or any(isinstance(c, nn.Conv2d)
                                                            for c in model.get_submodule(layer).modules()))
    if not ok:
        tops = ", ".join(_gradcam_layers(model)) or VIT_GRADCAM_LAYER
        raise UserError(f"--layer {layer!r} is not a layer Grad-CAM can read in this model; choose one of {tops} "
                        f"or a sub-block such as layer4.1.conv2 (a ViT: {VIT_GRADCAM_LAYER}).")


def resolve_explanation(checkpoint: Checkpoint, model: nn.Module | None = None, layer: str | None = None, *,
                        name: str | None = None) -> tuple[Spec, str]:
    """THE decision of which map explains a model, and where it came from (:data:`LAYER_SOURCE`,
    :data:`CHECKPOINT_SOURCE` or :data:`DEFAULT_SOURCE`).

    ``layer`` (``--layer``) asks for plain Grad-CAM on that layer. Else the spec recorded in ``checkpoint`` (a path
    is read now) is used; without one, :func:`utils.explain.spec.unmeasured_explanation`. With ``model`` the spec is
    checked against it: a layer the model lacks is a one-line :class:`UserError` naming the fix, as is a recorded
    spec that cannot be read (``name``: how the message names the checkpoint; default its file name).
    """
    return _resolve(checkpoint_meta(checkpoint), name or _where(checkpoint), model, layer)


def _resolve(meta: Mapping[str, Any], where: str, model: nn.Module | None, layer: str | None) -> tuple[Spec, str]:
    if layer is not None:
        if model is not None:
            _check_asked_layer(model, layer)
        return make_spec("gradcam", layer), LAYER_SOURCE
    recorded = recorded_explanation(meta)
    if recorded is None:
        return unmeasured_explanation(model if model is not None else meta), DEFAULT_SOURCE
    fix = f"run {notebook_path('explanation')} again to record one for this model, or choose a map with --layer"
    try:
        spec = check_spec(recorded)
    except ValueError as exc:
        raise UserError(f"{where}: the recorded explanation cannot be read ({exc}); {fix}.") from None
    if model is not None:
        fits = is_vit(model) if spec["method"] == ROLLOUT else _has_layer(model, spec["layer"])
        if not fits:
            what = "attention rollout, which needs a Vision Transformer" if spec["method"] == ROLLOUT else \
                f"layer {spec['layer']!r}, which this model does not have"
            raise UserError(f"{where}: the recorded explanation {spec['name']!r} names {what}; {fix}.")
    return spec, CHECKPOINT_SOURCE


def main_explanation(checkpoint: Checkpoint, model: nn.Module | None = None, layer: str | None = None) -> Spec:
    """THE explanation of a checkpoint (a path is read now), used for every map of the series: the spec of
    :func:`resolve_explanation`."""
    return resolve_explanation(checkpoint, model, layer)[0]


def main_maps(model: nn.Module, checkpoint: Checkpoint, images: np.ndarray, targets: Targets = 1,
              batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """THE maps of uint8 images (N, S, S) under a model: its :func:`main_explanation`, preprocessed with the
    checkpoint's normalisation. Pass the checkpoint's path so the record is read now. Returns
    ``(maps (N, S, S) in [0, 1], P(PNEUMONIA) (N,) of the same pass)``; ``targets`` default 1 = PNEUMONIA."""
    meta = checkpoint_meta(checkpoint)
    spec, _ = _resolve(meta, _where(checkpoint), model, None)
    x = preprocess(torch.as_tensor(np.asarray(images)), meta["mean"], meta["std"])
    maps, logits = explain(model, x, spec, targets, batch_size)
    return maps, pneumonia_probability(logits)


# ----------------------------------------------------------------------------------------- computing maps
class Explainer:
    """The maps of one spec; a context manager like :class:`utils.explain.gradcam.GradCAM` (hooks never leak).

    >>> with Explainer(model, make_spec("gradcam", "layer3", (0, 8))) as ex:
    ...     maps, logits = ex(x, targets=1)   # ONE batched forward + backward over the shifted copies
    """

    def __init__(self, model: nn.Module, spec: Mapping[str, Any]) -> None:
        self.spec = check_spec(spec)
        self.model = model
        self.shifts = shift_grid(self.spec["shifts"])
        if self.spec["method"] == ROLLOUT and not is_vit(model):
            raise ValueError("attention rollout explains a Vision Transformer, not this model")
        self._cam = None if self.spec["method"] == ROLLOUT else GradCAM(
            model, self.spec["layer"], self.spec["method"], reshape=layer_reshape(model),
            cells=cell_geometry(model, self.spec))

    def __call__(self, x: torch.Tensor, targets: Targets = None
                 ) -> tuple[np.ndarray, torch.Tensor]:
        """``(maps (N, H, W) in [0, 1], logits (N, C) of the unshifted images)`` for a batch ``x`` (rollout
        ignores ``targets``: it is class-agnostic)."""
        if self._cam is None:
            return attention_rollout(self.model, x)
        if len(self.shifts) == 1:
            return self._cam(x, targets)
        return self._cam.shift_averaged(x, targets, self.shifts, shift_border(self.model))

    def release(self) -> None:
        """Remove the hooks (idempotent)."""
        if self._cam is not None:
            self._cam.release()

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()


_GEOMETRY: weakref.WeakKeyDictionary[nn.Module, dict[str, CellGeometry]] = weakref.WeakKeyDictionary()


def cell_geometry(model: nn.Module, spec: Mapping[str, Any]) -> CellGeometry | None:
    """Where ``spec``'s map draws its layer's cells (:func:`utils.explain.gradcam.upsample_cells`): None for
    ``anchor="library"`` (the usual bilinear resize); for ``"receptive_field"`` each cell's receptive-field centre,
    measured on the model (:func:`utils.explain.gradcam.receptive_field_geometry`, once per model and layer). A ViT's
    cells are its patches, and their geometry is the patch embedding's (non-overlapping: each patch centred on its
    own block of pixels, which is where the library draws it too — the anchoring changes nothing there)."""
    spec = check_spec(spec)
    if spec["anchor"] == "library" or spec["method"] == ROLLOUT:
        return None
    known = _GEOMETRY.setdefault(model, {})
    if spec["layer"] not in known:
        if is_vit(model):
            proj = model.get_submodule("patch_embed.proj")
            known[spec["layer"]] = receptive_field_geometry(proj, proj)
        else:
            known[spec["layer"]] = receptive_field_geometry(model, spec["layer"])
    return known[spec["layer"]]


def shift_border(model: nn.Module) -> str:
    """How shift averaging treats the image border for ``model`` (:data:`utils.explain.gradcam.BORDERS`): the series'
    setting (:data:`utils.explain.gradcam.SHIFT_BORDER`, read at call time), except ``"partial"`` for a ViT, whose
    fixed position embeddings take no larger copies."""
    return "partial" if is_vit(model) else gradcam_module.SHIFT_BORDER


def _chunks(n: int, per_chunk: int) -> list[slice]:
    per_chunk = max(1, per_chunk)
    return [slice(i, min(i + per_chunk, n)) for i in range(0, n, per_chunk)]


def explain(model: nn.Module, x: torch.Tensor, spec: Mapping[str, Any], targets: Targets = None,
            batch_size: int = 64) -> tuple[np.ndarray, torch.Tensor]:
    """Maps of ``spec`` for a preprocessed batch ``x`` (N, 3, H, W): ``(maps, logits)`` as :class:`Explainer`.

    Images are processed in chunks of at most ``batch_size`` copies (N × shifts), one pass per chunk.
    ``targets``: None = predicted class, an int, or N ints.
    """
    spec = check_spec(spec)
    per = max(1, batch_size // len(shift_grid(spec["shifts"])))
    t = None if targets is None or isinstance(targets, (int, np.integer)) else np.asarray(targets).ravel()
    maps, logits = [], []
    with Explainer(model, spec) as ex:
        for sl in _chunks(len(x), per):
            m, lg = ex(x[sl], targets if t is None else t[sl])
            maps.append(m)
            logits.append(lg.cpu())
    if not maps:
        return np.zeros((0, *x.shape[-2:]), np.float32), torch.zeros((0, 0))
    return np.concatenate(maps), torch.cat(logits)


class _Tap:
    """Records a layer's output and the gradient reaching it, without cutting the graph: used for layers
    that run *after* the layer a :class:`~utils.explain.gradcam.GradCAM` hooks, so one pass serves both."""

    def __init__(self, module: nn.Module) -> None:
        self.act: torch.Tensor | None = None
        self.grad: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.act, self.grad = None, None
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.requires_grad:
            self.act = output.detach().clone()  # a copy: later in-place ops cannot change it
            output.register_hook(self._keep)

    def _keep(self, grad: torch.Tensor) -> None:
        self.grad = grad.detach()

    def release(self) -> None:
        self._handle.remove()
        self.act = self.grad = None


def _maps_of(spec: Spec, act: torch.Tensor, grad: torch.Tensor, grid: list[tuple[int, int]], n: int,
             size: tuple[int, int], border: str, cells: CellGeometry | None) -> np.ndarray:
    """One spec's maps (n, H, W) from the activations/gradients (S×N, K, h, w) of a pass over ``grid`` (copies made
    with ``border``; ``size``: the copies' size; ``cells``: where its cells are drawn, :func:`cell_geometry`)."""
    keep = [k for k, (dy, dx) in enumerate(grid) if dy in spec["shifts"] and dx in spec["shifts"]]
    idx = torch.as_tensor([k * n + i for k in keep for i in range(n)])
    a, g = act.index_select(0, idx).float(), grad.index_select(0, idx).float()
    return cam_steps(a, g, spec["method"], size, [grid[k] for k in keep], border, grid, cells).maps.cpu().numpy()


def candidate_maps(model: nn.Module, x: torch.Tensor, candidates: Sequence[Mapping[str, Any]],
                   targets: Targets = 1, batch_size: int = 64, progress: bool = False
                   ) -> tuple[dict[str, np.ndarray], torch.Tensor, float]:
    """Maps of every candidate for ``x``, sharing work: normally ONE batched forward + backward pass over
    the union of the shifts the candidates need. A :class:`~utils.explain.gradcam.GradCAM` hooks the earliest
    candidate layer; later layers (``layer4`` after ``layer3``) are read from the same pass. Every
    weighting and shift set is then derived from the recorded activations and gradients
    (:func:`utils.explain.gradcam.cam_steps`), and so is every anchor (:func:`cell_geometry`: an upsampling, not a
    pass). With the ``"complete"`` border (:func:`shift_border`) each copy is
    padded for the whole shift set, so its unshifted copy is not the image itself: one pass per distinct shift set
    then, so that every candidate's maps equal :func:`explain`'s.

    Returns ``({name: maps (N, H, W)}, logits (N, C) of the unshifted images, seconds per image)``.
    ``targets`` default 1 = PNEUMONIA (the evidence for pneumonia).
    """
    every = [check_spec(c) for c in candidates]
    names = [s["name"] for s in every]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {names}")
    specs = [s for s in every if s["method"] != ROLLOUT]
    rollouts = [s for s in every if s["method"] == ROLLOUT]
    if rollouts and not is_vit(model):
        raise ValueError("attention rollout explains a Vision Transformer, not this model")
    for s in specs:
        resolve_layer(model, s["layer"])  # a bad layer fails before any work
    cells = {s["name"]: cell_geometry(model, s) for s in specs}
    t_all = None if targets is None or isinstance(targets, (int, np.integer)) else np.asarray(targets).ravel()
    size = (int(x.shape[-2]), int(x.shape[-1]))
    border = shift_border(model)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    logits_out: torch.Tensor | None = None
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(x), desc="explanations", unit="img", leave=False)
    reshape = layer_reshape(model)
    if rollouts:
        roll, logits_out = attention_rollout(model, x)
        for s in rollouts:
            out[s["name"]].append(roll)
    if border == "partial":  # the unshifted copy is the image: every shift set shares one pass
        groups = [specs] if specs else []
    else:
        sets = dict.fromkeys(tuple(s["shifts"]) for s in specs)
        groups = [[s for s in specs if tuple(s["shifts"]) == key] for key in sets]
    for group in groups:
        grid = shift_grid(sorted({o for s in group for o in s["shifts"]}))
        copy_size = shifted_size(size, grid, border)
        pending = sorted(dict.fromkeys(s["layer"] for s in group), key=lambda name: order.get(name, -1))
        if bar is not None:
            bar.reset()
        while pending:  # one pass, unless a later layer got no gradient through the first one's graph
            first, later = pending[0], pending[1:]
            served, logits_pass = {first}, []
            with GradCAM(model, first, reshape=reshape) as cam:
                taps = {name: _Tap(model.get_submodule(name)) for name in later}
                try:
                    for k, sl in enumerate(_chunks(len(x), batch_size // len(grid))):
                        xs = x[sl]
                        tt = targets if t_all is None else t_all[sl]
                        _, lg = cam(xs, tt) if len(grid) == 1 else cam.shift_averaged(xs, tt, grid, border)
                        logits_pass.append(lg.cpu())
                        assert cam.activations is not None and cam.gradients is not None
                        rec: dict[str, tuple[Any, Any]] = {first: (torch.from_numpy(cam.activations),
                                                                   torch.from_numpy(cam.gradients))}
                        for name, tap in taps.items():
                            if k == 0 and tap.grad is not None:
                                served.add(name)
                            if name in served:
                                rec[name] = (tap.act, tap.grad)
                        for s in group:
                            if s["layer"] in rec:
                                out[s["name"]].append(_maps_of(s, *rec[s["layer"]], grid, len(xs), copy_size,
                                                               border, cells[s["name"]]))
                        if bar is not None:
                            bar.update(len(xs))
                finally:
                    for tap in taps.values():
                        tap.release()
            if logits_out is None:
                logits_out = torch.cat(logits_pass) if logits_pass else torch.zeros((0, 0))
            pending = [name for name in pending if name not in served]
            if bar is not None and pending:
                bar.reset()
    if bar is not None:
        bar.close()
    seconds = (time.perf_counter() - start) / max(len(x), 1)
    maps = {n: (np.concatenate(v) if v else np.zeros((0, *size), np.float32)) for n, v in out.items()}
    return maps, logits_out if logits_out is not None else torch.zeros((0, 0)), seconds


# ----------------------------------------------------------------------------------------- resolution
def map_grid(model: nn.Module, spec: Mapping[str, Any], image_size: int | Sequence[int]) -> tuple[int, int]:
    """The cell grid (rows, columns) ``spec``'s maps are computed on for images of ``image_size``: the output grid
    of its layer (one dry forward pass), a ViT's patch grid (attention rollout included). Shift averaging moves a
    map's peak between cells but does not make the layer see finer detail: the grid is the map's resolution."""
    spec = check_spec(spec)
    if is_vit(model):
        return token_grid(model)
    h, w = (int(image_size), int(image_size)) if isinstance(image_size, (int, np.integer)) else \
        (int(image_size[0]), int(image_size[1]))
    shapes: list[tuple[int, int]] = []
    handle = resolve_layer(model, spec["layer"]).register_forward_hook(
        lambda m, i, o: shapes.append((int(o.shape[-2]), int(o.shape[-1]))))
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros((1, 3, h, w), device=next(model.parameters()).device))
    finally:
        handle.remove()
    return shapes[0]


def pool_maps(maps: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """Maps (N, H, W) averaged over the cells of a ``grid`` = (rows, columns) and drawn back at (H, W): each cell
    holds its mean, so the share of mass in any region is the cell masses weighted by how much of each cell the
    region covers. Each map is then divided by its maximum (fractions of mass unchanged; a map with no mass stays
    zero). A uniform map stays uniform: an image-blind reference scores the same before and after pooling.
    Cells split the image as evenly as the pixels allow (``np.linspace`` edges)."""
    a = np.asarray(maps, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {a.shape}")
    gh, gw = int(grid[0]), int(grid[1])
    h, w = a.shape[1:]
    if not (1 <= gh <= h and 1 <= gw <= w):
        raise ValueError(f"a grid of {gh}×{gw} cells does not fit maps of {h}×{w} pixels")
    rows, cols = (np.linspace(0, n, g + 1).round().astype(int) for n, g in ((h, gh), (w, gw)))
    sums = np.add.reduceat(np.add.reduceat(a, rows[:-1], axis=1), cols[:-1], axis=2)
    means = sums / (np.diff(rows)[:, None] * np.diff(cols)[None, :])
    top = means.max(axis=(1, 2), keepdims=True, initial=0.0)
    means = np.divide(means, top, out=np.zeros_like(means), where=top > 0)
    return np.repeat(np.repeat(means, np.diff(rows), axis=1), np.diff(cols), axis=2).astype(np.float32)
