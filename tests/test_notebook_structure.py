"""Every numbered notebook follows the series conventions (see scripts/nbtemplate.py).

The checks are functions of a notebook path, so they run on the real series and, below, on good and
deliberately broken notebooks that scripts/nbtemplate.py writes into a temporary folder.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
sys.path.insert(0, str(ROOT / "scripts"))

import nav
import nbtemplate

LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+\.ipynb)\)")


def series(nb_dir: Path) -> list[Path]:
    """The numbered lesson notebooks 01, 02, … (the index, 00, is not a lesson)."""
    return sorted(p for p in Path(nb_dir).glob("[0-9][0-9]_*.ipynb") if not p.name.startswith("00_"))


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _code(cell, pattern: str) -> bool:
    return re.search(pattern, cell.source, re.MULTILINE) is not None


# ------------------------------------------------------------------------------------------ checks
def check_title(nb, path: Path) -> list[str]:
    num = path.name[:2]
    cells = [c for c in nb.cells if c.cell_type == "markdown" and not nav.is_nav_cell(c)]
    if not cells or not cells[0].source.startswith(f"# {num} · "):
        return [f"the first markdown cell must start with the title '# {num} · ...'"]
    problems = []
    title = cells[0].source
    if not re.search(r"^[-*] \S", title, re.MULTILINE):
        problems.append("the title cell has no objectives list ('- ...')")
    if nav.colab_badge(path.name) not in title:
        problems.append(f"the title cell has no Colab badge for {path.name} (run scripts/nav.py)")
    return problems


def check_setup_and_parameters(nb) -> list[str]:
    problems = []
    setup = [c for c in nb.cells if nav.SETUP_TAG in _tags(c)]
    params = [c for c in nb.cells if "parameters" in _tags(c)]
    if len(setup) != 1 or setup[0].cell_type != "code":
        problems.append(f"need exactly one code cell tagged {nav.SETUP_TAG!r}, found {len(setup)}")
    else:
        src = setup[0].source
        if not re.search(r"""^if ["']google\.colab["'] in sys\.modules:""", src, re.MULTILINE):
            problems.append("the setup cell is not guarded by `if \"google.colab\" in sys.modules:`")
        if nav.repo_line().strip() not in src:
            problems.append("the setup cell's REPO_URL does not match utils/paths.py (run scripts/nav.py)")
        elif src != nav.setup_source():
            problems.append("the setup cell differs from scripts/nav.py's (PERSIST, install; run scripts/nav.py)")
    if len(params) != 1 or params[0].cell_type != "code":
        problems.append(f"need exactly one code cell tagged 'parameters', found {len(params)}")
    else:
        for name in ("PROFILE", "DATA_DIR", "SOURCE", "IMAGE_SIZE", "EPOCHS_PHASE1", "EPOCHS_PHASE2"):
            if not _code(params[0], rf"^{name}\s*="):
                problems.append(f"the parameters cell does not set {name} =")
        if not params[0].source.startswith(nav.PARAMETERS_HEAD):
            problems.append("the parameters cell does not start with the named knobs of scripts/nav.py")
        problems += check_papermill_sees_parameters(params[0])
        after = nb.cells[nb.cells.index(params[0]) + 1:]
        first_code = next((c for c in after if c.cell_type == "code"), None)
        if first_code is None or nav.SETUP_CALL not in first_code.source:
            problems.append(f"the first code cell after the parameters must call {nav.SETUP_CALL!r}")
    if len(setup) == 1 and len(params) == 1 and nb.cells.index(setup[0]) > nb.cells.index(params[0]):
        problems.append("the setup cell must come before the parameters cell")
    return problems


def check_papermill_sees_parameters(cell) -> list[str]:
    """papermill (``-p NAME VALUE``, ``papermill --help-notebook``) must parse every assignment of the cell: a
    comment holding ``=`` makes it drop the line (``Unable to parse line``)."""
    from papermill.translators import PythonTranslator

    assigned = re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", cell.source, re.MULTILINE)
    seen = {p.name for p in PythonTranslator.inspect({"source": cell.source})}
    missing = [name for name in assigned if name not in seen]
    return [f"papermill cannot parse the parameter(s) {', '.join(missing)} (no '=' in their comments)"] if missing else []


def check_summary_and_exercises(nb) -> list[str]:
    problems = []
    md = [c.source for c in nb.cells if c.cell_type == "markdown"]
    if not any(re.search(r"^## Summary\s*$", s, re.MULTILINE) for s in md):
        problems.append("no '## Summary' section")
    ex = [s for s in md if re.search(r"^## Exercises\s*$", s, re.MULTILINE)]
    if not ex:
        return problems + ["no '## Exercises' section"]
    body = ex[0].split("## Exercises", 1)[1]
    items = re.split(r"^\d+\.\s", body, flags=re.MULTILINE)[1:]
    if not 2 <= len(items) <= 4:
        problems.append(f"'## Exercises' must hold 2 to 4 numbered exercises, found {len(items)}")
    if any("hint" not in item.lower() for item in items):
        problems.append("every exercise needs a hint")
    return problems


def check_nav(nb, path: Path) -> list[str]:
    names = [p.name for p in nav.numbered_notebooks(path.parent)]
    i = names.index(path.name)
    prev = names[i - 1] if i > 0 else None
    nxt = names[i + 1] if i + 1 < len(names) else None
    problems = []
    if sum(nav.is_nav_cell(c) for c in nb.cells) != 2:
        problems.append("need exactly two nav cells (top and bottom)")
    for where, cell in (("top", nb.cells[0]), ("bottom", nb.cells[-1])):
        if not nav.is_nav_cell(cell):
            problems.append(f"no nav cell at the {where} (run scripts/nav.py)")
            continue
        links = LINK.findall(cell.source)
        got_prev = [target for text, target in links if text.startswith("< ")]
        got_next = [target for text, target in links if text.endswith(" >")]
        if got_prev != ([prev] if prev else []):
            problems.append(f"{where} nav: previous link {got_prev} should be {prev}")
        if got_next != ([nxt] if nxt else []):
            problems.append(f"{where} nav: next link {got_next} should be {nxt}")
        if nav.INDEX_NAME in names and nav.INDEX_NAME not in [t for _, t in links]:
            problems.append(f"{where} nav: no link to {nav.INDEX_NAME}")
        if nav.colab_badge(path.name) not in cell.source:
            problems.append(f"{where} nav: no Colab badge for {path.name}")
    return problems


def check_clean(nb) -> list[str]:
    problems = []
    for k, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            problems.append(f"cell {k} has outputs or an execution count (run `make strip`)")
    if nb.metadata.get("kernelspec", {}).get("name") != "python3":
        problems.append("the kernelspec must be python3")
    return problems


def check_notebook(path: Path) -> list[str]:
    """Every convention a lesson notebook breaks; empty when it follows them all."""
    nb = nbformat.read(path, as_version=4)
    return (check_title(nb, path) + check_setup_and_parameters(nb) + check_summary_and_exercises(nb)
            + check_nav(nb, path) + check_clean(nb))


# ------------------------------------------------------------------------------------- the real series
def test_series_is_contiguous_from_01():
    numbers = [int(p.name[:2]) for p in series(NB_DIR)]
    assert numbers, "no numbered notebooks in notebooks/ yet (01_*.ipynb comes first)"
    assert numbers == list(range(1, len(numbers) + 1)), f"notebook numbers have gaps or repeats: {numbers}"


@pytest.mark.parametrize("path", series(NB_DIR), ids=lambda p: p.name)
def test_notebook_follows_the_conventions(path):
    assert check_notebook(path) == []


def test_index_notebook():
    path = NB_DIR / nav.INDEX_NAME
    nb = nbformat.read(path, as_version=4)
    assert all(c.cell_type == "markdown" for c in nb.cells), "00_index holds markdown only"
    assert nav.notebook_title(nb).startswith("00 · ")
    assert nav.is_nav_cell(nb.cells[0]) and nav.is_nav_cell(nb.cells[-1])
    text = "\n".join(c.source for c in nb.cells)
    for p in series(NB_DIR):
        assert f"]({p.name})" in text and nav.colab_url(p.name) in text, f"index table lacks {p.name}"
    for words in ("make demo", "make test", "PROFILE", "Prerequisites", "Learning path"):
        assert words in text


def test_nav_is_up_to_date():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "nav.py"), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


# ------------------------------------------------------------ the checks themselves, on temporary notebooks
def _make(nb_dir: Path, number: int, **kw) -> Path:
    args = dict(title=f"Lesson {number}", objectives=["see one thing", "do another"],
                intro_md="Why this lesson matters.",
                body_cells=[("md", "## Step"), ("code", "x = 1 + 1\nx")],
                summary="What we saw.", exercises=[("Change x.", "try 3."), "Print x. *Hint:* use print."])
    args.update(kw)
    return nbtemplate.make_notebook(nb_dir / f"{number:02d}_lesson_{number}.ipynb", number, **args)


@pytest.fixture
def tmp_series(tmp_path):
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    shutil.copy(NB_DIR / nav.INDEX_NAME, nb_dir / nav.INDEX_NAME)
    paths = [_make(nb_dir, n) for n in (1, 2, 3)]
    return nb_dir, paths


def test_template_notebooks_pass(tmp_series):
    nb_dir, paths = tmp_series
    assert series(nb_dir) == paths
    for p in paths:
        assert check_notebook(p) == [], p.name
    index = (nb_dir / nav.INDEX_NAME).read_text(encoding="utf-8")
    assert all(f"]({p.name})" in index for p in paths), "nav.update did not fill the index table"


def test_template_layout(tmp_series):
    _, paths = tmp_series
    nb = nbformat.read(paths[1], as_version=4)
    ids = [c.id for c in nb.cells]
    assert ids == ["nav-top", "title", "colab-setup", "parameters", "imports", "intro", "body-01", "body-02",
                   "summary", "exercises", "nav-bottom"]
    top = nb.cells[0].source
    assert "[< 01 · Lesson 1](01_lesson_1.ipynb)" in top and "[03 · Lesson 3 >](03_lesson_3.ipynb)" in top
    assert f"[Contents]({nav.INDEX_NAME})" in top


def test_nav_is_idempotent(tmp_series):
    nb_dir, paths = tmp_series
    before = {p: p.read_bytes() for p in nav.numbered_notebooks(nb_dir)}
    assert nav.update(nb_dir) == []
    assert {p: p.read_bytes() for p in nav.numbered_notebooks(nb_dir)} == before


def test_template_cells_run_outside_colab(tmp_series, tmp_path, monkeypatch):
    from IPython.core.inputtransformer2 import TransformerManager

    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path))
    monkeypatch.delenv("CXR_PROFILE", raising=False)
    monkeypatch.delenv("CXR_DATA_DIR", raising=False)
    _, paths = tmp_series
    nb = nbformat.read(paths[0], as_version=4)
    ns: dict = {}
    for cell in nb.cells[2:5]:  # setup (a no-op here: magics only run on Colab), parameters, imports
        exec(TransformerManager().transform_cell(cell.source), ns)
    assert "REPO_URL" not in ns, "the setup cell ran its Colab branch outside Colab"
    assert ns["cfg"].profile == "demo" and ns["cfg"].root == tmp_path.resolve()


def _break(path: Path, edit) -> None:
    nb = nbformat.read(path, as_version=4)
    edit(nb)
    nbformat.write(nb, path)


def _cell(nb, cell_id):
    return next(c for c in nb.cells if c.id == cell_id)


BREAKERS = {
    "title": lambda nb: setattr(_cell(nb, "title"), "source", _cell(nb, "title").source.replace("# 02 ·", "# Two ·")),
    "objectives": lambda nb: setattr(_cell(nb, "title"), "source", re.sub(r"^- .*\n", "", _cell(nb, "title").source, flags=re.M)),
    "Colab badge": lambda nb: setattr(_cell(nb, "title"), "source", _cell(nb, "title").source.split("[![")[0]),
    "google.colab": lambda nb: setattr(_cell(nb, "colab-setup"), "source", _cell(nb, "colab-setup").source.replace("if \"google.colab\" in sys.modules:", "if True:")),
    "'colab-setup'": lambda nb: _cell(nb, "colab-setup").metadata.pop("tags"),
    "'parameters', found 0": lambda nb: _cell(nb, "parameters").metadata.pop("tags"),
    "'parameters', found 2": lambda nb: _cell(nb, "imports").metadata.update(tags=["parameters"]),
    "DATA_DIR": lambda nb: setattr(_cell(nb, "parameters"), "source", _cell(nb, "parameters").source.replace("DATA_DIR =", "DATA_ROOT =")),
    "papermill cannot parse": lambda nb: setattr(_cell(nb, "parameters"), "source", _cell(nb, "parameters").source + "\nN_EXTRA = 3  # default = three"),
    "Summary": lambda nb: setattr(_cell(nb, "summary"), "source", "## Recap\n\nWhat we saw."),
    "found 1": lambda nb: setattr(_cell(nb, "exercises"), "source", "## Exercises\n\n1. Only one. Hint: none."),
    "found 5": lambda nb: setattr(_cell(nb, "exercises"), "source", "## Exercises\n\n" + "".join(f"{k}. Q. Hint: h\n" for k in range(1, 6))),
    "hint": lambda nb: setattr(_cell(nb, "exercises"), "source", "## Exercises\n\n1. Q one.\n2. Q two. Hint: h"),
    "nav cell at the bottom": lambda nb: nb.cells.pop(),
    "outputs": lambda nb: _cell(nb, "body-02").outputs.append(nbformat.v4.new_output("stream", text="2\n")),
    "execution count": lambda nb: setattr(_cell(nb, "body-02"), "execution_count", 3),
    "REPO_URL": lambda nb: setattr(_cell(nb, "colab-setup"), "source", _cell(nb, "colab-setup").source.replace(nbtemplate.nav.GITHUB_REPO, "someone/fork")),
}


@pytest.mark.parametrize("expected", BREAKERS)
def test_checks_catch_a_broken_notebook(tmp_series, expected):
    _, paths = tmp_series
    _break(paths[1], BREAKERS[expected])
    problems = check_notebook(paths[1])
    assert problems, f"breaking {expected!r} went unnoticed"
    assert any(expected.lower() in p.lower() for p in problems), problems


def test_stale_nav_is_caught_then_fixed(tmp_series):
    nb_dir, paths = tmp_series
    new = _make(nb_dir, 4, update_nav=False)
    assert any("next link" in p for p in check_notebook(paths[-1]))
    assert any("nav" in p for p in check_notebook(new))
    assert nav.update(nb_dir, check=True) and set(nav.update(nb_dir)) >= {paths[-1], new}
    assert all(check_notebook(p) == [] for p in series(nb_dir))


def test_nav_restores_the_configured_repository(tmp_series):
    nb_dir, paths = tmp_series
    _break(paths[0], BREAKERS["REPO_URL"])
    _break(paths[0], lambda nb: setattr(_cell(nb, "title"), "source", _cell(nb, "title").source.replace(
        f"github/{nav.GITHUB_REPO}/blob/{nav.GITHUB_BRANCH}", "github/someone/fork/blob/dev")))
    assert check_notebook(paths[0]) != []
    assert nav.update(nb_dir) == [paths[0]]
    assert check_notebook(paths[0]) == []


def test_nav_strips_outputs(tmp_series):
    nb_dir, paths = tmp_series
    _break(paths[0], BREAKERS["outputs"])
    assert nav.update(nb_dir) == [paths[0]]
    assert check_clean(nbformat.read(paths[0], as_version=4)) == []


@pytest.mark.parametrize("kw, message", [
    (dict(exercises=["Only one. Hint: h"]), "2 to 4"),
    (dict(exercises=[f"Q{k}. Hint: h" for k in range(5)]), "2 to 4"),
    (dict(exercises=["Nothing to help with.", "Q. Hint: h"]), "hint"),
    (dict(body_cells=[("markdown", "x")]), "'md' or 'code'"),
    (dict(objectives=[]), "objective"),
])
def test_make_notebook_rejects_bad_input(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        _make(tmp_path, 1, **kw)


def test_make_notebook_rejects_a_bad_file_name(tmp_path):
    with pytest.raises(ValueError, match="file name"):
        nbtemplate.make_notebook(tmp_path / "1_x.ipynb", 1, "T", ["o"], "i", [], "s", ["a hint", "b hint"])


def test_table_times_come_from_the_demo_time_report(tmp_path):
    import json

    report = tmp_path / "demo_time.json"
    assert nav.measured_times(report) == {}  # no report: the tables show "–"
    report.write_text(json.dumps({"seconds": {"01": 25.8, "09": 112.4}, "knobs": {}}))
    assert nav.measured_times(report) == {"01": "26 s", "09": "112 s"}
    report.write_text(json.dumps({"seconds": {"01": 300.0}, "knobs": {"CXR_PROFILE": "full"}}))
    assert nav.measured_times(report) == {}  # another profile's times are not the demo's
