"""Robust image reading: every file the project decodes (dataset folders, the predict command) goes
through :func:`read_image`, which returns a uint8 grayscale array or raises a one-line :class:`UserError`.

Conventions (chosen once, applied everywhere):

* **Grayscale**: colour images use PIL's ITU-R 601-2 luma (``convert("L")``); CMYK goes through RGB.
* **Alpha** (RGBA, LA, palette with transparency) is *composited on black*: transparent pixels become
  black, the background of a radiograph, instead of whatever colour hides under them.
* **16-bit / 32-bit / float** images (``I;16``, ``I``, ``F``: 16-bit PNG, TIFF) are windowed to *their
  own min/max*, like DICOM: a 12-bit detector stored in 16 bits fills the 8-bit range instead of
  looking black. A constant image becomes all zeros.
* **DICOM** (``.dcm``/``.dicom`` or ``DICM`` at byte 128) needs pydicom: rescale slope/intercept,
  first frame of a multi-frame file, MONOCHROME1 inverted, windowed to min/max.
* **EXIF orientation** is honoured (``ImageOps.exif_transpose``).
* **Resizing** (``size``): straight to ``size × size`` with PIL's antialiased bilinear filter; the aspect
  ratio is *not* preserved (no crop, no padding) — exactly how the training images are resized.
* **Safety**: images above :data:`MAX_PIXELS` are refused before their pixels are decoded; truncated
  files are errors (PIL's ``LOAD_TRUNCATED_IMAGES`` is never switched on).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from utils.errors import UserError

#: Largest image accepted (width × height), checked from the header before decoding.
MAX_PIXELS = 50_000_000
#: File name endings :func:`list_images` picks up (compared in lower case).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom")
_DICOM_HINT = "reading DICOM needs pydicom: pip install -e '.[dicom]'"


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (by suffix, see :data:`IMAGE_SUFFIXES`), sorted; hidden files
    (``.DS_Store``, macOS ``._x.jpeg``) and ``__MACOSX`` folders are skipped."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"not a folder: {folder}; pass a folder of images.")
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(folder).parts))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


def _too_big(path: Path, w: int, h: int) -> UserError:
    return UserError(f"{path}: image is {w}x{h} = {w * h:,} pixels, above the limit of {MAX_PIXELS:,} "
                     "(utils.data.images.MAX_PIXELS); downscale it first.")


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as fh:
        fh.seek(128)
        return fh.read(4) == b"DICM"


def _window(a: np.ndarray) -> np.ndarray:
    """Any numeric array → uint8 by its own min/max (constant → zeros; NaN/inf → 0)."""
    a = np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError:
        raise UserError(f"{path}: {_DICOM_HINT}.") from None
    try:
        ds = pydicom.dcmread(str(path))
        rows, cols = int(ds.Rows), int(ds.Columns)
        if rows * cols > MAX_PIXELS:
            raise _too_big(path, cols, rows)
        a = np.asarray(ds.pixel_array)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path}: cannot read this DICOM file ({_first_line(exc)}); "
                        "check it is an uncompressed or supported-compression image.") from None
    spp = int(getattr(ds, "SamplesPerPixel", 1))
    if (spp == 1 and a.ndim == 3) or (spp > 1 and a.ndim == 4):
        a = a[0]  # first frame of a multi-frame file
    a = a.astype(np.float64)
    if a.ndim == 3:  # colour DICOM (rare for X-rays): plain channel mean
        a = a[..., :3].mean(axis=2)
    a = a * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        a = a.max() + a.min() - a  # MONOCHROME1: high values are dark
    return _window(a)


def _to_gray(im: Image.Image) -> np.ndarray:
    """A loaded PIL image of any mode → uint8 (H, W), following the module's conventions."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        luma = np.asarray(im.convert("RGB").convert("L"), dtype=np.float64)  # same luma as an RGB file
        alpha = np.asarray(im.getchannel("A"), dtype=np.float64) / 255.0
        return np.round(luma * alpha).astype(np.uint8)  # composited on black
    if mode in ("I", "F") or mode.startswith("I;"):
        return _window(np.asarray(im))
    if mode != "L":
        im = im.convert("RGB" if mode == "CMYK" else "L").convert("L")
    return np.asarray(im, dtype=np.uint8)


def read_image(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Decode one image file to uint8 grayscale ``(H, W)``, or ``(size, size)`` when ``size`` is given.

    JPEG/PNG/BMP/TIFF in modes L, RGB, RGBA, LA, P, 1, CMYK, I;16, I, F, and DICOM (with pydicom).
    See the module docstring for the conventions (alpha on black, 16-bit min/max window, EXIF
    orientation, aspect not preserved). Every problem is a one-line :class:`UserError` naming the file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: file not found; check the path.")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an image file; pass an image (or use batch mode on folders).")
    try:
        if path.stat().st_size == 0:
            raise UserError(f"{path}: file is empty (0 bytes); re-copy or re-download it.")
        gray = _read_dicom(path) if _is_dicom(path) else _read_pil(path)
    except OSError as exc:  # permission denied, I/O error
        raise UserError(f"{path}: cannot open the file ({_first_line(exc)}).") from None
    if size is not None:
        size = int(size)
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if gray.shape != (size, size):
            gray = np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR))
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    return gray if gray.flags.writeable else gray.copy()  # PIL's buffers are read-only


def _read_pil(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise UserError(f"{path}: refused, the header claims an enormous image ({_first_line(exc)}); "
                            f"the limit is {MAX_PIXELS:,} pixels.") from None
        except Image.UnidentifiedImageError:
            raise UserError(f"{path}: not an image PIL can read (wrong extension? text or HTML saved "
                            "as an image?); use JPEG, PNG or DICOM.") from None
        with im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise _too_big(path, w, h)
            try:
                im.load()  # full decode now: truncation/corruption surfaces here, not later
                return _to_gray(ImageOps.exif_transpose(im))
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise _too_big(path, w, h) from None
            except MemoryError:
                raise UserError(f"{path}: not enough memory to decode a {w}x{h} image.") from None
            except Exception as exc:
                raise UserError(f"{path}: truncated or corrupt image ({_first_line(exc)}); "
                                "re-copy or re-export it.") from None


#: The smallest side of an image still plausible as a chest radiograph (the Kermany films are ~1,000-2,900 px).
MIN_SIDE = 64


def image_warnings(path: str | os.PathLike) -> list[str]:
    """Why an image that *can* be read may still not be what the model was trained on: a side under
    :data:`MIN_SIDE` px, or real colour (an RGB file whose channels differ — a photo, a screenshot, a coloured
    overlay; a grayscale X-ray saved as RGB has equal channels). Empty for files this cannot open (the reader
    reports those) and for DICOM (grayscale by definition)."""
    path = Path(path).expanduser()
    try:
        if not path.is_file() or _is_dicom(path):
            return []
        with Image.open(path) as im:
            w, h = im.size
            out = []
            if min(w, h) < MIN_SIDE:
                out.append(f"{path.name} is {w}x{h} px: smaller than any chest radiograph the model was trained on "
                           "(it is upscaled, and the result is unreliable)")
            if im.mode in ("RGB", "RGBA", "P", "CMYK") and w * h <= MAX_PIXELS:
                rgb = np.asarray(im.convert("RGB").resize((min(w, 256), min(h, 256))), dtype=np.int16)
                if np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max() > 12:
                    out.append(f"{path.name} is a colour image: the model was trained on grayscale chest radiographs "
                               "(it is converted to gray, and the result is unreliable)")
            return out
    except (OSError, ValueError, Image.DecompressionBombError):
        return []
