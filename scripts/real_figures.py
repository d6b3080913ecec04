"""Regenerate the committed real-data figures (``docs/real/``) from a recorded real-data run of the series.

A *run* is a project root written by the notebooks on real data, e.g.::

    CXR_PROJECT_ROOT=/runs/real CXR_PROFILE=full CXR_DATA_DIR=<Kermany folder> make demo

Its ``model/`` holds the shipped checkpoint (threshold and explanation recorded by notebooks 04 and 05; the ViT of
notebook 09 under the tag ``vit`` when it ran) and its ``assets/`` the pseudo-test predictions. With the image
folder the run read, this script redraws a few figures through the series' own functions, at the run's scale::

    python scripts/real_figures.py --run /runs/real --images <Kermany folder> [--out docs/real]

* ``real_samples``: real films of held-out patients, NORMAL and PNEUMONIA, with their patient ids;
* ``real_gradcam_tp``: the series' main explanation (read from the checkpoint) on real true positives;
* ``real_gradcam_fn``: every false negative of the pseudo-test (capped by ``--max-fn``), both classes' maps;
* ``real_marker_finds``: notebook 08's marker heuristic on real films;
* ``real_vit_maps``: ViT-Tiny and ResNet-18 maps on common true positives (when the run has notebook 09's ViT);

each captioned with the run's scale, the split and the attribution (Kermany et al. 2018, CC BY 4.0), plus
``manifest.json`` (figure → source run, scale, caption, date). Notebooks show them with
:func:`utils.viz.gallery.show_real_figure`.

What it refuses (one-line error, exit 2, nothing written): an image folder that looks like the official test
folder (named ``test``, or holding files of the official test list), and a run whose pseudo-test contains a file
of the official test folder or a file that is not in the official training folder. It never copies an image:
only the figures are written.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd

from utils.artifacts import operating_threshold, read_predictions
from utils.checkpoint import state_fingerprint
from utils.cli import Parser, run_main
from utils.data.fixture import official_names
from utils.data.images import IMAGE_SUFFIXES, read_image
from utils.errors import UserError
from utils.fileio import write_json
from utils.paths import artifact, repo_root
from utils.viz.common import finish, set_caption
from utils.viz.gallery import ATTRIBUTION, MANIFEST, REAL_DIR, REAL_FIGURES, SPLIT

matplotlib.use("Agg")

DPI = 80  # modest: a few hundred kB per figure
#: Largest difference allowed between a probability recorded by the run and the one recomputed here from its
#: checkpoint and the image folder (another device or library build moves it by ~1e-5; another folder or model
#: by far more).
PROB_TOLERANCE = 0.02
CLASSES = ("NORMAL", "PNEUMONIA")


# ------------------------------------------------------------------------------------------------ refusals
def _basenames(folder: str) -> frozenset[str]:
    return frozenset(Path(n).name for n in official_names(folder))


def official_test_reason(images: Path) -> str | None:
    """Why ``images`` looks like the official Kaggle test folder (the series never reads it), or None."""
    if images.name.lower() == "test":
        return f"{images} is named 'test'"
    test_names = _basenames("test")
    for cls in CLASSES:
        for sub in (images / cls, images / "test" / cls):
            if sub.is_dir():
                hit = next((p.name for p in sub.iterdir() if p.name in test_names), None)
                if hit:
                    return f"{sub} holds {hit}, a file of the official test folder"
    return None


def check_pseudo_test_ids(ids: Sequence[str]) -> None:
    """The run's pseudo-test must come from the official *training* folder: never a test file."""
    test_names = {Path(n).stem for n in _basenames("test")}
    train_names = {Path(n).stem for n in _basenames("train")}
    bad = [i for i in ids if i in test_names]
    if bad:
        raise UserError(f"the run's test split holds {len(bad)} file(s) of the official test folder (e.g. {bad[0]}): "
                        "real figures are made only from a run on the training folder split by patient.")
    unknown = [i for i in ids if i not in train_names]
    if unknown:
        raise UserError(f"the run's test split holds {len(unknown)} file(s) that are not in the official training "
                        f"folder (e.g. {unknown[0]}): point --run at a real-data run on the Kermany training folder.")


def index_images(images: Path, ids: Sequence[str]) -> dict[str, Path]:
    """File of every id under ``images`` (any depth), never a file of the official test list."""
    test_names = _basenames("test")
    want = set(ids)
    found: dict[str, Path] = {}
    for path in sorted(images.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.stem in want and path.name not in test_names:
            found.setdefault(path.stem, path)
    missing = sorted(want - set(found))
    if missing:
        raise UserError(f"{len(missing)} image(s) of the run are not under {images} (e.g. {missing[0]}): pass the "
                        "image folder the run read with --images.")
    return found


# ------------------------------------------------------------------------------------------------ the run
class Run:
    """What the script reads from a recorded run: the shipped model, its threshold and the pseudo-test."""

    def __init__(self, root: Path, images: Path, device: str = "cpu", tag: str | None = None) -> None:
        from utils.train.model import load_model

        self.root, self.tag = root, tag
        self.path = artifact("model", root, tag)
        if not self.path.is_file():
            raise UserError(f"{self.path} is missing: --run must be a project root written by the series "
                            "(notebooks 01-05 on real data).")
        self.model, self.meta = load_model(self.path, device)
        self.threshold, self.rule = operating_threshold(self.meta, self.path)
        self.pred = read_predictions(artifact("predictions", root, tag, split="test"))
        self.pred["id"] = self.pred["id"].astype(str)
        check_pseudo_test_ids(self.pred["id"].tolist())
        self.files = index_images(images, self.pred["id"].tolist())
        self._images: dict[str, np.ndarray] = {}

    def images(self, ids: Sequence[str]) -> np.ndarray:
        """The films as the run saw them (decoded and resized by the loader's own function)."""
        size = int(self.meta["image_size"])
        for i in ids:
            if i not in self._images:
                self._images[i] = read_image(self.files[i], size)
        return np.stack([self._images[i] for i in ids]) if len(ids) else np.zeros((0, size, size), np.uint8)

    def rows(self, kind: str) -> pd.DataFrame:
        """Pseudo-test rows of one outcome at the recorded threshold: TP, FN, FP or TN."""
        y, pos = self.pred["label"] == 1, self.pred["prob"] >= self.threshold
        mask = {"TP": y & pos, "FN": y & ~pos, "FP": ~y & pos, "TN": ~y & ~pos}[kind]
        return self.pred[mask.to_numpy()]

    def maps(self, ids: Sequence[str], target: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The run's main explanation (recorded in the checkpoint) for ``target``, and P(PNEUMONIA) now."""
        from utils.explain.maps import main_maps

        return main_maps(self.model, self.path, self.images(ids), targets=target)

    def check_probabilities(self, ids: Sequence[str], probs: np.ndarray) -> float:
        """Largest difference between the recorded and the recomputed P(PNEUMONIA); too large is an error."""
        recorded = self.pred.set_index("id").loc[list(ids), "prob"].to_numpy(float)
        diff = float(np.max(np.abs(recorded - probs))) if len(ids) else 0.0
        if diff > PROB_TOLERANCE:
            raise UserError(f"P(PNEUMONIA) recomputed from {self.path.name} and the images differs from the run's "
                            f"predictions by {diff:.3f}: --images is not the folder this run read, or the model "
                            "changed since.")
        return diff

    def explanation(self) -> str:
        from utils.explain.maps import main_explanation

        return str(main_explanation(self.path).get("name", "the main explanation"))

    def scale(self) -> dict[str, Any]:
        run = self.meta.get("run", {}) if isinstance(self.meta.get("run"), dict) else {}
        return {"image_size": int(self.meta["image_size"]), "epochs_phase1": run.get("epochs_phase1"),
                "epochs_phase2": run.get("epochs_phase2"), "weights": str(self.meta.get("weights", "unknown")),
                "profile": str(self.meta.get("profile", run.get("profile", "?"))),
                "shipped_phase": self.meta.get("phase"), "arch": self.meta.get("arch")}


def scale_text(scale: dict[str, Any]) -> str:
    """``"128 px, 2 + 2 epochs, random initialisation, full profile"``: the run's scale in a caption."""
    return (f"{scale['image_size']} px, {scale['epochs_phase1']} + {scale['epochs_phase2']} epochs, "
            f"{scale['weights']}, {scale['profile']} profile")


def caption_for(what: str, scale: dict[str, Any]) -> str:
    return f"{what} · real run: {scale_text(scale)} · {SPLIT} · {ATTRIBUTION}"


def _pick(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if len(frame) <= n:
        return frame
    return frame.iloc[np.sort(np.random.default_rng(seed).choice(len(frame), n, replace=False))]


# ------------------------------------------------------------------------------------------------ figures
def make_figures(run: Run, out: Path, n_tp: int, max_fn: int, seed: int, dpi: float,
                 vit: Run | None = None) -> dict[str, dict[str, Any]]:
    """Draw every real figure into ``out``; returns the manifest entry of each."""
    from utils.data.confounder import find_markers_all
    from utils.explain.localisation import estimate_lung_fields
    from utils.studies.shortcut import finds_sample
    from utils.viz import cams, data, shortcut

    scale = run.scale()
    size, t = scale["image_size"], run.threshold
    entries: dict[str, dict[str, Any]] = {}

    def save(name: str, fig: Any, ids: Sequence[str], caption: str, **extra: Any) -> None:
        path = out / f"{name}.png"
        finish(fig, path, dpi=dpi)
        entries[name] = {"file": f"{name}.png", "caption": caption, "images": len(ids), **extra}
        import matplotlib.pyplot as plt

        plt.close(fig)

    def captioned(name: str) -> str:
        caption = caption_for(REAL_FIGURES[name]["what"], scale)
        set_caption(caption)
        return caption

    pid = run.pred.set_index("id")["patient_id"].astype(str)
    # real_samples
    cap = captioned("real_samples")
    picks = pd.concat([_pick(run.pred[run.pred["label"] == c], 6, seed) for c in (0, 1)])
    ids = picks["id"].tolist()
    fig = data.plot_sample_grid(run.images(ids), picks["label"].to_numpy(), [f"{i}\npatient {pid[i]}" for i in ids],
                                title=f"real films of held-out patients ({size} px, as the model saw them)")
    save("real_samples", fig, ids, cap)

    # real_gradcam_tp
    cap = captioned("real_gradcam_tp")
    tp = _pick(run.rows("TP"), n_tp, seed)
    ids = tp["id"].tolist()
    maps, probs = run.maps(ids)
    diff = run.check_probabilities(ids, probs)
    imgs = run.images(ids)
    fig = cams.plot_cam_grid(imgs, maps, [f"p={p:.3f}\nmap: evidence for PNEUMONIA" for p in tp["prob"]],
                             lung_masks=estimate_lung_fields(imgs), ncols=4, show_image=True,
                             image_titles=[f"{i}\npatient {pid[i]}" for i in ids],
                             lung_label="lung field (estimated)",
                             suptitle=f"{run.explanation()} on {len(ids)} real true positives (threshold {t:.3f}, "
                                      f"{run.rule})")
    save("real_gradcam_tp", fig, ids, cap, max_probability_difference=diff)

    # real_gradcam_fn
    cap = captioned("real_gradcam_fn")
    fn_all = run.rows("FN").sort_values("prob")
    fn = fn_all.iloc[:max_fn]
    ids = fn["id"].tolist()
    imgs = run.images(ids)
    pneu, probs = run.maps(ids, 1)
    diff = run.check_probabilities(ids, probs)
    normal, _ = run.maps(ids, 0)
    shown = "" if len(fn) == len(fn_all) else f" (the {len(fn)} lowest of {len(fn_all)})"
    fig = cams.plot_case_sheet(imgs, pneu, normal, [f"FN · {i}\n{s} · p={p:.3f} < {t:.3f}" for i, s, p in
                                                    zip(ids, fn["subtype"], fn["prob"])],
                               lung_masks=estimate_lung_fields(imgs), lung_label="lung field (estimated)")
    fig.suptitle(f"every false negative of the pseudo-test{shown}: {len(fn_all)} of {int((run.pred['label'] == 1).sum())}"
                 f" PNEUMONIA films missed at threshold {t:.3f}", fontsize=10)
    save("real_gradcam_fn", fig, ids, cap, false_negatives=len(fn_all), max_probability_difference=diff)

    # real_marker_finds (notebook 08's selection: every FN and FP, and some TPs)
    cap = captioned("real_marker_finds")
    sel = pd.concat([run.rows("FN").assign(kind="FN"), run.rows("FP").assign(kind="FP"),
                     _pick(run.rows("TP"), 12, seed).assign(kind="TP")])
    ids, kinds = sel["id"].tolist(), sel["kind"].tolist()
    found = find_markers_all(run.images(ids))
    grid = finds_sample(found)
    fig = shortcut.plot_marker_finds(run.images([ids[g] for g in grid]), found[grid],
                                     [f"{kinds[g]} · {ids[g]}" for g in grid])
    save("real_marker_finds", fig, [ids[g] for g in grid], cap, searched=len(ids),
         with_find=int(found.reshape(len(found), -1).any(axis=1).sum()) if len(found) else 0)

    # real_vit_maps (notebook 09)
    if vit is not None:
        cap = captioned("real_vit_maps")
        from utils.explain.vit import rollout_maps

        both = run.rows("TP").merge(vit.rows("TP")[["id"]], on="id")
        common = _pick(both, 4, seed)
        ids = common["id"].tolist()
        rn, rn_probs = run.maps(ids)
        run.check_probabilities(ids, rn_probs)
        vm, vit_probs = vit.maps(ids)
        vit.check_probabilities(ids, vit_probs)
        fig = cams.plot_method_comparison(run.images(ids), {f"ResNet-18 · {run.explanation()}": rn,
                                                            f"ViT · {vit.explanation()}": vm,
                                                            "ViT · attention rollout": rollout_maps(vit.model, vit.meta,
                                                                                                    run.images(ids))},
                                          n_images=len(ids))
        save("real_vit_maps", fig, ids, cap, vit={**vit.scale(), "threshold": vit.threshold},
             common_true_positives=len(both))
    set_caption("")
    return entries


def _main(argv: Sequence[str] | None) -> int:
    p = Parser(prog="python scripts/real_figures.py", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, type=Path, help="project root of a recorded real-data run")
    p.add_argument("--images", required=True, type=Path, help="the Kermany image folder that run read")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default: the checkout's {REAL_DIR})")
    p.add_argument("--n-tp", type=int, default=8, help="true positives in real_gradcam_tp")
    p.add_argument("--max-fn", type=int, default=24, help="most false negatives drawn (the lowest scores first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dpi", type=float, default=DPI)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    images, root = a.images.expanduser().resolve(), a.run.expanduser().resolve()
    if not images.is_dir():
        raise UserError(f"--images {images} is not a folder.")
    reason = official_test_reason(images)
    if reason:
        raise UserError(f"refusing to read {images}: {reason}; the real figures never use the official test folder "
                        "(pass the training folder the run read).")
    out = a.out or ((repo_root() or Path.cwd()) / REAL_DIR)
    run = Run(root, images, a.device)
    vit_path = artifact("model", root, "vit")
    vit = Run(root, images, a.device, tag="vit") if vit_path.is_file() else None
    out.mkdir(parents=True, exist_ok=True)
    entries = make_figures(run, out, a.n_tp, a.max_fn, a.seed, a.dpi, vit)
    for stale in sorted(set(REAL_FIGURES) - set(entries)):
        if (out / f"{stale}.png").exists():
            (out / f"{stale}.png").unlink()
            print(f"removed {stale}.png (not made from this run)")
    source = {"root": root.name, "model": str(run.path.relative_to(root)),
              "data_fingerprint": run.meta.get("data_fingerprint"),
              "model_fingerprint": state_fingerprint(run.model.state_dict()), "threshold": run.threshold,
              "threshold_rule": run.rule, "explanation": run.explanation(),
              "pseudo_test": {"images": len(run.pred), "patients": int(run.pred["patient_id"].nunique()),
                              "positives": int((run.pred["label"] == 1).sum())}}
    made = date.today().isoformat()
    manifest = {"generated_by": "scripts/real_figures.py", "date": made, "attribution": ATTRIBUTION, "split": SPLIT,
                "source_run": source, "scale": run.scale(),
                "figures": {k: {**v, "notebook_stage": REAL_FIGURES[k]["stage"], "date": made} for k, v in entries.items()}}
    write_json(out / MANIFEST, manifest)
    total = sum((out / v["file"]).stat().st_size for v in entries.values())
    for v in entries.values():
        print(f"wrote {out / v['file']} ({(out / v['file']).stat().st_size / 1e3:.0f} kB, {v['images']} images)")
    print(f"{len(entries)} figures, {total / 1e6:.2f} MB in all; manifest {out / MANIFEST}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command: a user mistake is one line and exit 2 (:func:`utils.cli.run_main`)."""
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
