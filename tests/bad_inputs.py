"""A corpus of bad (and good) inputs written into a temporary folder, for the image reader and the CLI.

Every function returns ``{case name: path}``. Nothing here is large in memory: the "absurd" images are
small PNGs whose header claims a huge size.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _noise(h: int = 96, w: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    return np.clip(base + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8)


def png_with_size(path: Path, width: int, height: int) -> Path:
    """A valid 8×8 PNG whose IHDR is patched to claim ``width × height`` (CRC fixed): opens, never decodes."""
    Image.fromarray(_noise(8, 8)).save(path, format="PNG")
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def write_bad_images(folder: Path) -> dict[str, Path]:
    """Image files :func:`utils.data.images.read_image` must refuse with a one-line error."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {"missing": folder / "does_not_exist.jpeg", "folder": folder / "a_folder.jpeg"}
    out["folder"].mkdir(exist_ok=True)
    out["empty"] = folder / "empty.jpeg"
    out["empty"].write_bytes(b"")
    out["text"] = folder / "notes.jpeg"
    out["text"].write_text("this is a text file renamed .jpeg\n")
    out["html"] = folder / "download.png"
    out["html"].write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    img = Image.fromarray(_noise())
    img.save(folder / "_full.jpeg", format="JPEG", quality=90)
    img.save(folder / "_full.png", format="PNG")
    for kind in ("jpeg", "png"):
        raw = (folder / f"_full.{kind}").read_bytes()
        out[f"truncated_{kind}"] = folder / f"truncated.{kind}"
        out[f"truncated_{kind}"].write_bytes(raw[: len(raw) // 2])
        (folder / f"_full.{kind}").unlink()
    out["huge_png"] = png_with_size(folder / "huge.png", 100_000, 100_000)  # PIL's own bomb guard
    out["big_png"] = png_with_size(folder / "big.png", 8_000, 8_000)  # 64 Mpx: above MAX_PIXELS only
    out["bomb_warning_png"] = png_with_size(folder / "warn.png", 10_000, 10_000)  # PIL warns, we refuse
    return out


def write_good_images(folder: Path, size: int = 96) -> dict[str, Path]:
    """One file per supported mode (grayscale JPEG, RGB, RGBA, palette, 16-bit, CMYK, 1-bit, LA, non-square)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = _noise(size, size)
    rgb = np.stack([g, np.roll(g, 5, 0), 255 - g], axis=2)
    out: dict[str, Path] = {}

    def save(name: str, im: Image.Image, **kw) -> None:
        out[name] = folder / name
        im.save(out[name], **kw)

    save("gray_L.jpeg", Image.fromarray(g), format="JPEG", quality=95)
    save("rgb.png", Image.fromarray(rgb))
    save("rgba.png", Image.fromarray(np.dstack([rgb, np.full_like(g, 200)])))
    save("palette.png", Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64))
    save("sixteen_bit.png", Image.fromarray(g.astype(np.uint16) * 16))
    save("cmyk.jpeg", Image.fromarray(rgb).convert("CMYK"), format="JPEG", quality=95)
    save("one_bit.png", Image.fromarray(g > 128).convert("1"))
    save("la.png", Image.fromarray(g).convert("LA"))
    save("wide_large.png", Image.fromarray(_noise(300, 520, seed=1)))
    return out


class NotAStateDict:
    """A class instance: ``torch.load(weights_only=True)`` must refuse to unpickle it."""

    def __init__(self) -> None:
        self.payload = "arbitrary code could run here"


def write_bad_checkpoints(folder: Path) -> dict[str, Path]:
    """Checkpoints :func:`utils.train.model.load_model` must refuse with a one-line error."""
    from torchvision import models

    from utils.checkpoint import make_meta, save_checkpoint
    from utils.config import IMAGENET_MEAN, IMAGENET_STD

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = dict(image_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD, threshold=0.5, profile="test")
    out = {"missing": folder / "nope.pt", "folder": folder / "a_folder.pt"}
    out["folder"].mkdir(exist_ok=True)
    out["empty"] = folder / "empty.pt"
    out["empty"].write_bytes(b"")
    out["text"] = folder / "text.pt"
    out["text"].write_text("not a checkpoint\n")
    r34 = models.resnet34(weights=None)
    r34.fc = torch.nn.Linear(r34.fc.in_features, 2)
    out["resnet34"] = save_checkpoint(folder / "resnet34.pt", {"model": {k: v.half() for k, v in r34.state_dict().items()},
                                                                   "meta": make_meta(arch="resnet34", **meta)})
    r18 = models.resnet18(weights=None, num_classes=3)  # arch says resnet18, but the head has 3 outputs
    out["wrong_shapes"] = save_checkpoint(folder / "wrong_shapes.pt", {"model": r18.state_dict(), "meta": make_meta(**meta)})
    out["no_meta"] = save_checkpoint(folder / "no_meta.pt", {"model": {"fc.weight": torch.zeros(2, 512)}})
    out["bare_state_dict"] = save_checkpoint(folder / "bare.pt", {"fc.weight": torch.zeros(2, 512)})
    good18 = models.resnet18(weights=None, num_classes=2).state_dict()
    out["bad_image_size"] = save_checkpoint(folder / "bad_size.pt", {"model": good18,
                                                                    "meta": make_meta(**{**meta, "image_size": 0})})
    out["pickled_object"] = folder / "pickled.pt"
    torch.save({"model": NotAStateDict(), "meta": make_meta(**meta)}, out["pickled_object"])
    return out


def write_tiny_checkpoint(path: Path, threshold: float = 0.4, threshold_rule: str | None = "test rule", **extra) -> Path:
    """A valid project checkpoint: random ResNet-18 (seed 0), 64 px, ImageNet normalisation, with a recorded
    operating threshold (``threshold_rule=None``: only the default, unchosen one)."""
    from utils.checkpoint import make_meta, save_checkpoint
    from utils.config import IMAGENET_MEAN, IMAGENET_STD
    from utils.train.model import build_model

    model, _ = build_model("none", seed=0)
    if threshold_rule is not None:
        extra["threshold_rule"] = threshold_rule
    meta = make_meta(image_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD, threshold=threshold, profile="test", **extra)
    return save_checkpoint(path, {"model": model.state_dict(), "meta": meta})
