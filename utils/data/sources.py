"""Three data sources behind one shape: Kermany folders, PneumoniaMNIST, embedded phantoms.

Every source yields a :class:`DataBundle` of ``train`` / ``val`` / ``test`` :class:`Split` s holding
uint8 images decoded once (cached under ``data/cache``), labels, image and patient ids, pneumonia
subtype, content hashes and — for phantoms — lung and lesion masks. Validation is carved from train
**by patient**, and a leak guard refuses splits that share a patient or an identical image.
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.data import phantom
from utils.config import CLASSES, Config, UserError

SPLITS = ("train", "val", "test")
_PERSON = re.compile(r"person(\d+)_(bacteria|virus)", re.I)
_IM = re.compile(r"(?:NORMAL2-)?IM-(\d+)-\d+", re.I)
TINY_VAL = 100  # an official val folder smaller than this (Kermany's has 16 images) is merged into train


class LeakageError(UserError):
    """Two splits share a patient or an identical image."""


# ------------------------------------------------------------------------------------------ ids
def patient_id_from_name(name: str) -> str:
    """Patient id from a Kermany file name: ``personN_{bacteria,virus}_M`` → ``N``;
    ``IM-XXXX-YYYY`` and ``NORMAL2-IM-XXXX-YYYY`` → ``XXXX``. Unknown forms: the file stem itself."""
    stem = Path(name).stem
    if m := _PERSON.search(stem):
        return f"person{int(m.group(1))}"
    if m := _IM.search(stem):
        return f"IM{int(m.group(1)):04d}"
    return stem


def subtype_from_name(name: str) -> str:
    """``bacteria`` / ``virus`` from a Kermany PNEUMONIA file name, else ``''``."""
    m = _PERSON.search(Path(name).stem)
    return m.group(2).lower() if m else ""


# ------------------------------------------------------------------------------------------ containers
@dataclass
class Split:
    """One split: images decoded once (uint8, N×S×S) with per-image labels and metadata."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    patient_ids: np.ndarray
    subtypes: np.ndarray
    hashes: np.ndarray
    lung_masks: np.ndarray | None = None
    lesion_masks: np.ndarray | None = None
    info: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray, name: str | None = None) -> "Split":
        """The images at ``idx`` (masks and info follow)."""
        idx = np.asarray(idx)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        info = None if self.info is None else self.info.iloc[idx].reset_index(drop=True)
        return Split(name or self.name, self.images[idx], self.labels[idx], self.ids[idx],
                     self.patient_ids[idx], self.subtypes[idx], self.hashes[idx],
                     pick(self.lung_masks), pick(self.lesion_masks), info)

    def summary(self) -> dict[str, Any]:
        """Counts: images per class, patients, subtypes."""
        return {"images": len(self), "NORMAL": int((self.labels == 0).sum()),
                "PNEUMONIA": int((self.labels == 1).sum()),
                "patients": int(len(np.unique(self.patient_ids))),
                "bacteria": int((self.subtypes == "bacteria").sum()),
                "virus": int((self.subtypes == "virus").sum())}


@dataclass
class DataBundle:
    """What every source returns."""

    source: str
    image_size: int
    splits: dict[str, Split]
    fingerprint: str
    classes: tuple[str, ...] = CLASSES
    notes: list[str] = field(default_factory=list)
    root: Path | None = None

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]

    def summary(self) -> pd.DataFrame:
        """One row per split with class, patient and subtype counts."""
        return pd.DataFrame({k: s.summary() for k, s in self.splits.items()}).T


def fingerprint(splits: dict[str, Split]) -> str:
    """Content fingerprint of a dataset: split, id, label and image hash of every image."""
    h = hashlib.sha1()
    for name in sorted(splits):
        s = splits[name]
        for i in np.argsort(s.ids, kind="stable"):
            h.update(f"{name}|{s.ids[i]}|{s.labels[i]}|{s.hashes[i]}\n".encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ split + leaks
def patient_split(patient_ids: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): whole patients go to val, stratified by patient label, seeded."""
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    df = pd.DataFrame({"pid": patient_ids, "y": labels})
    per_patient = df.groupby("pid")["y"].max()
    rng = np.random.default_rng(seed)
    val_pids: list[str] = []
    for _, pids in per_patient.groupby(per_patient):
        pids = np.array(sorted(pids.index))
        rng.shuffle(pids)
        k = int(round(val_fraction * len(pids)))
        if len(pids) >= 2:  # both classes in val (an AUC needs them), at least one patient left to train on
            k = min(max(k, 1), len(pids) - 1)
        val_pids.extend(pids[:k])
    in_val = df["pid"].isin(set(val_pids)).to_numpy()
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


@dataclass
class LeakReport:
    """Patients and identical images (content hash) shared between splits."""

    shared_patients: dict[str, list[str]]
    shared_images: dict[str, list[str]]

    @property
    def ok(self) -> bool:
        return not any(self.shared_patients.values()) and not any(self.shared_images.values())

    def summary(self) -> str:
        parts = [f"{pair}: {len(v)} patients (e.g. {', '.join(v[:3])})" for pair, v in self.shared_patients.items() if v]
        parts += [f"{pair}: {len(v)} identical images (e.g. {', '.join(v[:3])})" for pair, v in self.shared_images.items() if v]
        return "; ".join(parts) or "no patient or identical image is shared between splits"


def find_leaks(splits: dict[str, Split]) -> LeakReport:
    """Report patients and exact-duplicate images (by content hash) that appear in two splits."""
    names = sorted(splits)
    pats: dict[str, list[str]] = {}
    imgs: dict[str, list[str]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pair = f"{a}/{b}"
            pats[pair] = sorted(set(splits[a].patient_ids) & set(splits[b].patient_ids))
            common = set(splits[a].hashes) & set(splits[b].hashes)
            imgs[pair] = sorted(splits[a].ids[np.isin(splits[a].hashes, list(common))]) if common else []
    return LeakReport(pats, imgs)


def check_no_leaks(splits: dict[str, Split]) -> LeakReport:
    """:func:`find_leaks`, raising :class:`LeakageError` when any split pair leaks."""
    report = find_leaks(splits)
    if not report.ok:
        raise LeakageError(f"leaking splits — {report.summary()}. Split by patient (utils.data.patient_split).")
    return report


def duplicate_groups(split: Split) -> list[list[str]]:
    """Groups of image ids with identical content inside one split."""
    groups = pd.Series(split.ids).groupby(split.hashes).agg(list)
    return sorted(g for g in groups if len(g) > 1)


def file_level_leak(split: Split, val_fraction: float, seed: int) -> dict[str, int]:
    """What a naive file-level re-split of ``split`` would leak (patients and identical images in both parts)."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(split))
    n_val = int(round(val_fraction * len(split)))
    a, b = split.subset(idx[n_val:], "train"), split.subset(idx[:n_val], "val")
    rep = find_leaks({"train": a, "val": b})
    val_leaky = np.isin(b.patient_ids, rep.shared_patients["train/val"])
    return {"val_images": len(b), "val_images_with_patient_in_train": int(val_leaky.sum()),
            "shared_patients": len(rep.shared_patients["train/val"]),
            "identical_images_across": len(rep.shared_images["train/val"])}


def duplicate_table(splits: dict[str, Split]) -> pd.DataFrame:
    """One row per group of identical images inside a split: split, copies, ids, patients, same patient?"""
    rows = []
    for name, s in splits.items():
        for group in duplicate_groups(s):
            pids = sorted(set(s.patient_ids[np.isin(s.ids, group)]))
            rows.append({"split": name, "copies": len(group), "ids": ", ".join(group),
                         "patients": ", ".join(pids), "same_patient": len(pids) == 1})
    return pd.DataFrame(rows, columns=["split", "copies", "ids", "patients", "same_patient"])


def image_sizes(root: str | Path, require_test: bool = False) -> pd.DataFrame:
    """Original width and height of every file of a Kermany-layout folder (read from the file headers).

    Columns: split, label, id, width, height; a file whose header cannot be read gets NaN sizes.
    """
    from PIL import Image

    df = scan_folder(root, require_test)
    sizes = []
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
    rows = []
    for split in SPLITS:
        if not (root / split).is_dir():
            if split == "val" or (split == "test" and not require_test):
                continue
            raise UserError(f"missing folder {root / split}; {expected}.")
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
    return pd.DataFrame(rows)


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
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=images, hashes=hashes, bad=np.array(bad, dtype=str))
    tmp.replace(path)
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
    want = {"spec": phantom.asdict(spec), "n_patients_train": settings["n_patients_train"],
            "n_patients_test": settings["n_patients_test"], "seed": settings["seed"]}
    stamp = root / "DATASET.json"
    if stamp.exists() and json.loads(stamp.read_text()) == json.loads(json.dumps(want)):
        return root
    import shutil
    if root.exists():
        shutil.rmtree(root)
    seed = settings["seed"]
    train = phantom.generate(settings["n_patients_train"], seed, spec, first_pid=1, progress=progress)
    first_test = max(5001, settings["n_patients_train"] + 1)  # test patients never share an id with train
    test = phantom.generate(settings["n_patients_test"], seed + 1, spec, first_pid=first_test, progress=progress)
    phantom.write_kermany_layout(root, {"train": train, "test": test}, spec)
    stamp.write_text(json.dumps(want, indent=1))
    return root


def _online(host: str, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def download_kaggle() -> Path | None:
    """Kermany data through kagglehub when installed and online; ``None`` (with a message) otherwise.

    kagglehub keeps its own cache (``~/.cache/kagglehub``) and skips the download when the data are there.
    """
    try:
        import kagglehub  # noqa: F401
    except ImportError:
        print("kagglehub is not installed (pip install -e '.[online]'); cannot download the Kermany data.")
        return None
    if not _online("www.kaggle.com"):
        print("offline: cannot reach kaggle.com to download the Kermany data.")
        return None
    try:
        import kagglehub
        path = Path(kagglehub.dataset_download("paultimothymooney/chest-xray-pneumonia"))
    except Exception as exc:  # noqa: BLE001 - network/auth failures are reported, not raised
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
            ds = medmnist.PneumoniaMNIST(split=name, download=_online("zenodo.org"), size=mm_size,
                                         root=str(cache_dir))
        except Exception as exc:  # noqa: BLE001
            print(f"PneumoniaMNIST unavailable ({type(exc).__name__}: offline or not cached).")
            return None
        imgs = ds.imgs if ds.imgs.ndim == 3 else ds.imgs[..., 0]
        if mm_size != size:
            from PIL import Image
            imgs = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in imgs])
        ids = np.array([f"{name}_{i:05d}" for i in range(len(imgs))])
        hashes = np.array([hashlib.sha1(im.tobytes()).hexdigest() for im in ds.imgs])
        splits[name] = Split(name, imgs.astype(np.uint8), ds.labels.ravel().astype(np.int64), ids, ids.copy(),
                             np.full(len(ids), "", dtype="<U1"), hashes)
    return DataBundle("medmnist", size, splits, fingerprint(splits),
                      notes=["PneumoniaMNIST official split; no patient ids (each image its own patient)"])


def load_data(cfg: Config, progress: bool = True) -> DataBundle:
    """The bundle for a resolved config; real-data sources fall back to phantoms with a clear message."""
    size, seed, vf = cfg["image_size"], cfg["seed"], cfg["val_fraction"]
    cache = cfg.path("cache_dir")
    if cfg["source"] != "phantom":
        root = cfg.data_dir
        if root is not None and not Path(root).exists():
            raise UserError(f"data folder not found: {root} (check DATA_DIR / CXR_DATA_DIR).")
        if cfg["source"] == "medmnist":
            bundle = load_medmnist(size, cache)
            if bundle is not None:
                return bundle
        else:
            root = root or download_kaggle()
            if root is not None:
                return load_folder(root, size, vf, seed, cache, progress,
                                   require_test=cfg.get("require_test", True))
        print("Falling back to the embedded phantom dataset (set DATA_DIR / CXR_DATA_DIR to real data).")
    root = ensure_phantom_dataset(cfg.path("phantom_dir"), size, {**cfg["phantom"]}, progress)
    bundle = load_folder(root, size, vf, seed, cache, progress, source="phantom")
    if cfg["source"] != "phantom":
        bundle.notes.append(f"fallback: {cfg['source']} data unavailable, phantoms used instead")
    return bundle
