"""Optional mixed precision for the many-pass methods (CUDA; bf16 also on the CPU)."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from saliencekit.errors import InputError

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision(precision: object) -> Precision:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision  # type: ignore[return-value]


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[object]:
    """An autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type != "cuda" and precision == "fp16":
        raise InputError("precision='fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
