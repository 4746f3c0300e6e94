"""Literal references for the CAM family, written from the equations of docs/methods.md.

Float64, one image at a time, explicit loops over channels and pixels. The activation ``A`` is
read with a plain forward hook; the gradient ``g = dS/dA`` is computed by central finite
differences (the layer's output is replaced by ``A +- eps e_kij``), independently of autograd.
Bilinear upsampling (align_corners=False) is written out pixel by pixel. Score-CAM does one
forward pass per channel.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reference.ref_backprop import ref_score


def ref_activation(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's output (1, K, h, w) for one image ``x`` (1, C, H, W)."""
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, o: store.__setitem__("a", o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store["a"]


def ref_scores_with_activations(model: nn.Module, layer: nn.Module, x: torch.Tensor, a: torch.Tensor,
                                cls: int) -> list[float]:
    """``S`` for each row of ``a`` (B, K, h, w) replacing the layer's output (one image ``x`` repeated)."""
    handle = layer.register_forward_hook(lambda _m, _i, _o: a.clone())
    try:
        with torch.no_grad():
            out = model(x.expand(a.shape[0], *x.shape[1:]))
    finally:
        handle.remove()
    return [float(ref_score(row, cls)) for row in out]


def ref_activation_gradient(model: nn.Module, layer: nn.Module, x: torch.Tensor, cls: int,
                            eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` (K, h, w) and ``g = dS/dA`` (K, h, w) by central differences, for one image.

    ``g_kij = (S(A + eps e_kij) - S(A - eps e_kij)) / (2 eps)``; the perturbed copies go through the
    rest of the network as one batch.
    """
    a = ref_activation(model, layer, x)[0]
    k, h, w = a.shape
    perturbed = []
    for c in range(k):
        for i in range(h):
            for j in range(w):
                for sign in (1.0, -1.0):
                    p = a.clone()
                    p[c, i, j] += sign * eps
                    perturbed.append(p)
    s = ref_scores_with_activations(model, layer, x, torch.stack(perturbed), cls)
    g = torch.zeros_like(a)
    t = 0
    for c in range(k):
        for i in range(h):
            for j in range(w):
                g[c, i, j] = (s[t] - s[t + 1]) / (2 * eps)
                t += 2
    return a, g


def _relu(v: float) -> float:
    return v if v > 0 else 0.0


def _weighted_sum(a: torch.Tensor, weights: list[float], relu: bool = True) -> torch.Tensor:
    k, h, w = a.shape
    out = torch.zeros(h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            v = sum(weights[c] * float(a[c, i, j]) for c in range(k))
            out[i, j] = _relu(v) if relu else v
    return out


def ref_gradcam(a: torch.Tensor, g: torch.Tensor, relu: bool = True) -> tuple[torch.Tensor, list[float]]:
    """Grad-CAM: ``w_k = mean_ij g^k_ij``; map ``relu(sum_k w_k A^k)``."""
    k, h, w = a.shape
    weights = [sum(float(g[c, i, j]) for i in range(h) for j in range(w)) / (h * w) for c in range(k)]
    return _weighted_sum(a, weights, relu), weights


def ref_gradcampp(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Grad-CAM++ Eq. 19: ``alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)`` (0 where the denominator is 0),
    ``w_k = sum_ij alpha_ij relu(g_ij)``."""
    k, h, w = a.shape
    weights = []
    for c in range(k):
        sum_a = sum(float(a[c, p, q]) for p in range(h) for q in range(w))
        wk = 0.0
        for i in range(h):
            for j in range(w):
                gij = float(g[c, i, j])
                denom = 2 * gij**2 + sum_a * gij**3
                alpha = gij**2 / denom if denom != 0 else 0.0
                wk += alpha * _relu(gij)
        weights.append(wk)
    return _weighted_sum(a, weights), weights


def ref_xgradcam(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """XGrad-CAM: ``w_k = sum_ij g_ij A_ij / sum_ij A_ij`` (0 where the sum of A is 0)."""
    k, h, w = a.shape
    weights = []
    for c in range(k):
        num = sum(float(g[c, i, j]) * float(a[c, i, j]) for i in range(h) for j in range(w))
        den = sum(float(a[c, i, j]) for i in range(h) for j in range(w))
        weights.append(num / den if den != 0 else 0.0)
    return _weighted_sum(a, weights), weights


def ref_hirescam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """HiResCAM: ``relu(sum_k g^k * A^k)`` element-wise."""
    k, h, w = a.shape
    out = torch.zeros(h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            out[i, j] = _relu(sum(float(g[c, i, j]) * float(a[c, i, j]) for c in range(k)))
    return out


def ref_layercam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """LayerCAM: ``relu(sum_k relu(g^k) * A^k)`` element-wise."""
    k, h, w = a.shape
    out = torch.zeros(h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            out[i, j] = _relu(sum(_relu(float(g[c, i, j])) * float(a[c, i, j]) for c in range(k)))
    return out


def ref_upsample(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling with align_corners=False, pixel by pixel (source = (dst + 0.5) * in/out - 0.5,
    clamped at 0; the far neighbour clamped at the border)."""
    h, w = m.shape
    big_h, big_w = size
    out = torch.zeros(big_h, big_w, dtype=torch.float64)
    for y in range(big_h):
        sy = max((y + 0.5) * h / big_h - 0.5, 0.0)
        y0 = math.floor(sy)
        y1 = min(y0 + 1, h - 1)
        ly = sy - y0
        for x in range(big_w):
            sx = max((x + 0.5) * w / big_w - 0.5, 0.0)
            x0 = math.floor(sx)
            x1 = min(x0 + 1, w - 1)
            lx = sx - x0
            out[y, x] = ((1 - ly) * (1 - lx) * float(m[y0, x0]) + (1 - ly) * lx * float(m[y0, x1])
                         + ly * (1 - lx) * float(m[y1, x0]) + ly * lx * float(m[y1, x1]))
    return out


def ref_scorecam(model: nn.Module, layer: nn.Module, x: torch.Tensor, cls: int,
                 top_n: int | None = None) -> tuple[torch.Tensor, list[float]]:
    """Score-CAM for one image: one forward pass per channel; constant channels get weight 0;
    ``top_n`` keeps the channels of largest activation variance."""
    a = ref_activation(model, layer, x)[0]
    k, h, w = a.shape
    size = (x.shape[-2], x.shape[-1])
    candidates = []
    variances = []
    for c in range(k):
        vals = [float(a[c, i, j]) for i in range(h) for j in range(w)]
        mean = sum(vals) / len(vals)
        variances.append(sum((v - mean) ** 2 for v in vals) / len(vals))
        if max(vals) > min(vals):
            candidates.append(c)
    if top_n is not None:
        top = sorted(range(k), key=lambda c: -variances[c])[:top_n]
        candidates = [c for c in candidates if c in top]
    scores = {}
    for c in candidates:
        up = ref_upsample(a[c], size)
        lo, hi = float(up.min()), float(up.max())
        mask = (up - lo) / (hi - lo)
        with torch.no_grad():
            out = model(x * mask)
        scores[c] = float(ref_score(out[0], cls))
    weights = [0.0] * k
    if scores:
        top_score = max(scores.values())
        total = sum(math.exp(s - top_score) for s in scores.values())
        for c, s in scores.items():
            weights[c] = math.exp(s - top_score) / total
    return _weighted_sum(a, weights), weights
