"""A first look at a dataset: random samples of each class, with their masks or augmented."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.lines import Line2D

from saliencekit._figure import Figure
from saliencekit.data.augment import Augmentation
from saliencekit.data.folder import scan_folder
from saliencekit.data.preprocess import Preprocessing
from saliencekit.errors import DataError
from saliencekit.methods.normalize import minmax_scale

# mask kind -> contour colour; the lung outline is drawn only when asked for
MASK_COLOURS = {"lesion": "#ff3b30", "shortcut": "#ffcc00", "lung": "#34c759"}
MAX_PER_CLASS = 20  # columns of the grid
MAX_ROWS = 20  # classes shown (the first ones, in label order; the title says so when there are more)


def plot_samples(
    root: str | os.PathLike[str],
    per_class: int = 4,
    masks: bool = True,
    augment: Augmentation | None = None,
    seed: int = 0,
    preprocessing: Preprocessing | None = None,
    mask_kinds: tuple[str, ...] = ("lesion", "shortcut"),
) -> Figure:
    """Draw random images of each class in a grid (one row per class).

    Args:
        root: dataset folder (one sub-folder per class, optional mask folders).
        per_class: images shown per class (fewer if a class has fewer), 1 to :data:`MAX_PER_CLASS`. The first
            :data:`MAX_ROWS` classes are shown (the title says how many there are).
        masks: outline the masks found for each image (kinds in ``mask_kinds``).
        augment: show randomly augmented versions instead of the originals (the masks are
            transformed with the same random transform).
        seed: chooses the samples (and the augmentation's random numbers).
        preprocessing: how files become the shown pictures; default greyscale 256x256 without
            standardisation. With standardisation, each picture is shown with its own min-max range.
        mask_kinds: which masks to outline (``"lesion"``, ``"shortcut"``, ``"lung"``, ...).

    Returns:
        A matplotlib figure (not attached to pyplot; nothing to close).

    Raises:
        DataError: the folder is missing, not a dataset, or has fewer than two classes.

    >>> fig = plot_samples("data/cxr", per_class=3)  # doctest: +SKIP
    """
    if not 1 <= per_class <= MAX_PER_CLASS:
        raise DataError(f"per_class must be from 1 to {MAX_PER_CLASS} (images per class shown), got {per_class}")
    index = scan_folder(root)
    shown = index.classes[:MAX_ROWS]
    pre = preprocessing or Preprocessing(size=(256, 256), standardize="none")
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(seed))
    ncols = per_class
    nrows = len(shown)
    fig = Figure(figsize=(2.3 * ncols, 2.45 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    used: set[str] = set()
    for row, cls in enumerate(shown):
        members = [s for s in index.samples if s.class_name == cls]
        chosen = sorted(rng.choice(len(members), size=min(per_class, len(members)), replace=False).tolist())
        for col in range(ncols):
            ax = axes[row][col]
            ax.set_axis_off()
            if col >= len(chosen):
                continue
            sample = members[chosen[col]]
            x = pre.load(sample.path)
            kinds = [k for k in mask_kinds if k in sample.masks] if masks else []
            mask_t = [pre.load_mask(sample.masks[k])[None] for k in kinds]
            if augment is not None and augment.enabled:
                y = augment(torch.cat([x, *mask_t]), generator=gen)
                x, mask_t = y[: x.shape[0]], [y[x.shape[0] + i][None] for i in range(len(kinds))]
            img = minmax_scale(x.permute(1, 2, 0).numpy(), start_dim=0)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
            for kind, m in zip(kinds, mask_t):
                m2 = m[0].numpy()
                if m2.max() > 0.5:
                    ax.contour(m2, levels=[0.5], colors=[MASK_COLOURS.get(kind, "#00c8ff")], linewidths=1.0)
                    used.add(kind)
            ax.set_title(f"{cls}\n{Path(sample.relpath).name}", fontsize=8)
    title = f"{Path(root).name}: {len(index.samples)} images, classes {', '.join(shown)}"
    if len(shown) < len(index.classes):
        title += f" (the first {len(shown)} of {len(index.classes)} classes)"
    if augment is not None and augment.enabled:
        a = augment
        title += f"\naugmented (rotation {a.rotation:g} deg, shift {a.shift:g}, zoom {a.zoom:g}, hflip {a.hflip})"
    fig.suptitle(title, fontsize=9)
    if used:
        handles = [Line2D([], [], color=MASK_COLOURS.get(k, "#00c8ff"), label=f"{k} mask") for k in sorted(used)]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    return fig
