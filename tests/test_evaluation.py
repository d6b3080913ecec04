"""utils.evaluate.evaluation: the rule that chooses the shipped model on validation (SHIP_RULE)."""
from __future__ import annotations

import numpy as np
import pytest

from utils.evaluate.evaluation import choose_shipped

Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
# at threshold 0.5: specificity 3/4, ROC AUC 12/16 (the negative at 0.9 outranks every positive)
SPECIFIC = np.array([0.1, 0.2, 0.3, 0.9, 0.5, 0.6, 0.7, 0.8])
# at threshold 0.5: specificity 2/4, ROC AUC 14/16
RANKING = np.array([0.1, 0.2, 0.6, 0.7, 0.5, 0.8, 0.9, 0.95])
# at threshold 0.5: specificity 3/4 as SPECIFIC, ROC AUC 16/16
BOTH = np.array([0.1, 0.2, 0.3, 0.55, 0.6, 0.7, 0.8, 0.9])


@pytest.mark.parametrize("order", [("phase 1", "phase 2"), ("phase 2", "phase 1")])
def test_higher_validation_specificity_ships_even_against_a_higher_auc(order):
    probs = {"phase 1": SPECIFIC, "phase 2": RANKING}
    shipped, table = choose_shipped(Y, {k: probs[k] for k in order}, {"phase 1": 0.5, "phase 2": 0.5})
    assert shipped == "phase 1"  # the order the candidates come in does not matter
    rows = table.set_index("model")
    assert rows.loc["phase 1", "val_specificity"] == pytest.approx(0.75) and rows.loc["phase 2", "val_roc_auc"] == 0.875
    assert rows["shipped"].to_dict() == {"phase 1": True, "phase 2": False}


def test_each_phase_is_judged_at_its_own_threshold():
    # at 0.5 RANKING is less specific; at its own threshold 0.75 (recall still 3/4) it rejects every negative
    shipped, table = choose_shipped(Y, {"phase 1": SPECIFIC, "phase 2": RANKING}, {"phase 1": 0.5, "phase 2": 0.75})
    assert shipped == "phase 2" and table.set_index("model").loc["phase 2", "val_specificity"] == 1.0


def test_ties_go_to_the_higher_auc_then_to_phase_2():
    shipped, _ = choose_shipped(Y, {"phase 2": SPECIFIC, "phase 1": BOTH}, {"phase 1": 0.5, "phase 2": 0.5})
    assert shipped == "phase 1"  # equal specificity 3/4: AUC 1.0 beats 0.75
    for order in (("phase 1", "phase 2"), ("phase 2", "phase 1")):
        shipped, table = choose_shipped(Y, dict.fromkeys(order, SPECIFIC), {"phase 1": 0.5, "phase 2": 0.5})
        assert shipped == "phase 2" and table["shipped"].sum() == 1  # a full tie: the later phase
