"""Shared test settings."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread for every test: far faster on a small shared CPU (no oversubscription)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Tests see the repository's own settings: no CXR_* overrides from the caller's shell."""
    for var in ("CXR_PROFILE", "CXR_DATA_DIR", "CXR_PROJECT_ROOT"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(autouse=True)
def close_figures():
    """Close the figures a test made (only when matplotlib is in use)."""
    yield
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
