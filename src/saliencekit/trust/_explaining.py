"""Shared machinery of the check runners: method specs, maps in chunks, fixed targets, summaries.

A *spec* says which methods a check compares: a list of registered names, or a dict
``label -> {"method": name, **options}`` so that one method can appear several times with different
options (``{"ig_black": {"method": "integrated_gradients", "baseline": "black"}, ...}``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from saliencekit import _layout
from saliencekit.errors import InputError

MethodSpecs = Sequence[str] | Mapping[str, Mapping[str, Any]] | str


def normalize_specs(methods: MethodSpecs) -> dict[str, dict[str, Any]]:
    """``label -> {"method": name, "options": {...}}`` from a list of names, a comma string or a dict.

    Raises:
        InputError: no methods, or a name listed twice in a list.
        UnknownNameError: an unregistered method name.
    """
    from saliencekit.methods import method_class

    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    out: dict[str, dict[str, Any]] = {}
    if isinstance(methods, Mapping):
        for label, opts in methods.items():
            opts = dict(opts or {})
            if set(opts) == {"method", "options"} and isinstance(opts["options"], Mapping):
                opts = {"method": opts["method"], **opts["options"]}  # already normalised
            name = str(opts.pop("method", label))
            out[str(label)] = {"method": name, "options": opts}
    else:
        for name in methods:
            if name in out:
                raise InputError(f"method {name!r} is listed twice; use a dict of labels to vary its options")
            out[str(name)] = {"method": str(name), "options": {}}
    if not out:
        raise InputError("no methods given; choose from saliencekit.list_methods()")
    for spec in out.values():
        method_class(spec["method"])  # raises UnknownNameError listing the registered names
    return out


def engine_specs(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The ``{label: {"method": name, **options}}`` form that :func:`saliencekit.explain` takes."""
    return {label: {"method": s["method"], **s.get("options", {})} for label, s in specs.items()}


def predicted(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) and predicted classes (N,) of ``model`` (eval mode for the call, flags restored)."""
    from saliencekit.methods._capture import eval_mode
    from saliencekit.methods.targets import predicted_classes

    outs = []
    with eval_mode(model), torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            out = _layout.forward(model, images[start : start + batch_size])
            outs.append(out[:, None] if out.ndim == 1 else out)
    logits = torch.cat(outs).detach().clone()
    return logits, predicted_classes(logits)


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
        specs: normalised specs (see :func:`normalize_specs`).
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
