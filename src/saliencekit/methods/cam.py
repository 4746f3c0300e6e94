"""Gradient-weighted class activation maps: Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM.

All of them need the same two tensors of one layer: the activation ``A`` (N, K, h, w) and its
gradient ``g = dS/dA``. :class:`BaseCAM` computes them with one forward pass and one backward pass
that stops at the layer (``torch.autograd.grad`` with respect to the captured activation: no input
gradient, no parameter gradients), then each method only combines them:
``capture -> channel weights -> weighted sum -> ReLU -> bilinear upsample``. Grad-CAM, Grad-CAM++
and XGrad-CAM override only :meth:`BaseCAM.weights`; HiResCAM and LayerCAM override only
:meth:`BaseCAM.combine`.

Methods on the same model and layer requested together (``saliencekit.explain(model, x,
methods=["gradcam", "gradcam++", "layercam"])``) share one forward and one backward pass: their
:meth:`~BaseCAM.share_key` is equal, and :meth:`BaseCAM.attribute_shared` computes ``A`` and ``g``
once, combines them per method and upsamples all maps with one interpolation call.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from saliencekit import _layout
from saliencekit.errors import InputError
from saliencekit.methods._capture import (
    FeatureLayer,
    ReshapeSpec,
    capture,
    check_reshape_option,
    resolve_feature_layer,
    settle,
)
from saliencekit.methods.base import Explanation, Method, check_inputs, preserve_model
from saliencekit.methods.registry import register_method
from saliencekit.methods.targets import ResolvedTarget, as_target, predicted_classes

LayerSpec = str | nn.Module | None


def check_layer_option(layer: object) -> LayerSpec:
    """Validate a ``layer`` option (``None``, a dotted module name or a module)."""
    if layer is None or isinstance(layer, str | nn.Module):
        return layer
    raise InputError(f"layer must be None (the last convolutional stage), a module name such as 'features.7', "
                     f"or a module of the model; got {type(layer).__name__}")


def layer_key(layer: LayerSpec, reshape: ReshapeSpec = None) -> Hashable:
    """A hashable stand-in for the ``layer`` and ``reshape`` options (used in share keys)."""
    spec = ("module", id(layer)) if isinstance(layer, nn.Module) else ("name", layer)
    return (*spec, reshape if reshape is None or isinstance(reshape, str) else ("callable", id(reshape)))


def layer_for(model: nn.Module, layer: LayerSpec, inputs: torch.Tensor, reshape: ReshapeSpec = None) -> FeatureLayer:
    """The layer to explain at, its dotted name and the reader of its output
    (see :func:`~saliencekit.methods._capture.resolve_feature_layer`; the discovery pass is remembered per model
    and input shape)."""
    return resolve_feature_layer(model, layer, inputs, reshape)


def checked_activation(cap: Any, layer: FeatureLayer) -> torch.Tensor:
    """The raw captured output of ``layer`` (read it with ``layer.reader``); the layer must be called once."""
    a = cap.activation(layer.module)
    calls = cap.calls.get(id(layer.module), 0)
    if calls > 1:
        raise InputError(f"layer {layer.name!r} is called {calls} times in one forward pass (a shared module, like "
                         "the ReLU reused inside torchvision's ResNet blocks); choose a layer that is called once")
    return a


def read_activation(layer: FeatureLayer, raw: torch.Tensor) -> torch.Tensor:
    """The (N, K, h, w) feature map of a raw layer output (or of its gradient)."""
    a = layer.reader(raw)
    if a.ndim != 4:
        raise InputError(f"layer {layer.name!r} outputs shape {tuple(raw.shape)}, not a spatial feature map "
                         "(N, C, H, W); CAM methods need a convolutional or token layer")
    return a


def _linear_weights(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """The (n_out, n_in) matrix of 1-D linear interpolation (align_corners=False): ``out = W @ v``."""
    eye = torch.eye(n_in, dtype=like.dtype, device=like.device)
    return F.interpolate(eye[None], size=n_out, mode="linear", align_corners=False)[0].T


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear upsampling (align_corners=False) of (B, h, w) maps to (B, H, W), in one call.

    Bilinear interpolation is separable, so small finite maps on the CPU (a CAM layer of 4x4 to 32x32) are
    upsampled as ``Wy @ maps @ Wx^T`` with the 1-D interpolation matrices: the same numbers as
    ``F.interpolate`` (to float rounding), 1.4-3x faster for those sizes.
    """
    h, w = maps.shape[-2:]
    out_h, out_w = (int(v) for v in size)
    # CPU only (on CUDA a matmul may run in TF32), and finite maps only (a NaN would spread along its row and
    # column through the matmul instead of staying in its 2x2 neighbourhood).
    small = maps.device.type == "cpu" and max(h, w) <= 32 and maps.dtype in (torch.float32, torch.float64)
    if small and bool(torch.isfinite(maps).all()):
        return _linear_weights(h, out_h, maps) @ maps @ _linear_weights(w, out_w, maps).T
    return F.interpolate(maps[:, None], size=(out_h, out_w), mode="bilinear", align_corners=False)[:, 0]


def layer_activations(
    model: nn.Module, layer: FeatureLayer, inputs: torch.Tensor, target: Any
) -> tuple[torch.Tensor, torch.Tensor, ResolvedTarget, torch.Tensor, FeatureLayer]:
    """One forward pass under ``torch.inference_mode()`` recording the layer (for CAMs without gradients).

    Returns:
        The activation ``A`` (N, K, h, w), the scores ``S`` (N,), the resolved target, the predicted classes and the
        layer with its reader settled.
    """
    with preserve_model(model), capture(model, [layer.module]) as cap, torch.inference_mode():
        output = _layout.forward(model, inputs)
        raw = checked_activation(cap, layer)
        layer = settle(model, layer, raw, inputs)
        a = read_activation(layer, raw)
        resolved = as_target(target).resolve(output)
        predictions = predicted_classes(output)
        scores = resolved.score(output)
    return a.clone(), scores.clone(), resolved, predictions.clone(), layer


def layer_gradients(
    model: nn.Module, layer: FeatureLayer, inputs: torch.Tensor, target: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, ResolvedTarget, torch.Tensor, FeatureLayer]:
    """One forward and one backward pass that stops at ``layer``.

    Returns:
        The activation ``A`` (N, K, h, w), its gradient ``g = dS/dA``, the scores ``S`` (N,),
        the resolved target, the predicted classes and the layer with its reader settled.
    """
    with preserve_model(model), capture(model, [layer.module], leaf=True) as cap, \
            torch.inference_mode(False), torch.enable_grad():
        x = inputs.clone() if inputs.is_inference() else inputs
        output = _layout.forward(model, x)
        raw = checked_activation(cap, layer)
        layer = settle(model, layer, raw, inputs)
        resolved = as_target(target).resolve(output.detach())
        predictions = predicted_classes(output.detach())
        scores = resolved.score(output)
        (g,) = torch.autograd.grad(scores.sum(), raw, allow_unused=True)
    if g is None:
        raise InputError(f"the explained score does not depend on layer {layer.name!r}; choose a layer on the path "
                         "from the input to the output")
    a, g = read_activation(layer, raw.detach()), read_activation(layer, g)
    if layer.reader.layout == "tokens" and not bool(g.ne(0).any()):
        raise InputError(f"the explained score does not depend on the patch tokens of layer {layer.name!r} (after "
                         "the last attention block a ViT reads only its class token); choose a layer before it, "
                         "e.g. the last block's norm1, or leave layer= unset")
    return a, g, scores.detach(), resolved, predictions, layer


# --------------------------------------------------------------------------------------- base class


@dataclass
class LayerPass:
    """What the shared pass of one CAM layer gives each method of the group.

    Attributes:
        model: the classifier.
        layer: the layer explained at (module, dotted name, reader of its output).
        inputs: the images (N, C, H, W).
        activations: ``A`` (N, K, h, w), as the layer's reader reads it.
        gradients: ``g = dS/dA`` (N, K, h, w), or None when no method of the group uses gradients (then the pass
            was a forward pass only).
        scores: ``S`` (N,) at the input.
        target: the resolved target (for methods that run further passes, like Ablation-CAM).
        predictions: the predicted classes (N,).
    """

    model: nn.Module
    layer: FeatureLayer
    inputs: torch.Tensor
    activations: torch.Tensor
    gradients: torch.Tensor | None
    scores: torch.Tensor
    target: ResolvedTarget
    predictions: torch.Tensor


class BaseCAM(Method):
    """Shared machinery of the gradient-weighted CAMs.

    ``capture -> channel weights -> weighted sum -> ReLU -> bilinear upsample``. Subclasses override
    :meth:`weights` (a per-channel weight ``w_k``, map ``sum_k w_k A^k``) or :meth:`combine`
    (any element-wise combination of ``A`` and ``g``), nothing else. A CAM that needs more than ``A`` and
    ``g`` (further forward passes: Ablation-CAM; a decomposition: Eigen-CAM) overrides :meth:`layer_map`.
    CAMs that do not use gradients set ``uses_gradients = False``: a group of them alone is computed from one
    forward pass, and with gradient CAMs they share their forward and backward pass.

    Args:
        model: the classifier (never modified).
        layer: the layer to explain at: None (the last spatial feature map or the last token layer the output
            depends on, found automatically), a dotted module name (``"layer4"``, ``"features.7"``,
            ``"blocks.11.norm1"``; a Keras layer's name for a Keras model) or a module of the model.
        relu: apply the final ReLU (docs/methods.md); False returns the signed map.
        reshape: how the layer's output becomes (N, C, h, w): None (automatic: NCHW maps as they are, channels-last
            maps permuted, ViT tokens laid out on their patch grid without the class/register tokens), ``"nchw"``,
            ``"nhwc"``, ``"tokens"``, or a callable (like pytorch-grad-cam's ``reshape_transform``; it must only
            rearrange, as it is applied to the activation and to its gradient).
    """

    family = "cam"
    uses_gradients = True
    needs_layer = True
    works_on_torchscript = False

    def __init__(self, model: nn.Module, *, layer: LayerSpec = None, relu: bool = True, reshape: ReshapeSpec = None):
        super().__init__(model)
        self.layer = check_layer_option(layer)
        self.relu = bool(relu)
        self.reshape = check_reshape_option(reshape)
        self._store_params(layer=layer, relu=self.relu, reshape=reshape)

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor | None:
        """Channel weights ``w_k`` (N, K), or None for methods that override :meth:`combine` instead."""
        return None

    def layer_map(self, layer_pass: LayerPass) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The map before the ReLU (N, h, w) and the extras to report, from the shared pass (default:
        :meth:`weights` then :meth:`combine` of ``A`` and ``g``, extras ``{"weights": w_k}``)."""
        a, g = layer_pass.activations, layer_pass.gradients
        w = self.weights(a, g)  # type: ignore[arg-type]
        return self.combine(a, g, w), ({} if w is None else {"weights": w})  # type: ignore[arg-type]

    def combine(self, activations: torch.Tensor, gradients: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """The map before the ReLU (N, h, w); default ``sum_k w_k A^k``."""
        if weights is None:
            raise NotImplementedError(f"{type(self).__name__} must override weights() or combine()")
        return torch.einsum("nk,nkhw->nhw", weights, activations)

    def share_key(self) -> Hashable:
        return ("gradient-cam", id(self.model), layer_key(self.layer, self.reshape))

    def attribute(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        return self.attribute_shared([self], inputs, target)[0]

    @classmethod
    def attribute_shared(cls, methods: Sequence[Method], inputs: torch.Tensor, target: Any = None) -> list[Explanation]:
        """Several CAMs of one model and layer from one forward and one backward pass."""
        cams = list(methods)
        first = cams[0]
        assert all(isinstance(m, BaseCAM) and m.share_key() == first.share_key() for m in cams)
        model = first.model
        check_inputs(model, inputs)
        layer = layer_for(model, first.layer, inputs, first.reshape)  # type: ignore[attr-defined]
        g: torch.Tensor | None = None
        if any(type(m).uses_gradients for m in cams):
            a, g, scores, resolved, predictions, layer = layer_gradients(model, layer, inputs, target)
        else:
            a, scores, resolved, predictions, layer = layer_activations(model, layer, inputs, target)
        layer_pass = LayerPass(model, layer, inputs, a, g, scores, resolved, predictions)
        raws, extras = [], []
        for m in cams:
            raw, more = m.layer_map(layer_pass)  # type: ignore[attr-defined]
            raws.append(raw.clamp_min(0) if m.relu else raw)  # type: ignore[attr-defined]
            extras.append(more)
        n = inputs.shape[0]
        ups = upsample(torch.cat(raws), inputs.shape[-2:]).split(n)
        targets = resolved.class_indices().to(inputs.device)
        out = []
        for m, raw, up, more in zip(cams, raws, ups, extras):
            out.append(Explanation(
                method=m.name, maps=up, layer_maps=raw, scores=scores, targets=targets, predictions=predictions,
                params={**m.params, "layer": layer.name}, extras=more,
            ))
        return out


# ------------------------------------------------------------------------------------------ methods


@register_method("gradcam")
class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): channel weights are the spatially averaged gradients.

    ``w_k = mean_ij dS/dA^k_ij`` (Eq. 1), map ``relu(sum_k w_k A^k)`` (Eq. 2).

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2))
    >>> e = GradCAM(net).attribute(torch.randn(2, 1, 8, 8))
    >>> e.maps.shape, e.layer_maps.shape, e.params["layer"]
    (torch.Size([2, 8, 8]), torch.Size([2, 8, 8]), '1')
    """

    description = "Grad-CAM: layer activations weighted by spatially averaged gradients (Selvaraju 2017)."

    def weights(self, activations, gradients):  # type: ignore[no-untyped-def]
        return gradients.mean(dim=(2, 3))  # Eq. 1: alpha^c_k = 1/Z sum_ij dy^c/dA^k_ij


@register_method("gradcam++")
class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhyay et al. 2018), Eq. 19 with the exponential trick.

    With ``S = exp(Y)`` the second and third derivatives are powers of the first, so
    ``alpha^k_ij = g^2 / (2 g^2 + sum_ab A^k_ab g^3)`` (Eq. 19; zero where the denominator is zero)
    and ``w_k = sum_ij alpha^k_ij relu(g^k_ij)`` (the paper's weight equation), map ``relu(sum_k w_k A^k)``.

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 2))
    >>> GradCAMPlusPlus(net).attribute(torch.randn(1, 1, 8, 8)).extras["weights"].shape
    torch.Size([1, 4])
    """

    description = ("Grad-CAM++: pixel-weighted positive gradients, Eq. 19 with the exponential trick "
                   "(Chattopadhyay 2018).")

    def weights(self, activations, gradients):  # type: ignore[no-untyped-def]
        g2 = gradients.pow(2)
        sum_a = activations.sum(dim=(2, 3), keepdim=True)
        denom = 2 * g2 + sum_a * g2 * gradients  # Eq. 19 denominator
        nonzero = denom != 0
        alpha = torch.where(nonzero, g2 / torch.where(nonzero, denom, torch.ones_like(denom)), 0.0)
        return (alpha * gradients.clamp_min(0)).sum(dim=(2, 3))  # w_k = sum_ij alpha^k_ij relu(g^k_ij)


@register_method("xgradcam")
class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al. 2020): gradients averaged with the activations as weights.

    ``w_k = sum_ij g^k_ij A^k_ij / sum_ij A^k_ij`` (zero where ``sum_ij A^k_ij`` is zero),
    map ``relu(sum_k w_k A^k)``.

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 1))
    >>> XGradCAM(net).attribute(torch.randn(1, 1, 8, 8)).maps.shape
    torch.Size([1, 8, 8])
    """

    description = "XGrad-CAM: gradients averaged with activation weights (Fu 2020)."

    def weights(self, activations, gradients):  # type: ignore[no-untyped-def]
        sum_a = activations.sum(dim=(2, 3))
        num = (gradients * activations).sum(dim=(2, 3))
        nonzero = sum_a != 0
        return torch.where(nonzero, num / torch.where(nonzero, sum_a, torch.ones_like(sum_a)), 0.0)


@register_method("hirescam")
class HiResCAM(BaseCAM):
    """HiResCAM (Draelos & Carin 2020): element-wise product of gradient and activation.

    Map ``relu(sum_k g^k * A^k)``: no spatial averaging of the gradient, so the map shows
    exactly which locations raise the score (for a CNN ending in global average pooling and one
    linear layer it equals Grad-CAM).

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 1))
    >>> HiResCAM(net).attribute(torch.randn(1, 1, 8, 8)).maps.shape
    torch.Size([1, 8, 8])
    """

    description = "HiResCAM: element-wise gradient x activation summed over channels (Draelos 2020)."

    def combine(self, activations, gradients, weights):  # type: ignore[no-untyped-def]
        return (gradients * activations).sum(dim=1)  # sum_k g^k * A^k, element-wise


@register_method("layercam")
class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al. 2021): activations weighted element-wise by the positive gradients.

    Map ``relu(sum_k relu(g^k) * A^k)``; reliable also at shallow layers.

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 1))
    >>> LayerCAM(net).attribute(torch.randn(1, 1, 8, 8)).maps.shape
    torch.Size([1, 8, 8])
    """

    description = "LayerCAM: activations weighted by positive gradients, element-wise (Jiang 2021)."

    def combine(self, activations, gradients, weights):  # type: ignore[no-untyped-def]
        return (gradients.clamp_min(0) * activations).sum(dim=1)  # w^k_ij = relu(g^k_ij), map sum_k w^k * A^k


__all__ = ["BaseCAM", "GradCAM", "GradCAMPlusPlus", "HiResCAM", "LayerCAM", "LayerPass", "XGradCAM", "layer_for",
           "upsample"]
