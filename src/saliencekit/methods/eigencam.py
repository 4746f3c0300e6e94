"""Eigen-CAM (Muhammad & Yeasin 2020): the layer's activations projected on their first principal component.

For each image the activation ``A`` (K, h, w) is read as a matrix ``M`` (h*w positions x K channels). With
``center=True`` (the default, as pytorch-grad-cam) each channel's mean over the positions is subtracted first; the
paper projects the uncentred activations (``center=False``). With ``v`` the first right singular vector of ``M``
(its first principal direction, ``M = U S V^T``), the map is ``relu(M v)`` reshaped to (h, w) and upsampled like
every CAM. The map does not depend on the target: Eigen-CAM is class-agnostic.

Sign convention: a singular vector is defined up to its sign (LAPACK may return either), so the sign is fixed by
``sum_k v_k > 0``: the component points where the channels are active together. For centred activations this is
the sign that makes the map correlate positively with the channel-summed activation map (``(M v) . (M 1) =
s_1^2 sum_k v_k``); for uncentred non-negative activations (after a ReLU) ``v`` is non-negative anyway (Perron-
Frobenius). Where ``sum_k v_k`` is zero the largest ``|v_k|`` is made positive. pytorch-grad-cam keeps LAPACK's
sign, so its map can be the mirror image (``relu(-M v)``) of ours; ``extras["explained_variance"]`` (the share
``s_1^2 / sum_i s_i^2``) says how much of the activations the component holds (near ``1/K`` the direction, and so
the map, is ill-defined).
"""

from __future__ import annotations

import torch
from torch import nn

from saliencekit.methods._capture import ReshapeSpec
from saliencekit.methods.cam import BaseCAM, LayerPass, LayerSpec
from saliencekit.methods.registry import register_method


def first_component(activations: torch.Tensor, center: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The projection of each image's activations on their first principal direction, with the sign convention of
    the module docstring, and the share of the variance (sum of squares) it explains.

    Args:
        activations: (N, K, h, w).
        center: subtract each channel's spatial mean first.

    Returns:
        The projections (N, h, w) and the explained shares (N,).

    >>> a = torch.zeros(1, 2, 2, 2)
    >>> a[0, :, 0, 0] = 1.0  # both channels active at one position
    >>> first_component(a, center=False)[0][0].tolist()
    [[1.4142135381698608, 0.0], [0.0, 0.0]]
    """
    n, _k, h, w = activations.shape
    dtype = activations.dtype if activations.dtype == torch.float64 else torch.float32
    m = activations.to(dtype).nan_to_num(0.0).flatten(2).transpose(1, 2)  # (N, h*w, K)
    if center:
        m = m - m.mean(dim=1, keepdim=True)
    _u, s, vh = torch.linalg.svd(m, full_matrices=False)
    v = vh[:, 0, :]  # (N, K)
    total = v.sum(1)
    largest = v.gather(1, v.abs().argmax(1, keepdim=True))[:, 0]
    sign = torch.where(total != 0, total.sign(), largest.sign())
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    v = v * sign[:, None]
    projection = (m @ v[:, :, None])[:, :, 0].view(n, h, w)
    energy = s.pow(2)
    denom = energy.sum(1)
    share = torch.where(denom > 0, energy[:, 0] / torch.where(denom > 0, denom, torch.ones_like(denom)), 0.0)
    return projection.to(activations.dtype), share.to(activations.dtype)


@register_method("eigencam")
class EigenCAM(BaseCAM):
    """Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of the layer's activations.

    Map ``relu(M v)`` (module docstring: ``M`` the positions x channels activation, centred by default, ``v`` its
    first right singular vector, sign fixed by ``sum_k v_k > 0``). Needs no gradient and ignores the target (the
    explanation still records the resolved target and scores). Requested with the gradient CAMs of the same layer,
    it uses their forward pass.

    Args:
        model: the classifier (never modified).
        layer: None (the last spatial feature map), a dotted module name or a module of the model.
        relu: apply the final ReLU (default, as pytorch-grad-cam); False returns the signed projection.
        reshape: how the layer's output becomes (N, C, h, w) (see :class:`~saliencekit.methods.cam.BaseCAM`).
        center: subtract each channel's spatial mean before the decomposition (default, as pytorch-grad-cam); the
            paper decomposes the uncentred activations.

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2))
    >>> e = EigenCAM(net).attribute(torch.randn(2, 1, 8, 8))
    >>> e.maps.shape, e.extras["explained_variance"].shape
    (torch.Size([2, 8, 8]), torch.Size([2]))
    """

    description = "Eigen-CAM: the layer's activations projected on their first principal component (Muhammad 2020)."
    uses_gradients = False

    def __init__(self, model: nn.Module, *, layer: LayerSpec = None, relu: bool = True, reshape: ReshapeSpec = None,
                 center: bool = True):
        super().__init__(model, layer=layer, relu=relu, reshape=reshape)
        self.center = bool(center)
        self._store_params(center=self.center)

    def layer_map(self, layer_pass: LayerPass) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        projection, share = first_component(layer_pass.activations, self.center)
        return projection, {"explained_variance": share}


__all__ = ["EigenCAM", "first_component"]
