"""The demo's main explanation must keep pointing at lesions: near-pointing >= 0.80 on fixed phantoms.

Nothing is trained here. The shipped phantom-pretrained ResNet-18 (``model/phantom_resnet18_pretrained.pt``,
the demo's offline stand-in for ImageNet) is loaded as a full model — its ``fc`` head is the pretraining
classifier — and explained with :data:`utils.explain.selection.DEFAULT_EXPLANATION` on a small phantom set generated
with a seed disjoint from the pretraining corpus (seed 7) and the demo data (2024 / 2025). The test fails
when a change to the phantoms, the backbone or the explanation code pushes localisation below the bar
that notebook 05 reports against.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from utils.checkpoint import load_checkpoint
from utils.config import IMAGENET_MEAN, IMAGENET_STD, shipped
from utils.data import phantom
from utils.explain.selection import DEFAULT_EXPLANATION, score_explanations

BAR = 0.80  # near-pointing: the map's maximum within 5 % of the image size of a lesion
SEED, N_PATIENTS, SIZE = 31, 50, 128  # ≈ 60 true positives



@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    path = shipped("pretrained_backbone")
    if not path.exists():
        pytest.fail(f"{path} is missing: it is shipped with the repository (see model/README.md)")
    state = load_checkpoint(path, require_meta=False)["model"]
    model = resnet18(weights=None, num_classes=2)
    model.load_state_dict({k: v.float() for k, v in state.items()})  # stored in fp16
    return model.eval()


def test_default_explanation_localises_on_fixed_phantoms(backbone):
    data = phantom.stack(phantom.generate(N_PATIENTS, SEED, phantom.spec_for("default", SIZE), first_pid=90001))
    meta = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "threshold": 0.5}
    table = score_explanations(backbone, data["images"], data["lesion_masks"], data["labels"], meta,
                               [DEFAULT_EXPLANATION])
    row = table.iloc[0]
    base = table[table["baseline"]]
    summary = table[["method", "pointing", "near", "energy", "n"]].round(3).to_string(index=False)
    assert row["method"] == DEFAULT_EXPLANATION["name"]
    assert 40 <= row["n"] <= 150, f"expected ~60 true positives to score, got {row['n']}\n{summary}"
    assert row["near"] >= BAR, f"near-pointing {row['near']:.3f} < {BAR} for {row['method']}\n{summary}"
    assert row["near"] - base["near"].max() >= 0.5, f"does not beat the image-blind baselines widely\n{summary}"
    assert row["pointing"] - base["pointing"].max() >= 0.25, summary
    assert row["energy"] >= 1.5 * base["energy"].max(), summary  # energy is diluted by the coarse map
    assert np.isfinite(table[["pointing", "near", "energy"]].to_numpy(dtype=float)).all()
