"""Literal references for the SHAP family: expected gradients / GradientSHAP, and the Shapley values KernelSHAP
estimates.

Expected gradients: one image and one draw at a time, ``(x~ - x') * dS/dx(x' + a (x~ - x'))`` averaged over the
draws, the gradient by autograd on the single image. The draws are the methods' documented convention
(docs/methods.md), reproduced here from the generator, or given explicitly (to compare with captum's draws).
"""

from __future__ import annotations

import torch
from torch import nn

from reference.ref_gradient import ref_score


def ref_eg_draws(x: torch.Tensor, references: torch.Tensor | None, samples: int, seed: int,
                 noise: float = 0.0) -> tuple[list[list[torch.Tensor]], list[float], list[list[torch.Tensor]]]:
    """Baselines ``x'_ij``, path points ``a_j`` and noisy inputs ``x~_ij`` per image ``i`` and draw ``j``, drawn as
    documented: ``randint(K, (samples,))`` (or ``rand((samples, C, H, W))`` for uniform baselines), ``rand(samples)``,
    then ``randn((samples, C, H, W))`` when ``noise > 0``."""
    g = torch.Generator().manual_seed(seed)
    shape = (samples, *x.shape[1:])
    if references is None:
        u = torch.rand(shape, generator=g, dtype=x.dtype)
    else:
        picks = torch.randint(references.shape[0], (samples,), generator=g)
    alpha = torch.rand(samples, generator=g, dtype=x.dtype)
    eps = torch.randn(shape, generator=g, dtype=x.dtype) if noise > 0 else None
    bases, noisy = [], []
    for i in range(x.shape[0]):
        lo, hi = float(x[i].min()), float(x[i].max())
        bases.append([lo + u[j] * (hi - lo) if references is None else references[int(picks[j])]
                      for j in range(samples)])
        noisy.append([x[i] + noise * (hi - lo) * eps[j] if eps is not None else x[i] for j in range(samples)])
    return bases, [float(a) for a in alpha], noisy


def ref_expected_gradients(model: nn.Module, classes: list[int], bases: list[list[torch.Tensor]], alpha: list[float],
                           noisy: list[list[torch.Tensor]]) -> torch.Tensor:
    """``mean_j (x~_ij - x'_ij) * dS/dx(x'_ij + a_j (x~_ij - x'_ij))`` per image, from explicit draws."""
    out = []
    for i, cls in enumerate(classes):
        total = torch.zeros_like(noisy[i][0])
        for j, a in enumerate(alpha):
            diff = noisy[i][j] - bases[i][j]
            point = (bases[i][j] + a * diff)[None].detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(ref_score(model, point, cls), point)
            total += diff * g[0]
        out.append(total / len(alpha))
    return torch.stack(out)


# ------------------------------------------------------------------------------------ superpixel coalitions


def ref_coalition_score(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, z: list[bool], fill: float,
                        cls: int) -> float:
    """``S`` of one image (1, C, H, W) with the superpixels where ``z`` is False replaced by ``fill``, pixel by
    pixel."""
    y = x.clone()
    _n, c, h, w = x.shape
    for i in range(h):
        for j in range(w):
            if not z[int(labels[i, j])]:
                for k in range(c):
                    y[0, k, i, j] = fill
    with torch.no_grad():
        return float(ref_score(model, y, cls))


def ref_shapley_values(v, m: int) -> list[float]:  # type: ignore[no-untyped-def]
    """The Shapley values of the game ``v`` (a function of a tuple of m bools), by the formula:
    ``phi_i = sum_{S not containing i} |S|! (m - |S| - 1)! / m! (v(S + i) - v(S))``."""
    import itertools
    import math

    phi = []
    for i in range(m):
        total = 0.0
        others = [j for j in range(m) if j != i]
        for size in range(m):
            for subset in itertools.combinations(others, size):
                without = tuple(j in subset for j in range(m))
                with_i = tuple(j in subset or j == i for j in range(m))
                weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
                total += weight * (v(with_i) - v(without))
        phi.append(total)
    return phi


def ref_lime_draws(m: int, samples: int, seed: int, width: float) -> tuple[torch.Tensor, list[float]]:
    """LIME's documented draws ``rand((samples, m)) < 0.5`` and its kernel ``sqrt(exp(-d^2 / width^2))``,
    ``d = 1 - cos(z, 1)`` (1 for the empty coalition), written out."""
    import math

    z = torch.rand((samples, m), generator=torch.Generator().manual_seed(seed)) < 0.5
    weights = []
    for row in z.tolist():
        k = sum(row)
        d = 1.0 - k / (math.sqrt(k) * math.sqrt(m)) if k else 1.0
        weights.append(math.sqrt(math.exp(-(d**2) / width**2)))
    return z, weights


def ref_ridge(z: list[list[float]], y: list[float], weights: list[float], alpha: float) -> tuple[list[float], float]:
    """``argmin sum_s w_s (y_s - c - z_s . b)^2 + alpha |b|^2`` from the normal equations of the augmented design
    ``[1, z]`` with the penalty ``diag(0, alpha, ..., alpha)`` (no centring), solved by numpy."""
    import numpy as np

    a = np.array([[1.0, *row] for row in z])
    w = np.array(weights)
    pen = alpha * np.eye(a.shape[1])
    pen[0, 0] = 0.0
    sol = np.linalg.solve(a.T @ (w[:, None] * a) + pen, a.T @ (w * np.array(y)))
    return sol[1:].tolist(), float(sol[0])


def ref_kernel_shap_draws(m: int, samples: int, seed: int) -> torch.Tensor:
    """KernelSHAP's documented sampled coalitions: sizes ``1 + multinomial(p)`` with ``p_k ~ (m-1)/(k(m-k))``, then
    the ``k`` smallest of a uniform row."""
    g = torch.Generator().manual_seed(seed)
    p = torch.tensor([(m - 1) / (k * (m - k)) for k in range(1, m)], dtype=torch.float64)
    sizes = torch.multinomial(p / p.sum(), samples, replacement=True, generator=g) + 1
    r = torch.rand((samples, m), generator=g)
    rows = []
    for s in range(samples):
        order = sorted(range(m), key=lambda j: float(r[s, j]))
        keep = set(order[: int(sizes[s])])
        rows.append([j in keep for j in range(m)])
    return torch.tensor(rows)


def ref_constrained_fit(z: list[list[float]], y: list[float], weights: list[float], full: float,
                        empty: float) -> list[float]:
    """``argmin sum_s w_s (y_s - empty - z_s . phi)^2`` subject to ``sum(phi) = full - empty``, from the KKT system
    ``[[2 Z^T W Z, 1], [1^T, 0]] [phi, lambda] = [2 Z^T W (y - empty), full - empty]``."""
    import numpy as np

    a = np.array(z, dtype=float)
    w = np.array(weights)
    m = a.shape[1]
    kkt = np.zeros((m + 1, m + 1))
    kkt[:m, :m] = 2 * a.T @ (w[:, None] * a)
    kkt[:m, m] = 1.0
    kkt[m, :m] = 1.0
    rhs = np.concatenate([2 * a.T @ (w * (np.array(y) - empty)), [full - empty]])
    return np.linalg.solve(kkt, rhs)[:m].tolist()
