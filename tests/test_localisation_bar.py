"""The demo's main explanation must keep pointing at lesions — and beat the image-blind baselines that could win.

Nothing is trained here. The shipped phantom-pretrained ResNet-18 (``model/phantom_resnet18_pretrained.pt``, the
demo's offline stand-in for ImageNet, pretrained with **labels only** — no lesion mask ever reached its loss) is
loaded as a full model, its ``fc`` head being the pretraining classifier, and explained with
:data:`utils.explain.spec.DEMO_EXPLANATION` on a phantom set generated with a seed disjoint from the
pretraining corpus and the demo data. The baselines include the two hard ones, the mean lesion and the mean lung
field of a separate phantom "training" set (where lesions usually are), and the margin over the best of them must
hold with a patient-resampled 95 % interval. The test fails when a change to the phantoms, the backbone or the
explanation code pushes localisation below the bar or down to what a map that never looks at the image achieves.
"""
from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18

from utils.checkpoint import load_checkpoint
from utils.config import IMAGENET_MEAN, IMAGENET_STD
from utils.data import phantom
from utils.evaluate.metrics import paired_difference_ci
from utils.evaluate.verdicts import format_difference
from utils.explain import localisation as L
from utils.explain.selection import score_explanations
from utils.explain.spec import DEMO_EXPLANATION
from utils.paths import shipped

BAR = 0.75  # near-pointing within 5 % of the image side of a lesion (measured 0.97 on these 58 true positives;
# 0.83 for the library-anchored shift-averaged Grad-CAM that was DEMO_EXPLANATION before the anchor was a knob)
SEED, N_PATIENTS, SIZE = 31, 50, 128  # ≈ 60 true positives
PRIOR_SEED, PRIOR_PATIENTS = 37, 80  # the "training" masks the hard baselines are averaged from


@pytest.fixture(scope="module")
def backbone() -> tuple[torch.nn.Module, dict]:
    path = shipped("pretrained_backbone")
    if not path.exists():
        pytest.fail(f"{path} is missing: it is shipped with the repository (see model/README.md)")
    ckpt = load_checkpoint(path, require_meta=False)
    model = resnet18(weights=None, num_classes=2)
    model.load_state_dict({k: v.float() for k, v in ckpt["model"].items()})  # stored in fp16
    return model.eval(), ckpt.get("meta", {})


def test_backbone_was_pretrained_with_labels_only(backbone):
    _, meta = backbone
    assert meta.get("uses_lesion_masks") is False, meta.get("pretext")
    assert str(meta.get("pretext", "")).startswith("labels only"), meta.get("pretext")
    assert meta["recipe"]["aux_weight"] == 0.0


def test_default_explanation_beats_the_hard_baselines(backbone):
    model, _ = backbone
    spec = phantom.spec_for("default", SIZE)
    data = phantom.stack(phantom.generate(N_PATIENTS, SEED, spec, first_pid=90001))
    train = phantom.stack(phantom.generate(PRIOR_PATIENTS, PRIOR_SEED, spec, first_pid=95001))
    priors = L.prior_maps(train["lesion_masks"], train["lung_masks"])
    assert set(priors) == {"mean-lesion prior", "lung-field prior"}
    meta = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "threshold": 0.5}
    table, (maps, tp) = score_explanations(model, data["images"], data["lesion_masks"], data["labels"], meta,
                                           [DEMO_EXPLANATION], return_maps=True, priors=priors)
    row, base = table.iloc[0], table[table["baseline"]]
    summary = table[["method", "pointing", "near", "energy", "n"]].round(3).to_string(index=False)
    assert row["method"] == DEMO_EXPLANATION["name"]
    assert 40 <= row["n"] <= 150, f"expected ~60 true positives to score, got {row['n']}\n{summary}"
    assert row["near"] >= BAR, f"near-pointing {row['near']:.3f} < {BAR} for {row['method']}\n{summary}"
    assert {"mean-lesion prior", "lung-field prior"} <= set(base["method"]), summary

    masks = data["lesion_masks"][tp]
    ours = L.per_image_scores(maps[DEMO_EXPLANATION["name"]], masks)
    baselines = L.baseline_per_image(masks, priors)
    best = max(baselines, key=lambda k: baselines[k]["near"].mean())
    diff = paired_difference_ci(ours["near"], baselines[best]["near"], data["patient_ids"][tp], n_boot=500)
    assert diff["ci_low"] > 0, f"near-pointing does not beat the best baseline ({best}): {diff}\n{summary}"
    # what docs/PHANTOM_BACKBONE.md quotes (shown by `pytest tests/test_localisation_bar.py -rP`; nothing is written)
    print(f"{summary}\nnear-pointing, map - {best} (paired, patients resampled): {format_difference(diff)}")
    # energy: the map finds the lesion, it does not outline it — against the hard priors it ties or loses (here 0.118
    # vs 0.139 for the mean-lesion prior; demo run 0.096 vs 0.117), so the bar is the easy baselines, which never look
    # inside the lungs
    easy = base[base["method"].isin(["centre prior", "random (mean of 10)"])]["energy"]
    assert len(easy) == 2 and row["energy"] > easy.max(), f"energy no better than an image-blind map\n{summary}"
