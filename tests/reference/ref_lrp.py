"""Literal LRP, written from the equations: relevance redistributed by explicit contribution tensors.

No autograd, no hooks, no saliencekit. A convolution is unfolded into patches, so that the
contribution of input ``i`` of patch ``l`` to output ``o`` is the explicit product
``c[o, i, l] = w[o, i] * x[i, l]`` (a linear layer is one patch), and every rule is a ratio of such
contributions (Bach et al. 2015, Eqs. 56-60; Montavon et al. 2017, 2019; zennit's definitions of the
stabiliser ``z + eps * sign(z)`` with sign(0) = +1 and of the generalised gamma rule). Relevance of
overlapping patches is summed back onto the pixels (``fold``).

The networks are walked by their structure: ``nn.Sequential`` children in order (a batch norm right
after a convolution or linear layer folded into it: ``w' = w s``, ``b' = (b - mean) s + beta``,
``s = gamma / sqrt(var + eps)``), and the blocks defined here (:class:`ResBlock`, :class:`DenseLayer`,
:class:`FunctionalHead`) by the forward passes written out in them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------------------- networks


class ResBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, shortcut = conv1x1 + bn when the width changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)  # used twice, as in torchvision
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None if (cin == cout and stride == 1) else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.down is None else self.down(x)
        out += identity
        return self.relu(out)


class DenseLayer(nn.Module):
    """``cat([x, conv(relu(bn(x)))])``: a DenseNet layer (batch norm before the ReLU, not after a convolution)."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.relu(self.norm(x)))], 1)


class FunctionalHead(nn.Module):
    """``linear(mean(relu(bn(x))))`` with the ReLU and the mean as functions (DenseNet's head)."""

    def __init__(self, c: int, classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _randomise_bn(net: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return net.eval()


def vgg_like(in_channels: int = 3, classes: int = 4) -> nn.Sequential:
    """conv-bn-relu-pool, conv-relu-pool, conv-relu, avgpool, flatten, linear-relu-dropout-linear (for 8x8 inputs)."""
    net = nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, classes),
    )
    return _randomise_bn(net, 1)


def resnet_like(in_channels: int = 3, classes: int = 4) -> nn.Sequential:
    """conv-bn-relu stem, max-pool (3, 2, 1: overlapping windows), a widening block, an identity block, GAP, linear."""
    net = nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1), ResBlock(4, 6, 2), ResBlock(6, 6), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6, classes),
    )
    return _randomise_bn(net, 2)


def dense_like(in_channels: int = 3, classes: int = 4) -> nn.Sequential:
    """conv-bn-relu, two dense layers, transition (bn-relu-conv-avgpool), functional head."""
    net = nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        DenseLayer(4, 3), DenseLayer(7, 3),
        nn.BatchNorm2d(10), nn.ReLU(inplace=True), nn.Conv2d(10, 5, 1, bias=False), nn.AvgPool2d(2),
        FunctionalHead(5, classes),
    )
    return _randomise_bn(net, 3)


# ---------------------------------------------------------------------------------------------- rules


def stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


@dataclass
class Settings:
    """Rules per layer kind, parameters, and the state of the walk."""

    conv: str = "zplus"
    linear: str = "epsilon"
    first: str | None = None
    first_kinds: tuple[str, ...] = ()
    epsilon: float = 1e-6
    gamma: float = 0.25
    stabilizer: float = 1e-6
    alpha: float = 2.0
    beta: float = 1.0
    low: Any = None
    high: Any = None
    ignore_bias: bool = False
    by_module: dict[int, str] = field(default_factory=dict)  # id(module) -> rule, beats everything
    first_done: bool = field(default=False)


COMPOSITES = {
    "epsilon_plus": dict(conv="zplus", linear="epsilon"),
    "epsilon_plus_flat": dict(conv="zplus", linear="epsilon", first="flat", first_kinds=("conv", "linear")),
    "epsilon_gamma_box": dict(conv="gamma", linear="epsilon", first="zbox", first_kinds=("conv",)),
    "epsilon_alpha2_beta1": dict(conv="alpha2beta1", linear="epsilon"),
    "epsilon": dict(conv="epsilon", linear="epsilon"),
}


def _patches(t: torch.Tensor, conv: nn.Conv2d | None) -> torch.Tensor:
    """(N, I, L): the unfolded patches of a convolution's input, or (N, I, 1) for a linear layer."""
    if conv is None:
        return t[:, :, None]
    return F.unfold(t, conv.kernel_size, conv.dilation, conv.padding, conv.stride)


def layer_relevance(rule: str, s: Settings, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                    r: torch.Tensor, conv: nn.Conv2d | None) -> torch.Tensor:
    """Relevance at the input of one convolution (``conv`` gives its geometry) or linear layer."""
    n = x.shape[0]
    wm = w.reshape(w.shape[0], -1)  # (O, I)
    p = _patches(x, conv)  # (N, I, L)
    rr = r.reshape(n, w.shape[0], -1)  # (N, O, L)
    b = torch.zeros(w.shape[0], dtype=x.dtype) if (b is None or s.ignore_bias) else b
    bb = b[None, :, None]
    c = wm[None, :, :, None] * p[:, None, :, :]  # (N, O, I, L): c_oil = w_oi x_il
    if rule == "epsilon":
        share = c / stab(c.sum(2) + bb, s.epsilon)[:, :, None]
    elif rule in ("zplus", "alpha2beta1"):
        alpha, beta = (1.0, 0.0) if rule == "zplus" else (s.alpha, s.beta)
        cp, cn = c.clamp(min=0), c.clamp(max=0)
        share = alpha * cp / stab(cp.sum(2) + bb.clamp(min=0), s.stabilizer)[:, :, None]
        if beta:
            share = share - beta * cn / stab(cn.sum(2) + bb.clamp(max=0), s.stabilizer)[:, :, None]
    elif rule == "gamma":
        g = s.gamma
        z = c.sum(2) + bb
        up, dn = c + g * c.clamp(min=0), c + g * c.clamp(max=0)
        zu = up.sum(2) + bb + g * bb.clamp(min=0)
        zd = dn.sum(2) + bb + g * bb.clamp(max=0)
        share = (z > 0)[:, :, None] * up / stab(zu, s.stabilizer)[:, :, None] + \
            (z < 0)[:, :, None] * dn / stab(zd, s.stabilizer)[:, :, None]
    elif rule in ("flat", "wsquare"):
        ones = _patches(torch.ones_like(x), conv)  # 0 where the patch covers padding
        weight = torch.ones_like(wm) if rule == "flat" else wm * wm
        c1 = weight[None, :, :, None] * ones[:, None, :, :]
        share = c1 / stab(c1.sum(2), s.stabilizer)[:, :, None]
    elif rule == "zbox":
        lo, hi = _bounds(s, x)
        pl, ph = _patches(lo, conv), _patches(hi, conv)
        cz = c - wm.clamp(min=0)[None, :, :, None] * pl[:, None] - wm.clamp(max=0)[None, :, :, None] * ph[:, None]
        share = cz / stab(cz.sum(2), s.stabilizer)[:, :, None]
    else:
        raise ValueError(rule)
    rin = (share * rr[:, :, None, :]).sum(1)  # (N, I, L)
    if conv is None:
        return rin[:, :, 0]
    return F.fold(rin, x.shape[-2:], conv.kernel_size, conv.dilation, conv.padding, conv.stride)


def _bounds(s: Settings, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if s.low is None:
        lo = x.flatten(1).amin(1).view(-1, 1, 1, 1).expand_as(x)
    else:
        lo = torch.as_tensor(s.low, dtype=x.dtype).expand_as(x)
    if s.high is None:
        hi = x.flatten(1).amax(1).view(-1, 1, 1, 1).expand_as(x)
    else:
        hi = torch.as_tensor(s.high, dtype=x.dtype).expand_as(x)
    return lo, hi


def fold_bn(w: torch.Tensor, b: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    b0 = torch.zeros_like(bn.running_mean) if b is None else b
    return w * scale.view(-1, *([1] * (w.ndim - 1))), (b0 - bn.running_mean) * scale + bn.bias


def _rule_for(kind: str, s: Settings, module: nn.Module) -> str:
    if id(module) in s.by_module:
        s.first_done = True
        return s.by_module[id(module)]
    if s.first is not None and not s.first_done and kind in s.first_kinds:
        s.first_done = True
        return s.first
    s.first_done = True
    return s.conv if kind == "conv" else s.linear


# ------------------------------------------------------------------------------------------- the walk


ACTIVATIONS = {nn.ReLU: lambda t: t.clamp(min=0), nn.Sigmoid: lambda t: 1 / (1 + torch.exp(-t)), nn.Tanh: torch.tanh}


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (x - bn.running_mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


def _conv(x: torch.Tensor, conv: nn.Conv2d, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation)


@dataclass
class Step:
    """One step of the walk: what it was and what its backward needs."""

    kind: str
    module: Any
    x: torch.Tensor
    extra: Any = None


def forward(module: nn.Module, x: torch.Tensor, s: Settings, tape: list[Step]) -> torch.Tensor:
    """The forward pass re-done step by step, writing each step (and its rule) on the tape."""
    if isinstance(module, nn.Sequential):
        children = list(module)
        i = 0
        while i < len(children):
            m = children[i]
            nxt = children[i + 1] if i + 1 < len(children) else None
            if isinstance(m, nn.Conv2d | nn.Linear):
                w, b = m.weight, m.bias
                if isinstance(nxt, nn.BatchNorm2d):
                    w, b = fold_bn(w, b, nxt)
                    i += 1
                kind = "conv" if isinstance(m, nn.Conv2d) else "linear"
                tape.append(Step(kind, m, x, (w, b, _rule_for(kind, s, m))))
                x = _conv(x, m, w, b) if kind == "conv" else x @ w.T + b
            else:
                x = forward(m, x, s, tape)
            i += 1
        return x
    if isinstance(module, nn.ReLU | nn.Sigmoid | nn.Tanh):
        tape.append(Step("act", module, x))
        return ACTIVATIONS[type(module)](x)
    if isinstance(module, nn.Dropout):
        return x
    if isinstance(module, nn.BatchNorm2d):  # not after a convolution
        tape.append(Step("bn", module, x))
        return _bn(x, module)
    if isinstance(module, nn.MaxPool2d):
        k, st, pad = module.kernel_size, module.stride, module.padding
        tape.append(Step("maxpool", module, x, (k, st, pad)))
        return F.max_pool2d(x, k, st, pad)
    if isinstance(module, nn.AvgPool2d | nn.AdaptiveAvgPool2d):
        k = module.kernel_size if isinstance(module, nn.AvgPool2d) else x.shape[-1] // module.output_size
        tape.append(Step("avgpool", module, x, k))
        return F.avg_pool2d(x, k)
    if isinstance(module, nn.Flatten):
        tape.append(Step("reshape", module, x))
        return x.flatten(1)
    if isinstance(module, ResBlock):
        branch, short = [], []
        a = _bn(_conv(x, module.conv1, module.conv1.weight, None), module.bn1)
        w1, b1 = fold_bn(module.conv1.weight, None, module.bn1)
        branch.append(Step("conv", module.conv1, x, (w1, b1, _rule_for("conv", s, module.conv1))))
        branch.append(Step("act", module.relu, a))
        h = a.clamp(min=0)
        w2, b2 = fold_bn(module.conv2.weight, None, module.bn2)
        branch.append(Step("conv", module.conv2, h, (w2, b2, _rule_for("conv", s, module.conv2))))
        out = _conv(h, module.conv2, w2, b2)
        identity = x if module.down is None else forward(module.down, x, s, short)
        tape.append(Step("residual", module, x, (branch, short, out, identity)))
        z = out + identity
        tape.append(Step("act", module.relu, z))
        return z.clamp(min=0)
    if isinstance(module, DenseLayer):
        inner: list[Step] = []
        new = forward(nn.Sequential(module.norm, module.relu, module.conv), x, s, inner)
        tape.append(Step("dense", module, x, inner))
        return torch.cat([x, new], 1)
    if isinstance(module, FunctionalHead):
        return forward(nn.Sequential(module.norm, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), module.fc),
                       x, s, tape)
    raise TypeError(f"the reference does not know {type(module).__name__}")


def backward(tape: list[Step], r: torch.Tensor, s: Settings) -> torch.Tensor:
    """Relevance walked back through the tape."""
    for step in reversed(tape):
        x = step.x
        if step.kind in ("conv", "linear"):
            w, b, rule = step.extra
            r = layer_relevance(rule, s, x, w, b, r, step.module if step.kind == "conv" else None)
        elif step.kind in ("act", "bn"):
            pass  # element-wise activations and batch norm (not after a convolution): relevance unchanged
        elif step.kind == "reshape":
            r = r.reshape(x.shape)
        elif step.kind == "maxpool":  # winner takes all (the first maximum of each window)
            k, st, pad = step.extra
            n, c, h, w_ = x.shape
            win = F.unfold(x, k, 1, pad, st).view(n, c, k * k, -1) if pad == 0 else \
                F.unfold(F.pad(x, (pad,) * 4, value=float("-inf")), k, 1, 0, st).view(n, c, k * k, -1)
            onehot = F.one_hot(win.argmax(2), k * k).permute(0, 1, 3, 2).to(x.dtype)  # (n, c, k*k, L)
            routed = (onehot * r.reshape(n, c, 1, -1)).reshape(n, c * k * k, -1)
            if pad:
                full = F.fold(routed, (h + 2 * pad, w_ + 2 * pad), k, 1, 0, st)
                r = full[..., pad:pad + h, pad:pad + w_]
            else:
                r = F.fold(routed, (h, w_), k, 1, 0, st)
        elif step.kind == "avgpool":  # R_i = (x_i / k^2) / stab(mean) * R of its window
            k = step.extra
            z = F.avg_pool2d(x, k)
            up = (r / stab(z, s.stabilizer)).repeat_interleave(k, 2).repeat_interleave(k, 3)
            r = x / (k * k) * up
        elif step.kind == "residual":
            branch, short, a, b = step.extra
            z = stab(a + b, s.stabilizer)
            ra, rb = a / z * r, b / z * r
            r = backward(branch, ra, s) + backward(short, rb, s)
        elif step.kind == "dense":
            c = x.shape[1]
            r = r[:, :c] + backward(step.extra, r[:, c:], s)
        else:
            raise ValueError(step.kind)
    return r


def ref_lrp(net: nn.Module, x: torch.Tensor, classes: list[int], composite: str = "epsilon_plus",
            **settings: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance (N, C, H, W) of ``S`` = the logit of each image's class, and ``S``, in float64."""
    net = net.double()
    s = Settings(**{**COMPOSITES[composite], **settings})
    tape: list[Step] = []
    with torch.no_grad():
        out = forward(net, x.double(), s, tape)
        score = out[torch.arange(x.shape[0]), classes]
        r = torch.zeros_like(out)
        r[torch.arange(x.shape[0]), classes] = score
        return backward(tape, r, s), score
