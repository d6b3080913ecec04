"""The ViT of notebook 09: its build, the reshape transform Grad-CAM reads it through, and attention rollout."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import utils.train.model as model_module
from utils.errors import UserError
from utils.explain.checks import oracle_difference
from utils.explain.gradcam import gradcam
from utils.explain.maps import candidate_maps, explain, main_explanation
from utils.explain.spec import UNMEASURED_EXPLANATION, VIT_EXPLANATION_CANDIDATES, candidates_for, make_spec
from utils.explain.vit import VIT_GRADCAM_LAYER, attention_rollout, vit_gradcam_layer, vit_last_block, vit_reshape
from utils.train.model import build_model, layer_groups
from utils.train.vit import build_vit, is_vit, token_grid, tokens_to_grid

SIZE = 64  # a 4 x 4 patch grid: fast, and large enough to tell positions apart


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    model, desc = build_vit("none", 2, SIZE, seed=0)
    assert desc == "random initialisation"
    return model.eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, SIZE, SIZE)


def test_build_is_vit_tiny_patch16(vit):
    assert is_vit(vit) and is_vit({"arch": "vit_tiny"}) and not is_vit({"arch": "resnet18"})
    assert token_grid(vit) == (SIZE // 16, SIZE // 16) and len(vit.blocks) == 12 and vit.embed_dim == 192
    assert 5.0e6 < sum(p.numel() for p in vit.parameters()) < 6.0e6  # ViT-Tiny: 5.5 M
    assert vit_gradcam_layer(vit) == VIT_GRADCAM_LAYER  # the constant names the built model's last block
    assert vit.get_submodule(vit_last_block(vit)) is vit.blocks[-1]
    model, _ = build_model("none", arch="vit_tiny", image_size=SIZE, seed=0)
    assert is_vit(model)
    groups = layer_groups(model)  # the ResNet's group names, so the same layer-wise rates apply
    assert list(groups) == ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))


def test_image_size_must_fit_the_patches():
    with pytest.raises(UserError, match="patch size 16"):
        build_vit("none", 2, 100)
    with pytest.raises(UserError, match="unknown architecture"):
        build_model("none", arch="vit_huge")


def test_weights_of_another_size_get_resampled_position_embeddings(tmp_path, capsys):
    model, _ = build_vit("none", 2, 32, seed=0)  # a 2x2 token grid
    path = tmp_path / "vit32.pt"
    torch.save({"model": model.state_dict()}, path)
    big, desc = build_vit(str(path), 2, 64)  # a 4x4 grid
    assert big.pos_embed.shape == (1, 17, 192) and "resampled from a 2x2 to a 4x4" in desc
    assert "resampled" in capsys.readouterr().out
    assert torch.equal(big.pos_embed[0, 0], model.pos_embed[0, 0])  # [CLS] kept as it was
    assert torch.equal(big.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)  # the rest loads unchanged
    state = model.state_dict()
    state["pos_embed"] = state["pos_embed"][:, :4]  # 3 patch tokens: no square grid
    torch.save({"model": state}, path)
    with pytest.raises(UserError, match="do not fit this model"):
        build_vit(str(path), 2, 64)


def test_tokens_to_grid_lays_patches_out_row_major():
    grid = (2, 3)
    tokens = torch.zeros(1, 1 + 6, 4)
    tokens[0, 0] = -1.0  # [CLS]: dropped
    for k in range(6):
        tokens[0, 1 + k] = k
    out = tokens_to_grid(tokens, grid)
    assert out.shape == (1, 4, 2, 3)
    assert out[0, 0].tolist() == [[0, 1, 2], [3, 4, 5]]  # token k sits at (k // w, k % w)
    with pytest.raises(ValueError, match="do not fit"):
        tokens_to_grid(torch.zeros(1, 6, 4), grid)


def test_gradcam_through_the_reshape_matches_pytorch_grad_cam(vit, x):
    assert oracle_difference(vit, x, VIT_GRADCAM_LAYER, targets=1, reshape=vit_reshape(vit)) < 1e-4
    maps, logits = explain(vit, x, VIT_EXPLANATION_CANDIDATES[0], targets=1)
    ours, _ = gradcam(vit, x, VIT_GRADCAM_LAYER, 1, reshape=vit_reshape(vit))
    assert maps.shape == (3, SIZE, SIZE) and np.allclose(maps, ours, atol=1e-6)
    assert torch.allclose(logits, vit(x), atol=1e-5)


def test_the_last_blocks_output_is_the_wrong_target(vit, x):
    """The head reads only [CLS] after the last block: the patch tokens there get no gradient, so no map."""
    last = f"blocks.{len(vit.blocks) - 1}"
    maps, _ = gradcam(vit, x, last, 1, reshape=vit_reshape(vit))
    assert np.allclose(maps, 0.0)
    good, _ = gradcam(vit, x, VIT_GRADCAM_LAYER, 1, reshape=vit_reshape(vit))
    assert (np.ptp(good.reshape(len(good), -1), axis=1) > 0.5).all()


def _rollout_by_hand(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Attention rollout from the blocks' own q and k (not the hooks the implementation uses), coarse grid."""
    with torch.no_grad():
        t = model._pos_embed(model.patch_embed(x))
        t = model.norm_pre(t)
        roll = None
        for blk in model.blocks:
            a = blk.attn
            n, tok, c = t.shape
            qkv = a.qkv(blk.norm1(t)).reshape(n, tok, 3, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4)
            q, k = a.q_norm(qkv[0]), a.k_norm(qkv[1])
            att = ((q * a.scale) @ k.transpose(-2, -1)).softmax(-1).mean(1)
            att = 0.5 * att + 0.5 * torch.eye(tok)
            att = att / att.sum(-1, keepdim=True)
            roll = att if roll is None else att @ roll
            t = blk(t)
        h, w = token_grid(model)
        return roll[:, 0, 1:].reshape(n, h, w).numpy()


def test_rollout_matches_a_hand_computation(vit, x):
    before = [b.attn.fused_attn for b in vit.blocks]
    maps, logits = attention_rollout(vit, x)
    assert [b.attn.fused_attn for b in vit.blocks] == before  # the fused-attention switch is restored
    assert maps.shape == (3, SIZE, SIZE) and maps.min() >= 0 and np.isclose(maps.max(), 1.0)
    assert torch.allclose(logits, vit(x), atol=1e-5)
    coarse = _rollout_by_hand(vit, x)
    h, w = coarse.shape[1:]
    centres = maps[:, 8::16, 8::16]  # the upsampled map at the patch centres ~ the normalised coarse map
    for m, c in zip(centres, coarse):
        c = (c - c.min()) / (c.max() - c.min())
        assert np.corrcoef(m.ravel(), c.ravel())[0, 1] > 0.98
        assert np.unravel_index(np.argmax(c), (h, w)) == np.unravel_index(np.argmax(m), (h, w))
    assert not vit.training


def test_rollout_is_for_vits_only():
    resnet, _ = build_model("none", seed=0)
    with pytest.raises(ValueError, match="Vision Transformer"):
        explain(resnet.eval(), torch.randn(1, 3, 64, 64), make_spec("rollout"))
    with pytest.raises(ValueError, match="no shifts"):
        make_spec("rollout", shifts=(0, 8))


def test_a_vit_checkpoint_gets_a_vit_explanation():
    assert main_explanation({"arch": "vit_tiny"})["layer"] == VIT_GRADCAM_LAYER
    assert main_explanation({"arch": "resnet18"}) == UNMEASURED_EXPLANATION
    assert candidates_for({"arch": "vit_tiny"}) == VIT_EXPLANATION_CANDIDATES
    names = [s["name"] for s in VIT_EXPLANATION_CANDIDATES]
    assert "attention rollout" in names and len(set(names)) == len(names)


def test_candidate_maps_share_work_for_the_vit(vit, x):
    maps, logits, _ = candidate_maps(vit, x, VIT_EXPLANATION_CANDIDATES, targets=1)
    single, _ = explain(vit, x, VIT_EXPLANATION_CANDIDATES[0], targets=1)
    roll, _ = attention_rollout(vit, x)
    assert np.allclose(maps[VIT_EXPLANATION_CANDIDATES[0]["name"]], single, atol=1e-6)
    assert np.allclose(maps["attention rollout"], roll, atol=1e-6)
    assert logits.shape == (3, 2)


def test_imagenet_vit_offline_falls_back_in_one_line(monkeypatch, capsys):
    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setattr(model_module, "is_online", lambda host, timeout=3.0: True)  # reachable, then it fails
    model, desc = build_vit("imagenet", 2, SIZE, seed=0)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "ImageNet ViT weights unavailable (OSError" in out[0]
    assert desc == "random initialisation (ImageNet weights unavailable offline)" and is_vit(model)


def test_imagenet_vit_offline_never_tries_the_download(monkeypatch, capsys):
    import timm

    real = timm.create_model
    monkeypatch.setattr(model_module, "is_online", lambda host, timeout=3.0: False)
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **kw: (
        pytest.fail("tried to download") if pretrained else real(name, pretrained=False, **kw)))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)  # nothing cached
    _, desc = build_vit("imagenet", 2, SIZE, seed=0)
    captured = capsys.readouterr()
    assert captured.out.strip().startswith("ImageNet ViT weights unavailable (offline") and not captured.err
    assert desc.startswith("random initialisation")
