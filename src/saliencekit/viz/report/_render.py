"""The report's Jinja2 environment and the plain data its templates show.

Autoescaping is on for every template: whatever a section or check hands to a template (file names, class names,
method labels, reasons from ``checks.json``) is text, never HTML. Structure lives in the templates; Python hands
them values and these small records (:class:`Tag`, :class:`Table`, :class:`KeyValues`, :class:`FigureBlock`),
which the macros in ``templates/macros.html.j2`` draw. Nothing is marked safe in Python.

Templates: ``page.html.j2`` (the page), ``sections/<id>.html.j2`` (one per section), ``macros.html.j2``, and
``check/<name>`` for each registered check's partial (:meth:`saliencekit.trust.checks.base.Check.template_source`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from saliencekit.trust.checks.base import is_missing, value_of
from saliencekit.viz.report._images import Figure, Unavailable

_TAGS = ("span", "em", "strong", "code")


@dataclass(frozen=True)
class Tag:
    """Text inside one inline element (``span``, ``em``, ``strong`` or ``code``) with an optional CSS class."""

    name: str
    text: str
    css: str = ""

    def __post_init__(self) -> None:
        if self.name not in _TAGS:
            raise ValueError(f"tag {self.name!r} is not one of {_TAGS}")


def code(value: Any) -> Tag:
    """``<code>`` of a value (objects as JSON)."""
    return Tag("code", value if isinstance(value, str) else json.dumps(value, default=str))


@dataclass(frozen=True)
class Table:
    """A table: cells are plain values or :class:`Tag`; ``num_cols`` are right-aligned, a ``reason`` column wraps."""

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    num_cols: Sequence[int] = ()
    css: str = ""


@dataclass(frozen=True)
class KeyValues:
    """A two-column table of settings: values are plain text or :class:`Tag` (nested values as JSON code)."""

    items: Sequence[tuple[str, Any]]


def key_values(items: Mapping[str, Any]) -> KeyValues:
    """:class:`KeyValues` of a mapping: floats formatted, None as ``n/a``, non-empty lists and dicts as JSON code."""
    rows = []
    for k, v in items.items():
        if isinstance(v, Mapping | list | tuple) and v:
            cell: Any = code(v)
        else:
            cell = num(v) if isinstance(v, float) else ("n/a" if v is None else v)
        rows.append((str(k), cell))
    return KeyValues(rows)


@dataclass(frozen=True)
class FigureBlock:
    """A check's figures, full width, and the per-method figures only listed by name."""

    figures: Sequence[Figure | Unavailable] = ()
    listed: Sequence[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- number formats


def num(v: Any, digits: int = 3) -> str:
    """A number for the page: ``digits`` decimals (scientific below ``10**-digits``), ``n/a`` when missing,
    yes / no for a bool, the mean for a summary dict."""
    v = value_of(v)
    if is_missing(v):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.2e}" if 0 < abs(v) < 10 ** -digits else f"{v:.{digits}f}"
    return str(v)


def summary(v: Any) -> str:
    """``mean [ci_low, ci_high]`` of a summary dict (or a plain number)."""
    if isinstance(v, Mapping):
        mean, lo, hi = v.get("mean"), v.get("ci_low"), v.get("ci_high")
        if is_missing(mean):
            return "n/a"
        if is_missing(lo) or is_missing(hi):
            return num(mean)
        return f"{num(mean)} [{num(lo)}, {num(hi)}]"
    return num(v)


def pct(v: Any) -> str:
    """A share as a percentage (one decimal below 1%)."""
    v = value_of(v)
    if is_missing(v):
        return "n/a"
    v = 100 * float(v)
    return f"{v:.0f}%" if abs(v) >= 1 or v == 0 else f"{v:.1f}%"


def times(ratio: float) -> str:
    """``51\u00d7`` (one decimal below 10: ``1.9\u00d7``)."""
    return f"{ratio:.1f}\u00d7" if ratio < 10 else f"{ratio:.0f}\u00d7"


def ratio(share: Any, area: Any) -> float | None:
    """``share / area`` when both are finite and the area is positive, else None."""
    share, area = value_of(share), value_of(area)
    if is_missing(share) or is_missing(area) or float(area) <= 0:
        return None
    return float(share) / float(area)


# ----------------------------------------------------------------------------------------------- environment


def _check_template(name: str) -> tuple[str, None, Any] | None:
    """``check/<name>``: the partial of the registered check (read again on every load: checks may come and go)."""
    if not name.startswith("check/"):
        return None
    from saliencekit.errors import UnknownNameError
    from saliencekit.trust.checks import get_check

    try:
        return get_check(name.removeprefix("check/")).template_source(), None, lambda: False
    except UnknownNameError:
        return None


@functools.lru_cache(maxsize=1)
def environment() -> Any:
    """The Jinja2 environment: autoescaping on (for every template), the report's filters and tests."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.PackageLoader("saliencekit.viz.report", "templates"),
                                    jinja2.FunctionLoader(_check_template)]),
        autoescape=True, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(num=num, summary=summary, pct=pct, times=times)
    env.globals.update(ratio=ratio, missing=is_missing)
    env.tests.update(tag=lambda v: isinstance(v, Tag), unavailable=lambda v: isinstance(v, Unavailable),
                     finite=lambda v: not is_missing(value_of(v)))
    return env


def render(template: str, **variables: Any) -> str:
    """Render one template of :func:`environment`."""
    return environment().get_template(template).render(**variables)
