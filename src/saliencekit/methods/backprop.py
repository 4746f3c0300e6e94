"""Backprop-rule family: guided backprop, DeconvNet and guided Grad-CAM.

These methods change how gradients pass backwards through ReLUs. The rules are attached to every
``nn.ReLU`` module of the model by :func:`saliencekit.methods._capture.capture` (forward hooks that
route the ReLU's output through a custom autograd function; no module is swapped, no torch function
patched). **Functional ReLUs** (``F.relu`` / ``torch.relu`` / ``x.clamp(min=0)`` called inside a
model's ``forward``) cannot be reached that way, so they keep the ordinary ReLU gradient: on such a
model guided backprop and DeconvNet are only partly "guided"; on a model without any ``nn.ReLU``
module they equal the plain gradient, and a warning says so.

``guided_backprop`` and ``guided_gradcam`` requested together share one forward pass: the Grad-CAM
gradient at the layer is taken first with the rule switched off (the plain gradient, as Grad-CAM
defines it), then the input gradient with the guided rule, from the same graph.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import nn

from saliencekit import _layout
from saliencekit.errors import InputError
from saliencekit.methods._capture import (
    FeatureLayer,
    ReluRule,
    ReshapeSpec,
    capture,
    check_reshape_option,
    count_relu_modules,
    settle,
)
from saliencekit.methods.base import Explanation, Method, check_inputs, preserve_model, reduce_channels
from saliencekit.methods.cam import (
    LayerSpec,
    check_layer_option,
    checked_activation,
    layer_for,
    layer_key,
    read_activation,
    upsample,
)
from saliencekit.methods.gradient import PixelGradientMethod
from saliencekit.methods.registry import register_method
from saliencekit.methods.targets import as_target, predicted_classes

_FUNCTIONAL_NOTE = "nn.ReLU modules only: functional F.relu keeps the plain gradient"


def _warn_without_relu_modules(model: nn.Module, name: str, rule: ReluRule) -> None:
    if count_relu_modules(model, rule) > 0:
        return
    if count_relu_modules(model) > 0:  # a Keras model whose ReLUs are all fused into Dense/Conv layers
        message = (f"{model.__class__.__name__} has only ReLUs fused into Dense/Conv layers as their activation, "
                   f"where {name} cannot bypass the forward mask: its backward pass is the plain gradient; use "
                   "separate keras.layers.ReLU layers to get the rule")
    else:
        message = (f"{model.__class__.__name__} has no nn.ReLU modules, so {name} cannot apply its ReLU rule: its "
                   "backward pass is the plain gradient (ReLUs called as functions, F.relu inside forward, cannot be "
                   "reached without patching torch); use nn.ReLU modules to get the rule")
    warnings.warn(message, UserWarning, stacklevel=3)


def rule_pass(
    model: nn.Module, inputs: torch.Tensor, target: Any, rule: ReluRule, layers: Sequence[FeatureLayer] = ()
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, Any, torch.Tensor]:
    """One forward pass with the ReLU ``rule``; the plain gradients at ``layers``, then the rule's input gradient.

    Returns:
        The input gradient under the rule (N, C, H, W), ``(A, dS/dA)`` per layer (plain ReLU gradient),
        the scores, the resolved target and the predicted classes.
    """
    with preserve_model(model), capture(model, [layer.module for layer in layers], relu_rule=rule) as cap, \
            torch.inference_mode(False), torch.enable_grad():
        x = inputs.detach().clone().requires_grad_(True)
        output = _layout.forward(model, x)
        resolved = as_target(target).resolve(output.detach())
        predictions = predicted_classes(output.detach())
        scores = resolved.score(output)
        layer_grads: list[tuple[torch.Tensor, torch.Tensor]] = []
        if layers:
            # Plain gradient first (Grad-CAM's definition), keeping the graph for the guided pass.
            acts = [checked_activation(cap, layer) for layer in layers]
            with cap.plain_relu():
                grads = torch.autograd.grad(scores.sum(), acts, retain_graph=True, allow_unused=True)
            for layer, act, g in zip(layers, acts, grads):
                layer = settle(model, layer, act, inputs)
                if g is None:
                    raise InputError(f"the explained score does not depend on layer {layer.name!r}; choose a layer "
                                     "on the path from the input to the output")
                layer_grads.append((read_activation(layer, act.detach()), read_activation(layer, g)))
        (gx,) = torch.autograd.grad(scores.sum(), x)
    return gx, layer_grads, scores.detach(), resolved, predictions


class _RuleShared:
    """Sharing for the guided family: one forward pass for every guided method of one model."""

    model: nn.Module

    def share_key(self) -> Hashable:
        return ("guided", id(self.model))

    @classmethod
    def attribute_shared(cls, methods: Sequence[Method], inputs: torch.Tensor, target: Any = None) -> list[Explanation]:
        """Guided backprop and guided Grad-CAM (any layers) of one model from one forward pass."""
        model = methods[0].model
        check_inputs(model, inputs)
        layers: dict[Hashable, FeatureLayer] = {}  # one per (layer, reshape) option
        for m in methods:
            if isinstance(m, GuidedGradCAM):
                layers.setdefault(layer_key(m.layer, m.reshape), layer_for(model, m.layer, inputs, m.reshape))
        gx, layer_grads, scores, resolved, predictions = rule_pass(model, inputs, target, "guided",
                                                                   list(layers.values()))
        grads_of = dict(zip(layers, layer_grads))
        targets = resolved.class_indices().to(inputs.device)
        out = []
        for m in methods:
            if isinstance(m, GuidedGradCAM):
                key = layer_key(m.layer, m.reshape)
                a, g = grads_of[key]
                out.append(m._combine(gx, a, g, layers[key].name, scores, targets, predictions))
            else:
                assert isinstance(m, GuidedBackprop)
                out.append(m._explanation(gx, scores, targets, predictions))
        return out


class _ReluRuleMethod(PixelGradientMethod):
    """An input gradient with a backward rule at every ``nn.ReLU`` module (``relu_rule``); warns without any."""

    family = "backprop"
    works_on_torchscript = False
    input_shift_invariant = True

    def __init__(self, model: nn.Module, *, reduce: str = "sum"):
        super().__init__(model, reduce=reduce)
        _warn_without_relu_modules(self.model, self.name, self.relu_rule)  # type: ignore[attr-defined]

    def _explanation(self, gx: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor,
                     predictions: torch.Tensor) -> Explanation:
        return Explanation(method=self.name, maps=reduce_channels(gx, self.reduce), attributions=gx, scores=scores,
                           targets=targets, predictions=predictions, params=self.params)


@register_method("guided_backprop")
class GuidedBackprop(_RuleShared, _ReluRuleMethod):
    """Guided backpropagation (Springenberg et al. 2015, Sec. 3 / Fig. 1).

    At every ``nn.ReLU`` the backward pass lets the gradient through only where the forward input
    was positive and the incoming gradient is positive. Functional ReLUs (``F.relu`` inside
    ``forward``) are not reachable without patching torch and keep the plain gradient; a model
    without ``nn.ReLU`` modules gets a warning.

    Args:
        model: the classifier (never modified).
        reduce: channel reduction of the (N, C, H, W) attribution: "sum", "abs_sum", "max_abs", "mean".

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 1))
    >>> GuidedBackprop(net).attribute(torch.randn(1, 1, 4, 4)).attributions.shape
    torch.Size([1, 1, 4, 4])
    """

    description = f"Guided backprop: ReLUs pass only positive gradients at positive inputs (Springenberg 2015; " \
                  f"{_FUNCTIONAL_NOTE})."
    relu_rule: ReluRule | None = "guided"

    def attribute(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        return self.attribute_shared([self], inputs, target)[0]


@register_method("deconvnet")
class DeconvNet(_ReluRuleMethod):
    """DeconvNet (Zeiler & Fergus 2014, Sec. 2.1): at every ``nn.ReLU`` the backward pass is
    ``relu(incoming gradient)``, ignoring the forward mask.

    Functional ReLUs (``F.relu`` inside ``forward``) keep the plain gradient; a model without
    ``nn.ReLU`` modules gets a warning.

    Args:
        model: the classifier (never modified).
        reduce: channel reduction of the (N, C, H, W) attribution: "sum", "abs_sum", "max_abs", "mean".

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 1))
    >>> DeconvNet(net).attribute(torch.randn(1, 1, 4, 4)).maps.shape
    torch.Size([1, 4, 4])
    """

    description = f"DeconvNet: ReLUs pass relu(gradient) backwards, ignoring the forward mask (Zeiler 2014; " \
                  f"{_FUNCTIONAL_NOTE})."
    relu_rule: ReluRule | None = "deconv"

    def attribute(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        check_inputs(self.model, inputs)
        gx, _, scores, resolved, predictions = rule_pass(self.model, inputs, target, "deconv")
        return self._explanation(gx, scores, resolved.class_indices().to(inputs.device), predictions)


@register_method("guided_gradcam")
class GuidedGradCAM(_RuleShared, Method):
    """Guided Grad-CAM (Selvaraju et al. 2017, Sec. 3.1): guided backprop times the upsampled Grad-CAM map.

    The attribution is ``gb(x) * up(relu(sum_k w_k A^k))`` per input channel, with the Grad-CAM
    weights ``w_k = mean_ij dS/dA^k_ij`` taken with the plain ReLU gradient and ``gb`` the guided
    backprop gradient (``nn.ReLU`` modules only; functional ReLUs keep the plain gradient).

    Args:
        model: the classifier (never modified).
        layer: Grad-CAM layer: None (the last spatial feature map), a dotted module name or a module.
        reduce: channel reduction of the (N, C, H, W) attribution: "sum", "abs_sum", "max_abs", "mean".
        reshape: how the layer's output becomes (N, C, h, w) (see :class:`~saliencekit.methods.cam.BaseCAM`).

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 1))
    >>> e = GuidedGradCAM(net).attribute(torch.randn(1, 1, 4, 4))
    >>> e.maps.shape, e.layer_maps.shape
    (torch.Size([1, 4, 4]), torch.Size([1, 4, 4]))
    """

    description = f"Guided Grad-CAM: guided backprop times the upsampled Grad-CAM map (Selvaraju 2017; " \
                  f"{_FUNCTIONAL_NOTE})."
    family = "backprop"
    uses_gradients = True
    needs_layer = True
    works_on_torchscript = False
    display_normalization = "percentile"

    def __init__(self, model: nn.Module, *, layer: LayerSpec = None, reduce: str = "sum", reshape: ReshapeSpec = None):
        super().__init__(model)
        reduce_channels(torch.zeros(1, 1, 1, 1), reduce)  # validates the name
        self.layer = check_layer_option(layer)
        self.reduce = reduce
        self.reshape = check_reshape_option(reshape)
        self._store_params(layer=layer, reduce=reduce, reshape=reshape)
        _warn_without_relu_modules(self.model, "guided_gradcam", "guided")

    def _combine(self, gx: torch.Tensor, a: torch.Tensor, g: torch.Tensor, name: str, scores: torch.Tensor,
                 targets: torch.Tensor, predictions: torch.Tensor) -> Explanation:
        weights = g.mean(dim=(2, 3))  # Grad-CAM Eq. 1
        cam = torch.einsum("nk,nkhw->nhw", weights, a).clamp_min(0)  # Grad-CAM Eq. 2
        attributions = gx * upsample(cam, gx.shape[-2:])[:, None]
        return Explanation(
            method=self.name, maps=reduce_channels(attributions, self.reduce), attributions=attributions,
            layer_maps=cam, scores=scores, targets=targets, predictions=predictions,
            params={**self.params, "layer": name}, extras={"weights": weights},
        )

    def attribute(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        return self.attribute_shared([self], inputs, target)[0]


__all__ = ["DeconvNet", "GuidedBackprop", "GuidedGradCAM", "rule_pass"]
