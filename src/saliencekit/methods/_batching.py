"""Running many perturbed copies through a model in batches: chunk sizes, OOM back-off, CPU tuning.

``batch_size="auto"`` chooses the chunk size itself:

- **CUDA**: the largest chunk a memory estimate allows; a CUDA out-of-memory error halves the
  chunk and retries it, instead of failing.
- **CPU**: larger is not faster. Per image, a small CNN runs 2-3x faster in chunks of a few images
  (whose activations stay in the caches) than in chunks of hundreds. The first chunks of the run
  are therefore doubled in size, from a few images upwards, while the time per image keeps falling
  by more than :data:`_TUNE_GAIN`; the rest of the work runs at the fastest size seen. The timed
  chunks are real work, so tuning costs nothing but the few chunks run at a less than best size.

The size that was settled on is remembered per (model, input shape, dtype, device, backward), so
later calls on the same model start at it (a CPU size that is still unsettled resumes tuning).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from saliencekit.errors import InputError

BatchSize = int | Literal["auto"]

_TUNE_START = 4  # the first CPU chunk (images)
_TUNE_GAIN = 0.05  # keep doubling while the time per image falls by more than this fraction
_clock: Callable[[], float] = time.perf_counter  # the tuning clock (tests substitute a fake one)


@dataclass
class _Remembered:
    """What an earlier call learned: the next chunk size to run and the fastest one seen so far."""

    size: int
    best_size: int
    best_time: float  # seconds per image at best_size (inf: not timed)
    settled: bool


_GOOD_SIZES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, _Remembered]] = weakref.WeakKeyDictionary()


def check_batch_size(batch_size: object) -> BatchSize:
    """Validate a ``batch_size`` option."""
    if batch_size == "auto" or (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0):
        return batch_size  # type: ignore[return-value]
    raise InputError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")


def _key(example: torch.Tensor, backward: bool) -> tuple:
    return (tuple(example.shape[1:]), example.dtype, example.device.type, backward)


def max_batch_size(model: nn.Module, example: torch.Tensor, backward: bool) -> int:
    """How many images of ``example``'s shape may go through ``model`` in one pass (a memory bound).

    On CUDA an estimate from the free memory (lowered by any out-of-memory back-off seen before);
    on the CPU, where memory is plentiful, 64 MiB of input.
    """
    remembered = _GOOD_SIZES.get(model, {}).get(_key(example, backward))
    per_image = max(example[0].numel() * example.element_size(), 1)
    if example.device.type == "cuda":
        if remembered:
            return remembered.size
        free, _total = torch.cuda.mem_get_info(example.device)
        # Activations of a CNN are typically tens of times the input; be generous, back off on OOM.
        factor = 400 if backward else 120
        return max(1, min(4096, int(free * 0.6 // (per_image * factor))))
    return max(1, min(256, int(64 * 2**20 // per_image)))


def run_in_chunks(
    fn: Callable[[int, int], None],
    total: int,
    batch_size: BatchSize,
    model: nn.Module,
    example: torch.Tensor,
    backward: bool,
) -> int:
    """Call ``fn(start, stop)`` over ``range(total)`` in chunks; returns the chunk size settled on.

    With ``batch_size="auto"`` the chunk size is chosen as the module docstring says. ``fn`` must be
    safe to re-run for a chunk (write results by index, do not accumulate before it returns), because
    a CUDA out-of-memory error halves the chunk and re-runs it.
    """
    if batch_size != "auto":
        size = int(batch_size)
        for start in range(0, total, size):
            fn(start, min(total, start + size))
        return size

    key = _key(example, backward)
    remembered = _GOOD_SIZES.get(model, {}).get(key)
    cap = max_batch_size(model, example, backward)
    cpu = example.device.type == "cpu"
    best_time = remembered.best_time if remembered is not None else float("inf")
    if remembered is not None:
        size = min(cap, remembered.size)
        tuning = cpu and not remembered.settled
    elif cpu:
        size, tuning = min(cap, _TUNE_START), True
    else:
        size, tuning = cap, False
    best_size = min(cap, remembered.best_size) if remembered is not None else size

    start = 0
    while start < total:
        stop = min(total, start + size)
        began = _clock()
        try:
            fn(start, stop)
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size //= 2
            cap, best_size, tuning = size, size, False
            if example.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        elapsed = _clock() - began
        if tuning and stop - start == size:  # only full chunks are compared
            per_image = elapsed / size
            if per_image < best_time * (1 - _TUNE_GAIN):
                best_size, best_time = size, per_image
                if size < cap:
                    size = min(cap, size * 2)
                else:
                    tuning = False  # the fastest size is the memory bound
            else:
                size, tuning = best_size, False
        start = stop
    if not tuning:
        size = best_size
    _GOOD_SIZES.setdefault(model, {})[key] = _Remembered(size, best_size, best_time, settled=not tuning)
    return best_size
