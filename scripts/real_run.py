#!/usr/bin/env python3
"""The real-data run of the series, reproducible: a held-out-patient layout of the Kermany training folder, every
numbered notebook on it, the real figures, and the reports recorded for README.

    python scripts/real_run.py --source <Kermany training folder, e.g. chest_xray/train>

runs, with the defaults (about 1.5 h on two CPU cores):

(a) **the layout** (:func:`build_layout`): ``.realdata/kermany_heldout/{train,test}/{NORMAL,PNEUMONIA}`` (git-ignored)
    built from ``--source`` by **whole patients** — the project's patient key
    (:func:`utils.data.patients.patient_id_from_name`) and its own patient split
    (:func:`utils.data.splits.patient_split`: seeded, stratified by the patient's label) hold out
    ``--test-fraction`` of the patients (default 11 %, seed 42) as a **pseudo-test**; every file is a symbolic (or
    hard) link, never a copy, and ``LAYOUT.json`` records the rule. A source that looks like the official Kaggle test
    folder is refused (the series never reads it), and nothing is written into the repository outside ``.realdata/``;
(b) **the notebooks**: every numbered notebook, in order, with papermill (``make demo``'s arguments) in a project
    root of its own (``--work``, default ``.realdata/real_run_<size>px/project``; executed copies beside it), with the
    knobs ``CXR_PROFILE=full CXR_SOURCE=folder CXR_DATA_DIR=<layout> CXR_IMAGE_SIZE=128 CXR_EPOCHS_PHASE1=1
    CXR_EPOCHS_PHASE2=2`` (flags change them) and ``OMP_NUM_THREADS`` = ``--threads``; the wall time of each notebook
    is recorded (``progress.json`` after each, so a failed run says how far it got);
(c) **the real figures**: ``scripts/real_figures.py --run <project> --images <layout>`` when that script exists;
(d) **the record**: the JSON reports copied into ``docs/runs/real_heldout_cpu_128px/`` with ``run.json`` (commit,
    date, machine, knobs, the layout, seconds per notebook) by :func:`scripts.results.record_run`, and README's
    results block regenerated from them.

The previous real-data run held out 585 films of 438 patients by a rule that was not recorded and could not be
reproduced (``patient_split`` at 12 % of the patients gives 438 patients, but not those 585 films, for every seed
below 3,000), so this driver uses the project's own split at 11 % of the patients, seed 42, and records it in
``LAYOUT.json`` and ``run.json``.
``--layout-only`` builds (or checks) the layout and stops; ``--only 05 06`` re-runs some notebooks in the same root
(a run done in parts records every part: their commands and the seconds of each notebook, see :func:`earlier_parts`).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # running as `python scripts/real_run.py` before `pip install -e .`
    sys.path.insert(0, str(ROOT))

import numpy as np

from benchmarks import demo_time
from benchmarks.demo_time import Runner, papermill_runner, time_notebooks
from scripts import results
from utils.cli import EXIT_OK, Parser, run_main
from utils.config import CLASSES, KNOB_ENV
from utils.data.images import list_images
from utils.data.patients import patient_id_from_name
from utils.data.splits import patient_split
from utils.errors import UserError
from utils.fileio import read_json, write_json
from utils.machine import cpu_count

REALDATA = ROOT / ".realdata"  # git-ignored: the only place in the checkout this script writes data to
LAYOUT_FILE = "LAYOUT.json"
TEST_FRACTION, SEED = 0.11, 42
#: The knobs of the run (the CPU scale of the recorded real-data run); flags change them.
DEFAULT_KNOBS = {"image_size": 128, "epochs_phase1": 1, "epochs_phase2": 2}
FIGURES = ROOT / "scripts" / "real_figures.py"
FIGURES_OUT = ROOT / "docs" / "real"
RUN_OUT = results.RUNS_DIR / next(s.folder for s in results.RUNS if s.key == "real")
LINKS = ("symlink", "hardlink")

#: Runs the real-figure script: (project root, layout, output folder, environment) -> (exit code, output tail).
FiguresRunner = Callable[[Path, Path, Path, dict[str, str]], tuple[int, str]]


# ------------------------------------------------------------------------------------------------ the layout
def official_test_reason(folder: Path) -> str | None:
    """Why ``folder`` looks like the official Kaggle test folder, or None (the real-figure script's own rule)."""
    from scripts.real_figures import official_test_reason as reason

    return reason(folder)


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both resolved)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def check_destination(dest: Path, repo: Path = ROOT) -> None:
    """A folder this script writes data to must lie outside the repository or under its git-ignored ``.realdata/``."""
    if inside(dest, repo) and not inside(dest, repo / REALDATA.name):
        raise UserError(f"{dest} is inside the repository: real images (even links to them) and run outputs go under "
                        f"{repo / REALDATA.name}/ (git-ignored) or outside the checkout.")


def source_files(source: Path) -> list[tuple[str, Path]]:
    """``(class, file)`` of every image of a Kermany class folder pair ``source/{NORMAL,PNEUMONIA}``, sorted; refuses
    the official test folder and anything that is not such a folder."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise UserError(f"source folder not found: {source}; pass --source <chest_xray>/train (the Kermany training "
                        "folder with NORMAL/ and PNEUMONIA/).")
    reason = official_test_reason(source)
    if reason:
        raise UserError(f"{reason}: the source must be the Kermany *training* folder — the series never reads the "
                        "official test folder.")
    missing = [c for c in CLASSES if not (source / c).is_dir()]
    if missing:
        hint = " (it holds train/: pass --source " + str(source / "train") + ")" if (source / "train").is_dir() else ""
        raise UserError(f"{source} has no {'/'.join(missing)} folder{hint}; pass the Kermany training folder "
                        "<chest_xray>/train with NORMAL/ and PNEUMONIA/.")
    files = [(c, p) for c in CLASSES for p in list_images(source / c)]
    for c in CLASSES:
        if not any(cls == c for cls, _ in files):
            raise UserError(f"{source / c} holds no images; pass the Kermany training folder.")
    return files


def held_out(files: Sequence[tuple[str, Path]], fraction: float = TEST_FRACTION, seed: int = SEED) -> np.ndarray:
    """Boolean per file: in the pseudo-test. Whole patients (the project's key), ``fraction`` of them per patient
    label, seeded (:func:`utils.data.splits.patient_split`)."""
    pids = np.array([patient_id_from_name(p.name) for _, p in files])
    labels = np.array([CLASSES.index(c) for c, _ in files])
    _, test_idx = patient_split(pids, labels, fraction, seed)
    mask = np.zeros(len(files), dtype=bool)
    mask[test_idx] = True
    return mask


def _split_counts(files: Sequence[tuple[str, Path]], mask: np.ndarray) -> dict[str, int]:
    chosen = [f for f, m in zip(files, mask) if m]
    out = {"images": len(chosen), "patients": len({patient_id_from_name(p.name) for _, p in chosen})}
    out.update({c: sum(cls == c for cls, _ in chosen) for c in CLASSES})
    return out


def layout_manifest(source: Path, files: Sequence[tuple[str, Path]], mask: np.ndarray, fraction: float, seed: int,
                    link: str) -> dict[str, Any]:
    """What ``LAYOUT.json`` records: the source, the rule, the counts and a digest of the held-out patients."""
    test_pids = sorted({patient_id_from_name(p.name) for (_, p), m in zip(files, mask) if m})
    return {"source": str(Path(source).expanduser().resolve()),
            "rule": "utils.data.splits.patient_split: whole patients, stratified by the patient's label, seeded",
            "patient_key": "utils.data.patients.patient_id_from_name (series + number)",
            "test_fraction": fraction, "seed": seed, "link": link,
            "splits": {"train": _split_counts(files, ~mask), "test": _split_counts(files, mask)},
            "test_patients_sha256": hashlib.sha256("\n".join(test_pids).encode()).hexdigest()[:16]}


def _link(src: Path, dst: Path, link: str) -> None:
    try:
        if link == "symlink":
            dst.symlink_to(src.resolve())
        else:
            os.link(src, dst)
    except OSError as exc:
        raise UserError(f"cannot {link} {src} to {dst} ({exc.strerror}): try --link "
                        f"{'symlink' if link == 'hardlink' else 'hardlink'}.") from None


def build_layout(source: Path, dest: Path, fraction: float = TEST_FRACTION, seed: int = SEED, link: str = "symlink",
                 repo: Path = ROOT) -> dict[str, Any]:
    """The official-layout folder ``dest/{train,test}/{NORMAL,PNEUMONIA}`` of links to ``source``'s files, the
    held-out patients in ``test/`` (:func:`held_out`), and ``dest/LAYOUT.json``. An existing ``dest`` with the same
    manifest is reused; one with another is refused. Returns the manifest."""
    if link not in LINKS:
        raise UserError(f"unknown --link {link!r}: choose {' or '.join(LINKS)}.")
    if not 0 < fraction < 1:
        raise UserError(f"--test-fraction must be between 0 and 1, got {fraction}.")
    source, dest = Path(source).expanduser(), Path(dest).expanduser()
    check_destination(dest, repo)
    if inside(dest, source) or inside(source, dest):
        raise UserError(f"--layout {dest} and --source {source} overlap: put the layout in a folder of its own.")
    files = source_files(source)
    mask = held_out(files, fraction, seed)
    manifest = layout_manifest(source, files, mask, fraction, seed, link)
    if dest.exists():
        old = read_json(dest / LAYOUT_FILE) if (dest / LAYOUT_FILE).is_file() else None
        if old == manifest:
            return manifest
        raise UserError(f"{dest} already holds {'another layout' if old else 'files'}: remove it, or pass another "
                        "--layout.")
    partial = dest.with_name(dest.name + ".partial")
    if partial.exists():
        import shutil

        shutil.rmtree(partial)
    for (cls, path), test in zip(files, mask):
        folder = partial / ("test" if test else "train") / cls
        folder.mkdir(parents=True, exist_ok=True)
        _link(path, folder / path.name, link)
    write_json(partial / LAYOUT_FILE, manifest)
    partial.rename(dest)  # the layout appears whole or not at all
    return manifest


# ------------------------------------------------------------------------------------------------ the run
def numbered_notebooks(folder: Path = ROOT / "notebooks", only: Sequence[str] = ()) -> list[Path]:
    """Every numbered notebook ``NN_*.ipynb`` but the index, in order (``only``: those numbers)."""
    return demo_time.numbered_notebooks(folder, only, pattern="[0-9][0-9]_*.ipynb")


def run_env(layout: Path, knobs: dict[str, Any], threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every notebook: the real-data knobs (nothing else of ``CXR_*`` from the caller) and the
    thread count."""
    env = {k: v for k, v in dict(os.environ if base is None else base).items() if k not in KNOB_ENV.values()}
    env.update({KNOB_ENV["profile"]: "full", KNOB_ENV["source"]: "folder", KNOB_ENV["data_dir"]: str(layout),
                KNOB_ENV["image_size"]: str(knobs["image_size"]),
                KNOB_ENV["epochs_phase1"]: str(knobs["epochs_phase1"]),
                KNOB_ENV["epochs_phase2"]: str(knobs["epochs_phase2"]),
                "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


def papermill_figures(project: Path, layout: Path, out: Path, env: dict[str, str]) -> tuple[int, str]:
    """``scripts/real_figures.py --run project --images layout --out out``: (exit code, last lines of its output)."""
    cmd = [sys.executable, str(FIGURES), "--run", str(project), "--images", str(layout), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    return proc.returncode, (proc.stdout + proc.stderr)[-2000:]


def describe(manifest: dict[str, Any]) -> str:
    """One sentence for README: what the layout is (numbers from the manifest)."""
    tr, te = manifest["splits"]["train"], manifest["splits"]["test"]
    return (f"the Kermany training folder ({tr['images'] + te['images']:,} films) split by whole patients: "
            f"{manifest['test_fraction']:.0%} of the patients (seed {manifest['seed']}, stratified by label) held out "
            f"as a pseudo-test of {te['images']:,} films ({te['patients']:,} patients), never the official test "
            "folder; the series draws its validation from the remaining training films")


def earlier_parts(progress_file: Path, manifest: dict[str, Any], knobs: dict[str, Any], threads: int) -> dict[str, Any]:
    """What earlier invocations of the same run (``--only``: the same layout, knobs and threads, in the same root)
    recorded in ``progress.json`` — their seconds per notebook, notebooks and commands — so the record of a run done
    in parts names every part; ``{}`` when there is none or it was another run."""
    if not progress_file.is_file():
        return {}
    earlier = read_json(progress_file)
    same = (earlier.get("knobs") == knobs and earlier.get("threads") == threads
            and (earlier.get("layout") or {}).get("test_patients_sha256") == manifest.get("test_patients_sha256"))
    if not same:
        return {}
    failed = (earlier.get("failed") or {}).get("notebook", "")[:2]
    return {"seconds": {k: v for k, v in (earlier.get("seconds") or {}).items() if k != failed},
            "notebooks": list(earlier.get("notebooks") or []), "commands": list(earlier.get("commands") or [])}


def run(args: argparse.Namespace, runner: Runner = papermill_runner,
        figures: FiguresRunner = papermill_figures) -> dict[str, Any]:
    """(a)–(d) of the module docstring; returns what ``run.json`` records (``_written``: the files recorded)."""
    knobs = {"image_size": args.image_size, "epochs_phase1": args.epochs_phase1, "epochs_phase2": args.epochs_phase2}
    notebooks = [] if args.layout_only else numbered_notebooks(args.notebooks, args.only)
    manifest = build_layout(args.source, args.layout, args.test_fraction, args.seed, args.link, args.repo)
    print(f"layout {args.layout}: {describe(manifest)}", file=sys.stderr)
    if args.layout_only:
        return {"layout": manifest}
    work = Path(args.work or REALDATA / f"real_run_{args.image_size}px").expanduser()
    check_destination(work, args.repo)
    project, executed = work / "project", work / "executed"
    env = run_env(Path(args.layout).expanduser().resolve(), knobs, args.threads)
    command = "python scripts/real_run.py " + " ".join(shlex.quote(a) for a in (getattr(args, "argv", None) or []))
    earlier = earlier_parts(work / "progress.json", manifest, knobs, args.threads) if args.only else {}
    now = {nb.name for nb in notebooks}
    seconds: dict[str, float] = {k: v for k, v in earlier.get("seconds", {}).items() if k not in {n[:2] for n in now}}
    names = sorted({n for n in earlier.get("notebooks", []) if n[:2] in seconds} | now)
    commands = [*earlier.get("commands", []), command.strip()]
    progress: dict[str, Any] = {"layout": manifest, "knobs": knobs, "threads": args.threads, "seconds": seconds,
                                "notebooks": names, "commands": commands}
    for nb in notebooks:
        t0 = time.perf_counter()
        try:
            seconds.update(time_notebooks([nb], project, executed, env, runner, progress=not args.quiet))
        except UserError:
            progress["failed"] = {"notebook": nb.name, "seconds": round(time.perf_counter() - t0, 1)}
            raise
        finally:
            write_json(work / "progress.json", progress)
    info = {"run": "real", "made_by": ", then ".join(f"`{c}`" for c in commands), "data": describe(manifest),
            "splits": {"test": {"label": "pseudo-test"}}, "layout": manifest, "threads": args.threads,
            "notebooks": names, "seconds": dict(sorted(seconds.items())),
            "total_s": round(sum(seconds.values()), 1), "project_root": str(project)}
    out = Path(args.out).expanduser()
    written = results.record_run(project, out, info, args.repo)
    failed = None
    if not args.no_figures and FIGURES.is_file():
        t0 = time.perf_counter()
        code, tail = figures(project, Path(args.layout).expanduser().resolve(), Path(args.figures_out), env)
        info["figures"] = {"out": str(args.figures_out), "exit_code": code, "seconds": round(time.perf_counter() - t0, 1)}
        if code != 0:
            last = next((ln for ln in reversed(tail.strip().splitlines()) if ln.strip()), "no output")
            failed = f"the real figures failed (exit {code}: {last.strip()[:200]})"
        run_json = read_json(out / results.RUN_FILE)
        write_json(out / results.RUN_FILE, {**run_json, "figures": info["figures"]})
    runs_dir = Path(args.runs_dir)
    if inside(out, runs_dir):
        results.update(args.readme, runs_dir)
    else:
        print(f"{out} is outside {runs_dir}: README's results block is left as it is.", file=sys.stderr)
    if failed:
        raise UserError(f"{failed}; the reports are recorded in {out}. Fix it and run scripts/real_figures.py alone.")
    return {**info, "_written": [str(p) for p in written]}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python scripts/real_run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, required=True, help="the Kermany training folder (with NORMAL/, PNEUMONIA/)")
    p.add_argument("--layout", type=Path, default=REALDATA / "kermany_heldout", help="the layout folder to build or "
                   "reuse (default .realdata/kermany_heldout)")
    p.add_argument("--test-fraction", type=float, default=TEST_FRACTION, help="share of patients held out (0.11)")
    p.add_argument("--seed", type=int, default=SEED, help="seed of the patient split (42)")
    p.add_argument("--link", choices=LINKS, default="symlink", help="how the layout points at the files")
    p.add_argument("--layout-only", action="store_true", help="build (or check) the layout and stop")
    p.add_argument("--work", type=Path, default=None, help="the run's own folder: project/ (CXR_PROJECT_ROOT) and "
                   "executed/ (default .realdata/real_run_<size>px)")
    p.add_argument("--image-size", type=int, default=DEFAULT_KNOBS["image_size"])
    p.add_argument("--epochs-phase1", type=int, default=DEFAULT_KNOBS["epochs_phase1"])
    p.add_argument("--epochs-phase2", type=int, default=DEFAULT_KNOBS["epochs_phase2"])
    p.add_argument("--threads", type=int, default=cpu_count(), help="OMP/MKL threads of every notebook (all cores)")
    p.add_argument("--only", nargs="+", default=(), metavar="NN", help="notebook numbers to run (default: all)")
    p.add_argument("--no-figures", action="store_true", help="skip scripts/real_figures.py")
    p.add_argument("--figures-out", type=Path, default=FIGURES_OUT, help="where the real figures go (docs/real)")
    p.add_argument("--out", type=Path, default=RUN_OUT, help="the run folder the reports are recorded in "
                   "(docs/runs/real_heldout_cpu_128px: the folder README's real-data block reads)")
    p.add_argument("--quiet", action="store_true")
    # for tests: another checkout's notebooks, README and repository boundary
    p.add_argument("--notebooks", type=Path, default=ROOT / "notebooks", help=argparse.SUPPRESS)
    p.add_argument("--readme", type=Path, default=results.README, help=argparse.SUPPRESS)
    p.add_argument("--runs-dir", type=Path, default=results.RUNS_DIR, help=argparse.SUPPRESS)
    p.add_argument("--repo", type=Path, default=ROOT, help=argparse.SUPPRESS)
    return p


def _cli(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads < 1 or min(args.image_size, args.epochs_phase1, args.epochs_phase2) < 1:
        raise UserError("--threads, --image-size and the epochs must be positive.")
    rep = run(args)
    if args.layout_only:
        return EXIT_OK
    secs = rep["seconds"]
    print("\n".join(f"{nb}: {s:.0f} s" for nb, s in secs.items()))
    print(f"total {rep['total_s'] / 60:.1f} min; reports recorded in {args.out}; README's results block regenerated")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 on success, 2 for a user mistake or a failed notebook (one line naming it)."""
    return run_main(_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
