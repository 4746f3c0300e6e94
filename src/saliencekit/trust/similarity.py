"""Similarity between two batches of saliency maps, one value per image.

These are the measures of the sanity checks (Adebayo et al. 2018) and of method agreement: Spearman rank
correlation (of absolute and of signed values), SSIM, HOG-feature correlation and top-k% overlap. Every
function takes two tensors of shape (N, H, W) (or (N, 1, H, W)), works on the device of the first one and
returns a float64 tensor of shape (N,). Correlations of a constant map are undefined and returned as NaN
(the summaries in :mod:`saliencekit.trust.stats` skip NaN).

>>> import torch
>>> a = torch.rand(2, 32, 32)
>>> spearman(a, a)
tensor([1., 1.], dtype=torch.float64)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from saliencekit._filters import gaussian_blur, gaussian_kernel1d, separable_filter
from saliencekit.errors import InputError, UnknownNameError
from saliencekit.methods.normalize import minmax_scale
from saliencekit.trust._ops import as_maps, as_pair, make_generator, memo, rand

SIMILARITY_METRICS = ("spearman_abs", "spearman", "ssim", "hog")


def _rows(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _pearson_rows(x: Tensor, y: Tensor) -> Tensor:
    x = x - x.mean(dim=1, keepdim=True)
    y = y - y.mean(dim=1, keepdim=True)
    num = (x * y).sum(dim=1)
    den = torch.sqrt((x * x).sum(dim=1) * (y * y).sum(dim=1))
    out = num / den
    out = torch.where(den > 0, out, torch.full_like(out, math.nan))
    return out.clamp(-1.0, 1.0)


def rank_rows(x: Tensor) -> Tensor:
    """Ranks (1..P) of every row of an (N, P) tensor, ties get their average rank (as scipy.stats.rankdata)."""
    x = x.to(torch.float64)
    n, p = x.shape
    sorted_x, order = torch.sort(x, dim=1, stable=True)
    new_group = torch.ones_like(sorted_x, dtype=torch.bool)
    new_group[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    group = torch.cumsum(new_group.long(), dim=1) - 1  # group id per sorted position
    ordinal = torch.arange(1, p + 1, dtype=torch.float64, device=x.device).expand(n, p)
    sums = torch.zeros(n, p, dtype=torch.float64, device=x.device).scatter_add_(1, group, ordinal)
    counts = torch.zeros(n, p, dtype=torch.float64, device=x.device).scatter_add_(1, group, torch.ones_like(ordinal))
    avg_sorted = (sums / counts.clamp(min=1)).gather(1, group)
    return torch.empty_like(avg_sorted).scatter_(1, order, avg_sorted)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation between the pixels of ``a[i]`` and ``b[i]``.

    Args:
        a: maps (N, H, W).
        b: maps of the same shape.

    Returns:
        (N,) float64; NaN where a map is constant.
    """
    a, b = as_pair(a, b)
    return _pearson_rows(_rows(a), _rows(b))


def spearman(a: Tensor, b: Tensor, absolute: bool = False) -> Tensor:
    """Spearman rank correlation between the pixels of ``a[i]`` and ``b[i]`` (ties get their average rank).

    Args:
        a: maps (N, H, W).
        b: maps of the same shape.
        absolute: rank ``|a|`` and ``|b|`` instead of the signed values (Adebayo et al.'s "absolute" variant).

    Returns:
        (N,) float64, equal to ``scipy.stats.spearmanr`` per image; NaN where a map is constant.
    """
    a2, b2 = as_pair(a, b)

    def ranks(m: Tensor, m2: Tensor) -> Tensor:
        key = ("ranks", absolute, m2.device, m2.dtype)  # as_pair may have moved b to a's device
        return memo(m, key, lambda: rank_rows(_rows(m2).abs() if absolute else _rows(m2)))

    return _pearson_rows(ranks(a, a2), ranks(b, b2))


def minmax_normalize(maps: Tensor) -> Tensor:
    """Scale every map to [0, 1] by its own minimum and maximum (a constant map becomes all zeros)."""
    return minmax_scale(as_maps(maps).to(torch.float64))


def ssim(a: Tensor, b: Tensor, data_range: float | None = None, normalize: bool = True, win_size: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Mean structural similarity (Wang et al. 2004) of every pair of maps, Gaussian-weighted window.

    Local means, variances and covariance are taken with a Gaussian window of standard deviation ``sigma``
    truncated to ``win_size`` taps (default 11 taps, sigma 1.5, as Wang et al. 2004), population (not sample)
    covariance, and averaged over the pixels whose whole window lies inside the image (a border of
    ``win_size // 2`` pixels is left out). With the defaults this equals
    ``skimage.metrics.structural_similarity(a, b, data_range=1, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`` on the normalised maps.

    Args:
        a: maps (N, H, W), H and W at least ``win_size``.
        b: maps of the same shape.
        data_range: value range of the maps for the stabilising constants; default 1 when ``normalize``, else
            the per-image range of both maps together.
        normalize: min-max normalise each map to [0, 1] first (as Adebayo et al.'s code does), so that SSIM
            compares the shape of the maps, not their scale.
        win_size: odd number of window taps.
        sigma: standard deviation of the Gaussian window, in pixels.
        k1: SSIM constant K1.
        k2: SSIM constant K2.

    Returns:
        (N,) float64 in [-1, 1]; 1 for identical maps.
    """
    a, b = as_pair(a, b)
    if win_size % 2 != 1 or win_size < 3:
        raise InputError(f"ssim win_size must be an odd number >= 3, got {win_size}")
    if min(a.shape[-2:]) < win_size:
        raise InputError(f"ssim needs maps of at least {win_size}x{win_size} pixels, got {tuple(a.shape[-2:])}; "
                         "pass a smaller odd win_size")
    if normalize:
        x, y = minmax_normalize(a), minmax_normalize(b)
    else:
        x, y = a.to(torch.float64), b.to(torch.float64)
    n = x.shape[0]
    if data_range is None:
        if normalize:
            rng = torch.ones(n, dtype=torch.float64, device=x.device)
        else:
            both = torch.cat([x.reshape(n, -1), y.reshape(n, -1)], dim=1)
            rng = both.max(dim=1).values - both.min(dim=1).values
            rng = torch.where(rng > 0, rng, torch.ones_like(rng))
    else:
        rng = torch.full((n,), float(data_range), dtype=torch.float64, device=x.device)
    c1 = ((k1 * rng) ** 2).view(n, 1, 1)
    c2 = ((k2 * rng) ** 2).view(n, 1, 1)
    k = gaussian_kernel1d(sigma, win_size // 2, dtype=torch.float64, device=x.device)
    stack = torch.stack([x, y, x * x, y * y, x * y], dim=1)  # (N, 5, H, W)
    ux, uy, uxx, uyy, uxy = separable_filter(stack, k, "valid").unbind(dim=1)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2))


def hog_features(maps: Tensor, orientations: int = 9, pixels_per_cell: int | None = None,
                 cells_per_block: int = 2) -> Tensor:
    """HOG descriptors of the min-max normalised maps, one row per map, as ``skimage.feature.hog``.

    A vectorised torch version of ``skimage.feature.hog(m, orientations, (ppc, ppc), (cpb, cpb),
    block_norm="L2-Hys", feature_vector=True)`` on the maps' device, batched over N, with skimage's conventions:
    gradients by central differences (``m[i+1] - m[i-1]``, zero on the outermost rows / columns), unsigned
    orientation ``degrees(atan2(g_row, g_col)) % 180`` put into ``orientations`` equal bins *without*
    interpolation between bins or cells (skimage's histogram is hard-binned: a pixel adds its gradient magnitude
    to the one bin of its own cell), cell histograms = summed magnitude / pixels per cell over the whole cells
    only (a remainder strip at the bottom / right is ignored), and L2-Hys normalisation (``eps = 1e-5``, clip at
    0.2, renormalise) of every ``cells_per_block`` x ``cells_per_block`` block of cells at stride one cell,
    flattened in skimage's order (block row, block column, cell row, cell column, orientation).
    Differences, both from skimage's single-precision arithmetic: skimage sums a cell's magnitudes in a C
    ``float``, this code in double precision, so the features agree to about 1e-7 (not bit for bit); and skimage
    compares the orientation with single-precision bin edges, so a pixel within ~1e-5 degrees of a bin edge
    can land in the neighbouring bin (the tests compare with skimage on random and smooth maps).

    Args:
        maps: (N, H, W).
        orientations: number of orientation bins.
        pixels_per_cell: cell side in pixels; default ``max(2, min(H, W) // 16)`` (16 for 256x256 maps).
        cells_per_block: block side in cells (L2-Hys block normalisation).

    Returns:
        (N, F) float64 on the maps' device.
    """
    maps = minmax_normalize(maps)
    n, h, w = maps.shape
    ppc = pixels_per_cell or max(2, min(h, w) // 16)
    b = cells_per_block
    if min(h, w) < ppc * b:
        raise InputError(f"hog needs maps of at least {ppc * b} pixels a side with pixels_per_cell={ppc}"
                         f" and cells_per_block={b}, got {(h, w)}")
    if n == 0:
        return torch.zeros(0, 0, dtype=torch.float64, device=maps.device)
    g_row = torch.zeros_like(maps)
    g_col = torch.zeros_like(maps)
    g_row[:, 1:-1, :] = maps[:, 2:, :] - maps[:, :-2, :]
    g_col[:, :, 1:-1] = maps[:, :, 2:] - maps[:, :, :-2]
    hc, wc = h // ppc, w // ppc
    g_row, g_col = g_row[:, :hc * ppc, :wc * ppc], g_col[:, :hc * ppc, :wc * ppc]
    magnitude = torch.hypot(g_col, g_row)
    orientation = torch.remainder(torch.rad2deg(torch.atan2(g_row, g_col)), 180.0)
    # bin i holds orientations in [i * 180 / O, (i + 1) * 180 / O); a value that rounds to 180 falls in no bin
    # (as in skimage), hence the one-hot over O + 1 classes with the last one dropped
    bins = torch.floor(orientation / (180.0 / orientations)).long().clamp_(0, orientations)
    # flat index of (map, bin, cell row, cell column) per pixel, summed by one scatter_add
    rows = torch.arange(hc * ppc, device=maps.device) // ppc
    cols = torch.arange(wc * ppc, device=maps.device) // ppc
    cell = (rows[:, None] * wc + cols[None, :]).expand_as(bins)
    base = (torch.arange(n, device=maps.device) * ((orientations + 1) * hc * wc)).view(n, 1, 1)
    index = base + bins * (hc * wc) + cell
    hist = torch.zeros(n * (orientations + 1) * hc * wc, dtype=maps.dtype, device=maps.device)
    hist.scatter_add_(0, index.reshape(-1), magnitude.reshape(-1))
    hist = hist.view(n, orientations + 1, hc, wc)[:, :orientations] / (ppc * ppc)  # (N, O, hc, wc)
    # blocks of b x b cells at stride 1: (N, O, hb, wb, b, b) -> (N, hb, wb, b_row, b_col, O)
    blocks = hist.unfold(2, b, 1).unfold(3, b, 1).permute(0, 2, 3, 4, 5, 1)
    eps = 1e-5
    flat = blocks.reshape(*blocks.shape[:3], -1)
    flat = flat / torch.sqrt((flat * flat).sum(dim=-1, keepdim=True) + eps ** 2)
    flat = flat.clamp(max=0.2)
    flat = flat / torch.sqrt((flat * flat).sum(dim=-1, keepdim=True) + eps ** 2)
    return flat.reshape(n, -1)


def hog_correlation(a: Tensor, b: Tensor, orientations: int = 9, pixels_per_cell: int | None = None,
                    cells_per_block: int = 2) -> Tensor:
    """Pearson correlation of the HOG descriptors of the min-max normalised maps (Adebayo et al. 2018).

    Computed in torch on ``a``'s device (see :func:`hog_features` for the arguments and the conventions, those
    of ``skimage.feature.hog``).

    Returns:
        (N,) float64; NaN where a descriptor is constant (e.g. a constant map).
    """
    a2, b2 = as_pair(a, b)
    kw = {"orientations": orientations, "pixels_per_cell": pixels_per_cell, "cells_per_block": cells_per_block}

    def features(m: Tensor, m2: Tensor) -> Tensor:
        key = ("hog", orientations, pixels_per_cell, cells_per_block, m2.device, m2.dtype)  # m2: on a's device
        return memo(m, key, lambda: hog_features(m2, **kw))

    return _pearson_rows(features(a, a2), features(b, b2))


def topk_iou(a: Tensor, b: Tensor, k: float = 0.1) -> Tensor:
    """Intersection over union of the top ``k`` share of pixels by absolute value in ``a[i]`` and ``b[i]``.

    Args:
        a: maps (N, H, W).
        b: maps of the same shape.
        k: share of pixels kept, in (0, 1]; at least one pixel is kept. Ties at the threshold are broken by
            pixel index (lower index first), so the result is deterministic.

    Returns:
        (N,) float64 in [0, 1].
    """
    a, b = as_pair(a, b)
    if not 0 < k <= 1:
        raise InputError(f"topk_iou k must be a share in (0, 1], got {k}")
    x, y = _rows(a).abs(), _rows(b).abs()
    n, p = x.shape
    kk = max(1, round(k * p))
    sel_x = torch.zeros(n, p, dtype=torch.bool, device=x.device)
    sel_y = torch.zeros_like(sel_x)
    sel_x.scatter_(1, torch.sort(x, dim=1, descending=True, stable=True).indices[:, :kk], True)
    sel_y.scatter_(1, torch.sort(y, dim=1, descending=True, stable=True).indices[:, :kk], True)
    inter = (sel_x & sel_y).sum(dim=1).to(torch.float64)
    return inter / (2 * kk - inter)


def similarity_all(a: Tensor, b: Tensor, metrics: Sequence[str] = SIMILARITY_METRICS) -> dict[str, Tensor]:
    """The sanity-check similarity measures between ``a[i]`` and ``b[i]``.

    Args:
        a: maps (N, H, W).
        b: maps of the same shape.
        metrics: which of ``spearman_abs``, ``spearman``, ``ssim``, ``hog`` (default all; also ``pearson`` and
            ``topk_iou`` are accepted).

    Returns:
        Metric name -> (N,) float64 tensor.
    """
    fns = {
        "spearman_abs": lambda: spearman(a, b, absolute=True),
        "spearman": lambda: spearman(a, b),
        "ssim": lambda: ssim(a, b),
        "hog": lambda: hog_correlation(a, b),
        "pearson": lambda: pearson(a, b),
        "topk_iou": lambda: topk_iou(a, b),
    }
    out = {}
    for name in metrics:
        if name not in fns:
            raise UnknownNameError("similarity metric", name, list(fns))
        out[name] = fns[name]()
    return out


def random_maps(shape: tuple[int, int], n: int, generator: torch.Generator | int | None = None,
                smoothing: float | None = None, signed: bool = True, device: torch.device | str = "cpu") -> Tensor:
    """``n`` random maps of size ``shape``: uniform noise blurred by a Gaussian of std ``smoothing`` pixels.

    Args:
        shape: (H, W).
        n: number of maps.
        generator: torch.Generator or seed (None: seed 0).
        smoothing: blur std in pixels; default ``min(H, W) / 32`` (8 for 256x256), 0 for white noise.
        signed: noise in [-1, 1) instead of [0, 1).
        device: device of the result.
    """
    if len(shape) != 2:
        raise InputError(f"random_maps shape must be (H, W), got {tuple(shape)}")
    gen = make_generator(generator)
    noise = rand((n, *shape), gen, torch.device(device), torch.float64)
    if signed:
        noise = 2 * noise - 1
    sigma = min(shape) / 32 if smoothing is None else smoothing
    return gaussian_blur(noise, sigma)


def null_level(shape: tuple[int, int], n: int = 32, generator: torch.Generator | int | None = None,
               smoothing: float | None = None, signed: bool = True, metrics: Sequence[str] = SIMILARITY_METRICS,
               device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Reference level of the similarity measures: their values between ``n`` pairs of unrelated random maps.

    The maps are smoothed uniform noise (see :func:`random_maps`), so they have blob structure like real
    saliency maps. A method passes a randomisation check when its similarity falls to about this level.

    Args:
        shape: (H, W) of the maps.
        n: number of pairs.
        generator: torch.Generator or seed (None: seed 0).
        smoothing: blur std in pixels (see :func:`random_maps`).
        signed: signed noise (for signed maps) or non-negative noise.
        metrics: as in :func:`similarity_all`.
        device: where to compute.

    Returns:
        Metric name -> (n,) float64 tensor.

    >>> level = null_level((32, 32), n=4, generator=0)
    >>> sorted(level)
    ['hog', 'spearman', 'spearman_abs', 'ssim']
    """
    maps = random_maps(tuple(shape), 2 * n, generator, smoothing, signed, device)
    return similarity_all(maps[:n], maps[n:], metrics)


def null_level_from_maps(maps: Tensor, metrics: Sequence[str] = SIMILARITY_METRICS,
                         image_index: Tensor | Sequence[int] | None = None) -> dict[str, Tensor]:
    """Reference level from real maps: map ``i`` compared with the map of another image (``i - 1``, cyclic).

    Args:
        maps: (N, H, W) maps of N different images, N >= 2.
        metrics: as in :func:`similarity_all`.
        image_index: the image each map belongs to (N,), when several maps are of one image (a multi-label image
            explained for several labels): map ``i`` is then compared with the nearest map before it (cyclic) of
            another image. None: every map is of its own image.

    Returns:
        Metric name -> (N,) float64 tensor.

    >>> other_image_index([0, 1, 2, 0, 2])
    tensor([2, 0, 1, 2, 0])
    """
    maps = as_maps(maps)
    if maps.shape[0] < 2:
        raise InputError(f"null_level_from_maps needs maps of at least 2 images, got {maps.shape[0]}")
    if image_index is None:
        return similarity_all(maps, torch.roll(maps, 1, dims=0), metrics)
    other = other_image_index(image_index)
    return similarity_all(maps, maps[other.to(maps.device)], metrics)


def other_image_index(groups: Tensor | Sequence[int]) -> Tensor:
    """For each position ``i``, the nearest position before it (cyclic) whose group differs from ``groups[i]``.

    Raises:
        InputError: fewer than two distinct groups.
    """
    g = torch.as_tensor(groups).flatten().tolist()
    n = len(g)
    if len(set(g)) < 2:
        raise InputError(f"comparing maps of other images needs at least 2 images, got {len(set(g))}")
    out = []
    for i in range(n):
        j = (i - 1) % n
        while g[j] == g[i]:
            j = (j - 1) % n
        out.append(j)
    return torch.tensor(out, dtype=torch.long)
