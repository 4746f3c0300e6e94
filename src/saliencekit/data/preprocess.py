"""Image loading and the lesson's preprocessing: greyscale, resize, per-image standardisation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from saliencekit.errors import DataError

Standardize = Literal["per_image", "none"]
_STANDARDIZE = ("per_image", "none")


def open_image(path: str | Path) -> Image.Image:
    """Open an image file and decode it fully, or raise :class:`DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"cannot read image {path}: {exc.__class__.__name__}: {exc} "
            "(valid: a readable PNG, JPEG, BMP or TIFF file; use --skip-bad to skip such files)"
        ) from exc


@dataclass(frozen=True)
class Preprocessing:
    """How a file becomes a model input.

    Args:
        grayscale: convert to one channel (the lesson's choice); ``False`` keeps RGB (3 channels).
        size: output ``(height, width)``; images are resized with antialiased bilinear filtering.
        standardize: ``"per_image"`` subtracts each image's mean and divides by its std
            (the lesson's choice); ``"none"`` keeps values in [0, 1].

    >>> p = Preprocessing(size=(64, 64))
    >>> x = p(Image.new("L", (128, 128), 200))
    >>> tuple(x.shape), p.in_channels
    ((1, 64, 64), 1)
    """

    grayscale: bool = True
    size: tuple[int, int] = (256, 256)
    standardize: Standardize = "per_image"
    eps: float = field(default=1e-6, repr=False)

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in (self.size if isinstance(self.size, list | tuple) else (self.size, self.size)))
        if len(size) != 2 or min(size) < 8:
            raise DataError(f"image size must be (height, width) with both >= 8, got {self.size!r}")
        object.__setattr__(self, "size", size)
        if self.standardize not in _STANDARDIZE:
            raise DataError(f"unknown standardisation {self.standardize!r}; valid: {', '.join(_STANDARDIZE)}")

    @property
    def in_channels(self) -> int:
        """Number of channels of the produced tensors."""
        return 1 if self.grayscale else 3

    def to_array(self, image: Image.Image) -> np.ndarray:
        """Colour conversion and resize only: float32 array in [0, 1], shape (C, H, W)."""
        image = image.convert("L" if self.grayscale else "RGB")
        h, w = self.size
        if image.size != (w, h):
            image = image.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None)
        arr = np.asarray(image, dtype=np.float32) / 255.0
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the standardisation to a (C, H, W) or (N, C, H, W) tensor in [0, 1]."""
        if self.standardize == "none":
            return x
        dims = tuple(range(x.ndim - 3, x.ndim))
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True, unbiased=False)
        return (x - mean) / torch.where(std < self.eps, torch.ones_like(std), std)  # constant image -> zeros

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Turn a PIL image into a float32 tensor of shape (C, H, W)."""
        return self.standardise(torch.from_numpy(self.to_array(image)))

    def load(self, path: str | Path) -> torch.Tensor:
        """Read and preprocess one file (errors name the file)."""
        return self(open_image(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, stored in checkpoints."""
        d = asdict(self)
        d["size"] = list(self.size)
        d.pop("eps")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`."""
        return cls(grayscale=bool(d["grayscale"]), size=tuple(d["size"]), standardize=d["standardize"])


def load_mask(path: str | Path | None, size: tuple[int, int]) -> torch.Tensor:
    """Read a mask file as a float tensor of shape ``size`` with values in {0, 1}.

    A missing path (``None``) gives an all-zero mask (a normal image has no lesion).
    Resizing uses nearest-neighbour interpolation so the mask stays binary.
    """
    h, w = size
    if path is None:
        return torch.zeros(h, w)
    image = open_image(path).convert("L")
    if image.size != (w, h):
        image = image.resize((w, h), Image.Resampling.NEAREST)
    return torch.from_numpy((np.asarray(image) > 127).astype(np.float32))
