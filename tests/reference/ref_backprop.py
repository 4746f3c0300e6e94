"""Literal references for the backprop-rule family, and the small networks they can walk.

Guided backprop / DeconvNet are computed by the chain rule written out layer by layer: the
forward pass is re-done module by module keeping every layer's input; the backward pass walks
the layers in reverse, applies the ReLU rule explicitly at every ReLU, and uses the
vector-Jacobian product of the single layer elsewhere. Nothing here uses hooks or saliencekit.

The residual block's forward is re-implemented explicitly (``relu2(conv2(relu1(conv1(x))) + x)``),
so the references know where the skip connection adds its gradient.
"""

from __future__ import annotations

import torch
from torch import nn


class ResBlock(nn.Module):
    """``relu2(bn(conv2(relu1(conv1(x)))) + x)`` with its own (optionally in-place) ReLU modules."""

    def __init__(self, c: int, inplace: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.relu2 = nn.ReLU(inplace=inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.bn(self.conv2(self.relu1(self.conv1(x)))) + x)


def small_cnn(inplace: bool = False, classes: int = 3) -> nn.Sequential:
    """conv -> ReLU -> max-pool -> conv -> ReLU -> flatten -> linear, for 1x9x9 inputs."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(5 * 4 * 4, classes),
    )


def residual_cnn() -> nn.Sequential:
    """A single-logit (sigmoid) CNN with nested Sequentials, residual blocks, batch norm and a GAP head."""
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Sequential(ResBlock(4, inplace=True), nn.Sequential(ResBlock(4))),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1),
    )
    g = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


def ref_score(out_row: torch.Tensor, cls: int) -> torch.Tensor:
    """``S`` of one output row: the class logit, or +-z for a single logit (docs/methods.md, explained score)."""
    if out_row.numel() == 1:
        return out_row.reshape(()) if cls == 1 else -out_row.reshape(())
    return out_row[cls]


def _relu_backward(x: torch.Tensor, grad: torch.Tensor, rule: str) -> torch.Tensor:
    if rule == "plain":  # d relu(x)/dx = [x > 0]
        return torch.where(x > 0, grad, torch.zeros_like(grad))
    if rule == "guided":  # Springenberg 2015: forward mask AND positive incoming gradient
        return torch.where((x > 0) & (grad > 0), grad, torch.zeros_like(grad))
    if rule == "deconv":  # Zeiler 2014: relu of the incoming gradient, no forward mask
        return torch.where(grad > 0, grad, torch.zeros_like(grad))
    raise ValueError(rule)


def _vjp(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Vector-Jacobian product of one non-ReLU layer."""
    with torch.enable_grad():
        x_ = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(module(x_), x_, grad)
    return g


def _forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.ReLU):
        return x.clamp(min=0)
    if isinstance(module, nn.Sequential):
        for child in module:
            x = _forward(child, x)
        return x
    if isinstance(module, ResBlock):
        return _forward(module.relu2, module.bn(module.conv2(_forward(module.relu1, module.conv1(x)))) + x)
    return module(x)


def _backward(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, rule: str) -> torch.Tensor:
    """dS/dx given dS/d(module(x)), with ``rule`` at every ReLU."""
    if isinstance(module, nn.ReLU):
        return _relu_backward(x, grad, rule)
    if isinstance(module, nn.Sequential):
        inputs = []
        for child in module:
            inputs.append(x)
            x = _forward(child, x)
        for child, inp in reversed(list(zip(module, inputs))):
            grad = _backward(child, inp, grad, rule)
        return grad
    if isinstance(module, ResBlock):
        h1 = module.conv1(x)
        r1 = h1.clamp(min=0)
        pre = module.bn(module.conv2(r1)) + x
        g_pre = _relu_backward(pre, grad, rule)  # relu2
        g_r1 = _vjp(lambda t: module.bn(module.conv2(t)), r1, g_pre)
        g_h1 = _relu_backward(h1, g_r1, rule)  # relu1
        return _vjp(module.conv1, x, g_h1) + g_pre  # the skip connection adds g_pre
    return _vjp(module, x, grad)


def ref_rule_gradient(model: nn.Module, x: torch.Tensor, classes: list[int], rule: str) -> torch.Tensor:
    """Input gradient of ``S`` with ``rule`` ("plain", "guided", "deconv") at every ReLU, image by image."""
    out = []
    with torch.no_grad():
        for n in range(x.shape[0]):
            xn = x[n:n + 1]
            y = _forward(model, xn)
            grad_y = torch.zeros_like(y)  # dS/dy: one-hot of the class, or +-1 for a single logit
            if y.shape[1] == 1:
                grad_y[0, 0] = 1.0 if classes[n] == 1 else -1.0
            else:
                grad_y[0, classes[n]] = 1.0
            out.append(_backward(model, xn, grad_y, rule))
    return torch.cat(out)
