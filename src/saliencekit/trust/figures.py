"""Plots of the trust checks (matplotlib ``Figure`` objects, no global pyplot state; the caller saves them).

- :func:`plot_randomization_curves`: similarity with the original maps as layers are randomised, one panel
  per measure, one line per method with its 95% CI, and the null band (unrelated random maps).
- :func:`plot_method_curves`: the same for one method, every measure in one panel.
- :func:`plot_randomization_strip`: the classic figure, maps as the layers are randomised.
- :func:`plot_agreement`: the agreement matrices.
- :func:`plot_faithfulness_curves`: mean deletion / insertion (and ROAD) curves.
- :func:`plot_invariance_maps`: maps before / after the compensated and uncompensated shift.
- :func:`plot_data_randomization`: maps of the true and of the random-label model.

Maps are shown as ``|map|`` scaled to its own 99th percentile (Adebayo et al.'s absolute display), so
maps of different methods and models can be compared by shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from saliencekit.methods.normalize import minmax_scale

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from saliencekit.trust.invariance import InvarianceResult
    from saliencekit.trust.method_agreement import AgreementResult
    from saliencekit.trust.randomization import DataRandomizationResult, RandomizationResult

METRIC_NAMES = {
    "spearman_abs": "Spearman (|map|)", "spearman": "Spearman (signed)", "ssim": "SSIM", "hog": "HOG correlation",
    "topk_iou": "top-k% IoU", "pearson": "Pearson",
}


def _figure(width: float, height: float) -> Figure:
    from saliencekit._figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _display(m: np.ndarray) -> np.ndarray:
    a = np.abs(np.asarray(m, dtype=np.float64))
    hi = np.percentile(a, 99) if a.size else 0.0
    if not hi > 0:
        hi = a.max() if a.size and a.max() > 0 else 1.0
    return np.clip(a / hi, 0, 1)


def _show_image(ax: Any, img: np.ndarray) -> None:
    img = np.asarray(img)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
        if img.ndim == 3:
            img = minmax_scale(img, start_dim=0)
    ax.imshow(img, cmap="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def _show_map(ax: Any, m: np.ndarray) -> Any:
    im = ax.imshow(_display(m), cmap="inferno", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def _cell_pixels(cell: tuple[str, np.ndarray], side: int) -> np.ndarray:
    """One mosaic cell as RGB floats (side, side, 3): an input image in grey (or RGB) or a map in the map colours.

    A cell larger than ``side`` is area-averaged down by the largest whole factor that keeps it at least
    ``side`` pixels, after the map's own scaling and before colouring, then sampled to fit ``side`` (aspect
    ratio kept, centred on white).
    """
    import matplotlib

    kind, arr = cell
    a = np.asarray(arr, dtype=np.float64)
    if kind == "image":
        if a.ndim == 3:  # (C, H, W): one channel in grey, three as RGB, any other count by its first channel
            a = np.moveaxis(a[:3], 0, -1) if a.shape[0] == 3 else a[0]
        a = minmax_scale(a, start_dim=0)
    else:
        a = _display(a)
    h, w = a.shape[:2]
    f = max(1, max(h, w) // side)
    if f > 1:
        a = a[: h - h % f, : w - w % f]
        a = a.reshape(h // f, f, w // f, f, *a.shape[2:]).mean(axis=(1, 3))
        h, w = a.shape[:2]
    scale = side / max(h, w)
    out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
    rows = np.minimum((np.arange(out_h) + 0.5) * h / out_h, h - 1).astype(int)
    cols = np.minimum((np.arange(out_w) + 0.5) * w / out_w, w - 1).astype(int)
    a = a[rows][:, cols]
    if kind == "image":
        rgb = a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2)
    else:
        rgb = matplotlib.colormaps["inferno"](a)[..., :3]
    out = np.ones((side, side, 3))
    top, left = (side - out_h) // 2, (side - out_w) // 2
    out[top: top + out_h, left: left + out_w] = rgb
    return out


def _mosaic(ax: Any, cells: Sequence[Sequence[tuple[str, np.ndarray] | None]], row_names: Sequence[str],
            col_titles: Sequence[str], title_rotation: float = 0, max_side: int = 128) -> None:
    """A grid of images and maps drawn as ONE picture on one axes, with row names and column titles.

    Cells keep their resolution up to ``max_side`` pixels (larger ones are area-averaged down).

    Drawing a 9 x 12 grid as 108 separate axes costs about a second per figure in matplotlib (layout, ticks,
    two draws for a tight bounding box); one image of the same grid costs a few milliseconds.
    """
    rows, cols = len(cells), max((len(r) for r in cells), default=0)
    largest = max((max(np.shape(c[1])[-2:]) for r in cells for c in r if c is not None), default=max_side)
    side = int(min(largest, max_side))
    gap = max(2, side // 20)
    pitch = side + gap
    canvas = np.ones((rows * pitch - gap, cols * pitch - gap, 3))
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            if cell is not None:
                canvas[r * pitch: r * pitch + side, c * pitch: c * pitch + side] = _cell_pixels(cell, side)
    ax.imshow(canvas, interpolation="antialiased")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    for r, name in enumerate(row_names):
        ax.text(-gap, r * pitch + side / 2, name, ha="right", va="center", fontsize=8)
    for c, title in enumerate(col_titles):
        ax.text(c * pitch + side / 2, -gap, title, ha="left" if title_rotation else "center", va="bottom",
                fontsize=7, rotation=title_rotation, rotation_mode="anchor")


def _colors(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _null_band(ax: Any, values: np.ndarray, label: str = "null (random maps)") -> None:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return
    lo, hi = np.percentile(v, [2.5, 97.5])
    ax.axhspan(lo, hi, color="0.6", alpha=0.3, label=f"{label}, 95% range")
    ax.axhline(v.mean(), color="0.4", lw=1, ls=":")


def plot_randomization_curves(result: RandomizationResult, metrics: Sequence[str] | None = None,
                              threshold: bool = True) -> Figure:
    """Mean similarity (with 95% CI) of each method's maps with the original maps, per randomisation step.

    Args:
        result: a cascading or independent :class:`~saliencekit.trust.randomization.RandomizationResult`.
        metrics: measures to plot (one panel each; default all of the result's).
        threshold: mark the verdict step (cascading only); each method's thresholds differ (they depend on its
            reference level) and are drawn in its own figure (:func:`plot_method_curves`).
    """
    from saliencekit.trust.randomization import READINGS

    metrics = list(metrics or result.metrics)
    cols = min(2, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = _figure(6.2 * cols, 3.9 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    x = np.arange(len(result.steps))
    colors = _colors(len(result.methods))
    for ax, metric in zip(axes, metrics):
        _null_band(ax, result.null[metric])
        for color, label in zip(colors, result.methods):
            y = result.curve(label, metric)
            ci = np.array(result.curve_ci(label, metric), dtype=np.float64)
            ax.plot(x, y, "o-", color=color, lw=1.8, ms=4, label=label)
            ax.fill_between(x, ci[:, 0], ci[:, 1], color=color, alpha=0.15, lw=0)
        if threshold and result.mode == "cascading" and metric in READINGS:
            ax.axvline(result.half_step, color="crimson", lw=0.8, ls=":", alpha=0.7,
                       label="verdict step" if metric == READINGS[0] else None)
        ax.set_xticks(x)
        ax.set_xticklabels(result.steps, rotation=45, ha="right", fontsize=8)
        lows = [np.nanmin(np.array(result.curve_ci(lb, metric), dtype=np.float64)) for lb in result.methods]
        low = min([-0.3, *(v for v in lows if np.isfinite(v))])
        ax.set_ylim(max(-1.05, low - 0.05) if metric != "spearman" else -1.05, 1.05)
        ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} with original maps")
        ax.set_xlabel("layers randomised, output first (cumulative)" if result.mode == "cascading"
                      else "layer randomised (alone)")
        ax.set_title(METRIC_NAMES.get(metric, metric))
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(5, len(labels)), fontsize=9)
    kind = "Cascading" if result.mode == "cascading" else "Independent"
    fig.suptitle(f"{kind} model parameter randomisation: similarity to the original maps (mean, 95% CI)")
    return fig


def plot_method_curves(result: RandomizationResult, label: str) -> Figure:
    """Every similarity measure of one method across the randomisation steps, with the null levels."""
    fig = _figure(7.5, 4.6)
    ax = fig.add_subplot()
    x = np.arange(len(result.steps))
    for color, metric in zip(_colors(len(result.metrics)), result.metrics):
        y = result.curve(label, metric)
        ci = np.array(result.curve_ci(label, metric), dtype=np.float64)
        ax.plot(x, y, "o-", color=color, lw=1.8, ms=4, label=METRIC_NAMES.get(metric, metric))
        ax.fill_between(x, ci[:, 0], ci[:, 1], color=color, alpha=0.15, lw=0)
        ax.axhline(float(np.nanmean(result.null[metric])), color=color, lw=1, ls=":")
    _null_band(ax, result.null.get("spearman_abs", next(iter(result.null.values()))),
               "null of Spearman |map|")
    ax.plot([], [], color="0.3", ls=":", label="null level of each measure")
    verdict = result.verdicts.get(label)
    if verdict is not None:
        colors = dict(zip(result.metrics, _colors(len(result.metrics))))
        for metric, reading in verdict.readings.items():
            if np.isfinite(reading.threshold):
                ax.plot([result.half_step - 0.4, result.half_step + 0.4], [reading.threshold] * 2,
                        color=colors.get(metric, "crimson"), lw=2.2, ls="--",
                        label=f"{METRIC_NAMES.get(metric, metric)}: destroyed below {reading.threshold:.2f}")
        ax.axvline(result.half_step, color="crimson", lw=0.8, ls=":", alpha=0.7)
    ax.set_xlabel("layers randomised, output first (cumulative)" if result.mode == "cascading"
                  else "layer randomised (alone)")
    ax.set_xticks(x)
    ax.set_xticklabels(result.steps, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("similarity with the original maps")
    ax.grid(alpha=0.3)
    title = f"{label}: {result.mode} randomisation"
    if verdict is not None:
        title += f" - {(verdict.level or 'no verdict').upper()}"
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def plot_randomization_strip(result: RandomizationResult, label: str | None = None) -> Figure:
    """The classic figure: maps as the layers are randomised, output first (cascading result).

    Args:
        result: a cascading :class:`~saliencekit.trust.randomization.RandomizationResult` with ``strip`` maps.
        label: one method (rows = images) or None (rows = methods, first image).
    """
    steps = result.steps
    if label is None:
        rows = [(lb, result.strip[lb][:, 0]) for lb in result.methods]
        images = [result.strip_images[0]] * len(rows) if result.strip_images is not None else []
        row_names = list(result.methods)
    else:
        strip = result.strip[label]
        rows = [(label, strip[:, i]) for i in range(strip.shape[1])]
        images = list(result.strip_images) if result.strip_images is not None else []
        row_names = [f"image {i}" for i in range(len(rows))]
    ncols = len(steps) + 1
    cell = 1.1
    fig = _figure(cell * ncols + 1.2, cell * len(rows) + 1.2)
    ax = fig.add_subplot()
    grid = [[("image", images[r]) if r < len(images) else None, *[("map", m) for m in maps]]
            for r, (_lb, maps) in enumerate(rows)]
    _mosaic(ax, grid, row_names, ["input", *[step if c == 0 else f"+{step}" for c, step in enumerate(steps)]],
            title_rotation=30)
    who = label if label is not None else "all methods"
    fig.suptitle(f"Cascading randomisation ({who}): |map| as layers are re-initialised, output first", fontsize=10)
    return fig


def plot_agreement(result: AgreementResult) -> Figure:
    """Agreement matrices between methods, one panel per measure, values written in the cells."""
    n = len(result.methods)
    cols = min(2, len(result.metrics))
    rows = math.ceil(len(result.metrics) / cols)
    side = max(3.2, 0.55 * n + 1.6)
    fig = _figure(side * cols + 0.8, side * rows + 0.5)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[len(result.metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes, result.metrics):
        mat = result.matrix(metric)
        vmin = -1 if metric in ("spearman", "pearson") else 0
        im = ax.imshow(mat, cmap="RdBu_r" if vmin < 0 else "viridis", vmin=vmin, vmax=1)
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xticklabels(result.methods, rotation=45, ha="right", fontsize=8)
        ax.set_yticklabels(result.methods, fontsize=8)
        for i in range(n):
            for j in range(n):
                v = mat[i, j]
                dark = (v < 0.5) if vmin == 0 else abs(v) > 0.6
                ax.text(j, i, "-" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
        title = METRIC_NAMES.get(metric, metric)
        if metric == "topk_iou":
            title = f"top-{result.topk:.0%} IoU"
        ax.set_title(title)
        fig.colorbar(im, ax=ax, shrink=0.75)
    fig.suptitle("Agreement between methods (mean over images)")
    return fig


def plot_faithfulness_curves(curves: Mapping[str, Mapping[str, Any]], kinds: Sequence[str] | None = None,
                             title: str | None = None) -> Figure:
    """Mean perturbation curves of several methods.

    Args:
        curves: label -> kind (``"deletion"``, ``"insertion"``, ``"road_morf"``, ``"road_lerf"``) ->
            :class:`~saliencekit.trust.faithfulness.CurveResult`.
        kinds: which panels (default: the kinds present, in that order).
        title: figure title.
    """
    order = ("deletion", "insertion", "road_morf", "road_lerf")
    present = {k for c in curves.values() for k in c}
    kinds = list(kinds or [k for k in order if k in present])
    better = {"deletion": "lower AUC is better", "insertion": "higher AUC is better",
              "road_morf": "most relevant removed first; lower is better",
              "road_lerf": "least relevant removed first; higher is better"}
    cols = min(2, len(kinds))
    rows = math.ceil(len(kinds) / cols)
    fig = _figure(5.6 * cols, 3.8 * rows + 0.3)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    colors = _colors(len(curves))
    for ax, kind in zip(axes, kinds):
        for color, (label, c) in zip(colors, curves.items()):
            if kind not in c:
                continue
            r = c[kind]
            fr = np.asarray(r.fractions.detach().cpu(), dtype=np.float64)
            sc = np.asarray(r.scores.detach().cpu(), dtype=np.float64)
            auc = float(np.nanmean(np.asarray(r.auc.detach().cpu(), dtype=np.float64)))
            ax.plot(fr, np.nanmean(sc, axis=0), color=color, lw=1.8, label=f"{label} (AUC {auc:.3f})")
        ax.set_xlabel("share of pixels " + ("inserted" if kind == "insertion" else "removed"))
        ax.set_ylabel("probability of the explained class")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{kind.replace('_', ' ')} ({better.get(kind, '')})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right" if kind in ("deletion", "road_morf") else "lower right")
    for ax in axes[len(kinds):]:
        ax.set_visible(False)
    fig.suptitle(title or "Faithfulness: mean perturbation curves")
    return fig


def plot_invariance_maps(result: InvarianceResult, image: int = 0) -> Figure:
    """Maps of one image: original, after the compensated shift, after the uncompensated shift."""
    labels = list(result.methods)
    fig = _figure(1.8 * 4 + 0.6, 1.8 * len(labels) + 0.8)
    axes = fig.subplots(len(labels), 4, squeeze=False)
    for r, label in enumerate(labels):
        if result.images is not None:
            _show_image(axes[r, 0], result.images[image])
        axes[r, 0].set_ylabel(label, fontsize=8)
        for c, kind in enumerate(("original", "compensated", "uncompensated")):
            _show_map(axes[r, c + 1], result.maps[kind][label][image])
        comp = result.compensated[label]
        unc = result.uncompensated[label]
        axes[r, 2].set_xlabel(f"rel. change {comp['relative_change'][image]:.1e}", fontsize=7)
        axes[r, 3].set_xlabel(f"Spearman {unc['spearman'][image]:.2f}", fontsize=7)
    for c, name in enumerate(("input", "original map", f"shift {result.shift:+g},\nbias compensated",
                              f"shift {result.shift:+g},\nnot compensated")):
        axes[0, c].set_title(name, fontsize=8)
    fig.suptitle("Input-shift invariance (Kindermans et al. 2017)", fontsize=10)
    return fig


def plot_data_randomization(result: DataRandomizationResult) -> Figure:
    """Maps of the true model and of the model trained on permuted labels, for the kept images."""
    labels = list(result.methods)
    k = 0 if result.images is None else len(result.images)
    k = max(1, min(k, 2))
    ncols = 1 + 2 * k
    fig = _figure(1.7 * ncols + 0.6, 1.8 * len(labels) + 0.9)
    axes = fig.subplots(len(labels), ncols, squeeze=False)
    for r, label in enumerate(labels):
        axes[r, 0].set_ylabel(label, fontsize=8)
        if result.images is not None:
            _show_image(axes[r, 0], result.images[0])
        for i in range(k):
            _show_map(axes[r, 1 + 2 * i], result.maps_true[label][i])
            _show_map(axes[r, 2 + 2 * i], result.maps_random[label][i])
            if r == 0:
                axes[0, 1 + 2 * i].set_title(f"image {i}\ntrue labels", fontsize=8)
                axes[0, 2 + 2 * i].set_title(f"image {i}\npermuted labels", fontsize=8)
        v = result.verdicts.get(label)
        if v is not None:
            axes[r, ncols - 1].set_xlabel(f"{(v.level or 'no verdict').upper()} (|map| Spearman {v.value:.2f})",
                                          fontsize=7)
    axes[0, 0].set_title("input", fontsize=8)
    acc = result.train_accuracy
    sub = "" if acc is None else f" (random-label model: {acc:.0%} training accuracy)"
    fig.suptitle(f"Data randomisation{sub}", fontsize=10)
    return fig


def plot_metric_bars(methods: Mapping[str, Mapping[str, Any]], metrics: Sequence[str], title: str) -> Figure:
    """Bar chart of summary means with their 95% CIs, one panel per metric, one bar per method.

    Args:
        methods: label -> metric -> summary dict (``mean``, ``ci_low``, ``ci_high``).
        metrics: which metrics (panels).
        title: figure title.
    """
    labels = list(methods)
    cols = min(2, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = _figure(max(3.0, 0.45 * len(labels) + 1.5) * cols, 3.4 * rows + 0.3)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    colors = _colors(len(labels))
    for ax, metric in zip(axes, metrics):
        means, lo, hi = [], [], []
        for lb in labels:
            s = methods[lb].get(metric) or {}
            m = s.get("mean")
            means.append(np.nan if m is None else m)
            lo.append(np.nan if s.get("ci_low") is None else s["ci_low"])
            hi.append(np.nan if s.get("ci_high") is None else s["ci_high"])
        means_a, lo_a, hi_a = (np.asarray(v, dtype=np.float64) for v in (means, lo, hi))
        err = np.vstack([np.nan_to_num(means_a - lo_a), np.nan_to_num(hi_a - means_a)])
        x = np.arange(len(labels))
        ax.bar(x, np.nan_to_num(means_a), yerr=err, color=colors, capsize=3)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
        ax.set_title(metric.replace("_", " "), fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    return fig
