"""Summaries of per-image metric values: bootstrap confidence intervals and method rankings.

NaN marks an image a metric does not apply to (an empty mask, a constant map); it is left out everywhere.

>>> summarize([0.2, 0.4, float("nan")])["n"]
2
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from saliencekit.errors import InputError


def _finite(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return arr[~np.isnan(arr)]


def bootstrap_ci(values: Any, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of the values and its percentile bootstrap confidence interval, NaNs left out.

    Args:
        values: tensor, array or list of per-image values.
        n_boot: number of bootstrap resamples.
        ci: confidence level, in (0, 1).
        seed: seed of the resampling (numpy's default generator).

    Returns:
        (mean, low, high); all NaN when no value is left, all equal to the value when one is.
    """
    if not 0 < ci < 1:
        raise InputError(f"bootstrap_ci ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise InputError(f"bootstrap_ci n_boot must be >= 1, got {n_boot}")
    x = _finite(values)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1 - ci) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return mean, float(min(low, mean)), float(max(high, mean))


def _json_float(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def summarize(values: Any, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """JSON-friendly summary of per-image values: ``mean``, ``ci_low``, ``ci_high``, ``n``, ``values``.

    ``n`` counts the non-NaN values; ``values`` lists every value in order with NaN written as None (JSON has
    no NaN); mean and bounds are None when no value is left.
    """
    if isinstance(values, torch.Tensor):
        all_values = values.detach().to("cpu", torch.float64).reshape(-1).tolist()
    else:
        all_values = np.asarray(values, dtype=np.float64).reshape(-1).tolist()
    mean, low, high = bootstrap_ci(all_values, n_boot=n_boot, ci=ci, seed=seed)
    return {
        "mean": _json_float(mean),
        "ci_low": _json_float(low),
        "ci_high": _json_float(high),
        "n": int(_finite(all_values).size),
        "values": [_json_float(v) for v in all_values],
    }


def rank_methods(scores: Mapping[str, float | None], higher_is_better: bool) -> list[str]:
    """Method names from best to worst score; missing (None / NaN) scores last, ties in the given order.

    >>> rank_methods({"gradient": 0.2, "gradcam": 0.7, "occlusion": float("nan")}, higher_is_better=True)
    ['gradcam', 'gradient', 'occlusion']
    """
    def key(item: tuple[int, str]) -> tuple[int, float, int]:
        pos, name = item
        v = scores[name]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return (1, 0.0, pos)
        v = float(v)
        if math.isnan(v):
            return (1, 0.0, pos)
        return (0, -v if higher_is_better else v, pos)

    names: Iterable[str] = scores.keys()
    return [name for _, name in sorted(enumerate(names), key=key)]
