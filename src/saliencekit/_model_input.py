"""When the user's model fails on the images it is given: a one-line message naming the likely cause.

A model trained on 3-channel 224 x 224 images fails deep inside its forward pass on a greyscale 256 x 256
batch, with a message about a convolution's weight or a patch grid. :func:`run_model` runs the model; on
failure it tries, with zero images (eval mode, no gradient), the other channel
count and the common input sizes, and raises an :class:`~saliencekit.errors.InputError` that says what the
model was given, what it said, and the input it does run on (``--color``, ``--image-size 224``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

from saliencekit.errors import InputError, SaliencekitError

T = TypeVar("T")

SIZES = (224, 256, 299, 384, 512, 128, 64, 32, 28)  # tried in this order when the given size fails


def run_model(fn: Callable[[], T], model: nn.Module, x: torch.Tensor) -> T:
    """``fn()`` (a forward pass of ``model`` on ``x``), with a failure inside the model turned into one line.

    Raises:
        InputError: the model raised; the message names the input shape, the model's own message (first line)
            and, when one is found, the channel count / image size the model does run on. The original
            exception is chained (``__cause__``).
    """
    try:
        return fn()
    except (SaliencekitError, torch.OutOfMemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # the user's forward: any exception type
        raise InputError(forward_failure_message(model, x, exc)) from exc


def forward_failure_message(model: nn.Module, x: torch.Tensor, exc: BaseException) -> str:
    """``the model failed on input of shape (1, 1, 256, 256): <its message>; <what would work>``."""
    said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if len(said) > 300:
        said = said[:297] + "..."
    shape = tuple(x.shape)
    msg = f"the model failed on input of shape {shape}: {type(exc).__name__}: {said}"
    works = _working_input(model, x)
    if works is None:
        return (msg + "; check the channel count (--color for RGB), the image size (--image-size) and the "
                "normalisation the model was trained with")
    channels, size = works
    hints = []
    if channels != x.shape[1]:
        hints.append("--color" if channels == 3 else "without --color" if x.shape[1] == 3 else f"{channels} channels")
    if size != tuple(x.shape[-2:]):
        hints.append(f"--image-size {size[0]}" if size[0] == size[1] else f"an image size of {size[0]}x{size[1]}")
    runs = f"(1, {channels}, {size[0]}, {size[1]})"
    return f"{msg}; the model runs on input of shape {runs}: try {' '.join(hints) or 'the same input again'}"


def _working_input(model: nn.Module, x: torch.Tensor) -> tuple[int, tuple[int, int]] | None:
    """The first (channels, (height, width)) on which the model runs, trying the given ones first."""
    c, h, w = x.shape[1:]
    channels: Sequence[int] = list(dict.fromkeys([c, 3 if c != 3 else 1, 1]))
    sizes = list(dict.fromkeys([(h, w), *((s, s) for s in SIZES)]))
    for size in sizes:
        for ch in channels:
            if (ch, size) == (c, (h, w)):
                continue
            if _runs(model, x.new_zeros((1, ch, *size))):
                return ch, size
    return None


def _runs(model: nn.Module, x: torch.Tensor) -> bool:
    from saliencekit.methods._capture import eval_mode

    try:
        with eval_mode(model), torch.no_grad():
            out = model(x)
    except torch.OutOfMemoryError:
        return False
    except Exception:
        return False
    return isinstance(out, torch.Tensor) and out.ndim in (1, 2) and out.shape[0] == 1


__all__ = ["forward_failure_message", "run_model"]
