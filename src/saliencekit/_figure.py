"""THE matplotlib figure of saliencekit: every text in it is drawn literally.

Class names, file names and method labels come from the user's folders and options, and matplotlib reads text
between two ``$`` as a formula (mathtext): a class folder named ``effusion $\\bad$`` would raise a parse error when
the figure is drawn, and ``$x$`` would silently become an italic x. Every figure saliencekit makes is a
:class:`Figure`, which draws each of its texts as the characters it holds (matplotlib's ``parse_math=False``),
titles, labels, tick labels, legends and annotations alike, including the tick labels matplotlib creates while
drawing. Numbers formatted by matplotlib's tickers keep their plain notation (``1e-5``, not mathtext).

saliencekit's figures hold no intended formulas, so nothing else changes. ``tests/test_hostile_input.py`` checks that
no other figure class is used in ``src``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import matplotlib
import matplotlib.figure
import matplotlib.ticker
from matplotlib.text import Text


@contextlib.contextmanager
def _literal(fig: matplotlib.figure.Figure) -> Iterator[None]:
    """Within the block, every text of ``fig`` (and every text created, e.g. new tick labels) is literal."""
    with matplotlib.rc_context({"text.parse_math": False, "axes.formatter.use_mathtext": False}):
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                formatter = axis.get_major_formatter()
                if isinstance(formatter, matplotlib.ticker.ScalarFormatter):
                    formatter.set_useMathText(False)  # an offset such as 1e-5, not $\times10^{-5}$
        for text in fig.findobj(Text):
            text.set_parse_math(False)
        yield


class Figure(matplotlib.figure.Figure):
    """A matplotlib ``Figure`` whose texts are drawn literally (no mathtext); use it wherever saliencekit makes a
    figure.

    Layout (``tight_layout``, ``bbox_inches="tight"``, constrained layout) and drawing both measure the texts, so
    each of them runs with the texts made literal first.

    >>> fig = Figure()
    >>> ax = fig.subplots()
    >>> _ = ax.set_title("effusion $\\\\bad$")
    >>> from saliencekit.viz.inline import figure_png
    >>> figure_png(fig)[:4]
    b'\\x89PNG'
    """

    def draw(self, renderer: Any) -> None:
        with _literal(self):
            super().draw(renderer)

    def get_tightbbox(self, renderer: Any = None, *args: Any, **kwargs: Any) -> Any:
        with _literal(self):
            return super().get_tightbbox(renderer, *args, **kwargs)

    def tight_layout(self, *args: Any, **kwargs: Any) -> None:
        with _literal(self):
            super().tight_layout(*args, **kwargs)
