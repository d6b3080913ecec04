"""The layer table of docs/DESIGN.md is enforced: `make lint` runs import-linter on the contracts in pyproject.toml.

Each test copies the package (``utils/``, ``benchmarks/``, ``pyproject.toml``) into a temporary folder, runs the
same command as `make lint` there, and shows that the clean tree passes while an upward import — even one inside
a function — or a module missing from the table fails.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


@pytest.fixture
def tree(tmp_path):
    """A copy of what the contracts read (no caches)."""
    for name in ("utils", "benchmarks"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy, not the checkout the venv points at
    return subprocess.run([sys.executable, "-c", LINT_IMPORTS, "--no-logo", "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_makefile_runs_this_command():
    assert LINT_IMPORTS in (ROOT / "Makefile").read_text(encoding="utf-8")


def test_the_clean_tree_keeps_every_contract(tree):
    run = lint_imports(tree)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_an_upward_import_inside_a_function_breaks_the_layers(tree):
    with (tree / "utils" / "data" / "augment.py").open("a", encoding="utf-8") as fh:
        fh.write("\n\ndef _upward():\n    from utils.explain import gradcam  # data must not reach up to explain\n\n"
                 "    return gradcam\n")
    run = lint_imports(tree)
    assert run.returncode != 0 and "BROKEN" in run.stdout
    assert "utils.data.augment -> utils.explain.gradcam" in run.stdout


def test_siblings_may_not_import_each_other_and_utils_never_imports_the_benchmarks(tree):
    with (tree / "utils" / "viz" / "common.py").open("a", encoding="utf-8") as fh:
        fh.write("\n\nimport benchmarks.bench  # noqa: E402\nimport utils.explain.gradcam  # noqa: E402\n")
    run = lint_imports(tree)
    assert run.returncode != 0
    assert "utils.viz.common -> utils.explain.gradcam" in run.stdout  # viz and explain are independent siblings
    assert "utils.viz.common -> benchmarks.bench" in run.stdout


def test_a_new_module_must_be_placed_in_the_table(tree):
    (tree / "utils" / "newroom.py").write_text('"""A module nobody placed in the layer table."""\n', encoding="utf-8")
    run = lint_imports(tree)
    assert run.returncode != 0 and "utils.newroom" in run.stdout
