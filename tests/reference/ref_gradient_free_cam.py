"""Literal references for Eigen-CAM, Ablation-CAM and FullGrad, written from the papers' equations.

Float64, one image at a time, explicit loops. The first principal direction of Eigen-CAM comes from power
iteration on ``M^T M`` (not from an SVD routine); Ablation-CAM runs one forward pass per channel with the layer's
output replaced by a plain hook; FullGrad's gradients are central finite differences of the input and of each
layer's output (``ref_activation_gradient``), its biases are read from the modules' parameters with the batch-norm
fold written out.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reference.ref_backprop import ref_score
from reference.ref_cam import (
    _weighted_sum,
    ref_activation,
    ref_activation_gradient,
    ref_scores_with_activations,
    ref_upsample,
)
from reference.ref_gradient import ref_gradient_fd


def ref_eigencam(a: torch.Tensor, center: bool = True, relu: bool = True, iterations: int = 20000) -> torch.Tensor:
    """Eigen-CAM of one activation ``a`` (K, h, w): ``M`` = positions x channels (centred per channel), ``v`` the
    unit eigenvector of ``M^T M`` with the largest eigenvalue (power iteration), sign ``sum_k v_k > 0``; map
    ``relu(M v)``."""
    k, h, w = a.shape
    rows = [[float(a[c, i, j]) for c in range(k)] for i in range(h) for j in range(w)]
    if center:
        means = [sum(r[c] for r in rows) / len(rows) for c in range(k)]
        rows = [[r[c] - means[c] for c in range(k)] for r in rows]
    mtm = [[sum(r[p] * r[q] for r in rows) for q in range(k)] for p in range(k)]
    v = [1.0 + 0.01 * c for c in range(k)]
    for _ in range(iterations):
        nv = [sum(mtm[p][q] * v[q] for q in range(k)) for p in range(k)]
        norm = math.sqrt(sum(t * t for t in nv))
        nv = [t / norm for t in nv]
        if max(abs(s - t) for s, t in zip(nv, v)) < 1e-15:
            v = nv
            break
        v = nv
    if sum(v) < 0:
        v = [-t for t in v]
    out = torch.zeros(h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            p = sum(rows[i * w + j][c] * v[c] for c in range(k))
            out[i, j] = max(p, 0.0) if relu else p
    return out


def ref_ablationcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, cls: int) -> tuple[torch.Tensor, list[float]]:
    """Ablation-CAM of one image: ``w_k = S - S(A with channel k zeroed)``, map ``relu(sum_k w_k A^k)``."""
    a = ref_activation(model, layer, x)[0]
    with torch.no_grad():
        clean = float(ref_score(model(x)[0], cls))
    weights = []
    for c in range(a.shape[0]):
        ablated = a.clone()
        ablated[c] = 0.0
        (s,) = ref_scores_with_activations(model, layer, x, ablated[None], cls)
        weights.append(clean - s)
    return _weighted_sum(a, weights), weights


def ref_bias(module: nn.Module) -> list[float]:
    """The bias a layer adds per output channel: a convolution's ``bias``; eval-mode batch norm's
    ``beta - gamma * mean / sqrt(var + eps)``."""
    if isinstance(module, nn.BatchNorm2d):
        return [float(module.bias[c].detach()) - float(module.weight[c].detach()) * float(module.running_mean[c])
                / math.sqrt(float(module.running_var[c]) + module.eps) for c in range(module.num_features)]
    return [float(b) for b in module.bias.detach()]


def _scaled(values: list[list[float]]) -> list[list[float]]:
    lo = min(min(r) for r in values)
    hi = max(max(r) for r in values)
    return [[(v - lo) / (hi - lo) if hi > lo else 0.0 for v in r] for r in values]


def ref_fullgrad(model: nn.Module, x: torch.Tensor, cls: int, layers: list[nn.Module], head: nn.Linear,
                 normalize: str = "channel") -> tuple[torch.Tensor, float]:
    """FullGrad of one image (Srinivas & Fleuret 2019, Eq. 5) and the decomposition's gap (Eq. 2).

    ``psi(|dS/dx * x|) + sum_l sum_c up(psi(|dS/dz_l * b_l|_c))``: ``psi`` min-max scales a channel ("channel") or
    the whole layer ("layer") to [0, 1]; ``up`` is bilinear upsampling. ``layers`` are the biased layers with a
    spatial output (each called once); ``head`` is the final linear layer, whose output is the logits: its bias
    term in Eq. 2 is the explained score of the bias vector (``dS/dz`` is the class's indicator, or +-1).
    """
    _n, c_in, big_h, big_w = x.shape
    gx = ref_gradient_fd(model, x, [cls])[0]
    with torch.no_grad():
        s = float(ref_score(model(x)[0], cls))
    total = 0.0
    term = [[[abs(float(gx[c, i, j] * x[0, c, i, j])) for j in range(big_w)] for i in range(big_h)]
            for c in range(c_in)]
    total += sum(float(gx[c, i, j] * x[0, c, i, j]) for c in range(c_in) for i in range(big_h) for j in range(big_w))
    total += float(ref_score(head.bias.detach(), cls))
    out = torch.zeros(big_h, big_w, dtype=torch.float64)
    for plane in _planes(term, normalize):
        out += torch.tensor(plane, dtype=torch.float64)
    for layer in layers:
        _a, g = ref_activation_gradient(model, layer, x, cls)
        b = ref_bias(layer)
        k, h, w = g.shape
        fb = [[[float(g[c, i, j]) * b[c] for j in range(w)] for i in range(h)] for c in range(k)]
        total += sum(v for plane in fb for row in plane for v in row)
        for plane in _planes([[[abs(v) for v in row] for row in p] for p in fb], normalize):
            out += ref_upsample(torch.tensor(plane, dtype=torch.float64), (big_h, big_w))
    return out, total - s


def _planes(term: list[list[list[float]]], normalize: str) -> list[list[list[float]]]:
    """psi per channel, or over all channels at once (the scaled channels are then summed by the caller)."""
    if normalize == "channel":
        return [_scaled(p) for p in term]
    lo = min(v for p in term for r in p for v in r)
    hi = max(v for p in term for r in p for v in r)
    return [[[(v - lo) / (hi - lo) if hi > lo else 0.0 for v in r] for r in p] for p in term]
