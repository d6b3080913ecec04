"""The environment is described consistently: pyproject.toml, environment.yml, Makefile, README, CI."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
# conda package names that differ from PyPI's
CONDA_TO_PYPI = {"pytorch": "torch"}
NOT_DEPENDENCIES = {"python", "pip"}


def norm(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def req_name(requirement: str) -> str:
    return norm(re.split(r"[\s<>=!~;\[@]", requirement.strip(), maxsplit=1)[0])


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def environment_yml() -> tuple[list[str], list[str]]:
    """(conda entries, pip entries) of environment.yml, read with a YAML parser."""
    doc = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    conda = [str(d) for d in doc["dependencies"] if not isinstance(d, dict)]
    pip = [str(p) for d in doc["dependencies"] if isinstance(d, dict) for p in d["pip"]]
    return conda, pip


def yml_names() -> set[str]:
    conda, pip = environment_yml()
    names = {CONDA_TO_PYPI.get(n, n) for n in (norm(re.split(r"[\s<>=!~]", c, maxsplit=1)[0]) for c in conda)}
    names |= {req_name(p) for p in pip if not p.startswith("-")}  # "-e ." installs the project itself
    return names - NOT_DEPENDENCIES


def declared() -> list[str]:
    """Core dependencies plus the ``dev`` extra: what environment.yml must list."""
    project = pyproject()["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    core = {req_name(r) for r in declared()}
    yml = yml_names()
    assert core - yml == set(), f"in pyproject.toml but not environment.yml: {sorted(core - yml)}"
    assert yml - core == set(), f"in environment.yml but not pyproject.toml: {sorted(yml - core)}"


def test_environment_yml_pip_requirements_match_pyproject_exactly():
    core = {req_name(r): r.replace(" ", "") for r in declared()}
    _, pip = environment_yml()
    for req in pip:
        if not req.startswith("-"):
            want = core[req_name(req)]
            assert req.replace(" ", "") == want, f"environment.yml {req!r} != pyproject {want!r}"
    assert "-e ." in pip, "environment.yml should install the project itself (- -e .)"


def test_online_extras_stay_out_of_the_core():
    project = pyproject()["project"]
    online = {req_name(r) for r in project["optional-dependencies"]["online"]}
    assert {"medmnist", "kagglehub"} <= online
    core = {req_name(r) for r in project["dependencies"]}
    dev = {req_name(r) for r in project["optional-dependencies"]["dev"]}
    assert online & core == set(), f"online extras in the core dependencies: {sorted(online & core)}"
    extra = online & yml_names() - dev  # medmnist is a dev tool too: the tests read a synthetic file with it
    assert extra == set(), f"online extras in environment.yml: {sorted(extra)}"


def test_development_tools_stay_out_of_the_core():
    project = pyproject()["project"]
    core = {req_name(r) for r in project["dependencies"]}
    dev = {req_name(r) for r in project["optional-dependencies"]["dev"]}
    assert {"jupyterlab", "nbval", "papermill", "pytest", "ruff", "mypy"} <= dev
    assert dev & core == set(), f"development tools in the core dependencies: {sorted(dev & core)}"


def _imports(text: str) -> set[str]:
    """Top-level package names imported by Python source (IPython magics and shell lines dropped): parsed, so a
    docstring or comment that starts a line with "from …" is not an import."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in text.splitlines())
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_what_the_notebooks_and_utils_import_is_declared_in_the_core():
    import json
    import sys

    names = set()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] == "code" and "colab-setup" not in cell.get("metadata", {}).get("tags", []):
                names |= _imports("".join(cell["source"]))
    for py in (ROOT / "utils").rglob("*.py"):
        names |= _imports(py.read_text(encoding="utf-8"))
    third_party = {n for n in names if n not in sys.stdlib_module_names and n not in ("utils", "__future__")}
    distributions = {"sklearn": "scikit-learn", "PIL": "pillow", "pytorch_grad_cam": "grad-cam", "IPython": "ipywidgets",
                     "onnxruntime": "onnxruntime", "pydicom": "pydicom", "medmnist": "medmnist", "kagglehub": "kagglehub",
                     "google": None}  # google.colab: only inside the Colab-only setup cell
    project = pyproject()["project"]
    allowed = {req_name(r) for r in project["dependencies"]}
    allowed |= {req_name(r) for r in project["optional-dependencies"]["online"]}
    allowed |= {req_name(r) for r in project["optional-dependencies"]["dicom"]}
    missing = sorted(n for n in third_party
                     if distributions.get(n, n) is not None and norm(distributions.get(n, n)) not in allowed)
    assert not missing, f"imported at run time but not declared in the core dependencies: {missing}"
    assert "cv2" not in third_party  # OpenCV is not imported (grad-cam brings it; the series does not use it)


def test_makefile_pins_an_exact_torch_pair_inside_the_pyproject_ranges():
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    m = re.search(r"^TORCH_PIN\s*\?=\s*(.+)$", text, re.MULTILINE)
    assert m, "Makefile: no `TORCH_PIN ?= ...` line"
    pins = {r.name: r.specifier for r in map(Requirement, m.group(1).split())}
    ranges = {r.name: r.specifier for r in map(Requirement, pyproject()["project"]["dependencies"])}
    assert set(pins) == {"torch", "torchvision"}
    for name, pin in pins.items():
        (exact,) = pin  # one exact version, installable under the range Colab sees
        assert exact.operator == "==" and ranges[name].contains(exact.version), f"{name}{pin} vs {ranges[name]}"


def readme_quick_start() -> list[str]:
    """Commands in the first fenced block of the README's "Quick start" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert section, "README.md: no '## Quick start' section"
    block = re.search(r"^```[a-z]*\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
    assert block, "README.md: no fenced block in Quick start"
    return [ln.strip() for ln in block.group(1).splitlines() if ln.strip()]


def test_readme_quick_start_is_demo_then_test():
    assert readme_quick_start() == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command():
    test_command = readme_quick_start()[-1]
    ci = ROOT / ".ci" / "run"
    lines = [ln.strip() for ln in ci.read_text(encoding="utf-8").splitlines()]
    assert lines[0].startswith("#!") and "bash" in lines[0]
    assert "set -euo pipefail" in lines
    assert test_command in lines, f".ci/run does not run the README's test command {test_command!r}"


def test_readme_has_generated_and_result_markers():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for marker in ("<!-- notebooks:start -->", "<!-- notebooks:end -->",
                   "<!-- results:start -->", "<!-- results:end -->"):
        assert text.count(marker) == 1, f"README.md: marker {marker} must appear exactly once"


def test_pre_commit_runs_what_make_lint_runs():
    import shlex

    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", make, re.MULTILINE)
    assert recipe, "Makefile: no lint target"
    lint_imports = re.search(r"^LINT_IMPORTS\s*=\s*(.+)$", make, re.MULTILINE).group(1)
    commands = [shlex.split(line.strip().replace("$(LINT_IMPORTS)", lint_imports).replace("$(PY)", "python"))
                for line in recipe.group(1).splitlines()]
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8"))["repos"][0]["hooks"]
    entries = [shlex.split(h["entry"]) for h in hooks]
    # the same commands; make checks the whole tree ("."), pre-commit passes the changed files (honouring excludes)
    assert sorted([t for t in c if t != "."] for c in commands) == \
        sorted([t for t in e if t != "--force-exclude"] for e in entries)
