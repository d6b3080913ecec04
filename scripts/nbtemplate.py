#!/usr/bin/env python3
"""Create a notebook of the series with its conventions already in place.

Use it from a small builder script (run from the repository root)::

    import sys; sys.path.insert(0, "scripts")
    from nbtemplate import make_notebook

    make_notebook(
        "notebooks/02_phase1_warmup.ipynb", 2, "Phase-1 warm-up",
        objectives=["freeze the backbone and train the new head", "read the loss curves"],
        intro_md="Phase 1 trains only the classification head ...",
        body_cells=[("md", "## Load the data"), ("code", "bundle = load_data(cfg)")],
        summary="The head alone reaches ...",
        exercises=[("Double the learning rate.", "watch the validation loss in the first epoch."),
                   "Train for one epoch only. *Hint:* compare the recall at the chosen threshold."],
        extra_params="EPOCHS = None  # None: the profile's value",
    )

Layout of the notebook it writes: nav (top) · ``# NN · Title`` + objectives + Colab badge · Colab-only setup
cell (tag ``colab-setup``) · parameters cell (tag ``parameters``) · imports cell · intro · body ·
``## Summary`` · ``## Exercises`` · nav (bottom). Outputs are empty, cell ids are stable, and
``scripts/nav.py`` then refreshes navigation, links and the index table for the whole folder.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

import nbformat

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import nav

Exercise = str | tuple[str, str]

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}

SETUP_SOURCE = nav.setup_source()
PARAMETERS_SOURCE = nav.PARAMETERS_HEAD

IMPORTS_SOURCE = """\
from utils.notebook import setup
{extra_imports}
""" + nav.SETUP_CALL


def _cell(kind: str, source: str, cell_id: str, tags: Sequence[str] = ()):
    if kind == "md":
        cell = nbformat.v4.new_markdown_cell(source.strip("\n"))
    elif kind == "code":
        cell = nbformat.v4.new_code_cell(source.strip("\n"))
    else:
        raise ValueError(f"cell kind must be 'md' or 'code', not {kind!r}")
    cell.id = cell_id
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def _exercise(item: Exercise) -> str:
    if isinstance(item, tuple):
        question, hint = item
        return f"{question.strip()}  \n   *Hint:* {hint.strip()}"
    if "hint" not in item.lower():
        raise ValueError(f"exercise without a hint (pass (question, hint) or write 'Hint:'): {item!r}")
    return item.strip().replace("\n", "\n   ")


def make_notebook(path: str | Path, number: int | str, title: str, objectives: list[str], intro_md: str,
                  body_cells: list[tuple[str, str]], summary: str, exercises: list[Exercise],
                  extra_params: str = "", *, extra_imports: str = "", update_nav: bool = True) -> Path:
    """Write notebook ``path`` (``NN_name.ipynb``) with the series layout; returns its path.

    ``body_cells`` are ``("md" | "code", source)``; ``exercises`` (2 to 4) are ``"text with a Hint: ..."``
    or ``(question, hint)``; ``extra_params`` adds lines to the parameters cell and ``extra_imports`` to the
    imports cell. With ``update_nav`` (default) ``scripts/nav.py`` then updates the whole folder (and the
    README next to it, when there is one).
    """
    path = Path(path)
    num = f"{int(number):02d}"
    if not re.fullmatch(rf"{num}_[A-Za-z0-9_]+\.ipynb", path.name):
        raise ValueError(f"{path.name}: the file name must look like {num}_short_name.ipynb")
    if not 2 <= len(exercises) <= 4:
        raise ValueError(f"give 2 to 4 exercises, not {len(exercises)}")
    if not objectives:
        raise ValueError("give at least one learning objective")

    header = "\n".join([f"# {num} · {title.strip()}", "", "**In this notebook you will:**", "",
                        *(f"- {o.strip()}" for o in objectives), "", nav.colab_badge(path.name)])
    params = PARAMETERS_SOURCE + ("\n" + extra_params.strip("\n") if extra_params.strip() else "")
    imports = IMPORTS_SOURCE.format(extra_imports=extra_imports.strip("\n") + "\n" if extra_imports.strip() else "")
    exercise_md = "## Exercises\n\n" + "\n".join(f"{k}. {_exercise(e)}" for k, e in enumerate(exercises, 1))

    cells = [
        nav.nav_cell(nav.NAV_MARK, "top"),
        _cell("md", header, "title"),
        _cell("code", SETUP_SOURCE, "colab-setup", tags=[nav.SETUP_TAG]),
        _cell("code", params, "parameters", tags=["parameters"]),
        _cell("code", imports, "imports"),
        _cell("md", intro_md, "intro"),
        *(_cell(kind, src, f"body-{k:02d}") for k, (kind, src) in enumerate(body_cells, 1)),
        _cell("md", "## Summary\n\n" + summary.strip(), "summary"),
        _cell("md", exercise_md, "exercises"),
        nav.nav_cell(nav.NAV_MARK, "bottom"),
    ]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": dict(KERNELSPEC),
        "language_info": {"name": "python"},
        "accelerator": "GPU",  # Colab opens it on a GPU runtime (the full profile wants one)
        "colab": {"provenance": [], "gpuType": "T4"},
    })
    nb.nbformat, nb.nbformat_minor = 4, 5
    nbformat.validate(nb)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(nav.dumps(nb))
    if update_nav:
        readme = path.parent.parent / "README.md"
        nav.update(path.parent, readme if readme.exists() and path.parent.resolve() == nav.NB_DIR else None)
    return path
