"""Shared machinery of the check runners: maps in chunks, fixed targets, summaries.

A *spec* says which methods a check compares (:mod:`saliencekit.methods.specs`, re-exported here for the checks:
``normalize_specs`` is :func:`~saliencekit.methods.specs.parse_methods`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from saliencekit.methods.specs import MethodSpecs, engine_specs
from saliencekit.methods.specs import parse_methods as normalize_specs


def predicted(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) and predicted classes (N,) of ``model`` (eval mode for the call, flags restored), read by the
    model's output rule (:func:`saliencekit.methods.outputs.model_outputs`: a final Sigmoid/Softmax is bypassed)."""
    from saliencekit.methods.outputs import model_outputs

    logits, rule = model_outputs(model, images, batch_size)
    return logits, rule.predicted(logits)


def compute_maps(
    model: nn.Module,
    images: torch.Tensor,
    specs: Mapping[str, Mapping[str, Any]],
    target: torch.Tensor | None = None,
    layer: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "maps",
) -> dict[str, torch.Tensor]:
    """Maps (N, H, W) of every labelled method, computed in chunks of ``batch_size`` images, on the CPU.

    Args:
        model: the classifier (never modified).
        images: (N, C, H, W) preprocessed images on the model's device.
        specs: normalised specs (see :func:`~saliencekit.methods.specs.parse_methods`).
        target: one class per image (the same classes for every model compared), or None (predicted).
        layer: layer of the CAM methods (default: the engine's choice).
        batch_size: images per call of the engine.
        progress: show a progress bar over the chunks.
        desc: label of the progress bar.
    """
    from saliencekit.methods import explain

    engine = engine_specs(specs)
    chunks: dict[str, list[torch.Tensor]] = {label: [] for label in specs}
    starts = range(0, images.shape[0], batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        x = images[start : start + batch_size]
        t = None if target is None else target[start : start + batch_size].to(images.device)
        res = explain(model, x, engine, target=t, layer=layer)
        for label in specs:
            chunks[label].append(res[label].maps.detach().to("cpu", torch.float64))
    return {label: torch.cat(parts) for label, parts in chunks.items()}


def summarize(values: torch.Tensor | np.ndarray | Sequence[float], seed: int = 0) -> dict[str, Any]:
    """The *summary* of checks.json: mean, 95% bootstrap CI, n (non-NaN values) and the per-image values."""
    from saliencekit.trust.stats import summarize as _summarize

    return _summarize(values, seed=seed)


def mean_of(values: torch.Tensor | np.ndarray | Sequence[float]) -> float:
    """NaN-skipping mean as a float (NaN when every value is NaN)."""
    arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def to_list(values: torch.Tensor | np.ndarray) -> list[float | None]:
    """Plain floats (NaN kept as float NaN; the JSON writer turns them into null)."""
    arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    return [float(v) for v in arr.ravel()]


__all__ = ["MethodSpecs", "compute_maps", "engine_specs", "mean_of", "normalize_specs", "predicted", "summarize",
           "to_list"]
