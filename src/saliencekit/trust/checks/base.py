"""The contract of a trust check (a plug-in under :mod:`saliencekit.trust.checks`).

A check is one class, registered with :func:`~saliencekit.trust.checks.register_check`, that declares:

- ``name`` (its key in ``checks.json``), ``title`` (its heading in the report), ``order`` (where it runs and is
  shown) and ``needs`` (what it needs besides the model, the images and the maps: ``"train_data"``,
  ``"masks"``, ``"two_methods"``), from which :meth:`Check.applies` says whether it can run;
- :meth:`Check.run`: the check itself (a thin loop over the pure functions of :mod:`saliencekit.trust`), returning
  its JSON-ready entry of ``checks.json``;
- ``columns``: the :class:`Column` s it adds to ``summary.methods`` (with their direction and display format,
  used by the ranking, the verdict table and the report's legend), filled by :meth:`Check.summary_row`;
- its part in the recommendation (:meth:`Check.veto`, :meth:`Check.evidence`, :meth:`Check.quality`);
- how the report shows it: :meth:`Check.gather` turns its ``checks.json`` entry into the variables of its Jinja2
  template partial (:meth:`Check.template_source`; by default ``templates/<name>.html.j2`` beside the module).

>>> from saliencekit.trust.checks import get_check
>>> [c.key for c in get_check("faithfulness").columns]
['deletion_auc', 'insertion_auc']
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from saliencekit.trust.settings import CheckSettings

SHORTCUT_MASK = "shortcut"


# ----------------------------------------------------------------------------------------------- verdict cells


@dataclass(frozen=True)
class Cell:
    """One cell of the verdict table: its text, CSS class (``pass``, ``partly``, ``fail``, ``na``, ``num``), the
    value behind it (written as ``data-value``) and an optional note (shown on hover)."""

    text: str
    css: str = ""
    value: Any = None
    note: str = ""

    @property
    def json(self) -> str:
        """The value as JSON (``null`` when missing)."""
        import json

        return json.dumps(None if is_missing(self.value) else self.value)


#: Verdict levels a check may write into ``summary.methods`` besides true / false, and their CSS classes.
VERDICT_LEVELS = {"passes": "pass", "pass": "pass", "partly": "partly", "fails": "fail", "fail": "fail",
                  "no verdict": "na"}


def value_of(v: Any) -> Any:
    """The number behind a value: the mean of a *summary* dict, else the value itself."""
    return v.get("mean") if isinstance(v, Mapping) and "mean" in v else v


def is_missing(v: Any) -> bool:
    """None or a non-finite float."""
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def verdict_cell(value: Any) -> Cell:
    """The cell of a verdict: ``pass`` / ``fail`` for true / false, ``not run`` for None, a level string
    (:data:`VERDICT_LEVELS`) as itself, or ``{"level": ..., "note": ...}`` with its note."""
    note = ""
    if isinstance(value, Mapping) and "level" in value:
        note = str(value.get("note") or value.get("reason") or "")
        value = value["level"]
    if isinstance(value, bool):
        return Cell("pass", "pass", value, note) if value else Cell("fail", "fail", value, note)
    if value is None:
        return Cell("not run", "na", None, note)
    if isinstance(value, str) and value in VERDICT_LEVELS:
        return Cell(value, VERDICT_LEVELS[value], value, note)
    return score_cell(value)


def score_cell(value: Any, digits: int = 3) -> Cell:
    """The cell of a score: ``digits`` decimals, ``n/a`` when it could not be computed, ``not run`` for None."""
    value = value_of(value)
    if isinstance(value, bool):
        return verdict_cell(value)
    if value is None:
        return Cell("not run", "na", None)
    if isinstance(value, float) and not math.isfinite(value):
        return Cell("n/a", "na", None)
    if isinstance(value, int | float):
        return Cell(f"{float(value):.{digits}f}", "num", value)
    return Cell(str(value), "", value)


@dataclass(frozen=True)
class Column:
    """A column a check adds to ``summary.methods`` (and to the report's verdict table).

    Attributes:
        key: the key in ``summary.methods[label]``.
        header: the table heading (an arrow is added for the direction).
        kind: ``"verdict"`` (a check the method passes or fails) or ``"score"`` (a number).
        higher_is_better: the direction of a score (None: neither, e.g. sparseness); rankings use it.
        digits: decimals shown for a score.
        sentence: what the column means, for the report's legend.
        optional: shown only when some method has a value (otherwise always, ``not run`` when absent).
        vetoes: a method whose verdict here is "fail" is not recommended.
    """

    key: str
    header: str
    kind: str = "score"
    higher_is_better: bool | None = None
    digits: int = 3
    sentence: str = ""
    optional: bool = False
    vetoes: bool = False

    @property
    def title(self) -> str:
        """The heading with its direction (``\u2191`` higher is better, ``\u2193`` lower is better)."""
        arrow = {True: " \u2191", False: " \u2193", None: ""}[self.higher_is_better]
        return self.header + arrow

    def cell(self, value: Any) -> Cell:
        """The verdict-table cell of ``value``."""
        return verdict_cell(value) if self.kind == "verdict" else score_cell(value, self.digits)

    def failed(self, value: Any) -> bool:
        """Whether a verdict value means the method failed this check."""
        return self.kind == "verdict" and self.cell(value).css == "fail"


# ----------------------------------------------------------------------------------------------- context


@dataclass
class CheckContext:
    """What a check gets: the model, the checked images, their predictions and each method's maps.

    A multi-label model's image is checked once per explained label (every positive label, most probable first, at
    most ``settings.labels_per_image``): each of those (image, label) pairs is one *row* of ``images``, ``preds``,
    ``maps`` and ``masks``, and ``image_index`` says which image a row is. The rows are ordered label rank by label rank
    (every image's most probable label first), so that consecutive rows are of different images.

    Attributes:
        model: the classifier (never modified).
        images: (N, C, H, W) checked images (rows) on the model's device.
        labels: true labels (N,), or (N, L) 0/1 rows of a multi-label model, or None.
        preds: the explained class of every map (N,): the predicted class, or a multi-label row's label.
        probs: probability of the explained class (N,) (a per-label sigmoid for multi-label models).
        specs: normalised method specs (:func:`saliencekit.methods.specs.parse_methods`).
        maps: label -> (N, H, W) maps of the original model (CPU, float64).
        masks: kind -> (N, H, W) boolean ground-truth masks (``"lesion"``, ``"shortcut"``...).
        layer: CAM layer (None: the engine's choice).
        seed: seeds every random choice of the checks.
        settings: the run's :class:`~saliencekit.trust.settings.CheckSettings`.
        out_dir: where figures go (None: nowhere).
        figures: draw figures.
        progress: show progress bars.
        train_data: (images, labels) to fit a random-label model on.
        random_model: an already trained random-label model.
        num_classes: classes of the model (2 for one logit).
        factory: builds a fresh model of the same architecture (run directories), or None.
        train_config: the run's training settings (learning rate, batch size).
        multilabel: the model's outputs are independent labels (rows are (image, label) pairs).
        image_index: the image of every row (N,) when an image comes several times (multi-label), else None.
        class_names: class (label) names in output order, when known.
    """

    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor | None
    preds: torch.Tensor
    probs: torch.Tensor
    specs: dict[str, dict[str, Any]]
    maps: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    layer: str | None
    seed: int
    settings: CheckSettings
    out_dir: Path | None
    figures: bool
    progress: bool
    train_data: tuple[torch.Tensor, torch.Tensor] | None = None
    random_model: nn.Module | None = None
    num_classes: int = 2
    factory: Callable[[], nn.Module] | None = None
    train_config: dict[str, Any] = field(default_factory=dict)
    multilabel: bool = False
    image_index: torch.Tensor | None = None
    class_names: list[str] | None = None

    def save_figure(self, fig: Any, rel: str, into: list[str]) -> None:
        """Write ``fig`` to ``out_dir / rel`` (when figures are on) and append ``rel`` to ``into``; always closes it."""
        from saliencekit import _atomic

        try:
            if self.figures and self.out_dir is not None:
                _atomic.save_figure(fig, self.out_dir / rel)
                into.append(rel)
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)

    def subset(self, n: int) -> CheckContext:
        """The context restricted to its first ``n`` images (the checked images are interleaved by class)."""
        return dataclasses.replace(
            self, images=self.images[:n], labels=None if self.labels is None else self.labels[:n],
            preds=self.preds[:n], probs=self.probs[:n], maps={k: v[:n] for k, v in self.maps.items()},
            masks={k: v[:n] for k, v in self.masks.items()},
            image_index=None if self.image_index is None else self.image_index[:n])

    def label_name(self, c: int) -> str:
        """The name of class (label) ``c`` (``class_<c>`` when the names are unknown)."""
        names = self.class_names or []
        return names[c] if 0 <= c < len(names) else f"class_{c}"

    def by_explained_label(self, values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]] | None:
        """Multi-label models: per-row values summarised over the rows of each explained label.

        Args:
            values: method label -> metric -> per-row values (N,).

        Returns:
            explained label name -> method label -> metric -> summary (mean, CI, n), labels in output order; None
            for models with exclusive classes.
        """
        if not self.multilabel:
            return None
        import torch

        from saliencekit.trust._explaining import summarize

        preds = self.preds.detach().cpu()
        out: dict[str, dict[str, Any]] = {}
        for c in sorted(set(preds.tolist())):
            rows = preds == c
            out[self.label_name(int(c))] = {
                label: {k: _without_values(summarize(torch.as_tensor(v, dtype=torch.float64).cpu()[rows], self.seed))
                        for k, v in metrics.items()} for label, metrics in values.items()}
        return out

    @property
    def lesion_kind(self) -> str | None:
        """The mask kind localisation is measured against: ``"lesion"`` when present, else the first other
        non-empty kind that is not the shortcut marker (None: no usable masks)."""
        for kind in ("lesion", *sorted(self.masks)):
            if kind != SHORTCUT_MASK and kind in self.masks and bool((self.masks[kind] > 0.5).flatten(1).any(1).any()):
                return kind
        return None


#: ``needs`` entries: a test on the context, and the reason when it fails.
NEEDS: dict[str, tuple[Callable[[CheckContext], bool], str]] = {
    "train_data": (lambda c: c.train_data is not None or c.random_model is not None,
                   "no training images (give a run directory, train_data= or random_model=)"),
    "two_methods": (lambda c: len(c.specs) >= 2, "needs at least two methods"),
    "masks": (lambda c: c.lesion_kind is not None, "no ground-truth masks for these images"),
}


# ----------------------------------------------------------------------------------------------- the contract


class Check(abc.ABC):
    """One trust check (see the module docstring). Subclass, set the class attributes, implement :meth:`run`
    and :meth:`gather`, and decorate with :func:`~saliencekit.trust.checks.register_check`."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    order: ClassVar[int] = 100
    needs: ClassVar[tuple[str, ...]] = ()
    #: whether the check recomputes maps (so that :attr:`CheckSettings.costly_images` caps it by default)
    recomputes_maps: ClassVar[bool] = False
    columns: ClassVar[tuple[Column, ...]] = ()
    #: where this check's evidence stands in a recommendation: reasons are given in this order, and the first
    #: check with a :meth:`quality` ranks the recommended methods
    evidence_rank: ClassVar[int] = 100
    #: the file name of the template partial beside the module (default ``templates/<name>.html.j2``)
    template: ClassVar[str] = ""

    @property
    def anchor(self) -> str:
        """The ``id`` of the check's subsection in the report."""
        return "trust-" + self.name.replace("_", "-")

    # -- running

    def applies(self, ctx: CheckContext) -> str | None:
        """None when the check can run on ``ctx``, else the reason it does not apply (from :attr:`needs`)."""
        for need in self.needs:
            test, reason = NEEDS[need]
            if not test(ctx):
                return reason
        return None

    @abc.abstractmethod
    def run(self, ctx: CheckContext) -> dict[str, Any]:
        """Run the check; returns its JSON-ready entry of ``checks.json`` (figures written via ``ctx``).

        Raises:
            InputError: the check cannot apply to this model (it is then skipped with the message).
        """

    # -- summary and recommendation

    def summary_row(self, entry: Mapping[str, Any], label: str) -> dict[str, Any]:
        """The values of :attr:`columns` for one method, from the check's entry (default: the mean of
        ``entry["methods"][label][column.key]``; optional columns only when present)."""
        if not self.columns:
            return {}
        m = entry["methods"][label]
        out = {}
        for col in self.columns:
            if col.optional and not m.get(col.key):
                continue
            out[col.key] = mean_value(m, col.key)
        return out

    def veto(self, row: Mapping[str, Any]) -> str | None:
        """Why a method with summary ``row`` must not be recommended (a vetoing verdict it failed), or None."""
        failed = [c.key.replace("_", " ") for c in self.columns if c.vetoes and c.failed(row.get(c.key))]
        return "; ".join(f"failed {k}" for k in failed) or None

    def evidence(self, row: Mapping[str, Any]) -> str | None:
        """A phrase for a recommended method's reason, or None."""
        return None

    def quality(self, row: Mapping[str, Any]) -> float | None:
        """The score that ranks recommended methods (higher first), or None when this check gives none."""
        return None

    def caveat(self, entry: Mapping[str, Any], label: str, methods: Mapping[str, Mapping[str, Any]]) -> str | None:
        """A warning added to a recommended method's reason (e.g. it localises worst of all methods), or None.

        Args:
            entry: the check's entry of ``checks.json``.
            label: the recommended method.
            methods: every method's summary row (``summary.methods``).
        """
        return None

    def summary_extra(self, results: Mapping[str, Any], methods: Mapping[str, Mapping[str, Any]],
                      recommended: Sequence[str], masks: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Keys this check adds to ``summary`` (called whether or not it ran; ``results``: every check's entry)."""
        return {}

    # -- report

    def template_source(self) -> str:
        """The Jinja2 partial that shows the check (autoescaped; variables from :meth:`gather`)."""
        path = Path(inspect.getfile(type(self))).parent / "templates" / (self.template or f"{self.name}.html.j2")
        return path.read_text(encoding="utf-8")

    def gather(self, entry: Mapping[str, Any], report: Any) -> dict[str, Any]:
        """The template's variables from the check's ``checks.json`` entry.

        Args:
            entry: the check's entry.
            report: the report's tools (:class:`saliencekit.viz.report.sections.TrustTools`): figure embedding and
                number formats.
        """
        return {"entry": entry, "figures": report.figures(entry.get("figures"), self.title)}


# ----------------------------------------------------------------------------------------------- helpers


def _without_values(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary without its per-image values (they are in the method's own entry)."""
    return {k: v for k, v in summary.items() if k != "values"}


def mean_value(d: Mapping[str, Any], key: str) -> float:
    """The mean of the summary (or the number) under ``key``; NaN when missing."""
    v = d.get(key, {}) or {}
    m = v.get("mean") if isinstance(v, Mapping) else v
    return float("nan") if m is None else float(m)


def rank(scores: Mapping[str, float | None], higher_is_better: bool | None) -> list[str]:
    """Labels best first (methods without a finite score last)."""
    from saliencekit.trust.stats import rank_methods

    clean = {k: (None if v is None or not math.isfinite(float(v)) else float(v)) for k, v in scores.items()}
    return rank_methods(clean, higher_is_better=bool(higher_is_better))


def method_figures(entry: Mapping[str, Any], *parts: str) -> list[str]:
    """Every per-method figure of an entry (``entry[part]["methods"]`` for each part, or ``entry["methods"]``)."""
    blocks = [entry.get(p) or {} for p in parts] if parts else [entry]
    return [f for b in blocks for v in (b.get("methods") or {}).values() for f in (v or {}).get("figures") or []]


def area_share(masks: torch.Tensor) -> torch.Tensor:
    """Per image, the share of the image a mask covers (NaN for an empty mask)."""
    import torch

    m = (masks > 0.5).flatten(1).double()
    share = m.mean(1)
    return torch.where(m.sum(1) > 0, share, torch.full_like(share, math.nan))


__all__ = ["NEEDS", "SHORTCUT_MASK", "VERDICT_LEVELS", "Cell", "Check", "CheckContext", "Column", "area_share",
           "is_missing", "mean_value", "method_figures", "rank", "score_cell", "value_of", "verdict_cell"]
