"""Superpixels: the features LIME and KernelSHAP switch on and off.

A segmentation is an integer label per pixel, (N, H, W), labels ``0 .. M_i - 1`` for image ``i`` (contiguous, in
the order of their first pixel in raster order). Three sources:

- ``"grid"`` (needs nothing): ``grid`` x ``grid`` cells (or ``(rows, columns)``); cell row of pixel row ``y`` is
  ``floor(y * rows / H)`` (so the cells differ in size by at most one pixel);
- ``"slic"``: SLIC superpixels (Achanta et al. 2012) from scikit-image, ``pip install saliencekit[superpixels]``:
  ``skimage.segmentation.slic`` on the image min-max scaled to [0, 1] (channels last), with ``n_segments``,
  ``compactness`` and ``sigma``; SLIC may return fewer segments than asked for;
- a tensor of labels, (H, W) for every image or (N, H, W), any integers (relabelled as above).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np
import torch

from saliencekit.errors import InputError
from saliencekit.methods.normalize import minmax_scale

SEGMENTATIONS = ("grid", "slic")
Segments = str | torch.Tensor


def slic_available() -> bool:
    """Whether scikit-image (the ``superpixels`` extra) is installed."""
    return importlib.util.find_spec("skimage") is not None


def check_segments(segments: object, grid: object = 8) -> tuple[Segments, tuple[int, int]]:
    """Validate a ``segments`` option and its ``grid``; returns them (the grid as (rows, columns)).

    Raises:
        InputError: an unknown name, a non-integer tensor, a bad grid, or "slic" without scikit-image (the message
            says ``pip install saliencekit[superpixels]``).
    """
    if isinstance(segments, torch.Tensor):
        if segments.is_floating_point() or segments.is_complex() or segments.dtype == torch.bool \
                or segments.ndim not in (2, 3):
            raise InputError(f"a segments tensor must hold integer labels of shape (H, W) or (N, H, W), got "
                             f"{tuple(segments.shape)} {segments.dtype}")
    elif segments not in SEGMENTATIONS:
        raise InputError(f"segments must be one of {', '.join(SEGMENTATIONS)} or an integer tensor of labels, "
                         f"got {segments!r}")
    elif segments == "slic" and not slic_available():
        raise InputError("segments='slic' needs scikit-image: pip install saliencekit[superpixels] "
                         "(or use segments='grid', which needs nothing)")
    pair = (grid, grid) if isinstance(grid, int) else tuple(grid) if isinstance(grid, Sequence) else None
    if pair is None or len(pair) != 2 or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1
                                                 for g in pair):
        raise InputError(f"grid must be a positive int or a pair of positive ints (rows, columns), got {grid!r}")
    return segments, pair  # type: ignore[return-value]


def relabel(labels: torch.Tensor) -> torch.Tensor:
    """Labels ``0 .. M - 1`` of one image (H, W), numbered in the order of their first pixel in raster order.

    >>> relabel(torch.tensor([[7, 7, 3], [9, 3, 3]])).tolist()
    [[0, 0, 1], [2, 1, 1]]
    """
    flat = labels.flatten()
    uniq, inverse = torch.unique(flat, return_inverse=True)
    first = torch.full((uniq.numel(),), flat.numel(), dtype=torch.long, device=flat.device)
    first.scatter_reduce_(0, inverse, torch.arange(flat.numel(), device=flat.device), reduce="amin")
    order = torch.empty_like(first)
    order[first.argsort()] = torch.arange(uniq.numel(), device=flat.device)
    return order[inverse].view(labels.shape)


def grid_segments(height: int, width: int, grid: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """The (H, W) labels of a ``rows x columns`` grid (relabelled, so that a grid finer than the image still gives
    contiguous labels).

    >>> grid_segments(4, 6, (2, 3)).tolist()
    [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5], [3, 3, 4, 4, 5, 5]]
    """
    rows, cols = grid
    r = torch.arange(height, device=device) * rows // height
    c = torch.arange(width, device=device) * cols // width
    return relabel(r[:, None] * cols + c[None, :])


def slic_segments(image: torch.Tensor, n_segments: int, compactness: float, sigma: float) -> torch.Tensor:
    """SLIC labels (H, W) of one image (C, H, W), computed by scikit-image on the CPU."""
    try:
        from skimage.segmentation import slic
    except ImportError as exc:  # pragma: no cover - guarded by check_segments
        raise InputError("segments='slic' needs scikit-image: pip install saliencekit[superpixels]") from exc
    scaled = minmax_scale(image.detach().to("cpu", torch.float64), start_dim=0).numpy()
    if scaled.shape[0] == 1:
        arr, axis = scaled[0], None
    else:
        arr, axis = np.moveaxis(scaled, 0, -1), -1
    labels = slic(arr, n_segments=n_segments, compactness=compactness, sigma=sigma, start_label=0,
                  channel_axis=axis, enforce_connectivity=True)
    return relabel(torch.from_numpy(np.asarray(labels, dtype=np.int64))).to(image.device)


def segment(inputs: torch.Tensor, segments: Segments = "grid", grid: tuple[int, int] = (8, 8), n_segments: int = 50,
            compactness: float = 0.1, sigma: float = 1.0) -> torch.Tensor:
    """Superpixel labels (N, H, W) of a batch (see the module docstring), on the inputs' device.

    Raises:
        InputError: a labels tensor whose shape does not match the images.
    """
    n, _c, h, w = inputs.shape
    if isinstance(segments, torch.Tensor):
        labels = segments.to(inputs.device)
        if labels.ndim == 2:
            labels = labels.expand(n, h, w) if labels.shape == (h, w) else labels[None]
        if tuple(labels.shape) != (n, h, w):
            raise InputError(f"segments of shape {tuple(segments.shape)} do not match the images (N, H, W) = "
                             f"{(n, h, w)}: give (H, W) labels for every image or (N, H, W)")
        return torch.stack([relabel(lab.long()) for lab in labels])
    if segments == "grid":
        return grid_segments(h, w, grid, inputs.device).expand(n, h, w).clone()
    return torch.stack([slic_segments(x, n_segments, compactness, sigma) for x in inputs])


__all__ = ["SEGMENTATIONS", "check_segments", "grid_segments", "relabel", "segment", "slic_available",
           "slic_segments"]
