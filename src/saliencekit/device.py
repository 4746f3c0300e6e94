"""Where models run: the ``--device`` names of every command turned into a checked ``torch.device``."""

from __future__ import annotations

import torch

from saliencekit.errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is checked.

    Raises:
        InputError: an unknown device name, or CUDA requested on a machine without it.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N, mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available; use --device cpu or auto")
    return device
