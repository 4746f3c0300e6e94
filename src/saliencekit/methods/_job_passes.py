"""One forward pass per (image, k) job, batched: the machinery Score-CAM, Ablation-CAM, LIME and KernelSHAP share.

Each method scores job ``k`` of image ``i`` with a forward pass of a modified copy of the image or of the network:
Score-CAM masks the input by channel ``k``'s upsampled activation, Ablation-CAM zeroes channel ``k`` of the layer's
output, LIME and KernelSHAP keep the superpixels of coalition ``k``. The jobs of every image run together,
image-major, in large batches under ``torch.inference_mode()`` (:func:`~saliencekit.methods._batching.run_in_chunks`:
sized to the device, halved on CUDA out-of-memory), with optional autocast and a progress bar; each chunk's scores
are written by index, so a chunk can be re-run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from saliencekit.methods._batching import BatchSize, run_in_chunks
from saliencekit.methods._precision import Precision, autocast
from saliencekit.methods.targets import ResolvedTarget

#: ``forward_jobs(images, jobs) -> output``: the model's output (J, K) for the jobs of one chunk.
ForwardJobs = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def job_scores(
    model: nn.Module,
    inputs: torch.Tensor,
    selected: torch.Tensor,
    target: ResolvedTarget,
    forward_jobs: ForwardJobs,
    *,
    batch_size: BatchSize,
    precision: Precision,
    progress: bool = False,
    desc: str = "passes",
    probability: bool = False,
) -> torch.Tensor:
    """The score ``S`` of one forward pass per selected (image, k) job, NaN where not selected.

    Args:
        model: the classifier (only used to remember the batch size settled on).
        inputs: the images (N, C, H, W).
        selected: (N, K) bool, the jobs to run.
        target: the resolved target of the ``N`` images.
        forward_jobs: runs the model on the jobs of one chunk, given their image and job indices (J,).
        batch_size: jobs per forward pass, or "auto".
        precision: autocast of the passes.
        progress: show a progress bar.
        desc: label of the progress bar.
        probability: score the explained class's probability instead of ``S``.

    Returns:
        (N, K) scores in the inputs' dtype.
    """
    n, k = selected.shape
    jobs = selected.nonzero()  # (J, 2) rows (image, k), image-major
    scores = torch.full((n, k), float("nan"), dtype=inputs.dtype, device=inputs.device)
    total = int(jobs.shape[0])
    if total == 0:
        return scores
    bar = _progress_bar(total, progress, desc)

    def run(start: int, stop: int) -> None:
        img, job = jobs[start:stop, 0], jobs[start:stop, 1]
        with torch.inference_mode(), autocast(inputs.device, precision):
            out = forward_jobs(img, job)
            rows = target.subset(img)
            scores[img, job] = (rows.probability(out) if probability else rows.score(out)).to(inputs.dtype)
        if bar is not None:
            bar.update(stop - start)

    try:
        run_in_chunks(run, total, batch_size, model, inputs[:1], backward=False)
    finally:
        if bar is not None:
            bar.close()
    return scores


def _progress_bar(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img")


__all__ = ["ForwardJobs", "job_scores"]
