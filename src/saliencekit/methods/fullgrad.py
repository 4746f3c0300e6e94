"""FullGrad (Srinivas & Fleuret 2019): the input-gradient and the bias-gradients of every layer.

For a network built of linear maps with biases and piecewise-linear activations (ReLU, max-pooling), the full-gradient
decomposition (Eq. 2) is exact: ``S(x) = sum(dS/dx * x) + sum_l sum(dS/dz_l * b_l)``, with ``z_l`` the output of
layer ``l`` and ``b_l`` its bias broadcast over the output. The bias-gradient of a spatial layer, ``f^b_l = dS/dz_l *
b_l`` (C_l, h, w), is a map per channel. The FullGrad saliency map (Eq. 5) is

``S_f(x) = psi(dS/dx * x) + sum_l sum_c psi(f^b_l,c)``

with ``psi`` the absolute value, min-max scaling to [0, 1] and bilinear upsampling (``align_corners=False``) to the
input. ``normalize="channel"`` (the default) scales each channel ``c`` of each layer on its own, as Eq. 5 and
pytorch-grad-cam; ``normalize="layer"`` scales each layer's (C_l, h, w) tensor as a whole (and the input term over
its channels), as the authors' code does. Scaling comes before upsampling (both libraries; upsampling is linear, so
the channels of a layer are summed first and upsampled once).

Layers with a bias: ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d`` and ``nn.Linear`` with ``bias``, and
batch-norm in eval mode with running statistics, whose bias is ``beta - gamma * mean / sqrt(var + eps)`` (the
affine map it applies). Only layers with a spatial (N, C, h, w) output enter the map; every one enters
``extras["completeness_gap"]`` = ``sum(dS/dx * x) + sum_l sum(dS/dz_l * b_l) - S``, zero (to rounding) for ReLU
networks whose biases all live in such modules. Biases added inside ``forward`` (``F.conv2d(x, w, b)``) and the
shifts of group/layer/instance norms are not reached; the gap then says how much of ``S`` is not decomposed.

Differences from pytorch-grad-cam's ``FullGrad``: it finds the bias layers among ``nn.Conv2d`` and
``nn.BatchNorm2d`` only, divides by ``max + 1e-7`` when scaling (saliencekit: a constant map scales to 0), resizes
with OpenCV, and min-max scales the final map (saliencekit returns the raw sum; the display scales it). The authors'
code upsamples with ``align_corners=True`` and divides by ``max + 1e-6``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from saliencekit import _layout
from saliencekit.errors import InputError
from saliencekit.methods._batching import BatchSize, check_batch_size, max_batch_size, run_in_chunks
from saliencekit.methods._capture import capture
from saliencekit.methods.base import Explanation, Method, check_inputs, preserve_model
from saliencekit.methods.cam import upsample
from saliencekit.methods.gradient import rows_target
from saliencekit.methods.registry import register_method
from saliencekit.methods.targets import ResolvedTarget, as_target

NORMALIZATIONS = ("channel", "layer")
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def layer_bias(module: nn.Module) -> torch.Tensor | None:
    """The bias a layer adds to its output in eval mode (per output channel), or None if it has none we can use."""
    if isinstance(module, _CONVS):
        return None if module.bias is None else module.bias.detach()
    if isinstance(module, _NORMS) and module.track_running_stats and module.running_mean is not None:
        assert module.running_var is not None
        scale = torch.rsqrt(module.running_var.detach() + module.eps)
        gamma = module.weight.detach() if module.weight is not None else torch.ones_like(scale)
        beta = module.bias.detach() if module.bias is not None else torch.zeros_like(scale)
        return beta - gamma * module.running_mean.detach() * scale
    return None


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` whose bias the decomposition reads (see :func:`layer_bias`)."""
    return [m for m in model.modules() if layer_bias(m) is not None]


def _psi(t: torch.Tensor, normalize: str) -> torch.Tensor:
    """``|t|`` min-max scaled per channel (N, C, h, w) or per image, summed over the channels: (N, h, w).

    The same numbers as ``minmax_scale(t.abs(), start_dim).sum(1)`` (a constant slice scales to 0), without the
    scaled copy: ``sum_c (|t_c| - lo_c) / span_c = sum_c |t_c| / span_c - sum_c lo_c / span_c``.
    """
    t = t.abs()
    lo, hi = torch.aminmax(t.flatten(2 if normalize == "channel" else 1), dim=-1)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    if normalize == "channel":
        inv = span.reciprocal()  # (N, C)
        return torch.einsum("nchw,nc->nhw", t, inv) - (lo * inv).sum(1)[:, None, None]
    return (t.sum(1) - t.shape[1] * lo[:, None, None]) / span[:, None, None]


def full_gradients(
    model: nn.Module, inputs: torch.Tensor, target: ResolvedTarget, layers: list[nn.Module], normalize: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The FullGrad map (N, H, W), the scores ``S`` (N,) and the completeness gap (N,) in one forward and one
    backward pass (the rows of ``inputs`` may be ``k`` blocks of the target's images)."""
    size = inputs.shape[-2:]
    with torch.inference_mode(False), torch.enable_grad(), capture(model, layers, all_calls=True) as cap:
        x = inputs.detach().clone().requires_grad_(True)
        scores = target.score(_layout.forward(model, x))
        outputs = [out for _m, out in cap.history]
        grads = torch.autograd.grad(scores.sum(), [x, *outputs], allow_unused=True)
    gx, gz = grads[0], grads[1:]
    input_term = gx * x.detach()
    total = input_term.flatten(1).sum(1)
    maps = _psi(input_term, normalize)  # psi(dS/dx * x) at the input's resolution
    by_size: dict[tuple[int, int], torch.Tensor] = {}
    for (module, out), g in zip(cap.history, gz):
        if g is None:
            continue
        b = layer_bias(module).to(g.dtype)  # type: ignore[union-attr]
        # a linear layer adds its bias along the last dimension ((N, D), or tokens (N, T, D)); the others along dim 1
        shape = (*([1] * (g.ndim - 1)), -1) if isinstance(module, nn.Linear) else (1, -1, *([1] * (g.ndim - 2)))
        fb = g * b.view(shape)  # f^b_l = dS/dz_l * b_l
        total = total + fb.flatten(1).sum(1)
        if out.ndim == 4:
            layer = _psi(fb, normalize)  # sum_c psi(f^b_l,c) before upsampling
            key = (int(layer.shape[1]), int(layer.shape[2]))
            by_size[key] = by_size[key] + layer if key in by_size else layer
    for layer in by_size.values():
        maps = maps + upsample(layer, size)
    scores = scores.detach()
    return maps.detach().to(inputs.dtype), scores.to(inputs.dtype), (total.detach() - scores).to(inputs.dtype)


@register_method("fullgrad")
class FullGrad(Method):
    """FullGrad (Srinivas & Fleuret 2019, Eq. 5): ``psi(dS/dx * x) + sum_l sum_c psi(dS/dz_l * b_l)_c``.

    One forward and one backward pass per chunk of images (see the module docstring for ``psi``, the layers
    read and the differences from pytorch-grad-cam). ``extras["completeness_gap"]`` is the full-gradient
    decomposition's gap ``sum(dS/dx * x) + sum_l sum(dS/dz_l * b_l) - S`` per image.

    Args:
        model: the classifier (never modified).
        normalize: "channel" (default: Eq. 5, each channel of each layer scaled on its own, as pytorch-grad-cam) or
            "layer" (each layer scaled as a whole, as the authors' code).
        batch_size: images per forward/backward pass, or "auto".

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 1))
    >>> e = FullGrad(net).attribute(torch.randn(2, 1, 4, 4, dtype=torch.float64).float())
    >>> e.maps.shape, bool(e.extras["completeness_gap"].abs().max() < 1e-4)
    (torch.Size([2, 4, 4]), True)
    """

    description = "FullGrad: input-gradient x input plus the bias-gradients of every layer (Srinivas 2019)."
    family = "cam"  # grouped with the CAMs, as pytorch-grad-cam does; a min-max displayed, non-negative map
    uses_gradients = True
    multiplies_by_inputs = True
    works_on_torchscript = False
    input_shift_invariant = False

    def __init__(self, model: nn.Module, *, normalize: str = "channel", batch_size: BatchSize = "auto"):
        super().__init__(model)
        if hasattr(self.model, "keras_model"):  # a KerasClassifier: its biases live in Keras layers, not torch modules
            raise InputError("fullgrad does not support Keras models yet (it reads the biases of torch Conv/Linear/"
                             "BatchNorm modules; a Keras model's biases would be missed and its map differ from the "
                             "same weights in PyTorch); use gradient_x_input, the CAMs, or copy the weights into a "
                             "PyTorch model")
        if normalize not in NORMALIZATIONS:
            raise InputError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
        self.normalize = normalize
        self.batch_size = check_batch_size(batch_size)
        self._store_params(normalize=normalize, batch_size=batch_size)

    def attribute(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        model = self.model
        check_inputs(model, inputs)
        if isinstance(model, torch.jit.ScriptModule):
            raise InputError("fullgrad reads every layer's output through forward hooks, which TorchScript models do "
                             "not support; load the model as an nn.Module, or use a gradient method")
        layers = bias_layers(model)
        n = inputs.shape[0]
        size = self.batch_size if isinstance(self.batch_size, int) else max_batch_size(model, inputs, backward=True)
        with preserve_model(model):
            if n <= size:
                resolved = ResolvedTarget.deferred(as_target(target), n)
                maps, scores, gap = full_gradients(model, inputs, resolved, layers, self.normalize)
                predictions = resolved.predictions
            else:
                _out, resolved, predictions = self._resolve(inputs, target)
                maps = torch.empty((n, *inputs.shape[-2:]), dtype=inputs.dtype, device=inputs.device)
                scores = torch.empty(n, dtype=inputs.dtype, device=inputs.device)
                gap = torch.empty_like(scores)

                def chunk(start: int, stop: int) -> None:
                    m, s, g = full_gradients(model, inputs[start:stop], rows_target(resolved, start, stop), layers,
                                             self.normalize)
                    maps[start:stop], scores[start:stop], gap[start:stop] = m, s, g

                run_in_chunks(chunk, n, self.batch_size, model, inputs, backward=True)
        return Explanation(
            method=self.name, maps=maps, scores=scores, targets=resolved.class_indices().to(inputs.device),
            predictions=predictions, params=self.params, extras={"completeness_gap": gap},
        )


__all__ = ["FullGrad", "bias_layers", "full_gradients", "layer_bias"]
