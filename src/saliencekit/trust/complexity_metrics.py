"""Complexity and robustness of saliency maps: sparseness (Gini), complexity (entropy), max-sensitivity.

>>> import torch
>>> one_hot = torch.zeros(1, 4, 4)
>>> one_hot[0, 1, 2] = 1.0
>>> sparseness(one_hot)  # (n - 1) / n for n = 16
tensor([0.9375], dtype=torch.float64)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from saliencekit.errors import InputError
from saliencekit.trust._ops import as_inputs, as_maps, make_generator, rand


def _abs_rows(maps: Tensor) -> Tensor:
    maps = as_maps(maps)
    return maps.reshape(maps.shape[0], -1).to(torch.float64).abs()


def sparseness(maps: Tensor) -> Tensor:
    """Gini index of ``|map|`` (Hurley & Rickard 2009, as used by Chalasani et al. 2020).

    With the n absolute values sorted ascending, ``c_1 <= ... <= c_n``:
    ``G = 1 - 2 * sum_k (c_k / sum(c)) * (n - k + 1/2) / n``. A one-hot map scores ``(n - 1) / n``, a constant
    map 0; higher means sparser.

    Args:
        maps: (N, H, W).

    Returns:
        (N,) float64 in [0, 1); NaN for an all-zero map.
    """
    c = torch.sort(_abs_rows(maps), dim=1).values
    n = c.shape[1]
    total = c.sum(dim=1)
    k = torch.arange(1, n + 1, dtype=torch.float64, device=c.device)
    weights = (n - k + 0.5) / n
    g = 1 - 2 * (c * weights).sum(dim=1) / torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, g, torch.full_like(g, math.nan))


def complexity(maps: Tensor) -> Tensor:
    """Complexity (Bhatt et al. 2020): Shannon entropy (natural log) of ``p = |map| / sum(|map|)``.

    ``0 * log 0`` counts as 0. A one-hot map scores 0, a constant map ``log(n)``; lower means simpler.

    Args:
        maps: (N, H, W).

    Returns:
        (N,) float64; NaN for an all-zero map.
    """
    a = _abs_rows(maps)
    total = a.sum(dim=1, keepdim=True)
    p = a / torch.where(total > 0, total, torch.ones_like(total))
    h = -torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p)).sum(dim=1)
    return torch.where(total[:, 0] > 0, h, torch.full_like(h, math.nan))


def max_sensitivity(explain_fn: Callable[[Tensor], Tensor], inputs: Tensor, radius: float = 0.02, samples: int = 10,
                    generator: torch.Generator | int | None = None, base_maps: Tensor | None = None) -> Tensor:
    """Max-sensitivity (Yeh et al. 2019): largest relative change of the map under small uniform input noise.

    For each of ``samples`` draws ``d ~ U[-r, r]`` per input element, with ``r = radius * (max(x) - min(x))`` per
    image, the value is ``||map(x + d) - map(x)|| / ||map(x)||`` (Frobenius norms); the maximum over draws is
    returned. Lower means more robust.

    Args:
        explain_fn: maps a batch of inputs (N, C, H, W) to maps (N, H, W) (or (N, 1, H, W)). It is called
            ``samples + 1`` times with batches of N (``samples`` times when ``base_maps`` is given).
        inputs: (N, C, H, W).
        radius: noise bound relative to each input's value range.
        samples: number of noise draws.
        generator: torch.Generator or seed (None: seed 0); the noise is drawn on the generator's device, so a CPU
            generator gives the same noise for CPU and CUDA inputs.
        base_maps: ``explain_fn(inputs)`` when already computed (saves one call).

    Returns:
        (N,) float64 on the inputs' device; NaN where ``map(x)`` is all zero.
    """
    inputs = as_inputs(inputs)
    if samples < 1:
        raise InputError(f"max_sensitivity needs samples >= 1, got {samples}")
    if radius < 0:
        raise InputError(f"max_sensitivity radius must be >= 0, got {radius}")
    gen = make_generator(generator)
    n = inputs.shape[0]
    flat = inputs.reshape(n, -1)
    span = (flat.max(dim=1).values - flat.min(dim=1).values).view(n, 1, 1, 1)
    dtype = inputs.dtype if inputs.is_floating_point() else torch.float32
    base = as_maps(explain_fn(inputs) if base_maps is None else base_maps,
                   "explain_fn output").reshape(n, -1).to(torch.float64).to(inputs.device)
    base_norm = base.norm(dim=1)
    worst = torch.zeros(n, dtype=torch.float64, device=base.device)
    for _ in range(samples):
        d = (2 * rand(tuple(inputs.shape), gen, inputs.device, dtype) - 1) * (radius * span)
        maps = as_maps(explain_fn(inputs + d), "explain_fn output").reshape(n, -1).to(torch.float64)
        worst = torch.maximum(worst, (maps - base).norm(dim=1))
    out = worst / torch.where(base_norm > 0, base_norm, torch.ones_like(base_norm))
    return torch.where(base_norm > 0, out, torch.full_like(out, math.nan))
