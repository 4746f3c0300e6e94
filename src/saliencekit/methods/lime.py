"""LIME (Ribeiro, Singh & Guestrin 2016) on superpixels.

Coalitions ``z`` (one bit per superpixel, 1 = kept) are drawn per image as ``torch.rand((samples, M)) < 0.5`` from a
generator seeded with ``seed`` (the same draws for every image with ``M`` superpixels). Each is scored with one forward
pass of ``x * z[L] + fill * (1 - z[L])`` and weighted by LIME's kernel on the cosine distance between ``z`` and the
all-ones vector: ``d(z) = 1 - sqrt(|z| / M)`` (1 for the empty coalition), ``pi(z) = sqrt(exp(-d^2 / width^2))``
(``kernel_width`` 0.25), as the ``lime`` package's image explainer. A weighted ridge regression (``alpha`` 1, the
intercept unpenalised: scikit-learn's ``Ridge`` with ``sample_weight``) of the scores on ``z`` gives one coefficient
per superpixel: the map paints each superpixel with its coefficient.

Differences: the ``lime`` package replaces switched-off superpixels by their mean colour by default
(``hide_color=None``; here ``fill``, default 0 as captum's baseline), always includes the unperturbed image as its
first sample, and segments with quickshift; captum's ``Lime`` defaults to a Lasso (``alpha=0.01``) and an exponential
kernel on the cosine distance in input space, and draws with ``torch.bernoulli`` on the global generator. With the
same coalitions, kernel and ridge, captum's ``Lime`` gives the same coefficients (a test).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from saliencekit.methods._batching import BatchSize
from saliencekit.methods._coalitions import CoalitionMethod, weighted_ridge
from saliencekit.methods._option_checks import check_number
from saliencekit.methods._precision import Precision
from saliencekit.methods.registry import register_method
from saliencekit.methods.superpixels import Segments


def lime_kernel(z: torch.Tensor, width: float) -> torch.Tensor:
    """LIME's weights of coalitions ``z`` (S, M): ``sqrt(exp(-d^2 / width^2))``, ``d`` the cosine distance to the
    all-ones vector (1 for the empty coalition).

    >>> lime_kernel(torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]]), 0.25).tolist()
    [1.0, 0.13533528323661267]
    """
    m = z.shape[1]
    k = z.double().sum(1)
    d = torch.where(k > 0, 1.0 - torch.sqrt(k / m), torch.ones_like(k))
    return torch.sqrt(torch.exp(-d.pow(2) / width**2))


@register_method("lime")
class Lime(CoalitionMethod):
    """LIME on superpixels (Ribeiro et al. 2016): a weighted ridge regression of the scores of random coalitions.

    ``extras``: ``segments`` (N, H, W) labels, ``coefficients`` (N, M) per superpixel (NaN beyond an image's M),
    ``intercept``, ``fit_r2`` (the weighted R^2 of the surrogate, LIME's ``score``: how well the linear model
    reproduces the scores).

    Args:
        model: the classifier (never modified).
        segments: "grid" (default), "slic" (``pip install saliencekit[superpixels]``) or integer labels.
        grid: rows and columns of the grid (default 8).
        n_segments: SLIC's target number of superpixels (default 50).
        compactness: SLIC's compactness on the image scaled to [0, 1] (default 0.1).
        samples: coalitions per image (default 500).
        kernel_width: width of LIME's kernel (default 0.25).
        alpha: ridge penalty (default 1.0, LIME's; 0: weighted least squares).
        seed: seed of the coalitions; None draws a fresh seed.
        fill: "zero" (default), "mean", "black" or a number.
        score: "logit" (default) or "probability" (the ``lime`` package explains probabilities).
        batch_size: coalitions per forward pass, or "auto".
        precision: "fp32", "bf16" or "fp16".
        progress: show a progress bar.

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(128, 2))
    >>> e = Lime(net, grid=4, samples=40).attribute(torch.randn(2, 1, 8, 8))
    >>> e.maps.shape, e.extras["coefficients"].shape
    (torch.Size([2, 8, 8]), torch.Size([2, 16]))
    """

    description = "LIME: weighted ridge regression of the scores of random superpixel coalitions (Ribeiro 2016)."

    def __init__(
        self,
        model: nn.Module,
        *,
        segments: Segments = "grid",
        grid: int | tuple[int, int] = 8,
        n_segments: int = 50,
        compactness: float = 0.1,
        samples: int = 500,
        kernel_width: float = 0.25,
        alpha: float = 1.0,
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
        self.kernel_width = check_number(kernel_width, "kernel_width", strict=True)
        self.alpha = check_number(alpha, "alpha")
        self._store_params(kernel_width=kernel_width, alpha=alpha)

    def coalitions(self, m: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.rand((self.samples, m), generator=generator) < 0.5
        return z, lime_kernel(z, self.kernel_width)

    def fit(self, z, y, weights, full, empty):  # type: ignore[no-untyped-def]
        coef, intercept, r2 = weighted_ridge(z, y, weights, self.alpha)
        return coef, intercept, {"fit_r2": r2 if math.isfinite(r2) else float("nan")}


__all__ = ["Lime", "lime_kernel"]
