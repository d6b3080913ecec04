"""A burned-in marker that correlates with the label: the confounder of notebook 08 (shortcut learning).

Real chest films carry a laterality marker ("R" / "L") and burned-in text, usually near the upper corners, bright
on the dark background outside the body. Nothing about them is pneumonia — but if one hospital's films (or one
machine's, or one ward's) are both more often pneumonia *and* more often marked, a classifier can learn the marker
instead of the lungs (Zech et al., PLOS Medicine 2018; DeGrave et al., Nature Machine Intelligence 2021).

:func:`add_markers` burns such a marker into phantom images with a chosen correlation to the label, and returns a
mask of each marker region so a map's attention to it can be *measured*:

* ``"correlated"`` — P(marker | PNEUMONIA) = ``p_marker_pneumonia`` (0.9), P(marker | NORMAL) = ``p_marker_normal``
  (0.1): the training and validation world of the confounded model, and its in-distribution test;
* ``"decorrelated"`` — P(marker) = 0.5 whatever the label: the marker carries no information;
* ``"reversed"`` — the correlation flipped (0.1 / 0.9): a model that reads the marker is now misled by it;
* ``"none"`` — no marker (the clean data of the control model).

:func:`find_markers` is the documented heuristic that looks for marker-like regions in *any* image (bright compact
blobs near the border that stand out from their surroundings); notebook 08 draws what it finds on real films, and
:func:`utils.studies.shortcut.remove_markers` imputes them away (the remedy: ROAD's imputation, which lives beside
ROAD in :mod:`utils.explain.road`, a layer above this one).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi

from utils.data.bundle import DataBundle, Split, fingerprint, pixel_hashes

MODES = ("correlated", "decorrelated", "reversed", "none")

# 5 × 7 bitmaps of the two laterality letters (1 = ink)
_GLYPHS = {
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
}


@dataclass(frozen=True)
class MarkerSpec:
    """How the marker looks and how strongly it follows the label."""

    p_marker_pneumonia: float = 0.9
    p_marker_normal: float = 0.1
    height_frac: float = (0.085)  # asked glyph height / image side; drawn in whole multiples of the 7-row bitmap
    # (:meth:`glyph_px`: 7 px at 64 px, 14 px at 128 px, 21 px at 224 px)
    margin_frac: tuple[float, float] = (0.03, 0.10)  # distance of the glyph from the top and side edges
    intensity: tuple[int, int] = (215, 255)
    letters: tuple[str, ...] = ("R", "L")
    pad_px: int = 2  # the marker *region* (for the metrics) is the glyph dilated by this many pixels

    def glyph_px(self, size: int) -> tuple[int, int]:
        """(height, width) in pixels of the marker drawn into a ``size`` px image."""
        h, w = glyph(self.letters[0], max(5, round(self.height_frac * size))).shape
        return int(h), int(w)


def glyph(letter: str, height: int) -> np.ndarray:
    """The boolean bitmap of ``letter`` scaled (nearest neighbour) to ``height`` pixels."""
    rows = np.array([[c == "1" for c in r] for r in _GLYPHS[letter]], dtype=bool)
    scale = max(1, round(height / rows.shape[0]))
    return np.kron(rows, np.ones((scale, scale), dtype=bool))


def draw_marker(image: np.ndarray, rng: np.random.Generator, spec: MarkerSpec = MarkerSpec()
                ) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``image`` (uint8, S × S) with one marker burned into an upper corner, and the marker region."""
    size = image.shape[0]
    g = glyph(str(rng.choice(spec.letters)), max(5, round(spec.height_frac * size)))
    gh, gw = g.shape
    top = round(rng.uniform(*spec.margin_frac) * size)
    side = round(rng.uniform(*spec.margin_frac) * size)
    left = side if rng.uniform() < 0.5 else size - side - gw
    out = image.copy()
    ink = np.zeros(image.shape, dtype=bool)
    ink[top:top + gh, left:left + gw] = g
    out[ink] = np.uint8(rng.integers(spec.intensity[0], spec.intensity[1] + 1))
    region = ndi.binary_dilation(ink, iterations=spec.pad_px)
    return out, region


def marker_probability(labels: np.ndarray, mode: str, spec: MarkerSpec = MarkerSpec()) -> np.ndarray:
    """P(marker) of each image under ``mode`` (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    y = np.asarray(labels).astype(bool)
    if mode == "none":
        return np.zeros(y.shape)
    if mode == "decorrelated":
        return np.full(y.shape, 0.5)
    hi, lo = spec.p_marker_pneumonia, spec.p_marker_normal
    if mode == "reversed":
        hi, lo = lo, hi
    return np.where(y, hi, lo)


def add_markers(images: np.ndarray, labels: np.ndarray, mode: str, seed: int = 0,
                spec: MarkerSpec = MarkerSpec()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images with markers, marker regions (N, S, S) bool, has_marker (N,) bool)`` under ``mode``; seeded."""
    rng = np.random.default_rng(seed)
    p = marker_probability(labels, mode, spec)
    has = rng.uniform(size=len(p)) < p
    out = np.array(images, copy=True)
    regions = np.zeros(out.shape, dtype=bool)
    for i in np.flatnonzero(has):
        out[i], regions[i] = draw_marker(out[i], rng, spec)
    return out, regions, has


def confounded_split(split: Split, mode: str, seed: int = 0, spec: MarkerSpec = MarkerSpec()
                     ) -> tuple[Split, np.ndarray, np.ndarray]:
    """A copy of ``split`` whose images carry markers under ``mode``, and ``(regions, has_marker)``. The content
    hashes are recomputed (a marked image is a different image)."""
    images, regions, has = add_markers(split.images, split.labels, mode, seed, spec)
    return replace(split, images=images, hashes=pixel_hashes(images)), regions, has


def confounded_bundle(bundle: DataBundle, mode: str = "correlated", seed: int = 0,
                      spec: MarkerSpec = MarkerSpec()) -> DataBundle:
    """``bundle`` with markers under ``mode`` in its train and validation splits (the test split is left clean:
    notebook 08 builds its test versions with :func:`confounded_split`). New fingerprint: a model trained on it
    never passes for one trained on the clean data."""
    splits = dict(bundle.splits)
    for k, name in enumerate(("train", "val")):
        splits[name] = confounded_split(bundle[name], mode, seed + k, spec)[0]
    return replace(bundle, splits=splits, fingerprint=fingerprint(splits),
                   notes=[*bundle.notes, f"markers burned in ({mode}, P(marker | PNEUMONIA) = "
                                         f"{spec.p_marker_pneumonia}, P(marker | NORMAL) = {spec.p_marker_normal})"])


# ------------------------------------------------------------------------------------ finding markers
@dataclass(frozen=True)
class FinderSpec:
    """The marker heuristic's knobs (fractions of the image side or area, grey levels)."""

    border_frac: float = 0.22  # look only this close to an edge (markers and burned-in text sit there)
    structure_frac: float = 0.06  # strokes thinner than this (a fraction of the side) count as "small"
    contrast: float = 60.0  # how much brighter than the local background (white top-hat, grey levels)
    area_frac: tuple[float, float] = (0.0002, 0.015)  # a compact blob: between these fractions of the image
    max_aspect: float = 2.5  # and not elongated (the bright rim of the body along the image edge is)
    ring_px: int = 3  # isolated: of a ring this wide around the blob, at most
    ring_bright_max: float = 0.3  # this share may be as bright as the blob's strokes (bright anatomy fails this)
    pad_px: int = 2


def find_markers(image: np.ndarray, spec: FinderSpec = FinderSpec()) -> np.ndarray:
    """A boolean mask of marker-like regions of one uint8 image: small bright structures near the border.

    Steps: a white top-hat (the image minus its grey opening with a square of ``structure_frac`` × side) keeps
    what is bright *and* thinner than that square — strokes of letters and text — and drops the wide bright
    anatomy; pixels at least ``contrast`` above their local background, within ``border_frac`` of an edge, are
    joined into blobs (a closing of 1 px bridges the strokes of a letter); compact, isolated blobs — ``area_frac`` of
    the image, a bounding box no more than ``max_aspect`` times longer than wide, and a surrounding ring of which at
    most ``ring_bright_max`` is as bright as the blob — are kept, dilated by ``pad_px``.

    Limits, plainly: it finds *bright, thin, isolated* things near the border — laterality letters, text, rulers,
    ECG electrodes at the edge. It misses dark or large annotations, and it can flag thin bright anatomy near the
    border (a clavicle edge, a rib crossing on a tightly collimated film). Notebook 08 draws its output on real
    films so a reader can judge it.
    """
    img = np.asarray(image).astype(np.float32)
    h, w = img.shape
    band = np.ones((h, w), dtype=bool)
    bh, bw = round(spec.border_frac * h), round(spec.border_frac * w)
    band[bh:h - bh, bw:w - bw] = False
    k = max(3, round(spec.structure_frac * max(h, w)))
    tophat = img - ndi.grey_opening(img, size=(k, k))
    bright = ndi.binary_closing((tophat >= spec.contrast) & band, iterations=1)
    lab, n = ndi.label(bright, structure=np.ones((3, 3)))
    out = np.zeros((h, w), dtype=bool)
    if n:
        areas = ndi.sum(np.ones((h, w)), lab, index=np.arange(1, n + 1))
        keep = []
        for k_, box in enumerate(ndi.find_objects(lab), start=1):
            if box is None or not spec.area_frac[0] * h * w <= areas[k_ - 1] <= spec.area_frac[1] * h * w:
                continue
            bh_, bw_ = box[0].stop - box[0].start, box[1].stop - box[1].start
            if max(bh_, bw_) > spec.max_aspect * min(bh_, bw_):
                continue
            blob = lab == k_
            ring = ndi.binary_dilation(blob, iterations=spec.ring_px) & ~ndi.binary_dilation(blob, iterations=1)
            level = float(np.median(img[blob])) - spec.contrast
            if ring.any() and float((img[ring] >= level).mean()) <= spec.ring_bright_max:
                keep.append(k_)
        out = np.isin(lab, keep)
    return ndi.binary_dilation(out, iterations=spec.pad_px) if out.any() else out


def find_markers_all(images: np.ndarray, spec: FinderSpec = FinderSpec(), progress: bool = False) -> np.ndarray:
    """:func:`find_markers` of every image (N, S, S)."""
    it = images
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(images, desc="find markers", unit="img", leave=False)
    return np.stack([find_markers(im, spec) for im in it]) if len(images) else np.zeros(images.shape, bool)
