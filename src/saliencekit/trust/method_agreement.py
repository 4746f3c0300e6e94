"""Agreement between saliency methods on the same images: a matrix per similarity measure.

Measures: signed Spearman (``spearman``), Spearman of absolute values (``spearman_abs``, comparable across
methods with different sign conventions, e.g. gradient vs Grad-CAM), SSIM of the min-max normalised maps
and the overlap (IoU) of the top ``k`` share of pixels by absolute value (``topk_iou``, default k = 10%).
Each cell is the mean over images of the per-image value; the diagonal is the method with itself (1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from saliencekit.errors import InputError
from saliencekit.trust._explaining import mean_of, summarize

METRICS = ("spearman", "spearman_abs", "ssim", "topk_iou")


@dataclass
class AgreementResult:
    """Pairwise agreement of methods.

    Attributes:
        methods: labels, in matrix order.
        metrics: the measures.
        values: metric -> (M, M, N) per-image values (symmetric; diagonal 1).
        topk: the share of pixels of ``topk_iou``.

    >>> maps = {"a": torch.rand(3, 16, 16), "b": torch.rand(3, 16, 16)}
    >>> res = agreement(maps, metrics=["spearman"])
    >>> res.matrix("spearman").shape
    (2, 2)
    """

    methods: list[str]
    metrics: list[str]
    values: dict[str, np.ndarray]
    topk: float = 0.1
    seed: int = 0

    def matrix(self, metric: str) -> np.ndarray:
        """(M, M) mean over images."""
        v = self.values[metric]
        return np.array([[mean_of(v[i, j]) for j in range(v.shape[1])] for i in range(v.shape[0])])

    def to_dict(self) -> dict[str, Any]:
        pairs = {}
        for i, a in enumerate(self.methods):
            for j, b in enumerate(self.methods):
                if j > i:
                    pairs[f"{a}|{b}"] = {m: summarize(self.values[m][i, j], self.seed) for m in self.metrics}
        return {
            "methods": list(self.methods),
            "metrics": list(self.metrics),
            "topk": self.topk,
            "matrices": {m: [[float(v) for v in row] for row in self.matrix(m)] for m in self.metrics},
            "pairs": pairs,
        }


def agreement(
    maps: Mapping[str, torch.Tensor],
    metrics: Sequence[str] = METRICS,
    topk: float = 0.1,
    seed: int = 0,
) -> AgreementResult:
    """Agreement matrix between every pair of methods' maps of the same images.

    Args:
        maps: label -> (N, H, W) maps, all of the same images.
        metrics: any of ``spearman``, ``spearman_abs``, ``ssim``, ``topk_iou``, ``hog``, ``pearson``.
        topk: share of pixels kept by ``topk_iou``.
        seed: seeds the bootstrap of the summaries.
    """
    from saliencekit.trust.similarity import similarity_all, topk_iou

    labels = list(maps)
    if len(labels) < 2:
        raise InputError(f"agreement needs at least 2 methods, got {labels}")
    shapes = {tuple(m.shape) for m in maps.values()}
    if len(shapes) != 1:
        raise InputError(f"agreement needs maps of the same images and size; got shapes {sorted(shapes)}")
    n = next(iter(maps.values())).shape[0]
    metrics = list(metrics)
    values = {m: np.ones((len(labels), len(labels), n)) for m in metrics}
    for i, a in enumerate(labels):
        for j in range(i + 1, len(labels)):
            b = labels[j]
            plain = [m for m in metrics if m != "topk_iou"]
            sims = {k: v.cpu().numpy() for k, v in similarity_all(maps[a], maps[b], plain).items()}
            if "topk_iou" in metrics:
                sims["topk_iou"] = topk_iou(maps[a], maps[b], k=topk).cpu().numpy()
            for m in metrics:
                values[m][i, j] = values[m][j, i] = sims[m]
    return AgreementResult(labels, metrics, values, topk, seed)
