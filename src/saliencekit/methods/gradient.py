"""Gradient family: vanilla gradient (Simonyan 2013) and gradient x input (Shrikumar 2016)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from saliencekit import _layout
from saliencekit.methods._batching import BatchSize, check_batch_size, max_batch_size, run_in_chunks
from saliencekit.methods._capture import ReluRule, capture
from saliencekit.methods._precision import Precision, autocast, check_precision
from saliencekit.methods.base import Explanation, Method, check_inputs, preserve_model, reduce_channels
from saliencekit.methods.registry import register_method
from saliencekit.methods.targets import ResolvedTarget, as_target


def input_gradient(model: nn.Module, inputs: torch.Tensor, target: ResolvedTarget) -> tuple[torch.Tensor, torch.Tensor]:
    """``dS/dx`` and ``S`` for a batch (runs with grad enabled even inside inference mode).

    The rows of ``inputs`` may be ``k`` blocks of the target's ``n`` images.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = inputs.detach().clone().requires_grad_(True)
        scores = target.score(_layout.forward(model, x))
        (grad,) = torch.autograd.grad(scores.sum(), x)
    # Through a channels-last forward (_layout) the gradient may come back channels-last; Explanation makes the
    # results row-major once, so the chunks are not copied here.
    return grad.to(inputs.dtype), scores.detach().to(inputs.dtype)


def rows_target(target: ResolvedTarget, start: int, stop: int) -> ResolvedTarget:
    """The target of rows ``start:stop`` of ``k`` stacked blocks of the target's ``n`` images."""
    if target.classes is None:
        return ResolvedTarget(stop - start, None, target.fn)
    rows = torch.arange(start, stop, device=target.classes.device) % target.n
    return ResolvedTarget(stop - start, target.classes[rows], None)


class PixelGradientMethod(Method):
    """Shared machinery of methods whose attribution lives in input space (N, C, H, W).

    Subclasses implement :meth:`_attributions`; ``relu_rule`` switches the ReLU backward rule
    (guided backprop / DeconvNet). Single-pass subclasses get their rows cut into chunks of
    ``batch_size`` images and run under the chosen ``precision`` by :meth:`_compute`; multi-pass
    subclasses (``batches_itself = True``) do their own chunking and use :meth:`_autocast`.

    Args:
        model: the classifier.
        reduce: how (N, C, H, W) attributions become (N, H, W) maps: "sum" (signed), "abs_sum",
            "max_abs" or "mean".
        batch_size: images per forward/backward pass, or "auto" (sized to the device, halved on
            CUDA out-of-memory).
        precision: "fp32" (default), "bf16" or "fp16" (autocast; fp16 needs CUDA).
    """

    family = "gradient"
    uses_gradients = True
    display_normalization = "percentile"
    relu_rule: ReluRule | None = None
    batches_itself: bool = False

    def __init__(
        self, model: nn.Module, *, reduce: str = "sum", batch_size: BatchSize = "auto", precision: Precision = "fp32"
    ):
        super().__init__(model)
        reduce_channels(torch.zeros(1, 1, 1, 1), reduce)  # validates the name
        self.reduce = reduce
        self.batch_size = check_batch_size(batch_size)
        self.precision = check_precision(precision)
        self._store_params(reduce=reduce, batch_size=batch_size, precision=precision)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[object]:
        return autocast(device, self.precision)

    def _compute(
        self, inputs: torch.Tensor, target: ResolvedTarget
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`_attributions` of every row of ``inputs`` (rows may be ``k`` blocks of the target's
        images), chunked and under the method's precision. Call it inside the method's capture."""
        if self.batches_itself:
            return self._attributions(inputs, target)
        total = inputs.shape[0]
        out: dict[str, Any] = {}

        def chunk(start: int, stop: int) -> None:
            with self._autocast(inputs.device):
                attr, scores, extras = self._attributions(inputs[start:stop], rows_target(target, start, stop))
            if not out:
                out["attr"] = torch.empty((total, *attr.shape[1:]), dtype=attr.dtype, device=attr.device)
                out["scores"] = torch.empty(total, dtype=scores.dtype, device=scores.device)
                out["extras"] = {k: torch.empty((total, *v.shape[1:]), dtype=v.dtype, device=v.device)
                                 for k, v in extras.items()}
            out["attr"][start:stop] = attr
            out["scores"][start:stop] = scores
            for k, v in extras.items():
                out["extras"][k][start:stop] = v

        if total <= (self.batch_size if isinstance(self.batch_size, int) else 0):
            chunk(0, total)
        else:
            run_in_chunks(chunk, total, self.batch_size, self.model, inputs, backward=True)
        return out["attr"], out["scores"], out["extras"]

    def _attributions(
        self, inputs: torch.Tensor, target: ResolvedTarget
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Return the attributions (N, C, H, W), the scores ``S`` (N,) and extras.

        The default is the input gradient, taken under the capture's ReLU rule (plain for the
        gradient, guided for guided backprop, DeconvNet's rule for DeconvNet).
        """
        grad, scores = input_gradient(self.model, inputs, target)
        return grad, scores, {}

    def _fits_one_pass(self, inputs: torch.Tensor) -> bool:
        if self.batches_itself:
            return False
        size = self.batch_size
        if size == "auto":
            size = max_batch_size(self.model, inputs, backward=True)
        return inputs.shape[0] <= size

    def attribute(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        check_inputs(self.model, inputs)
        with preserve_model(self.model), capture(self.model, relu_rule=self.relu_rule):
            if self._fits_one_pass(inputs):
                # One forward pass both fixes the target and is differentiated (no separate clean pass).
                resolved = ResolvedTarget.deferred(as_target(target), inputs.shape[0])
                with self._autocast(inputs.device):
                    attributions, scores, extras = self._attributions(inputs, resolved)
                predictions = resolved.predictions
            else:
                _output, resolved, predictions = self._resolve(inputs, target)
                attributions, scores, extras = self._compute(inputs, resolved)
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
    input_shift_invariant = True


@register_method("gradient_x_input")
class GradientXInput(PixelGradientMethod):
    """Gradient times input ``x * dS/dx`` (Shrikumar et al. 2016).

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
    >>> GradientXInput(net).attribute(torch.ones(1, 1, 2, 2)).maps.shape
    torch.Size([1, 2, 2])
    """

    description = "Gradient times input, x * dS/dx (Shrikumar 2016)."
    input_shift_invariant = False
    multiplies_by_inputs = True

    def _attributions(self, inputs, target):  # type: ignore[no-untyped-def]
        grad, scores = input_gradient(self.model, inputs, target)
        return grad * inputs, scores, {}
