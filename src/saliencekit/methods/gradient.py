"""Gradient family: vanilla gradient (Simonyan 2013) and gradient x input (Shrikumar 2016)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from saliencekit.methods._capture import ReluRule, capture
from saliencekit.methods.base import Explanation, Method, preserve_model, reduce_channels
from saliencekit.methods.registry import register_method
from saliencekit.methods.targets import ResolvedTarget


def input_gradient(model: nn.Module, inputs: torch.Tensor, target: ResolvedTarget) -> tuple[torch.Tensor, torch.Tensor]:
    """``dS/dx`` and ``S`` for a batch (runs with grad enabled even inside inference mode).

    The rows of ``inputs`` may be ``k`` blocks of the target's ``n`` images.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = inputs.detach().clone().requires_grad_(True)
        scores = target.score(model(x))
        (grad,) = torch.autograd.grad(scores.sum(), x)
    return grad, scores.detach()


class PixelGradientMethod(Method):
    """Shared machinery of methods whose attribution lives in input space (N, C, H, W).

    Subclasses implement :meth:`_attributions`; ``relu_rule`` switches the ReLU backward rule
    (guided backprop / DeconvNet).

    Args:
        model: the classifier.
        reduce: how (N, C, H, W) attributions become (N, H, W) maps: "sum" (signed), "abs_sum",
            "max_abs" or "mean".
    """

    family = "gradient"
    uses_gradients = True
    relu_rule: ReluRule | None = None

    def __init__(self, model: nn.Module, *, reduce: str = "sum"):
        super().__init__(model)
        reduce_channels(torch.zeros(1, 1, 1, 1), reduce)  # validates the name
        self.reduce = reduce
        self._store_params(reduce=reduce)

    def _attributions(
        self, inputs: torch.Tensor, target: ResolvedTarget
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Return the attributions (N, C, H, W), the scores ``S`` (N,) and extras."""
        raise NotImplementedError

    def attribute(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        with preserve_model(self.model), capture(self.model, relu_rule=self.relu_rule):
            _output, resolved, predictions = self._resolve(inputs, target)
            attributions, scores, extras = self._attributions(inputs, resolved)
        return Explanation(
            method=self.name,
            maps=reduce_channels(attributions, self.reduce),
            attributions=attributions,
            scores=scores,
            targets=resolved.class_indices().to(inputs.device),
            predictions=predictions,
            params=self.params,
            extras=extras,
        )


@register_method("gradient")
class Gradient(PixelGradientMethod):
    """Vanilla gradient ``dS/dx`` (Simonyan, Vedaldi & Zisserman 2013, Eq. 2).

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(32, 1))
    >>> Gradient(net).attribute(torch.randn(2, 1, 4, 4)).maps.shape
    torch.Size([2, 4, 4])
    """

    description = "Vanilla gradient dS/dx of the explained score (Simonyan 2013)."

    def _attributions(self, inputs, target):  # type: ignore[no-untyped-def]
        grad, scores = input_gradient(self.model, inputs, target)
        return grad, scores, {}


@register_method("gradient_x_input")
class GradientXInput(PixelGradientMethod):
    """Gradient times input ``x * dS/dx`` (Shrikumar et al. 2016).

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
    >>> GradientXInput(net).attribute(torch.ones(1, 1, 2, 2)).maps.shape
    torch.Size([1, 2, 2])
    """

    description = "Gradient times input, x * dS/dx (Shrikumar 2016)."
    multiplies_by_inputs = True

    def _attributions(self, inputs, target):  # type: ignore[no-untyped-def]
        grad, scores = input_gradient(self.model, inputs, target)
        return grad * inputs, scores, {}
