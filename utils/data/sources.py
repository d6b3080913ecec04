"""Three data sources behind one shape: Kermany folders, PneumoniaMNIST, embedded phantoms.

Every source yields a :class:`DataBundle` of ``train`` / ``val`` / ``test`` :class:`Split` s holding
uint8 images decoded once (cached under ``data/cache``), labels, image and patient ids, pneumonia
subtype, content hashes and — for phantoms — lung and lesion masks. Validation is carved from train
**by patient**, and a leak guard refuses splits that share a patient or an identical image.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.config import CLASSES, REAL_DATA_HINT, Config
from utils.data import phantom
from utils.data.bundle import SPLITS, DataBundle, Split, fingerprint, pixel_hashes
from utils.data.patients import (
    patient_id_from_name,
    patient_key_evidence,
    shared_patients_by_rule,
    subtype_from_name,
    unknown_names,
)
from utils.data.splits import check_no_leaks, patient_split
from utils.errors import UserError
from utils.fileio import atomic_write
from utils.machine import is_online

TINY_VAL = 100  # an official val folder smaller than this (Kermany's has 16 images) is merged into train


def image_sizes(root: str | Path, require_test: bool = False) -> pd.DataFrame:
    """Original width and height of every file of a Kermany-layout folder (read from the file headers).

    Columns: split, label, id, width, height; a file whose header cannot be read gets NaN sizes.
    """
    from PIL import Image

    df = scan_folder(root, require_test)
    sizes: list[tuple[float, float]] = []
    for p in df["path"]:
        try:
            with Image.open(p) as im:
                sizes.append(im.size)
        except (OSError, ValueError):  # DICOM and broken files: size unknown here
            sizes.append((np.nan, np.nan))
    wh = np.array(sizes, dtype=float).reshape(-1, 2)
    return df.assign(width=wh[:, 0], height=wh[:, 1])[["split", "label", "id", "width", "height"]]


# ------------------------------------------------------------------------------------------ folders
def scan_folder(root: str | Path, require_test: bool = True) -> pd.DataFrame:
    """Files of a Kermany layout ``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*`` as a table.

    ``require_test=False`` accepts a root without ``test/`` (development checks on a train folder only).
    """
    from utils.data.images import list_images

    root = Path(root).expanduser()
    expected = f"expected {root}/{{train,test}}[/val]/{{NORMAL,PNEUMONIA}}/*.jpeg (the Kaggle chest_xray layout)"
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}; {expected}.")
    if not (root / "train").is_dir():
        nested = sorted(p.parent for p in root.glob("*/train") if (p / "NORMAL").is_dir())
        if nested:
            raise UserError(f"{root} has no train/ folder, but {nested[0]} has the Kermany layout: "
                            f"set DATA_DIR to {nested[0]}.")
    rows = []
    for split in SPLITS:
        if not (root / split).is_dir():
            if split == "val" or (split == "test" and not require_test):
                continue
            what = " (the official test split the series evaluates on)" if split == "test" else ""
            raise UserError(f"missing folder {root / split}{what}; {expected}.")
        for label, cls in enumerate(CLASSES):
            d = root / split / cls
            if not d.is_dir():
                raise UserError(f"missing class folder {d}; {expected}.")
            files = list_images(d)
            if not files and split != "val":
                raise UserError(f"class folder {d} holds no images; {expected}.")
            rows += [{"path": str(p), "split": split, "label": label, "id": p.stem,
                      "patient_id": patient_id_from_name(p.name), "subtype": subtype_from_name(p.name)}
                     for p in files]
    return pd.DataFrame(rows, columns=["path", "split", "label", "id", "patient_id", "subtype"])


def patient_key_report(root: str | Path | None = None) -> dict[str, Any]:
    """The evidence behind the patient key, from the file names of a Kermany-layout folder (notebook 01):
    ``evidence`` (:func:`utils.data.patients.patient_key_evidence` over the folders), ``shared`` (train/test
    patients under each keying rule), ``unknown`` (names of no known form) and ``files``. Without ``root``: the
    official ``train/`` and ``test/`` folders, from their file names shipped with the project
    (:func:`utils.data.fixture.official_names`; names only, offline)."""
    if root is None:
        from utils.data.fixture import official_names

        paths = [Path(name) for folder in ("train", "test") for name in official_names(folder)]
        df = pd.DataFrame({"split": [p.parts[0] for p in paths], "id": [p.stem for p in paths]})
    else:
        df = scan_folder(root, require_test=False)
    return {"evidence": patient_key_evidence(df["split"], df["id"]),
            "shared": shared_patients_by_rule(df["split"], df["id"]),
            "unknown": unknown_names(df["id"]), "files": len(df)}


def _decode(paths: list[str], size: int, progress: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode + resize every file once; returns images, content hashes and the list of skipped files."""
    from utils.data.images import read_image

    it = paths
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(paths, desc=f"decode {size}px", unit="img")
    images = np.zeros((len(paths), size, size), np.uint8)
    hashes = np.empty(len(paths), dtype=object)
    bad: list[str] = []
    for i, p in enumerate(it):
        try:
            raw = Path(p).read_bytes()
            images[i] = read_image(p, size)
            hashes[i] = hashlib.sha1(raw).hexdigest()
        except (UserError, OSError) as exc:
            bad.append(str(exc) if str(p) in str(exc) else f"{p} ({exc})")
            hashes[i] = ""
    return images, hashes.astype(str), bad


def _cache_key(df: pd.DataFrame, size: int) -> str:
    h = hashlib.sha1(str(size).encode())
    for p in df["path"]:
        st = Path(p).stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def decode_cached(df: pd.DataFrame, size: int, cache_dir: Path, progress: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """:func:`_decode` through an on-disk cache keyed by paths, sizes, mtimes and image size."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"decoded_{_cache_key(df, size)}_{size}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return z["images"], z["hashes"], [str(b) for b in z["bad"]]
    images, hashes, bad = _decode(list(df["path"]), size, progress)
    atomic_write(path, lambda fh: np.savez(fh, images=images, hashes=hashes, bad=np.array(bad, dtype=str)))
    return images, hashes, bad


def _attach_annotations(split: Split, folder: Path, size: int) -> Split:
    """Phantom sidecars (masks, lesion table) for the images of ``split`` found in ``folder``."""
    ann = folder / phantom.ANNOTATIONS
    if not ann.exists():
        return split
    with np.load(ann, allow_pickle=False) as z:
        pos = {i: k for k, i in enumerate(z["ids"])}
        unknown = [i for i in split.ids if i not in pos]
        if unknown:
            raise UserError(f"{ann} has no masks for {len(unknown)} image(s) of {folder} (e.g. {unknown[0]}): "
                            "delete the folder to regenerate the phantoms, or remove the extra files.")
        idx = np.array([pos[i] for i in split.ids], dtype=np.int64)
        lung, lesion = z["lung_masks"][idx], z["lesion_masks"][idx]
    if lung.shape[-1] != size:
        from scipy.ndimage import zoom
        f = size / lung.shape[-1]
        lung = np.stack([zoom(m.astype(np.uint8), f, order=0) > 0 for m in lung])
        lesion = np.stack([zoom(m.astype(np.uint8), f, order=0) > 0 for m in lesion])
    info = pd.read_csv(folder / phantom.LESION_TABLE, keep_default_na=False).set_index("id").loc[split.ids]
    return replace(split, lung_masks=lung, lesion_masks=lesion, info=info.reset_index())


def _concat(parts: list[Split], name: str) -> Split:
    """One split from several (masks and info kept only when every part has them)."""
    if len(parts) == 1:
        return replace(parts[0], name=name)
    cat = lambda attr: np.concatenate([getattr(p, attr) for p in parts])  # noqa: E731
    masks = all(p.lung_masks is not None for p in parts)
    info = (pd.concat([p.info for p in parts], ignore_index=True)
            if all(p.info is not None for p in parts) else None)
    return Split(name, cat("images"), cat("labels"), cat("ids"), cat("patient_ids"), cat("subtypes"),
                 cat("hashes"), cat("lung_masks") if masks else None, cat("lesion_masks") if masks else None,
                 info)


def load_folder(root: str | Path, size: int, val_fraction: float, seed: int, cache_dir: Path,
                progress: bool = True, source: str = "folder", require_test: bool = True) -> DataBundle:
    """Kermany layout → bundle: decode once, carve val by patient, check leaks."""
    root = Path(root).expanduser()
    df = scan_folder(root, require_test)
    df_all_splits = set(df["split"])
    images, hashes, bad = decode_cached(df, size, cache_dir, progress)
    notes = []
    if bad:
        shown = "; ".join(bad[:5])
        msg = f"skipped {len(bad)} unreadable file(s): {shown}{' …' if len(bad) > 5 else ''}"
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    ok = hashes != ""
    df, images, hashes = df[ok].reset_index(drop=True), images[ok], hashes[ok]
    unknown = unknown_names(df["id"])
    if unknown:
        notes.append(f"{len(unknown)} file name(s) of no known Kermany form (e.g. {unknown[0]}): each is treated as "
                     "its own patient, so the patient leak guard cannot protect them (the identical-image check does)")
    for folder in ("train", "test"):
        for label, cls in enumerate(CLASSES):
            if folder in df_all_splits and not ((df["split"] == folder) & (df["label"] == label)).any():
                raise UserError(f"no readable image left in {root / folder / cls} "
                                f"({len(bad)} unreadable file(s) skipped); check the files.")
    col = lambda d, c: d[c].to_numpy().astype(str)  # noqa: E731

    def make(name: str, mask: np.ndarray) -> Split:
        parts = []
        for folder in pd.unique(df["split"][mask]):  # annotations live per folder (train/, val/, test/)
            m = mask & (df["split"] == folder).to_numpy()
            d = df[m]
            s = Split(name, images[m], d["label"].to_numpy(np.int64), col(d, "id"), col(d, "patient_id"),
                      col(d, "subtype"), hashes[m])
            parts.append(_attach_annotations(s, root / folder, size))
        return _concat(parts, name)

    official_val = (df["split"] == "val").to_numpy()
    pool_mask = (df["split"] == "train").to_numpy()
    if official_val.sum() >= TINY_VAL:
        splits = {"train": make("train", pool_mask), "val": make("val", official_val)}
        notes.append(f"used the official val folder ({official_val.sum()} images)")
    else:
        if official_val.any():
            notes.append(f"merged the tiny official val folder ({official_val.sum()} images) into train "
                         "before the patient-wise split")
            pool_mask = pool_mask | official_val
        pool = make("train", pool_mask)
        tr, va = patient_split(pool.patient_ids, pool.labels, val_fraction, seed)
        splits = {"train": pool.subset(tr, "train"), "val": pool.subset(va, "val")}
        notes.append(f"validation carved from train by patient ({val_fraction:.0%} of patients, seed {seed})")
    if (df["split"] == "test").any():
        splits["test"] = make("test", (df["split"] == "test").to_numpy())
    check_no_leaks(splits)
    return DataBundle(source, size, splits, fingerprint(splits), notes=notes, root=root)


# ------------------------------------------------------------------------------------------ phantoms
def ensure_phantom_dataset(root: Path, size: int, settings: dict[str, Any], progress: bool = True) -> Path:
    """Write the phantom dataset in the Kermany layout unless the same one is already there."""
    spec = phantom.spec_for(settings.get("difficulty", "default"), size)
    drawn = {"n_patients_train": settings["n_patients_train"], "n_patients_test": settings["n_patients_test"],
             "seed": settings["seed"]}
    if phantom.stamp_matches(root, phantom.dataset_stamp(spec, **drawn)):
        return root
    import shutil
    if root.exists():
        shutil.rmtree(root)
    seed = settings["seed"]
    train = phantom.generate(settings["n_patients_train"], seed, spec, first_pid=1, progress=progress)
    first_test = max(5001, settings["n_patients_train"] + 1)  # test patients never share an id with train
    test = phantom.generate(settings["n_patients_test"], seed + 1, spec, first_pid=first_test, progress=progress)
    phantom.write_kermany_layout(root, {"train": train, "test": test}, spec, **drawn)
    return root


def download_kaggle() -> Path | None:
    """Kermany data through kagglehub when installed and online; ``None`` (with a message) otherwise.

    kagglehub keeps its own cache (``~/.cache/kagglehub``) and skips the download when the data are there.
    """
    try:
        import kagglehub
    except ImportError:
        print("kagglehub is not installed (pip install -e '.[online]'); cannot download the Kermany data.")
        return None
    if not is_online("www.kaggle.com"):
        print("offline: cannot reach kaggle.com to download the Kermany data.")
        return None
    try:
        import kagglehub
        path = Path(kagglehub.dataset_download("paultimothymooney/chest-xray-pneumonia"))
    except Exception as exc:
        print(f"Kaggle download failed ({type(exc).__name__}: {str(exc)[:120]}).")
        return None
    hits = [p.parent for p in path.rglob("train") if (p / "NORMAL").is_dir() and (p.parent / "test").is_dir()]
    if not hits:
        print(f"the Kaggle download at {path} has no train/ and test/ folders; not using it.")
        return None
    problems = verify_kermany(hits[0])
    if problems:
        print(f"the Kaggle download at {hits[0]} looks incomplete ({'; '.join(problems)}); not using it — "
              "delete it and download again.")
        return None
    return hits[0]


#: Image counts of the published Kermany chest_xray folders (a size check of a download).
KERMANY_COUNTS = {"train": 5216, "val": 16, "test": 624}


def verify_kermany(root: str | Path) -> list[str]:
    """Differences between the image counts under ``root`` and the published ones (empty when complete)."""
    from utils.data.images import list_images

    out = []
    for split, want in KERMANY_COUNTS.items():
        got = sum(len(list_images(Path(root) / split / c)) for c in CLASSES if (Path(root) / split / c).is_dir())
        if got != want:
            out.append(f"{split}: {got} images, expected {want}")
    return out


def load_medmnist(size: int, cache_dir: Path) -> DataBundle | None:
    """PneumoniaMNIST (official 4708/524/624 split) via ``medmnist``; ``None`` with a message when unavailable.

    PneumoniaMNIST has no patient ids: each image is its own "patient" (stated in the notes).
    """
    try:
        import medmnist
    except ImportError:
        print("medmnist is not installed (pip install -e '.[online]'); cannot load PneumoniaMNIST.")
        return None
    mm_size = min((s for s in (28, 64, 128, 224) if s >= size), default=224)
    splits = {}
    for name in SPLITS:
        try:
            ds = medmnist.PneumoniaMNIST(split=name, download=is_online("zenodo.org"), size=mm_size,
                                         root=str(cache_dir))
        except Exception as exc:
            print(f"PneumoniaMNIST unavailable ({type(exc).__name__}: offline or not cached).")
            return None
        imgs = ds.imgs if ds.imgs.ndim == 3 else ds.imgs[..., 0]
        if mm_size != size:
            from PIL import Image
            imgs = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR)) for im in imgs])
        ids = np.array([f"{name}_{i:05d}" for i in range(len(imgs))])
        hashes = pixel_hashes(ds.imgs)
        splits[name] = Split(name, imgs.astype(np.uint8), ds.labels.ravel().astype(np.int64), ids, ids.copy(),
                             np.full(len(ids), "", dtype="<U1"), hashes)
    return DataBundle("medmnist", size, splits, fingerprint(splits),
                      notes=["PneumoniaMNIST official split; no patient ids (each image its own patient)"])


def load_data(cfg: Config, progress: bool = True, tag: str | None = None) -> DataBundle:
    """The bundle of a resolved config: exactly the source it names, or a one-line error — never another one.

    ``folder``: the Kermany layout at ``cfg.data_dir`` (``"kaggle"``: downloaded with kagglehub first);
    ``medmnist``: PneumoniaMNIST (downloaded when online and not cached); ``phantom``: the embedded phantoms,
    generated into ``data/`` on first use (``tag``: another phantom world beside the main one, in its own folder,
    e.g. notebook 08's ``data/shortcut_phantom_chest_xray``). (``SOURCE="auto"`` was resolved by
    :func:`utils.config.get_config`, which is the only place a fallback to the phantoms happens, with a banner.)
    """
    size, seed, vf = cfg["image_size"], cfg["seed"], cfg["val_fraction"]
    cache = cfg.path("cache_dir")
    if cfg.source == "medmnist":
        bundle = load_medmnist(size, cache)
        if bundle is None:
            raise UserError(f"no real data: PneumoniaMNIST is unavailable (see the line above) — {REAL_DATA_HINT}.")
    elif cfg.source == "folder":
        root = cfg.data_dir
        if root is None:
            raise UserError(f"no real data: SOURCE='folder' needs a data folder — {REAL_DATA_HINT}.")
        if str(root) == "kaggle":
            root = download_kaggle()
            if root is None:
                raise UserError(f"no real data: the Kaggle download did not work (see the line above) — "
                                f"{REAL_DATA_HINT}.")
        bundle = load_folder(root, size, vf, seed, cache, progress, require_test=cfg.get("require_test", True))
    else:
        root = ensure_phantom_dataset(cfg.path("phantom_dir", tag), size, {**cfg["phantom"]}, progress)
        bundle = load_folder(root, size, vf, seed, cache, progress, source="phantom")
    bundle.notes.extend(cfg.notes)
    return bundle
