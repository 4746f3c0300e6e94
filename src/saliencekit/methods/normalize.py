"""Normalisation of maps for display: a separate, named step, never baked into a method."""

from __future__ import annotations

import torch

from saliencekit.errors import InputError

NORMALIZATIONS = ("minmax", "abs", "percentile", "signed")


def normalize(maps: torch.Tensor, how: str = "minmax", percentile: float = 99.0, eps: float = 1e-12) -> torch.Tensor:
    """Normalise each map of (N, H, W) independently.

    Args:
        maps: raw maps.
        how: ``"minmax"`` -> [0, 1]; ``"abs"`` -> |a| / max|a| in [0, 1]; ``"percentile"`` -> |a| clipped at its
            ``percentile`` and scaled to [0, 1] (Smilkov's display); ``"signed"`` -> a / max|a| in [-1, 1].
        percentile: the clipping percentile for ``"percentile"``.
        eps: a constant map becomes zeros.

    >>> normalize(torch.tensor([[[1.0, 3.0]]])).tolist()
    [[[0.0, 1.0]]]
    """
    if maps.ndim != 3:
        raise InputError(f"maps must have shape (N, H, W), got {tuple(maps.shape)}")
    flat = maps.flatten(1).float()
    if how == "minmax":
        lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
        out = (flat - lo) / (hi - lo).clamp_min(eps)
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
