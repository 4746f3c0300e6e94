"""DICOM through pydicom: rescale, VOI window and LUT, MONOCHROME1, refusals; against the standard's formulas."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from image_files import write_dicom

pytest.importorskip("pydicom", reason="the dicom extra (pip install saliencekit[dicom]) is not installed")

from saliencekit.data import Preprocessing, read_image, scan_folder
from saliencekit.data.dicom import window
from saliencekit.errors import DataError

RNG = np.random.default_rng(11)


def literal_linear(x: float, c: float, w: float) -> float:
    """PS3.3 C.11.2.1.2.1, written out, with the output range [0, 1]."""
    if x <= c - 0.5 - (w - 1) / 2:
        return 0.0
    if x > c - 0.5 + (w - 1) / 2:
        return 1.0
    return ((x - (c - 0.5)) / (w - 1) + 0.5)


def unit(size: tuple[int, int]) -> Preprocessing:
    return Preprocessing(size=size, normalize="unit")


def test_rescale_then_window_monochrome2_and_1(tmp_path: Path) -> None:
    stored = RNG.integers(0, 4096, (9, 10)).astype(np.uint16)
    common = {"RescaleSlope": "2", "RescaleIntercept": "-1024", "WindowCenter": "40", "WindowWidth": "400"}
    mono2 = write_dicom(tmp_path / "m2.dcm", stored, **common)
    mono1 = write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", **common)
    hu = stored.astype(np.float64) * 2 - 1024
    expected = np.vectorize(lambda v: literal_linear(v, 40, 400))(hu)
    assert 0 < expected.mean() < 1 and (expected == 0).any() and (expected == 1).any()
    np.testing.assert_allclose(unit((9, 10)).load(mono2)[0].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(unit((9, 10)).load(mono1)[0].numpy(), 1 - expected, atol=1e-6)
    # the peer: pydicom's own modality + windowing, mapped from its output range to [0, 1]
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(mono2)
    peer = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    peer = (peer - peer.min()) / (peer.max() - peer.min())
    np.testing.assert_allclose(read_image(mono2)[..., 0], peer, atol=1e-6)


def test_signed_ct_and_window_functions(tmp_path: Path) -> None:
    stored = RNG.integers(-2000, 2000, (8, 8)).astype(np.int16)
    for function in ("LINEAR_EXACT", "SIGMOID"):
        path = write_dicom(tmp_path / f"{function}.dcm", stored, bits_stored=16, RescaleSlope="1",
                           RescaleIntercept="0", WindowCenter=["100", "500"], WindowWidth=["800", "2000"],
                           VOILUTFunction=function)
        x = stored.astype(np.float64)
        if function == "LINEAR_EXACT":  # C.11.2.1.3.2, the first of the two windows
            expected = np.clip((x - 100) / 800 + 0.5, 0, 1)
        else:  # C.11.2.1.3.1
            expected = 1 / (1 + np.exp(-4 * (x - 100) / 800))
        np.testing.assert_allclose(read_image(path)[..., 0], expected, atol=1e-6)


def test_voi_lut_preferred_to_the_window(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = RNG.integers(0, 300, (8, 9)).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [256, 20, 12]  # 256 entries, first mapped value 20, 12-bit entries
    entries = (np.sqrt(np.arange(256) / 255) * 4095).astype(np.uint16)
    item.LUTData = entries.astype("<u2").tobytes()
    path = write_dicom(tmp_path / "lut.dcm", stored, VOILUTSequence=Sequence([item]), WindowCenter="0",
                       WindowWidth="10")
    index = np.clip(stored.astype(int) - 20, 0, 255)
    np.testing.assert_allclose(read_image(path)[..., 0], entries[index] / 4095, atol=1e-6)
    import pydicom
    from pydicom.pixels import apply_voi_lut

    ds = pydicom.dcmread(path)
    np.testing.assert_allclose(read_image(path)[..., 0], apply_voi_lut(ds.pixel_array, ds) / 4095, atol=1e-6)


def test_no_window_uses_the_stored_bits(tmp_path: Path) -> None:
    stored = RNG.integers(0, 4096, (8, 8)).astype(np.uint16)
    path = write_dicom(tmp_path / "plain.dcm", stored, bits_stored=12)
    np.testing.assert_allclose(read_image(path)[..., 0], stored / 4095, atol=1e-6)
    rgb = RNG.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    path = write_dicom(tmp_path / "rgb.dcm", rgb, bits_stored=8, photometric="RGB")
    x = Preprocessing(grayscale=False, size=8, normalize="unit").load(path)
    np.testing.assert_allclose(x.numpy(), rgb.transpose(2, 0, 1) / 255, atol=1e-6)


def test_refusals_name_the_file(tmp_path: Path) -> None:
    frames = write_dicom(tmp_path / "cine.dcm", RNG.integers(0, 100, (3, 8, 8)).astype(np.uint16))
    with pytest.raises(DataError, match=r"cine.dcm is multi-frame \(3 frames\)"):
        read_image(frames)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(DataError, match="cannot read DICOM file .*junk.dcm"):
        read_image(tmp_path / "junk.dcm")
    bad = write_dicom(tmp_path / "w0.dcm", RNG.integers(0, 100, (8, 8)).astype(np.uint16), WindowCenter="5",
                      WindowWidth="0")
    with pytest.raises(DataError, match="w0.dcm: WindowWidth must be >= 1"):
        read_image(bad)
    with pytest.raises(DataError, match="unknown VOILUTFunction"):
        window(np.zeros(3), 0, 10, "CUBIC")


def test_dicom_files_in_a_class_folder(tmp_path: Path) -> None:
    for cls in ("effusion", "normal"):
        for i in range(2):
            write_dicom(tmp_path / cls / f"{i}.dcm", RNG.integers(0, 4096, (12, 10)).astype(np.uint16))
    index = scan_folder(tmp_path)
    assert len(index.samples) == 4
    x = Preprocessing(size=8).load(index.samples[0].path)
    assert x.shape == (1, 8, 8) and torch.isfinite(x).all() and math.isclose(float(x.mean()), 0, abs_tol=1e-5)
