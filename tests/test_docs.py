"""The contributor documents say what the code is: docs/DESIGN.md's module tables list exactly the modules on disk,
its layer table is the contract `make lint` enforces, every `utils` name and repository file it mentions exists;
README's `make help` list is the Makefile's; the notebooks stay thin (the authoring rules DESIGN.md states)."""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import nbformat
import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
UTILS = ROOT / "utils"
DESIGN = ROOT / "docs" / "DESIGN.md"
MAX_LOGIC_LINES = 100  # issue 24: "notebooks thin: ≤ ~100 logic lines each"


def section(text: str, title: str) -> str:
    """The text of the ``## title`` section of a Markdown document (up to the next ``## ``)."""
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def first_cells(markdown: str) -> list[str]:
    """The first cell of every table row (header and rule rows left out), backticks kept."""
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [re.split(r"(?<!\\)\|", row)[1].strip() for row in rows if not row.startswith("|---")]


def documented_modules(text: str) -> list[str]:
    return [m for cell in first_cells(section(text, "Modules")) for m in re.findall(r"^`([\w/]+\.py)`$", cell)]


def modules_on_disk(utils: Path = UTILS) -> list[str]:
    return sorted(p.relative_to(utils).as_posix() for p in utils.rglob("*.py") if p.name != "__init__.py")


def table_problems(listed: list[str], on_disk: list[str]) -> list[str]:
    missing = sorted(set(listed) - set(on_disk))
    unlisted = sorted(set(on_disk) - set(listed))
    twice = sorted({m for m in listed if listed.count(m) > 1})
    return ([f"listed but not in utils/: {', '.join(missing)}"] if missing else []) + (
        [f"in utils/ but not listed: {', '.join(unlisted)}"] if unlisted else []) + (
        [f"listed twice: {', '.join(twice)}"] if twice else [])


# ------------------------------------------------------------------------------------------- DESIGN.md
def test_design_lists_every_module_once_and_no_other():
    assert table_problems(documented_modules(DESIGN.read_text(encoding="utf-8")), modules_on_disk()) == []


def test_the_module_check_fails_on_a_missing_or_an_unlisted_module(tmp_path):
    (tmp_path / "explain").mkdir()
    for name in ("paths.py", "explain/__init__.py", "explain/maps.py", "explain/new.py"):
        (tmp_path / name).write_text("")
    doc = "intro\n\n## Modules\n\n| module | owns |\n|---|---|\n| `paths.py` | x |\n| `explain/maps.py` | y |\n" \
          "| `explain/gone.py` | z |\n\n## Contracts\n\n| `explain/new.py` | not in the Modules section |\n"
    problems = table_problems(documented_modules(doc), modules_on_disk(tmp_path))
    assert problems == ["listed but not in utils/: explain/gone.py", "in utils/ but not listed: explain/new.py"]


def test_design_layer_table_is_the_enforced_contract():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    layers = next(c["layers"] for c in contracts["contracts"] if c["type"] == "layers")
    table = [cell.strip("`").replace("\\|", "|") for cell in first_cells(section(DESIGN.read_text(encoding="utf-8"),
                                                                                  "Layers — enforced by the build"))]
    assert table[1:] == layers  # table[0] is the header


def test_every_name_a_module_row_gives_is_in_that_module():
    """A row's backticked names are that module's: an attribute, or (an environment variable, a metadata key, a
    profile) a word of its source."""
    wrong, rows = [], 0
    for line in section(DESIGN.read_text(encoding="utf-8"), "Modules").splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        found = re.fullmatch(r"`([\w/]+)\.py`", cells[0]) if cells else None
        if found is None:
            continue
        rows += 1
        module = importlib.import_module("utils." + found.group(1).replace("/", "."))
        source = (UTILS / f"{found.group(1)}.py").read_text(encoding="utf-8")
        wrong += [f"{found.group(1)}.py: {name}" for name in re.findall(r"`([A-Za-z_]\w*)(?:\([^`]*\))?`", cells[1])
                  if not hasattr(module, name) and not re.search(rf"\b{name}\b", source)]
    assert rows == len(modules_on_disk()) and wrong == []


def _resolves(dotted: str) -> bool:
    """``dotted`` names a module, or an attribute of one, under ``utils`` (tried as written and inside each
    subpackage, since the page shortens ``utils.explain.maps.main_maps`` to ``maps.main_maps``)."""
    packages = ["utils"] + [f"utils.{p.name}" for p in UTILS.iterdir() if (p / "__init__.py").is_file()]
    for prefix in [""] + [f"{p}." for p in packages]:
        parts = (prefix + dotted).split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            return True
    return False


def test_every_utils_name_in_design_exists():
    text = DESIGN.read_text(encoding="utf-8")
    firsts = {p.stem for p in UTILS.rglob("*.py")} | {p.name for p in UTILS.iterdir() if p.is_dir()} | {"utils"}
    names = {t.removesuffix("()") for t in re.findall(r"`([\w.]+(?:\(\))?)`", text)}
    dotted = sorted(n for n in names if "." in n and not n.endswith(".py") and n.split(".")[0] in firsts)
    assert len(dotted) > 30  # the page names many; a parsing slip must not make this pass vacuously
    assert [n for n in dotted if not _resolves(n)] == []


def test_every_repository_file_design_names_exists():
    text = DESIGN.read_text(encoding="utf-8")
    top = {"pyproject.toml", "environment.yml", "conftest.py", ".pre-commit-config.yaml", "README.md"}
    paths = {t for t in re.findall(r"`([\w./-]+\.(?:py|md|toml|yml|yaml|json|ipynb))`", text)
             if t.split("/")[0] in {"tests", "scripts", "benchmarks", "docs", "notebooks"} or t in top}
    assert len(paths) > 10  # the page names many files; a parsing slip must not make this pass vacuously
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert missing == []


# ------------------------------------------------------------------------------------------- README.md
def test_readme_make_help_list_is_the_makefile():
    targets = re.findall(r"^([a-z-]+):.*## ", (ROOT / "Makefile").read_text(encoding="utf-8"), re.MULTILINE)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = re.search(r"`make help` lists the other targets \(([^)]*)\)", readme)
    assert listed, "README lost its sentence '`make help` lists the other targets (...)'"
    others = re.findall(r"`([a-z-]+)`", listed.group(1))
    assert others == [t for t in targets if t not in ("help", "demo", "test")]  # the Quick start names demo and test


# ------------------------------------------------------------------------------------------ notebooks
def _notebooks() -> list[Path]:
    return sorted(p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb") if not p.name.startswith("00_"))


def logic_lines_and_aliases(nb) -> tuple[int, list[str]]:
    """Logic lines of a notebook — code lines that are not blank, comments or imports, outside the Colab setup and
    parameters cells — and its one-letter import aliases."""
    count, aliases = 0, []
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.cell_type != "code" or "colab-setup" in tags or "parameters" in tags:
            continue
        lines = cell.source.splitlines()
        imports: set[int] = set()
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:  # IPython syntax (magics): count the lines as they are
            tree = None
        for node in ast.walk(tree) if tree is not None else ():
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imports.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
                aliases += [f"{a.name} as {a.asname}" for a in node.names if a.asname and len(a.asname) == 1]
        count += sum(1 for i, line in enumerate(lines, 1)
                     if line.strip() and not line.strip().startswith("#") and i not in imports)
    return count, aliases


def test_the_counter_counts_logic_not_imports_or_comments():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("from utils.evaluate import (\n    metrics,\n)\nimport numpy as np\n\n# why\n"
                                  "y = metrics.nll(\n    np.ones(2), np.ones(2))\n"),
        nbformat.v4.new_code_cell("import pandas as p\nprint(p)"),
        nbformat.v4.new_markdown_cell("z = 3")])
    assert logic_lines_and_aliases(nb) == (3, ["pandas as p"])


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_notebooks_are_thin_and_use_named_imports(path):
    count, aliases = logic_lines_and_aliases(nbformat.read(path, as_version=4))
    assert count <= MAX_LOGIC_LINES, f"{path.name}: {count} logic lines; move logic into utils (a stage function)"
    assert aliases == [], f"{path.name}: one-letter module aliases {aliases}; import the names instead"
