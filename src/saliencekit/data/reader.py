"""Image files to pixel arrays at their full depth, scaled by one documented rule.

What every reader returns is an ``(H, W, C)`` array with ``C`` the requested channel count (1 or 3):

- **8-bit sources** (8-bit PNG, JPEG, BMP, 8-bit TIFF, palette and bilevel images, 1/2/4-bit PNG) stay
  ``uint8`` levels 0-255 (``value / 255`` is the intensity), so that they are resized exactly as before.
- **16-bit integer sources** (16-bit greyscale, RGB and RGBA PNG and TIFF, also the colour ones that Pillow
  would cut to 8 bits) become ``float32`` ``value / (2**16 - 1)`` in [0, 1]: the sample type's range, which is
  what the PNG specification asks of encoders (data of fewer bits are scaled up to the full sample depth and
  only declared in ``sBIT``). Many radiograph exports instead store 12-bit values unscaled in 16-bit files;
  give their real depth with ``bit_depth=12`` (``--bit-depth 12``) and they are divided by ``2**12 - 1``
  (values above that range are refused, naming the file). ``bit_depth`` applies to 16-bit files only.
- **Floating-point TIFFs** (32/64-bit, one or three samples) are kept as they are (``float32``, no scaling): the
  file's numbers are the intensities. Non-finite values are refused.
- **DICOM** files (``.dcm``; the ``dicom`` extra): see :mod:`saliencekit.data.dicom` (rescale slope/intercept,
  the VOI window or LUT, MONOCHROME1 inverted), giving ``float32`` in [0, 1].

Colour: greyscale output from a colour image is the ITU-R 601-2 luma ``0.299 R + 0.587 G + 0.114 B`` (Pillow's
``convert("L")`` for 8-bit images, the same weights in floating point otherwise); colour output from a
greyscale image repeats the grey level in R, G and B. Palette images are expanded through their palette.

Transparency (an alpha channel, a palette or colour-key ``tRNS``): the image is **composited over black**
(``value * alpha``), so transparent areas are 0 whatever colour the file stores under them; the alpha channel
is not a model input.

Orientation: an EXIF orientation tag that Pillow reads (JPEG, 8-bit TIFF...) is applied, so the image is read
the way viewers show it.
Multi-page files (TIFF stacks, animated PNGs) are refused by name: save the page you mean as its own file.
So are images of more than :data:`saliencekit.limits.MAX_IMAGE_PIXELS` pixels (Pillow's decompression-bomb limit,
about 9459 x 9459), before their pixels are decoded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from saliencekit.errors import DataError
from saliencekit.limits import MAX_IMAGE_PIXELS, pixel_count_error

DICOM_EXTENSIONS = (".dcm", ".dicom")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", *DICOM_EXTENSIONS)
FORMATS_TEXT = "a readable PNG, JPEG, BMP, TIFF or DICOM (.dcm) file"
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")

_TIFF_BITS_PER_SAMPLE = 258
_TIFF_SAMPLE_FORMAT = 339  # 1 unsigned int, 2 signed int, 3 float


def is_dicom(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM file: a ``.dcm``/``.dicom`` name or the ``DICM`` marker at byte 128."""
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def check_pixel_count(what: str, width: int, height: int) -> None:
    """Refuse an image above :data:`~saliencekit.limits.MAX_IMAGE_PIXELS` (before its pixels are decoded).

    Raises:
        DataError: naming ``what``, its size and the limit.
    """
    problem = pixel_count_error(what, int(width), int(height))
    if problem:
        raise DataError(problem)


def _open(path: Path) -> Image.Image:
    """``Image.open`` with the size checked against the limit before anything is decoded (an empty file is refused
    as such)."""
    if path.stat().st_size == 0:
        raise DataError(f"image {path} is an empty file (0 bytes); valid: {FORMATS_TEXT} (use --skip-bad to skip "
                        "such files)")
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:  # more than twice Pillow's limit: Pillow stops before we can look
        raise DataError(f"image {path} is too large: {exc} (saliencekit's limit: {MAX_IMAGE_PIXELS:,} pixels, "
                        "saliencekit.limits.MAX_IMAGE_PIXELS); downscale it first") from exc
    try:
        check_pixel_count(f"image {path}", *im.size)
    except DataError:
        im.close()
        raise
    return im


def _cannot_read(path: Path, exc: BaseException) -> DataError:
    return DataError(f"cannot read image {path}: {exc.__class__.__name__}: {exc} "
                     f"(valid: {FORMATS_TEXT}; use --skip-bad to skip such files)")


def open_image(path: str | Path) -> Image.Image:
    """Open an image file with Pillow and decode it fully (8-bit view for display and masks).

    Prefer :func:`read_image` for model inputs: Pillow cuts 16-bit colour images to 8 bits.

    Raises:
        DataError: the file is missing or unreadable (naming it).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with _open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im) or im.copy()
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _cannot_read(path, exc) from exc


def read_image(path: str | Path, channels: int = 1, bit_depth: int | None = None) -> np.ndarray:
    """Read an image file at full depth (see the module docstring for the scaling and colour rules).

    Args:
        path: a PNG, JPEG, BMP, TIFF or DICOM file.
        channels: 1 (greyscale) or 3 (RGB).
        bit_depth: the real depth of the data in 16-bit files (e.g. 12), when it was stored unscaled.

    Returns:
        ``(H, W, channels)``: ``uint8`` levels for 8-bit sources, else ``float32`` (in [0, 1] except for
        floating-point TIFFs, which keep their values).

    Raises:
        DataError: missing, unreadable, multi-page, unsupported or out-of-range file (naming it).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.png"
    >>> Image.fromarray(np.full((2, 3), 65535, np.uint16)).save(p)
    >>> read_image(p).dtype.name, float(read_image(p).max())
    ('float32', 1.0)
    """
    path = Path(path)
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if bit_depth is not None and not (isinstance(bit_depth, int) and 8 <= bit_depth <= 16):
        raise DataError(f"bit_depth must be an integer from 8 to 16 (the real depth of 16-bit data), got {bit_depth!r}")
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    if is_dicom(path):
        from saliencekit.data.dicom import read_dicom

        arr = read_dicom(path)
    else:
        arr = _read_raster(path, bit_depth)
    return _to_channels(arr, channels)


def _read_raster(path: Path, bit_depth: int | None) -> np.ndarray:
    """(H, W, C) with C in 1..4 (grey, grey+alpha, RGB, RGBA) before compositing; see :func:`read_image`."""
    try:
        with _open(path) as im:
            n_frames = getattr(im, "n_frames", 1)
            if n_frames > 1:
                raise DataError(f"{path} holds {n_frames} frames/pages; saliencekit reads single images: "
                                "save the frame you mean as its own file")
            arr = _decode(im, path, bit_depth)
    except DataError:
        raise
    except UnidentifiedImageError as exc:
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise _cannot_read(path, exc) from exc
        arr = _tiff_array(path, bit_depth)  # e.g. floating-point RGB, which Pillow cannot open
    except (OSError, SyntaxError, ValueError, TypeError, KeyError) as exc:
        raise _cannot_read(path, exc) from exc
    if arr.dtype != np.uint8 and not np.isfinite(arr).all():
        raise DataError(f"image {path} holds NaN or infinite values; valid: finite intensities")
    return _composite(arr)


def _decode(im: Image.Image, path: Path, bit_depth: int | None) -> np.ndarray:
    if im.format == "PNG" and im.tile and im.tile[0].args in ("RGB;16B", "RGBA;16B", "LA;16B"):
        return _scale16(_png16_colour(im, path), f"image {path}", bit_depth)
    if im.format == "TIFF" and _tiff_needs_tifffile(im):
        return _tiff_array(path, bit_depth)
    im.load()
    return _pil_pixels(im, f"image {path}", bit_depth)


def _pil_pixels(im: Image.Image, where: str, bit_depth: int | None) -> np.ndarray:
    """A decoded Pillow image as (H, W, C) pixels, C in 1..4, before compositing."""
    if im.format in ("JPEG", "TIFF", "MPO", "WEBP", "PNG") and im.getexif().get(0x0112, 1) != 1:
        im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im).astype(np.float32)
        out = _scale16(arr[..., None], where, bit_depth)
        key = im.info.get("transparency")
        if isinstance(key, int):  # a grey colour key: those pixels are transparent
            out = np.concatenate([out, (arr != key)[..., None].astype(np.float32)], axis=2)
        return out
    if mode == "I":
        arr = np.asarray(im)
        if im.format == "PNG" and arr.min() >= 0 and arr.max() <= 65535:  # 16-bit greyscale PNG on older Pillow
            return _scale16(arr.astype(np.float32)[..., None], where, bit_depth)
        raise DataError(f"{where} has 32-bit integer pixels, which have no agreed intensity range; "
                        "valid: 8- or 16-bit integer or floating-point images")
    if mode == "F":
        return np.asarray(im, dtype=np.float32)[..., None]
    if mode == "1":
        return np.asarray(im.convert("L"))[..., None]
    if mode in ("P", "PA", "RGBa") or ("transparency" in im.info and mode in ("L", "RGB")):
        im = im.convert("RGBA")  # through the palette; opaque pixels keep their colour when composited
    elif mode == "La":
        im = im.convert("LA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV: to RGB through Pillow's colour conversion
    arr = np.asarray(im)
    return arr if arr.ndim == 3 else arr[..., None]


def image_array(image: Image.Image | np.ndarray, channels: int = 1, bit_depth: int | None = None) -> np.ndarray:
    """Pixels of an image already in memory, by the rules of :func:`read_image`.

    Args:
        image: a PIL image (16-bit colour needs :func:`read_image` on the file: Pillow keeps 8 bits of it), or an
            ``(H, W)`` / ``(H, W, C)`` array, C in 1-4: ``uint8`` levels, ``uint16`` samples or floats as they are.
        channels: 1 or 3.
        bit_depth: the real depth of 16-bit data, as for :func:`read_image`.
    """
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if isinstance(image, Image.Image):
        arr = _pil_pixels(image, "the image", bit_depth)
    elif isinstance(image, np.ndarray):
        arr = image if image.ndim == 3 else image[..., None]
        if arr.ndim != 3 or not 1 <= arr.shape[2] <= 4:
            raise DataError(f"an image array must be (H, W) or (H, W, C) with C from 1 to 4, got {image.shape}")
        if arr.dtype == np.uint16:
            arr = _scale16(arr.astype(np.float32), "the image", bit_depth)
        elif arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        elif arr.dtype == np.bool_:
            arr = arr.astype(np.uint8) * 255
        elif arr.dtype != np.uint8:
            raise DataError(f"image arrays must be uint8, uint16, bool or floating point, got {arr.dtype}")
    else:
        raise DataError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if arr.dtype != np.uint8 and not np.isfinite(arr).all():
        raise DataError("the image holds NaN or infinite values; valid: finite intensities")
    return _to_channels(_composite(arr), channels)


def _png16_colour(im: Image.Image, path: Path) -> np.ndarray:
    """A 16-bit colour (or grey+alpha) PNG at full depth, through Pillow's own decoder.

    Pillow keeps only the high byte of each 16-bit sample. Its decoder unfilters the rows in C; asking it for
    the same rows unpacked little-endian instead of big-endian yields the low bytes, and the two together are
    the full samples (grey+alpha is unpacked as the four raw bytes of each pixel). The high bytes are checked
    against Pillow's ordinary decode, so a Pillow that decodes differently is refused rather than misread.
    """
    raw = im.tile[0].args

    def decode(rawmode: str) -> np.ndarray:
        with Image.open(path) as again:
            again.tile = [t._replace(args=rawmode) for t in again.tile]
            again.load()
            return np.asarray(again).astype(np.uint16)

    im.load()
    normal = np.asarray(im).astype(np.uint16)
    if raw == "LA;16B":
        b = decode("RGBA")  # the raw bytes: L high, L low, A high, A low
        full = np.stack([b[..., 0] * 256 + b[..., 1], b[..., 2] * 256 + b[..., 3]], axis=2)
        high = np.stack([normal[..., 0], normal[..., 3]], axis=2)
    else:
        full = decode(raw) * 256 + decode(raw.replace("16B", "16L"))
        high = normal
    if not np.array_equal(full >> 8, high):
        raise DataError(f"cannot read the 16-bit colour PNG {path} at full depth with this Pillow version; "
                        "save it as a 16-bit TIFF, or as 16-bit greyscale")
    return full.astype(np.float32)


def _tiff_needs_tifffile(im: Image.Image) -> bool:
    """Multi-sample TIFFs of more than 8 bits per sample, which Pillow cuts to 8 bits or cannot open."""
    tags = getattr(im, "tag_v2", {})
    bits = tags.get(_TIFF_BITS_PER_SAMPLE, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    return len(bits) > 1 and max(bits) > 8


def _tiff_array(path: Path, bit_depth: int | None) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            check_pixel_count(f"image {path}", page.imagewidth, page.imagelength)
            arr = page.asarray()
            axes = page.axes
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for unsupported compressions
        raise _cannot_read(path, exc) from exc
    if axes.startswith("S"):  # planar configuration: samples first
        arr = np.moveaxis(arr, 0, -1)
    arr = arr if arr.ndim == 3 else arr[..., None]
    if arr.ndim != 3 or not 1 <= arr.shape[2] <= 4:
        raise DataError(f"image {path} has an unsupported layout {arr.shape} ({axes}); valid: grey, RGB or RGBA")
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    if arr.dtype == np.uint16:
        return _scale16(arr.astype(np.float32), f"image {path}", bit_depth)
    if arr.dtype == np.uint8:
        return arr
    raise DataError(f"image {path} has {arr.dtype} samples; valid: 8- or 16-bit unsigned or floating point")


def _scale16(arr: np.ndarray, where: str, bit_depth: int | None) -> np.ndarray:
    """16-bit samples to [0, 1]: by 2**16 - 1, or by 2**bit_depth - 1 when the data's real depth is given."""
    top = float(2 ** (bit_depth or 16) - 1)
    if bit_depth is not None and bit_depth < 16:
        peak = float(arr.max()) if arr.size else 0.0
        if peak > top:
            raise DataError(f"{where} holds values up to {peak:.0f}, above the {bit_depth}-bit range "
                            f"(0-{top:.0f}) given by bit_depth/--bit-depth; valid: a bit depth of at least "
                            f"{max(bit_depth + 1, int(np.ceil(np.log2(peak + 1))))}, or leave it unset (16)")
    return arr / np.float32(top)


def _composite(arr: np.ndarray) -> np.ndarray:
    """Grey+alpha or RGBA -> grey or RGB composited over black; other arrays unchanged."""
    if arr.shape[2] not in (2, 4):
        return arr
    colour, alpha = arr[..., :-1], arr[..., -1:]
    if arr.dtype == np.uint8:  # 8-bit: round like an 8-bit compositor would
        return ((colour.astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    return (colour * alpha).astype(np.float32)


def _to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    have = arr.shape[2]
    if have == channels:
        return arr
    if channels == 3:
        return np.repeat(arr, 3, axis=2)
    if arr.dtype == np.uint8:  # Pillow's integer luma, as the lesson's convert("L")
        return np.asarray(Image.fromarray(np.ascontiguousarray(arr)).convert("L"))[..., None]
    r, g, b = (arr[..., i] for i in range(3))
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).astype(np.float32)[..., None]
