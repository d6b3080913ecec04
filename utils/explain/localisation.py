"""Does a saliency map point at the lesion? Pure NumPy/SciPy scores, baselines and a lung-field estimate.

Maps are non-negative float arrays (H, W) (Grad-CAM maps in [0, 1]); masks are boolean (H, W) of the
same shape. Scores, for one image:

* **pointing game** (Zhang et al., 2016): is the map's maximum inside the lesion mask?
* **near pointing**: is the maximum within ``tolerance_frac`` × image side of a lesion pixel?
  (Grad-CAM on ``layer4`` of a 128 px input is a 4×4 grid upsampled: its peak is coarse by design.)
* **energy inside**: the fraction of the map's mass inside the mask (a uniform map scores the mask's
  area fraction, the chance level); **outside fraction**: the mass outside the lung fields.

A score means little without a baseline that could win. :func:`localisation_table` always adds maps that
see no image at all: a Gaussian *centre prior* and *smoothed random noise* — easy to beat, since lesions are
never on the mediastinum — and, given the training split's masks, the two that are hard to beat:

* the **mean-lesion prior**: the average training lesion mask, lightly smoothed — where lesions usually are;
* the **lung-field prior**: the average training lung mask — "somewhere in the lungs".

Both are built from the *training* split only and are the same map for every image. A saliency method that
cannot beat the best of them has shown nothing about the image it explains.

**No map.** An empty or constant map (all zero, e.g. a ReLU that kept nothing) has no location: it cannot point,
and its "mass" is either undefined (all zero) or the uniform map's. With ``skip_empty=True`` every scorer returns
NaN for it, the aggregates leave it out and count it (``n_no_map``), so an all-zero map can never read as "0 %
outside the lungs" — the default. ``skip_empty=False`` scores a flat map as a miss with mass 0 (the series' first
behaviour; kept for comparison only).

**The image border.** :func:`border_share` is the share of a map's mass within a few pixels of the image edge,
and ``ignore_border_px`` leaves that band out of :func:`outside_fraction`: lungs never reach the edge, so border
heat (a padding or shift-averaging artefact, see :mod:`utils.explain.gradcam`) would otherwise count as
"outside the lungs".
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from utils.evaluate.verdicts import empty_maps, is_empty_map

__all__ = [
    "TOLERANCE_FRAC",
    "argmax_point",
    "baseline_per_image",
    "border_band",
    "border_share",
    "centre_prior",
    "dice",
    "distance_to_mask",
    "empty_maps",
    "energy_inside",
    "estimate_lung_field",
    "estimate_lung_fields",
    "iou",
    "is_empty_map",
    "localisation_scores",
    "localisation_table",
    "mean_mask_prior",
    "near_pointing",
    "otsu_threshold",
    "outside_fraction",
    "outside_lung_fractions",
    "outside_lung_summary",
    "per_image_scores",
    "pointing_game",
    "prior_maps",
    "random_map",
    "random_maps",
]


#: Near-pointing's tolerance: the peak may sit within this fraction of the image side of a lesion pixel (5 %: 6.4 px
#: at 128 px). The one default of every near-pointing score of the series.
TOLERANCE_FRAC = 0.05


def _check(cam: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2:
        raise ValueError(f"a map must be 2-D (H, W), got shape {cam.shape}")
    if not np.all(np.isfinite(cam)) or cam.min() < 0:
        raise ValueError("a map must be finite and non-negative")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != cam.shape:
        raise ValueError(f"map {cam.shape} and mask {mask.shape} differ in shape")
    return cam, mask


def scored_inputs(images: np.ndarray, labels: np.ndarray, lesion_masks: np.ndarray | None,
                  error: type[Exception] = ValueError) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images, labels, lesion masks as bool)`` as arrays of one length — what scoring maps against lesions needs —
    or ``error`` with one line saying what is missing or which lengths differ."""
    images, labels = np.asarray(images), np.asarray(labels)
    if lesion_masks is None:
        raise error("localisation needs lesion masks (the phantoms have them; real data does not)")
    masks = np.asarray(lesion_masks, dtype=bool)
    if not (len(images) == len(labels) == len(masks)):
        raise error(f"images ({len(images)}), labels ({len(labels)}) and masks ({len(masks)}) differ in length")
    return images, labels, masks


def border_band(h: int, w: int, width_px: int) -> np.ndarray:
    """Boolean (H, W): the pixels within ``width_px`` of the image edge (all False for 0)."""
    if width_px < 0:
        raise ValueError(f"width_px must be >= 0, got {width_px}")
    band = np.zeros((h, w), dtype=bool)
    if width_px:
        band[:width_px] = band[-width_px:] = True
        band[:, :width_px] = band[:, -width_px:] = True
    return band


def border_share(cam: np.ndarray, width_px: int) -> float:
    """Share of the map's mass within ``width_px`` of the image edge (NaN for an all-zero map). A uniform map scores
    the band's area; far more means heat on the frame — the model's own or an artefact of padding and shifting."""
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2:
        raise ValueError(f"a map must be 2-D (H, W), got shape {cam.shape}")
    total = cam.sum()
    return float(cam[border_band(cam.shape[0], cam.shape[1], width_px)].sum() / total) if total > 0 else math.nan


# ------------------------------------------------------------------------------------ scores
def argmax_point(cam: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the map's maximum (the first one in raster order on ties)."""
    cam = np.asarray(cam)
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(r), int(c)


def pointing_game(cam: np.ndarray, lesion_mask: np.ndarray, skip_empty: bool = True) -> bool | float:
    """True if the map's maximum falls inside the lesion. A flat map (e.g. all zero) points nowhere: False, or NaN
    ("no map") with ``skip_empty``."""
    cam, mask = _check(cam, lesion_mask)
    if is_empty_map(cam):
        return math.nan if skip_empty else False
    return bool(mask[argmax_point(cam)])


def distance_to_mask(point: tuple[int, int], mask: np.ndarray) -> float:
    """Euclidean distance in pixels from ``point`` to the nearest mask pixel (0 inside; inf if the mask is empty)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return float("inf")
    return float(ndi.distance_transform_edt(~mask)[tuple(point)])


def near_pointing(cam: np.ndarray, mask: np.ndarray, tolerance_frac: float = TOLERANCE_FRAC,
                  skip_empty: bool = True) -> bool | float:
    """True if the maximum is within ``tolerance_frac × max(H, W)`` pixels of a lesion pixel (a flat map: False, or
    NaN with ``skip_empty``)."""
    cam, mask = _check(cam, mask)
    if is_empty_map(cam):
        return math.nan if skip_empty else False
    return distance_to_mask(argmax_point(cam), mask) <= tolerance_frac * max(cam.shape)


def energy_inside(cam: np.ndarray, mask: np.ndarray, skip_empty: bool = True) -> float:
    """Fraction of the map's mass inside ``mask`` (0.0 for an all-zero map; NaN for any empty or constant map with
    ``skip_empty``)."""
    cam, mask = _check(cam, mask)
    if skip_empty and is_empty_map(cam):
        return math.nan
    total = cam.sum()
    return float(cam[mask].sum() / total) if total > 0 else 0.0


def outside_fraction(cam: np.ndarray, lung_mask: np.ndarray, skip_empty: bool = True,
                     ignore_border_px: int = 0) -> float:
    """Fraction of the map's mass outside the lung fields: ``1 - energy_inside`` (0.0 for an all-zero map; NaN for
    any empty or constant map with ``skip_empty``). ``ignore_border_px`` > 0 leaves the band within that many pixels
    of the image edge out of both the map's mass and the outside part (:func:`border_share`), so heat on the frame
    cannot decide the number (NaN when the map has no mass off the band)."""
    cam, mask = _check(cam, lung_mask)
    if skip_empty and is_empty_map(cam):
        return math.nan
    if ignore_border_px:
        keep = ~border_band(cam.shape[0], cam.shape[1], ignore_border_px)
        total = cam[keep].sum()
        return float(cam[keep & ~mask].sum() / total) if total > 0 else math.nan
    return 1.0 - energy_inside(cam, mask, skip_empty=False) if cam.sum() > 0 else 0.0


# ------------------------------------------------------------------------------------ baselines
def centre_prior(h: int, w: int, sigma_frac: float = 0.25) -> np.ndarray:
    """A Gaussian bump at the image centre, peak 1, sigma = ``sigma_frac`` × side: the image-blind baseline."""
    r = (np.arange(h) + 0.5 - h / 2) / (sigma_frac * h)
    c = (np.arange(w) + 0.5 - w / 2) / (sigma_frac * w)
    return np.exp(-0.5 * (r[:, None] ** 2 + c[None, :] ** 2)).astype(np.float32)


def random_map(rng: np.random.Generator, h: int, w: int, smooth_px: float | None = None) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to [0, 1].

    ``smooth_px`` (the Gaussian's sigma) defaults to max(h, w) / 16: blobs about as coarse as a CAM's.
    """
    smooth_px = max(h, w) / 16 if smooth_px is None else smooth_px
    m = ndi.gaussian_filter(rng.standard_normal((h, w)), smooth_px, mode="reflect")
    m -= m.min()
    return (m / m.max() if m.max() > 0 else m).astype(np.float32)


def mean_mask_prior(masks: np.ndarray, smooth_px: float | None = None) -> np.ndarray:
    """The average of boolean masks (N, H, W) — images with an empty mask left out — lightly smoothed
    (sigma ``smooth_px``, default side / 64) and scaled to [0, 1]: an image-blind "where it usually is" map."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    has = masks.reshape(len(masks), -1).any(axis=1)
    if not has.any():
        raise ValueError("a mean-mask prior needs at least one non-empty mask")
    m = masks[has].mean(axis=0)
    m = ndi.gaussian_filter(m, max(masks.shape[1:]) / 64 if smooth_px is None else smooth_px)
    return (m / m.max()).astype(np.float32)


def prior_maps(train_lesion_masks: np.ndarray | None = None, train_lung_masks: np.ndarray | None = None
               ) -> dict[str, np.ndarray]:
    """The two hard image-blind baselines, from the *training* split's masks: ``mean-lesion prior`` and
    ``lung-field prior`` (each one (H, W) map used for every image); empty when no masks are given."""
    out = {}
    if train_lesion_masks is not None and np.asarray(train_lesion_masks).any():
        out["mean-lesion prior"] = mean_mask_prior(train_lesion_masks)
    if train_lung_masks is not None and np.asarray(train_lung_masks).any():
        out["lung-field prior"] = mean_mask_prior(train_lung_masks, smooth_px=0.0)
    return out


# ------------------------------------------------------------------------------------ aggregates
def per_image_scores(cams: np.ndarray, lesion_masks: np.ndarray, tolerance_frac: float = TOLERANCE_FRAC,
                     skip_empty: bool = True) -> pd.DataFrame:
    """One row per image: ``pointing``, ``near`` (0/1), ``energy``, ``has_lesion`` (images with an empty
    mask get nan scores) and ``no_map`` (the map is empty or constant: NaN scores with ``skip_empty``, else scored as
    a miss). ``cams`` may be one (H, W) map used for every image."""
    masks = np.asarray(lesion_masks, dtype=bool)
    cams = np.asarray(cams)
    if cams.ndim == 2:
        cams = np.broadcast_to(cams, masks.shape)
    if cams.shape != masks.shape or cams.ndim != 3:
        raise ValueError(f"cams {cams.shape} and lesion_masks {masks.shape} must both be (N, H, W)")
    has = masks.reshape(len(masks), -1).any(axis=1)
    rows = [{"pointing": float(pointing_game(c, m, skip_empty)),
             "near": float(near_pointing(c, m, tolerance_frac, skip_empty)),
             "energy": energy_inside(c, m, skip_empty)} if h else {"pointing": np.nan, "near": np.nan, "energy": np.nan}
            for c, m, h in zip(cams, masks, np.asarray(has, dtype=bool).tolist())]
    no_map = empty_maps(cams) if len(cams) else np.zeros(0, dtype=bool)
    return pd.DataFrame(rows, columns=["pointing", "near", "energy"]).assign(has_lesion=has, no_map=no_map)


def localisation_scores(cams: np.ndarray, lesion_masks: np.ndarray, tolerance_frac: float = TOLERANCE_FRAC,
                        lung_masks: np.ndarray | None = None, skip_empty: bool = True) -> dict[str, float]:
    """Mean scores over images that have a lesion (images with an empty mask are skipped and counted).

    Keys: ``pointing``, ``near``, ``energy`` (means), ``area`` (mean lesion area fraction = the energy of
    a uniform map), ``n`` (images scored), ``n_pointing``, ``n_near`` (hit counts), ``n_skipped``; with
    ``lung_masks``, also ``outside_lung`` (mean outside fraction over *all* images). With ``skip_empty``, images
    whose map is empty or constant are "no map": left out of every mean (``area`` included) and counted in
    ``n_no_map`` (images with a lesion but no map; ``outside_lung`` leaves out every empty map).
    """
    masks = np.asarray(lesion_masks, dtype=bool)
    per = per_image_scores(cams, masks, tolerance_frac, skip_empty)
    has = per["has_lesion"].to_numpy()
    no_map = per["no_map"].to_numpy() if skip_empty else np.zeros(len(per), dtype=bool)
    scored = per[has & ~no_map]
    mean = lambda col: float(scored[col].mean()) if len(scored) else float("nan")  # noqa: E731
    sel = has & ~no_map
    out = {"pointing": mean("pointing"), "near": mean("near"), "energy": mean("energy"),
           "area": float(masks[sel].reshape(int(sel.sum()), -1).mean(axis=1).mean()) if sel.any() else float("nan"),
           "n": int(sel.sum()), "n_pointing": int(scored["pointing"].sum()), "n_near": int(scored["near"].sum()),
           "n_skipped": int((~has).sum())}
    if skip_empty:
        out["n_no_map"] = int((has & no_map).sum())
    if lung_masks is not None:
        c = np.broadcast_to(np.asarray(cams), masks.shape)
        fractions = np.array([outside_fraction(a, m, skip_empty) for a, m in zip(c, np.asarray(lung_masks, bool))])
        ok = fractions[np.isfinite(fractions)]
        out["outside_lung"] = float(ok.mean()) if ok.size else float("nan")
    return out


def random_maps(n: int, h: int, w: int, seed: int = 0, run: int = 0, smooth_px: float | None = None) -> np.ndarray:
    """``n`` smoothed-noise maps (one per image) of random run ``run`` (seeded by ``(seed, run)``)."""
    rng = np.random.default_rng([seed, run])
    return np.stack([random_map(rng, h, w, smooth_px) for _ in range(n)]) if n else np.zeros((0, h, w), np.float32)


def baseline_per_image(lesion_masks: np.ndarray, priors: Mapping[str, np.ndarray] | None = None,
                       tolerance_frac: float = TOLERANCE_FRAC, n_random: int = 10, seed: int = 0,
                       smooth_px: float | None = None) -> dict[str, pd.DataFrame]:
    """Per-image scores (:func:`per_image_scores`) of every image-blind baseline: ``centre prior``,
    ``random (mean of n)`` (each image's scores averaged over ``n_random`` seeds) and the ``priors``."""
    masks = np.asarray(lesion_masks, dtype=bool)
    n, h, w = masks.shape
    out = {"centre prior": per_image_scores(centre_prior(h, w), masks, tolerance_frac)}
    runs = [per_image_scores(random_maps(n, h, w, seed, r, smooth_px), masks, tolerance_frac) for r in range(n_random)]
    rand = runs[0].copy()
    for col in ("pointing", "near", "energy"):
        rand[col] = np.mean([r[col].to_numpy() for r in runs], axis=0)
    out[f"random (mean of {n_random})"] = rand
    for name, prior in (priors or {}).items():
        out[name] = per_image_scores(prior, masks, tolerance_frac)
    return out


def localisation_table(cams: np.ndarray | Mapping[str, np.ndarray], lesion_masks: np.ndarray,
                       tolerance_frac: float = TOLERANCE_FRAC, lung_masks: np.ndarray | None = None,
                       name: str = "Grad-CAM", n_random: int = 10, seed: int = 0,
                       smooth_px: float | None = None, priors: Mapping[str, np.ndarray] | None = None,
                       skip_empty: bool = True) -> pd.DataFrame:
    """One row per method (``cams`` as one array or ``{name: array}``) plus the image-blind baselines.

    ``centre prior`` uses the same Gaussian for every image; ``random (mean of n)`` averages the scores of
    ``n_random`` seeds of smoothed noise; ``priors`` (:func:`prior_maps`: the mean-lesion and lung-field
    priors from the training masks) add one row each. Columns as in :func:`localisation_scores`, plus
    ``method`` and ``baseline`` (bool); ``skip_empty``: empty maps are "no map" (``n_no_map``), not scored.
    """
    named = dict(cams) if isinstance(cams, Mapping) else {name: np.asarray(cams)}
    masks = np.asarray(lesion_masks, dtype=bool)
    n, h, w = masks.shape

    def scores(maps: np.ndarray) -> dict[str, float]:
        return localisation_scores(maps, masks, tolerance_frac, lung_masks, skip_empty)

    rows = [{"method": k, "baseline": False, **scores(v)} for k, v in named.items()]
    rows.append({"method": "centre prior", "baseline": True, **scores(centre_prior(h, w))})
    runs = [scores(random_maps(n, h, w, seed, r, smooth_px)) for r in range(n_random)]
    rows.append({"method": f"random (mean of {n_random})", "baseline": True,
                 **{k: float(np.mean([r[k] for r in runs])) for k in runs[0]}})
    for prior_name, prior in (priors or {}).items():
        rows.append({"method": prior_name, "baseline": True, **scores(prior)})
    df = pd.DataFrame(rows)
    return df.astype({k: int for k in ("n", "n_skipped", "n_no_map") if k in df})


# ------------------------------------------------------------------------------------ lung field
def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a set of values (maximises the between-class variance of a histogram)."""
    hist, edges = np.histogram(np.asarray(values, dtype=np.float64).ravel(), bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (mu0 - mu1) ** 2)])


def _largest(mask: np.ndarray, k: int = 1, exclude_border: bool = False) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        return np.zeros_like(mask)
    ids = np.arange(1, n + 1)
    if exclude_border:
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        ids = ids[~np.isin(ids, border)]
    sizes = ndi.sum(mask, lab, ids) if len(ids) else np.array([])
    return np.isin(lab, ids[np.argsort(sizes)[::-1][:k]])


def estimate_lung_field(image_uint8: np.ndarray) -> np.ndarray:
    """A classical lung-field estimate for a frontal chest radiograph (bool mask, same shape).

    Steps: Gaussian smoothing; Otsu threshold of the whole image → body (largest bright component,
    holes filled, slightly eroded); a second Otsu threshold of the pixels *inside the body* → dark
    regions; an opening cuts thin bridges; components touching the image border (outside-body air)
    are dropped and the two largest remaining ones kept; closing and hole filling smooth them.

    Limits, plainly: it finds the *visible, air-filled* lung. Lung hidden behind the heart or below
    the diaphragm dome is missed, and so is a dense consolidation on the lung's edge (holes inside a
    lung are filled, bays at its border are not), so ``outside_fraction`` on pneumonia images is
    biased upwards. It assumes dark = air (invert MONOCHROME1 images first), an upright frontal view
    with the body inside the frame, and no large dark artefacts inside the body (tubes, pneumothorax,
    collimation edges). It is a sanity-check tool, not a segmentation model: on the phantoms it
    reaches IoU ≈ 0.8 against the full anatomical lung mask (tested bound: mean IoU ≥ 0.7, each ≥ 0.5).
    """
    img = np.asarray(image_uint8)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {img.shape}")
    side = max(img.shape)
    step = max(1, round(side / 64))  # morphology scale: ~1 px per 64 px of image
    sm = ndi.gaussian_filter(img.astype(np.float32), side / 128)
    body = ndi.binary_fill_holes(_largest(sm > otsu_threshold(sm)))
    body = ndi.binary_erosion(body, iterations=step)
    if body.sum() < 16:
        return np.zeros(img.shape, dtype=bool)
    dark = (sm < otsu_threshold(sm[body])) & body
    dark = ndi.binary_opening(dark, iterations=step)
    lungs = _largest(dark, k=2, exclude_border=True)
    lungs = ndi.binary_closing(lungs, iterations=2 * step)
    return ndi.binary_fill_holes(lungs)


def estimate_lung_fields(images: np.ndarray, progress: bool = False) -> np.ndarray:
    """:func:`estimate_lung_field` of every uint8 image of ``images`` (N, H, W): bool masks (N, H, W)."""
    it = images
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(images, desc="lung fields", unit="img", leave=False)
    return np.stack([estimate_lung_field(im) for im in it]) if len(images) else np.zeros((0, *images.shape[1:]), bool)


def outside_lung_fractions(cams: np.ndarray, lung_masks: np.ndarray | None = None,
                           images: np.ndarray | None = None, progress: bool = False, skip_empty: bool = True,
                           ignore_border_px: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Fraction of each map's mass outside the lung fields, and the masks used.

    Uses ``lung_masks`` (ground truth, phantoms) when given, else :func:`estimate_lung_field` of each
    image (real data; biased upwards on pneumonia, see its docstring). Returns ``(fractions, masks,
    source)`` with ``source`` = ``"ground truth"`` or ``"estimated"``. ``skip_empty`` and ``ignore_border_px``
    as in :func:`outside_fraction` (NaN = no map).
    """
    cams = np.asarray(cams)
    if lung_masks is None:
        if images is None:
            raise ValueError("give lung_masks or the images to estimate them from")
        masks, source = estimate_lung_fields(np.asarray(images), progress), "estimated"
    else:
        masks, source = np.asarray(lung_masks, bool), "ground truth"
    if masks.shape != cams.shape:
        raise ValueError(f"maps {cams.shape} and lung masks {masks.shape} differ in shape")
    fractions = np.array([outside_fraction(c, m, skip_empty, ignore_border_px) for c, m in zip(cams, masks)],
                         dtype=np.float64)
    return fractions, masks, source


def outside_lung_summary(fractions: np.ndarray, groups: np.ndarray, lung_masks: np.ndarray) -> pd.DataFrame:
    """Median and quartiles of the outside-lung fraction per group (e.g. TP, FN), next to the chance level:
    the fraction a map spread evenly over the image would score (``1 - lung area``, median over the group).
    NaN fractions (no map, :func:`outside_fraction` with ``skip_empty``) are left out of ``n`` and counted in a
    ``no map`` column, which appears when there is any."""
    fractions, groups = np.asarray(fractions, dtype=np.float64), np.asarray(groups).astype(str)
    area = np.asarray(lung_masks, bool).reshape(len(fractions), -1).mean(axis=1)
    finite = np.isfinite(fractions)
    rows = []
    for g in dict.fromkeys(groups):
        sel = (groups == g) & finite
        q1, med, q3 = np.percentile(fractions[sel], [25, 50, 75]) if sel.any() else (np.nan,) * 3
        row = {"group": g, "n": int(sel.sum()), "median": float(med), "q25": float(q1), "q75": float(q3),
               "chance (uniform map)": float(np.median(1 - area[sel])) if sel.any() else np.nan}
        if not finite.all():
            row["no map"] = int(((groups == g) & ~finite).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap 2|A∩B| / (|A|+|B|) of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union |A∩B| / |A∪B| of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    u = (a | b).sum()
    return float((a & b).sum() / u) if u else 1.0
