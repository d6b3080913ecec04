"""Figures a learner can read: the run caption never covers an axis, a tick label, a title or a legend; titles
never run into each other; keys name every mark; empty maps and empty finds say so; AUC axes do not zoom.

Every check looks at the figure as it is *saved* (Agg, ``bbox_inches="tight"``, the way notebooks show it):
the extents are read inside the save's own draw, where a legend outside the axes is re-anchored to the
cropped box.
"""
from __future__ import annotations

import io
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from utils.evaluate import metrics as M
from utils.evaluate.shift import recalibrate
from utils.viz import cams as CP
from utils.viz import data as DP
from utils.viz import evaluation as EP
from utils.viz import shortcut as SP
from utils.viz import training as T
from utils.viz.common import caption_artist, finish, is_empty_map, set_caption, wrap_text

S = 32
CAPTION = "folder chest_xray · full profile · 224 px · 5 + 10 epochs · ImageNet weights · a long caption line"


@pytest.fixture(autouse=True)
def captioned():
    set_caption(CAPTION)
    yield
    set_caption("")


def saved_extents(fig: Figure) -> dict:
    """Window extents of the caption, every axes (tight: ticks, labels, title), every title, every figure
    legend and the suptitle, read during a tight PNG save."""
    got: dict = {}

    def grab(event) -> None:
        r = event.renderer
        cap = caption_artist(fig)
        got["caption"] = None if cap is None else cap.get_window_extent(r)
        got["axes"] = [ax.get_tightbbox(r) for ax in fig.axes if ax.get_visible()]
        got["titles"] = [(i, t.get_window_extent(r)) for i, ax in enumerate(fig.axes)
                         for t in (ax.title, ax._left_title, ax._right_title) if t.get_text()]
        got["legends"] = [leg.get_window_extent(r) for leg in fig.legends]
        sup = fig._suptitle
        got["suptitle"] = sup.get_window_extent(r) if sup is not None and sup.get_text() else None

    cid = fig.canvas.mpl_connect("draw_event", grab)
    try:
        fig.savefig(io.BytesIO(), format="png", dpi=60, bbox_inches="tight")
    finally:
        fig.canvas.mpl_disconnect(cid)
    return got


def overlap(a: Bbox, b: Bbox) -> bool:
    """Interiors intersect (touching edges do not count)."""
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def layout_problems(fig: Figure) -> list[str]:
    """Everything that covers something else in the saved figure."""
    e = saved_extents(fig)
    problems = []
    cap = e["caption"]
    if cap is None:
        problems.append("no caption")
    else:
        problems += [f"caption over axes {i}" for i, b in enumerate(e["axes"]) if overlap(cap, b)]
        problems += [f"caption over legend {i}" for i, b in enumerate(e["legends"]) if overlap(cap, b)]
        if e["suptitle"] is not None and overlap(cap, e["suptitle"]):
            problems.append("caption over the suptitle")
    for k, (i, a) in enumerate(e["titles"]):
        problems += [f"titles of axes {i} and {j} collide" for j, b in e["titles"][k + 1:] if i != j and overlap(a, b)]
    for k, leg in enumerate(e["legends"]):
        problems += [f"legend {k} over axes {i}" for i, b in enumerate(e["axes"]) if overlap(leg, b)]
        if e["suptitle"] is not None and overlap(leg, e["suptitle"]):
            problems.append(f"legend {k} over the suptitle")
    return problems


# ----------------------------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    n = 6
    labels = np.array([0, 0, 0, 1, 1, 1])
    images = rng.integers(0, 255, (n, S, S), dtype=np.uint8)
    lung = np.zeros((n, S, S), bool)
    lung[:, 4:28, 3:14] = lung[:, 4:28, 18:29] = True
    lesion = np.zeros((n, S, S), bool)
    lesion[3:, 8:14, 5:11] = True
    maps = rng.random((n, S, S))
    regions = np.zeros_like(lesion)
    regions[3:, 2:6, 24:30] = True
    found = regions.copy()
    found[3:5] = False
    y = rng.integers(0, 2, 150)
    p = np.clip(0.35 * y + 0.65 * rng.random(150), 0, 1)
    return SimpleNamespace(images=images, labels=labels, lung=lung, lesion=lesion, maps=maps, y=y, p=p,
                           regions=regions, found=found,
                           sub=np.where(y == 1, np.where(rng.random(150) < 0.6, "bacteria", "virus"), "normal"))


def history(phase: str, n: int, auc: float) -> pd.DataFrame:
    return pd.DataFrame({"phase": phase, "epoch": np.arange(1, n + 1), "train_loss": np.linspace(0.7, 0.2, n),
                         "val_loss": np.linspace(0.6, 0.3, n), "val_auc": auc + 0.001 * np.arange(n),
                         "val_recall": 0.9, "val_specificity": 0.8, "images_per_s": 50.0})


def fake_gradcam(k: int = 8, h: int = 4):
    """What :func:`plot_gradcam_steps` reads from a :class:`utils.explain.gradcam.GradCAM` after a call."""
    rng = np.random.default_rng(1)
    acts = rng.random((1, k, h, h))
    alphas = rng.normal(0, 0.003, (1, k))
    weighted = np.einsum("nk,nkhw->nhw", alphas, acts)
    raw = np.maximum(weighted, 0)
    return SimpleNamespace(activations=acts, alphas=alphas, targets=np.array([1]), logits=torch.tensor([[0.1, 2.0]]),
                           weighted=weighted, raw_maps=raw, maps=np.kron(raw, np.ones((S // h, S // h))) / raw.max())


def randomisation_table(maps: np.ndarray) -> pd.DataFrame:
    names = ["", "fc", "layer4", "layer3"]
    return pd.DataFrame({"step": range(4), "randomised": names, "maps": [maps[:2]] * 4,
                         "rho": [np.array([1.0, 1.0]), np.array([0.6, 0.4]), np.array([0.2, 0.1]), np.array([0.1, 0.0])],
                         "abs_spearman": [1.0, 0.5, 0.15, 0.05]})


def randomisation_steps() -> dict:
    """The ``steps`` of utils.explain.sanity.randomisation_check for the table above (from layer4 down)."""
    def ci(v: float) -> dict:
        return {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1}

    rows = [{"blocks": b, "similarity": ci(s), "reference": ci(r), "difference": ci(s - r), "verdict": v}
            for b, s, r, v in (("fc+layer4", 0.15, 0.12, "at the reference"),
                               ("fc+layer4+layer3", 0.45, 0.1, "above the reference"))]
    return {"abs_spearman": rows, "ssim": rows}


def road_result() -> dict:
    """A utils.explain.road.road_test result on 3 images and 2 fractions, with 3 controls."""
    m0 = np.array([5.0, 6.0, 7.0])
    return {"fractions": np.array([0.01, 0.02]), "margin0": m0, "null_kind": "derangement", "n": 3, "n_controls": 3,
            "map": {"morf": m0[:, None] - [[0.5, 1.0], [0.4, 0.9], [0.6, 1.2]], "lerf": np.repeat(m0[:, None], 2, 1) - 0.05},
            "null": {"morf": m0[:, None] + [[0.1, 0.3], [0.0, 0.2], [0.2, 0.4]], "lerf": np.repeat(m0[:, None], 2, 1)},
            "control_curves": {"margin0": np.array([-3.0, -2.0, -2.5]),
                               "morf": np.array([[-2.9, -2.5], [-1.8, -1.6], [-2.4, -2.0]])}}


def shortcut_table() -> pd.DataFrame:
    rows = [{"model": m, "test": t, "metric": k, "value": 0.9, "ci_low": 0.85, "ci_high": 0.95}
            for m in ("control", "confounded", "remedy") for t in ("in-distribution", "decorrelated", "reversed")
            for k in ("roc_auc", "sensitivity", "specificity")]
    return pd.DataFrame(rows)


LONG = "ResNet-18 · shift-averaged Grad-CAM @ layer3 (4 shifts), a name as long as notebook 09's"


def figures(w) -> dict:
    """One call of every figure function of utils.viz (the ones notebooks 01–09 save), on small inputs."""
    idx = np.arange(6)
    return {
        "sample_grid": lambda: DP.plot_sample_grid(w.images, w.labels, [f"person{i}_bacteria_{i}" for i in idx],
                                                   w.lesion, w.lung, n_cols=3, title="samples"),
        "class_balance": lambda: DP.plot_class_balance(pd.DataFrame(
            {"NORMAL": [10, 3, 4], "PNEUMONIA": [30, 9, 12], "bacteria": [20, 6, 8], "virus": [10, 3, 4]},
            index=["train", "val", "test"])),
        "images_per_patient": lambda: DP.plot_images_per_patient({"train": np.array(["a", "a", "b", "c", "c", "c"])},
                                                                 {"train": w.labels}),
        "image_sizes": lambda: DP.plot_image_sizes([100, 120, 130, 90, 110, 140], [90, 100, 120, 80, 100, 120],
                                                   w.labels),
        "intensity_histograms": lambda: DP.plot_intensity_histograms(w.images, w.labels),
        "lesion_properties": lambda: DP.plot_lesion_properties(pd.DataFrame(
            {"label": [0, 1, 1, 1], "kind": ["", "consolidation", "patchy", "patchy"], "hard": ["", "", "faint", ""],
             "lesion_area_frac": [0, 0.02, 0.01, 0.03], "contrast": [0, 0.5, 0.15, 0.3]})),
        "training_curves": lambda: T.plot_training_curves([history("phase1", 3, 0.95), history("phase2", 3, 0.96)],
                                                          [1, 2], title="Phase 1 then phase 2"),
        "confusion_matrix": lambda: EP.plot_confusion_matrix(w.y, w.p, 0.4, title="phase 2, test"),
        "roc_pr": lambda: EP.plot_roc_pr(w.y, w.p, M.choose_thresholds(w.y, w.p, 0.95), title="phase 2, test set"),
        "reliability": lambda: EP.plot_reliability(w.y, {"before": w.p, "after": M.apply_temperature(w.p, 1.5)}),
        "subtype_recall": lambda: EP.plot_subtype_recall(M.per_group_recall(w.y, w.p, 0.4, w.sub), 0.98),
        "model_comparison": lambda: EP.plot_model_comparison(
            {"phase 1": M.evaluate_predictions(w.y, w.p, 0.5, n_boot=20),
             "phase 2": M.evaluate_predictions(w.y, w.p, 0.3, n_boot=20)},
            metrics=("sensitivity", "specificity", "precision", "roc_auc"), title="test set"),
        "gradcam_steps": lambda: CP.plot_gradcam_steps(w.images[3], fake_gradcam()),
        "cam_grid": lambda: CP.plot_cam_grid(w.images, w.maps, [f"PNEUMONIA · p=0.9{i}\nmap: evidence for PNEUMONIA"
                                                                for i in idx], w.lesion, w.lung, ncols=3,
                                             show_image=True, suptitle=LONG),
        "colour_order": lambda: CP.plot_colour_order(np.stack([w.maps[0]] * 3, axis=-1) * 0.5, w.maps[0]),
        "randomisation": lambda: CP.plot_randomisation(randomisation_table(w.maps), w.images[3],
                                                       steps=randomisation_steps()),
        "road": lambda: CP.plot_road(road_result(), title=f"ROAD on 3 test true positives: {LONG} vs another image's "
                                                          "map"),
        "method_comparison": lambda: CP.plot_method_comparison(
            w.images, {LONG: w.maps, "ViT · Grad-CAM @ blocks.11.norm1 (reshape)": w.maps[::-1],
                       "ViT · attention rollout": w.maps}, w.lesion, n_images=2),
        "localisation_bars": lambda: CP.plot_localisation_bars(pd.DataFrame(
            {"method": ["Grad-CAM", "centre prior"], "pointing": [0.8, 0.3], "near": [0.9, 0.4],
             "energy": [0.3, 0.1], "baseline": [False, True], "area": [0.05, 0.05]})),
        "case_sheet": lambda: CP.plot_case_sheet(w.images[3:], w.maps[3:], 1 - w.maps[3:],
                                                 [f"FN · person{i}_bacteria_{i}\nbacteria · p=0.012 · margin -0.050"
                                                  for i in range(3)], w.lesion[3:], w.lung[3:]),
        "group_strip": lambda: CP.plot_group_strip({"FN": [0.2, 0.6], "near miss": [], "TP (all)": [0.1, 0.3]},
                                                   reference=0.5, title="outside the lungs"),
        "failure_gallery": lambda: CP.plot_failure_gallery(w.images[3:], w.maps[3:], ["faint", "hidden", "faint"],
                                                           ["a\np=0.01", "b\np=0.02", "c\np=0.03"], per_category=2,
                                                           lesion_masks=w.lesion[3:], lung_masks=w.lung[3:],
                                                           title=LONG),
        "marked_examples": lambda: SP.plot_marked_examples(w.images, w.regions, w.labels, n=6),
        "shortcut_metrics": lambda: SP.plot_shortcut_metrics(shortcut_table()),
        "shortcut_maps": lambda: SP.plot_shortcut_maps({m: w.images[3:5] for m in ("control", "confounded", "remedy")},
                                                       {m: w.maps[3:5] for m in ("control", "confounded", "remedy")},
                                                       w.regions[3:5], ["person1_bacteria_1\nPNEUMONIA · p = 0.91 / "
                                                                      "0.99 / 0.90"] * 2, w.lesion[3:5]),
        "marker_finds": lambda: SP.plot_marker_finds(w.images, w.found, [f"TP · person{i}_virus_{i}" for i in idx],
                                                     ncols=3),
        "lung_fields": lambda: DP.plot_lung_fields(w.images, w.labels, [f"person{i}_bacteria_{i}" for i in idx], w.lung,
                                                   w.lung, w.lesion, ious=[0.81] * 6, n_cols=3),
        "lung_fields_estimated": lambda: DP.plot_lung_fields(w.images, w.labels, [f"IM-{i:04d}-0001" for i in idx],
                                                             w.lung, n_cols=3),
        "phase_scores": lambda: T.plot_phase_scores(w.y, w.p, np.clip(w.p + 0.1 * (2 * w.y - 1), 0, 1),
                                                    thresholds=[0.3, 0.4]),
        "all_at_once": lambda: T.plot_all_at_once(
            pd.DataFrame({"warm-up, then fine-tuning (phase 2)": [4e-4, 1e-3, 2e-3, 4e-3, 1e-2],
                          "all at once": [0.04, 0.04, 0.06, 0.1, 0.16]},
                         index=["stem", "layer1", "layer2", "layer3", "layer4"]),
            pd.DataFrame({"model": ["warm-up only (phase 1)", "warm-up, then fine-tuning (phase 2)", "all at once"],
                          "val ROC AUC": [0.95, 0.95, 0.9], "feature similarity (CKA)": [1.0, 0.99, 0.84]}),
            title=LONG),
        "score_shift": lambda: EP.plot_score_shift(w.y, w.p, w.y, np.clip(w.p * 1.3, 0, 1), 0.4),
        "recalibration": lambda: EP.plot_recalibration(recalibrate(w.y, np.clip(w.p * 1.3, 0, 1), np.arange(w.y.size),
                                                                   0.4, 0.9, n_boot=20)),
    }


FIGURES = list(figures(SimpleNamespace()).keys())


# ----------------------------------------------------------------------------------------------- the caption
@pytest.mark.parametrize("name", FIGURES)
def test_caption_and_titles_cover_nothing(world, name):
    fig = figures(world)[name]()
    assert caption_artist(fig) is not None and caption_artist(fig).get_text().replace("\n", " ") == CAPTION
    assert layout_problems(fig) == []


def test_the_check_sees_a_caption_over_the_axes(world):
    """The old stamp (figure text at the bottom right, not in the layout) is caught by the check above."""
    set_caption("")
    fig = EP.plot_roc_pr(world.y, world.p)
    fig._cxr_caption = fig.text(0.995, 0.002, CAPTION, ha="right", va="bottom", fontsize=7)
    assert any(p.startswith("caption over axes") for p in layout_problems(fig))


def test_caption_under_a_figure_without_layout_engine_and_stamped_once(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("a label that must stay readable")
    finish(fig)
    finish(fig, save_to=tmp_path / "f.png")
    assert sum(CAPTION.split(" · ")[0] in t.get_text() for t in fig.texts) == 1
    assert layout_problems(fig) == []


def test_caption_above_a_figure_with_a_key_in_its_bottom_margin():
    """A legend in the bottom margin moves onto anything under it when the figure is cropped: the caption
    goes above instead."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), layout="constrained")
    ax.plot([0, 1], [0, 1], label="a line")
    fig.legend(loc="outside lower center")
    finish(fig)
    assert layout_problems(fig) == []


def test_long_text_is_wrapped_to_the_width():
    text = wrap_text(LONG, 2.1, 9)
    assert "\n" in text and max(len(line) for line in text.split("\n")) <= int(2.1 * 72 / (0.6 * 9))
    assert text.replace("\n", " ") == LONG
    assert wrap_text("short", 2.1, 9) == "short"


# ----------------------------------------------------------------------------------------------- keys
def legend_labels(fig: Figure) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def test_overlay_figures_carry_a_key_for_every_mark(world):
    fig = CP.plot_cam_grid(world.images, world.maps, list("abcdef"), world.lesion, world.lung, show_image=True,
                           lung_label="lung (estimated)")
    assert legend_labels(fig) == ["map, low → high", "lesion (ground truth)", "lung (estimated)", "map peak"]
    titled = [ax for ax in fig.axes if ax.images]
    assert len(titled) == 12 and all(ax.get_title() for ax in titled)  # the plain image panels too
    assert [ax.get_title() for ax in titled[:2]] == ["input", "a"]
    # no masks, no mask entries: a key names only what is drawn
    fig = CP.plot_cam_grid(world.images, world.maps)
    assert legend_labels(fig) == ["map, low → high", "map peak"]
    fig = CP.plot_cam_grid(world.images[:3], world.maps[:3], lesion_masks=world.lesion[:3])  # NORMAL: no lesion
    assert "lesion (ground truth)" not in legend_labels(fig)


def test_shortcut_figures_name_the_marker(world):
    regions = np.zeros_like(world.lesion)
    regions[3:, 2:6, 24:30] = True
    fig = SP.plot_shortcut_maps({"control": world.images[3:5]}, {"control": world.maps[3:5]}, regions[3:5],
                                ["a", "b"], world.lesion[3:5])
    assert legend_labels(fig) == ["map, low → high", "lesion (ground truth)", "map peak", "marker region"]
    fig = SP.plot_marked_examples(world.images, regions, world.labels, n=6)
    assert legend_labels(fig) == ["marker region (burned in)"]
    assert [ax.get_title().split("\n")[1] for ax in fig.axes] == ["no marker"] * 3 + ["marker"] * 3


# ----------------------------------------------------------------------------------------------- nothing to show
def test_empty_map_rule():
    assert is_empty_map(np.zeros((4, 4))) and is_empty_map(np.full((4, 4), 0.7)) and is_empty_map(None)
    assert is_empty_map(np.full((4, 4), np.nan))
    ramp = np.zeros((4, 4))
    ramp[0, 0] = 1e-9
    assert not is_empty_map(ramp)


def panel_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_constant_maps_are_drawn_as_no_map(world):
    maps = world.maps.copy()
    maps[1] = 0.0
    maps[2] = 0.5
    fig = CP.plot_cam_grid(world.images[:3], maps[:3], list("abc"))
    panels = [ax for ax in fig.axes if ax.images]
    assert [CP.NO_MAP in panel_texts(ax) for ax in panels] == [False, True, True]
    assert [len(ax.images) for ax in panels] == [2, 1, 1]  # no heat-map layer under "no map"
    assert [len(ax.lines) for ax in panels] == [1, 0, 0]  # and no peak: a flat map points nowhere
    # every map empty: nothing to key but the outlines
    fig = CP.plot_method_comparison(world.images, {"flat": np.zeros_like(maps)}, world.lesion, n_images=4)
    assert legend_labels(fig) == ["lesion (ground truth)"]
    assert sum(CP.NO_MAP in panel_texts(ax) for ax in fig.axes) == 4


def test_randomised_flat_maps_say_so(world):
    table = randomisation_table(world.maps)
    table.at[3, "maps"] = np.zeros((2, S, S))
    fig = CP.plot_randomisation(table, world.images[3], steps=randomisation_steps())
    marked = [ax.get_title() for ax in fig.axes if CP.NO_MAP in panel_texts(ax)]
    assert marked == ["+layer3"]


def test_marker_finds_say_nothing_found(world):
    found = np.zeros_like(world.lesion)
    found[2, 2:6, 2:6] = True
    fig = SP.plot_marker_finds(world.images, found, [f"TP · id{i}" for i in range(6)], ncols=3)
    says = [SP.NOTHING_FOUND in panel_texts(ax) for ax in fig.axes]
    assert says == [True, True, False, True, True, True]
    assert [bool(ax.collections) for ax in fig.axes] == [False, False, True, False, False, False]  # the outline
    assert fig._suptitle.get_text() == "marker heuristic: a find on 1 of 6 images shown"
    assert legend_labels(fig) == ["found by the heuristic"]


# ----------------------------------------------------------------------------------------------- scales and counts
@pytest.mark.parametrize(("auc", "low"), [(0.951, 0.5), (0.999, 0.5), (0.42, 0.4)])
def test_auc_axis_is_fixed_from_chance_to_one(auc, low):
    """A 0.002 change must look like one: the AUC panel spans [0.5, 1] (lower only when an AUC is lower)."""
    fig = T.plot_training_curves([history("phase1", 3, auc)], [2])
    lo, hi = fig.axes[1].get_ylim()
    assert lo == pytest.approx(low) and 1.0 <= hi <= 1.02
    star = [ln for ln in fig.axes[1].get_lines() if ln.get_marker() == "*"][0]
    assert f"AUC {auc + 0.001:.3f}" in star.get_label()


def test_counts_are_whole_numbers(world):
    results = {"a": M.evaluate_predictions(world.y, world.p, 0.5, n_boot=20)}
    results["a"]["counts"] = {k: float(v) for k, v in results["a"]["counts"].items()}  # e.g. read back from JSON
    fig = EP.plot_model_comparison(results)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels and all(lbl.isdigit() for lbl in labels)
    table = M.per_group_recall(world.y, world.p, 0.4, world.sub).astype({"detected": float, "n_positive": float})
    ticks = [t.get_text() for t in EP.plot_subtype_recall(table).axes[0].get_xticklabels()]
    assert all(".0" not in t for t in ticks)
    fig = DP.plot_images_per_patient({"v": np.array(["a", "b", "b"])}, {"v": np.array([0, 1, 1])})
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in fig.axes[0].get_yticks())
    fig = EP.plot_confusion_matrix(world.y, world.p, 0.4)
    assert all(t.get_text().split("\n")[0].isdigit() for t in fig.axes[0].texts)


def test_colour_order_bug_is_the_overlay_with_its_channels_reversed():
    from utils.explain.gradcam import overlay

    rng = np.random.default_rng(3)
    gray, cam = rng.random((S, S)), rng.random((S, S))
    fig = CP.plot_colour_order(overlay(gray, cam), cam)
    correct, bug, heat = (ax.images[0].get_array() for ax in fig.axes)
    heat_bgr = matplotlib.colormaps["jet"](cam)[..., :3][..., ::-1]  # what cv2.applyColorMap returns
    np.testing.assert_allclose(bug, np.clip(0.6 * gray[..., None] + 0.4 * heat_bgr, 0, 1), atol=1e-6)
    np.testing.assert_allclose(correct, overlay(gray, cam), atol=1e-6)
    np.testing.assert_allclose(heat, cam)
    assert [ax.get_title() for ax in fig.axes] == ["correct: RGB overlay", "reference bug: BGR shown as RGB",
                                                   "the map (hot = 1)"]


# ----------------------------------------------------------------------------------------------- tables
def test_history_table_shows_epochs_as_integers_and_scores_to_three_decimals():
    h = history("phase2", 2, 0.95123).assign(lr=1e-4, seconds=12.345, images_per_s=33.6)
    html = T.history_table(h).to_html()
    assert ">0.951<" in html and ">0.952<" in html and ">1e-04<" in html and ">12.3<" in html and ">34<" in html
    assert ">1<" in html and ">2<" in html and "0.95123" not in html and ">1.0<" not in html


def test_checkpoint_table_names_missing_fields_and_rounds():
    table = T.checkpoint_table({"epoch": 2, "val_auc": 0.954290296712109, "run": {"profile": "demo", "set_by": {}}},
                               ["epoch", "val_auc", "run", "recipe"])
    assert table["value"].to_dict() == {"epoch": "2", "val_auc": "0.954", "run": "profile=demo",
                                        "recipe": "not recorded"}
