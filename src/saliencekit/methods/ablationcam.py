"""Ablation-CAM (Desai & Ramaswamy 2020): channels weighted by the score drop when each one is zeroed.

For each channel ``k`` of the layer's activation ``A`` the network is run on with ``A^k`` set to zero (the rest of
``A`` unchanged): ``S_k``. The weight is the drop ``w_k = S - S_k`` and the map ``relu(sum_k w_k A^k)``, upsampled
like every CAM. The paper (Eq. 3) and pytorch-grad-cam divide the drop by ``S``: a positive per-image factor when
``S > 0``, which the display's min-max scaling removes, but one that mirrors the map when ``S < 0`` (a negative
logit), so saliencekit keeps the drop itself.

The ablated passes replace the layer's output through a forward hook (the model is never modified) and run, like
Score-CAM's masked passes, in large batches of (image, channel) jobs under ``torch.inference_mode()``
(:mod:`saliencekit.methods._job_passes`). Channels that are zero everywhere are not run: zeroing them changes
nothing, so their weight is exactly 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from saliencekit import _layout
from saliencekit.errors import InputError
from saliencekit.methods._batching import BatchSize, check_batch_size
from saliencekit.methods._capture import FeatureLayer, ReshapeSpec, capture, substitute_output
from saliencekit.methods._job_passes import job_scores
from saliencekit.methods._precision import Precision, autocast, check_precision
from saliencekit.methods.base import preserve_model
from saliencekit.methods.cam import BaseCAM, LayerPass, LayerSpec, checked_activation
from saliencekit.methods.registry import register_method


def _check_layout(layer: FeatureLayer) -> None:
    if layer.reader.layout not in ("nchw", "nhwc", "tokens"):
        raise InputError(f"ablationcam zeroes a channel of the layer's output, which it cannot locate in the output of "
                         f"layer {layer.name!r} read by a reshape= callable; use reshape='nchw', 'nhwc' or 'tokens', "
                         "or another CAM")


def _zero_channels(raw: torch.Tensor, channels: torch.Tensor, layer: FeatureLayer) -> torch.Tensor:
    """Rows of the layer's raw output (J, ...) with channel ``channels[j]`` of row ``j`` zeroed where the reader
    reads it: dim 1 of an NCHW map, the last dim of a channels-last map, the last dim of the patch tokens."""
    rows = torch.arange(raw.shape[0], device=raw.device)
    layout = layer.reader.layout
    if layout == "nchw":
        raw[rows, channels] = 0
    elif layout == "nhwc":
        raw[rows, ..., channels] = 0
    else:
        raw[rows, layer.reader.prefix:, channels] = 0
    return raw


def ablation_scores(layer_pass: LayerPass, selected: torch.Tensor, *, batch_size: BatchSize = "auto",
                    precision: Precision = "fp32", progress: bool = False) -> torch.Tensor:
    """``S_k``: the score with channel ``k`` of the layer's output zeroed, per selected (image, channel) (N, K); NaN
    where not selected."""
    model, inputs, layer = layer_pass.model, layer_pass.inputs, layer_pass.layer
    n = inputs.shape[0]
    current: dict[str, torch.Tensor] = {}
    layout = layer.reader.layout
    _check_layout(layer)
    if layout == "nchw":  # the layer's own output, in the layout the rest of the network takes
        raw = layer_pass.activations
    elif layout == "nhwc":
        raw = layer_pass.activations.permute(0, 2, 3, 1)
    else:  # tokens: the prefix tokens the reader dropped are needed too (one more forward pass)
        with preserve_model(model), capture(model, [layer.module]) as cap, torch.inference_mode():
            _layout.forward(model, inputs)
            raw = checked_activation(cap, layer).clone()

    def forward_jobs(img: torch.Tensor, ch: torch.Tensor) -> torch.Tensor:
        current["raw"] = _zero_channels(raw[img].clone(), ch, layer)  # A with channel k zeroed
        x = inputs.expand(int(img.shape[0]), *inputs.shape[1:]) if n == 1 else inputs[img]
        return _layout.forward(model, x)

    with preserve_model(model), substitute_output(model, layer.module, lambda: current["raw"]):
        return job_scores(model, inputs, selected, layer_pass.target, forward_jobs, batch_size=batch_size,
                          precision=precision, progress=progress, desc="Ablation-CAM passes")


@register_method("ablationcam")
class AblationCAM(BaseCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020): ``w_k = S - S_k``, the drop of the score when channel ``k`` is zeroed.

    Map ``relu(sum_k w_k A^k)``. One forward pass per channel that is not zero everywhere, per image, batched (see
    the module docstring); requested with the gradient CAMs of the same layer, it uses their pass for ``A`` and
    ``S``. ``extras`` hold ``weights`` (the drops) and ``channel_scores`` (``S_k``; NaN for channels not run).

    Args:
        model: the classifier (never modified).
        layer: None (the last spatial feature map), a dotted module name or a module of the model.
        relu: apply the final ReLU (default); False returns the signed map.
        reshape: how the layer's output becomes (N, C, h, w) (see :class:`~saliencekit.methods.cam.BaseCAM`; a
            ``reshape=`` callable is refused: the zeroed channel must be located in the layer's own output).
        batch_size: ablated passes per forward, or "auto" (sized to the device, halved on CUDA out-of-memory).
        precision: "fp32" (default), "bf16" or "fp16" (autocast for the ablated passes; the clean score is then
            taken under the same autocast, so that the drops compare like with like).
        progress: show a progress bar over the passes.

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2))
    >>> e = AblationCAM(net).attribute(torch.randn(2, 1, 8, 8))
    >>> e.maps.shape, e.extras["weights"].shape
    (torch.Size([2, 8, 8]), torch.Size([2, 4]))
    """

    description = "Ablation-CAM: channels weighted by the score drop when each is zeroed (Desai 2020)."
    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        *,
        layer: LayerSpec = None,
        relu: bool = True,
        reshape: ReshapeSpec = None,
        batch_size: BatchSize = "auto",
        precision: Precision = "fp32",
        progress: bool = False,
    ):
        super().__init__(model, layer=layer, relu=relu, reshape=reshape)
        self.batch_size = check_batch_size(batch_size)
        self.precision = check_precision(precision)
        self.progress = bool(progress)
        self._store_params(batch_size=batch_size, precision=precision)

    def layer_map(self, layer_pass: LayerPass) -> tuple[torch.Tensor, dict[str, Any]]:
        a = layer_pass.activations
        selected = a.flatten(2).ne(0).any(2)  # channels that are zero everywhere: nothing to ablate, weight 0
        ablated = ablation_scores(layer_pass, selected, batch_size=self.batch_size, precision=self.precision,
                                  progress=self.progress)
        clean = layer_pass.scores.to(a.dtype)
        if self.precision != "fp32":
            with preserve_model(self.model), torch.inference_mode(), autocast(a.device, self.precision):
                clean = layer_pass.target.score(_layout.forward(self.model, layer_pass.inputs)).to(a.dtype)
        weights = torch.where(selected, clean[:, None] - ablated, 0.0)  # w_k = S - S_k
        return self.combine(a, layer_pass.gradients, weights), {"weights": weights, "channel_scores": ablated}


__all__ = ["AblationCAM", "ablation_scores"]
