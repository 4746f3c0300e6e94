"""Every verdict level the checks hand to the report has a style in its sheet (a 'partly' must not look unstyled)."""

from __future__ import annotations

import re
from importlib import resources

from saliencekit.trust.checks.base import VERDICT_LEVELS
from saliencekit.trust.checks.model_randomization import LEVEL_CSS


def _selectors() -> set[str]:
    css = resources.files("saliencekit.viz.report").joinpath("templates/report.css").read_text()
    return set(re.findall(r"(?:td)?\.[\w-]+", css))


def test_every_verdict_cell_class_is_styled() -> None:
    selectors = _selectors()
    missing = sorted({c for c in VERDICT_LEVELS.values() if c and f"td.{c}" not in selectors})
    assert not missing, f"verdict cell classes without a td rule in report.css: {missing}"


def test_every_level_span_class_is_styled() -> None:
    selectors = _selectors()
    missing = sorted({c for c in LEVEL_CSS.values() if f".{c}" not in selectors})
    assert not missing, f"level span classes without a rule in report.css: {missing}"
