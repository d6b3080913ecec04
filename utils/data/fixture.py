"""A folder in the exact Kaggle ``chest_xray`` layout, built from the real file names with synthetic pixels.

The official folders cannot be shipped (and the test images are not here), but their *names* can: they carry
the patient numbering that decides what a leak is (:mod:`utils.data.patients`). :func:`build_kermany_fixture`
writes ``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/<real name>.jpeg`` for a faithful subset of the names —
every numbering series, numbers reused across folders and across series, several films per patient, one
identical copy inside a patient, the 16-image ``val/`` folder — with phantom pixels rendered per patient
(one anatomy per child, a lesion for PNEUMONIA). No lung or lesion masks are written: to the loader it is
real data, so every real-data branch of the series runs on it (CI does exactly that).

Try the real-data path without the data::

    python -m utils.data.fixture /tmp/chest_xray_fixture
    CXR_PROFILE=full CXR_DATA_DIR=/tmp/chest_xray_fixture CXR_IMAGE_SIZE=64 CXR_EPOCHS_PHASE1=1 \\
        CXR_EPOCHS_PHASE2=1 make demo
"""
from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.cli import Parser, run_main
from utils.config import CLASSES
from utils.data import phantom
from utils.data.patients import parse_name, patient_id_from_name
from utils.errors import UserError

NAMES_DIR = Path(__file__).resolve().parent / "kermany_names"

#: The official ``val/`` folder has 16 images (8 per class). Its names are not in the shipped lists, so the
#: fixture uses names of the same forms with numbers beyond every train and test number.
VAL_NAMES: tuple[str, ...] = (
    *(f"val/NORMAL/NORMAL2-IM-{n:04d}-0001.jpeg" for n in (1427, 1430, 1431, 1436, 1437, 1438, 1440, 1442)),
    *(f"val/PNEUMONIA/person{p}_bacteria_{m}.jpeg"
      for p, m in ((1946, 4874), (1946, 4875), (1947, 4876), (1949, 4880), (1950, 4881), (1951, 4882),
                   (1952, 4883), (1954, 4886))),
)


def official_names(folder: str) -> list[str]:
    """The real relative paths of the official ``train`` (5,216) or ``test`` (624) folder."""
    path = NAMES_DIR / f"{folder}.txt"
    if not path.is_file():
        raise UserError(f"no name list for {folder!r}: expected {path} (train.txt, test.txt).")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class FixtureSpec:
    """How much of the official layout to build (the default is CI-sized: about 260 + 16 + 90 images)."""

    test_patients: int = 60  # drawn from the official test names, every series represented
    train_patients: int = 100  # random train patients, on top of the ones that keep the cross-folder structure
    cross_folder: int = 8  # test person / IM numbers whose train patient of the other series is included
    image_px: tuple[int, int] = (96, 160)  # longest side of the synthetic images is drawn in this range
    with_val: bool = True
    seed: int = 0


def _by_patient(names: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(patient_id_from_name(Path(n).name), []).append(n)
    return out


def select_names(spec: FixtureSpec = FixtureSpec()) -> dict[str, list[str]]:
    """The relative paths of a faithful subset, per folder: whole patients only (all their films)."""
    rng = np.random.default_rng(spec.seed)
    train, test = _by_patient(official_names("train")), _by_patient(official_names("test"))

    key_of: dict[str, tuple[str, int]] = {}
    for pid, names in {**train, **test}.items():
        parsed = parse_name(Path(names[0]).name)
        if parsed is not None:  # every official name has a known form (tests/test_fixture.py checks it)
            key_of[pid] = parsed

    def family(pid: str) -> str:
        return "person" if key_of[pid][0] in ("bacteria", "virus") else "IM"

    chosen_test: list[str] = []
    groups: dict[str, list[str]] = {}
    for pid in test:
        if pid in key_of:
            groups.setdefault(key_of[pid][0], []).append(pid)
    per = max(1, spec.test_patients // max(len(groups), 1))
    for s in sorted(groups):
        pids = sorted(groups[s])
        chosen_test += list(rng.choice(pids, size=min(per, len(pids)), replace=False))
    # numbers reused across folders: test patients whose number is also a train patient (of the other series)
    train_by_number = {(family(pid), key_of[pid][1]): pid for pid in sorted(train) if pid in key_of}
    reused = sorted((pid, train_by_number[(family(pid), key_of[pid][1])]) for pid in test
                    if pid in key_of and (family(pid), key_of[pid][1]) in train_by_number)
    picks = [reused[i] for i in rng.choice(len(reused), size=min(spec.cross_folder, len(reused)), replace=False)]
    chosen_test += [t for t, _ in picks if t not in chosen_test]
    chosen_train = [tr for _, tr in picks]
    # numbers used in two series inside train (bacteria + virus, IM + NORMAL2-IM): keep a few pairs of each
    for a, b in (("bacteria", "virus"), ("IM", "NORMAL2-IM")):
        first = {key_of[pid][1]: pid for pid in sorted(train) if pid in key_of and key_of[pid][0] == a}
        pairs = sorted((first[key_of[pid][1]], pid) for pid in train
                       if pid in key_of and key_of[pid][0] == b and key_of[pid][1] in first)
        for i in rng.choice(len(pairs), size=min(3, len(pairs)), replace=False):
            chosen_train += list(pairs[i])
    rest = sorted(set(train) - set(chosen_train))
    chosen_train += list(rng.choice(rest, size=min(spec.train_patients, len(rest)), replace=False))
    out = {"train": sorted(n for pid in dict.fromkeys(chosen_train) for n in train[pid]),
           "test": sorted(n for pid in dict.fromkeys(chosen_test) for n in test[pid])}
    if spec.with_val:
        out["val"] = list(VAL_NAMES)
    return out


def _seed(text: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}|{text}".encode()).digest()[:8], "little")


def build_kermany_fixture(root: str | Path, spec: FixtureSpec = FixtureSpec(), progress: bool = False) -> Path:
    """Write the fixture under ``root`` (replaced if it exists) and return ``root``.

    Pixels: one phantom anatomy per patient key (so a child's films look alike), a lesion of the subtype's
    kind for PNEUMONIA, each film rendered with its own positioning and noise, then resized to a random
    non-square size and saved as JPEG. One film of the first train patient with two films is replaced by a
    byte-identical copy of the other (the real folder has such copies, always within one patient).
    """
    from PIL import Image

    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    names = select_names(spec)
    pspec = phantom.spec_for("default", 128)
    patients: dict[str, list[str]] = {}
    for folder, rels in names.items():
        for rel in rels:
            patients.setdefault(f"{folder}|{patient_id_from_name(Path(rel).name)}", []).append(rel)
    items = sorted(patients.items())
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(items, desc="fixture patients", unit="patient")
    for key, rels in items:
        rng = np.random.default_rng(_seed(key, spec.seed))
        anatomy = phantom.sample_anatomy(rng)
        label = CLASSES.index(Path(rels[0]).parent.name)
        subtype = (parse_name(Path(rels[0]).name) or ("bacteria", 0))[0] if label else ""
        lesions = phantom.sample_lesions(rng, anatomy, subtype if subtype in ("bacteria", "virus") else "bacteria",
                                         pspec) if label else []
        for rel in rels:
            img, *_ = phantom.render(anatomy, lesions, rng, pspec)
            side = int(rng.integers(*spec.image_px))
            w, h = (side, int(side * rng.uniform(0.7, 0.95))) if rng.uniform() < 0.7 else (int(side * 0.85), side)
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR).save(path, quality=90)
    for cls in CLASSES:  # every class folder exists, as in the official layout
        for folder in names:
            (root / folder / cls).mkdir(parents=True, exist_ok=True)
    twins = next((rels for key, rels in sorted(patients.items()) if key.startswith("train|") and len(rels) >= 2), None)
    if twins:
        shutil.copyfile(root / twins[0], root / twins[1])
    return root


def _main(argv: Sequence[str] | None) -> int:
    p = Parser(prog="python -m utils.data.fixture",
               description="Build a Kaggle-layout chest_xray folder from the real file names with synthetic (phantom) "
                           "pixels.")
    p.add_argument("root")
    p.add_argument("--test-patients", type=int, default=FixtureSpec.test_patients)
    p.add_argument("--train-patients", type=int, default=FixtureSpec.train_patients)
    p.add_argument("--no-val", action="store_true", help="leave out val/ (a layout without it must work too)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    spec = FixtureSpec(test_patients=a.test_patients, train_patients=a.train_patients, with_val=not a.no_val,
                       seed=a.seed)
    root = build_kermany_fixture(a.root, spec, progress=True)
    counts = {f: sum(1 for _ in (root / f).rglob("*.jpeg")) for f in ("train", "val", "test") if (root / f).is_dir()}
    print(f"wrote {root}: {counts}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m utils.data.fixture ROOT [--test-patients N] [--train-patients N] [--no-val]``; a bad option is one
    line and exit code 2 (:func:`utils.cli.run_main`)."""
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
