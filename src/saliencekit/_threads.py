"""How many CPU threads torch uses for a piece of work, restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from saliencekit.errors import InputError


def check_threads(num_threads: int | None) -> int | None:
    """``num_threads`` when it is None (torch's default) or a positive integer, else an :class:`InputError`."""
    if num_threads is None:
        return None
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise InputError(f"num_threads must be a positive integer (or None for torch's default), got {num_threads!r}")
    return num_threads


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(num_threads)`` (None: leave it), then restore the old count.

    Small operations on a busy machine are much slower with more threads than free cores.

    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    """
    num_threads = check_threads(num_threads)
    old = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)
