"""Choosing the main explanation on validation data, by measurement (notebook 05).

* :func:`choose_explanation` scores every candidate (:data:`utils.explain.spec.EXPLANATION_CANDIDATES`) on the
  **validation** true positives that have a ground-truth lesion mask — near-pointing first (map maximum within
  5 % of the image size of a lesion), then pointing, then energy inside the lesion — and returns the best spec and
  the table;
* :func:`score_explanations` gives the same table on any split (notebook 05 reports the test set).

The maps come from one shared pass (:func:`utils.explain.maps.candidate_maps`); the specs are those of
:mod:`utils.explain.spec`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from utils.evaluate.metrics import outcome_groups
from utils.explain import localisation as loc
from utils.explain.localisation import TOLERANCE_FRAC
from utils.explain.maps import candidate_maps
from utils.explain.spec import EXPLANATION_CANDIDATES, Spec, check_spec
from utils.train.model import pneumonia_probability, preprocess

__all__ = ["TABLE_COLUMNS", "choose_explanation", "score_explanations"]

#: Columns of the tables returned by :func:`score_explanations` / :func:`choose_explanation`.
TABLE_COLUMNS = ("method", "weighting", "layer", "shifts", "copies", "pointing", "near", "energy", "area", "n",
                 "n_pointing", "n_near", "n_skipped", "baseline")


# ----------------------------------------------------------------------------------------- scoring
def score_explanations(model: nn.Module, images: np.ndarray, lesion_masks: np.ndarray, labels: np.ndarray,
                       meta: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]] = EXPLANATION_CANDIDATES,
                       tolerance_frac: float = TOLERANCE_FRAC, batch_size: int = 64, progress: bool = False,
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
    images, labels, masks = loc.scored_inputs(images, labels, lesion_masks)
    specs = [check_spec(c) for c in candidates]
    pos = np.flatnonzero(labels == 1)
    x = preprocess(torch.from_numpy(images[pos]), meta["mean"], meta["std"])
    maps, logits, seconds = candidate_maps(model, x, specs, targets=1, batch_size=batch_size, progress=progress)
    tp = outcome_groups(labels[pos], pneumonia_probability(logits), float(meta["threshold"])) == "TP"
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
                       tolerance_frac: float = TOLERANCE_FRAC, batch_size: int = 64, progress: bool = False,
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
