"""Localisation of saliency maps against ground-truth masks, one value per image.

Maps are (N, H, W) (or (N, 1, H, W)); masks have the same shape, bool or float (a float mask counts as inside
where it is > 0.5) and must already be at the map's resolution. Every function returns a float64 tensor (N,) on
the maps' device. An image whose mask is empty, or whose map has no (positive) mass where one is needed, gets
NaN: it is excluded from the summaries in :mod:`saliencekit.trust.stats`.

>>> import torch
>>> masks = torch.zeros(1, 8, 8, dtype=torch.bool)
>>> masks[0, 2:4, 2:4] = True
>>> relevance_mass(masks.double(), masks)
tensor([1.], dtype=torch.float64)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from saliencekit.errors import InputError
from saliencekit.trust._ops import as_maps, as_masks


def _prepare(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    maps = as_maps(maps)
    masks = as_masks(masks, maps)
    n = maps.shape[0]
    flat = maps.reshape(n, -1).to(torch.float64)
    mflat = masks.reshape(n, -1)
    empty = ~mflat.any(dim=1)
    return flat, mflat, empty


def _share(weights: Tensor, mflat: Tensor, empty: Tensor) -> Tensor:
    total = weights.sum(dim=1)
    inside = (weights * mflat).sum(dim=1)
    out = inside / torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(empty | ~(total > 0), torch.full_like(out, math.nan), out)


def pointing_game(maps: Tensor, masks: Tensor, tolerance: float = 15) -> Tensor:
    """Pointing game: 1 if the map's maximum lies within ``tolerance`` pixels of the mask, else 0.

    The maximum is the first maximal pixel in row-major order; a constant map points nowhere and counts as a
    miss. The distance is Euclidean, from the maximum's pixel centre to the nearest mask pixel centre (0 inside
    the mask), so ``tolerance=0`` asks for the maximum to lie inside the mask.

    Args:
        maps: (N, H, W).
        masks: (N, H, W) ground truth.
        tolerance: largest distance in pixels (at the map's resolution) that still counts as a hit.

    Returns:
        (N,) float64 of 1.0 (hit) / 0.0 (miss); NaN where the mask is empty.
    """
    if tolerance < 0:
        raise InputError(f"pointing_game tolerance must be >= 0 pixels, got {tolerance}")
    flat, mflat, empty = _prepare(maps, masks)
    w = as_maps(maps).shape[-1]
    idx = flat.argmax(dim=1)
    py = torch.div(idx, w, rounding_mode="floor").to(torch.float64)
    px = (idx % w).to(torch.float64)
    p = flat.shape[1]
    coords = torch.arange(p, device=flat.device)
    yy = torch.div(coords, w, rounding_mode="floor").to(torch.float64)
    xx = (coords % w).to(torch.float64)
    d2 = (yy.unsqueeze(0) - py.unsqueeze(1)) ** 2 + (xx.unsqueeze(0) - px.unsqueeze(1)) ** 2
    d2 = torch.where(mflat, d2, torch.full_like(d2, math.inf))
    hit = (d2.min(dim=1).values <= float(tolerance) ** 2 + 1e-9).to(torch.float64)
    constant = flat.max(dim=1).values == flat.min(dim=1).values
    hit = torch.where(constant, torch.zeros_like(hit), hit)
    return torch.where(empty, torch.full_like(hit, math.nan), hit)


def energy_pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """Energy-based pointing game (Wang et al. 2020, Score-CAM): share of the positive map mass inside the mask.

    ``sum(relu(map) * mask) / sum(relu(map))``. For the non-negative CAM maps it was defined on this is the whole
    map's energy; for signed maps only the positive part counts. Numerically the same as :func:`relevance_mass`.

    Returns:
        (N,) float64 in [0, 1]; NaN where the mask is empty or the map has no positive value.
    """
    flat, mflat, empty = _prepare(maps, masks)
    return _share(flat.clamp(min=0), mflat, empty)


def relevance_mass(maps: Tensor, masks: Tensor) -> Tensor:
    """Relevance mass accuracy (Arras et al. 2022): positive relevance inside the mask / total positive relevance.

    A map equal to the mask scores 1; a uniform map scores the mask's area share.

    Returns:
        (N,) float64 in [0, 1]; NaN where the mask is empty or the map has no positive value.
    """
    flat, mflat, empty = _prepare(maps, masks)
    return _share(flat.clamp(min=0), mflat, empty)


def relevance_rank(maps: Tensor, masks: Tensor) -> Tensor:
    """Relevance rank accuracy (Arras et al. 2022): of the K highest-relevance pixels, the share inside the mask.

    K is the number of mask pixels of that image. Pixels are ranked by signed relevance, ties broken by pixel
    index (lower first), so the result is deterministic.

    Returns:
        (N,) float64 in [0, 1]; NaN where the mask is empty.
    """
    flat, mflat, empty = _prepare(maps, masks)
    n, p = flat.shape
    sizes = mflat.sum(dim=1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(p, device=flat.device).expand(n, p))
    top = ranks < sizes.unsqueeze(1)
    inside = (top & mflat).sum(dim=1).to(torch.float64)
    out = inside / sizes.clamp(min=1).to(torch.float64)
    return torch.where(empty, torch.full_like(out, math.nan), out)


def mask_share(maps: Tensor, masks: Tensor) -> Tensor:
    """Share of the absolute map mass on a mask: ``sum(|map| * mask) / sum(|map|)``.

    Meant for a region that should not matter, such as a planted shortcut marker: a high share means the map
    (and perhaps the model) relies on it.

    Returns:
        (N,) float64 in [0, 1]; NaN where the mask is empty or the map is all zero.
    """
    flat, mflat, empty = _prepare(maps, masks)
    return _share(flat.abs(), mflat, empty)


# ------------------------------------------------------------------------------------- CAMs layer by layer


def output_sizes(model: torch.nn.Module, names: list[str], example: Tensor) -> dict[str, tuple[int, int]]:
    """The (h, w) of the outputs of the named modules, from one forward pass of one image in eval mode, as the CAM
    methods read them (a channels-last output's rows and columns, a ViT token layer's patch grid)."""
    from saliencekit.methods._capture import discover, eval_mode

    modules = dict(model.named_modules())
    sizes: dict[str, tuple[int, int]] = {}
    seen = discover(model, example[:1]).seen

    def record(name: str) -> Any:
        reader = seen[name].reader if name in seen else None

        def hook(_module: torch.nn.Module, _inputs: Any, out: Tensor) -> None:
            if not isinstance(out, Tensor):
                return
            if reader is not None and reader.layout == "nhwc" and out.ndim == 4:
                sizes.setdefault(name, (int(out.shape[1]), int(out.shape[2])))
            elif reader is not None and reader.layout == "tokens" and reader.grid is not None:
                sizes.setdefault(name, (int(reader.grid[0]), int(reader.grid[1])))
            elif out.ndim == 4:
                sizes.setdefault(name, (int(out.shape[-2]), int(out.shape[-1])))

        return hook

    handles = [modules[n].register_forward_hook(record(n)) for n in names]
    try:
        with eval_mode(model), torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return sizes


def cam_stages(model: torch.nn.Module, example: Tensor) -> list[tuple[str, tuple[int, int]]]:
    """The candidate CAM layers of ``model``: at each spatial resolution, the last module with a spatial output
    (the output of a stage, before it is downsampled), input side first, with its (h, w).

    Built on :func:`saliencekit.methods._capture.spatial_layers` (one forward pass of one image, in eval mode).
    For the lesson CNN at 256 px: ``features.relu1`` (256x256) ... ``features.relu7`` (4x4).
    """
    from saliencekit.methods._capture import spatial_layers

    names = spatial_layers(model, example)
    sizes = output_sizes(model, names, example)
    last: dict[tuple[int, int], str] = {}
    for n in names:  # in the order the modules finish: the last one at a size is the stage's output
        last[sizes[n]] = n
    return [(n, sizes[n]) for n in names if last[sizes[n]] == n]


def cam_layer_scan(model: torch.nn.Module, images: Tensor, masks: Tensor, methods: tuple[str, ...] = ("gradcam",
                   "layercam"), target: Tensor | None = None, tolerance: float = 15.0,
                   layers: list[str] | None = None, batch_size: int = 16) -> dict[str, dict[str, dict[str, Tensor]]]:
    """Pointing game and relevance mass of CAM methods at every candidate layer (:func:`cam_stages`).

    Args:
        model: the classifier (never modified).
        images: (N, C, H, W).
        masks: (N, H, W) ground truth at the image resolution.
        methods: registered CAM method names (all computed from one forward and backward pass per layer).
        target: the explained class per image (default: the predicted class).
        tolerance: pointing-game tolerance in pixels.
        layers: module names to scan (default: :func:`cam_stages`).
        batch_size: images per engine call.

    Returns:
        layer -> method -> ``{"pointing_game": (N,), "relevance_mass": (N,)}``.
    """
    from saliencekit.trust._explaining import compute_maps, normalize_specs

    if layers is None:
        layers = [n for n, hw in cam_stages(model, images) if hw[0] * hw[1] > 1]
    out: dict[str, dict[str, dict[str, Tensor]]] = {}
    for layer in layers:
        specs = normalize_specs({m: {"method": m} for m in methods})
        maps = compute_maps(model, images, specs, target, layer, batch_size)
        out[layer] = {m: {"pointing_game": pointing_game(maps[m], masks, tolerance=tolerance),
                          "relevance_mass": relevance_mass(maps[m], masks)} for m in methods}
    return out
