"""Interactive explorers: a threshold slider (notebook 04) and an image × method × layer map viewer (notebook 10).

Each explorer is two layers:

* a **plain function** that computes what the widget shows — :func:`threshold_view` (confusion matrices, sensitivity
  and specificity at a threshold, the validation-chosen one beside it) and :func:`explore_view` (one image's map,
  probability and decision for a method and a layer). They are ordinary functions with their own tests;
* a **thin ipywidgets wrapper** — :func:`threshold_explorer`, :func:`map_explorer` — returning an :class:`Explorer`
  that shows itself when it is a cell's last expression: sliders and drop-downs in Jupyter or Colab, or, where no
  one can move a slider (papermill, nbval, ``jupyter nbconvert --execute``, plain Python), the static default view
  as an ordinary figure. It never waits for input.

Whether a frontend can drive widgets is decided by :func:`interactive_frontend`: an explicit ``interactive`` argument
wins, then the environment variable ``CXR_INTERACTIVE`` (``1`` / ``0``), else widgets only inside a Jupyter kernel
whose current cell was sent by a frontend that accepts input (Jupyter, Colab, VS Code send ``allow_stdin``; papermill,
nbval and nbconvert execute with it off), or on Colab.

A top-level module (like :mod:`utils.stages`): it joins evaluation (:mod:`utils.evaluate.metrics`) and explanation
(:mod:`utils.explain`), which no lower level may do.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from utils.config import CLASSES
from utils.errors import UserError
from utils.evaluate.metrics import threshold_metrics
from utils.explain.attribution import METHODS, make_attribution_spec, method_maps
from utils.explain.gradcam import WEIGHTINGS, gray_to_float, overlay
from utils.explain.spec import check_spec, make_spec
from utils.train.model import preprocess

__all__ = [
    "INTERACTIVE_ENV",
    "Explorer",
    "explore_figure",
    "explore_view",
    "interactive_frontend",
    "map_explorer",
    "threshold_explorer",
    "threshold_figure",
    "threshold_view",
]

#: Environment variable forcing the explorers interactive (``1``) or static (``0``).
INTERACTIVE_ENV = "CXR_INTERACTIVE"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def interactive_frontend(interactive: bool | None = None) -> bool:
    """True when widgets can be driven by someone: ``interactive`` if given; else ``CXR_INTERACTIVE`` (1/0) if set;
    else inside a Jupyter kernel whose current request allows input (a live frontend; papermill, nbval and nbconvert
    run with ``allow_stdin`` off), or on Colab. Plain Python and terminal IPython: False."""
    if interactive is not None:
        return bool(interactive)
    env = os.environ.get(INTERACTIVE_ENV, "").strip().lower()
    if env in _TRUE:
        return True
    if env in _FALSE:
        return False
    if env:
        raise UserError(f"{INTERACTIVE_ENV}={os.environ[INTERACTIVE_ENV]!r}: set it to 1 (widgets) or 0 (static view)")
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return False
    return "google.colab" in sys.modules or bool(getattr(kernel, "_allow_stdin", False))


@dataclass
class Explorer:
    """What :func:`threshold_explorer` / :func:`map_explorer` return. ``update(**changes)`` recomputes the view
    with the plain function (and redraws the widget's output); ``view`` and ``figure`` hold the latest ones;
    ``widget`` is the ipywidgets box (None when static). Displays itself: the widget, or the static figure."""

    kind: str
    interactive: bool
    update: Callable[..., dict[str, Any]]
    view: dict[str, Any] = field(default_factory=dict)
    figure: Figure | None = None
    widget: Any = None

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget if self.interactive and self.widget is not None else self.figure)

    def __repr__(self) -> str:
        mode = "interactive" if self.interactive else "static view"
        return f"<{self.kind} explorer ({mode})>"


def _enable_colab_widgets() -> None:
    """ipywidgets 8 on Colab needs its custom widget manager (a no-op elsewhere)."""
    if "google.colab" in sys.modules:
        try:
            from google.colab import output

            output.enable_custom_widget_manager()
        except Exception:  # pragma: no cover - Colab only
            pass


def _wire(explorer: Explorer, controls: Sequence[Any], names: Sequence[str]) -> None:
    """Build the widget box: ``controls`` above an Output that redraws ``explorer.figure`` when any of them changes
    (the control's ``value`` goes to ``explorer.update`` under its name)."""
    import ipywidgets as widgets
    from IPython.display import clear_output, display

    _enable_colab_widgets()
    out = widgets.Output()
    compute = explorer.update

    def redraw(**changes: Any) -> dict[str, Any]:
        try:
            view = compute(**changes)
        except UserError as exc:  # e.g. a layer this method cannot use: say so in one line, keep the controls alive
            with out:
                clear_output(wait=True)
                print(f"UserError: {exc}")
            return explorer.view
        with out:
            clear_output(wait=True)
            display(explorer.figure)
        return view

    def on_change(change: dict[str, Any]) -> None:
        redraw(**{names[controls.index(change["owner"])]: change["new"]})

    for c in controls:
        c.observe(on_change, names="value")
    explorer.update = redraw
    explorer.widget = widgets.VBox([widgets.HBox(list(controls)), out])
    with out:
        display(explorer.figure)


# ----------------------------------------------------------------------------------------------- threshold (04)
def _check_threshold(value: float, what: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise UserError(f"{what} must lie in [0, 1], got {value!r}")
    return v


def _counts(y: Any, p: Any, threshold: float) -> dict[str, Any]:
    m = threshold_metrics(y, p, threshold)
    return {"tn": m["tn"], "fp": m["fp"], "fn": m["fn"], "tp": m["tp"], "n": m["tn"] + m["fp"] + m["fn"] + m["tp"],
            "sensitivity": m["sensitivity"], "specificity": m["specificity"],
            "matrix": [[m["tn"], m["fp"]], [m["fn"], m["tp"]]]}


def threshold_view(y_val: Any, p_val: Any, y_test: Any = None, p_test: Any = None, threshold: float = 0.5,
                   chosen_threshold: float | None = None) -> dict[str, Any]:
    """What the threshold slider shows, for the decision ``P(PNEUMONIA) >= threshold`` (the series' rule).

    Returns ``{"threshold", "chosen_threshold", "splits": {"validation": c, "test": c}, "at_chosen": {...}}`` where
    each ``c`` holds the confusion counts ``tn fp fn tp n``, ``matrix`` = [[tn, fp], [fn, tp]] (rows: true NORMAL,
    PNEUMONIA; columns: predicted) and ``sensitivity`` / ``specificity``; ``at_chosen`` is the same at the
    validation-chosen threshold (empty when none is given). ``y_test`` / ``p_test`` may be None (validation only)."""
    t = _check_threshold(threshold, "threshold")
    chosen = None if chosen_threshold is None else _check_threshold(chosen_threshold, "chosen_threshold")
    splits = {"validation": (y_val, p_val)}
    if y_test is not None and p_test is not None:
        splits["test"] = (y_test, p_test)
    return {"threshold": t, "chosen_threshold": chosen,
            "splits": {name: _counts(y, p, t) for name, (y, p) in splits.items()},
            "at_chosen": {} if chosen is None else {name: _counts(y, p, chosen) for name, (y, p) in splits.items()}}


def _rates(y: Any, p: Any, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity at every threshold of ``grid`` (the rule ``p >= t``), vectorised."""
    y, p = np.asarray(y).astype(int).ravel(), np.asarray(p, float).ravel()
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    sens = 1 - np.searchsorted(pos, grid, side="left") / max(len(pos), 1)
    spec = np.searchsorted(neg, grid, side="left") / max(len(neg), 1)
    return sens, spec


def threshold_figure(view: Mapping[str, Any], y_val: Any, p_val: Any, y_test: Any = None, p_test: Any = None
                     ) -> Figure:
    """The threshold explorer's picture: one confusion matrix per split at ``view["threshold"]`` and the
    sensitivity / specificity curves against the threshold, the current and the validation-chosen ones marked."""
    splits = list(view["splits"])
    fig = Figure(figsize=(4.0 * len(splits) + 5.0, 3.6), layout="constrained")
    axes = fig.subplots(1, len(splits) + 1, width_ratios=[1.0] * len(splits) + [1.6])
    for ax, name in zip(axes, splits):
        c = view["splits"][name]
        mat = np.asarray(c["matrix"], float)
        ax.imshow(mat / max(mat.sum(), 1), cmap="Blues", vmin=0, vmax=1)
        for (r, k), v in np.ndenumerate(mat):
            ax.text(k, r, f"{int(v)}", ha="center", va="center", color="white" if v > mat.sum() / 2 else "black")
        ax.set_xticks([0, 1], [f"pred. {n}" for n in CLASSES], fontsize=8)
        ax.set_yticks([0, 1], [f"true {n}" for n in CLASSES], fontsize=8)
        ax.set_title(f"{name} (n={c['n']}) at {view['threshold']:.3f}\n"
                     f"sensitivity {c['sensitivity']:.3f} · specificity {c['specificity']:.3f}", fontsize=9)
    ax = axes[-1]
    grid = np.linspace(0, 1, 201)
    data = {"validation": (y_val, p_val), "test": (y_test, p_test)}
    for name, colour in zip(splits, ("C0", "C1")):
        sens, spec = _rates(*data[name], grid)
        ax.plot(grid, sens, color=colour, label=f"sensitivity ({name})")
        ax.plot(grid, spec, color=colour, linestyle="--", label=f"specificity ({name})")
    ax.axvline(view["threshold"], color="black", linewidth=1.2, label=f"threshold {view['threshold']:.3f}")
    if view["chosen_threshold"] is not None:
        ax.axvline(view["chosen_threshold"], color="red", linestyle=":", linewidth=1.5,
                   label=f"validation-chosen {view['chosen_threshold']:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("threshold on P(PNEUMONIA)")
    ax.set_ylabel("rate")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def threshold_explorer(y_val: Any, p_val: Any, y_test: Any = None, p_test: Any = None,
                       chosen_threshold: float | None = None, threshold: float | None = None,
                       interactive: bool | None = None) -> Explorer:
    """A threshold slider over :func:`threshold_view` (notebook 04). Starts at ``threshold`` (default: the
    validation-chosen one, else 0.5); static where no frontend can move it (:func:`interactive_frontend`)."""
    start = threshold if threshold is not None else (chosen_threshold if chosen_threshold is not None else 0.5)
    ex = Explorer("threshold", interactive_frontend(interactive), lambda **_: {})
    state = {"threshold": float(start)}

    def update(**changes: Any) -> dict[str, Any]:
        state.update(changes)
        ex.view = threshold_view(y_val, p_val, y_test, p_test, state["threshold"], chosen_threshold)
        ex.figure = threshold_figure(ex.view, y_val, p_val, y_test, p_test)
        return ex.view

    ex.update = update
    update()
    if ex.interactive:
        import ipywidgets as widgets

        slider = widgets.FloatSlider(value=state["threshold"], min=0.0, max=1.0, step=0.005, readout_format=".3f",
                                     description="threshold", continuous_update=False)
        _wire(ex, [slider], ["threshold"])
    return ex


# ----------------------------------------------------------------------------------------------- maps (10)
#: Methods the map explorer offers by name when no specs are given: the Grad-CAM weightings (need a layer) and
#: the pixel-attribution methods (:data:`utils.explain.attribution.METHODS`, default parameters).
EXPLORER_METHODS: tuple[str, ...] = (*WEIGHTINGS, *METHODS)


def _explorer_spec(method: str, layer: str | None, specs: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    if specs and method in specs:
        spec = dict(specs[method])
    elif method in METHODS:
        spec = make_attribution_spec(method)
    elif method in WEIGHTINGS:
        spec = make_spec(method, layer or "layer4")
    else:
        options = [*(specs or {}), *EXPLORER_METHODS]
        raise UserError(f"unknown method {method!r}: choose one of {', '.join(dict.fromkeys(options))}")
    if spec.get("method") in METHODS:
        return spec
    try:
        checked = check_spec(spec)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if layer is not None and layer != checked["layer"]:
        checked = make_spec(checked["method"], layer, checked["shifts"], anchor=checked["anchor"])
    return checked


def explore_view(model: nn.Module, meta: Mapping[str, Any], images: np.ndarray, index: int, method: str,
                 layer: str | None = None, specs: Mapping[str, Mapping[str, Any]] | None = None,
                 mean_image: np.ndarray | None = None, threshold: float | None = None, labels: Any = None,
                 target: int = 1) -> dict[str, Any]:
    """One image's map, probability and decision (notebook 10's explorer).

    ``images``: uint8 (N, S, S); ``method``: a key of ``specs`` (e.g. the chosen Grad-CAM and the validation-chosen
    attribution specs), else a Grad-CAM weighting (``gradcam``…) or an attribution method name (defaults).
    ``layer`` moves a Grad-CAM spec to that layer (pixel methods read the input: ``layer`` is ignored, reported None).
    The decision is ``P(PNEUMONIA) >= threshold`` (default ``meta["threshold"]``). Returns ``{"index", "method"
    (the spec's name), "spec", "layer", "map" (S, S) in [0, 1], "probability", "threshold", "decision", "label",
    "seconds"}``. Bad index, method or layer: one-line :class:`~utils.errors.UserError`."""
    images = np.asarray(images)
    if not 0 <= int(index) < len(images):
        raise UserError(f"image index {index} is out of range: choose 0..{len(images) - 1}")
    spec = _explorer_spec(method, layer, specs)
    thr = float(meta["threshold"] if threshold is None else threshold)
    x = preprocess(torch.as_tensor(images[int(index):int(index) + 1]), meta["mean"], meta["std"])
    start = time.perf_counter()
    maps, probs, _ = method_maps(model, x, [spec], target, meta, mean_image)
    seconds = time.perf_counter() - start
    p = float(probs[0])
    label = None if labels is None else CLASSES[int(np.asarray(labels)[int(index)])]
    return {"index": int(index), "method": spec["name"], "spec": spec, "layer": spec.get("layer"),
            "map": maps[spec["name"]][0], "probability": p, "threshold": thr, "decision": CLASSES[int(p >= thr)],
            "label": label, "seconds": seconds}


def explore_figure(view: Mapping[str, Any], image: np.ndarray) -> Figure:
    """The map explorer's picture: the X-ray and its map overlaid, with the probability and the decision."""
    fig = Figure(figsize=(7.6, 4.0), layout="constrained")
    ax_img, ax_map = fig.subplots(1, 2)
    gray = gray_to_float(np.asarray(image))
    ax_img.imshow(gray, cmap="gray", vmin=0, vmax=1)
    truth = f" (true: {view['label']})" if view.get("label") else ""
    ax_img.set_title(f"image {view['index']}{truth}", fontsize=9)
    shown = ax_map.imshow(overlay(gray, view["map"]), cmap="jet", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax_map, fraction=0.046, label="map (0 = none, 1 = its maximum)")
    ax_map.set_title(f"{view['method']}\nP(PNEUMONIA) = {view['probability']:.3f} "
                     f"{'≥' if view['decision'] == CLASSES[1] else '<'} {view['threshold']:.3f} → {view['decision']}",
                     fontsize=9)
    for ax in (ax_img, ax_map):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def map_explorer(model: nn.Module, meta: Mapping[str, Any], images: np.ndarray, labels: Any = None,
                 specs: Mapping[str, Mapping[str, Any]] | None = None, methods: Sequence[str] | None = None,
                 layers: Sequence[str] = ("layer3", "layer4"), mean_image: np.ndarray | None = None,
                 index: int = 0, method: str | None = None, layer: str | None = None,
                 interactive: bool | None = None) -> Explorer:
    """Image × method × layer over :func:`explore_view` (notebook 10): the map, the probability and the decision.

    ``methods``: the drop-down's choices (default: the keys of ``specs``, else :data:`EXPLORER_METHODS`); views are
    cached, so going back to a combination costs nothing. Static where no frontend can drive it."""
    choices = list(methods) if methods is not None else (list(specs) if specs else list(EXPLORER_METHODS))
    if not choices:
        raise UserError("the map explorer needs at least one method")
    state: dict[str, Any] = {"index": int(index), "method": method or choices[0], "layer": layer}
    cache: dict[tuple[int, str, str | None], dict[str, Any]] = {}
    ex = Explorer("map", interactive_frontend(interactive), lambda **_: {})
    images = np.asarray(images)

    def update(**changes: Any) -> dict[str, Any]:
        state.update(changes)
        key = (int(state["index"]), str(state["method"]), state["layer"])
        if key not in cache:
            cache[key] = explore_view(model, meta, images, key[0], key[1], key[2], specs, mean_image, labels=labels)
        ex.view = cache[key]
        ex.figure = explore_figure(ex.view, images[key[0]])
        return ex.view

    ex.update = update
    update()
    if ex.interactive:
        import ipywidgets as widgets

        controls = [widgets.IntSlider(value=state["index"], min=0, max=len(images) - 1, description="image",
                                      continuous_update=False),
                    widgets.Dropdown(options=choices, value=state["method"], description="method"),
                    widgets.Dropdown(options=[("the spec's own", None),
                                              *((name, name) for name in dict.fromkeys([*layers, *([layer] if layer
                                                                                                  else [])]))],
                                     value=state["layer"], description="layer")]
        _wire(ex, controls, ["index", "method", "layer"])
    return ex
