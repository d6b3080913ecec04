"""Hand-written Grad-CAM: hooks, model-state restoration, batching/targets, normalisation, overlay colours."""
from __future__ import annotations

import copy
import gc
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet18

from utils.explain.gradcam import (
    GradCAM,
    cam_steps,
    gradcam,
    gray_to_float,
    normalise_maps,
    overlay,
    resize_map,
    shift_averaged_gradcam,
    shift_grid,
    shifted_size,
)


@pytest.fixture(scope="module")
def base_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return resnet18(weights=None, num_classes=2).eval()


@pytest.fixture()
def model(base_model) -> torch.nn.Module:
    return copy.deepcopy(base_model)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def n_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def snapshot(model: torch.nn.Module) -> dict:
    return {"training": [m.training for m in model.modules()],
            "requires_grad": [p.requires_grad for p in model.parameters()],
            "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            "state": {k: v.clone() for k, v in model.state_dict().items()}}


def assert_same_state(model: torch.nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    for a, b in zip(after["grad"], before["grad"]):
        assert (a is None and b is None) or torch.equal(a, b)
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k  # BN running stats untouched too
    assert n_hooks(model) == 0


# ------------------------------------------------------------------------------------- hooks
def test_hooks_registered_then_released(model, x):
    with GradCAM(model, "layer4") as cam:
        assert len(model.layer4._forward_hooks) == 1 and n_hooks(model) == 1
        cam(x)
    assert n_hooks(model) == 0
    cam.release()  # idempotent
    with pytest.raises(RuntimeError, match="released"):
        cam(x)


def test_hooks_released_and_exception_propagates(model, x):
    before = snapshot(model)
    with pytest.raises(ZeroDivisionError), GradCAM(model, "layer3") as cam:
        cam(x)
        1 / 0  # noqa: B018 - an error inside the block
    with pytest.raises(ValueError, match="targets"), GradCAM(model, "layer3") as cam:
        cam(x, targets=[0, 1])  # wrong length: raised inside the call, after the forward
    model.train()
    with pytest.raises(ValueError), GradCAM(model, "layer3") as cam:
        cam(x, targets=5)  # out of range
    assert model.training  # restored even though the call failed
    model.eval()
    assert_same_state(model, before)


def test_100_cams_no_hook_or_memory_growth(model):
    xs = torch.randn(1, 3, 16, 16)

    def live() -> tuple[int, int, int]:
        """(tensors, arrays, all gc-tracked objects) alive: what a leak would accumulate."""
        gc.collect()
        objs = gc.get_objects()
        with warnings.catch_warnings():  # isinstance() on some lazy torch objects warns
            warnings.simplefilter("ignore")
            return (sum(isinstance(o, torch.Tensor) for o in objs),
                    sum(isinstance(o, np.ndarray) for o in objs), len(objs))

    with GradCAM(model, "layer3") as cam:  # one object reused…
        for _ in range(3):
            cam(xs)
            gradcam(model, xs, "layer3")
        tensors, arrays, objects = live()
        for i in range(100):
            maps, logits = cam(xs) if i % 2 else gradcam(model, xs, "layer3")  # …and fresh ones
            assert n_hooks(model) == 1
        del maps, logits  # the last results are alive by design; what else stayed would be a leak
        now = live()
        assert now[0] <= tensors and now[1] <= arrays, f"leak: {now} vs {(tensors, arrays, objects)}"
        assert now[2] <= objects + 100, f"{now[2] - objects} objects kept after 100 CAMs"
    assert n_hooks(model) == 0


# ------------------------------------------------------------------------------------- state
def test_train_mode_and_mixed_modes_restored(model, x):
    model.train()
    model.layer1.eval()  # mixed modes, as during fine-tuning with frozen batch-norm
    before = snapshot(model)
    with GradCAM(model, "layer4") as cam:
        maps, _ = cam(x)
    assert_same_state(model, before)
    model.eval()
    ref, _ = gradcam(model, x, "layer4")
    np.testing.assert_allclose(maps, ref, atol=1e-6)  # the CAM itself ran in eval mode


@pytest.mark.parametrize("freeze", ["backbone", "all"])
def test_frozen_models_still_get_gradients(model, x, freeze):
    for name, p in model.named_parameters():
        p.requires_grad_(freeze == "backbone" and name.startswith("fc."))
    model.fc.bias.grad = torch.ones_like(model.fc.bias) if freeze == "backbone" else None  # pre-existing grad
    before = snapshot(model)
    with GradCAM(model, "layer4") as cam:
        maps, logits = cam(x)
        assert np.abs(cam.gradients).max() > 0 and np.isfinite(maps).all() and maps.max() == 1.0
    assert not logits.requires_grad
    assert_same_state(model, before)


def test_trainable_model_gets_no_param_grads(model, x):
    before = snapshot(model)
    gradcam(model, x, "layer2", targets=1)
    assert all(p.grad is None for p in model.parameters())
    assert_same_state(model, before)


def test_works_under_inference_mode(model, x):
    ref, _ = gradcam(model, x, "layer4")
    with torch.inference_mode():
        maps, _ = gradcam(model, x.clone(), "layer4")
    np.testing.assert_allclose(maps, ref, atol=1e-6)


# ------------------------------------------------------------------------------------- batching & targets
def test_batch_shapes_and_internals(model, x):
    with GradCAM(model, "layer4") as cam:
        maps, logits = cam(x)
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32 and tuple(logits.shape) == (3, 2)
    assert maps.min() >= 0 and maps.max() <= 1
    assert cam.activations.shape == cam.gradients.shape == (3, 512, 2, 2)
    np.testing.assert_allclose(cam.alphas, cam.gradients.mean(axis=(2, 3)), rtol=1e-6)
    weighted = np.einsum("nk,nkhw->nhw", cam.alphas, cam.activations)
    np.testing.assert_allclose(cam.weighted, weighted, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cam.raw_maps, np.maximum(weighted, 0), rtol=1e-4, atol=1e-6)
    up = F.interpolate(torch.from_numpy(cam.raw_maps)[:, None], size=(64, 64), mode="bilinear")[:, 0]
    np.testing.assert_allclose(maps, normalise_maps(up).numpy(), atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(logits.numpy(), model(x).numpy(), atol=1e-5)  # logits of the same forward


def test_every_map_comes_from_cam_steps(model, x):
    """One function turns a pass's activations and gradients into maps: GradCAM's maps, and the shift-averaged ones
    (whose copies GradCAM records, shift-major), are cam_steps of what was recorded."""
    with GradCAM(model, "layer3", "xgradcam") as cam:
        maps, _ = cam(x, targets=1)
        act, grad = torch.from_numpy(cam.activations), torch.from_numpy(cam.gradients)
        steps = cam_steps(act, grad, "xgradcam", (64, 64))
        np.testing.assert_allclose(steps.maps.numpy(), maps, atol=1e-6)
        np.testing.assert_allclose(steps.raw.numpy(), cam.raw_maps, atol=1e-6)
        shifts = shift_grid((0, 8))
        averaged, _ = cam.shift_averaged(x, 1, shifts)
        assert cam.activations.shape[0] == len(shifts) * len(x) and cam.maps.shape == (len(x), 64, 64)
        again = cam_steps(torch.from_numpy(cam.activations), torch.from_numpy(cam.gradients), "xgradcam",
                          shifted_size((64, 64), shifts), shifts)  # the copies' size (padded with "complete")
    np.testing.assert_allclose(again.maps.numpy(), averaged, atol=1e-6)
    np.testing.assert_array_equal(averaged, shift_averaged_gradcam(model, x, "layer3", 1, shifts, "xgradcam")[0])
    assert not np.allclose(averaged, maps, atol=1e-3)  # averaging the shifted copies changed the map


def test_targets_default_int_and_per_image(model, x):
    with GradCAM(model, "layer3") as cam:
        default, logits = cam(x)
        assert np.array_equal(cam.targets, logits.argmax(1).numpy())
        np.testing.assert_array_equal(default, cam(x, targets=logits.argmax(1).tolist())[0])
        m0, _ = cam(x, targets=0)
        m1, _ = cam(x, targets=1)
        mixed, _ = cam(x, targets=[0, 1, 0])
    assert np.abs(m0 - m1).max() > 1e-2  # different classes, different maps
    np.testing.assert_allclose(mixed[[0, 2]], m0[[0, 2]], atol=1e-6)  # per-image targets honoured
    np.testing.assert_allclose(mixed[1], m1[1], atol=1e-6)
    single, _ = gradcam(model, x[1:2], "layer3", targets=1)  # batching does not mix images
    np.testing.assert_allclose(single[0], m1[1], atol=1e-5)


def test_layer_by_name_or_module(model, x):
    a, _ = gradcam(model, x, "layer4")
    b, _ = gradcam(model, x, "layer4.1")  # layer4's output is its last block's output
    c, _ = gradcam(model, x, model.layer4)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)
    with pytest.raises(ValueError, match="no layer"):
        GradCAM(model, "layer9")
    with pytest.raises(ValueError, match="not a submodule"):
        GradCAM(model, torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(RuntimeError, match="twice"):
        gradcam(model, x, "layer4.0.relu")  # BasicBlock calls its ReLU module twice
    with pytest.raises(ValueError, match="convolutional"):
        gradcam(model, x, "fc")
    assert n_hooks(model) == 0


@pytest.mark.parametrize("layer", ["layer4.0.bn1", "layer4.0.bn2"])
def test_layer_followed_by_in_place_ops(model, x, layer):
    """bn1 feeds ReLU(inplace=True), bn2 feeds `out += identity`: the recorded activation stays intact."""
    seen = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    with GradCAM(model, layer) as cam:
        maps, logits = cam(x)
    handle.remove()
    np.testing.assert_allclose(cam.activations, seen[0].detach().numpy(), atol=1e-6)
    assert cam.activations.min() < 0  # pre-ReLU values: not overwritten by the in-place ReLU
    with torch.no_grad():
        np.testing.assert_allclose(logits.numpy(), model(x).numpy(), atol=1e-5)
    assert np.isfinite(maps).all() and maps.shape == (3, 64, 64)


# ------------------------------------------------------------------------------------- normalisation
def test_normalisation_edge_cases():
    z = normalise_maps(torch.zeros(2, 5, 5))
    assert torch.equal(z, torch.zeros(2, 5, 5))
    c = normalise_maps(torch.full((1, 4, 4), 3.0))
    assert torch.equal(c, torch.zeros(1, 4, 4))
    r = normalise_maps(torch.rand(3, 8, 8) * 7 + 2)
    assert torch.allclose(r.flatten(1).min(1).values, torch.zeros(3))
    assert torch.allclose(r.flatten(1).max(1).values, torch.ones(3))
    tiny = normalise_maps(torch.tensor([[[0.0, 1e-30]]]))
    assert torch.isfinite(tiny).all() and tiny.max() == 1.0


def test_all_zero_cam_stays_zero(model, x):
    model.fc.weight.data.zero_()  # the score no longer depends on the activations: zero gradients
    maps, _ = gradcam(model, x, "layer4")
    assert np.isfinite(maps).all() and not maps.any()


def test_resize_map():
    m = np.zeros((4, 4), np.float32)
    m[1, 1] = 1
    big = resize_map(m, (16, 16))
    assert big.shape == (16, 16) and big.min() >= 0 and big.max() <= 1
    assert resize_map(np.stack([m, m]), (8, 8)).shape == (2, 8, 8)


# ------------------------------------------------------------------------------------- overlay
def test_overlay_colours_are_rgb():
    gray = np.full((4, 4), 0.5, np.float32)
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 1.0
    out = overlay(gray, cam)
    assert out.shape == (4, 4, 3) and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    hot, cold = out[0, 0], out[3, 3]
    assert hot[0] > hot[1] and hot[0] > hot[2], f"hot pixel not red-dominant: {hot}"
    assert cold[2] > cold[0] and cold[2] > cold[1], f"cold pixel not blue-dominant: {cold}"
    np.testing.assert_allclose(overlay(gray, cam, alpha=0.0), np.repeat(gray[..., None], 3, 2))


def test_overlay_input_checks():
    cam = np.zeros((4, 4), np.float32)
    img8 = np.full((4, 4), 255, np.uint8)
    with pytest.raises(ValueError, match="gray_to_float"):
        overlay(img8, cam)
    assert overlay(gray_to_float(img8), cam).shape == (4, 4, 3)
    assert gray_to_float(img8).max() == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        overlay(np.full((4, 4), 1.5), cam)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        overlay(np.zeros((4, 4)), cam - 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        overlay(np.zeros((4, 4)), np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="shapes"):
        overlay(np.zeros((4, 5)), cam)
    with pytest.raises(ValueError, match="alpha"):
        overlay(np.zeros((4, 4)), cam, alpha=1.5)
    with pytest.raises(ValueError):
        gray_to_float(np.full((2, 2), 2.0))
