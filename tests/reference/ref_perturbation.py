"""Literal perturbation references: explicit loops over images, patches and masks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from reference.ref_gradient import ref_score


def ref_probability(model: nn.Module, x1: torch.Tensor, cls: int) -> torch.Tensor:
    """Probability of class ``cls`` for one image: sigmoid of ``S`` (single logit) or the softmax entry."""
    with torch.no_grad():
        out = model(x1)
        if out.ndim == 2 and out.shape[1] > 1:
            return torch.softmax(out, dim=1)[0, cls]
        return torch.sigmoid(ref_score(model, x1, cls))


def ref_occlusion(
    model: nn.Module, x: torch.Tensor, classes: list[int], patch: int, stride: int, fill: torch.Tensor
) -> torch.Tensor:
    """Mean score drop over the patches covering each pixel; ``fill`` (N, C, 1, 1) or broadcastable per image.

    Patch top-left corners: 0, stride, 2 stride, ... while the patch fits, plus one flush with the far edge.
    Pixels no patch covers (stride > patch) get 0.
    """
    n, _c, h, w = x.shape
    out = torch.zeros(n, h, w, dtype=x.dtype)
    for i in range(n):
        with torch.no_grad():
            clean = ref_score(model, x[i : i + 1], classes[i])
        total = torch.zeros(h, w, dtype=x.dtype)
        count = torch.zeros(h, w, dtype=x.dtype)
        ys = list(range(0, h - patch + 1, stride))
        if ys[-1] + patch < h:
            ys.append(h - patch)
        xs = list(range(0, w - patch + 1, stride))
        if xs[-1] + patch < w:
            xs.append(w - patch)
        for y0 in ys:
            for x0 in xs:
                occluded = x[i : i + 1].clone()
                occluded[:, :, y0 : y0 + patch, x0 : x0 + patch] = fill[i : i + 1].expand_as(
                    occluded[:, :, y0 : y0 + patch, x0 : x0 + patch]
                )
                with torch.no_grad():
                    drop = clean - ref_score(model, occluded, classes[i])
                total[y0 : y0 + patch, x0 : x0 + patch] += drop
                count[y0 : y0 + patch, x0 : x0 + patch] += 1
        out[i] = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))  # uncovered: 0
    return out


def ref_rise_masks(n_masks: int, h: int, w: int, s: int, p: float, seed: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Petsiuk et al. 2018, Sec. 3.2, one mask at a time, with saliencekit's documented draw order:
    ``grids = rand((n, s, s)) < p`` then ``shifts = rand((n, 2))`` from one generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    grids = torch.rand((n_masks, s, s), generator=gen) < p
    shifts = torch.rand((n_masks, 2), generator=gen)
    ch, cw = math.ceil(h / s), math.ceil(w / s)
    masks = []
    for j in range(n_masks):
        big = F.interpolate(grids[j][None, None].to(dtype), size=((s + 1) * ch, (s + 1) * cw), mode="bilinear",
                            align_corners=False)[0, 0]
        dy, dx = math.floor(float(shifts[j, 0]) * ch), math.floor(float(shifts[j, 1]) * cw)
        masks.append(big[dy : dy + h, dx : dx + w])
    return masks


def ref_rise(model: nn.Module, x: torch.Tensor, classes: list[int], n_masks: int, s: int, p: float,
             seed: int) -> torch.Tensor:
    """``sum_j P(class | x * M_j) * M_j / (n p)`` per image (masked pixels become 0)."""
    n, _c, h, w = x.shape
    masks = ref_rise_masks(n_masks, h, w, s, p, seed, x.dtype)
    out = torch.zeros(n, h, w, dtype=x.dtype)
    for i in range(n):
        for m in masks:
            out[i] += ref_probability(model, x[i : i + 1] * m, classes[i]) * m
        out[i] /= n_masks * p
    return out
