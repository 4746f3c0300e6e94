"""Perturbation family: occlusion (Zeiler & Fergus 2014) and RISE (Petsiuk, Das & Saenko 2018).

Both only run forward passes, in large batches under ``torch.inference_mode()``; rows of the
stacked batch are ``k`` blocks of the ``N`` images (perturbation-major), as targets expect.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from saliencekit import _layout
from saliencekit.baselines import constant_baseline
from saliencekit.errors import InputError
from saliencekit.methods._batching import BatchSize, check_batch_size, run_in_chunks
from saliencekit.methods._capture import eval_mode
from saliencekit.methods._precision import Precision, autocast, check_precision
from saliencekit.methods.base import Explanation, Method, preserve_model
from saliencekit.methods.gradient import rows_target
from saliencekit.methods.registry import register_method
from saliencekit.methods.targets import ResolvedTarget

FILLS = ("zero", "mean", "black")
SCORES = ("logit", "probability")


def _pair(v: Any, what: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(v) if isinstance(v, list | tuple) else None
    if t is None or len(t) != 2 or not all(isinstance(a, int) and not isinstance(a, bool) and a > 0 for a in t):
        raise InputError(f"{what} must be a positive int or a pair of positive ints, got {v!r}")
    return t  # type: ignore[return-value]


def fill_values(inputs: torch.Tensor, fill: str | float) -> torch.Tensor:
    """What replaces occluded pixels, broadcastable to (N, C, H, W): ``"zero"`` -> 0, ``"mean"`` -> each image's
    per-channel mean, ``"black"`` -> each image's minimum value, or a number (the constant baselines of
    :func:`saliencekit.baselines.constant_baseline`)."""
    if isinstance(fill, str) and fill not in FILLS:
        raise InputError(f"unknown fill {fill!r}; valid: {', '.join(FILLS)} or a number")
    return constant_baseline(inputs, fill)


def _score_dtype(inputs: torch.Tensor) -> torch.dtype:
    return torch.float64 if inputs.dtype == torch.float64 else torch.float32


def patch_positions(size: int, patch: int, stride: int) -> list[int]:
    """Top-left offsets along one axis: ``0, stride, 2*stride, ...`` plus a last patch flush with the edge."""
    patch = min(patch, size)
    pos = list(range(0, size - patch + 1, stride))
    if pos[-1] != size - patch:
        pos.append(size - patch)
    return pos


class _PerturbationMethod(Method):
    family = "perturbation"

    def __init__(self, model: nn.Module, batch_size: BatchSize, precision: Precision, score: str):
        super().__init__(model)
        self.batch_size = check_batch_size(batch_size)
        self.precision = check_precision(precision)
        if score not in SCORES:
            raise InputError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        self.score = score

    def _score(self, target: ResolvedTarget, output: torch.Tensor) -> torch.Tensor:
        s = target.probability(output) if self.score == "probability" else target.score(output)
        return s if s.dtype == torch.float64 else s.float()

    def _forward_scores(
        self, total: int, n: int, make_rows: Any, target: ResolvedTarget, example: torch.Tensor
    ) -> torch.Tensor:
        """Scores (total,) of the stacked rows built by ``make_rows(start, stop)``."""
        out = torch.empty(total, dtype=_score_dtype(example), device=example.device)

        def chunk(start: int, stop: int) -> None:
            with torch.inference_mode(), autocast(example.device, self.precision):
                output = _layout.forward(self.model, make_rows(start, stop))
                out[start:stop] = self._score(rows_target(target, start, stop), output)

        run_in_chunks(chunk, total, self.batch_size, self.model, example, backward=False)
        return out

    def attribute(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        with preserve_model(self.model), eval_mode(self.model):
            output, resolved, predictions = self._resolve(inputs, target)
            maps, extras = self._maps(inputs, output, resolved)
        return Explanation(
            method=self.name, maps=maps.to(inputs.dtype), attributions=None,
            scores=resolved.score(output).to(inputs.dtype).clone(),
            targets=resolved.class_indices().to(inputs.device), predictions=predictions, params=self.params,
            extras=extras,
        )

    def _maps(
        self, inputs: torch.Tensor, output: torch.Tensor, target: ResolvedTarget
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


@register_method("occlusion")
class Occlusion(_PerturbationMethod):
    """Occlusion (Zeiler & Fergus 2014, Sec. 4.2): slide a patch over the image, record the score drop.

    The map at a pixel is the mean of ``S(x) - S(x with the patch replaced by the fill)`` over the
    patches covering it. Patches start at multiples of ``stride``; one more patch flush with the right /
    bottom edge is added where the stride does not reach it, so every pixel is covered.

    Args:
        model: the classifier.
        patch: patch size (an int or (height, width)); clipped to the image size. Default 16.
        stride: step between patches (int or pair). Default 8.
        fill: "zero" (default; the mean of a per-image standardised image), "mean" (each image's
            per-channel mean), "black" (each image's minimum) or a number.
        score: "logit" (default: ``S`` as in docs/methods.md) or "probability" of the explained class.
        batch_size: occluded images per forward pass, or "auto".
        precision: "fp32", "bf16" or "fp16".

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1))
    >>> Occlusion(net, patch=2, stride=2).attribute(torch.randn(1, 1, 4, 4)).maps.shape
    torch.Size([1, 4, 4])
    """

    description = "Occlusion: score drop when a sliding patch is masked out (Zeiler 2014)."

    def __init__(
        self,
        model: nn.Module,
        *,
        patch: int | tuple[int, int] = 16,
        stride: int | tuple[int, int] = 8,
        fill: str | float = "zero",
        score: str = "logit",
        batch_size: BatchSize = "auto",
        precision: Precision = "fp32",
    ):
        super().__init__(model, batch_size, precision, score)
        self.patch, self.stride = _pair(patch, "patch"), _pair(stride, "stride")
        if not (isinstance(fill, int | float) and not isinstance(fill, bool)) and fill not in FILLS:
            raise InputError(f"unknown fill {fill!r}; valid: {', '.join(FILLS)} or a number")
        self.fill = fill
        self._store_params(patch=patch, stride=stride, fill=fill, score=score, batch_size=batch_size,
                           precision=precision)

    def _maps(self, inputs, output, target):  # type: ignore[no-untyped-def]
        n, _c, h, w = inputs.shape
        ph, pw = min(self.patch[0], h), min(self.patch[1], w)
        boxes = [(y, x) for y in patch_positions(h, ph, self.stride[0]) for x in patch_positions(w, pw, self.stride[1])]
        fill = fill_values(inputs, self.fill)
        ys = torch.tensor([b[0] for b in boxes], device=inputs.device)
        xs = torch.tensor([b[1] for b in boxes], device=inputs.device)
        ar_h = torch.arange(h, device=inputs.device)
        ar_w = torch.arange(w, device=inputs.device)

        def make_rows(start: int, stop: int) -> torch.Tensor:
            rows = torch.arange(start, stop, device=inputs.device)
            img, p = rows % n, rows // n
            inside_y = (ar_h[None] >= ys[p, None]) & (ar_h[None] < ys[p, None] + ph)  # (rows, H)
            inside_x = (ar_w[None] >= xs[p, None]) & (ar_w[None] < xs[p, None] + pw)  # (rows, W)
            mask = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]  # (rows, 1, H, W)
            x = inputs[img]
            f = fill.expand(n, *fill.shape[1:])[img] if fill.shape[0] == n else fill
            return torch.where(mask, f.to(x.dtype), x)

        clean = self._score(target, output)
        scores = self._forward_scores(len(boxes) * n, n, make_rows, target, inputs).view(len(boxes), n)
        drops = clean[None] - scores  # (P, N)
        acc = torch.zeros(n, h, w, dtype=torch.float64 if inputs.dtype == torch.float64 else torch.float32,
                          device=inputs.device)
        count = torch.zeros(h, w, dtype=acc.dtype, device=inputs.device)
        for p, (y, x) in enumerate(boxes):
            acc[:, y:y + ph, x:x + pw] += drops[p].to(acc.dtype)[:, None, None]
            count[y:y + ph, x:x + pw] += 1
        return acc / count.clamp_min(1), {}


def rise_masks(
    n_masks: int, size: tuple[int, int], grid: int, p: float, generator: torch.Generator, device: torch.device,
    dtype: torch.dtype = torch.float32, indices: torch.Tensor | None = None,
    draws: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """RISE masks (Petsiuk et al. 2018, Sec. 3.2), (len(indices), H, W) in [0, 1].

    Draw order (one call draws everything, so the masks do not depend on chunking): ``grids =
    torch.rand((n_masks, grid, grid)) < p`` then ``shifts = torch.rand((n_masks, 2))``. Mask ``j`` is the
    binary grid upsampled bilinearly (align_corners=False) to ``((grid+1) * ch, (grid+1) * cw)`` with cell
    size ``ch = ceil(H / grid)``, ``cw = ceil(W / grid)``, then cropped to (H, W) at offset
    ``(floor(shift_y * ch), floor(shift_x * cw))``. ``draws`` passes pre-drawn (grids, shifts).
    """
    h, w = size
    if draws is None:
        grids = torch.rand((n_masks, grid, grid), generator=generator, device=device) < p
        shifts = torch.rand((n_masks, 2), generator=generator, device=device)
    else:
        grids, shifts = draws
    if indices is None:
        indices = torch.arange(n_masks, device=device)
    ch, cw = math.ceil(h / grid), math.ceil(w / grid)
    up = F.interpolate(grids[indices, None].to(dtype), size=((grid + 1) * ch, (grid + 1) * cw), mode="bilinear",
                       align_corners=False)[:, 0]
    dy = (shifts[indices, 0] * ch).floor().long()
    dx = (shifts[indices, 1] * cw).floor().long()
    # Crop each mask at its own offset with one gather.
    rows = (dy[:, None] + torch.arange(h, device=device)[None])  # (k, H)
    cols = (dx[:, None] + torch.arange(w, device=device)[None])  # (k, W)
    k = indices.shape[0]
    return up[torch.arange(k, device=device)[:, None, None], rows[:, :, None], cols[:, None, :]]


@register_method("rise")
class RISE(_PerturbationMethod):
    """RISE (Petsiuk et al. 2018, Eq. 6): the score-weighted mean of random masks.

    ``map = sum_j s_j * M_j / (n * p)`` with ``s_j`` the score of the image multiplied by mask ``M_j``
    (masked pixels take the fill value: ``x * M + fill * (1 - M)``). The score is the probability of
    the explained class by default (as in the paper; sigmoid of ``S`` for a single-logit model). The
    same seeded masks serve every image, so batched results equal per-image results.

    Args:
        model: the classifier.
        masks: number of masks ``n`` (default 1000, affordable on a CPU; the paper uses 4000-8000).
        grid: low-resolution grid size ``s`` (default 8).
        p: probability that a grid cell is kept (default 0.5).
        seed: seed of the mask generator (on the input's device); ``None`` draws a fresh seed.
        fill: value of masked pixels: "zero" (default, the paper's ``I * M``), "mean", "black" or a number.
        score: "probability" (default) or "logit".
        batch_size: masked images per forward pass, or "auto".
        precision: "fp32", "bf16" or "fp16".

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    >>> RISE(net, masks=20).attribute(torch.randn(2, 1, 8, 8)).maps.shape
    torch.Size([2, 8, 8])
    """

    description = "RISE: score-weighted mean of random low-resolution masks (Petsiuk 2018)."

    def __init__(
        self,
        model: nn.Module,
        *,
        masks: int = 1000,
        grid: int = 8,
        p: float = 0.5,
        seed: int | None = 0,
        fill: str | float = "zero",
        score: str = "probability",
        batch_size: BatchSize = "auto",
        precision: Precision = "fp32",
    ):
        super().__init__(model, batch_size, precision, score)
        if isinstance(masks, bool) or not isinstance(masks, int) or masks < 1:
            raise InputError(f"masks must be a positive int, got {masks!r}")
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise InputError(f"grid must be a positive int, got {grid!r}")
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
            raise InputError(f"p must be in (0, 1], got {p!r}")
        if not (isinstance(fill, int | float) and not isinstance(fill, bool)) and fill not in FILLS:
            raise InputError(f"unknown fill {fill!r}; valid: {', '.join(FILLS)} or a number")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InputError(f"seed must be an int or None, got {seed!r}")
        self.masks, self.grid, self.p, self.seed, self.fill = masks, grid, float(p), seed, fill
        self._store_params(masks=masks, grid=grid, p=p, seed=seed, fill=fill, score=score, batch_size=batch_size,
                           precision=precision)

    def _maps(self, inputs, output, target):  # type: ignore[no-untyped-def]
        n, _c, h, w = inputs.shape
        dev = inputs.device
        gen = torch.Generator(device=dev)
        gen.manual_seed(self.seed if self.seed is not None else int(torch.seed() % 2**63))
        grids = torch.rand((self.masks, self.grid, self.grid), generator=gen, device=dev) < self.p
        shifts = torch.rand((self.masks, 2), generator=gen, device=dev)
        fill = fill_values(inputs, self.fill)
        acc_dtype = torch.float64 if inputs.dtype == torch.float64 else torch.float32
        acc = torch.zeros(n, h, w, dtype=acc_dtype, device=dev)
        scores = torch.empty(self.masks * n, dtype=_score_dtype(inputs), device=dev)

        def chunk(start: int, stop: int) -> None:
            rows = torch.arange(start, stop, device=dev)
            img, j = rows % n, rows // n
            first, last = int(j[0]), int(j[-1])
            m = rise_masks(self.masks, (h, w), self.grid, self.p, gen, dev, inputs.dtype,
                           torch.arange(first, last + 1, device=dev), (grids, shifts))
            mk = m[j - first][:, None]
            f = fill[img] if fill.shape[0] == n else fill
            with torch.inference_mode(), autocast(dev, self.precision):
                output = _layout.forward(self.model, inputs[img] * mk + f * (1 - mk))
                s = self._score(rows_target(target, start, stop), output)
            scores[start:stop] = s  # written by index: a chunk can be re-run after an out-of-memory error

        run_in_chunks(chunk, self.masks * n, self.batch_size, self.model, inputs, backward=False)
        # Weighted sum over masks, one mask chunk at a time (re-generated: cheap, bounded memory).
        s = scores.view(self.masks, n).to(acc_dtype)
        step = 256
        for a in range(0, self.masks, step):
            idx = torch.arange(a, min(self.masks, a + step), device=dev)
            m = rise_masks(self.masks, (h, w), self.grid, self.p, gen, dev, acc_dtype, idx, (grids, shifts))
            acc += torch.einsum("kn,khw->nhw", s[idx], m)
        return acc / (self.masks * self.p), {}
