"""Reading image files at full depth: every kind of file against the tensor it must give, exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from image_files import write_png
from saliencekit.data import Preprocessing, read_image
from saliencekit.data.reader import image_array
from saliencekit.errors import DataError

LUMA = np.array([0.299, 0.587, 0.114])
RNG = np.random.default_rng(7)


def unit(size: tuple[int, int], channels: int = 1) -> Preprocessing:
    """Same size, no normalisation: the tensor is the file's intensities."""
    return Preprocessing(grayscale=channels == 1, size=size, normalize="unit")


def test_16bit_grey_png_full_depth_not_clipped(tmp_path: Path) -> None:
    values = RNG.integers(0, 65536, (12, 9)).astype(np.uint16)
    values[0, 0], values[0, 1] = 0, 65535
    Image.fromarray(values).save(tmp_path / "g16.png")
    x = unit((12, 9)).load(tmp_path / "g16.png")
    np.testing.assert_array_equal(x[0].numpy(), (values / np.float32(65535)).astype(np.float32))
    assert (x == 1).float().mean() < 0.05  # the old convert("L") made ~all of them white
    # the same file through our own PNG writer (all five row filters) gives the same numbers
    write_png(tmp_path / "g16b.png", values, 16)
    assert torch.equal(unit((12, 9)).load(tmp_path / "g16b.png"), x)


def test_bit_depth_for_12_bit_data_in_16_bit_files(tmp_path: Path) -> None:
    values = RNG.integers(0, 4096, (10, 10)).astype(np.uint16)
    values[0, 0] = 4095
    Image.fromarray(values).save(tmp_path / "g12.png")
    p12 = Preprocessing(size=10, normalize="unit", bit_depth=12)
    np.testing.assert_array_equal(p12.load(tmp_path / "g12.png")[0].numpy(), values / np.float32(4095))
    np.testing.assert_array_equal(unit((10, 10)).load(tmp_path / "g12.png")[0].numpy(), values / np.float32(65535))
    values[5, 5] = 5000
    Image.fromarray(values).save(tmp_path / "g13.png")
    with pytest.raises(DataError, match=r"g13.png holds values up to 5000, above the 12-bit range.*at least 13"):
        p12.load(tmp_path / "g13.png")
    # 8-bit files are not affected by bit_depth
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "g8.png")
    assert float(p12.load(tmp_path / "g8.png").max()) == 1.0
    with pytest.raises(DataError, match="bit_depth"):
        Preprocessing(bit_depth=20)


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_png_full_depth_every_filter(tmp_path: Path, channels: int) -> None:
    samples = RNG.integers(0, 65536, (11, 9, channels)).astype(np.uint16)
    path = write_png(tmp_path / "c16.png", samples, 16)
    assert Image.open(path).mode in ("RGB", "RGBA")  # Pillow alone would keep 8 bits of each sample
    s = samples.astype(np.float64) / 65535
    rgb = s[..., :3] * (s[..., 3:] if channels == 4 else 1.0)  # composited over black
    x = unit((11, 9), 3).load(path)
    np.testing.assert_allclose(x.numpy(), rgb.transpose(2, 0, 1), rtol=0, atol=1e-6)
    grey = unit((11, 9), 1).load(path)
    np.testing.assert_allclose(grey[0].numpy(), rgb @ LUMA, rtol=0, atol=1e-6)
    # not just the high bytes
    assert not np.allclose(x.numpy(), np.floor(rgb.transpose(2, 0, 1) * 255) / 255, atol=1e-4)


def test_16bit_grey_alpha_png(tmp_path: Path) -> None:
    samples = RNG.integers(0, 65536, (9, 8, 2)).astype(np.uint16)
    path = write_png(tmp_path / "la16.png", samples, 16)
    expected = samples[..., 0] / 65535 * samples[..., 1] / 65535
    np.testing.assert_allclose(unit((9, 8)).load(path)[0].numpy(), expected, atol=1e-6)


def test_8bit_grey_rgb_alpha_palette_bilevel(tmp_path: Path) -> None:
    grey = RNG.integers(0, 256, (8, 10)).astype(np.uint8)
    write_png(tmp_path / "g8.png", grey, 8)
    np.testing.assert_array_equal(unit((8, 10)).load(tmp_path / "g8.png")[0].numpy(), grey / np.float32(255))
    rgb = RNG.integers(0, 256, (8, 10, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    x = unit((8, 10), 3).load(tmp_path / "rgb.png")
    np.testing.assert_array_equal(x.numpy(), rgb.transpose(2, 0, 1) / np.float32(255))
    lesson_grey = np.asarray(Image.fromarray(rgb).convert("L"))  # the lesson's integer luma, kept for 8-bit
    np.testing.assert_array_equal(unit((8, 10)).load(tmp_path / "rgb.png")[0].numpy(), lesson_grey / np.float32(255))
    rgba = RNG.integers(0, 256, (8, 10, 4)).astype(np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    x = unit((8, 10), 3).load(tmp_path / "rgba.png").numpy()
    expected = (rgba[..., :3].astype(np.int64) * rgba[..., 3:] + 127) // 255  # over black, rounded
    np.testing.assert_array_equal(x, expected.transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    assert (x[:, 0, 0] == 0).all() and (x[:, 0, 1] == rgba[0, 1, :3] / np.float32(255)).all()
    # palette with one transparent entry
    pal = Image.fromarray(RNG.integers(0, 4, (8, 10)).astype(np.uint8), "P")
    colours = [10, 20, 30, 200, 100, 50, 0, 255, 0, 90, 90, 90]
    pal.putpalette(colours)
    pal.info["transparency"] = 2
    pal.save(tmp_path / "pal.png", transparency=2)
    idx = np.asarray(Image.open(tmp_path / "pal.png"))
    table = np.array(colours).reshape(4, 3)
    expected = np.where((idx == 2)[..., None], 0, table[idx])
    np.testing.assert_array_equal(unit((8, 10), 3).load(tmp_path / "pal.png").numpy(),
                                  expected.transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    Image.fromarray(grey > 128).save(tmp_path / "bw.png")
    np.testing.assert_array_equal(unit((8, 10)).load(tmp_path / "bw.png")[0].numpy(), (grey > 128).astype(np.float32))


def test_jpeg_as_pillow_decodes_it_and_exif_orientation(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (16, 24, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    decoded = np.asarray(Image.open(tmp_path / "a.jpg").convert("L"))
    np.testing.assert_array_equal(unit((16, 24)).load(tmp_path / "a.jpg")[0].numpy(), decoded / np.float32(255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(tmp_path / "r.jpg", quality=95, exif=exif)
    assert read_image(tmp_path / "r.jpg").shape == (24, 16, 1)


def test_tiff_16bit_grey_colour_float_and_refusals(tmp_path: Path) -> None:
    import tifffile

    g16 = RNG.integers(0, 65536, (9, 8)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "g16.tif", g16)
    np.testing.assert_array_equal(unit((9, 8)).load(tmp_path / "g16.tif")[0].numpy(), g16 / np.float32(65535))
    c16 = RNG.integers(0, 65536, (9, 8, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c16.tif", c16, photometric="rgb")
    np.testing.assert_allclose(unit((9, 8), 3).load(tmp_path / "c16.tif").numpy(),
                               (c16 / 65535).transpose(2, 0, 1), atol=1e-7)
    tifffile.imwrite(tmp_path / "c16p.tif", np.moveaxis(c16, 2, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_allclose(unit((9, 8), 3).load(tmp_path / "c16p.tif").numpy(),
                               (c16 / 65535).transpose(2, 0, 1), atol=1e-7)
    f = (RNG.random((9, 8)) * 0.9).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", f)
    np.testing.assert_array_equal(unit((9, 8)).load(tmp_path / "f.tif")[0].numpy(), f)  # taken as they are
    tifffile.imwrite(tmp_path / "hu.tif", f * 3000 - 1000)
    per_image = Preprocessing(size=(9, 8)).load(tmp_path / "hu.tif")
    ref = (f * 3000 - 1000).astype(np.float64)
    np.testing.assert_allclose(per_image[0].numpy(), (ref - ref.mean()) / ref.std(), atol=1e-5)
    with pytest.raises(DataError, match=r"hu.tif has intensities from -\d+.* outside \[0, 1\].*per-image"):
        unit((9, 8)).load(tmp_path / "hu.tif")
    fc = RNG.random((9, 8, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "fc.tif", fc, photometric="rgb")
    np.testing.assert_allclose(unit((9, 8), 3).load(tmp_path / "fc.tif").numpy(), fc.transpose(2, 0, 1))
    bad = f.copy()
    bad[0, 0] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad)
    with pytest.raises(DataError, match="nan.tif holds NaN"):
        read_image(tmp_path / "nan.tif")
    tifffile.imwrite(tmp_path / "i32.tif", RNG.integers(0, 10, (9, 8)).astype(np.int32))
    with pytest.raises(DataError, match="i32.tif has 32-bit integer pixels"):
        read_image(tmp_path / "i32.tif")
    with tifffile.TiffWriter(tmp_path / "stack.tif") as tif:
        for _ in range(3):
            tif.write(np.zeros((9, 8), np.uint8), photometric="minisblack")
    with pytest.raises(DataError, match="stack.tif holds 3 frames"):
        read_image(tmp_path / "stack.tif")


def test_unreadable_missing_and_bad_arrays(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG nope")
    with pytest.raises(DataError, match=r"cannot read image .*x.png.*valid: a readable PNG, JPEG, BMP, TIFF or DICOM"):
        read_image(tmp_path / "x.png")
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="uint8, uint16, bool or floating point"):
        image_array(np.zeros((4, 4), np.int64))
    with pytest.raises(DataError, match=r"\(H, W\) or \(H, W, C\)"):
        image_array(np.zeros((4, 4, 7), np.uint8))


def test_arrays_and_pil_images_follow_the_file_rules() -> None:
    u16 = RNG.integers(0, 65536, (8, 8)).astype(np.uint16)
    p = unit((8, 8))
    np.testing.assert_array_equal(p(u16)[0].numpy(), u16 / np.float32(65535))
    np.testing.assert_array_equal(p(Image.fromarray(u16))[0].numpy(), u16 / np.float32(65535))
    f = RNG.random((8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(p(f)[0].numpy(), f @ LUMA.astype(np.float32), atol=1e-6)


def test_dicom_without_the_extra_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if not installed
    (tmp_path / "a.dcm").write_bytes(b"\0" * 128 + b"DICM")
    with pytest.raises(DataError, match=r"pip install saliencekit\[dicom\]"):
        read_image(tmp_path / "a.dcm")
