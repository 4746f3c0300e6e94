"""Normalisation of maps for display: a separate, named step, never baked into a method."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from saliencekit.errors import InputError

if TYPE_CHECKING:
    from saliencekit.methods.base import Method

NORMALIZATIONS = ("minmax", "abs", "percentile", "signed")

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


def _minmax_bounds(x: torch.Tensor, start_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and span (1 where the span is 0) of every slice ``x[i, j, ...]`` over the dims from ``start_dim``,
    shaped to broadcast against ``x``."""
    flat = x.flatten(start_dim)
    lo = flat.amin(-1)
    span = flat.amax(-1) - lo
    shape = (*x.shape[:start_dim], *([1] * (x.ndim - start_dim)))
    return lo.view(shape), torch.where(span > 0, span, torch.ones_like(span)).view(shape)


def minmax_scale(x: ArrayT, start_dim: int = 1) -> ArrayT:
    """Scale by minimum and maximum to [0, 1]: the one min-max normalisation of maps and images.

    Every slice over the dimensions from ``start_dim`` on is scaled on its own (``start_dim=1``: each map of a
    batch; ``0``: the whole array, e.g. one image). A constant slice becomes zeros; a slice holding NaN stays NaN
    (a broken map is never shown as an empty one). The dtype is kept (integers become floats); a NumPy array
    gives a NumPy array.

    >>> minmax_scale(torch.tensor([[1.0, 3.0], [2.0, 2.0]])).tolist()
    [[0.0, 1.0], [0.0, 0.0]]
    >>> minmax_scale(np.array([[2.0, 4.0], [6.0, 10.0]]), start_dim=0).tolist()
    [[0.0, 0.25], [0.5, 1.0]]
    """
    if isinstance(x, np.ndarray):
        return minmax_scale(torch.from_numpy(np.ascontiguousarray(x)), start_dim).numpy()
    lo, span = _minmax_bounds(x, start_dim)
    return (x - lo) / span


def minmax_scale_(x: torch.Tensor, start_dim: int = 1) -> torch.Tensor:
    """:func:`minmax_scale` in place (``x`` must be floating point); returns ``x``."""
    lo, span = _minmax_bounds(x, start_dim)
    return x.sub_(lo).div_(span)


def normalize(maps: torch.Tensor, how: str = "minmax", percentile: float = 99.0, eps: float = 1e-12) -> torch.Tensor:
    """Normalise each map of (N, H, W) independently.

    Args:
        maps: raw maps.
        how: ``"minmax"`` -> [0, 1]; ``"abs"`` -> |a| / max|a| in [0, 1]; ``"percentile"`` -> |a| clipped at its
            ``percentile`` and scaled to [0, 1] (Smilkov's display); ``"signed"`` -> a / max|a| in [-1, 1].
        percentile: the clipping percentile for ``"percentile"``.
        eps: a map that is zero everywhere stays zeros (``"abs"``, ``"signed"``, ``"percentile"``); for
            ``"minmax"`` every constant map becomes zeros.

    >>> normalize(torch.tensor([[[1.0, 3.0]]])).tolist()
    [[[0.0, 1.0]]]
    """
    if maps.ndim != 3:
        raise InputError(f"maps must have shape (N, H, W), got {tuple(maps.shape)}")
    flat = maps.flatten(1).float()
    if how == "minmax":
        out = minmax_scale(flat)
    elif how in ("abs", "signed"):
        scale = flat.abs().amax(1, keepdim=True).clamp_min(eps)
        out = (flat.abs() if how == "abs" else flat) / scale
    elif how == "percentile":
        a = flat.abs()
        hi = torch.quantile(a, percentile / 100.0, dim=1, keepdim=True).clamp_min(eps)
        out = (a / hi).clamp(max=1.0)
    else:
        raise InputError(f"unknown normalisation {how!r}; valid: {', '.join(NORMALIZATIONS)}")
    return out.view_as(maps)


def display_normalization(method: str | Method | type[Method], how: str = "auto") -> str:
    """The normalisation the CLI and the report use for a method's maps.

    ``"auto"`` is the method class's declared :attr:`~saliencekit.methods.Method.display_normalization`
    ("percentile" for the gradient and backprop families' signed pixel-level maps, "minmax" for CAMs and
    perturbation maps); any other value is checked and returned as given.

    Args:
        method: a registered method name, a method class or a method instance.
        how: ``"auto"`` or one of ``NORMALIZATIONS``.

    Raises:
        InputError: an unknown normalisation.
        UnknownNameError: ``"auto"`` with a name that is not registered.

    >>> display_normalization("gradcam"), display_normalization("smoothgrad"), display_normalization("rise", "abs")
    ('minmax', 'percentile', 'abs')
    """
    if how == "auto":
        if isinstance(method, str):
            from saliencekit.methods.registry import method_class

            method = method_class(method)
        return method.display_normalization
    if how not in NORMALIZATIONS:
        raise InputError(f"unknown normalisation {how!r}; valid: auto, {', '.join(NORMALIZATIONS)}")
    return how
