"""``make test`` never writes into the user's ``data/``, ``model/`` or ``assets/``.

A copy of the repository gets a "trained" checkpoint in ``model/`` (a learner's own work); then one notebook is run
the way ``make test`` runs them — nbval, through the repository's ``conftest.py``, with no ``CXR_PROJECT_ROOT`` set
by the caller — and the copy's ``data/``, ``model/`` and ``assets/`` must come out exactly as they went in.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_running_a_notebook_under_test_leaves_a_trained_model_untouched(tmp_path):
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    copy = tmp_path / "repo"
    for rel in files:
        if (REPO / rel).is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, copy / rel)
    trained = copy / "model" / "pneumonia_model.pt"
    trained.write_bytes(b"a learner's trained model: must survive make test")
    (copy / "assets" / "metrics.json").write_text('{"test": "a learner\'s real-data results"}\n')
    import importlib.util

    spec = importlib.util.spec_from_file_location("copied_conftest", copy / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    snapshot = conftest.snapshot
    before = snapshot(copy)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(PYTHONPATH=str(copy), CXR_IMAGE_SIZE="32", CXR_EPOCHS_PHASE1="1", CXR_EPOCHS_PHASE2="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-current-env", "notebooks/01_data_exploration.ipynb"],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert snapshot(copy) == before, "make test wrote into the working copy's data/, model/ or assets/"
    assert trained.read_bytes() == b"a learner's trained model: must survive make test"


def test_a_notebooks_root_is_removed_before_the_next_notebook_runs(tmp_path):
    """One notebook's checkpoints on disk at a time: CI once ran out of disk holding all ten roots."""
    import nbformat

    work = tmp_path / "work"
    (work / "nb").mkdir(parents=True)
    shutil.copy2(REPO / "conftest.py", work / "conftest.py")
    seen = tmp_path / "first_root.txt"
    cells = {
        "a_first": f"import os, pathlib\nroot = pathlib.Path(os.environ['CXR_PROJECT_ROOT'])\n"
                   f"(root / 'model').mkdir()\n(root / 'model' / 'm.pt').write_bytes(b'x')\n"
                   f"pathlib.Path({str(seen)!r}).write_text(str(root))",
        "b_second": f"import os, pathlib\nfirst = pathlib.Path(pathlib.Path({str(seen)!r}).read_text())\n"
                    f"assert not first.exists(), first\nassert os.environ['CXR_PROJECT_ROOT'] != str(first)",
    }
    for name, source in cells.items():
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)]), work / "nb" / f"{name}.ipynb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-current-env", "nb/a_first.ipynb", "nb/b_second.ipynb"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout
