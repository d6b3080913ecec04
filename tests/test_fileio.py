"""utils.fileio: every write is atomic (old file or whole new one, never a part), and JSON is strict."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from utils.fileio import atomic_copy, atomic_write, read_json, write_csv, write_json


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def half(fh):
        fh.write(b"new but not finished")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, half)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_copy_and_csv_write_the_same_bytes_as_the_plain_calls(tmp_path):
    src = tmp_path / "src.pt"
    src.write_bytes(bytes(range(256)) * 10)
    assert atomic_copy(src, tmp_path / "sub" / "dst.pt").read_bytes() == src.read_bytes()  # folder created
    frame = pd.DataFrame({"id": ["007", "b"], "prob": [0.1 / 3, 1e-12], "label": [1, 0]})
    frame.to_csv(tmp_path / "plain.csv", index=False)
    write_csv(tmp_path / "atomic.csv", frame, index=False)
    assert (tmp_path / "atomic.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()


def test_json_is_strict_and_read_back(tmp_path):
    path = write_json(tmp_path / "r.json", {"a": np.float32(0.5), "b": np.arange(3), "c": math.nan, "d": (1, 2)})
    text = path.read_text()
    assert text.endswith("\n") and "NaN" not in text
    assert json.loads(text) == read_json(path) == {"a": 0.5, "b": [0, 1, 2], "c": None, "d": [1, 2]}
    assert read_json(tmp_path / "missing.json") == {}
    (tmp_path / "bad.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
