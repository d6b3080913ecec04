"""Checkpoints: atomic save, safe load (weights_only=True), metadata, one-line errors."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from utils import checkpoint as CK
from utils.checkpoint import load_checkpoint, make_meta, save_checkpoint, state_fingerprint, update_meta
from utils.errors import UserError


class Custom:  # a class a plain checkpoint must never need
    def __init__(self):
        self.x = 1


def _ckpt(value: float = 1.0) -> dict:
    return {"model": {"w": torch.full((3, 2), value), "b": torch.zeros(2)},
            "meta": make_meta(image_size=64, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), threshold=0.3,
                              profile="demo", phase="phase1", epoch=2)}


def test_round_trip_carries_metadata(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "a.pt", _ckpt())
    assert path.exists()
    ck = load_checkpoint(path)
    assert torch.equal(ck["model"]["w"], torch.ones(3, 2))
    meta = ck["meta"]
    assert meta["format"] == CK.FORMAT and meta["arch"] == "resnet18" and meta["classes"] == ["NORMAL", "PNEUMONIA"]
    assert meta["image_size"] == 64 and meta["threshold"] == 0.3 and meta["epoch"] == 2 and meta["phase"] == "phase1"
    raw = torch.load(path, weights_only=True)  # a plain checkpoint: loads with weights_only=True directly
    assert raw["meta"] == meta
    assert [p.name for p in path.parent.iterdir()] == ["a.pt"]  # no temp file left behind
    mode = path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # not the 0600 of a temp file


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "a.pt", _ckpt(1.0))
    before = path.read_bytes()
    real_save = torch.save

    def half_then_fail(obj, fh, *a, **k):
        real_save(obj, fh, *a, **k)
        fh.truncate(100)  # part of the file is written…
        raise KeyboardInterrupt  # …then the notebook is interrupted (or Colab disconnects)
    monkeypatch.setattr(CK.torch, "save", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _ckpt(2.0))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3, 2))


def _bad(tmp_path, case):
    p = tmp_path / f"{case}.pt"
    if case == "missing":
        return p
    if case == "folder":
        p.mkdir()
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "garbage":
        p.write_bytes(b"hello, I am not a checkpoint " * 20)
    elif case == "truncated":
        save_checkpoint(p, _ckpt())
        p.write_bytes(p.read_bytes()[:300])
    elif case == "not_dict":
        torch.save([torch.zeros(2)], p)
    elif case == "bare_state_dict":
        torch.save({"w": torch.zeros(2)}, p)
    elif case == "no_meta":
        torch.save({"model": {"w": torch.zeros(2)}}, p)
    elif case == "meta_missing_key":
        ck = _ckpt()
        del ck["meta"]["std"]
        torch.save(ck, p)
    elif case == "custom_class":
        torch.save({"model": {"w": torch.zeros(2)}, "meta": _ckpt()["meta"], "extra": Custom()}, p)
    elif case == "raw_pickle":
        with open(p, "wb") as fh:
            pickle.dump({"model": Custom()}, fh, protocol=2)
    return p


@pytest.mark.parametrize("case, words", [
    ("missing", "not found"), ("folder", "folder"), ("empty", "empty"), ("garbage", "cannot read"),
    ("truncated", "cannot read"), ("not_dict", "not a project checkpoint"),
    ("bare_state_dict", "not a project checkpoint"), ("no_meta", "missing format"),
    ("meta_missing_key", "missing std"), ("custom_class", "Custom"), ("raw_pickle", "refused"),
])
def test_bad_checkpoints_are_one_line_user_errors(tmp_path, case, words):
    path = _bad(tmp_path, case)
    with pytest.raises(UserError) as exc:
        load_checkpoint(path)
    msg = str(exc.value)
    assert words in msg and "\n" not in msg and "\x1b" not in msg and str(path) in msg


def test_custom_class_is_refused_not_executed(tmp_path):
    path = _bad(tmp_path, "custom_class")
    with pytest.raises(UserError, match="weights_only=True rejected it"):
        load_checkpoint(path, require_meta=False)


def test_optional_meta_and_bare_state_dicts(tmp_path):
    ck = load_checkpoint(_bad(tmp_path, "no_meta"), require_meta=False)
    assert torch.equal(ck["model"]["w"], torch.zeros(2))
    ck = load_checkpoint(_bad(tmp_path, "bare_state_dict"), require_meta=False, allow_state_dict=True)
    assert set(ck["model"]) == {"w"}


def test_update_meta_merges(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", _ckpt())
    meta = update_meta(path, threshold=0.12, gradcam_layer="layer3")
    assert meta["threshold"] == 0.12 and meta["gradcam_layer"] == "layer3" and meta["epoch"] == 2
    again = load_checkpoint(path)
    assert again["meta"] == meta and torch.equal(again["model"]["w"], torch.ones(3, 2))
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_state_fingerprint_tracks_values():
    a = _ckpt(1.0)["model"]
    assert state_fingerprint(a) == state_fingerprint({k: v.clone() for k, v in a.items()})
    assert state_fingerprint(a) != state_fingerprint(_ckpt(1.5)["model"])
