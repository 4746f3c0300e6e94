"""Inline display in notebooks: the pictures that saliencekit's results show in Jupyter.

- :func:`explanation_figure`: one method's maps over their images (or alone), one panel per image;
  what :meth:`Explanation.plot <saliencekit.methods.base.Explanation.plot>` draws.
- :func:`compare`: several methods side by side, one block of rows per image (the figure ``saliencekit explain``
  writes as ``comparison.png``); ``saliencekit.compare``.
- :func:`explanation_html`: an explanation as HTML (a line about it, a small table of its images' targets and
  scores, its figure); what a notebook shows for an :class:`~saliencekit.methods.base.Explanation`.
- :func:`figure_png`, :func:`png_img`: a figure as PNG bytes and as an ``<img>`` tag.

Every function returns a figure or a string: nothing here shows a figure through pyplot. A returned ``Figure`` shows
inline in Jupyter with matplotlib's inline backend (``%matplotlib inline``, the default once pyplot is imported).

>>> import torch
>>> from saliencekit.methods.base import Explanation
>>> e = Explanation("gradcam", torch.rand(2, 8, 8), scores=torch.ones(2), targets=torch.tensor([1, 0]),
...                 predictions=torch.tensor([1, 1]))
>>> len(explanation_figure(e, torch.rand(2, 1, 8, 8)).axes)  # two overlays, two colour bars
4
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from saliencekit.errors import InputError, UnknownNameError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from saliencekit.methods.base import Explanation
    from saliencekit.trust.results import CheckResults

#: Most images an explanation shows inline (``Explanation.plot`` draws any number).
INLINE_IMAGES = 8
#: Resolution of inline PNGs (dots per inch).
INLINE_DPI = 72

Index = int | slice | Sequence[int] | None


def figure_png(fig: Figure, dpi: int = INLINE_DPI) -> bytes:
    """PNG bytes of a matplotlib figure (white background, cropped to what is drawn)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def png_img(png: bytes, alt: str) -> str:
    """An ``<img>`` tag holding PNG bytes as a ``data:`` URI."""
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<img src="{uri}" alt="{html.escape(alt)}" style="max-width:100%">'


def _indices(index: Index, n: int, limit: int | None = None) -> list[int]:
    """The chosen images: all (at most ``limit``), an int, a slice or a list; out-of-range indices are an error."""
    if index is None:
        chosen = list(range(n if limit is None else min(n, limit)))
    elif isinstance(index, slice):
        chosen = list(range(n))[index]
    elif isinstance(index, int) and not isinstance(index, bool):
        chosen = [index]
    else:
        chosen = [int(i) for i in index]
    bad = [i for i in chosen if not -n <= i < n]
    if bad:
        raise InputError(f"image index {bad[0]} out of range for {n} image(s); valid: 0..{n - 1}")
    if not chosen:
        raise InputError(f"no images chosen by index {index!r} (of {n})")
    return [i % n for i in chosen]


def _images(images: Any, n: int) -> list[Any]:
    """One displayable image per explained image: ``images`` (N, C, H, W), a (C, H, W) or (H, W) image when
    ``n == 1``, a list of ``n`` images, or None (the maps alone)."""
    if images is None:
        return [None] * n
    if getattr(images, "ndim", None) == 4 or isinstance(images, list | tuple):
        if len(images) != n:
            raise InputError(f"{len(images)} images for {n} maps; pass the images that were explained, in order")
        return list(images)
    if n == 1:
        return [images]
    shape = tuple(getattr(images, "shape", ()))
    raise InputError(f"images must be (N, C, H, W) with N = {n} (the images that were explained), got shape {shape}")


def _normalization(method: str, how: str) -> str:
    """The display normalisation of a method's maps; ``"auto"`` for a name the registry does not know is min-max
    (named on the colour bar, as every normalisation is)."""
    from saliencekit.methods.normalize import display_normalization

    try:
        return display_normalization(method, how)
    except UnknownNameError:
        if how != "auto":
            raise
        return "minmax"


def _class(i: int, class_names: Sequence[str] | None) -> str:
    if i < 0:
        return "custom target"
    return class_names[i] if class_names is not None and i < len(class_names) else f"class {i}"


def _value(t: torch.Tensor | None, i: int) -> Any:
    return None if t is None or t.ndim == 0 or i >= t.shape[0] else t[i].item()


def image_caption(explanation: Explanation, i: int, class_names: Sequence[str] | None = None,
                  labels: Any = None) -> str:
    """``image i (<true class>): explaining <class>, predicted <class>`` from what the explanation recorded (the
    prediction only when it is not the explained class; the true class when ``labels`` are given)."""
    head = f"image {i}" + (f" ({_class(int(labels[i]), class_names)})" if labels is not None else "")
    bits = []
    target, pred = _value(explanation.targets, i), _value(explanation.predictions, i)
    if target is not None:
        bits.append(f"explaining {_class(int(target), class_names)}")
    if pred is not None and pred != target:
        bits.append(f"predicted {_class(int(pred), class_names)}")
    return head + (": " + ", ".join(bits) if bits else "")


def _check_labels(labels: Any, n: int) -> None:
    if labels is not None and len(labels) != n:
        raise InputError(f"{len(labels)} labels for {n} images; give one true class per explained image")


def _method_title(explanation: Explanation) -> str:
    layer = explanation.params.get("layer")
    return explanation.method + (f" (layer {layer})" if isinstance(layer, str) and layer else "")


def explanation_figure(
    explanation: Explanation,
    images: Any = None,
    index: Index = None,
    normalization: str = "auto",
    class_names: Sequence[str] | None = None,
    labels: Any = None,
    max_columns: int = 5,
    alpha: float = 0.5,
    cmap: str = "jet",
    title: str | None = None,
) -> Figure:
    """One method's maps, each over its image with a colour bar, in a grid at most ``max_columns`` panels wide.

    Args:
        explanation: the maps (:class:`~saliencekit.methods.base.Explanation`).
        images: the explained images (N, C, H, W), or None to draw the maps alone.
        index: which images (an int, a slice or a list; default all).
        normalization: ``"auto"`` (the method's own display normalisation, as ``saliencekit explain`` draws it),
            ``"minmax"``, ``"abs"``, ``"percentile"`` or ``"signed"``; the colour bar names it.
        class_names: class names for the panel titles.
        labels: the images' true classes (N,), shown in the panel titles.
        max_columns: most panels per row.
        alpha, cmap: heat-map opacity and colour map (see :func:`saliencekit.viz.overlay.overlay`).
        title: the figure's title (default: the method and its layer).

    Raises:
        InputError: images that do not match the maps, or an index out of range.
    """
    from saliencekit.viz.overlay import overlay_grid

    chosen = _indices(index, len(explanation))
    shown = _images(images, len(explanation))
    _check_labels(labels, len(explanation))
    return overlay_grid([shown[i] for i in chosen], [explanation.maps[i] for i in chosen],
                        titles=[image_caption(explanation, i, class_names, labels) for i in chosen],
                        title=_method_title(explanation) if title is None else title, alpha=alpha, cmap=cmap,
                        normalization=_normalization(explanation.method, normalization), max_columns=max_columns)


def compare(
    explanations: Mapping[str, Explanation] | Sequence[Explanation],
    images: Any,
    index: Index = None,
    normalization: str = "auto",
    class_names: Sequence[str] | None = None,
    labels: Any = None,
    max_columns: int = 5,
    title: str | None = None,
) -> Figure:
    """Several methods side by side: per image, the image and each method's map over it, in a grid at most
    ``max_columns`` panels wide (what ``saliencekit explain`` writes as ``comparison.png``).

    Args:
        explanations: what :func:`saliencekit.explain` returns (label -> Explanation), or a list of
            explanations (labelled by their method) of the same images.
        images: the explained images (N, C, H, W).
        index: which images (an int, a slice or a list; default all).
        normalization: ``"auto"`` (each method's own display normalisation) or one normalisation for all.
        class_names: class names for the row titles.
        labels: the images' true classes (N,), shown in the row titles.
        max_columns: most panels per row (the image counts as one).
        title: the figure's title.

    Returns:
        A matplotlib Figure.

    Raises:
        InputError: no explanations, explanations of different numbers of images, images that do not match, or an
            index out of range.

    >>> import saliencekit as sk, torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    >>> x = torch.rand(2, 1, 12, 12)
    >>> fig = sk.compare(sk.explain(net, x, methods=["gradient", "gradcam"]), x)  # doctest: +SKIP
    """
    from saliencekit.methods.base import Explanation
    from saliencekit.viz.overlay import comparison_figure

    if isinstance(explanations, Explanation):
        explanations = [explanations]
    labelled = dict(explanations) if isinstance(explanations, Mapping) else {e.method: e for e in explanations}
    if not labelled or not all(isinstance(e, Explanation) for e in labelled.values()):
        raise InputError("compare() needs explanations: the dict saliencekit.explain returns (label -> Explanation) "
                         "or a list of Explanation objects")
    sizes = {label: len(e) for label, e in labelled.items()}
    if len(set(sizes.values())) != 1:
        raise InputError(f"the explanations cover different numbers of images: {sizes}; explain the same images")
    first = next(iter(labelled.values()))
    n = len(first)
    if images is None:
        raise InputError("compare() needs the explained images (N, C, H, W) to draw the maps over")
    shown = _images(images, n)
    chosen = _indices(index, n)
    _check_labels(labels, n)
    norms = {label: _normalization(e.method, normalization) for label, e in labelled.items()}
    blocks = [{label: e.maps[i] for label, e in labelled.items()} for i in chosen]
    return comparison_figure([shown[i] for i in chosen], blocks, title=title,
                             row_titles=[image_caption(first, i, class_names, labels) for i in chosen],
                             normalization=norms, max_columns=max_columns)


def _number(v: Any) -> str:
    return "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def explanation_html(explanation: Explanation, png: bytes | None = None, limit: int = INLINE_IMAGES) -> str:
    """An explanation as HTML: what it is, a table of its first ``limit`` images' targets, predictions and scores,
    and its figure (``png``; default :func:`explanation_figure` of the maps alone)."""
    n = len(explanation)
    chosen = _indices(None, n, limit)
    h, w = explanation.maps.shape[-2:]
    more = f"; the first {len(chosen)} shown" if len(chosen) < n else ""
    head = (f"<p><strong>{html.escape(_method_title(explanation))}</strong>: {n} map{'s' if n != 1 else ''} of "
            f"{h}&times;{w}{more}. Raw maps in <code>.maps</code>; <code>.plot(images)</code> draws them over the "
            "images.</p>")
    rows = "".join(
        f"<tr><td>{i}</td><td>{_number(_value(explanation.targets, i))}</td>"
        f"<td>{_number(_value(explanation.predictions, i))}</td><td>{_number(_value(explanation.scores, i))}</td></tr>"
        for i in chosen)
    table = ('<table class="saliencekit-explanation"><thead><tr><th>image</th><th>target</th><th>predicted</th>'
             f"<th>explained score</th></tr></thead><tbody>{rows}</tbody></table>")
    if png is None:
        png = figure_png(explanation_figure(explanation, index=chosen))
    return f"<div>{head}{table}{png_img(png, f'{explanation.method} saliency maps')}</div>"


_CELL_STYLE = {"pass": "background:#e3f4e1;color:#135b12", "partly": "background:#fff1cc;color:#6b4e00",
               "fail": "background:#fbe0de;color:#8a1c12;font-weight:bold", "na": "color:#777",
               "num": "text-align:right"}


def verdict_table_html(results: CheckResults) -> str:
    """The results of the checks as HTML: one row per method, one column per check with a verdict (the cells of
    :meth:`CheckResults.verdicts <saliencekit.trust.results.CheckResults.verdicts>`, coloured), whether the method
    is recommended, then the recommended methods with their reasons and the checks that were skipped."""
    from saliencekit.trust.checks import list_checks

    verdicts = results.verdicts()
    keys = list(dict.fromkeys(k for row in verdicts.values() for k in row))
    titles = {c.key: c.title for check in list_checks() for c in check.columns}
    recommended = results.summary.recommended
    e = html.escape
    head = "".join(f'<th data-key="{e(k)}">{e(titles.get(k, k))}</th>' for k in keys)
    rows = []
    for label, cells in verdicts.items():
        tds = ""
        for k in keys:
            cell = cells[k]
            note = f' title="{e(cell.note)}"' if cell.note else ""
            tds += f'<td data-key="{e(k)}" style="{_CELL_STYLE.get(cell.css, "")}"{note}>{e(cell.text)}</td>'
        rec = label in recommended
        rows.append(f'<tr data-method="{e(label)}"><th style="text-align:left">{e(label)}</th>{tds}'
                    f'<td data-key="recommended" style="{_CELL_STYLE["pass" if rec else "na"]}">'
                    f'{"yes" if rec else "no"}</td></tr>')
    table = (f'<table class="saliencekit-verdicts"><thead><tr><th>method</th>{head}<th>recommended</th></tr>'
             f'</thead><tbody>{"".join(rows)}</tbody></table>')
    if recommended:
        items = "".join(f"<li><strong>{e(m)}</strong>: {e(results.summary.reasons.get(m, ''))}</li>"
                        for m in recommended)
        after = f"<p>Recommended, best first:</p><ul>{items}</ul>"
    else:
        after = "<p><strong>No method passed every check</strong>: treat every saliency map of this model with " \
                "caution.</p>"
    if not keys:
        table = "<p>No per-method verdicts (no check with a verdict was run).</p>"
    skipped = "".join(f"<li>{e(name)}: {e(reason)}</li>" for name, reason in results.skipped.items())
    if skipped:
        after += f"<p>Skipped checks:</p><ul>{skipped}</ul>"
    n = results.settings.get("images")
    intro = f"<p>Trust checks of {len(verdicts)} method(s){f' on {n} images' if n else ''}.</p>"
    return f"<div>{intro}{table}{after}</div>"


__all__ = ["INLINE_DPI", "INLINE_IMAGES", "compare", "explanation_figure", "explanation_html", "figure_png",
           "image_caption", "png_img", "verdict_table_html"]
