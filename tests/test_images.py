"""utils.data.images: every supported mode gives uint8 (S, S); every bad file gives a one-line UserError."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFile

from utils.data import images
from utils.data.images import IMAGE_SUFFIXES, MAX_PIXELS, list_images, read_image
from utils.errors import UserError

try:
    from tests import bad_inputs
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    import bad_inputs

try:
    import pydicom
except ImportError:
    pydicom = None


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return bad_inputs.write_good_images(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return bad_inputs.write_bad_images(tmp_path_factory.mktemp("bad"))


def _error(path, size=64) -> str:
    with pytest.raises(UserError) as info:
        read_image(path, size)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


@pytest.mark.parametrize("name", ["gray_L.jpeg", "rgb.png", "rgba.png", "palette.png", "sixteen_bit.png",
                                  "cmyk.jpeg", "one_bit.png", "la.png", "wide_large.png"])
def test_good_modes_give_uint8_square(good, name):
    a = read_image(good[name], 64)
    assert a.shape == (64, 64) and a.dtype == np.uint8 and a.flags.writeable and a.std() > 5
    full = read_image(good[name])
    assert full.dtype == np.uint8 and full.shape == ((300, 520) if name == "wide_large.png" else (96, 96))


def test_colour_modes_agree_with_grayscale(good):
    rgb, cmyk, pal = (read_image(good[n]).astype(int) for n in ("rgb.png", "cmyk.jpeg", "palette.png"))
    assert np.abs(cmyk - rgb).mean() < 3 and np.abs(pal - rgb).mean() < 6
    L = read_image(good["gray_L.jpeg"]).astype(int)
    assert np.abs(read_image(good["la.png"]).astype(int) - L).mean() < 3  # opaque LA = its L channel (JPEG noise)


def test_rgba_is_composited_on_black(tmp_path):
    a = np.full((32, 32, 4), 200, np.uint8)
    a[..., 3] = 255
    a[:, :16, 3] = 0  # left half transparent (its hidden colour is light grey)
    Image.fromarray(a).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert (out[:, :16] == 0).all() and (out[:, 16:] == 200).all()


def test_16_bit_is_windowed_to_its_own_range(tmp_path):
    a = np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)  # a 12-bit detector in 16 bits
    Image.fromarray(a).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I")
    out = read_image(tmp_path / "a.png")
    assert out.min() == 0 and out.max() == 255 and np.all(np.diff(out.ravel().astype(int)) >= 0)
    Image.fromarray(np.full((8, 8), 777, np.uint16)).save(tmp_path / "flat.png")
    assert (read_image(tmp_path / "flat.png") == 0).all()  # constant image: zeros, not NaN
    Image.fromarray(a.astype(np.int32)).save(tmp_path / "i32.tiff")  # mode I
    assert read_image(tmp_path / "i32.tiff").max() == 255


def test_exif_orientation_is_honoured(tmp_path):
    a = np.zeros((20, 40), np.uint8)
    a[:, :10] = 255  # bright left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(a).save(tmp_path / "o.jpeg", exif=exif, quality=95)
    out = read_image(tmp_path / "o.jpeg")
    assert out.shape == (40, 20) and out[:10].mean() > 200 and out[-10:].mean() < 50  # bright edge now on top


def test_resize_is_bilinear_to_a_square(good):
    out = read_image(good["wide_large.png"], 100)
    ref = np.asarray(Image.open(good["wide_large.png"]).resize((100, 100), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out, ref)  # aspect ratio not preserved, same filter as training


@pytest.mark.parametrize("case, words", [
    ("missing", "not found"), ("folder", "folder"), ("empty", "empty"), ("text", "not an image"),
    ("html", "not an image"), ("truncated_jpeg", "truncated"), ("truncated_png", "truncated"),
    ("huge_png", f"{MAX_PIXELS:,}"), ("big_png", "above the limit"), ("bomb_warning_png", f"{MAX_PIXELS:,}"),
])
def test_bad_images_give_one_line(bad, case, words):
    assert words in _error(bad[case])


def test_pixel_limit_checked_before_decoding(bad, good, monkeypatch):
    def boom(self):
        raise AssertionError("pixels decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)
    assert "above the limit" in _error(bad["big_png"])
    monkeypatch.undo()
    monkeypatch.setattr(images, "MAX_PIXELS", 50 * 50)
    assert "above the limit" in _error(good["rgb.png"])


def test_dicom(tmp_path):
    magic = tmp_path / "no_suffix.img"  # DICOM is recognised by its magic bytes, not only by .dcm
    magic.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    if pydicom is None:
        (tmp_path / "x.dcm").write_bytes(b"\0" * 132)
        for p in (magic, tmp_path / "x.dcm"):
            assert "reading DICOM needs pydicom: pip install -e '.[dicom]'" in _error(p)
        return
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    def write(name: str, photometric: str) -> np.ndarray:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(tmp_path / name), {}, file_meta=meta, preamble=b"\0" * 128)
        px = (np.arange(16 * 24).reshape(16, 24) * 10).astype(np.uint16)
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 16, 24, 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
        ds.PixelData = px.tobytes()
        ds.save_as(str(tmp_path / name), enforce_file_format=True)
        return px

    write("m2.dcm", "MONOCHROME2")
    write("m1.dcm", "MONOCHROME1")
    m2, m1 = read_image(tmp_path / "m2.dcm"), read_image(tmp_path / "m1.dcm")
    assert m2.shape == (16, 24) and m2[0, 0] == 0 and m2[-1, -1] == 255
    np.testing.assert_array_equal(m1.astype(int), 255 - m2.astype(int))  # MONOCHROME1 inverted
    assert read_image(tmp_path / "m2.dcm", 32).shape == (32, 32)
    assert "cannot read this DICOM" in _error(magic)


def test_list_images(tmp_path):
    for rel in ("b.PNG", "a.jpeg", "sub/c.jpg", ".hidden.jpeg", "._a.jpeg", "notes.txt", "__MACOSX/d.jpeg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpeg", "b.PNG"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.jpeg", "b.PNG", "c.jpg"]
    assert ".jpeg" in IMAGE_SUFFIXES and ".dcm" in IMAGE_SUFFIXES
    with pytest.raises(UserError, match="not a folder"):
        list_images(tmp_path / "nope")
