"""How long the series takes: every numbered notebook run as ``make demo`` runs it, from an empty project root.

    python -m benchmarks.demo_time [--out docs/runs/demo_time.json] [--only 05 08] [--keep] [--no-probe]

Each notebook runs in its own ``python -m papermill`` process with the arguments of the Makefile's ``demo`` target
(kernel start and imports included), one after another, in a fresh temporary ``CXR_PROJECT_ROOT``: the checkout's
``data/``, ``model/`` and ``assets/`` are never touched and nothing from an earlier run is reused — the work a fresh
clone's ``make demo`` does. The knobs in the environment (``CXR_PROFILE``, ``CXR_IMAGE_SIZE``…) apply as they do to
``make demo`` and are recorded.

A machine probe runs first (``--no-probe`` skips it): the project's own training loop
(:func:`utils.train.engine.train_one_epoch`, phase 1 and phase 2) at the demo's 128 px and batch 32, on random
images, as ``benchmarks.bench`` times it. Demo times from different machines are comparable only with it: nearly
the same code took 1.7× longer on one 2-core machine than on another (docs/BENCHMARKS.md).

The report holds the seconds per notebook, the totals against the targets of the issues (:data:`TARGETS`), the
probe, the machine and the commit. A target not met is reported (``meets: false``, exit code 1), never hidden; no
test depends on a timing.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from utils.cli import EXIT_OK, EXIT_PARTIAL, Parser, run_main
from utils.config import KNOB_ENV
from utils.deploy.timing import machine_info
from utils.errors import UserError
from utils.fileio import write_json
from utils.paths import NOTEBOOKS, repo_root

#: Wall-time targets (seconds) for groups of notebooks, on 2 CPU cores: the first seven ≤ 10 min (issues 14 and 16),
#: the first nine ≤ 12 min (17 and 18), the whole series 01–10 ≤ 14 min (issue 25).
TARGETS: dict[str, tuple[tuple[str, ...], float]] = {
    f"01-{last:02d}": (tuple(f"{n:02d}" for n in range(1, last + 1)), minutes * 60.0)
    for last, minutes in ((7, 10), (9, 12), (10, 14))
}
#: The numbered notebooks ``make demo`` runs (the Makefile's ``NOTEBOOKS``): ``NN_*.ipynb`` except the index.
NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"
#: The machine probe: the demo's image size and batch.
PROBE = {"size": 128, "batch": 32, "iters": 6, "warmup": 1, "repeats": 2}  # best of two rounds: ~1 min on 2 cores

Runner = Callable[[Path, Path, Path, dict[str, str]], tuple[int, str]]


def numbered_notebooks(folder: Path, only: Sequence[str] = (), pattern: str = NOTEBOOK_PATTERN) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` (or ``pattern``) of ``folder`` in order, never the index (what
    ``make demo`` runs); ``only`` keeps those numbers."""
    found = sorted(p for p in Path(folder).glob(pattern) if p.name != NOTEBOOKS["index"])
    if only:
        unknown = sorted(set(only) - {p.name[:2] for p in found})
        if unknown:
            raise UserError(f"no notebook numbered {', '.join(unknown)} in {folder}; choose from "
                            f"{', '.join(p.name[:2] for p in found)}.")
        found = [p for p in found if p.name[:2] in only]
    if not found:
        raise UserError(f"no numbered notebooks ({pattern}) in {folder}.")
    return found


def papermill_runner(nb: Path, out: Path, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run one notebook as the Makefile's ``demo`` target does; returns (exit code, last lines of its output)."""
    cmd = [sys.executable, "-m", "papermill", str(nb), str(out), "--cwd", str(cwd), "-k", "python3",
           "--no-progress-bar"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return proc.returncode, (proc.stdout + proc.stderr)[-2000:]


def time_notebooks(notebooks: Sequence[Path], root: Path, executed: Path, env: dict[str, str] | None = None,
                   runner: Runner = papermill_runner, progress: bool = True) -> dict[str, float]:
    """Seconds per notebook (by number), each run by ``runner`` with ``CXR_PROJECT_ROOT=root``, in order. A notebook
    that fails stops the run with a one-line error naming it and its executed copy."""
    env = dict(os.environ if env is None else env)
    env["CXR_PROJECT_ROOT"] = str(root)
    repo = notebooks[0].parent.parent
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH")) if p)  # this checkout's utils
    executed.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    for nb in notebooks:
        num, out = nb.name[:2], executed / nb.name
        t0 = time.perf_counter()
        code, tail = runner(nb, out, nb.parent, env)
        seconds[num] = round(time.perf_counter() - t0, 1)
        if code != 0:
            last = next((line for line in reversed(tail.strip().splitlines()) if line.strip()), "no output")
            raise UserError(f"{nb.name} failed after {seconds[num]:.0f} s ({last.strip()[:200]}); see {out}.")
        if progress:
            print(f"{nb.name}: {seconds[num]:.0f} s", file=sys.stderr, flush=True)
    return seconds


def summarise(seconds: dict[str, float], targets: dict[str, tuple[tuple[str, ...], float]] = TARGETS
              ) -> dict[str, dict[str, Any]]:
    """For every target whose notebooks all ran: their total, the target and whether it is met."""
    out = {}
    for name, (numbers, limit) in targets.items():
        if all(n in seconds for n in numbers):
            total = round(sum(seconds[n] for n in numbers), 1)
            out[name] = {"seconds": total, "target_s": limit, "meets": total <= limit}
    return out


def machine_probe() -> dict[str, Any]:
    """Images/s of the project's training loop at 128 px, batch 32 (phase 1 frozen, phase 2 all), on this CPU/GPU."""
    from benchmarks.bench import _GpuPeaks, bench_train
    from utils.train.model import resolve_device

    device = resolve_device("auto")
    train, _, _ = bench_train(device, dict(PROBE), False, False, _GpuPeaks(device))
    return {"device": device.type, "torch_threads": torch.get_num_threads(), **PROBE,
            "project_phase1_img_s": round(train["project_phase1_img_s"], 1),
            "project_phase2_img_s": round(train["project_phase2_img_s"], 1)}


def _commit(repo: Path) -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    except OSError:
        return None
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def format_report(rep: dict[str, Any]) -> str:
    """A few lines: each notebook, each target, the probe."""
    lines = [f"{n}: {s:>6.0f} s" for n, s in rep["seconds"].items()]
    for name, t in rep["targets"].items():
        lines.append(f"{name}: {t['seconds'] / 60:.1f} min (target {t['target_s'] / 60:.0f} min: "
                     f"{'met' if t['meets'] else 'NOT met'})")
    if rep.get("probe"):
        p = rep["probe"]
        lines.append(f"probe ({p['device']}, {p['size']} px, batch {p['batch']}): phase 1 {p['project_phase1_img_s']} "
                     f"img/s, phase 2 {p['project_phase2_img_s']} img/s")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m benchmarks.demo_time",
               description="Time every numbered notebook as `make demo` runs it, from an empty project root.")
    p.add_argument("--out", default="", help="JSON report (default: a temporary folder, printed)")
    p.add_argument("--only", nargs="+", default=(), metavar="NN", help="notebook numbers to run (default: all)")
    p.add_argument("--keep", action="store_true", help="keep the project root and the executed copies")
    p.add_argument("--no-probe", dest="probe", action="store_false", help="skip the machine probe")
    p.add_argument("--quiet", action="store_true")
    return p


def run(args: argparse.Namespace, runner: Runner = papermill_runner) -> dict[str, Any]:
    """Probe, then time the notebooks; writes the report and returns it (``_path``: where)."""
    repo = repo_root()
    if repo is None:
        raise UserError("the demo timing needs the repository checkout (its notebooks/ folder).")
    notebooks = numbered_notebooks(repo / "notebooks", args.only)
    tmp = Path(tempfile.mkdtemp(prefix="cxr-demo-time-"))
    out_path = Path(args.out).expanduser() if args.out else tmp / "demo_time.json"
    try:
        probe = machine_probe() if args.probe else None
        t0 = time.perf_counter()
        seconds = time_notebooks(notebooks, tmp / "project", tmp / "executed", runner=runner,
                                 progress=not args.quiet)
        rep = {"date": time.strftime("%Y-%m-%d"), "commit": _commit(repo),
               "machine": machine_info(torch.get_num_threads()), "python": platform.python_version(),
               "knobs": {var: os.environ[var] for var in KNOB_ENV.values() if os.environ.get(var)},
               "seconds": seconds, "total_s": round(time.perf_counter() - t0, 1), "targets": summarise(seconds),
               "probe": probe}
        write_json(out_path, rep)
    finally:
        if not args.keep:  # without --out the report stays in the temporary folder (its path is printed)
            shutil.rmtree(tmp / "project", ignore_errors=True)
            shutil.rmtree(tmp / "executed", ignore_errors=True)
    return {**rep, "_path": str(out_path), "_kept": str(tmp) if args.keep else None}


def _cli(argv: Sequence[str] | None) -> int:
    rep = run(build_parser().parse_args(argv))
    print(format_report(rep))
    print(f"report: {rep['_path']}" + (f" | executed copies and outputs kept in {rep['_kept']}" if rep["_kept"] else ""))
    return EXIT_OK if all(t["meets"] for t in rep["targets"].values()) else EXIT_PARTIAL


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 when every target that ran is met, 1 when one is not, 2 for a user mistake or a failed notebook."""
    return run_main(_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
