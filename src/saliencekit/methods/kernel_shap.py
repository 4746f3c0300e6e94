"""KernelSHAP (Lundberg & Lee 2017, Theorem 2) on superpixels.

Shapley values ``phi`` of the superpixels for the game ``v(z) = S(x * z[L] + fill * (1 - z[L]))``: the weighted least
squares fit of ``v(z) ~ phi_0 + z . phi`` over coalitions with the Shapley kernel
``pi(z) = (M - 1) / (C(M, |z|) |z| (M - |z|))``, subject to ``phi_0 = v(0)`` (the all-fill image) and
``sum(phi) = v(1) - v(0)`` (efficiency), which the fit meets exactly (the last coefficient is eliminated, as the
``shap`` package does).

Coalitions, per image from a generator seeded with ``seed``:

- when ``samples >= 2^M - 2`` every coalition but the empty and the full one, weighted by ``pi``: the fit then gives
  the exact Shapley values of ``v``;
- otherwise ``samples`` coalitions drawn with probability proportional to ``pi`` and weighted 1 (as captum): the
  size ``k = 1 + torch.multinomial(p, samples, replacement=True)`` with ``p_k`` proportional to ``(M - 1) / (k (M -
  k))``, then a uniform subset of that size (the ``k`` smallest of ``torch.rand((samples, M))`` per row).

Differences from captum's ``KernelShap``: captum enforces the two constraints approximately (the empty and full
coalitions get weight 1e6 in an unconstrained linear regression) and draws its coalitions from the global generator
(``torch.randn`` thresholded at its k-th value); with the same coalitions the coefficients agree to that
approximation (a test). The ``shap`` package adds a paired sampling of complements and an L1 feature selection.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from saliencekit.methods._batching import BatchSize
from saliencekit.methods._coalitions import CoalitionMethod
from saliencekit.methods._precision import Precision
from saliencekit.methods.registry import register_method
from saliencekit.methods.superpixels import Segments


def shapley_kernel(m: int, k: torch.Tensor) -> torch.Tensor:
    """``(m - 1) / (C(m, k) k (m - k))`` for coalition sizes ``0 < k < m``.

    >>> shapley_kernel(4, torch.tensor([1, 2, 3])).tolist()
    [0.25, 0.125, 0.25]
    """
    comb = torch.tensor([float(math.comb(m, int(v))) for v in k.tolist()], dtype=torch.float64)
    k = k.double()
    return (m - 1) / (comb * k * (m - k))


def constrained_shapley_fit(z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, full: float, empty: float
                            ) -> torch.Tensor:
    """``phi`` (m,) minimising ``sum_s w_s (y_s - empty - z_s . phi)^2`` subject to ``sum(phi) = full - empty``.

    The constraint eliminates the last coefficient: ``z_s . phi = sum_{j<m} (z_sj - z_sm) phi_j + z_sm (full -
    empty)``; the rest is weighted least squares (minimum norm where the coalitions do not determine it).
    """
    m = z.shape[1]
    delta = full - empty
    if m == 1 or z.shape[0] == 0:
        return torch.full((m,), delta / m, dtype=torch.float64)
    last = z[:, -1]
    x = z[:, :-1] - last[:, None]
    target = y - empty - last * delta
    sw = weights.sqrt()
    head = torch.linalg.lstsq(sw[:, None] * x, (sw * target)[:, None], driver="gelsd").solution[:, 0]
    return torch.cat([head, (delta - head.sum()).view(1)])


@register_method("kernel_shap")
class KernelShap(CoalitionMethod):
    """KernelSHAP on superpixels (Lundberg & Lee 2017): Shapley values of the superpixels from a constrained
    Shapley-kernel-weighted regression (exact Shapley values when ``samples >= 2^M - 2``).

    The map paints each superpixel with its value; the values sum to ``S(x) - S(all fill)`` exactly. ``extras``:
    ``segments``, ``coefficients`` (the values, NaN beyond an image's M), ``intercept`` (``S`` of the all-fill
    image, the base value), ``exact`` (1 where every coalition was scored).

    Args:
        model: the classifier (never modified).
        segments: "grid" (default), "slic" (``pip install saliencekit[superpixels]``) or integer labels.
        grid: rows and columns of the grid (default 8).
        n_segments: SLIC's target number of superpixels (default 50).
        compactness: SLIC's compactness on the image scaled to [0, 1] (default 0.1).
        samples: coalitions per image besides the empty one (default 500).
        seed: seed of the coalitions; None draws a fresh seed.
        fill: "zero" (default), "mean", "black" or a number.
        score: "logit" (default) or "probability".
        batch_size: coalitions per forward pass, or "auto".
        precision: "fp32", "bf16" or "fp16".
        progress: show a progress bar.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
    >>> e = KernelShap(net, grid=2).attribute(torch.randn(1, 1, 8, 8))  # 4 superpixels: all 14 coalitions
    >>> bool(e.extras["exact"][0]), e.extras["coefficients"].shape
    (True, torch.Size([1, 4]))
    """

    description = "KernelSHAP: Shapley values of superpixels from a Shapley-kernel weighted regression (Lundberg 2017)."
    needs_empty = True

    def __init__(
        self,
        model: nn.Module,
        *,
        segments: Segments = "grid",
        grid: int | tuple[int, int] = 8,
        n_segments: int = 50,
        compactness: float = 0.1,
        samples: int = 500,
        seed: int | None = 0,
        fill: str | float = "zero",
        score: str = "logit",
        batch_size: BatchSize = "auto",
        precision: Precision = "fp32",
        progress: bool = False,
    ):
        super().__init__(model, segments=segments, grid=grid, n_segments=n_segments, compactness=compactness,
                         samples=samples, seed=seed, fill=fill, score=score, batch_size=batch_size,
                         precision=precision, progress=progress)

    def coalitions(self, m: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if m < 2:
            return torch.zeros((0, m), dtype=torch.bool), torch.zeros(0, dtype=torch.float64)
        if self.samples >= 2**m - 2:
            z = torch.tensor([[bool(c >> j & 1) for j in range(m)] for c in range(1, 2**m - 1)], dtype=torch.bool)
            return z, shapley_kernel(m, z.sum(1))
        sizes = torch.arange(1, m, dtype=torch.float64)
        p = (m - 1) / (sizes * (m - sizes))
        k = torch.multinomial(p / p.sum(), self.samples, replacement=True, generator=generator) + 1
        ranks = torch.rand((self.samples, m), generator=generator).argsort(1).argsort(1)
        return ranks < k[:, None], torch.ones(self.samples, dtype=torch.float64)

    def fit(self, z, y, weights, full, empty):  # type: ignore[no-untyped-def]
        m = z.shape[1]
        exact = float(m < 2 or self.samples >= 2**m - 2)
        return constrained_shapley_fit(z, y, weights, full, empty), empty, {"exact": exact}


def exact_coalition_count(m: int) -> int:
    """Coalitions KernelSHAP scores for the exact Shapley values of ``m`` superpixels (all but empty and full)."""
    return max(2**m - 2, 0)


__all__ = ["KernelShap", "constrained_shapley_fit", "exact_coalition_count", "shapley_kernel"]
