"""The single-process engine: a streaming DataLoader reads the chunks' images while the model explains.

Memory is bounded whatever the number of images: at most ``workers * prefetch + 1`` chunks of images
are in memory at once, and each chunk is written to the store as soon as it is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from saliencekit.audit._job import AuditContext, compute_chunk, load_images
from saliencekit.audit.store import ChunkWriter
from saliencekit.errors import SaliencekitError


class _ChunkImages(Dataset):
    """Item ``i``: (chunk number, its preprocessed images) of the ``i``-th pending chunk."""

    def __init__(self, ctx: AuditContext, chunks: Sequence[int]):
        self.ctx = ctx
        self.chunks = list(chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        c = self.chunks[i]
        try:
            return c, load_images(self.ctx, c)
        except SaliencekitError as exc:  # carried to the main process as a value: its message stays one line
            return c, exc


def _loader_context(ctx: AuditContext) -> AuditContext:
    """A copy of the context without the model, for the loader's worker processes (they only read images)."""
    return AuditContext(job=ctx.job, model=torch.nn.Identity(), preprocessing=ctx.preprocessing,
                        class_names=ctx.class_names, files=ctx.files, paths=ctx.paths, labels=ctx.labels,
                        masks=ctx.masks)


def run_local(
    ctx: AuditContext,
    store: str,
    chunks: Sequence[int],
    workers: int = 1,
    on_chunk: Callable[[int, int], None] | None = None,
) -> dict[int, str]:
    """Compute and write ``chunks`` in this process.

    Args:
        ctx: the loaded job.
        store: the store's path.
        chunks: the chunks to compute, in order.
        workers: loader processes reading images ahead (0: read in this process).
        on_chunk: called with (chunk, number of images) after each chunk is written.

    Returns:
        chunk -> who computed it (``"local"``).
    """
    writer = ChunkWriter(store)
    data = _ChunkImages(_loader_context(ctx), chunks)
    loader = DataLoader(data, batch_size=None, shuffle=False, num_workers=workers,
                        prefetch_factor=2 if workers > 0 else None, persistent_workers=False)
    done: dict[int, str] = {}
    for c, images in loader:
        if isinstance(images, BaseException):
            raise images
        writer.write(compute_chunk(ctx, int(c), images))
        done[int(c)] = "local"
        if on_chunk is not None:
            on_chunk(int(c), int(images.shape[0]))
    return done
