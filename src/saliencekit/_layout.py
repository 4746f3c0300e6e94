"""Running the user's model on the memory layout that is fastest for it, without changing the model.

Used wherever saliencekit calls a model it did not build: the methods, evaluation, the trust checks.

On the CPU, oneDNN convolutions and max-pooling are much faster on channels-last (NHWC) activations
than on the default NCHW ones: 2-3x per image for the lesson CNN (whose thin 1- and 8-channel layers
at 256x256 dominate), 5-10% for a ResNet. A convolution given a channels-last input produces a
channels-last output, so converting the *input* of the model is enough: the model's parameters stay as
they are. Gradients with respect to the input come back in the input's own layout.

Whether a model can take channels-last input is decided once per model, before its first such forward:
a one-image trial forward in channels-last and in the model's own layout, in eval mode, under no_grad and
with the model's forward hooks set aside (so that neither saliencekit's capture hooks nor the user's fire).
A model whose forward raises on channels-last input (e.g. ``x.view(n, -1)`` on a feature map) or gives a
different output runs in its own layout, now and on every later call. On CUDA, and in float64, the input
is passed as it is (on CUDA the layout is an explicit option where it pays, e.g. Score-CAM's
``channels_last``).
"""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import nn

_KEEP_LAYOUT: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # models that run in their own layout
_CHANNELS_LAST_OK: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # models whose trial passed
# float64 is left alone: it has no fast channels-last kernels, and the checks that run in float64 (the input-shift
# invariance) rely on NCHW's identical arithmetic at every position: on flat image regions a max-pool window holds
# exact ties, which channels-last arithmetic can break by one ulp differently in two runs, re-routing the gradient.
_FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _candidate(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dim() == 4 and x.dtype in _FAST_DTYPES


@contextlib.contextmanager
def _hooks_set_aside(model: nn.Module) -> Iterator[None]:
    """Run the block with every forward (pre-)hook of ``model`` set aside; the same hook dicts come back after."""
    # Through __dict__, not setattr: a Keras layer's __setattr__ would wrap the dicts in new tracking objects, and the
    # hook handles (which hold the original dicts) could then no longer remove their hooks.
    saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in model.modules()]
    try:
        for m, _, _ in saved:
            vars(m)["_forward_hooks"] = OrderedDict()
            vars(m)["_forward_pre_hooks"] = OrderedDict()
        yield
    finally:
        for m, hooks, pre_hooks in saved:
            vars(m)["_forward_hooks"] = hooks
            vars(m)["_forward_pre_hooks"] = pre_hooks


def uses_channels_last(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`forward` gives ``model`` this input in channels-last layout (decides once per model)."""
    if not _candidate(x) or model in _KEEP_LAYOUT:
        return False
    if model in _CHANNELS_LAST_OK:
        return True
    from saliencekit.methods._capture import eval_mode

    one = x[:1].detach()
    ok = False
    with _hooks_set_aside(model), eval_mode(model), torch.no_grad():
        try:
            fast = model(one.to(memory_format=torch.channels_last))
            plain = model(one.contiguous())
            ok = (isinstance(fast, torch.Tensor) and isinstance(plain, torch.Tensor) and fast.shape == plain.shape
                  and torch.allclose(fast.float(), plain.float(), rtol=1e-3,
                                     atol=1e-4 * max(float(plain.float().abs().max()), 1e-12)))
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:
            ok = False  # e.g. view() on a channels-last feature map; a real error shows in the real forward
    (_CHANNELS_LAST_OK if ok else _KEEP_LAYOUT).add(model)
    return ok


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, with ``x`` in channels-last layout on the CPU (see the module docstring)."""
    if uses_channels_last(model, x):
        # .to, not .contiguous: a one-channel NCHW tensor already counts as channels-last contiguous, and
        # only the explicit strides make the convolutions pick their channels-last kernels.
        return model(x.to(memory_format=torch.channels_last))
    return model(x)
