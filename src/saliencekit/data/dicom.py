"""DICOM images as display intensities in [0, 1] (needs the ``dicom`` extra: ``pip install saliencekit[dicom]``).

The steps are those of a DICOM viewer's greyscale pipeline (PS3.3 C.11, PS3.4 N.2), in order:

1. **Stored values**, signed or not as ``PixelRepresentation`` says (decoded by pydicom).
2. **Modality transform**: ``RescaleSlope * stored + RescaleIntercept`` (e.g. CT Hounsfield units), or the
   Modality LUT when the file has one.
3. **VOI transform**, to [0, 1]: the VOI LUT when the file has one (its entries divided by their range,
   ``2**bits - 1`` from the LUT descriptor), else the window ``WindowCenter`` / ``WindowWidth`` with the
   file's ``VOILUTFunction`` (``LINEAR``, the default, ``LINEAR_EXACT`` or ``SIGMOID``, as PS3.3 C.11.2.1.2
   defines them), else the full range the stored values can take (from ``BitsStored``), mapped linearly.
   Files listing several windows or LUTs use the first one, as viewers do by default.
4. **MONOCHROME1** (bright = low values) is inverted, ``1 - v``, so that bone is bright as in MONOCHROME2.

Colour files (``RGB``; ``YBR_*`` converted to RGB by pydicom) are scaled by ``BitsStored``. Multi-frame files
and ``PALETTE COLOR`` images are refused by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from saliencekit.errors import DataError

VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:
        raise DataError("reading DICOM files needs pydicom: pip install saliencekit[dicom]") from exc
    return pydicom


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """The DICOM VOI window (PS3.3 C.11.2.1.2) as intensities in [0, 1].

    Args:
        values: modality values (after rescale slope/intercept).
        center: ``WindowCenter``.
        width: ``WindowWidth`` (>= 1 for LINEAR, > 0 otherwise).
        function: ``VOILUTFunction``: LINEAR, LINEAR_EXACT or SIGMOID.

    >>> window(np.array([0.0, 40.0, 80.0]), center=40, width=81).tolist()
    [0.0, 0.5, 1.0]
    """
    x = np.asarray(values, dtype=np.float64)
    function = (function or "LINEAR").upper()
    if function not in VOI_FUNCTIONS:
        raise DataError(f"unknown VOILUTFunction {function!r}; valid: {', '.join(VOI_FUNCTIONS)}")
    if function == "LINEAR":
        if width < 1:
            raise DataError(f"WindowWidth must be >= 1 for a LINEAR window, got {width}")
        # C.11.2.1.2.1: below c - 0.5 - (w-1)/2 -> min, above c - 0.5 + (w-1)/2 -> max, linear between
        y = (x - (center - 0.5)) / (width - 1) + 0.5 if width > 1 else (x > center - 0.5).astype(np.float64)
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise DataError(f"WindowWidth must be > 0 for a LINEAR_EXACT window, got {width}")
        y = (x - center) / width + 0.5  # C.11.2.1.3.2
    else:
        if width <= 0:
            raise DataError(f"WindowWidth must be > 0 for a SIGMOID window, got {width}")
        return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)  # C.11.2.1.3.1
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def lut(values: np.ndarray, descriptor: tuple[int, int, int], data: np.ndarray) -> np.ndarray:
    """Apply a DICOM LUT (``LUTDescriptor`` = entries, first mapped value, bits per entry) to [0, 1].

    Values below the first mapped value take the first entry, values beyond the last take the last one
    (PS3.3 C.11.2.1.1); the entries are divided by ``2**bits - 1``.
    """
    bits = int(descriptor[2])
    return (_lookup(values, descriptor, data) / float(2**bits - 1)).astype(np.float32)


def _lookup(values: np.ndarray, descriptor: tuple[int, int, int], data: np.ndarray) -> np.ndarray:
    """The LUT's entries for ``values`` (float64, unscaled)."""
    n, first, _ = (int(v) for v in descriptor)
    entries = np.asarray(data, dtype=np.float64).reshape(-1)[: n or 65536]  # 0 entries means 65536
    if len(entries) == 0:
        raise DataError("empty LUT data")
    index = np.clip(np.floor(np.asarray(values, dtype=np.float64)) - first, 0, len(entries) - 1).astype(np.int64)
    return entries[index]


def _first(value: Any) -> float:
    """First number of a possibly multi-valued DICOM element."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _lut_data(item: Any) -> np.ndarray:
    data = item.LUTData
    if isinstance(data, bytes | bytearray):
        return np.frombuffer(data, dtype="<u2")
    return np.asarray(data if isinstance(data, list | tuple) else [data])


def read_dicom(path: str | Path) -> np.ndarray:
    """Read one DICOM image as ``(H, W, 1)`` (greyscale) or ``(H, W, 3)`` (colour) float32 in [0, 1].

    Raises:
        DataError: pydicom missing, unreadable file, no pixel data, multi-frame, unsupported photometric
            interpretation or a pixel codec that is not installed (each naming the file).
    """
    pydicom = _pydicom()
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # InvalidDicomError, OSError, struct errors on truncated files...
        raise DataError(f"cannot read DICOM file {path}: {exc.__class__.__name__}: {exc}") from exc
    if "PixelData" not in ds:
        raise DataError(f"DICOM file {path} has no pixel data (is it an image?)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"DICOM file {path} is multi-frame ({frames} frames); saliencekit reads single images: "
                        "export the frame you mean as its own file")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    from saliencekit.data.reader import check_pixel_count

    check_pixel_count(f"DICOM file {path}", int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0))
    try:
        stored = ds.pixel_array
    except Exception as exc:  # a compressed transfer syntax without its decoder, corrupt data...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise DataError(f"cannot decode the pixels of DICOM file {path} (transfer syntax {name}): {exc}; "
                        "compressed DICOM needs a pydicom decoder plugin, e.g. pip install pylibjpeg "
                        "pylibjpeg-libjpeg pylibjpeg-openjpeg") from exc
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8 * stored.dtype.itemsize)))
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_422"):
        if stored.ndim != 3 or stored.shape[2] != 3:
            raise DataError(f"DICOM file {path}: colour pixels of shape {stored.shape}; expected (rows, columns, 3)")
        return (stored.astype(np.float64) / (2**bits - 1)).astype(np.float32)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(f"DICOM file {path} has photometric interpretation {photometric}; valid: MONOCHROME1, "
                        "MONOCHROME2, RGB or YBR (export it as one of those, or as a PNG/TIFF)")
    if stored.ndim != 2:
        raise DataError(f"DICOM file {path}: greyscale pixels of shape {stored.shape}; expected (rows, columns)")
    values = _modality(ds, stored)
    out = _voi(ds, values, bits, path)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)[..., None]


def _modality(ds: Any, stored: np.ndarray) -> np.ndarray:
    if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
        item = ds.ModalityLUTSequence[0]
        return _lookup(stored, tuple(item.LUTDescriptor), _lut_data(item))
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return stored.astype(np.float64) * slope + intercept


def _voi(ds: Any, values: np.ndarray, bits: int, path: Path) -> np.ndarray:
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        return lut(values, tuple(item.LUTDescriptor), _lut_data(item))
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        except (TypeError, ValueError) as exc:
            raise DataError(f"DICOM file {path} has an unreadable window (WindowCenter/WindowWidth): {exc}") from exc
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
        try:
            return window(values, center, width, function)
        except DataError as exc:
            raise DataError(f"DICOM file {path}: {exc}") from exc
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = _modality(ds, np.array([lo, hi]))
    a, b = float(ends.min()), float(ends.max())
    if b <= a:
        raise DataError(f"DICOM file {path}: its rescale maps every stored value to {a}; no intensities to show")
    return np.clip((values - a) / (b - a), 0.0, 1.0)
