"""Running the user's model on the memory layout that is fastest for it, without changing the model.

Used wherever saliencekit calls a model it did not build: the methods, evaluation, the trust checks.

On the CPU, oneDNN convolutions and max-pooling are much faster on channels-last (NHWC) activations
than on the default NCHW ones: 2-3x per image for the lesson CNN (whose thin 1- and 8-channel layers
at 256x256 dominate), 5-10% for a ResNet. A convolution given a channels-last input produces a
channels-last output, so converting the *input* of the model is enough: the model's parameters stay as
they are. Gradients with respect to the input come back in the input's own layout.

A model whose forward cannot take channels-last activations (e.g. ``x.view(n, -1)`` on a feature map)
raises on the first try; it then runs in its own layout, now and on every later call (remembered).
On CUDA, and in float64, the input is passed as it is (on CUDA the layout is an explicit option where
it pays, e.g. Score-CAM's ``channels_last``).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

_KEEP_LAYOUT: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # models that failed on channels-last input
# float64 is left alone: it has no fast channels-last kernels, and the checks that run in float64 (the input-shift
# invariance) rely on NCHW's identical arithmetic at every position: on flat image regions a max-pool window holds
# exact ties, which channels-last arithmetic can break by one ulp differently in two runs, re-routing the gradient.
_FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, with ``x`` in channels-last layout on the CPU (see the module docstring)."""
    if x.device.type != "cpu" or x.dim() != 4 or x.dtype not in _FAST_DTYPES or model in _KEEP_LAYOUT:
        return model(x)
    try:
        # .to, not .contiguous: a one-channel NCHW tensor already counts as channels-last contiguous, and
        # only the explicit strides make the convolutions pick their channels-last kernels.
        return model(x.to(memory_format=torch.channels_last))
    except torch.OutOfMemoryError:
        raise
    except RuntimeError:
        out = model(x)  # if this raises too, the error is the model's own and propagates
        _KEEP_LAYOUT.add(model)
        return out
