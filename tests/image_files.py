"""Writers of test image files whose pixels are known exactly: PNG of any colour type and depth, DICOM."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # samples per pixel -> PNG colour type (grey, grey+alpha, RGB, RGBA)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def write_png(path: Path, samples: np.ndarray, depth: int, extra_chunks: bytes = b"") -> Path:
    """Write ``samples`` ((H, W) or (H, W, C), C = 1-4) as a PNG of ``depth`` 8 or 16 bits.

    Rows cycle through all five PNG filter types (none, sub, up, average, Paeth), so a decoder is exercised on
    each of them, with the filters' byte distance (bytes per pixel) of the real colour type.
    """
    arr = samples if samples.ndim == 3 else samples[..., None]
    h, w, c = arr.shape
    rows = arr.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1).view(np.uint8).reshape(h, -1)
    rows = rows.astype(np.int64)
    bpp = rows.shape[1] // w
    raw, prev = bytearray(), np.zeros(rows.shape[1], np.int64)
    for y in range(h):
        kind, row = y % 5, rows[y]
        left = np.concatenate([np.zeros(bpp, np.int64), row[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        predicted = [0, left, prev, (left + prev) // 2, _paeth(left, prev, upleft)][kind]
        raw += bytes([kind]) + ((row - predicted) % 256).astype(np.uint8).tobytes()
        prev = row
    header = struct.pack(">IIBBBBB", w, h, depth, PNG_COLOUR_TYPES[c], 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra_chunks
                     + _chunk(b"IDAT", zlib.compress(bytes(raw))) + _chunk(b"IEND", b""))
    return path


def write_dicom(path: Path, stored: np.ndarray, bits_stored: int = 12, photometric: str = "MONOCHROME2",
                **elements: Any) -> Path:
    """Write an uncompressed DICOM image of ``stored`` values (int16 for signed data) with extra ``elements``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    colour = stored.ndim == 3 and photometric == "RGB"
    frames = stored.shape[0] if stored.ndim == 3 and not colour else 1
    ds.Rows, ds.Columns = (stored.shape[1:3] if frames > 1 else stored.shape[:2])
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    signed = stored.dtype.kind == "i"
    ds.BitsAllocated = 8 if stored.dtype.itemsize == 1 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(stored.astype(stored.dtype.newbyteorder("<"))).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
