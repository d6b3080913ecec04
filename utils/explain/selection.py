"""The main explanation: which saliency map the series shows, chosen on validation data by measurement.

Grad-CAM has knobs — the layer, the channel weighting, shift averaging — and they matter more than their
names suggest. On a 128 px input ``layer4`` of a ResNet-18 is a 4×4 grid (7×7 at 224 px): its peak can
only land on one of 16 cell centres, 32 px apart, whatever the model saw. ``layer3`` is 8×8, and averaging
its maps over a few shifted copies of the image (:func:`utils.explain.gradcam.shift_averaged_gradcam`) moves the
peak off the cell grid. Which combination localises best is a *measurement*, so:

* :data:`EXPLANATION_CANDIDATES` lists a few specs (plain dicts, storable in a checkpoint's metadata);
* :func:`choose_explanation` scores every candidate on the **validation** true positives that have a
  ground-truth lesion mask — near-pointing first (map maximum within 5 % of the image size of a
  lesion), then pointing, then energy inside the lesion — and returns the best spec and the table;
* :func:`score_explanations` gives the same table on any split (notebook 05 reports the test set);
* :func:`explain` / :class:`Explainer` compute the maps of a spec in ONE batched forward + backward
  pass (the shifted copies are stacked), for notebooks 05/06 and the inference command.

A spec is ``{"name", "method", "layer", "shifts"}``: ``method`` is a channel weighting of
:data:`utils.explain.gradcam.WEIGHTINGS` (``"gradcam"``, ``"xgradcam"``, ``"gradcam++"``), ``shifts`` the
per-axis pixel offsets (``[0]`` = no shift averaging; ``[0, 8]`` = the 4 shifts ``{0, 8}²``).
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from utils.artifacts import recorded_explanation
from utils.explain import localisation as loc
from utils.explain.gradcam import (
    WEIGHTINGS,
    GradCAM,
    Targets,
    average_unshifted,
    channel_weights,
    normalise_maps,
    resolve_layer,
    shift_grid,
)
from utils.explain.vit import VIT_GRADCAM_LAYER, attention_rollout, layer_reshape
from utils.train.model import preprocess
from utils.train.vit import is_vit

__all__ = [
    "DEFAULT_EXPLANATION",
    "EXPLANATION_CANDIDATES",
    "UNMEASURED_EXPLANATION",
    "VIT_EXPLANATION_CANDIDATES",
    "Explainer",
    "candidate_maps",
    "candidates_for",
    "check_spec",
    "choose_explanation",
    "explain",
    "main_explanation",
    "main_maps",
    "make_spec",
    "score_explanations",
    "true_positive_index",
    "unmeasured_explanation",
]

Spec = dict[str, Any]
_METHOD_NAMES = {"gradcam": "Grad-CAM", "xgradcam": "XGradCAM", "gradcam++": "Grad-CAM++"}
#: The class-agnostic ViT method (:func:`utils.explain.vit.attention_rollout`): a spec method, not a CAM weighting.
ROLLOUT = "rollout"
#: Columns of the tables returned by :func:`score_explanations` / :func:`choose_explanation`.
TABLE_COLUMNS = ("method", "weighting", "layer", "shifts", "copies", "pointing", "near", "energy", "area", "n",
                 "n_pointing", "n_near", "n_skipped", "baseline")


def make_spec(method: str = "gradcam", layer: str = "layer4", shifts: Sequence[int] = (0,),
              name: str | None = None) -> Spec:
    """A validated explanation spec (a plain dict: it goes into checkpoint metadata and JSON). ``method`` is a
    Grad-CAM weighting (:data:`utils.explain.gradcam.WEIGHTINGS`) or ``"rollout"`` (a ViT's attention rollout,
    over all its blocks: ``layer="blocks"``, no shifts)."""
    if method == ROLLOUT:
        if sorted({int(v) for v in shifts}) != [0]:
            raise ValueError("attention rollout takes no shifts")
        return {"name": str(name or "attention rollout"), "method": ROLLOUT, "layer": "blocks", "shifts": [0]}
    if method not in WEIGHTINGS:
        raise ValueError(f"unknown explanation method {method!r}: choose one of {', '.join(WEIGHTINGS)} or "
                         f"{ROLLOUT!r}")
    offs = sorted({int(s) for s in shifts})
    if 0 not in offs:
        raise ValueError(f"shifts must include 0 (the unshifted image), got {list(shifts)}")
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"layer must be a module name such as 'layer3', got {layer!r}")
    if name is None:
        label = _METHOD_NAMES[method]
        name = (f"{label} @ {layer}" if len(offs) == 1
                else f"shift-averaged {label} @ {layer} ({len(offs) ** 2} shifts)")
    return {"name": str(name), "method": method, "layer": layer, "shifts": offs}


def check_spec(spec: Mapping[str, Any]) -> Spec:
    """A spec read from elsewhere (metadata, JSON), validated and completed; ValueError if unusable."""
    if not isinstance(spec, Mapping) or "layer" not in spec:
        raise ValueError(f"an explanation spec is a dict with at least 'layer', got {spec!r}")
    return make_spec(spec.get("method", "gradcam"), spec["layer"], spec.get("shifts", (0,)), spec.get("name"))


#: The candidates notebook 05 compares on validation (all share one pass per layer, see :func:`candidate_maps`).
EXPLANATION_CANDIDATES: tuple[Spec, ...] = (
    make_spec("gradcam", "layer4"),
    make_spec("gradcam", "layer3"),
    make_spec("gradcam", "layer3", (0, 8)),
    make_spec("gradcam++", "layer3"),
    make_spec("xgradcam", "layer3"),
    make_spec("xgradcam", "layer3", (0, 8)),
)

#: The demo's main explanation: what notebook 05 chose on validation when this was written (shift-averaged
#: Grad-CAM on layer3, 4 shifts of 0/8 px; demo profile, 128 px, 3 + 3 epochs from the label-only phantom
#: backbone), and what tests/test_localisation_bar.py holds to its bar. Notebook 05 re-chooses on every run and
#: records its choice in the shipped checkpoint.
DEFAULT_EXPLANATION: Spec = make_spec("gradcam", "layer3", (0, 8))


#: The explanation without lesion masks to choose by (real data), and when none was recorded: plain Grad-CAM on
#: ``layer4``, the textbook choice — nothing measured here says another one localises better on real X-rays.
UNMEASURED_EXPLANATION: Spec = make_spec("gradcam", "layer4")

#: The ViT's candidates (notebook 09), chosen among by the same rule on validation: Grad-CAM through the reshape on
#: the last block's ``norm1`` (the pytorch-grad-cam convention, :mod:`utils.explain.vit`), the same averaged over
#: half-patch shifts, and attention rollout. Without a recorded choice a ViT is explained with the first.
VIT_EXPLANATION_CANDIDATES: tuple[Spec, ...] = (
    make_spec("gradcam", VIT_GRADCAM_LAYER),
    make_spec("gradcam", VIT_GRADCAM_LAYER, (0, 8)),
    make_spec(ROLLOUT),
)


def unmeasured_explanation(meta: Mapping[str, Any]) -> Spec:
    """The explanation of a checkpoint when nothing was measured: :data:`UNMEASURED_EXPLANATION` for the ResNet,
    Grad-CAM on the last block's ``norm1`` for a ViT."""
    return dict(VIT_EXPLANATION_CANDIDATES[0] if is_vit(meta) else UNMEASURED_EXPLANATION)


def candidates_for(meta_or_model: Mapping[str, Any] | nn.Module) -> tuple[Spec, ...]:
    """The explanation candidates of a checkpoint (its metadata) or model: the ResNet's or the ViT's."""
    return VIT_EXPLANATION_CANDIDATES if is_vit(meta_or_model) else EXPLANATION_CANDIDATES


def main_explanation(meta: Mapping[str, Any], layer: str | None = None) -> Spec:
    """THE explanation of a checkpoint, used for every map of the series (notebooks 05–09, the inference
    command): the spec notebook 05 recorded (:func:`utils.artifacts.recorded_explanation`) when it is usable
    and on ``layer`` (or ``layer`` is None); else plain Grad-CAM on ``layer``, or
    :data:`UNMEASURED_EXPLANATION` when no layer is asked for."""
    spec = recorded_explanation(meta)
    if spec is not None:
        try:
            checked = check_spec(spec)
        except ValueError:
            checked = None
        if checked is not None and (layer is None or checked["layer"] == layer):
            return checked
    return make_spec("gradcam", layer) if layer is not None else unmeasured_explanation(meta)


def main_maps(model: nn.Module, meta: Mapping[str, Any], images: np.ndarray, targets: Targets = 1,
              batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Maps of the main explanation for uint8 images (N, S, S): ``(maps (N, S, S), P(PNEUMONIA) (N,))``.

    The one function every notebook and the inference command call for "the map of this image"."""
    x = preprocess(torch.as_tensor(np.asarray(images)), meta["mean"], meta["std"])
    maps, logits = explain(model, x, main_explanation(meta), targets, batch_size)
    probs = torch.softmax(logits.float(), dim=1)[:, 1].numpy() if len(logits) else np.zeros(0)
    return maps, probs


# ----------------------------------------------------------------------------------------- computing maps
class Explainer:
    """The maps of one spec; a context manager like :class:`utils.explain.gradcam.GradCAM` (hooks never leak).

    >>> with Explainer(model, DEFAULT_EXPLANATION) as ex:
    ...     maps, logits = ex(x, targets=1)   # ONE batched forward + backward over the shifted copies
    """

    def __init__(self, model: nn.Module, spec: Mapping[str, Any]) -> None:
        self.spec = check_spec(spec)
        self.model = model
        self.shifts = shift_grid(self.spec["shifts"])
        if self.spec["method"] == ROLLOUT and not is_vit(model):
            raise ValueError("attention rollout explains a Vision Transformer, not this model")
        self._cam = None if self.spec["method"] == ROLLOUT else GradCAM(
            model, self.spec["layer"], self.spec["method"], reshape=layer_reshape(model))

    def __call__(self, x: torch.Tensor, targets: Targets = None
                 ) -> tuple[np.ndarray, torch.Tensor]:
        """``(maps (N, H, W) in [0, 1], logits (N, C) of the unshifted images)`` for a batch ``x`` (rollout
        ignores ``targets``: it is class-agnostic)."""
        if self._cam is None:
            return attention_rollout(self.model, x)
        if len(self.shifts) == 1:
            return self._cam(x, targets)
        return self._cam.shift_averaged(x, targets, self.shifts)

    def release(self) -> None:
        """Remove the hooks (idempotent)."""
        if self._cam is not None:
            self._cam.release()

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()


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
             size: tuple[int, int]) -> np.ndarray:
    """One spec's maps (n, H, W) from the activations/gradients (S×N, K, h, w) of a pass over ``grid``."""
    keep = [k for k, (dy, dx) in enumerate(grid) if dy in spec["shifts"] and dx in spec["shifts"]]
    idx = torch.as_tensor([k * n + i for k in keep for i in range(n)])
    a, g = act.index_select(0, idx).float(), grad.index_select(0, idx).float()
    raw = F.relu(torch.einsum("nk,nkhw->nhw", channel_weights(a, g, spec["method"]), a))
    up = F.interpolate(raw[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    avg = up if len(keep) == 1 else average_unshifted(up, [grid[k] for k in keep])
    return normalise_maps(avg).cpu().numpy()


def candidate_maps(model: nn.Module, x: torch.Tensor, candidates: Sequence[Mapping[str, Any]],
                   targets: Targets = 1, batch_size: int = 64, progress: bool = False
                   ) -> tuple[dict[str, np.ndarray], torch.Tensor, float]:
    """Maps of every candidate for ``x``, sharing work: normally ONE batched forward + backward pass over
    the union of the shifts the candidates need. A :class:`~utils.explain.gradcam.GradCAM` hooks the earliest
    candidate layer; later layers (``layer4`` after ``layer3``) are read from the same pass. Every
    weighting and shift set is then derived from the recorded activations and gradients.

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
    t_all = None if targets is None or isinstance(targets, (int, np.integer)) else np.asarray(targets).ravel()
    size = (int(x.shape[-2]), int(x.shape[-1]))
    grid = shift_grid(sorted({o for s in specs for o in s["shifts"]} or {0}))
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    pending = sorted(dict.fromkeys(s["layer"] for s in specs), key=lambda name: order.get(name, -1))
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
    while pending:  # one pass, unless a later layer got no gradient through the first one's graph
        first, later = pending[0], pending[1:]
        served, logits_pass = {first}, []
        with GradCAM(model, first, reshape=reshape) as cam:
            taps = {name: _Tap(model.get_submodule(name)) for name in later}
            try:
                for k, sl in enumerate(_chunks(len(x), batch_size // len(grid))):
                    xs = x[sl]
                    _, lg = cam.shift_averaged(xs, targets if t_all is None else t_all[sl], grid)
                    logits_pass.append(lg.cpu())
                    assert cam.activations is not None and cam.gradients is not None
                    rec: dict[str, tuple[Any, Any]] = {first: (torch.from_numpy(cam.activations),
                                                               torch.from_numpy(cam.gradients))}
                    for name, tap in taps.items():
                        if k == 0 and tap.grad is not None:
                            served.add(name)
                        if name in served:
                            rec[name] = (tap.act, tap.grad)
                    for s in specs:
                        if s["layer"] in rec:
                            out[s["name"]].append(_maps_of(s, *rec[s["layer"]], grid, len(xs), size))
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


# ----------------------------------------------------------------------------------------- scoring
def true_positive_index(labels: np.ndarray, probs: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the true positives: ``label == 1`` and ``prob >= threshold``."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=float)
    return np.flatnonzero((labels == 1) & (probs >= float(threshold)))


def score_explanations(model: nn.Module, images: np.ndarray, lesion_masks: np.ndarray, labels: np.ndarray,
                       meta: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]] = EXPLANATION_CANDIDATES,
                       tolerance_frac: float = 0.05, batch_size: int = 64, progress: bool = False,
                       return_maps: bool = False, priors: Mapping[str, np.ndarray] | None = None):
    """Localisation of every candidate on the true positives of one split (uint8 ``images`` (N, S, S)).

    The PNEUMONIA images are explained for the PNEUMONIA class in one shared pass per layer; the true
    positives (``prob >= meta["threshold"]``, probability from that same pass) with a non-empty lesion
    mask are scored with :func:`utils.explain.localisation.localisation_table` (pointing, near within
    ``tolerance_frac`` × image side, energy), image-blind baselines included (``priors``: the mean-lesion and
    lung-field priors of the training masks, :func:`utils.explain.localisation.prior_maps`). Returns the table sorted
    best first (near, then pointing, then energy; baselines last) and, with ``return_maps``, also
    ``(maps {name: (n_tp, H, W)}, tp_index)`` with ``tp_index`` into ``images``.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if lesion_masks is None:
        raise ValueError("localisation needs lesion masks (the phantoms have them; real data does not)")
    masks = np.asarray(lesion_masks, dtype=bool)
    if not (len(images) == len(labels) == len(masks)):
        raise ValueError(f"images ({len(images)}), labels ({len(labels)}) and masks ({len(masks)}) differ in length")
    specs = [check_spec(c) for c in candidates]
    pos = np.flatnonzero(labels == 1)
    x = preprocess(torch.from_numpy(images[pos]), meta["mean"], meta["std"])
    maps, logits, seconds = candidate_maps(model, x, specs, targets=1, batch_size=batch_size, progress=progress)
    probs = torch.softmax(logits.float(), dim=1)[:, 1].numpy() if len(pos) else np.zeros(0)
    tp = probs >= float(meta["threshold"])
    if not tp.any():
        raise ValueError("no true positive to score: the model detects none of these pneumonia images")
    table = loc.localisation_table({s["name"]: maps[s["name"]][tp] for s in specs}, masks[pos][tp], tolerance_frac,
                                   priors=priors)
    by_name = {s["name"]: s for s in specs}
    table["weighting"] = table["method"].map(lambda n: by_name[n]["method"] if n in by_name else "")
    table["layer"] = table["method"].map(lambda n: by_name[n]["layer"] if n in by_name else "")
    table["shifts"] = table["method"].map(lambda n: "/".join(map(str, by_name[n]["shifts"])) if n in by_name else "")
    table["copies"] = table["method"].map(lambda n: len(by_name[n]["shifts"]) ** 2 if n in by_name else 0)
    table["order"] = np.arange(len(table))  # ties: the earlier candidate
    ranked = table[~table["baseline"]].sort_values(["near", "pointing", "energy", "order"],
                                                   ascending=[False, False, False, True])
    table = pd.concat([ranked, table[table["baseline"]]], ignore_index=True)
    table = table[[c for c in TABLE_COLUMNS if c in table.columns]].copy()
    table.attrs["seconds_per_image"] = seconds  # of the shared pass (all candidates together)
    if return_maps:
        return table, ({n: m[tp] for n, m in maps.items()}, pos[tp])
    return table


def choose_explanation(model: nn.Module, val_images: np.ndarray, val_lesion_masks: np.ndarray,
                       val_labels: np.ndarray, meta: Mapping[str, Any],
                       candidates: Sequence[Mapping[str, Any]] = EXPLANATION_CANDIDATES,
                       tolerance_frac: float = 0.05, batch_size: int = 64, progress: bool = False,
                       priors: Mapping[str, np.ndarray] | None = None) -> tuple[Spec, pd.DataFrame]:
    """Pick the explanation on **validation** data: the candidate with the best near-pointing on the
    validation true positives (ties: pointing, then energy; then the earlier candidate).

    Only the arrays passed in are used — pass the validation split, never the test set (choosing on
    test would make the reported test localisation optimistic, exactly like choosing a threshold on it).
    Returns ``(best spec, table)`` (:func:`score_explanations`' table).
    """
    table = score_explanations(model, val_images, val_lesion_masks, val_labels, meta, candidates,
                               tolerance_frac, batch_size, progress, priors=priors)
    by_name = {check_spec(c)["name"]: check_spec(c) for c in candidates}
    best_name = table.loc[~table["baseline"], "method"].iloc[0]
    return dict(by_name[best_name]), table
