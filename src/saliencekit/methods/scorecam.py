"""Score-CAM (Wang et al. 2020): channel weights from the score of the input masked by each channel.

For each channel ``k`` of the layer's activation ``A`` the mask ``H^k`` is ``A^k`` upsampled
(bilinear) to the input size and min-max scaled to [0, 1]; the channel's score is
``s_k = S(x * H^k)``; the weights are ``softmax_k(s_k)`` and the map is ``relu(sum_k w_k A^k)``.
Channels whose activation is constant carry no spatial information: they get weight 0 and are
left out of the softmax (and no forward pass is spent on them). ``top_n`` keeps only the ``n``
channels of largest activation variance per image ("Faster Score-CAM").

All masked forward passes run under ``torch.inference_mode()`` in large batches that mix channels
and images; the masked inputs of each batch are built with one gather, one interpolation and
in-place arithmetic into a reused buffer, with no Python loop over channels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from saliencekit import _layout
from saliencekit.errors import InputError
from saliencekit.methods._batching import BatchSize, check_batch_size
from saliencekit.methods._capture import ReshapeSpec, check_reshape_option, eval_mode
from saliencekit.methods._job_passes import job_scores
from saliencekit.methods._precision import Precision, autocast, check_precision
from saliencekit.methods.base import Explanation, Method, check_inputs, preserve_model
from saliencekit.methods.cam import (
    LayerSpec,
    check_layer_option,
    layer_activations,
    layer_for,
    upsample,
)
from saliencekit.methods.normalize import minmax_scale_
from saliencekit.methods.registry import register_method


@register_method("scorecam")
class ScoreCAM(Method):
    """Score-CAM (Wang et al. 2020) with softmax-normalised channel scores, as docs/methods.md defines it.

    Args:
        model: the classifier (never modified).
        layer: None (the last spatial feature map), a dotted module name or a module of the model.
        top_n: only the ``top_n`` channels of largest activation variance per image get a forward
            pass and a weight ("Faster Score-CAM"); None uses every channel.
        baseline_subtract: use ``s_k = S(x * H^k) - S(0)`` (the paper's increase of confidence over
            the zero-image baseline). The softmax is shift-invariant, so the map is the same either
            way; only ``extras["channel_scores"]`` change.
        batch_size: masked images per forward pass, or "auto" (sized to the device, halved on
            CUDA out-of-memory).
        precision: "fp32" (default), "bf16" or "fp16" (autocast for the masked passes; fp16 needs CUDA).
        channels_last: build the masked batches in channels-last memory layout (faster convolutions
            on recent GPUs).
        progress: show a progress bar over the batches.
        reshape: how the layer's output becomes (N, C, h, w) (see :class:`~saliencekit.methods.cam.BaseCAM`).

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2))
    >>> e = ScoreCAM(net, top_n=2).attribute(torch.randn(2, 1, 8, 8))
    >>> e.maps.shape, int((e.extras["weights"] > 0).sum(1).max()) <= 2
    (torch.Size([2, 8, 8]), True)
    """

    description = ("Score-CAM: channels weighted by the softmax of the scores of the input masked by each "
                   "channel; top_n for Faster Score-CAM (Wang 2020).")
    family = "cam"
    needs_layer = True
    works_on_torchscript = False

    def __init__(
        self,
        model: nn.Module,
        *,
        layer: LayerSpec = None,
        top_n: int | None = None,
        baseline_subtract: bool = False,
        batch_size: BatchSize = "auto",
        precision: Precision = "fp32",
        channels_last: bool = False,
        progress: bool = False,
        reshape: ReshapeSpec = None,
    ):
        super().__init__(model)
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
            raise InputError(f"top_n must be a positive number of channels or None (all channels), got {top_n!r}")
        self.layer = check_layer_option(layer)
        self.top_n = top_n
        self.baseline_subtract = bool(baseline_subtract)
        self.batch_size = check_batch_size(batch_size)
        self.precision = check_precision(precision)
        self.channels_last = bool(channels_last)
        self.progress = bool(progress)
        self.reshape = check_reshape_option(reshape)
        self._store_params(layer=layer, top_n=top_n, baseline_subtract=self.baseline_subtract,
                           batch_size=batch_size, precision=precision, channels_last=self.channels_last,
                           reshape=reshape)

    def attribute(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        model = self.model
        check_inputs(model, inputs)
        layer = layer_for(model, self.layer, inputs, self.reshape)
        with preserve_model(model), eval_mode(model), torch.inference_mode():
            a, scores, resolved, predictions, layer = layer_activations(model, layer, inputs, target)
            a = a.to(inputs.dtype)
            channel_scores, selected = self._channel_scores(inputs, a, resolved)
            baseline = None
            if self.baseline_subtract:
                with autocast(inputs.device, self.precision):
                    zero_out = _layout.forward(model, torch.zeros_like(inputs[:1]))
                baseline = resolved.score(zero_out.expand(inputs.shape[0], *zero_out.shape[1:])).to(inputs.dtype)
                channel_scores = channel_scores - baseline[:, None]
            logits = torch.where(selected, channel_scores, float("-inf"))
            weights = torch.where(selected.any(1, keepdim=True), torch.softmax(logits, dim=1), 0.0)
            layer_maps = torch.einsum("nk,nkhw->nhw", weights, a).clamp_min(0)
            maps = upsample(layer_maps, inputs.shape[-2:])
        extras = {"weights": weights.clone(), "channel_scores": channel_scores.clone()}
        if baseline is not None:
            extras["baseline_scores"] = baseline.clone()
        return Explanation(
            method=self.name, maps=maps.clone(), layer_maps=layer_maps.clone(), scores=scores.clone(),
            targets=resolved.class_indices().to(inputs.device), predictions=predictions.clone(),
            params={**self.params, "layer": layer.name}, extras=extras,
        )

    def _channel_scores(
        self, inputs: torch.Tensor, a: torch.Tensor, resolved: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``S(x * H^k)`` (N, K) of the selected channels (NaN elsewhere) and the selection mask."""
        n, k = a.shape[:2]
        flat = a.flatten(2)
        selected = flat.amax(2) > flat.amin(2)  # constant channels: weight 0, no forward pass
        if self.top_n is not None and self.top_n < k:
            top = flat.var(2).topk(self.top_n, dim=1).indices
            in_top = torch.zeros_like(selected).scatter_(1, top, True)
            selected &= in_top
        size = inputs.shape[-2:]
        buffer: list[torch.Tensor] = []
        # Build the masked batches in the layout the model will be run in (on the CPU _layout's channels-last
        # choice), so that _layout.forward gets them as they are instead of copying every chunk again.
        fast = self.channels_last or _layout.uses_channels_last(self.model, inputs)
        fmt = torch.channels_last if fast else torch.contiguous_format

        def forward_jobs(img: torch.Tensor, ch: torch.Tensor) -> torch.Tensor:
            count = int(img.shape[0])
            if not buffer or buffer[0].shape[0] < count:
                buffer[:] = [torch.empty((count, *inputs.shape[1:]), dtype=inputs.dtype, device=inputs.device,
                                         memory_format=fmt)]
            masks = upsample(a[img, ch], size)  # H^k: A^k upsampled to the input size ...
            minmax_scale_(masks)  # ... min-max scaled to [0, 1]
            src = inputs.expand(count, *inputs.shape[1:]) if n == 1 else inputs[img]
            batch = torch.mul(src, masks[:, None], out=buffer[0][:count])  # x * H^k
            return _layout.forward(self.model, batch)

        channel_scores = job_scores(self.model, inputs, selected, resolved, forward_jobs, batch_size=self.batch_size,
                                    precision=self.precision, progress=self.progress, desc="Score-CAM masked passes")
        return channel_scores, selected


__all__ = ["ScoreCAM"]
