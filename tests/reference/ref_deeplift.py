"""Literal DeepLIFT (rescale rule), written from the equations (Shrikumar et al. 2017, Secs. 3.3-3.5).

The forward pass of :mod:`reference.ref_lrp` is re-done for the input and for the baseline; the
multipliers ``m = dS/d(layer input)`` in DeepLIFT's sense are walked back explicitly:

- convolution / linear layer: ``m_i = sum_o w_oi m_o`` over the patches (the chain rule of a linear map);
- batch norm in eval mode: ``m_in = m_out * gamma / sqrt(var + eps)``;
- element-wise non-linearity: ``m_in = m_out * (f(x) - f(x')) / (x - x')``, or ``m_out * f'(x)`` where
  ``|x - x'| < eps``;
- max-pooling (captum's rule): ``max(y, y') - y'`` goes to the input's maximum of the window and
  ``y - max(y, y')`` to the baseline's, both divided by ``x - x'`` there (the gradient where
  ``|x - x'| < eps``); overlapping windows add up;
- average pooling: ``m_out / k^2`` to each input of the window;
- sum: the multiplier goes to both terms; concatenation: each part its slice.

The attribution is ``(x - x') * m`` at the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reference.ref_lrp import ACTIVATIONS, Settings, Step, forward

EPS = 1e-10

DERIVATIVES = {
    nn.ReLU: lambda t: (t > 0).to(t.dtype),
    nn.Sigmoid: lambda t: ACTIVATIONS[nn.Sigmoid](t) * (1 - ACTIVATIONS[nn.Sigmoid](t)),
    nn.Tanh: lambda t: 1 - torch.tanh(t) ** 2,
}


def _linear_back(step: Step, m: torch.Tensor) -> torch.Tensor:
    w = step.extra[0]
    x = step.x
    if step.kind == "linear":
        return m @ w
    conv = step.module
    n = x.shape[0]
    wm = w.reshape(w.shape[0], -1)  # (O, I)
    mp = torch.einsum("oi,nol->nil", wm, m.reshape(n, w.shape[0], -1))
    return F.fold(mp, x.shape[-2:], conv.kernel_size, conv.dilation, conv.padding, conv.stride)


def _windows(x: torch.Tensor, k: int, st: int, pad: int) -> torch.Tensor:
    """(n, c, k*k, L) windows of a max-pooling (padding counts as -inf)."""
    n, c = x.shape[:2]
    xp = F.pad(x, (pad,) * 4, value=float("-inf")) if pad else x
    return F.unfold(xp, k, 1, 0, st).view(n, c, k * k, -1)


def _route(values: torch.Tensor, winner: torch.Tensor, x: torch.Tensor, k: int, st: int, pad: int) -> torch.Tensor:
    """Put each window's value at its winning position (sums where windows overlap)."""
    n, c, h, w = x.shape
    onehot = F.one_hot(winner, k * k).permute(0, 1, 3, 2).to(x.dtype)
    routed = (onehot * values.reshape(n, c, 1, -1)).reshape(n, c * k * k, -1)
    full = F.fold(routed, (h + 2 * pad, w + 2 * pad), k, 1, 0, st)
    return full[..., pad:pad + h, pad:pad + w]


def backward(tape: list[Step], tape_b: list[Step], m: torch.Tensor) -> torch.Tensor:
    for step, base in zip(reversed(tape), reversed(tape_b)):
        x, xb = step.x, base.x
        if step.kind in ("conv", "linear"):
            m = _linear_back(step, m)
        elif step.kind == "bn":
            bn = step.module
            m = m * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(1, -1, 1, 1)
        elif step.kind == "act":
            f = ACTIVATIONS[type(step.module)]
            dx, dy = x - xb, f(x) - f(xb)
            m = torch.where(dx.abs() < EPS, m * DERIVATIVES[type(step.module)](x), m * dy / dx)
        elif step.kind == "reshape":
            m = m.reshape(x.shape)
        elif step.kind == "maxpool":
            k, st, pad = step.extra
            wa, wb = _windows(x, k, st, pad), _windows(xb, k, st, pad)
            ya, ia = wa.max(2)
            yb, ib = wb.max(2)
            top = torch.maximum(ya, yb)
            m_flat = m.reshape(ya.shape)
            delta = _route(m_flat * (top - yb), ia, x, k, st, pad) + _route(m_flat * (ya - top), ib, x, k, st, pad)
            plain = _route(m_flat, ia, x, k, st, pad)
            dx = x - xb
            m = torch.where(dx.abs() < EPS, plain, delta / dx)
        elif step.kind == "avgpool":
            k = step.extra
            m = (m / (k * k)).repeat_interleave(k, 2).repeat_interleave(k, 3)
        elif step.kind == "residual":
            branch, short, _, _ = step.extra
            branch_b, short_b, _, _ = base.extra
            m = backward(branch, branch_b, m) + backward(short, short_b, m)
        elif step.kind == "dense":
            c = x.shape[1]
            m = m[:, :c] + backward(step.extra, base.extra, m[:, c:])
        else:
            raise ValueError(step.kind)
    return m


def ref_deeplift(net: nn.Module, x: torch.Tensor, baseline: torch.Tensor,
                 classes: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attributions (N, C, H, W), ``S(x)`` and ``S(x')`` for the logit of each image's class, in float64."""
    net = net.double()
    x, baseline = x.double(), baseline.double()
    tape: list[Step] = []
    tape_b: list[Step] = []
    with torch.no_grad():
        out = forward(net, x, Settings(), tape)
        out_b = forward(net, baseline, Settings(), tape_b)
        rows = torch.arange(x.shape[0])
        m = torch.zeros_like(out)
        m[rows, classes] = 1.0
        mult = backward(tape, tape_b, m)
        return (x - baseline) * mult, out[rows, classes], out_b[rows, classes]
