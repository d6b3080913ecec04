"""The spec language of explanations: what a map *is*, written down as a plain dict.

Grad-CAM has knobs — the layer, the channel weighting, shift averaging — and they matter more than their names
suggest. On a 128 px input ``layer4`` of a ResNet-18 is a 4×4 grid (7×7 at 224 px): its peak can only land on one
of 16 cell centres, 32 px apart, whatever the model saw. ``layer3`` is 8×8, and averaging its maps over a few
shifted copies of the image (:func:`utils.explain.gradcam.shift_averaged_gradcam`) moves the peak off the cell
grid. Which combination localises best is a *measurement* (:mod:`utils.explain.selection`); this module only
names the combinations.

A spec is ``{"name", "method", "layer", "shifts", "anchor"}``: ``method`` is a channel weighting of
:data:`utils.explain.gradcam.WEIGHTINGS` (``"gradcam"``, ``"xgradcam"``, ``"gradcam++"``) or ``"rollout"``
(a ViT's attention rollout), ``shifts`` the per-axis pixel offsets (``[0]`` = no shift averaging; ``[0, 8]`` =
the 4 shifts ``{0, 8}²``), ``anchor`` where the upsampling draws the layer's cells
(:data:`utils.explain.gradcam.ANCHORS`): ``"library"`` — spread evenly over the image, as ``pytorch-grad-cam`` does,
which puts a ResNet's cell (stride − 1)/2 px down and right of its receptive field's centre (7.5 px on ``layer3``) —
or ``"receptive_field"`` — on that centre. A spec without ``anchor`` (recorded before it existed) reads as
``"library"``, the map it was recorded with. Specs go into checkpoint metadata and JSON unchanged.

One constant per named choice:

* :data:`EXPLANATION_CANDIDATES` / :data:`VIT_EXPLANATION_CANDIDATES` — what notebook 05 (and 09) choose among;
* :data:`UNMEASURED_EXPLANATION` — the ResNet's explanation when nothing could be measured (real data) or nothing
  was recorded; a ViT's is its first candidate (:func:`unmeasured_explanation`);
* :data:`DEMO_EXPLANATION` — not a default: what notebook 05 chose on the demo when this was written, the spec
  ``tests/test_localisation_bar.py`` holds to its bar.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from utils.explain.gradcam import ANCHORS, WEIGHTINGS
from utils.explain.vit import VIT_GRADCAM_LAYER
from utils.train.vit import is_vit

__all__ = [
    "ANCHOR_NAMES",
    "DEMO_EXPLANATION",
    "EXPLANATION_CANDIDATES",
    "METHOD_NAMES",
    "ROLLOUT",
    "UNMEASURED_EXPLANATION",
    "VIT_EXPLANATION_CANDIDATES",
    "Spec",
    "candidates_for",
    "check_spec",
    "make_spec",
    "unmeasured_explanation",
    "without_shifts",
]

Spec = dict[str, Any]
#: Display names of the Grad-CAM weightings (spec names are built from them).
METHOD_NAMES = {"gradcam": "Grad-CAM", "xgradcam": "XGradCAM", "gradcam++": "Grad-CAM++"}
#: What a spec's name adds for each anchor (:data:`utils.explain.gradcam.ANCHORS`; the library's convention adds
#: nothing, so the names of specs recorded before anchors existed are unchanged).
ANCHOR_NAMES = {"library": "", "receptive_field": " (cells at receptive-field centres)"}
#: The class-agnostic ViT method (:func:`utils.explain.vit.attention_rollout`): a spec method, not a CAM weighting.
ROLLOUT = "rollout"


def make_spec(method: str = "gradcam", layer: str = "layer4", shifts: Sequence[int] = (0,),
              name: str | None = None, anchor: str = "library") -> Spec:
    """A validated explanation spec (a plain dict: it goes into checkpoint metadata and JSON). ``method`` is a
    Grad-CAM weighting (:data:`utils.explain.gradcam.WEIGHTINGS`) or ``"rollout"`` (a ViT's attention rollout,
    over all its blocks: ``layer="blocks"``, no shifts). ``anchor`` (:data:`utils.explain.gradcam.ANCHORS`): where
    the upsampling draws the layer's cells — ``"library"`` (default) or ``"receptive_field"``, which the default
    name says."""
    if anchor not in ANCHORS:
        raise ValueError(f"unknown anchor {anchor!r}: choose one of {', '.join(ANCHORS)}")
    if method == ROLLOUT:
        if sorted({int(v) for v in shifts}) != [0]:
            raise ValueError("attention rollout takes no shifts")
        if anchor != "library":
            raise ValueError("attention rollout takes no anchor: a ViT's patches are centred already")
        return {"name": str(name or "attention rollout"), "method": ROLLOUT, "layer": "blocks", "shifts": [0],
                "anchor": "library"}
    if method not in WEIGHTINGS:
        raise ValueError(f"unknown explanation method {method!r}: choose one of {', '.join(WEIGHTINGS)} or "
                         f"{ROLLOUT!r}")
    offs = sorted({int(s) for s in shifts})
    if 0 not in offs:
        raise ValueError(f"shifts must include 0 (the unshifted image), got {list(shifts)}")
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"layer must be a module name such as 'layer3', got {layer!r}")
    if name is None:
        label = METHOD_NAMES[method]
        name = (f"{label} @ {layer}" if len(offs) == 1
                else f"shift-averaged {label} @ {layer} ({len(offs) ** 2} shifts)") + ANCHOR_NAMES[anchor]
    return {"name": str(name), "method": method, "layer": layer, "shifts": offs, "anchor": anchor}


def check_spec(spec: Mapping[str, Any]) -> Spec:
    """A spec read from elsewhere (metadata, JSON), validated and completed; ValueError if unusable. A spec without
    ``anchor`` (recorded before anchors existed) reads as ``"library"``: the map it was recorded with."""
    if not isinstance(spec, Mapping) or "layer" not in spec:
        raise ValueError(f"an explanation spec is a dict with at least 'layer', got {spec!r}")
    return make_spec(spec.get("method", "gradcam"), spec["layer"], spec.get("shifts", (0,)), spec.get("name"),
                     spec.get("anchor", "library"))


def without_shifts(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` read on the image as it is: the same method, layer and anchor, without shift averaging (a spec that
    has no shifts — attention rollout, a pixel-attribution spec — comes back unchanged). Shift averaging shows the
    model shifted copies of the image; with the series' border (:data:`utils.explain.gradcam.SHIFT_BORDER`,
    ``"complete"``) each copy is the image padded by up to :data:`utils.explain.gradcam.SHIFT_ALIGN` px — on a small
    image a large share of the input the model never saw, and it moves what sits near the border away from it.
    Notebook 08 reads its models this way: its marker sits near the border and its world is small."""
    if spec.get("method") not in WEIGHTINGS or sorted({int(v) for v in spec.get("shifts", (0,))}) == [0]:
        return dict(spec)
    return make_spec(spec["method"], spec["layer"], (0,), anchor=spec.get("anchor", "library"))


_KNOBS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("gradcam", "layer4", (0,)),
    ("gradcam", "layer3", (0,)),
    ("gradcam", "layer3", (0, 8)),
    ("gradcam++", "layer3", (0,)),
    ("xgradcam", "layer3", (0,)),
    ("xgradcam", "layer3", (0, 8)),
)
#: The candidates notebook 05 compares on validation: six layer / weighting / shift combinations, each with the
#: library's upsampling and with its cells drawn on their receptive-field centres — the anchoring is chosen by
#: measurement like every other knob. All share one pass per shift set (:func:`utils.explain.maps.candidate_maps`):
#: an anchor costs an upsampling, not a pass.
EXPLANATION_CANDIDATES: tuple[Spec, ...] = tuple(make_spec(method, layer, shifts, anchor=anchor)
                                                 for anchor in ("library", "receptive_field")
                                                 for method, layer, shifts in _KNOBS)

#: NOT a default (nothing falls back to it): what notebook 05 chose on validation when this was written
#: (Grad-CAM++ on layer3, cells at receptive-field centres: validation near-pointing 0.871 against 0.706 for the best
#: library-anchored candidate; demo profile, 128 px, 3 + 3 epochs from the label-only phantom backbone, CPU), and what
#: tests/test_localisation_bar.py holds to its bar. Notebook 05 re-chooses on every run and records its choice in the
#: shipped checkpoint.
DEMO_EXPLANATION: Spec = make_spec("gradcam++", "layer3", anchor="receptive_field")

#: The ResNet's explanation without lesion masks to choose by (real data), and when none was recorded: plain
#: Grad-CAM on ``layer4``, the textbook choice — nothing measured here says another one localises better on real
#: X-rays.
UNMEASURED_EXPLANATION: Spec = make_spec("gradcam", "layer4")

#: The ViT's candidates (notebook 09), chosen among by the same rule on validation: Grad-CAM through the reshape on
#: the last block's ``norm1`` (the pytorch-grad-cam convention, :mod:`utils.explain.vit`), the same averaged over
#: half-patch shifts, and attention rollout. Without a recorded choice a ViT is explained with the first.
VIT_EXPLANATION_CANDIDATES: tuple[Spec, ...] = (
    make_spec("gradcam", VIT_GRADCAM_LAYER),
    make_spec("gradcam", VIT_GRADCAM_LAYER, (0, 8)),
    make_spec(ROLLOUT),
)


def unmeasured_explanation(meta_or_model: Mapping[str, Any] | nn.Module) -> Spec:
    """The explanation of a checkpoint (its metadata) or model when nothing was measured:
    :data:`UNMEASURED_EXPLANATION` for the ResNet, the first of :data:`VIT_EXPLANATION_CANDIDATES` for a ViT."""
    return dict(VIT_EXPLANATION_CANDIDATES[0] if is_vit(meta_or_model) else UNMEASURED_EXPLANATION)


def candidates_for(meta_or_model: Mapping[str, Any] | nn.Module) -> tuple[Spec, ...]:
    """The explanation candidates of a checkpoint (its metadata) or model: the ResNet's or the ViT's."""
    return VIT_EXPLANATION_CANDIDATES if is_vit(meta_or_model) else EXPLANATION_CANDIDATES
