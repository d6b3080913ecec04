"""utils.artifacts: the operating-threshold rule, predictions files, the explanation record, model-vs-data checks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from utils import artifacts as A
from utils.artifacts import threshold_for_recall
from utils.checkpoint import load_checkpoint, make_meta, save_checkpoint
from utils.errors import UserError
from utils.evaluate import metrics as M

Y10 = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
P10 = np.array([0.1, 0.2, 0.35, 0.4, 0.7, 0.3, 0.6, 0.8, 0.9, 0.95])


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(rng.normal(0.35 + 0.3 * y, 0.18), 0, 1)


@pytest.mark.parametrize("target", [0.2, 0.5, 0.8, 0.9, 0.98, 1.0])
def test_threshold_for_recall_is_highest_meeting_target(target):
    y, p = synthetic(400, seed=1)
    t = threshold_for_recall(y, p, target)
    assert M.threshold_metrics(y, p, t)["sensitivity"] >= target
    above = np.unique(p[p > t])
    if above.size:  # the next higher candidate threshold no longer reaches the target
        assert M.threshold_metrics(y, p, above[0])["sensitivity"] < target


def test_threshold_for_recall_hand_cases_and_ties():
    assert threshold_for_recall(Y10, P10, 1.0) == pytest.approx(0.3)  # lowest positive
    assert threshold_for_recall(Y10, P10, 0.8) == pytest.approx(0.6)
    assert threshold_for_recall(Y10, P10, 0.81) == pytest.approx(0.3)
    # ties: three positives share 0.5, so recall jumps 0.25 -> 1.0 at exactly 0.5
    assert threshold_for_recall([1, 1, 1, 1, 0], [0.9, 0.5, 0.5, 0.5, 0.7], 0.5) == pytest.approx(0.5)
    assert threshold_for_recall([1, 1], [0.4, 0.7], 1.0) == pytest.approx(0.4)  # all positives
    with pytest.raises(ValueError):
        threshold_for_recall([0, 0], [0.1, 0.2])


def test_threshold_for_recall_uses_only_given_arrays():
    y_val, p_val = synthetic(300, seed=2)
    y_test, p_test = synthetic(300, seed=3)
    t = threshold_for_recall(y_val, p_val, 0.9)
    assert t == threshold_for_recall(y_val.copy(), p_val.copy(), 0.9)  # deterministic
    assert t in set(p_val[y_val == 1])  # a validation positive's score, never a test one's
    assert t != threshold_for_recall(y_test, p_test, 0.9)
    both = threshold_for_recall(np.r_[y_val, y_test], np.r_[p_val, p_test], 0.9)
    assert both != t  # adding data changes it, so nothing else leaks in


def test_the_rule_and_the_metrics_check_their_input_alike():
    for bad, message in ((([1, 0, 1], [0.2, 0.9]), "3 values but prob has 2"), (([1, 2], [0.2, 0.9]), "only 0")):
        for fn in (threshold_for_recall, lambda y, p: M.threshold_metrics(y, p, 0.5)):
            with pytest.raises(ValueError, match=message):
                fn(*bad)
    key, = (k for k in M.choose_thresholds(Y10, P10, 0.8) if k.startswith("recall"))
    assert key == A.rule_name(0.8) and M.choose_thresholds(Y10, P10, 0.8)[key] == threshold_for_recall(Y10, P10, 0.8)


def test_predictions_frame_roundtrip_and_validation(tmp_path):
    frame = A.predictions_frame(["i1", "i2"], [1, 0], [0.9, 0.2], ["007", "p2"], ["virus", "normal"], "test")
    assert tuple(frame.columns) == A.PREDICTION_COLUMNS and (frame["split"] == "test").all()
    path = tmp_path / "predictions_test.csv"
    frame.to_csv(path, index=False)
    back = A.read_predictions(path)
    pd.testing.assert_frame_equal(back, frame)  # "007" stays a string
    frame.drop(columns=["prob", "subtype"]).to_csv(path, index=False)
    with pytest.raises(UserError, match="missing column.*prob, subtype"):
        A.read_predictions(path)
    with pytest.raises(ValueError):
        A.predictions_frame(["i1"], [1, 0], [0.9, 0.2], ["p"], ["virus"], "test")


def _ckpt(path, **meta):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(path, {"model": model.state_dict(), "meta": make_meta(image_size=64, mean=[0] * 3, std=[1] * 3,
                                                                        **meta)})
    return path


class _Bundle:
    fingerprint, image_size = "abc", 64


def test_operating_point_recorded_and_read_back(tmp_path):
    path = _ckpt(tmp_path / "m.pt", data_fingerprint="abc")
    meta = load_checkpoint(path)["meta"]
    with pytest.raises(UserError, match="m.pt carries no operating threshold.*04_evaluation") as exc:
        A.operating_threshold(meta, path)  # the default 0.5 nobody chose is never used
    assert "\n" not in str(exc.value)
    A.record_operating_point(path, 0.123, 0.98, chosen_phase="phase2")
    meta = load_checkpoint(path)["meta"]
    assert A.operating_threshold(meta) == (0.123, "highest threshold with validation recall >= 0.98")
    assert meta["chosen_phase"] == "phase2" and meta["target_recall"] == 0.98


def test_explanation_record(tmp_path):
    path = _ckpt(tmp_path / "m.pt")
    assert A.recorded_explanation(load_checkpoint(path)["meta"]) is None
    spec = {"name": "Grad-CAM @ layer3", "method": "gradcam", "layer": "layer3", "shifts": [0]}
    A.record_explanation(path, spec, "chosen on validation")
    meta = load_checkpoint(path)["meta"]
    assert A.recorded_explanation(meta) == spec and meta["gradcam_layer"] == "layer3"


def test_checkpoint_state_names_what_is_wrong(tmp_path):
    assert A.checkpoint_state(tmp_path / "none.pt", _Bundle()) == "it is missing"
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "cannot be used" in A.checkpoint_state(tmp_path / "junk.pt", _Bundle())
    other = _ckpt(tmp_path / "other.pt", data_fingerprint="xyz")
    assert "other data" in A.checkpoint_state(other, _Bundle())
    ok = _ckpt(tmp_path / "ok.pt", data_fingerprint="abc")
    assert A.checkpoint_state(ok, _Bundle()) is None
    assert A.checkpoint_state(ok, _Bundle(), need=("threshold_rule",)) == "it carries no threshold_rule yet"
    b = _Bundle()
    b.image_size = 128
    assert "64 px" in A.data_mismatch(load_checkpoint(ok)["meta"], b)


def test_predictions_must_match_the_split():
    frame = A.predictions_frame(["a", "b"], [1, 0], [0.9, 0.1], ["p1", "p2"], ["virus", ""], "val")
    A.check_predictions_match(frame, ["a", "b"], [1, 0])
    with pytest.raises(UserError, match="do not match the val split"):
        A.check_predictions_match(frame, ["b", "a"], [0, 1], "the val split")
    with pytest.raises(UserError, match="labels differ"):
        A.check_predictions_match(frame, ["a", "b"], [0, 0])
