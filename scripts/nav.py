#!/usr/bin/env python3
"""Keep the notebook series navigable and its links pointing at one repository.

For every numbered notebook ``notebooks/NN_*.ipynb`` this script, in place and idempotently:

* writes one navigation cell at the top and one at the bottom (``< prev | Contents | next >`` plus an
  "Open in Colab" badge), recognised by the cell metadata ``{"nav": true}`` and the comment ``<!-- nav -->``;
* writes the Colab setup cell (tag ``colab-setup``, :func:`setup_source`) — the same in every notebook — and
  points every Colab badge and clone URL at ``utils.paths.GITHUB_REPO`` / ``GITHUB_BRANCH``, so owner/repo
  is written in exactly one place;
* clears outputs and execution counts (source notebooks are committed output-free);
* regenerates the notebook table between ``<!-- notebooks:start -->`` and ``<!-- notebooks:end -->`` in
  ``notebooks/00_index.ipynb`` and in ``README.md``, with :func:`times_notes` under it: every number of those lines
  (wall times, the machine, its training-loop probe, real-data epoch times) is read from the recorded runs in
  ``docs/runs/``, never typed.

Usage::

    python scripts/nav.py            # update everything
    python scripts/nav.py --check    # exit 1 (and list the files) if anything would change
    python scripts/nav.py --strip-only   # only clear outputs of notebooks/*.ipynb
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # running as `python scripts/nav.py` before `pip install -e .`
    sys.path.insert(0, str(ROOT))

from utils.paths import GITHUB_BRANCH, GITHUB_REPO, NOTEBOOKS

NB_DIR = ROOT / "notebooks"
README = ROOT / "README.md"
INDEX_NAME = NOTEBOOKS["index"]
NAV_MARK = "<!-- nav -->"
TABLE_START, TABLE_END = "<!-- notebooks:start -->", "<!-- notebooks:end -->"
SETUP_TAG = "colab-setup"
BADGE_IMG = "https://colab.research.google.com/assets/colab-badge.svg"
NUMBERED_GLOB = "[0-9][0-9]_*.ipynb"

#: The measured wall time per notebook shown in the tables: the report of ``make bench-demo``
#: (``benchmarks/demo_time.py``: each notebook as ``make demo`` runs it, from an empty project root, 2-core CPU).
DEMO_TIME_REPORT = ROOT / "docs" / "runs" / "demo_time.json"
#: The recorded real-data run (``scripts/real_run.py``): its training history gives the real-data epoch time.
REAL_RUN = ROOT / "docs" / "runs" / "real_heldout_cpu_128px"


def measured_times(report: Path = DEMO_TIME_REPORT) -> dict[str, str]:
    """``{"01": "26 s", …}`` from the demo-time report; empty (the table then shows "–") when there is none or it
    was run with knobs in the environment (then its times are not the demo profile's)."""
    if not report.is_file():
        return {}
    rep = json.loads(report.read_text(encoding="utf-8"))
    if rep.get("knobs"):
        return {}
    return {num: f"{float(sec):.0f} s" for num, sec in rep.get("seconds", {}).items()}


TIMES: dict[str, str] = measured_times()


def _machine(machine: object) -> str:
    """A recorded machine (``utils.deploy.timing.machine_info``'s dict, or an older plain string) in a few words."""
    if isinstance(machine, dict):
        return f"{machine.get('cpu') or 'a CPU'}, {machine.get('cores_available', '?')} cores"
    return str(machine) if machine else ""


def times_note(report: Path = DEMO_TIME_REPORT, link_prefix: str = "") -> str:
    """The line under the notebook tables, every number read from the demo-time report: the total, the machine,
    its training-loop probe, the commit and the date. ``link_prefix`` makes the link to docs/BENCHMARKS.md work
    from where the table is (``"../"`` in ``notebooks/``)."""
    if not report.is_file():
        return "Times: not measured yet (`make bench-demo` writes `docs/runs/demo_time.json`)."
    rep = json.loads(report.read_text(encoding="utf-8"))
    if rep.get("knobs"):
        return "Times: the demo-time report was run with knobs in the environment, so it is not shown."
    probe = rep.get("probe") or {}
    loop = (f", whose training loop ran {float(probe['project_phase2_img_s']):.0f} images/s (phase 2, {probe['size']} "
            f"px, batch {probe['batch']})" if probe.get("project_phase2_img_s") else "")
    return (f"Times: `make bench-demo` (each notebook as `make demo` runs it, from an empty project root), "
            f"{float(rep['total_s']) / 60:.1f} min in all on {_machine(rep.get('machine')) or 'an unrecorded machine'}"
            f"{loop}; commit {rep.get('commit') or 'not recorded'}, {rep.get('date') or 'undated'} "
            "(`docs/runs/demo_time.json`). Times from two machines compare only through that probe; other machines: "
            f"[docs/BENCHMARKS.md]({link_prefix}docs/BENCHMARKS.md).")


def real_training_note(run: Path = REAL_RUN) -> str:
    """One sentence on what real data costs, read from the recorded real-data run: its phase-2 epoch time and
    throughput (``history_phase2.csv``), the training images and knobs (``data_summary.json``) and the machine
    (``run.json``, when recorded). Empty when the run or a number is missing: nothing is said that was not measured."""
    try:
        with open(run / "history_phase2.csv", encoding="utf-8", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("seconds") and r.get("images_per_s")]
        summary = json.loads((run / "data_summary.json").read_text(encoding="utf-8"))
        record = json.loads((run / "run.json").read_text(encoding="utf-8")) if (run / "run.json").is_file() else {}
        n_train = int(summary["splits"]["train"]["images"])
        knobs = summary.get("run") or {}
        size, ep1, ep2 = (knobs.get(k) for k in ("image_size", "epochs_phase1", "epochs_phase2"))
        if not rows or None in (size, ep1, ep2):
            return ""
        seconds = statistics.median(float(r["seconds"]) for r in rows)
        img_s = statistics.median(float(r["images_per_s"]) for r in rows)
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    where = _machine(record.get("machine")) or "a machine the run did not record"
    shown = run.relative_to(ROOT) if run.is_relative_to(ROOT) else run
    return (f"On real data, training dominates: in the recorded real-data run (`{shown.as_posix()}/`: "
            f"{size} px, {ep1} + {ep2} epochs, on {where}) a phase-2 epoch over its {n_train:,} training films took "
            f"{seconds / 60:.1f} min ({img_s:.0f} images/s).")


def times_notes(link_prefix: str = "", report: Path = DEMO_TIME_REPORT, run: Path = REAL_RUN) -> str:
    """What goes under a notebook table (README's and the index's): :func:`times_note`, then
    :func:`real_training_note` when the real run recorded one."""
    return " ".join(part for part in (times_note(report, link_prefix), real_training_note(run)) if part)


_COLAB_PREFIX = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)\"']+/[^/\s)\"']+/blob/[^/\s)\"']+/notebooks/")
_REPO_LINE = re.compile(r"^(?P<indent>[ \t]*)REPO_URL, BRANCH = .*$", re.MULTILINE)
_CLONE_URL = re.compile(r"(git clone (?:[^\s]+ )*?)https://github\.com/[\w.-]+/[\w.-]+?\.git")


# ------------------------------------------------------------------------------------------- helpers
def numbered_notebooks(nb_dir: Path = NB_DIR) -> list[Path]:
    """Every ``NN_*.ipynb`` directly in ``nb_dir`` (the index included), in numeric order."""
    return sorted(nb_dir.glob(NUMBERED_GLOB))


def colab_url(name: str, repo: str = GITHUB_REPO, branch: str = GITHUB_BRANCH) -> str:
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{name}"


def colab_badge(name: str) -> str:
    return f"[![Open In Colab]({BADGE_IMG})]({colab_url(name)})"


def repo_line(indent: str = "    ") -> str:
    """The line of the Colab setup cell that names the repository to clone."""
    return (f'{indent}REPO_URL, BRANCH = "https://github.com/{GITHUB_REPO}.git", "{GITHUB_BRANCH}"'
            "  # set by scripts/nav.py from utils/paths.py")


def setup_source() -> str:
    """The Colab setup cell of every notebook: installs only on Colab; ``PERSIST`` keeps outputs on Drive."""
    return f"""\
# Colab only: fetch the project and install it (Colab keeps its own torch). Does nothing elsewhere.
# Each notebook opened from its badge gets a fresh runtime: PERSIST = True keeps data/, model/ and assets/
# on your Google Drive, so a later notebook finds what an earlier one wrote (otherwise it rebuilds it).
import sys

PERSIST = False
if "google.colab" in sys.modules:
{repo_line()}
    ![ -d /content/cxr-gradcam ] || git clone -q --depth 1 --branch {{BRANCH}} {{REPO_URL}} /content/cxr-gradcam
    %cd /content/cxr-gradcam/notebooks
    %pip install -q -e "..[online]"
    sys.path.insert(0, "/content/cxr-gradcam")  # importable now, without restarting the runtime
    if PERSIST:
        import os

        from google.colab import drive

        drive.mount("/content/drive")
        os.environ["CXR_PROJECT_ROOT"] = "/content/drive/MyDrive/cxr-gradcam"  # outputs live there from now on
    import torch

    print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (Runtime > Change "
          "runtime type > GPU for the full profile)", "| torch", torch.__version__)"""


#: The first lines of every parameters cell: the named knobs (notebooks add their own below them).
PARAMETERS_HEAD = """\
# Parameters (papermill can override them). The environment wins over this cell: CXR_PROFILE, CXR_DATA_DIR,
# CXR_SOURCE, CXR_IMAGE_SIZE, CXR_EPOCHS_PHASE1, CXR_EPOCHS_PHASE2.
PROFILE = "demo"  # "demo": phantom X-rays, CPU-sized; "full": real data, ImageNet weights, GPU-sized
DATA_DIR = ""  # a Kermany folder ROOT/{train,test}[/val]/{NORMAL,PNEUMONIA}, or "kaggle" to download it
SOURCE = None  # None: profile default; "auto" (DATA_DIR if set, else phantoms), "folder", "medmnist", "phantom"
IMAGE_SIZE = None  # None: profile default (demo 128 px, full 224 px)
EPOCHS_PHASE1 = None  # None: profile default (demo 3, full 5)
EPOCHS_PHASE2 = None  # None: profile default (demo 3, full 10)"""

#: How the first code cell after the parameters starts the run (every notebook).
SETUP_CALL = "cfg = setup(PROFILE, DATA_DIR, SOURCE, IMAGE_SIZE, EPOCHS_PHASE1, EPOCHS_PHASE2)"


def sync_links(text: str) -> str:
    """Point Colab badges and ``git clone`` URLs in ``text`` at the configured repository and branch."""
    text = _COLAB_PREFIX.sub(colab_url(""), text)
    return _CLONE_URL.sub(lambda m: f"{m.group(1)}https://github.com/{GITHUB_REPO}.git", text)


def is_nav_cell(cell) -> bool:
    return cell.cell_type == "markdown" and (
        bool(cell.get("metadata", {}).get("nav")) or cell.source.lstrip().startswith(NAV_MARK))


def is_setup_cell(cell) -> bool:
    return cell.cell_type == "code" and SETUP_TAG in cell.get("metadata", {}).get("tags", [])


def notebook_title(nb, fallback: str = "") -> str:
    """Text of the first ``# `` heading outside the nav cells."""
    for cell in nb.cells:
        if cell.cell_type != "markdown" or is_nav_cell(cell):
            continue
        for line in cell.source.splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return fallback


def short_title(title: str) -> str:
    """``"02 · Phase-1 warm-up"`` -> ``"Phase-1 warm-up"``."""
    return re.sub(r"^\d\d\s*·\s*", "", title)


def _md_text(text: str) -> str:
    return text.replace("[", r"\[").replace("]", r"\]").replace("|", r"\|")


def nav_source(names: list[str], titles: list[str], i: int) -> str:
    """Markdown of the navigation cell of ``names[i]``: previous, contents, next, Colab badge."""
    parts = []
    if i > 0:
        parts.append(f"[< {_md_text(titles[i - 1])}]({names[i - 1]})")
    if INDEX_NAME in names and names[i] != INDEX_NAME and (i == 0 or names[i - 1] != INDEX_NAME):
        parts.append(f"[Contents]({INDEX_NAME})")
    if i < len(names) - 1:
        parts.append(f"[{_md_text(titles[i + 1])} >]({names[i + 1]})")
    links = " | ".join(parts) + "\n\n" if parts else ""
    return f"{NAV_MARK}\n{links}{colab_badge(names[i])}"


def nav_cell(source: str, position: str):
    """A navigation cell; ``position`` is ``"top"`` or ``"bottom"`` (its id is stable)."""
    cell = nbformat.v4.new_markdown_cell(source, metadata={"nav": True})
    cell.id = f"nav-{position}"
    return cell


def strip_outputs(nb) -> None:
    """Clear outputs, execution counts and per-run metadata in place."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in ("execution", "ExecuteTime", "papermill"):
            cell.metadata.pop(key, None)
    nb.metadata.pop("papermill", None)


def table_markdown(names: list[str], titles: list[str], link_prefix: str = "") -> str:
    """The notebook table (index and README): number, title, Colab badge, measured CPU time."""
    rows = ["| # | Notebook | Colab | 2-core CPU, demo profile |",
            "|---|---|---|---|"]
    for name, title in zip(names, titles):
        if name == INDEX_NAME:
            continue
        num = name[:2]
        cpu = TIMES.get(num, "–")
        rows.append(f"| {num} | [{_md_text(short_title(title))}]({link_prefix}{name}) | "
                    f"{colab_badge(name)} | {cpu} |")
    if len(rows) == 2:
        rows.append("| – | *(no notebooks yet)* | | |")
    return "\n".join(rows)


def replace_table(text: str, table: str, where: str) -> str:
    """Replace what lies between the table markers in ``text``."""
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise SystemExit(f"{where}: markers {TABLE_START} ... {TABLE_END} are missing; add them where the table goes.")
    return text[:start + len(TABLE_START)] + "\n" + table + "\n" + text[end:]


def dumps(nb) -> str:
    """Serialise exactly as Jupyter and ``nbformat.write`` do (indent 1, sorted keys, final newline)."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


# -------------------------------------------------------------------------------------------- update
def updated_notebook(nb, names: list[str], titles: list[str], i: int):
    """``nb`` with fresh nav cells, synced links and no outputs (changed in place and returned)."""
    strip_outputs(nb)
    nb.cells = [c for c in nb.cells if not is_nav_cell(c)]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = sync_links(cell.source)
        elif is_setup_cell(cell):
            cell.source = setup_source()
    source = nav_source(names, titles, i)
    nb.cells = [nav_cell(source, "top"), *nb.cells, nav_cell(source, "bottom")]
    if names[i] == INDEX_NAME:
        table = table_markdown(names, titles) + "\n\n" + times_notes(link_prefix="../")
        cells = [c for c in nb.cells if c.cell_type == "markdown" and TABLE_START in c.source]
        if not cells:
            raise SystemExit(f"{INDEX_NAME}: no markdown cell holds {TABLE_START} ... {TABLE_END}.")
        cells[0].source = replace_table(cells[0].source, table, INDEX_NAME)
    return nb


def update(nb_dir: Path = NB_DIR, readme: Path | None = None, check: bool = False) -> list[Path]:
    """Update every numbered notebook in ``nb_dir`` (and ``readme``, if given and present).

    Returns the files that changed (or, with ``check``, that would change); writes nothing with ``check``.
    """
    nb_dir = Path(nb_dir)
    paths = numbered_notebooks(nb_dir)
    texts = {p: p.read_text(encoding="utf-8") for p in paths}
    nbs = {p: nbformat.reads(texts[p], as_version=4) for p in paths}
    names = [p.name for p in paths]
    titles = [notebook_title(nbs[p], p.stem) for p in paths]
    new_texts = {p: dumps(updated_notebook(nbs[p], names, titles, i)) for i, p in enumerate(paths)}
    if readme is not None and Path(readme).exists():
        readme = Path(readme)
        texts[readme] = readme.read_text(encoding="utf-8")
        prefix = f"{nb_dir.name}/"
        new_readme = sync_links(texts[readme])
        if TABLE_START in new_readme:
            table = table_markdown(names, titles, prefix) + "\n\n" + times_notes()
            new_readme = replace_table(new_readme, table, readme.name)
        new_texts[readme] = new_readme
    changed = [p for p, text in new_texts.items() if text != texts[p]]
    if not check:
        for p in changed:
            with open(p, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(new_texts[p])
    return changed


def strip_only(nb_dir: Path = NB_DIR) -> list[Path]:
    """Clear outputs of every ``*.ipynb`` directly in ``nb_dir``; returns the files changed."""
    changed = []
    for p in sorted(Path(nb_dir).glob("*.ipynb")):
        text = p.read_text(encoding="utf-8")
        nb = nbformat.reads(text, as_version=4)
        strip_outputs(nb)
        new = dumps(nb)
        if new != text:
            p.write_text(new, encoding="utf-8")
            changed.append(p)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything would change")
    parser.add_argument("--strip-only", action="store_true", help="only clear the outputs of notebooks/*.ipynb")
    parser.add_argument("--nb-dir", type=Path, default=NB_DIR, help="notebook folder (default: notebooks/)")
    parser.add_argument("--readme", type=Path, default=README, help="README holding the table markers")
    args = parser.parse_args(argv)
    if args.strip_only:
        for p in strip_only(args.nb_dir):
            print(f"stripped {p}")
        return 0
    changed = update(args.nb_dir, args.readme, check=args.check)
    for p in changed:
        print(f"{'would update' if args.check else 'updated'} {p}")
    if args.check and changed:
        print("navigation is out of date: run `make nav` (python scripts/nav.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
