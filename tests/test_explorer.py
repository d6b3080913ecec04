"""The explorers (utils.explorer): the plain functions behind each widget, against independent computations, and the
wrappers' two modes — static where no frontend can drive a widget (papermill, nbval, plain Python), interactive
otherwise — including how that is detected."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix
from test_attribution import META, PIXEL, PixelReader, TinyCNN, batch, images, one_line

from utils import explorer as X
from utils.errors import UserError
from utils.explain.attribution import make_attribution_spec
from utils.explain.spec import make_spec


def scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0, 1).round(2)  # rounded: many ties with the thresholds below
    return y, p


# ------------------------------------------------------------------------------------------------ threshold view
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.65, 1.0])
def test_threshold_view_matches_sklearn_confusion_matrix(threshold):
    y_val, p_val = scores(80, 0)
    y_test, p_test = scores(120, 1)
    view = X.threshold_view(y_val, p_val, y_test, p_test, threshold, chosen_threshold=0.42)
    assert view["threshold"] == threshold and view["chosen_threshold"] == 0.42
    for name, (y, p) in {"validation": (y_val, p_val), "test": (y_test, p_test)}.items():
        c = view["splits"][name]
        ref = confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1])  # the series' rule: p >= t is positive
        assert c["matrix"] == ref.tolist()
        tn, fp, fn, tp = ref.ravel()
        assert (c["tn"], c["fp"], c["fn"], c["tp"], c["n"]) == (tn, fp, fn, tp, len(y))
        assert c["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert c["specificity"] == pytest.approx(tn / (tn + fp))
        chosen = confusion_matrix(y, (p >= 0.42).astype(int), labels=[0, 1])
        assert view["at_chosen"][name]["matrix"] == chosen.tolist()


def test_threshold_view_without_test_split_and_bad_thresholds():
    y, p = scores(30, 2)
    view = X.threshold_view(y, p, threshold=0.5)
    assert list(view["splits"]) == ["validation"] and view["at_chosen"] == {} and view["chosen_threshold"] is None
    for bad in (-0.1, 1.5):
        with pytest.raises(UserError) as e:
            X.threshold_view(y, p, threshold=bad)
        assert "[0, 1]" in one_line(e)


def test_threshold_figure_curves_agree_with_the_view():
    y_val, p_val = scores(80, 0)
    view = X.threshold_view(y_val, p_val, threshold=0.5, chosen_threshold=0.42)
    fig = X.threshold_figure(view, y_val, p_val)
    assert isinstance(fig, Figure)
    curves = {line.get_label(): line for line in fig.axes[-1].get_lines()}
    grid = curves["sensitivity (validation)"].get_xdata()
    at = int(np.argmin(np.abs(grid - 0.5)))
    assert curves["sensitivity (validation)"].get_ydata()[at] == pytest.approx(view["splits"]["validation"]["sensitivity"])
    assert curves["specificity (validation)"].get_ydata()[at] == pytest.approx(view["splits"]["validation"]["specificity"])
    assert "validation-chosen 0.420" in curves and "threshold 0.500" in curves


# ------------------------------------------------------------------------------------------------ frontend detection
class FakeKernel:
    def __init__(self, allow_stdin: bool) -> None:
        self._allow_stdin = allow_stdin


@pytest.fixture
def fake_ipython(monkeypatch):
    """Install a fake ``IPython.get_ipython`` returning a shell with the given kernel (or none)."""
    import IPython

    def install(kernel) -> None:
        shell = types.SimpleNamespace(kernel=kernel) if kernel is not None else None
        monkeypatch.setattr(IPython, "get_ipython", lambda: shell)

    monkeypatch.delenv(X.INTERACTIVE_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    return install


def test_interactive_detection(monkeypatch, fake_ipython):
    fake_ipython(None)
    assert X.interactive_frontend() is False  # plain Python / terminal IPython: nobody to draw widgets
    fake_ipython(FakeKernel(allow_stdin=False))
    assert X.interactive_frontend() is False  # papermill, nbval, nbconvert --execute
    fake_ipython(FakeKernel(allow_stdin=True))
    assert X.interactive_frontend() is True  # Jupyter, VS Code
    assert X.interactive_frontend(False) is False  # the explicit flag wins
    monkeypatch.setenv(X.INTERACTIVE_ENV, "0")
    assert X.interactive_frontend() is False
    fake_ipython(FakeKernel(allow_stdin=False))
    monkeypatch.setenv(X.INTERACTIVE_ENV, "1")
    assert X.interactive_frontend() is True
    assert X.interactive_frontend(False) is False
    monkeypatch.setenv(X.INTERACTIVE_ENV, "maybe")
    with pytest.raises(UserError) as e:
        X.interactive_frontend()
    assert X.INTERACTIVE_ENV in one_line(e)


def test_threshold_explorer_static_view_needs_no_frontend(fake_ipython, monkeypatch):
    fake_ipython(FakeKernel(allow_stdin=False))  # as under papermill / nbval
    y_val, p_val = scores(60, 3)
    y_test, p_test = scores(60, 4)
    ex = X.threshold_explorer(y_val, p_val, y_test, p_test, chosen_threshold=0.42)
    assert not ex.interactive and ex.widget is None and isinstance(ex.figure, Figure)
    assert ex.view == X.threshold_view(y_val, p_val, y_test, p_test, 0.42, 0.42)  # starts at the chosen threshold
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    ex._ipython_display_()
    assert shown == [ex.figure]  # the static figure, not a widget nobody can move
    ex.update(threshold=0.2)
    assert ex.view["threshold"] == 0.2 and ex.view["splits"]["test"] == X.threshold_view(
        y_val, p_val, y_test, p_test, 0.2)["splits"]["test"]


def test_threshold_explorer_slider_moves_the_view():
    y_val, p_val = scores(60, 3)
    ex = X.threshold_explorer(y_val, p_val, chosen_threshold=0.42, interactive=True)
    assert ex.interactive and ex.widget is not None
    slider = ex.widget.children[0].children[0]
    assert slider.value == pytest.approx(0.42)
    first = ex.figure
    slider.value = 0.7
    assert ex.view["threshold"] == pytest.approx(0.7) and ex.figure is not first
    assert ex.view["splits"]["validation"] == X.threshold_view(y_val, p_val, threshold=0.7)["splits"]["validation"]


# ------------------------------------------------------------------------------------------------ map explorer
def test_explore_view_returns_map_probability_and_decision():
    imgs = images(3)
    model = PixelReader()
    view = X.explore_view(model, META, imgs, 1, "saliency", labels=[0, 1, 0])
    with torch.inference_mode():
        p = torch.softmax(model(batch(imgs[1:2])), 1)[0, 1].item()
    assert view["probability"] == pytest.approx(p, rel=1e-5)
    assert view["decision"] == ("PNEUMONIA" if p >= 0.5 else "NORMAL") and view["threshold"] == 0.5
    assert view["label"] == "PNEUMONIA" and view["layer"] is None
    assert view["map"].shape == imgs.shape[1:] and np.unravel_index(np.argmax(view["map"]), view["map"].shape) == PIXEL
    low = X.explore_view(model, META, imgs, 1, "saliency", threshold=min(1.0, p + 0.01))
    assert low["decision"] == "NORMAL"  # the same probability under a higher threshold


def test_explore_view_layer_moves_gradcam_and_specs_are_used_by_name():
    imgs = images(2, size=24)
    cnn = TinyCNN()
    a = X.explore_view(cnn, META, imgs, 0, "gradcam", layer="features.0")
    b = X.explore_view(cnn, META, imgs, 0, "gradcam", layer="features")
    assert a["layer"] == "features.0" and b["layer"] == "features" and not np.allclose(a["map"], b["map"])
    chosen = {"chosen Grad-CAM": make_spec("gradcam", "features", (0, 2)),
              "SmoothGrad (chosen)": make_attribution_spec("smoothgrad", samples=4, noise=0.1)}
    c = X.explore_view(cnn, META, imgs, 0, "chosen Grad-CAM", specs=chosen)
    assert c["spec"]["shifts"] == [0, 2] and c["layer"] == "features"
    d = X.explore_view(cnn, META, imgs, 0, "SmoothGrad (chosen)", specs=chosen)
    assert d["spec"]["params"]["samples"] == 4
    anchored = {"anchored": make_spec("gradcam", "features", anchor="receptive_field")}
    e = X.explore_view(cnn, META, imgs, 0, "anchored", layer="features.0", specs=anchored)
    assert e["layer"] == "features.0" and e["spec"]["anchor"] == "receptive_field"  # moving the layer keeps the anchor


def test_explore_view_bad_inputs_are_one_line():
    imgs = images(2)
    with pytest.raises(UserError) as e:
        X.explore_view(TinyCNN(), META, imgs, 5, "saliency")
    assert "0..1" in one_line(e)
    with pytest.raises(UserError) as e:
        X.explore_view(TinyCNN(), META, imgs, 0, "lime")
    assert "saliency" in one_line(e)
    with pytest.raises(UserError) as e:
        X.explore_view(TinyCNN(), META, imgs, 0, "gradcam", layer="layer9")
    assert "layer9" in one_line(e)


def test_map_explorer_static_and_interactive(fake_ipython):
    imgs = images(3, size=24)
    cnn = TinyCNN()
    fake_ipython(None)  # plain Python
    static = X.map_explorer(cnn, META, imgs, labels=[0, 1, 1], methods=["saliency", "gradcam"], layers=["features"])
    assert not static.interactive and static.widget is None and isinstance(static.figure, Figure)
    assert static.view["index"] == 0 and static.view["method"] == "Saliency (gradient)"
    ex = X.map_explorer(cnn, META, imgs, labels=[0, 1, 1], methods=["saliency", "gradcam"], layers=["features"],
                        interactive=True)
    image, method, layer = ex.widget.children[0].children
    image.value = 2
    assert ex.view["index"] == 2 and ex.view["method"] == "Saliency (gradient)"
    method.value = "gradcam"  # Grad-CAM's default layer4 is not in this model: one line in the output, view kept
    assert ex.view["method"] == "Saliency (gradient)"
    layer.value = "features"
    assert ex.view["layer"] == "features" and ex.view["spec"]["method"] == "gradcam"
    np.testing.assert_allclose(ex.view["map"], X.explore_view(cnn, META, imgs, 2, "gradcam", "features")["map"])
