"""Real films on the page, offline: the committed figures of ``docs/real/`` shown from a notebook's code cell.

``scripts/real_figures.py`` makes them from a recorded real-data run of the series (the Kermany training folder
split by patient; Kermany et al. 2018, CC BY 4.0) and commits them with a manifest. A notebook shows the one
that matches its live phantom output with :func:`show_real_figure` — a code cell, because a relative image
link in markdown does not render on Colab. The file is found from the package's own location (the checkout,
or Colab's ``/content/cxr-gradcam``), whatever the working directory; when it is not there the call prints one
line saying which file is missing and how to get it, and returns ``None`` — it never raises.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from utils.paths import ARTIFACTS, GITHUB_BRANCH, GITHUB_REPO, repo_root

#: Where the committed real figures live, relative to the repository root, and their manifest.
REAL_DIR = "docs/real"
MANIFEST = "manifest.json"
ATTRIBUTION = "Kermany et al. 2018, CC BY 4.0"
SPLIT = "Kermany train folder split by patient; held-out-patient pseudo-test, not the official test folder"

#: The real figures: name (file ``docs/real/<name>.png``) → what it shows and the notebook that shows it.
REAL_FIGURES: dict[str, dict[str, str]] = {
    "real_samples": {"stage": "data", "what": "real films, NORMAL and PNEUMONIA, with their patient ids"},
    "real_gradcam_tp": {"stage": "explanation", "what": "the series' main explanation on real true positives"},
    "real_gradcam_fn": {"stage": "failures", "what": "every false negative of the pseudo-test, both classes' maps"},
    "real_marker_finds": {"stage": "shortcut", "what": "the marker heuristic on real films"},
    "real_vit_maps": {"stage": "vit", "what": "ViT-Tiny and ResNet-18 maps on the same real true positives"},
}

#: The recorded real-data run whose reports and tables the notebooks show (``scripts/real_run.py`` refreshes it:
#: the JSON reports and the small tables of ``scripts/results.py``, and ``run.json`` with the run's scale).
REAL_RUN = "docs/runs/real_heldout_cpu_128px"
RUN_FILE = "run.json"

#: Colab's clone of the repository (the notebooks' setup cell puts it there).
COLAB_CHECKOUT = Path("/content/cxr-gradcam")


def _search_roots() -> list[Path]:
    """Folders that may hold the repository's files: the checkout this package was imported from, the folder
    above the package (an installed copy beside its repository), Colab's clone. Never the working directory."""
    roots = [repo_root(), Path(__file__).resolve().parents[2], COLAB_CHECKOUT]
    return list(dict.fromkeys(r for r in roots if r is not None))


def find_repo_file(relative: str) -> Path | None:
    """Absolute path of a repository file (``relative`` to the repository root), or None when no known
    checkout has it. Independent of the working directory."""
    for root in _search_roots():
        path = root / relative
        if path.is_file():
            return path
    return None


def real_figure_path(name: str) -> Path | None:
    """Path of the committed real figure ``name`` (``docs/real/<name>.png``), or None when it is not here."""
    return find_repo_file(f"{REAL_DIR}/{_stem(name)}.png")


def real_manifest() -> dict[str, Any]:
    """The manifest of the committed real figures (figure → source run, scale, caption, date); {} if absent."""
    path = find_repo_file(f"{REAL_DIR}/{MANIFEST}")
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _stem(name: str) -> str:
    return name[:-4] if name.endswith(".png") else name


def missing_line(name: str) -> str:
    """The one line printed when a real figure is not here: which file, and how to get it."""
    rel = f"{REAL_DIR}/{_stem(name)}.png"
    web = f"https://github.com/{GITHUB_REPO}/blob/{GITHUB_BRANCH}/{rel}"
    if repo_root() is None:
        return (f"real figure not shown: {rel} is not installed with the package; clone the repository "
                f"(git clone https://github.com/{GITHUB_REPO}) or open the notebook on Colab, or see {web}")
    return (f"real figure not shown: {rel} is missing from this checkout ({repo_root()}); `git pull` to get the "
            f"committed one, regenerate it with `python scripts/real_figures.py --run RUN --images FOLDER`, "
            f"or see {web}")


def _display(path: Path, caption: str) -> None:
    """The image (embedded, so it shows in Jupyter and on Colab) and its caption, in the cell's output."""
    try:
        from IPython.display import Image, Markdown, display
    except ImportError:  # plain Python: say where it is
        print(f"{path}\n{caption}")
        return
    display(Image(filename=str(path)))
    if caption:
        display(Markdown(f"*{caption}*"))


def show_real_figure(name: str, caption: str | None = None) -> None:
    """Show the committed real figure ``name`` (a key of :data:`REAL_FIGURES`) under a code cell, captioned by
    ``caption`` or else by the manifest (the run's scale and the attribution); one printed line instead when the
    file is not here. Never raises, returns nothing (a notebook cell shows the figure, not a path;
    :func:`real_figure_path` gives the path)."""
    try:
        path = real_figure_path(name)
        if path is None:
            print(missing_line(name))
            return
        if caption is None:
            entry = real_manifest().get("figures", {}).get(_stem(name), {})
            caption = str(entry.get("caption", ATTRIBUTION)) if isinstance(entry, dict) else ATTRIBUTION
        _display(path, caption)
    except Exception as exc:  # a figure beside the lesson must never stop the notebook
        print(f"real figure {name!r} not shown: {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------- the recorded real run
def real_run_path(name: str) -> Path | None:
    """Path of the artifact ``name`` (a key of :data:`utils.paths.ARTIFACTS`, e.g. ``"history_phase1"``,
    ``"data_summary"``; or ``"run"`` for ``run.json``) in the recorded real run :data:`REAL_RUN`, or None."""
    if name != "run" and name not in ARTIFACTS:
        raise KeyError(f"unknown artifact {name!r}: one of {', '.join(sorted(ARTIFACTS))} or 'run'")
    file = RUN_FILE if name == "run" else Path(ARTIFACTS[name]).name
    return find_repo_file(f"{REAL_RUN}/{file}")


def _read(path: Path) -> pd.DataFrame | dict[str, Any] | None:
    if path.suffix == ".csv":
        return pd.read_csv(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else None


def read_real_run(name: str, quiet: bool = False) -> pd.DataFrame | dict[str, Any] | None:
    """The recorded real run's artifact ``name`` (see :func:`real_run_path`): a CSV as a table, a JSON report as a
    dict. When it is not here or cannot be read, prints one line saying which file (unless ``quiet``) and returns
    None; never raises for a missing or broken file."""
    path = real_run_path(name)
    if path is None:
        file = RUN_FILE if name == "run" else Path(ARTIFACTS[name]).name
        if not quiet:
            print(f"real-data record not shown: {REAL_RUN}/{file} is not in this checkout (`git pull`, or see "
                  f"https://github.com/{GITHUB_REPO}/tree/{GITHUB_BRANCH}/{REAL_RUN})")
        return None
    try:
        return _read(path)
    except (OSError, ValueError) as exc:
        if not quiet:
            print(f"real-data record not shown: {path} could not be read ({type(exc).__name__}: {exc})")
        return None


def _recorded(value: Any, what: str) -> str:
    return str(value) if value not in (None, "") else f"{what} not recorded"


def real_run_scale() -> str:
    """The recorded real run's scale in one line, e.g. ``"128 px · 1 + 2 epochs · random initialisation (…) ·
    CPU · full profile"``: the knobs and the shipped model's weights and device from ``run.json``, the knobs from
    ``data_summary.json`` where ``run.json`` has none; where no model or device was recorded, the weights from
    notebook 09's record of the same run and the device from notebook 08's or 09's (as ``scripts/results.py``
    reads them). A part no file records says "… not recorded"."""
    run = read_real_run("run", quiet=True) or {}
    data = read_real_run("data_summary", quiet=True) or {}
    knobs = run.get("knobs") or data.get("run") or {}
    model = run.get("model") or {}
    weights = model.get("weights")
    studies = [read_real_run(name, quiet=True) or {} for name in ("shortcut", "vit_comparison")]
    if not weights:
        models = studies[1].get("models") or {}
        weights = next((m.get("weights") for m in models.values() if isinstance(m, dict)), None)
    device = run.get("device") or next((rec["scale"]["device"] for rec in studies
                                        if isinstance(rec.get("scale"), dict) and rec["scale"].get("device")), None)
    epochs = (knobs.get("epochs_phase1"), knobs.get("epochs_phase2"))
    parts = [f"{knobs['image_size']} px" if knobs.get("image_size") else "image size not recorded",
             f"{epochs[0]} + {epochs[1]} epochs" if None not in epochs else "epochs not recorded",
             _recorded(weights, "weights"),
             {"cpu": "CPU", "cuda": "GPU"}.get(str(device).lower(), str(device)) if device else "device not recorded",
             f"{knobs['profile']} profile" if knobs.get("profile") else "profile not recorded"]
    return " · ".join(parts)


def real_run_caption() -> str:
    """Where the real tables come from: the recorded run, its scale, the split and the attribution."""
    return f"recorded real-data run ({REAL_RUN}): {real_run_scale()} · {SPLIT} · {ATTRIBUTION}"
