"""How a file becomes a model input: read at full depth, fit to the model's size, normalise.

Three steps, each recorded in the checkpoint (:meth:`Preprocessing.to_dict`) so that ``explain`` and ``check``
see exactly what training saw:

1. **Read** (:func:`saliencekit.data.reader.read_image`): 8/16-bit and floating-point PNG, JPEG, BMP, TIFF and
   DICOM at full depth, scaled to [0, 1] by the sample type's range (``bit_depth`` for 12-bit data stored
   unscaled in 16-bit files), transparency composited over black, greyscale by ITU-R 601-2 luma.
2. **Fit** to ``size`` (height, width) by the ``resize`` policy, with antialiased bilinear filtering:

   - ``"pad"`` (the default): scale the whole image to fit inside, centred, and fill the rest with black (0):
     nothing is cut and nothing is distorted;
   - ``"crop"``: scale to cover, and cut the centre: nothing is distorted, the edges of the longer side are lost;
   - ``"stretch"``: scale each side independently (the behaviour before version 0.2, and that of checkpoints
     written before it): shapes are distorted when the aspect ratio differs. Only used when asked for.

   :meth:`Preprocessing.note` says, for one image, what the policy did to it when that was more than scaling.
3. **Normalise** (``normalize``):

   - ``"per-image"`` (the lesson's, the default): subtract each image's mean and divide by its standard
     deviation (over all its pixels and channels; a constant image becomes zeros);
   - ``"unit"``: keep the [0, 1] intensities;
   - ``"imagenet"``: ``(x - mean[c]) / std[c]`` with ImageNet's mean (0.485, 0.456, 0.406) and std
     (0.229, 0.224, 0.225), what torchvision's and timm's pretrained weights expect; one channel uses their
     averages (0.449, 0.226);
   - ``"custom"``: ``(x - mean[c]) / std[c]`` with the given ``mean`` and ``std`` (one value, or one per channel).

   ``"unit"``, ``"imagenet"`` and ``"custom"`` assume intensities in [0, 1]; a floating-point file outside that
   range is refused with them (``"per-image"`` takes any range).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from saliencekit.data.reader import open_image, read_image
from saliencekit.errors import DataError
from saliencekit.limits import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS", "RESIZE_POLICIES", "Preprocessing", "load_mask",
           "open_image"]

NORMALIZATIONS = ("per-image", "unit", "imagenet", "custom")
RESIZE_POLICIES = ("pad", "crop", "stretch")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# spellings of earlier versions (the ``standardize`` argument and checkpoint field)
_ALIASES = {"per_image": "per-image", "none": "unit"}


def _canonical_normalize(value: str) -> str:
    name = _ALIASES.get(value, value)
    if name not in NORMALIZATIONS:
        raise DataError(f"unknown normalisation (standardisation) {value!r}; valid: {', '.join(NORMALIZATIONS)}")
    return name


def _floats(value: float | Sequence[float] | None, what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = (value,) if isinstance(value, int | float) else tuple(value)
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be numbers, got {value!r}") from None
    if not out or not all(np.isfinite(out)):
        raise DataError(f"{what} must be finite numbers, got {value!r}")
    return out


@dataclass(frozen=True)
class Preprocessing:
    """How a file becomes a model input (see the module docstring for each step).

    Args:
        grayscale: one channel (the lesson's choice); ``False`` gives RGB (3 channels).
        size: output ``(height, width)`` (an int for a square).
        normalize: ``"per-image"`` (default), ``"unit"``, ``"imagenet"`` or ``"custom"`` (default ``"custom"``
            when ``mean`` and ``std`` are given). ``"per_image"`` and ``"none"`` are the old names of the first two.
        resize: aspect policy ``"pad"`` (default), ``"crop"`` or ``"stretch"``.
        mean: per-channel means for ``"custom"`` (one value or one per channel); set for ``"imagenet"``.
        std: per-channel standard deviations (> 0), likewise.
        bit_depth: the real depth of 16-bit files' data (e.g. 12) when stored unscaled; None: 16.
        standardize: the old name of ``normalize`` (``"per_image"`` or ``"none"``).

    >>> p = Preprocessing(size=(64, 64))
    >>> x = p(Image.new("L", (128, 96), 200))
    >>> tuple(x.shape), p.in_channels, p.resize
    ((1, 64, 64), 1, 'pad')
    >>> Preprocessing(grayscale=False, normalize="imagenet").mean
    (0.485, 0.456, 0.406)
    """

    grayscale: bool = True
    size: tuple[int, int] = (256, 256)
    normalize: str | None = None
    resize: str = "pad"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bit_depth: int | None = None
    eps: float = field(default=1e-6, repr=False)
    standardize: InitVar[str | None] = None

    def __post_init__(self, standardize: str | None) -> None:
        try:
            size = tuple(int(s) for s in (self.size if isinstance(self.size, list | tuple) else (self.size, self.size)))
        except (TypeError, ValueError):
            size = ()
        if len(size) != 2 or min(size) < MIN_IMAGE_SIDE or max(size) > MAX_IMAGE_SIDE:
            raise DataError(f"image size must be (height, width) with both from {MIN_IMAGE_SIDE} to {MAX_IMAGE_SIDE} "
                            f"pixels (saliencekit.limits.MAX_IMAGE_SIDE), got {self.size!r}")
        object.__setattr__(self, "size", size)
        if self.resize not in RESIZE_POLICIES:
            raise DataError(f"unknown resize policy {self.resize!r}; valid: {', '.join(RESIZE_POLICIES)}")
        if self.bit_depth is not None and (not isinstance(self.bit_depth, int) or not 8 <= self.bit_depth <= 16):
            raise DataError(f"bit_depth must be an integer from 8 to 16, got {self.bit_depth!r}")
        mean, std = _floats(self.mean, "mean"), _floats(self.std, "std")
        norm = self.normalize
        if standardize is not None:
            if norm is not None and _canonical_normalize(norm) != _canonical_normalize(standardize):
                raise DataError(f"normalize={norm!r} and standardize={standardize!r} disagree; give normalize only")
            norm = standardize
        norm = _canonical_normalize(norm) if norm is not None else ("custom" if mean or std else "per-image")
        if norm == "imagenet":
            if (mean or std) and (mean, std) != self._imagenet():
                raise DataError("normalize='imagenet' fixes mean and std; for other values use normalize='custom'")
            mean, std = self._imagenet()
        elif norm == "custom":
            if mean is None or std is None:
                raise DataError("normalize='custom' needs both mean and std (one value, or one per channel)")
            for what, v in (("mean", mean), ("std", std)):
                if len(v) not in (1, self.in_channels):
                    raise DataError(f"{what} has {len(v)} values; valid: 1 or {self.in_channels} (one per channel)")
            if min(std) <= 0:
                raise DataError(f"std must be > 0, got {std}")
        elif mean is not None or std is not None:
            raise DataError(f"mean/std are only used with normalize='custom' (or 'imagenet'), not {norm!r}")
        object.__setattr__(self, "normalize", norm)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def _imagenet(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.in_channels == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        return (round(sum(IMAGENET_MEAN) / 3, 3),), (round(sum(IMAGENET_STD) / 3, 3),)

    @property
    def in_channels(self) -> int:
        """Number of channels of the produced tensors."""
        return 1 if self.grayscale else 3

    # -- reading and fitting ---------------------------------------------------------------------------------

    def read(self, path: str | Path) -> np.ndarray:
        """The file at full depth, ``(H, W, C)``: ``uint8`` levels or ``float32`` (see the reader)."""
        return read_image(path, channels=self.in_channels, bit_depth=self.bit_depth)

    def fit(self, pixels: np.ndarray) -> np.ndarray:
        """Resize ``(H, W, C)`` pixels (``uint8`` levels or floats) by the policy: float32 ``(C, h, w)``.

        ``uint8`` input is resized in 8 bits (rounded to the nearest level, as Pillow resizes 8-bit images, which
        keeps the numbers of earlier versions) and then divided by 255; float input is resized in float32.
        """
        return _fit(pixels, self.size, self.resize, Image.Resampling.BILINEAR)

    def to_array(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """Colour conversion and fitting only: float32 ``(C, H, W)`` (in [0, 1] unless a float file says otherwise).

        Args:
            image: a PIL image (read with the same rules as files, except that 16-bit colour needs a file:
                Pillow keeps 8 bits of it) or an ``(H, W)`` / ``(H, W, C)`` array (``uint8`` levels or floats).
        """
        from saliencekit.data.reader import image_array

        return self.fit(image_array(image, self.in_channels, self.bit_depth))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the normalisation to a (C, H, W) or (N, C, H, W) tensor of intensities."""
        if self.normalize == "unit":
            return x
        if self.normalize == "per-image":
            dims = tuple(range(x.ndim - 3, x.ndim))
            mean = x.mean(dim=dims, keepdim=True)
            std = x.std(dim=dims, keepdim=True, unbiased=False)
            return (x - mean) / torch.where(std < self.eps, torch.ones_like(std), std)  # constant image -> zeros
        assert self.mean is not None and self.std is not None
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).reshape(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).reshape(shape)
        return (x - mean) / std

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """Turn a PIL image or a pixel array into a float32 tensor of shape (C, H, W)."""
        return self._finish(self.to_array(image), "the image")

    def load(self, path: str | Path) -> torch.Tensor:
        """Read and preprocess one file (errors name the file)."""
        return self.load_with_note(path)[0]

    def load_with_note(self, path: str | Path) -> tuple[torch.Tensor, str | None]:
        """Read and preprocess one file; also :meth:`note` for its size (None when it was only scaled)."""
        pixels = self.read(path)
        h, w = pixels.shape[:2]
        return self._finish(self.fit(pixels), str(path)), self.note(w, h)

    def _finish(self, arr: np.ndarray, where: str) -> torch.Tensor:
        if self.normalize != "per-image" and arr.size and (float(arr.min()) < 0 or float(arr.max()) > 1):
            raise DataError(f"{where} has intensities from {float(arr.min()):g} to {float(arr.max()):g}, outside "
                            f"[0, 1], which normalize={self.normalize!r} assumes; valid: a file scaled to [0, 1], "
                            "or normalize='per-image' (--normalize per-image), which takes any range")
        return self.normalise(torch.from_numpy(arr))

    def note(self, width: int, height: int) -> str | None:
        """What fitting does to an image of ``width`` x ``height`` beyond scaling, or None.

        ``"stretch"`` with another aspect ratio distorts it; ``"crop"`` cuts part of it; ``"pad"`` keeps it whole.

        >>> Preprocessing(size=64, resize="stretch").note(300, 200)
        'stretched from 300x200 (aspect 1.50) to 64x64 (aspect 1.00): shapes in the image and its maps are distorted'
        """
        out_h, out_w = self.size
        src, dst = width / height, out_w / out_h
        if abs(src / dst - 1) < 0.01 or self.resize == "pad":
            return None
        if self.resize == "stretch":
            return (f"stretched from {width}x{height} (aspect {src:.2f}) to {out_w}x{out_h} (aspect {dst:.2f}): "
                    "shapes in the image and its maps are distorted")
        cut = 1 - min(src, dst) / max(src, dst)
        side = "width" if src > dst else "height"
        return f"centre-cropped from {width}x{height} to aspect {dst:.2f}: {cut:.0%} of its {side} is not seen"

    def load_mask(self, path: str | Path | None) -> torch.Tensor:
        """A mask file fitted like the images (nearest neighbour), see :func:`load_mask`."""
        return load_mask(path, self.size, self.resize)

    # -- storage ---------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, stored in checkpoints."""
        return {"grayscale": self.grayscale, "size": list(self.size), "normalize": self.normalize,
                "resize": self.resize, "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std), "bit_depth": self.bit_depth}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`; dicts of earlier versions (``standardize``, no ``resize``) mean their
        behaviour: the given standardisation and ``resize="stretch"``."""
        missing = [k for k in ("grayscale", "size") if k not in d] if isinstance(d, dict) else ["grayscale", "size"]
        if missing:
            raise DataError(f"preprocessing settings {d!r} lack {', '.join(missing)}; valid: Preprocessing.to_dict()")
        norm = d.get("normalize", d.get("standardize", "per-image"))
        return cls(grayscale=bool(d["grayscale"]), size=d["size"], normalize=norm,
                   resize=d.get("resize", "stretch"), mean=d.get("mean"), std=d.get("std"),
                   bit_depth=d.get("bit_depth"))


def _geometry(width: int, height: int, size: tuple[int, int], policy: str
              ) -> tuple[tuple[float, float, float, float], tuple[int, int], tuple[int, int]]:
    """Source box, resized (width, height) and paste offset (x, y) of the fitting policy."""
    out_h, out_w = size
    box = (0.0, 0.0, float(width), float(height))
    if policy == "stretch":
        return box, (out_w, out_h), (0, 0)
    if policy == "pad":
        scale = min(out_w / width, out_h / height)
        new_w, new_h = max(1, min(out_w, round(width * scale))), max(1, min(out_h, round(height * scale)))
        return box, (new_w, new_h), ((out_w - new_w) // 2, (out_h - new_h) // 2)
    scale = max(out_w / width, out_h / height)
    crop_w, crop_h = out_w / scale, out_h / scale
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    return (left, top, left + crop_w, top + crop_h), (out_w, out_h), (0, 0)


def _fit(pixels: np.ndarray, size: tuple[int, int], policy: str, resample: Image.Resampling) -> np.ndarray:
    """(H, W, C) uint8 or float -> float32 (C, h, w); uint8 resized in 8 bits then divided by 255."""
    height, width, channels = pixels.shape
    box, (new_w, new_h), (off_x, off_y) = _geometry(width, height, size, policy)
    out_h, out_w = size
    out = np.zeros((channels, out_h, out_w), np.float32)
    is_bytes = pixels.dtype == np.uint8
    identity = (new_w, new_h) == (width, height) and box == (0.0, 0.0, float(width), float(height))
    for c in range(channels):
        plane = pixels[..., c] if is_bytes else pixels[..., c].astype(np.float32, copy=False)
        if not identity:
            im = Image.fromarray(np.ascontiguousarray(plane))
            plane = np.asarray(im.resize((new_w, new_h), resample, box=box, reducing_gap=None))
        out[c, off_y:off_y + new_h, off_x:off_x + new_w] = plane
    return out / np.float32(255) if is_bytes else out


def load_mask(path: str | Path | None, size: tuple[int, int], resize: str = "stretch") -> torch.Tensor:
    """Read a mask file as a float tensor of shape ``size`` with values in {0, 1}.

    A pixel is in the mask when its grey level is above half the file's range (> 127 of 255). A missing path
    (``None``) gives an all-zero mask (a normal image has no lesion). Fitting follows ``resize`` (the images'
    policy, see :class:`Preprocessing`; padding is outside the mask) with nearest-neighbour interpolation so
    that the mask stays binary.
    """
    h, w = size
    if path is None:
        return torch.zeros(h, w)
    if resize not in RESIZE_POLICIES:
        raise DataError(f"unknown resize policy {resize!r}; valid: {', '.join(RESIZE_POLICIES)}")
    levels = np.asarray(open_image(path).convert("L"))[..., None]
    binary = (levels > 127).astype(np.uint8) * 255
    fitted = _fit(binary, (h, w), resize, Image.Resampling.NEAREST)[0]
    return torch.from_numpy((fitted > 0.5).astype(np.float32))
