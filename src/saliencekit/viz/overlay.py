"""Saliency maps drawn the way the lesson draws them: the image in grey, a jet heat map on top, a colour bar.

This is where maps become numpy arrays; methods always return tensors.

>>> import numpy as np
>>> fig = comparison_figure(np.zeros((8, 8)), {"gradient": np.random.rand(8, 8)}, title="demo")
>>> len(fig.axes) >= 2
True
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes

from saliencekit._atomic import atomic_write
from saliencekit._figure import Figure
from saliencekit.errors import InputError
from saliencekit.methods.normalize import minmax_scale

ArrayLike = Any  # numpy array, torch tensor or an Explanation of one image


def _numpy(a: Any) -> np.ndarray:
    from saliencekit.methods.base import Explanation

    if isinstance(a, Explanation):
        if len(a) != 1:
            raise InputError(f"an Explanation of {len(a)} images was given where one map is expected; use .select(i)")
        a = a.maps[0]
    if isinstance(a, torch.Tensor):
        a = a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def image_for_display(image: ArrayLike) -> tuple[np.ndarray, str | None]:
    """An image (C, H, W), (H, W, C) or (H, W) scaled to [0, 1]; returns the array and the colour map to use
    (``"gray"`` for one channel, ``None`` for RGB)."""
    img = _numpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3):  # (C, H, W), the torch layout, wins when ambiguous
        img = img.transpose(1, 2, 0)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
        raise InputError(f"image must have shape (H, W), (1, H, W) or (3, H, W), got {tuple(_numpy(image).shape)}")
    img = minmax_scale(img, start_dim=0)
    return img, ("gray" if img.ndim == 2 else None)


def map_for_display(saliency: ArrayLike, normalization: str = "minmax") -> np.ndarray:
    """A map (H, W) normalised for display (see :func:`saliencekit.methods.normalize.normalize`;
    ``"none"`` keeps the raw values)."""
    m = _numpy(saliency)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise InputError(f"a saliency map must have shape (H, W), got {tuple(m.shape)}")
    if normalization == "none":
        return m
    from saliencekit.methods.normalize import normalize

    return normalize(torch.from_numpy(m)[None], normalization)[0].double().numpy()


def overlay(
    image: ArrayLike | None,
    saliency: ArrayLike,
    ax: Axes | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    colorbar: bool = True,
    normalization: str = "minmax",
    title: str | None = None,
) -> Axes:
    """Draw ``saliency`` over ``image``: the image in grey (RGB images in colour), the map in ``cmap``
    with transparency ``alpha``, and a colour bar.

    Args:
        image: the (preprocessed) image, (C, H, W) or (H, W); scaled to [0, 1] for display. None: the map alone,
            opaque.
        saliency: the map (H, W) at the image's resolution.
        ax: axes to draw into (default: a new figure's axes).
        alpha: opacity of the heat map (over an image).
        cmap: matplotlib colour map of the heat map.
        colorbar: add a colour bar.
        normalization: "minmax" (default), "abs", "percentile", "signed" or "none".
        title: axes title.

    Returns:
        The axes.
    """
    m = map_for_display(saliency, normalization)
    if image is not None:
        img, img_cmap = image_for_display(image)
        if m.shape != img.shape[:2]:
            raise InputError(f"map shape {m.shape} does not match the image's {img.shape[:2]}")
    if ax is None:
        fig = Figure(figsize=(4.2, 3.6))
        ax = fig.add_subplot()
    if image is not None:
        ax.imshow(img, cmap=img_cmap, vmin=0, vmax=1, interpolation="nearest")
    else:
        alpha = 1.0
    if normalization == "signed":
        vmin, vmax = -1.0, 1.0
    elif normalization == "none":
        vmin, vmax = float(np.min(m)), float(np.max(m))
    else:
        vmin, vmax = 0.0, 1.0
    heat = ax.imshow(m, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax, interpolation="bilinear")
    if colorbar:
        cb = ax.figure.colorbar(heat, ax=ax, fraction=0.046, pad=0.04)
        cb.solids.set_alpha(1.0)  # the scale in full colour, not faded like the overlay
        cb.set_label(f"saliency ({normalization})", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def grid_shape(cells: int, max_columns: int = 5) -> tuple[int, int]:
    """Rows and columns of a grid for ``cells`` panels: as few rows as ``max_columns`` allows, the panels spread
    evenly over them (so the last row is as full as it can be).

    >>> grid_shape(10), grid_shape(4), grid_shape(7)
    ((2, 5), (1, 4), (2, 4))
    """
    if cells < 1 or max_columns < 1:
        raise InputError(f"a grid needs at least one cell and one column, got {cells} cells, {max_columns} columns")
    rows = math.ceil(cells / max_columns)
    return rows, math.ceil(cells / rows)


def comparison_figure(
    image: ArrayLike | Sequence[ArrayLike],
    explanations: Mapping[str, ArrayLike] | Sequence[Mapping[str, ArrayLike]],
    title: str | None = None,
    row_titles: Sequence[str] | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    normalization: str | Mapping[str, str] = "minmax",
    max_columns: int = 5,
) -> Figure:
    """The image, then one overlay per method, in a grid at most ``max_columns`` panels wide; several blocks of
    rows (e.g. one per explained class, or one per image), each starting with its image.

    Args:
        image: the image (C, H, W) or (H, W), or a list or tuple of them, one per block.
        explanations: ``label -> map (H, W)`` for one block, or a list of such dicts, one per block.
        title: figure title (put the class and the prediction here).
        row_titles: a label per block, shown left of the block's image.
        alpha, cmap: as in :func:`overlay`.
        normalization: as in :func:`overlay`, or a dict label -> normalisation (default "minmax" for missing labels).
        max_columns: most panels per grid row (the image counts as one); see :func:`grid_shape`.

    Returns:
        A matplotlib Figure (not attached to pyplot; save it with ``saliencekit._atomic.save_figure``). Only the
        panels that are drawn have axes (besides their colour bars): no empty axes fill the last row.
    """
    rows = [explanations] if isinstance(explanations, Mapping) else list(explanations)
    if not rows or not all(isinstance(r, Mapping) and r for r in rows):
        raise InputError("explanations must be a non-empty dict label -> map, or a list of such dicts")
    if row_titles is not None and len(row_titles) != len(rows):
        raise InputError(f"{len(row_titles)} row titles for {len(rows)} rows")
    images = list(image) if isinstance(image, list | tuple) else [image] * len(rows)
    if len(images) != len(rows):
        raise InputError(f"{len(images)} images for {len(rows)} blocks of maps; give one image, or one per block")
    _, cols = grid_shape(1 + max(len(r) for r in rows), max_columns)
    block_rows = [math.ceil((1 + len(r)) / cols) for r in rows]
    # A long title (e.g. several positive labels) wraps to the figure's width and gets its own room above the grid.
    lines = textwrap.wrap(title, width=max(20, int(3.3 * cols * 11))) if title else []
    title_height = 0.05 + 0.2 * len(lines) if lines else 0.0
    height = 3.1 * sum(block_rows) + title_height
    fig = Figure(figsize=(3.3 * cols, height))
    grid = fig.add_gridspec(sum(block_rows), cols)
    top = 0
    for r, row in enumerate(rows):
        img, img_cmap = image_for_display(images[r])
        ax0 = fig.add_subplot(grid[top, 0])
        shown = ax0.imshow(img, cmap=img_cmap, vmin=0, vmax=1)
        # the same room for a colour bar as the overlays take, left blank, so that every panel has the same size
        fig.colorbar(shown, ax=ax0, fraction=0.046, pad=0.04).ax.set_visible(False)
        ax0.set_xticks([])
        ax0.set_yticks([])
        ax0.set_title("image", fontsize=9)
        if row_titles is not None:
            ax0.set_ylabel(row_titles[r], fontsize=9)
        for k, (label, saliency) in enumerate(row.items(), start=1):
            ax = fig.add_subplot(grid[top + k // cols, k % cols])
            overlay(images[r], saliency, ax=ax, alpha=alpha, cmap=cmap, colorbar=True,
                    normalization=normalization if isinstance(normalization, str)
                    else normalization.get(label, "minmax"), title=label)
        top += block_rows[r]
    if lines:
        fig.suptitle("\n".join(lines), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - title_height / height))
    return fig


def overlay_grid(
    images: Sequence[ArrayLike | None],
    maps: Sequence[ArrayLike],
    titles: Sequence[str] | None = None,
    title: str | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    normalization: str = "minmax",
    max_columns: int = 5,
) -> Figure:
    """One overlay (see :func:`overlay`) per map, in a grid at most ``max_columns`` panels wide.

    Args:
        images: one image per map (None entries: the map alone).
        maps: the maps (H, W).
        titles: a title per panel.
        title: the figure's title.
        alpha, cmap, normalization: as in :func:`overlay`.
        max_columns: most panels per row (see :func:`grid_shape`).

    Returns:
        A matplotlib Figure with one axes (and one colour bar) per map.

    >>> fig = overlay_grid([None, None], [np.random.rand(8, 8), np.random.rand(8, 8)], titles=["a", "b"])
    >>> [ax.get_title() for ax in fig.axes[::2]]
    ['a', 'b']
    """
    if len(images) != len(maps) or not maps:
        raise InputError(f"overlay_grid needs one image (or None) per map and at least one map, got {len(images)} "
                         f"images and {len(maps)} maps")
    if titles is not None and len(titles) != len(maps):
        raise InputError(f"{len(titles)} titles for {len(maps)} maps")
    rows, cols = grid_shape(len(maps), max_columns)
    fig = Figure(figsize=(3.3 * cols, 3.0 * rows + (0.4 if title else 0)))
    grid = fig.add_gridspec(rows, cols)
    for k, (image, saliency) in enumerate(zip(images, maps)):
        overlay(image, saliency, ax=fig.add_subplot(grid[k // cols, k % cols]), alpha=alpha, cmap=cmap,
                normalization=normalization, title=None if titles is None else titles[k])
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def save_maps_npz(path: str | os.PathLike[str], explanations: Mapping[str, ArrayLike]) -> Path:
    """Atomically write raw maps to a compressed ``.npz`` (one array per label, float32).

    An :class:`~saliencekit.methods.base.Explanation` is stored as its maps (N, H, W) under the label,
    plus ``<label>/layer_maps`` for CAMs and ``<label>/scores``, ``<label>/targets``.
    """
    from saliencekit.methods.base import Explanation

    arrays: dict[str, np.ndarray] = {}
    for label, value in explanations.items():
        if isinstance(value, Explanation):
            arrays[label] = value.maps.detach().float().cpu().numpy()
            for field in ("layer_maps", "scores", "targets"):
                t = getattr(value, field)
                if t is not None:
                    arrays[f"{label}/{field}"] = t.detach().cpu().numpy()
        else:
            a = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            arrays[label] = a.astype(np.float32) if a.dtype.kind == "f" else a
    if not arrays:
        raise InputError("no maps to save")
    return atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))
