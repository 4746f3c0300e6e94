"""Random geometric augmentation of image tensors: rotation, shift, zoom, horizontal flip.

The lesson's training pipeline has augmentation switched off; :meth:`Augmentation.standard`
gives the settings it would use (rotation 10 degrees, shift 0.1, zoom 0.1, horizontal flip).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from saliencekit.errors import InputError


@dataclass(frozen=True)
class Augmentation:
    """A random affine transform (and optional mirror) drawn anew for every call.

    Args:
        rotation: largest rotation in degrees; the angle is uniform in ``[-rotation, rotation]``.
        shift: largest translation as a fraction of the width / height, uniform per axis.
        zoom: largest relative zoom; the scale is uniform in ``[1 - zoom, 1 + zoom]``.
        hflip: mirror left-right with probability 0.5.

    Areas moved in from outside the image are filled with each channel's minimum value
    (the dark background of a radiograph). Random numbers come from torch's generator
    (``torch.manual_seed``, or pass ``generator=``). All zero and no flip (the default) is the
    identity: the input tensor is returned unchanged.

    >>> aug = Augmentation(hflip=True)
    >>> x = torch.arange(4.0).reshape(1, 1, 4)
    >>> y = aug(x, generator=torch.Generator().manual_seed(0))
    >>> y.shape, aug.enabled
    (torch.Size([1, 1, 4]), True)
    """

    rotation: float = 0.0
    shift: float = 0.0
    zoom: float = 0.0
    hflip: bool = False

    def __post_init__(self) -> None:
        for name in ("rotation", "shift", "zoom"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise InputError(f"augmentation {name} must be a number >= 0, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.zoom >= 1.0:
            raise InputError(f"augmentation zoom must be < 1 (scale in [1 - zoom, 1 + zoom]), got {self.zoom!r}")
        if self.shift > 1.0:
            raise InputError(f"augmentation shift is a fraction of the image size, at most 1; got {self.shift!r}")
        object.__setattr__(self, "hflip", bool(self.hflip))

    @classmethod
    def standard(cls) -> Augmentation:
        """The lesson's settings: rotation 10 degrees, shift 0.1, zoom 0.1, horizontal flip."""
        return cls(rotation=10.0, shift=0.1, zoom=0.1, hflip=True)

    @property
    def enabled(self) -> bool:
        """Whether calling this changes anything."""
        return bool(self.rotation or self.shift or self.zoom or self.hflip)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (stored in run directories)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Augmentation:
        """Inverse of :meth:`to_dict`; ``None`` or ``{}`` gives the disabled augmentation."""
        d = d or {}
        unknown = set(d) - {"rotation", "shift", "zoom", "hflip"}
        if unknown:
            raise InputError(f"unknown augmentation setting(s) {sorted(unknown)}; valid: rotation, shift, zoom, hflip")
        return cls(**d)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Transform one image (C, H, W), or each image of a batch (N, C, H, W) independently."""
        if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"augmentation expects a (C, H, W) or (N, C, H, W) tensor, got {shape}")
        if not self.enabled:
            return x
        if x.ndim == 4:
            return torch.stack([self._one(xi, generator) for xi in x])
        return self._one(x, generator)

    def _one(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        u = torch.rand(5, generator=generator).tolist()  # always 5 draws: the stream does not depend on settings
        h, w = x.shape[-2:]
        angle = (2 * u[0] - 1) * self.rotation
        tx = round((2 * u[1] - 1) * self.shift * w)
        ty = round((2 * u[2] - 1) * self.shift * h)
        scale = 1.0 + (2 * u[3] - 1) * self.zoom
        if self.hflip and u[4] < 0.5:
            x = TF.horizontal_flip(x)
        if angle == 0 and tx == 0 and ty == 0 and scale == 1.0:
            return x
        # Work relative to the fill value and pad with zeros: bilinear samples near the border then
        # blend exactly towards the fill (torchvision's own ``fill`` blends twice there).
        fill = x.detach().amin(dim=(-2, -1), keepdim=True)
        y = TF.affine(
            x - fill,
            angle=angle,
            translate=[tx, ty],
            scale=scale,
            shear=[0.0, 0.0],
            interpolation=InterpolationMode.BILINEAR,
            fill=0.0,
        )
        return y + fill
