"""Literal gradient-family references: one image at a time, explicit loops, straight from the equations.

Score (docs/methods.md, "The explained score S"): a multi-class model explains the logit of the class; a
single-logit model explains ``z`` for class 1 and ``-z`` for class 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def ref_score(model: nn.Module, x1: torch.Tensor, cls: int) -> torch.Tensor:
    """``S`` of one image (1, C, H, W) for class ``cls`` (a 0-d tensor, differentiable)."""
    out = model(x1)
    if out.ndim == 1:
        out = out[:, None]
    if out.shape[1] == 1:
        return out[0, 0] if cls == 1 else -out[0, 0]
    return out[0, cls]


def ref_gradient(model: nn.Module, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """``dS/dx`` per image with ``torch.autograd.grad`` on single images."""
    grads = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(ref_score(model, xi, classes[i]), xi)
        grads.append(g[0])
    return torch.stack(grads)


def ref_gradient_fd(model: nn.Module, x: torch.Tensor, classes: list[int], eps: float = 1e-6) -> torch.Tensor:
    """``dS/dx`` by central finite differences, one pixel at a time (float64 models only)."""
    out = torch.zeros_like(x)
    with torch.no_grad():
        for i in range(x.shape[0]):
            for c in range(x.shape[1]):
                for h in range(x.shape[2]):
                    for w in range(x.shape[3]):
                        xp = x[i : i + 1].clone()
                        xm = x[i : i + 1].clone()
                        xp[0, c, h, w] += eps
                        xm[0, c, h, w] -= eps
                        out[i, c, h, w] = (ref_score(model, xp, classes[i]) - ref_score(model, xm, classes[i])) / (
                            2 * eps
                        )
    return out


def ref_gradient_x_input(model: nn.Module, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    return x * ref_gradient(model, x, classes)


def ref_nodes(rule: str, m: int) -> tuple[list[float], list[float]]:
    """Quadrature nodes and weights on [0, 1], written out one by one."""
    if rule == "riemann_left":
        return [k / m for k in range(m)], [1 / m] * m
    if rule == "riemann_right":
        return [k / m for k in range(1, m + 1)], [1 / m] * m
    if rule == "riemann_middle":
        return [(k + 0.5) / m for k in range(m)], [1 / m] * m
    if rule == "riemann_trapezoid":
        # integral ~ sum over the m-1 intervals of (f(a_k) + f(a_{k+1})) / 2 * h
        h = 1 / (m - 1)
        nodes, weights = [], []
        for k in range(m):
            nodes.append(k * h)
            weights.append(h / 2 if k in (0, m - 1) else h)
        return nodes, weights
    if rule == "gauss_legendre":
        t, w = np.polynomial.legendre.leggauss(m)
        return [(ti + 1) / 2 for ti in t], [wi / 2 for wi in w]
    raise ValueError(rule)


def ref_integrated_gradients(
    model: nn.Module, x: torch.Tensor, classes: list[int], baseline: torch.Tensor, steps: int, rule: str
) -> torch.Tensor:
    """``(x - x') * sum_k w_k dS/dx(x' + a_k (x - x'))``, one image and one step at a time."""
    nodes, weights = ref_nodes(rule, steps)
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        total = torch.zeros_like(x[i])
        for a, w in zip(nodes, weights):
            point = baseline[i : i + 1] + a * (x[i : i + 1] - baseline[i : i + 1])
            total += w * ref_gradient(model, point, [classes[i]])[0]
        out[i] = (x[i] - baseline[i]) * total
    return out


def ref_noise_tunnel(
    attribution_fn, x: torch.Tensor, samples: int, noise: float, seed: int, statistic: str
) -> torch.Tensor:
    """SmoothGrad (``mean``), SmoothGrad-squared (``mean_sq``) and VarGrad (``var``), sample by sample.

    Noise convention of saliencekit: ``eps = randn((samples, C, H, W))`` from a generator seeded with
    ``seed`` on the input's device, shared by all images; ``sigma_i = noise * (max(x_i) - min(x_i))``.
    ``attribution_fn(image (1, C, H, W), i) -> (C, H, W)`` is the wrapped method on image ``i``.
    """
    gen = torch.Generator(device=x.device).manual_seed(seed)
    eps = torch.randn((samples, *x.shape[1:]), generator=gen, device=x.device, dtype=x.dtype)
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        sigma = noise * (x[i].max() - x[i].min())
        values = [attribution_fn(x[i : i + 1] + sigma * eps[j], i) for j in range(samples)]
        mean = sum(values) / samples
        if statistic == "mean":
            out[i] = mean
        elif statistic == "mean_sq":
            out[i] = sum(v * v for v in values) / samples
        elif statistic == "var":
            out[i] = sum((v - mean) ** 2 for v in values) / samples
        else:
            raise ValueError(statistic)
    return out
