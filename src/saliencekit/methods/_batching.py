"""Running many perturbed copies through a model in large batches, with OOM back-off.

``batch_size="auto"`` starts from a size derived from the device (all of it on the CPU in
chunks of a few hundred images, a memory estimate on CUDA) and halves it whenever CUDA reports
out-of-memory, instead of failing. A size that worked is remembered per (model, input shape).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from saliencekit.errors import InputError

BatchSize = int | Literal["auto"]
_GOOD_SIZES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()


def check_batch_size(batch_size: object) -> BatchSize:
    """Validate a ``batch_size`` option."""
    if batch_size == "auto" or (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0):
        return batch_size  # type: ignore[return-value]
    raise InputError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")


def initial_batch_size(model: nn.Module, example: torch.Tensor, backward: bool) -> int:
    """A first guess of how many images of ``example``'s shape fit in one pass."""
    key = (tuple(example.shape[1:]), example.dtype, example.device.type, backward)
    remembered = _GOOD_SIZES.get(model, {}).get(key)
    if remembered:
        return remembered
    per_image = example[0].numel() * example.element_size()
    if example.device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(example.device)
        # Activations of a CNN are typically tens of times the input; be generous, back off on OOM.
        factor = 400 if backward else 120
        return max(1, min(4096, int(free * 0.6 // (per_image * factor))))
    # CPU: memory is plentiful; moderate chunks keep the caches warm.
    return max(1, min(256, int(64 * 2**20 // max(per_image, 1))))


def remember_batch_size(model: nn.Module, example: torch.Tensor, backward: bool, size: int) -> None:
    key = (tuple(example.shape[1:]), example.dtype, example.device.type, backward)
    _GOOD_SIZES.setdefault(model, {})[key] = size


def run_in_chunks(
    fn: Callable[[int, int], None],
    total: int,
    batch_size: BatchSize,
    model: nn.Module,
    example: torch.Tensor,
    backward: bool,
    multiple_of: int = 1,
) -> int:
    """Call ``fn(start, stop)`` over ``range(total)`` in chunks; returns the chunk size that worked.

    With ``batch_size="auto"``, a CUDA out-of-memory error halves the chunk and retries the same chunk.
    ``fn`` must be safe to re-run for a chunk (write results by index, do not accumulate).

    ``multiple_of`` (e.g. the number of images ``n`` when the rows are block-major passes of ``n``
    images) rounds an automatic chunk size down to a multiple of it (never below it), so that every
    chunk holds whole blocks and can be reduced with ``view(-1, n, ...).sum(0)`` instead of a
    scatter (``index_add_``), which costs 5-7% of SmoothGrad / IG on the CPU.
    """
    size = initial_batch_size(model, example, backward) if batch_size == "auto" else int(batch_size)
    if batch_size == "auto" and multiple_of > 1:
        size = max(multiple_of, size - size % multiple_of)
    start = 0
    while start < total:
        stop = min(total, start + size)
        try:
            fn(start, stop)
        except torch.OutOfMemoryError:
            if batch_size != "auto" or size == 1:
                raise
            size = max(1, size // 2)
            if multiple_of > 1 and size >= multiple_of:
                size -= size % multiple_of
            if example.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        start = stop
    if batch_size == "auto":
        remember_batch_size(model, example, backward, size)
    return size
