"""Pretrain the phantom backbones the demo ships: ``model/phantom_resnet18_pretrained.pt`` (``--arch resnet18``)
and ``model/phantom_vit_tiny_pretrained.pt`` (``--arch vit_tiny``, notebook 09).

Why: offline there are no ImageNet weights, and a ResNet-18 trained from scratch on a CPU-sized phantom
set classifies well while its Grad-CAM points at lesions no better than chance (see the README). This
backbone is the offline stand-in for ImageNet: pretrained once on a large phantom corpus (disjoint
seeds from the demo data), so the demo's phase 1 / phase 2 mirror real transfer learning.

Pretext (``--pretext``):

* ``label`` (the default, and what is shipped): the image label (NORMAL / PNEUMONIA) only. The lesion masks
  never reach the training loop, so whatever the maps of this backbone localise was earned from labels.
* ``label+lesion-map`` (an ablation, docs/PHANTOM_BACKBONE.md): plus a coarse lesion map — a 1×1
  convolution on the ``layer3`` and ``layer4`` feature maps predicts the fraction of each cell covered by
  lesion. Maps of such a backbone look better than labels alone earn: never ship it as the demo default.

The auxiliary heads are discarded; only the ResNet-18 weights (and its 2-class head) are saved. The script
prints and stores validation AUC and Grad-CAM localisation (pointing / near-pointing at layer3 and layer4)
measured on held-out phantoms (their masks score the maps; they are never trained on).

Usage (GPU recommended; CPU works at reduced size):
    python scripts/pretrain_phantom_backbone.py --patients 7000 --epochs 6 --batch 64   # CPU, about an hour
    python scripts/pretrain_phantom_backbone.py --arch vit_tiny --patients 7000 --epochs 6 --batch 64
    python scripts/pretrain_phantom_backbone.py --smoke          # tiny CPU run to check the script
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from utils.checkpoint import make_meta, save_checkpoint
from utils.config import IMAGENET_MEAN, IMAGENET_STD
from utils.data import phantom
from utils.data.augment import AugmentSpec, augment_pair
from utils.machine import cpu_count
from utils.paths import SHIPPED
from utils.train.engine import autocast_for, class_weights
from utils.train.model import build_model, pneumonia_probability, preprocess
from utils.train.vit import build_vit

PRETEXTS = ("label", "label+lesion-map")


def corpus_spec(size: int, legacy: bool) -> phantom.PhantomSpec:
    """The default phantom spec; ``legacy`` = the values the shipped backbone was trained with."""
    spec = phantom.spec_for("default", size)
    if legacy:
        spec = replace(spec, mask_level=0.35, faint_factor=0.35, small_factor=0.45)
    return spec


def _gen_chunk(args):
    n, seed, first_pid, size, legacy = args
    s = phantom.stack(phantom.generate(n, seed, corpus_spec(size, legacy), first_pid=first_pid))
    return s["images"], s["lesion_masks"], s["labels"]


def make_corpus(n_patients: int, seed: int, size: int, workers: int, legacy: bool = False) -> tuple[np.ndarray, ...]:
    """Phantom images, lesion masks and labels of ``n_patients`` patients, generated in parallel."""
    chunk = 200
    jobs = [(min(chunk, n_patients - i), seed * 100_003 + i, 100_000 + i, size, legacy)
            for i in range(0, n_patients, chunk)]
    if workers <= 1:
        parts = list(map(_gen_chunk, jobs))
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_gen_chunk, jobs)
    return tuple(np.concatenate(p) for p in zip(*parts))


class LabelOnly(nn.Module):
    """A classifier in the training loop's shape: ``(logits, None, None)`` (no auxiliary maps)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), None, None


class Pretext(nn.Module):
    """ResNet-18 + 1×1 lesion-map heads on layer3 and layer4."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.aux3 = nn.Conv2d(256, 1, 1)
        self.aux4 = nn.Conv2d(512, 1, 1)

    def forward(self, x):
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        f3 = n.layer3(n.layer2(n.layer1(x)))
        f4 = n.layer4(f3)
        logits = n.fc(torch.flatten(n.avgpool(f4), 1))
        return logits, self.aux3(f3), self.aux4(f4)


def _explainers(model: nn.Module) -> dict:
    """The maps measured after pretraining: Grad-CAM on layer3 / layer4 (ResNet), or Grad-CAM on the last
    block's norm1 and attention rollout (ViT)."""
    from utils.explain.gradcam import GradCAM
    from utils.explain.vit import attention_rollout, vit_gradcam_layer, vit_reshape
    from utils.train.vit import is_vit

    def cam(layer, reshape=None):
        def run(xb):
            with GradCAM(model, layer, reshape=reshape) as c:
                return c(xb, targets=[1] * len(xb))[0]
        return run

    if is_vit(model):
        return {"gradcam_norm1": cam(vit_gradcam_layer(model), vit_reshape(model)),
                "rollout": lambda xb: attention_rollout(model, xb)[0]}
    return {"layer3": cam("layer3"), "layer4": cam("layer4")}


@torch.no_grad()
def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, batch: int = 256) -> dict:
    """Val AUC and localisation of the maps (:func:`_explainers`) on true-pneumonia images (masks score only)."""
    from sklearn.metrics import roc_auc_score

    from utils.explain.localisation import localisation_scores

    model.eval()
    logits = [model(preprocess(x[i:i + batch], IMAGENET_MEAN, IMAGENET_STD)) for i in range(0, len(x), batch)]
    probs = pneumonia_probability(torch.cat(logits))
    yn = y.cpu().numpy()
    out = {"val_auc": float(roc_auc_score(yn, probs)), "val_recall@0.5": float((probs[yn == 1] >= 0.5).mean()),
           "val_specificity@0.5": float((probs[yn == 0] < 0.5).mean())}
    pos = np.flatnonzero((yn == 1) & (probs >= 0.5))[:400]
    out["localised_on"] = "true positives"
    if len(pos) == 0:  # e.g. a smoke run that detects nothing yet: measure on every pneumonia image
        pos, out["localised_on"] = np.flatnonzero(yn == 1)[:400], "all pneumonia images (no true positive)"
    with torch.enable_grad():
        for name, explain in _explainers(model).items():
            maps = [explain(preprocess(x[pos[i:i + 64]], IMAGENET_MEAN, IMAGENET_STD)) for i in range(0, len(pos), 64)]
            sc = localisation_scores(np.concatenate(maps), masks[pos].cpu().numpy())
            out.update({f"{name}_{k}": v for k, v in sc.items() if isinstance(v, (int, float))})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--patients", type=int, default=16000)
    p.add_argument("--val-patients", type=int, default=600)
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--arch", choices=("resnet18", "vit_tiny"), default="resnet18")
    p.add_argument("--lr", type=float, default=None, help="default: 2e-3 (ResNet), 1e-3 (ViT)")
    p.add_argument("--weight-decay", type=float, default=None, help="default: 5e-4 (ResNet), 0.05 (ViT)")
    p.add_argument("--pretext", choices=PRETEXTS, default="label",
                   help="label: labels only (the shipped default); label+lesion-map: the mask-supervised ablation")
    p.add_argument("--aux-weight", type=float, default=1.0, help="weight of the lesion-map loss (ablation only)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workers", type=int, default=cpu_count())
    p.add_argument("--out", default=None, help="default: the shipped file of --arch under model/")
    p.add_argument("--report", default="", help="also write the measurements to this JSON file")
    p.add_argument("--legacy-spec", action="store_true",
                   help="the phantom spec the shipped backbone was trained with (docs/PHANTOM_BACKBONE.md)")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run (checks the script, ships nothing useful)")
    a = p.parse_args(argv)
    if a.smoke:
        a.patients, a.val_patients, a.epochs, a.batch = 24, 16, 1, 16
    vit = a.arch == "vit_tiny"
    if vit and a.pretext != "label":
        p.error("the ViT is pretrained with labels only (--pretext label)")
    a.lr = a.lr if a.lr is not None else (1e-3 if vit else 2e-3)
    a.weight_decay = a.weight_decay if a.weight_decay is not None else (0.05 if vit else 5e-4)
    a.out = a.out or str(ROOT / SHIPPED["vit_backbone" if vit else "pretrained_backbone"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(a.seed)
    t0 = time.time()
    xi, mi, yi = make_corpus(a.patients, a.seed, a.size, a.workers, a.legacy_spec)
    xv, mv, yv = make_corpus(a.val_patients, a.seed + 1000, a.size, a.workers, a.legacy_spec)
    print(f"corpus: {len(yi)} train / {len(yv)} val images at {a.size}px in {time.time() - t0:.0f}s "
          f"({yi.mean():.2f} pneumonia)", flush=True)
    uses_masks = a.pretext == "label+lesion-map"
    X = torch.from_numpy(xi).unsqueeze(1).to(device)
    M = torch.from_numpy(mi).unsqueeze(1).to(device) if uses_masks else None  # label-only: masks never used
    del mi
    Y = torch.from_numpy(yi).to(device)
    Xv, Yv, Mv = torch.from_numpy(xv).unsqueeze(1).to(device), torch.from_numpy(yv).to(device), torch.from_numpy(mv)

    if vit:
        net, _ = build_vit("none", image_size=a.size, seed=a.seed)
        model = LabelOnly(net).to(device)
    else:
        net, _ = build_model("none", seed=a.seed)
        model = Pretext(net).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    steps = a.epochs * ((len(Y) + a.batch - 1) // a.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps, pct_start=0.15)
    ce = nn.CrossEntropyLoss(weight=class_weights(yi).to(device))
    ctx, _ = autocast_for(device)
    gen = torch.Generator().manual_seed(a.seed)
    spec = AugmentSpec()
    t1 = time.time()
    for epoch in range(1, a.epochs + 1):
        model.train()
        order = torch.randperm(len(Y), generator=gen).to(device)
        tot = 0.0
        for i in range(0, len(order), a.batch):
            idx = order[i:i + a.batch]
            xa, ma = augment_pair(X[idx], M[idx] if M is not None else None, gen, spec)
            x = preprocess(xa, IMAGENET_MEAN, IMAGENET_STD)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with ctx:
                logits, a3, a4 = model(x)
            loss = ce(logits.float(), Y[idx])
            if ma is not None:
                t3 = F.adaptive_avg_pool2d(ma, a3.shape[-2:])
                t4 = F.adaptive_avg_pool2d(ma, a4.shape[-2:])
                loss = loss + a.aux_weight * (F.binary_cross_entropy_with_logits(a3.float(), t3)
                                              + F.binary_cross_entropy_with_logits(a4.float(), t4))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        print(f"[{a.pretext}] epoch {epoch}/{a.epochs} loss {tot / len(Y):.4f} ({time.time() - t1:.0f}s, "
              f"{epoch * len(Y) / (time.time() - t1):.0f} img/s)", flush=True)
    net = model.net.float().to(memory_format=torch.contiguous_format)
    res = measure(net, Xv, Yv, Mv)
    res.update({"train_images": len(Y), "val_images": len(Yv), "epochs": a.epochs, "size": a.size,
                "seconds": round(time.time() - t0, 1),
                "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"})
    print(json.dumps(res, indent=1), flush=True)
    state = {k: v.detach().cpu().half() for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    from dataclasses import asdict
    meta = make_meta(image_size=a.size, mean=IMAGENET_MEAN, std=IMAGENET_STD, threshold=0.5, arch=a.arch,
                     profile="pretrain", weights="phantom-pretrained", phase="pretrain",
                     pretext=("labels only (class-weighted cross-entropy)" if not uses_masks else
                              "label + layer3/layer4 lesion-fraction maps (BCE)"),
                     uses_lesion_masks=uses_masks,
                     corpus={"train": {"patients": a.patients, "seed": a.seed, "images": len(Y)},
                             "val": {"patients": a.val_patients, "seed": a.seed + 1000, "images": len(Yv)},
                             "phantom_spec": asdict(corpus_spec(a.size, a.legacy_spec)),
                             "legacy_spec": bool(a.legacy_spec)},
                     recipe={"epochs": a.epochs, "batch": a.batch, "lr": a.lr, "weight_decay": a.weight_decay,
                             "optimiser": "AdamW, one-cycle",
                             "aux_weight": a.aux_weight if uses_masks else 0.0},
                     script="scripts/pretrain_phantom_backbone.py", measured=res)
    save_checkpoint(a.out, {"model": state, "meta": meta})
    if a.report:
        Path(a.report).write_text(json.dumps(res, indent=1))
    print(f"saved {a.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
