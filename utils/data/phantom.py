"""Procedural phantom chest X-rays with ground-truth lung and lesion masks (numpy + scipy only).

The embedded default dataset: no download, deterministic for a seed, fast (hundreds of 128 px images a
second on one core). A phantom is built in *attenuation* space — body, two lung fields, mediastinum,
heart, diaphragm domes, ribs, clavicles, vessels and label-irrelevant look-alikes (electrodes, nipple
and breast shadows) — then passed through a saturating detector response, so that a lesion behind the
heart or the diaphragm dome shows less contrast than the same lesion in an open lung field, as on a
real radiograph. PNEUMONIA images add 1–3 opacities inside the lungs: dense lobar-like consolidation
("bacteria") or patchy/interstitial clusters ("virus"). A tunable fraction is hard on purpose (faint,
small, retrocardiac, behind the dome), so a trained model misses some.

Every image is normalised per image (percentile stretch), so global brightness is no shortcut: a
model must find local evidence, which is what makes its Grad-CAM maps checkable against the lesion
masks. The data mirror the real set's pitfalls: ≈1 NORMAL : 2.9 PNEUMONIA images, several images per
patient, and a few exact duplicates within a patient.

Coordinates: x, y in [-1, 1]; x grows to the image right (the patient's left, where the heart is),
y grows downwards.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from utils.data.patients import patient_key
from utils.fileio import atomic_write, jsonable, read_json, write_csv, write_json

SUBTYPE_KIND = {"bacteria": "consolidation", "virus": "patchy"}
HARD_KINDS = ("faint", "small", "retrocardiac", "retrodiaphragmatic")


@dataclass
class PhantomSpec:
    """Knobs of the generator. ``difficulty`` presets scale lesion visibility (see :func:`spec_for`)."""

    image_size: int = 128
    p_pneumonia_patient: float = 0.655  # gives ≈ 1 : 2.9 images with the per-patient counts below
    extra_images_normal: tuple[int, float] = (1, 0.3)  # 1 + Binomial(n, p) images per NORMAL patient
    extra_images_pneumonia: tuple[int, float] = (3, 0.33)
    p_bacteria: float = 0.65
    p_duplicate: float = 0.08  # chance that a patient with ≥2 images also has an exact duplicate
    contrast: tuple[float, float] = (0.35, 0.6)  # lesion attenuation amplitude
    consolidation_radius: tuple[float, float] = (0.15, 0.28)  # in [-1, 1] units (1 = half the image)
    patchy_radius: tuple[float, float] = (0.16, 0.26)
    hard_fraction: float = 0.25
    noise: tuple[float, float] = (0.008, 0.025)
    p_distractor: float = 0.35
    mask_level: float = 0.2  # lesion mask: where a lesion adds >= this fraction of its peak density
    faint_factor: float = 0.12  # hard "faint" lesions keep this fraction of their contrast
    small_factor: float = 0.3  # hard "small" lesions keep this fraction of their radius
    hidden_factor: float = 0.6  # and hard retrocardiac / retrodiaphragmatic ones this fraction of their contrast
    exposure: float = 1.6  # detector response 1 - exp(-exposure * attenuation): the exposure technique (see shifted_spec)


def spec_for(difficulty: str = "default", image_size: int = 128) -> PhantomSpec:
    """A :class:`PhantomSpec` for ``easy`` / ``default`` / ``hard``."""
    if difficulty == "easy":
        return PhantomSpec(image_size=image_size, contrast=(0.45, 0.6), hard_fraction=0.0,
                           noise=(0.005, 0.01), p_distractor=0.0)
    if difficulty == "default":
        return PhantomSpec(image_size=image_size)
    if difficulty == "hard":
        return PhantomSpec(image_size=image_size, contrast=(0.15, 0.35), hard_fraction=0.4)
    raise ValueError(f"unknown difficulty {difficulty!r}: choose easy, default or hard")


@dataclass
class Anatomy:
    """Patient-level anatomy (shared by all images of one patient)."""

    lung_r: tuple[float, float, float, float]  # cx, cy, ax, ay of the image-left lung (patient's right)
    lung_l: tuple[float, float, float, float]
    heart: tuple[float, float, float, float]
    dome_r: float  # dome apex height (y) on the image left
    dome_l: float
    dome_h: float
    recess: float  # how far the lung extends below the dome apex, hidden by it
    rib_spacing: float
    rib_phase: float
    body_w: float
    mediastinum_w: float


@dataclass
class Lesion:
    """One opacity: kind, centre, radius, amplitude and the seed of its texture."""

    kind: str
    cx: float
    cy: float
    radius: float
    amplitude: float
    seed: int
    location: str = "lung"
    hard: str = ""


@dataclass
class PhantomSample:
    """One rendered image with its masks and description."""

    image: np.ndarray  # uint8 (S, S)
    lung_mask: np.ndarray  # bool (S, S)
    lesion_mask: np.ndarray  # bool (S, S)
    label: int
    patient_id: str
    image_id: str
    subtype: str
    info: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ geometry
def _grid(size: int, rot: float = 0.0, scale: float = 1.0, shift: tuple[float, float] = (0, 0)):
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(c, c, indexing="ij")
    x, y = (x - shift[0]) / scale, (y - shift[1]) / scale
    cr, sr = np.cos(rot), np.sin(rot)
    return cr * x + sr * y, -sr * x + cr * y


def _ell(x, y, cx, cy, ax, ay):
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2


def _soft(d, width):
    """1 inside (d < 1), 0 outside, with a smooth edge of relative ``width``."""
    return 1.0 / (1.0 + np.exp(np.clip((d - 1.0) / width, -30, 30)))


def _dome_y(x, cx, apex, h, w=0.3):
    return apex + h * ((x - cx) / w) ** 2


def _noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma_px)
    return n / (n.std() + 1e-6)


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy."""
    u = rng.uniform
    hs = u(0.9, 1.15)
    return Anatomy(
        lung_r=(u(-0.42, -0.36), u(-0.1, -0.02), u(0.25, 0.3), u(0.55, 0.62)),
        lung_l=(u(0.36, 0.42), u(-0.08, 0.0), u(0.23, 0.28), u(0.52, 0.6)),
        heart=(u(0.08, 0.16), u(0.22, 0.3), 0.27 * hs, 0.24 * hs),
        dome_r=u(0.38, 0.48), dome_l=u(0.44, 0.54), dome_h=u(0.12, 0.2), recess=u(0.1, 0.16),
        rib_spacing=u(0.14, 0.17), rib_phase=u(0, 1), body_w=u(0.8, 0.92), mediastinum_w=u(0.1, 0.14),
    )


def _lung_masks(x, y, a: Anatomy, inspiration: float):
    """(visible lung field, anatomical lung incl. the parts behind the dome) as booleans."""
    masks_vis, masks_all = [], []
    for (cx, cy, ax, ay), apex in ((a.lung_r, a.dome_r), (a.lung_l, a.dome_l)):
        inside = _ell(x, y, cx, cy, ax, ay) < 1
        dome = _dome_y(x, cx, apex + inspiration, a.dome_h)
        masks_vis.append(inside & (y < dome))
        masks_all.append(inside & (y < dome + a.recess))
    return masks_vis[0] | masks_vis[1], masks_all[0] | masks_all[1]


# ------------------------------------------------------------------------------------------ lesions
def _lesion_opacity(les: Lesion, x, y, size: int) -> np.ndarray:
    rng = np.random.default_rng(les.seed)
    out = np.zeros_like(x)
    if les.kind == "consolidation":
        for _ in range(rng.integers(3, 7)):
            ox, oy = rng.normal(0, les.radius * 0.35, 2)
            s = les.radius * rng.uniform(0.45, 0.75)
            out += np.exp(-_ell(x, y, les.cx + ox, les.cy + oy, s, s * rng.uniform(0.7, 1.3)))
        out = np.clip(out / out.max(), 0, 1) ** 0.6  # flat-topped, dense centre
        tex = _noise(rng, size, max(size * 0.015, 0.8))
        out *= np.clip(0.8 + 0.2 * tex, 0.4, 1.2)
    else:  # patchy / interstitial: a cluster of small nodular and reticular opacities
        region = _soft(_ell(x, y, les.cx, les.cy, les.radius, les.radius * 1.2), 0.3)
        for _ in range(rng.integers(10, 22)):
            ang, rad = rng.uniform(0, 2 * np.pi), les.radius * np.sqrt(rng.uniform(0, 1))
            s = rng.uniform(0.02, 0.05)
            out += 0.9 * np.exp(-_ell(x, y, les.cx + rad * np.cos(ang), les.cy + rad * np.sin(ang), s, s))
        tex = _noise(rng, size, max(size * 0.008, 0.6))
        out = np.clip(out, 0, 1) * 0.8 + 0.45 * np.clip(tex, 0, None) * region
        out = np.clip(out * region / max(out.max(), 1e-6), 0, 1)
    return out.astype(np.float32)


def _pick_location(rng, x, y, lung_vis, lung_all, heart_mask, want: str):
    if want == "retrocardiac":
        cand = lung_all & heart_mask
    elif want == "retrodiaphragmatic":
        cand = lung_all & ~lung_vis
    else:
        cand = lung_vis & ~heart_mask
    if cand.sum() < 4:
        cand, want = lung_vis, "lung"
    idx = rng.choice(np.flatnonzero(cand))
    return float(x.flat[idx]), float(y.flat[idx]), want


def sample_lesions(rng: np.random.Generator, a: Anatomy, subtype: str, spec: PhantomSpec) -> list[Lesion]:
    """Draw a pneumonia patient's lesions (positions in the patient's own frame)."""
    size = 96  # positions are drawn on a coarse, un-transformed grid
    x, y = _grid(size)
    lung_vis, lung_all = _lung_masks(x, y, a, 0.0)
    heart = _ell(x, y, *a.heart) < 1
    kind = SUBTYPE_KIND[subtype]
    hard = rng.choice(HARD_KINDS) if rng.uniform() < spec.hard_fraction else ""
    n = 1 if hard else int(rng.choice([1, 1, 2, 3], p=[0.45, 0.2, 0.25, 0.1]))
    radius_rng = spec.consolidation_radius if kind == "consolidation" else spec.patchy_radius
    out = []
    for _ in range(n):
        want = hard if hard in ("retrocardiac", "retrodiaphragmatic") else "lung"
        cx, cy, where = _pick_location(rng, x, y, lung_vis, lung_all, heart, want)
        radius = rng.uniform(*radius_rng) * (spec.small_factor if hard == "small" else 1.0)
        amp = rng.uniform(*spec.contrast) * {"faint": spec.faint_factor, "retrocardiac": spec.hidden_factor,
                                             "retrodiaphragmatic": spec.hidden_factor}.get(hard, 1.0)
        if kind == "patchy":
            amp *= 0.85
        out.append(Lesion(kind, cx, cy, float(radius), float(amp), int(rng.integers(2**31)), where, str(hard)))
    return out


# ------------------------------------------------------------------------------------------ render
def render(a: Anatomy, lesions: list[Lesion], rng: np.random.Generator, spec: PhantomSpec
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Render one acquisition: (uint8 image, lung mask, lesion mask, acquisition info)."""
    size = spec.image_size
    rot = np.deg2rad(rng.uniform(-5, 5))
    scale = rng.uniform(0.94, 1.04)
    shift = (rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05))
    insp = rng.uniform(-0.04, 0.04)
    x, y = _grid(size, rot, scale, shift)

    body = _soft(_ell(x, y, 0, 0.1, a.body_w, 1.25), 0.04)
    lung_vis, lung_all = _lung_masks(x, y, a, insp)
    lung_soft = ndimage.gaussian_filter(lung_vis.astype(np.float32), max(size / 160, 0.5))
    heart = _soft(_ell(x, y, *a.heart), 0.05)
    spine = _soft(np.abs(x - 0.0) / 0.07, 0.15) * (y > -0.9)
    medi = _soft(np.abs(x - 0.03) / a.mediastinum_w, 0.2) * (y < a.heart[1])

    mu = 0.62 * body  # soft tissue
    mu = mu + 0.18 * (1 - np.abs(x) / a.body_w).clip(0, 1) * body  # thicker centrally
    mu = mu - 0.5 * lung_soft  # air-filled lungs
    mu = mu + 0.3 * heart + 0.3 * medi + 0.12 * spine
    # ribs: posterior arcs, visible over the lungs; clavicles at the top
    for side in (-1, 1):
        for i in range(10):
            yc = -0.78 + (i + a.rib_phase * 0.3) * a.rib_spacing + 0.55 * (x * side - 0.05) ** 2
            band = np.exp(-((y - yc) / 0.022) ** 2) * (x * side > 0.06) * (np.abs(x) < a.body_w * 0.95)
            mu = mu + 0.09 * band * body
        yc = -0.72 + 0.25 * (x * side - 0.1)
        mu = mu + 0.14 * np.exp(-((y - yc) / 0.03) ** 2) * (x * side > 0.08) * (x * side < 0.6)
    # vessels: branching markings radiating from the hila (present in every image)
    vessels = np.zeros_like(x)
    for side in (-1, 1):
        hx, hy = 0.17 * side, -0.02
        for _ in range(7):
            ang = rng.uniform(-1.2, 1.2) + (0 if side > 0 else np.pi)
            dx, dy = np.cos(ang), np.sin(ang)
            t = (x - hx) * dx + (y - hy) * dy
            d = np.abs(-(x - hx) * dy + (y - hy) * dx)
            vessels += np.exp(-(d / 0.012) ** 2) * np.clip(1 - t / 0.5, 0, 1) * (t > 0)
    mu = mu + 0.06 * vessels * lung_soft
    # label-irrelevant look-alikes: electrodes (sharp discs), nipple shadows, breast shadows
    if rng.uniform() < spec.p_distractor:
        ex, ey = rng.uniform(-0.7, 0.7), rng.uniform(-0.6, 0.6)
        mu = mu + 0.5 * _soft(_ell(x, y, ex, ey, 0.035, 0.035), 0.03)
    if rng.uniform() < spec.p_distractor:
        for side in (-1, 1):
            mu = mu + 0.12 * _soft(_ell(x, y, 0.45 * side, 0.35, 0.04, 0.04), 0.3)
    if rng.uniform() < spec.p_distractor:
        for side in (-1, 1):
            mu = mu + 0.12 * _soft(_ell(x, y, 0.55 * side, 0.62, 0.35, 0.3), 0.25) * body

    lesion_mask = np.zeros((size, size), dtype=bool)
    for les in lesions:
        op = _lesion_opacity(les, x, y, size) * lung_all
        mu = mu + les.amplitude * op
        lesion_mask |= op > spec.mask_level

    # saturating detector response: dense regions (heart, dome) hide added density
    img = 1.0 - np.exp(-spec.exposure * np.clip(mu, 0, None))
    img = ndimage.gaussian_filter(img, rng.uniform(0.4, 1.0) * size / 128)
    noise_sd = rng.uniform(*spec.noise)
    img = img + rng.normal(0, noise_sd, img.shape).astype(np.float32)
    gamma = rng.uniform(0.8, 1.25)
    img = np.clip(img, 0, None) ** gamma
    lo, hi = np.percentile(img, [0.5, 99.5])  # per-image normalisation: no brightness shortcut
    img8 = np.clip((img - lo) / max(hi - lo, 1e-6) * 255 + 0.5, 0, 255).astype(np.uint8)
    info = {"rotation_deg": float(np.rad2deg(rot)), "scale": float(scale), "noise": float(noise_sd),
            "gamma": float(gamma)}
    return img8, lung_all, lesion_mask & lung_all, info


# ------------------------------------------------------------------------------------------ datasets
def generate_patient(rng: np.random.Generator, pid: int, label: int, spec: PhantomSpec) -> list[PhantomSample]:
    """All images of one patient, with file stems in the Kermany naming scheme."""
    a = sample_anatomy(rng)
    n_extra, p_extra = spec.extra_images_pneumonia if label else spec.extra_images_normal
    n = 1 + int(rng.binomial(n_extra, p_extra))
    subtype = ("bacteria" if rng.uniform() < spec.p_bacteria else "virus") if label else ""
    lesions = sample_lesions(rng, a, subtype, spec) if label else []
    samples: list[PhantomSample] = []
    patient = patient_key(subtype, pid) if label else patient_key("IM", pid)  # what the loader parses from the name
    for k in range(n):
        img, lung, les_mask, acq = render(a, lesions, rng, spec)
        image_id = f"person{pid}_{subtype}_{k + 1}" if label else f"IM-{pid:04d}-{k + 1:04d}"
        info = {
            "n_lesions": len(lesions),
            "lesion_area_frac": float(les_mask.mean()),
            "contrast": float(np.mean([les.amplitude for les in lesions])) if lesions else 0.0,
            "lesion_radius": float(np.mean([les.radius for les in lesions])) if lesions else 0.0,
            "location": ",".join(sorted({les.location for les in lesions})) if lesions else "",
            "hard": lesions[0].hard if lesions else "",
            "kind": SUBTYPE_KIND.get(subtype, ""),
            "duplicate_of": "",
            **acq,
        }
        samples.append(PhantomSample(img, lung, les_mask, label, patient, image_id, subtype, info))
    if n >= 2 and rng.uniform() < spec.p_duplicate:
        src = samples[0]
        dup_id = src.image_id.rsplit("_" if label else "-", 1)[0] + (f"_{n + 1}" if label else f"-{n + 1:04d}")
        info = dict(src.info, duplicate_of=src.image_id)
        samples.append(PhantomSample(src.image.copy(), src.lung_mask.copy(), src.lesion_mask.copy(),
                                     label, src.patient_id, dup_id, subtype, info))
    return samples


def generate(n_patients: int, seed: int, spec: PhantomSpec | None = None, first_pid: int = 1,
             progress: bool = False) -> list[PhantomSample]:
    """Images of ``n_patients`` patients (ids ``first_pid``…), deterministic for ``seed``."""
    spec = spec or PhantomSpec()
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_patients) < round(spec.p_pneumonia_patient * n_patients))
    seeds = rng.integers(0, 2**31, size=n_patients)
    it = range(n_patients)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="phantoms", unit="patient")
    out: list[PhantomSample] = []
    for i in it:
        out.extend(generate_patient(np.random.default_rng(seeds[i]), first_pid + i, int(labels[i]), spec))
    return out


def stack(samples: list[PhantomSample]) -> dict[str, Any]:
    """Stack samples into arrays (images, masks, labels, ids…) plus a per-image info table."""
    import pandas as pd
    info = pd.DataFrame([{"id": s.image_id, "label": s.label, "patient_id": s.patient_id,
                          "subtype": s.subtype, **s.info} for s in samples])
    return {
        "images": np.stack([s.image for s in samples]),
        "lung_masks": np.stack([s.lung_mask for s in samples]),
        "lesion_masks": np.stack([s.lesion_mask for s in samples]),
        "labels": np.array([s.label for s in samples], dtype=np.int64),
        "patient_ids": np.array([s.patient_id for s in samples]),
        "ids": np.array([s.image_id for s in samples]),
        "subtypes": np.array([s.subtype for s in samples]),
        "info": info,
    }


ANNOTATIONS = "_annotations.npz"
LESION_TABLE = "_lesions.csv"
#: The folder's one stamp: the spec and how the samples were drawn (written last, after every image).
DATASET_STAMP = "DATASET.json"


def dataset_stamp(spec: PhantomSpec, **drawn: Any) -> dict[str, Any]:
    """What :data:`DATASET_STAMP` records: ``{"spec": …, **drawn}`` (e.g. patient counts and seed), as JSON."""
    return jsonable({"spec": asdict(spec), **drawn})


def stamp_matches(root: str | Path, stamp: dict[str, Any]) -> bool:
    """Whether the phantom folder ``root`` carries exactly ``stamp`` (a missing or unreadable one does not)."""
    try:
        return read_json(Path(root) / DATASET_STAMP) == stamp
    except ValueError:
        return False


def write_kermany_layout(root: str | Path, splits: dict[str, list[PhantomSample]], spec: PhantomSpec,
                         **drawn: Any) -> Path:
    """Write ``root/{split}/{NORMAL,PNEUMONIA}/<id>.png`` plus mask and lesion sidecars per split, then the stamp
    (:func:`dataset_stamp` of ``spec`` and ``drawn``): a folder cut short carries none and is regenerated."""
    from PIL import Image

    root = Path(root)
    for split, samples in splits.items():
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
        for s in samples:
            cls = "PNEUMONIA" if s.label else "NORMAL"
            Image.fromarray(s.image).save(root / split / cls / f"{s.image_id}.png", optimize=False)
        arr = stack(samples)
        masks = {k: arr[k] for k in ("ids", "lung_masks", "lesion_masks")}
        atomic_write(root / split / ANNOTATIONS, partial(np.savez_compressed, **masks))
        write_csv(root / split / LESION_TABLE, arr["info"], index=False)
    write_json(root / DATASET_STAMP, dataset_stamp(spec, **drawn))
    return root


# ------------------------------------------------------------------------------------------ another hospital
#: The exposure of the built-in shifted population (the default spec's is 1.6): chosen so that the demo's shipped
#: model scores its normals clearly higher while the ranking of its images barely moves (notebook 04, dataset shift).
SHIFTED_EXPOSURE = 3.0


def shifted_spec(image_size: int = 128, difficulty: str = "default", exposure: float = SHIFTED_EXPOSURE) -> PhantomSpec:
    """The phantoms of another hospital: :func:`spec_for`'s anatomy and lesions, another exposure technique.

    A larger ``exposure`` (a softer, lower-kVp beam) makes every tissue attenuate more, so dense tissue saturates
    the detector sooner and the lung fields look denser after the per-image stretch — on every image, NORMAL and
    PNEUMONIA alike, as when a model meets a scanner it was not trained on. Only the exposure differs from
    ``spec_for(difficulty, image_size)``; the same seed gives the same patients, lesions and acquisitions.
    """
    return replace(spec_for(difficulty, image_size), exposure=float(exposure))
