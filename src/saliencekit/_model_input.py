"""When the user's model fails on the images it is given: a one-line message naming the likely cause.

A model trained on 3-channel 224 x 224 images fails deep inside its forward pass on a greyscale 256 x 256
batch, with a message about a convolution's weight or a patch grid. :func:`run_model` runs the model; on
failure it tries, with zero images (eval mode, no gradient), the other channel
count and the common input sizes, and raises an :class:`~saliencekit.errors.InputError` that says what the
model was given, what it said, and the input it does run on (``--color``, ``--image-size 224``).

:func:`model_failures` does the same for the Python API (``saliencekit.explain``, every method's ``attribute``,
``run_checks``) without an extra forward pass when all goes well: when the block raises, the model is run once on
the first image; if the model itself fails there, the error becomes the same one-line :class:`InputError` (chained
from the original exception), and otherwise the original exception is raised unchanged (it did not come from the
model's forward on these images).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
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


@contextlib.contextmanager
def model_failures(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """Within the block, an exception that the model's own forward pass on ``x`` raises becomes one line.

    Nothing is run unless the block raises. Then ``model`` is run once on ``x[:1]`` (eval mode, no gradient, flags
    restored): if that fails too, the block's exception came from the model, and an :class:`InputError` naming the
    input shape, the model's message and the input it runs on is raised from it; if the model runs, the original
    exception is re-raised (a bad target function, a method's own failure...). saliencekit's own errors, running
    out of memory and interrupts always pass unchanged.

    >>> net = torch.nn.Linear(4, 2)
    >>> with model_failures(net, torch.zeros(1, 1, 2, 2)):  # doctest: +ELLIPSIS
    ...     net(torch.zeros(1, 1, 2, 2))
    Traceback (most recent call last):
    saliencekit.errors.InputError: the model failed on input of shape (1, 1, 2, 2): RuntimeError: ...
    """
    try:
        yield
    except (SaliencekitError, torch.OutOfMemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # the user's forward: any exception type
        one = x[:1].detach() if isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[0] else None
        if one is None or _runs(model, one):
            raise
        raise InputError(forward_failure_message(model, one, exc, cli=False)) from exc


def forward_failure_message(model: nn.Module, x: torch.Tensor, exc: BaseException, cli: bool = True) -> str:
    """``the model failed on input of shape (1, 1, 256, 256): <its message>; <what would work>``.

    Args:
        model: the model that failed.
        x: the input it failed on.
        exc: what it raised.
        cli: name the command line's flags (``--color``, ``--image-size``) in the advice; else say which images
            to give (the Python API).
    """
    said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if len(said) > 300:
        said = said[:297] + "..."
    shape = tuple(x.shape)
    msg = f"the model failed on input of shape {shape}: {type(exc).__name__}: {said}"
    works = _working_input(model, x)
    if works is None:
        if cli:
            return (msg + "; check the channel count (--color for RGB), the image size (--image-size) and the "
                    "normalisation the model was trained with")
        return (msg + "; check the images' channel count and size and the normalisation the model was trained "
                "with (it runs on none of 1 or 3 channels at the common sizes)")
    channels, size = works
    runs = f"(1, {channels}, {size[0]}, {size[1]})"
    if not cli:
        return (f"{msg}; the model runs on input of shape {runs}: give it {channels}-channel images of "
                f"{size[0]}x{size[1]} pixels, preprocessed as in its training")
    hints = []
    if channels != x.shape[1]:
        hints.append("--color" if channels == 3 else "without --color" if x.shape[1] == 3 else f"{channels} channels")
    if size != tuple(x.shape[-2:]):
        hints.append(f"--image-size {size[0]}" if size[0] == size[1] else f"an image size of {size[0]}x{size[1]}")
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


__all__ = ["forward_failure_message", "model_failures", "run_model"]
