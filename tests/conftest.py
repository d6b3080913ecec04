"""Shared unit-test settings (the repository's conftest.py keeps every test out of data/, model/, assets/)."""
import os

import pytest
import torch

from utils.config import KNOB_ENV


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread for every test: far faster on a small shared CPU (no oversubscription)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Tests see the repository's own settings: no CXR_* knob from the caller's shell, and outputs in the
    session's temporary project root."""
    for var in KNOB_ENV.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CXR_PROJECT_ROOT", os.environ["CXR_PROJECT_ROOT"])


@pytest.fixture(autouse=True)
def close_figures():
    """Close the figures a test made (only when matplotlib is in use)."""
    yield
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
