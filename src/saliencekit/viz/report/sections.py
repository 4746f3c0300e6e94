"""The report's sections: one gather function each, registered with :func:`section`, and one template,
``templates/sections/<id>.html.j2``, that shows what it gathered (as ``data``).

A gather function takes the :class:`ReportContext` and returns the template's data: plain values and the records
of :mod:`saliencekit.viz.report._render`, never HTML. A new section is one decorated gather function here plus its
template. The trust-check subsections come from the check plug-ins (:mod:`saliencekit.trust.checks`), whose
``gather`` get a :class:`TrustTools`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saliencekit.errors import DataError, SaliencekitError
from saliencekit.trust.checks.base import Column, is_missing, value_of
from saliencekit.viz.report._images import embed_figure, embed_file
from saliencekit.viz.report._render import (
    FigureBlock,
    Table,
    Tag,
    code,
    environment,
    key_values,
    num,
    pct,
    ratio,
    summary,
    times,
)
from saliencekit.viz.report.settings import ReportSettings

if TYPE_CHECKING:
    import torch
    from torch import nn

    from saliencekit.model_data import ModelData
    from saliencekit.run import Run
    from saliencekit.trust.results import CheckResults

#: what the sections that need a run directory say for a model file
NOT_FOR_MODEL_FILE = ("not available for a model file: the checks were run on a model file and a data folder "
                      "(saliencekit check --model-file), and only a run directory written by `saliencekit train` has "
                      "a training history and a test split")


@dataclass
class ReportContext:
    """Everything the sections read (each part may be missing).

    The report is of a run directory (``run``), or of checks made from a model file and a data folder (``subject``,
    reopened from ``checks.json``; ``subject_problem`` says why it could not be reopened); the sections that need a
    run directory say they are not available for a model file.

    Attributes:
        run_dir: the run directory (None for a model file).
        run: the loaded run (None for a model file).
        checks: the checks' results (None when there are none).
        checks_path: the ``checks.json`` read (or that could not be read).
        checks_problem: why it could not be read.
        settings: the report's settings.
        command: the command line shown in the reproducibility section.
        progress: show progress bars.
        method_params: label -> parameters of the methods the explanations used (set by that section).
        subject: the model file and its data, reopened from ``checks.json`` (no run directory).
        subject_problem: why the model file or its data could not be reopened.
    """

    run_dir: Path | None
    run: Run | None
    checks: CheckResults | None = None
    checks_path: Path | None = None
    checks_problem: str | None = None
    settings: ReportSettings = field(default_factory=ReportSettings)
    command: str = ""
    progress: bool = True
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    subject: ModelData | None = None
    subject_problem: str | None = None

    @property
    def checks_dir(self) -> Path | None:
        return None if self.checks_path is None else self.checks_path.parent

    @property
    def model_block(self) -> dict[str, Any]:
        """The ``model`` block of ``checks.json`` (empty for a run directory)."""
        return dict(self.checks.model or {}) if self.checks is not None else {}

    @property
    def image_kind(self) -> str:
        """What the checked images are: a run's test images, or images of a data folder."""
        return "test images" if self.run is not None or (self.checks and self.checks.run_dir) else "images"

    @property
    def check_hint(self) -> str:
        if self.run_dir is None:
            m = self.model_block
            return (f"saliencekit check --model-file {m.get('file', 'MODEL')} {m.get('data', 'DATA')} --out "
                    f"{self.checks_dir or 'DIR'}")
        return f"saliencekit check {self.run_dir} --out {self.run_dir / 'checks'}"

    def not_computed(self, what: str) -> dict[str, Any]:
        """Template data of a "not computed: run ..." note."""
        return {"not_computed": {"what": what, "hint": self.check_hint, "problem": self.checks_problem or ""}}


@dataclass(frozen=True)
class Section:
    """One section of the page: its ``id``, title, gather function and template."""

    id: str
    title: str
    gather: Callable[[ReportContext], dict[str, Any]]

    @property
    def template(self) -> str:
        return f"sections/{self.id}.html.j2"


SECTIONS: dict[str, Section] = {}


def section(sid: str, title: str) -> Callable[[Callable[[ReportContext], dict[str, Any]]],
                                              Callable[[ReportContext], dict[str, Any]]]:
    """Register a gather function as the section ``sid`` (sections appear in registration order)."""

    def deco(fn: Callable[[ReportContext], dict[str, Any]]) -> Callable[[ReportContext], dict[str, Any]]:
        if sid in SECTIONS:
            raise ValueError(f"report section {sid!r} is already registered")
        SECTIONS[sid] = Section(sid, title, fn)
        return fn

    return deco


# ----------------------------------------------------------------------------------------------- tools for checks


class TrustTools:
    """What a check's :meth:`~saliencekit.trust.checks.base.Check.gather` gets: figure embedding, tables, formats."""

    def __init__(self, ctx: ReportContext) -> None:
        self._ctx = ctx

    num = staticmethod(num)
    summary = staticmethod(summary)
    pct = staticmethod(pct)
    code = staticmethod(code)
    key_values = staticmethod(key_values)

    @staticmethod
    def tag(name: str, text: str, css: str = "") -> Tag:
        """Text in an inline element (``span``, ``em``, ``strong``, ``code``)."""
        return Tag(name, text, css)

    @staticmethod
    def table(header: Sequence[str], rows: Sequence[Sequence[Any]], num_cols: Sequence[int] = ()) -> Table:
        """A table (cells: values or :meth:`tag`)."""
        return Table(list(header), [list(r) for r in rows], tuple(num_cols))

    @classmethod
    def method_table(cls, methods: Mapping[str, Any], columns: Sequence[tuple[str, str]]) -> Table:
        """One row per method: the ``mean [ci_low, ci_high]`` of each column's summary."""
        rows = [[label, *(summary((vals or {}).get(k)) for k, _ in columns)] for label, vals in methods.items()]
        return cls.table(["method", *(t for _, t in columns)], rows, range(1, len(columns) + 1))

    @classmethod
    def by_label_table(cls, by_label: Any, columns: Sequence[tuple[str, str]]) -> Table | None:
        """Multi-label checks: one row per (explained label, method), the ``mean [ci_low, ci_high]`` of each column
        over the rows explaining that label (``by_label`` of a check's entry), or None when there is none."""
        if not isinstance(by_label, Mapping) or not by_label:
            return None
        rows = [[name, label, *(summary((vals or {}).get(k)) for k, _ in columns)]
                for name, methods in by_label.items() if isinstance(methods, Mapping)
                for label, vals in methods.items()]
        return cls.table(["explained label", "method", *(t for _, t in columns)], rows, range(2, len(columns) + 2))

    @staticmethod
    def verdict(value: Any, yes: str = "pass", no: str = "fail") -> Tag | str:
        """A pass / fail mark (``n/a`` for anything else)."""
        if value is True:
            return Tag("span", yes, "verdict-pass")
        if value is False:
            return Tag("span", no, "verdict-fail")
        return "n/a"

    def figures(self, paths: Sequence[str] | None, alt: str, per_method: Sequence[str] = ()) -> FigureBlock:
        """The check's own figures, full width; per-method figures only when the check has none of its own
        (otherwise they are listed by name: they repeat what the combined figures show)."""
        folder = self._ctx.checks_dir
        if folder is None:
            return FigureBlock()
        top = list(dict.fromkeys(str(p) for p in paths or []))
        extra = [p for p in dict.fromkeys(str(p) for p in per_method) if p not in top]
        if not top:
            top, extra = extra, []
        return FigureBlock([embed_file(folder / p, f"{alt}: {p}", p) for p in top], extra)


# ----------------------------------------------------------------------------------------------- warning box


def gather_warning(ctx: ReportContext) -> dict[str, Any] | None:
    """The top warning box, only when the checks detected that a method's maps sit on a planted shortcut.

    It says what was measured (which method, the marker's share of the map mass against its share of the image
    area, the lesion's for comparison), what that means and how to test it, without claiming more than the
    maps show.
    """
    from saliencekit.trust.checks.localization import SHORTCUT_FACTOR

    if ctx.checks is None:
        return None
    sc = ctx.checks.summary.shortcut
    if sc.get("detected") is not True:
        return None
    loc = ctx.checks.checks.get("localization") or {}
    marker_area = sc.get("marker_area_share", loc.get("shortcut_area_share"))
    method = sc.get("method")
    others = []
    for k, v in (sc.get("marker_share_by_method") or {}).items():
        if str(k) != str(method) and not is_missing(value_of(v)):
            r = ratio(v, marker_area)
            others.append({"method": str(k), "share": pct(v), "times": times(r) if r is not None else None})
    return {
        "method": method,
        "marker": _share(sc.get("marker_share"), marker_area),
        "lesion": None if is_missing(value_of(sc.get("lesion_share"))) else _share(sc.get("lesion_share"),
                                                                                     loc.get("mask_area_share")),
        "others": others,
        "doubtful": bool(method) and method not in ctx.checks.summary.recommended,
        "factor": f"{SHORTCUT_FACTOR:g}",
    }


def _share(share: Any, area: Any) -> dict[str, Any]:
    """A region's share of the map mass, its share of the image area and their ratio (for the warning)."""
    r = ratio(share, area)
    return {"share": pct(share), "area": None if is_missing(value_of(area)) else pct(area),
            "times": times(r) if r is not None else None}


# ----------------------------------------------------------------------------------------------- sections


def verdict_columns(per_method: Mapping[str, Mapping[str, Any]]) -> list[Column]:
    """The verdict table's columns: every registered check's columns (optional ones when some method has them),
    then keys of ``summary.methods`` that no registered check declares."""
    from saliencekit.trust.checks import list_checks

    present = {k for vals in per_method.values() for k in vals or {}}
    columns = [c for check in list_checks() for c in check.columns if not c.optional or c.key in present]
    declared = {c.key for check in list_checks() for c in check.columns}
    extra = list(dict.fromkeys(k for vals in per_method.values() for k in vals or {} if k not in declared))
    return columns + [Column(k, k.replace("_", " ").capitalize()) for k in extra]


@section("verdict", "Verdict: which saliency maps to trust")
def gather_verdict(ctx: ReportContext) -> dict[str, Any]:
    """The per-method verdict table, the recommended methods and the legend of the columns."""
    if ctx.checks is None:
        return ctx.not_computed("no checks.json found")
    s = ctx.checks.summary
    if not s.methods:
        return {"no_summary": True}
    columns = verdict_columns(s.methods)
    rows = []
    for label, vals in s.methods.items():
        inner = ctx.checks.methods.get(label, {}).get("method")
        rows.append({"label": label, "method": inner if inner and inner != label else None,
                     "cells": [(c.key, c.cell(value_of(vals.get(c.key)))) for c in columns],
                     "recommended": label in s.recommended})
    other = {m: r for m, r in s.reasons.items() if m not in s.recommended}
    other.update({m: r for m, r in s.not_recommended.items() if m not in s.recommended})
    sc = s.shortcut
    note = None
    if sc.get("present_in_data") and sc.get("detected") is not True:
        note = {"marker": pct(sc.get("marker_share")), "lesion": pct(sc.get("lesion_share")),
                "evidence": str(sc["evidence"]).rstrip(".") if sc.get("evidence") else ""}
    return {"n": ctx.checks.settings.get("images"), "label_rows": ctx.checks.settings.get("rows"),
            "what": ctx.image_kind,
            "columns": columns, "rows": rows,
            "recommended": [(m, s.reasons.get(m, "passes the checks.")) for m in s.recommended],
            "other": other, "rule": s.recommendation_rule, "shortcut_note": note,
            "legend": [c.sentence for c in columns if c.sentence]}


def _brief(meta: Any, limit: int = 300) -> dict[str, Any]:
    """The short entries of a JSON object, nested objects flattened to ``a.b`` keys; long ones summarised."""
    if not isinstance(meta, Mapping):
        return {"value": meta}
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, Mapping) and len(json.dumps(v, default=str)) > 80:
            for k2, v2 in _brief(v, limit).items():
                out[f"{k}.{k2}"] = v2
        elif len(json.dumps(v, default=str)) > limit:
            n = len(v) if isinstance(v, Sized) else None
            out[str(k)] = f"({n} entries; see the file)" if n is not None else "(long; see the file)"
        else:
            out[str(k)] = v
    return out


@section("data", "Data")
def gather_data(ctx: ReportContext) -> dict[str, Any]:
    """The data folder, the classes and their counts, the split, how the data was made and sample images."""
    from saliencekit.viz.samples import plot_samples

    run = ctx.run
    if run is None:
        return _model_file_data(ctx)
    cfg = run.config
    counts = cfg.get("class_counts") or {}
    out: dict[str, Any] = {
        "root": str(run.data_root), "classes": list(run.class_names),
        "counts": Table(["class", "images"], [[c, counts.get(c, "n/a")] for c in run.class_names], (1,))
        if counts else None,
        "split": [(str(k), v) for k, v in (cfg.get("split_sizes") or {}).items()],
    }
    _data_extras(out, run.data_root, plot_samples)
    return out


def _model_file_data(ctx: ReportContext) -> dict[str, Any]:
    """The data section of a model file's checks: the data folder the model was checked on, its classes, counts."""
    from saliencekit.viz.samples import plot_samples

    m = ctx.model_block
    if not m:
        return {"unavailable": "the checks were made from a model and images given in Python (run_checks(model=..., "
                               "images=...)): no data folder is recorded"}
    out: dict[str, Any] = {"root": str(m.get("data")), "classes": list(m.get("class_names") or []),
                           "counts": None, "split": [], "model_file": True}
    md = ctx.subject
    if md is None:
        out["problem"] = ctx.subject_problem
        return out
    out["root"] = str(md.data_root)  # where it is now (--data when it moved)
    index = md.index
    if index.multilabel:
        counts = [int(v) for v in index.targets.sum(0)]
        out["counts"] = Table(["label", "images with it"], [[c, n] for c, n in zip(md.class_names, counts)], (1,))
    else:
        out["counts"] = Table(["class", "images"], [[c, sum(1 for s_ in index.samples if s_.label == k)]
                                                    for k, c in enumerate(md.class_names)], (1,))
    if md.labels is not None:
        out["labels_csv"] = md.labels.csv
    else:
        _data_extras(out, md.data_root, plot_samples)
    return out


def _data_extras(out: dict[str, Any], root: Path, plot_samples: Callable[..., Any]) -> None:
    """How the data was made (``dataset.json``) and sample images, into the data section's ``out``."""
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        try:
            out["meta"] = key_values(_brief(json.loads(meta_path.read_text())))
        except (OSError, json.JSONDecodeError) as exc:
            out["meta_problem"] = {"path": str(meta_path), "error": str(exc)}
    try:
        out["samples"] = embed_figure(plot_samples(root, per_class=4),
                                      "sample images per class with mask outlines",
                                      "Sample images of each class; outlines show the masks.")
    except (DataError, OSError) as exc:
        out["samples_problem"] = str(exc)


@section("training", "Training")
def gather_training(ctx: ReportContext) -> dict[str, Any]:
    """How training went: epochs, the kept epoch, the curves and the settings (a model file: what the file is)."""
    run = ctx.run
    if run is None:
        m = ctx.model_block
        facts = {"model file": m.get("file"), "format": m.get("format"), "architecture": m.get("arch"),
                 "architecture arguments": m.get("arch_kwargs") or None, "preprocessing": m.get("preprocessing"),
                 "how the outputs are read": m.get("output") or "auto"}
        return {"unavailable": NOT_FOR_MODEL_FILE,
                "model": key_values({k: v for k, v in facts.items() if v is not None}) if m else None,
                "notes": list(m.get("notes") or [])}
    h = run.history
    out: dict[str, Any] = {"info": None, "curves": None, "settings": None}
    if h:
        info = {"epochs run": len(h.get("epochs", [])), "best epoch (kept)": h.get("best_epoch"),
                "best validation loss": h.get("best_val_loss"), "training time (s)": h.get("fit_seconds"),
                "device": h.get("device")}
        out["info"] = key_values({k: v for k, v in info.items() if v is not None})
    curves = run.path / "curves.png"
    if curves.is_file():
        out["curves"] = embed_file(curves, "training curves", "Loss and accuracy per epoch; the dotted line marks "
                                                              "the epoch kept (lowest validation loss).")
    elif h:
        from saliencekit.viz.training import plot_history

        out["curves"] = embed_figure(plot_history(h), "training curves", "Loss and accuracy per epoch.")
    cfg = run.config.get("config")
    if isinstance(cfg, Mapping):
        out["settings"] = key_values(cfg)
    return out


@section("performance", "Test performance")
def gather_performance(ctx: ReportContext) -> dict[str, Any]:
    """The test metrics, the confusion matrix and the ROC curve."""
    run = ctx.run
    if run is None:
        return {"unavailable": NOT_FOR_MODEL_FILE}
    m = run.metrics
    if not m:
        return {"missing": str(run.path)}
    if m.get("multilabel"):
        return _multilabel_performance(run, m)
    items = {"test images": m.get("n"), "accuracy": m.get("accuracy"), "ROC AUC": m.get("roc_auc"),
             "sensitivity": m.get("sensitivity"), "specificity": m.get("specificity")}
    if m.get("positive_class") is not None:
        items["positive class"] = m.get("positive_class")
        items["threshold"] = m.get("threshold")
    names = m.get("class_names") or run.class_names
    cm = m.get("confusion_matrix")
    figs = [embed_file(run.path / f, alt) for f, alt in (("confusion.png", "confusion matrix"),
                                                         ("roc.png", "ROC curve")) if (run.path / f).is_file()]
    if not (run.path / "roc.png").is_file() and m.get("roc_curves"):
        from saliencekit.viz.training import plot_roc

        figs.append(embed_figure(plot_roc(m), "ROC curve"))
    return {"metrics": key_values(items),
            "confusion": Table(["", *(f"predicted {n}" for n in names)],
                               [[f"true {n}", *row] for n, row in zip(names, cm)], range(1, len(names) + 1))
            if cm else None,
            "figures": figs}


def _multilabel_performance(run: Run, m: Mapping[str, Any]) -> dict[str, Any]:
    """The test metrics of a multi-label run: the means, and a row per label (evaluate's ``per_class``)."""
    items = {"test images": m.get("n"), "labels": len(m.get("class_names") or run.class_names),
             "threshold (a label is predicted at sigmoid >= threshold)": m.get("threshold"),
             "mean ROC AUC": m.get("roc_auc"), "mean sensitivity": m.get("sensitivity"),
             "mean specificity": m.get("specificity"), "accuracy (share of label decisions right)": m.get("accuracy"),
             "exact match (share of images with every label right)": m.get("exact_match")}
    per = m.get("per_class") or {}
    rows = [[name, v.get("positives"), num(v.get("auc")), num(v.get("sensitivity")), num(v.get("specificity")),
             num(v.get("accuracy"))] for name, v in per.items() if isinstance(v, Mapping)]
    figs = [embed_file(run.path / "roc.png", "ROC curves per label")] if (run.path / "roc.png").is_file() else []
    if not figs and m.get("roc_curves"):
        from saliencekit.viz.training import plot_roc

        figs.append(embed_figure(plot_roc(m), "ROC curves per label"))
    return {"metrics": key_values(items), "confusion": None, "figures": figs,
            "per_label": Table(["label", "positives", "ROC AUC", "sensitivity", "specificity", "accuracy"], rows,
                               range(1, 6)) if rows else None}


def select_images(labels: Sequence[int], predicted: Sequence[int], confidence: Sequence[float], n: int,
                  correct: Sequence[bool] | None = None) -> list[int]:
    """Pick up to ``n`` images covering correct and wrong predictions of every class.

    Categories (true class, correct?) take turns, each giving its most confident image first, so
    that the selection shows confident successes and confident mistakes of both classes.
    Returns indices grouped by category (class order, correct before wrong).

    Args:
        labels: true class (or stratum, e.g. a multi-label image's rarest true label) per image.
        predicted: predicted class per image.
        confidence: how sure the model is per image.
        n: how many to pick.
        correct: whether each prediction is right (default: label == predicted).

    >>> select_images([0, 0, 1, 1], [0, 1, 1, 1], [0.9, 0.8, 0.7, 0.95], 3)
    [0, 1, 3]
    """
    labels, predicted = list(map(int, labels)), list(map(int, predicted))
    right = [y == p for y, p in zip(labels, predicted)] if correct is None else [bool(c) for c in correct]
    cats: dict[tuple[int, bool], list[int]] = {}
    for i, (y, ok) in enumerate(zip(labels, right)):
        cats.setdefault((y, not ok), []).append(i)
    order = sorted(cats)
    for k in order:
        cats[k].sort(key=lambda i: (-float(confidence[i]), i))
    chosen: dict[tuple[int, bool], list[int]] = {k: [] for k in order}
    total, depth = 0, 0
    while total < n and any(depth < len(cats[k]) for k in order):
        for k in order:
            if total < n and depth < len(cats[k]):
                chosen[k].append(cats[k][depth])
                total += 1
        depth += 1
    return [i for k in order for i in chosen[k]]


def _method_spec(methods: Any, checks: CheckResults | None) -> dict[str, dict[str, Any]]:
    """``label -> {"method": name, **options}`` from the argument, else the checks, else the defaults."""
    from saliencekit.methods.specs import default_methods, engine_specs, parse_methods

    if not methods and checks is not None and checks.methods:
        methods = checks.methods
    return engine_specs(parse_methods(methods or default_methods(), validate=False))


@dataclass
class ImagePool:
    """The images the explanations section chooses from, and the model's view of them.

    Attributes:
        model: the classifier.
        device: where it runs.
        images: (N, C, H, W) preprocessed images (CPU).
        files: a name per image.
        labels: true classes (N,), or (N, L) 0/1 rows of multi-label data.
        probs: (N, K) probabilities by the model's output rule (per-label sigmoids for multi-label models).
        predicted: the predicted class per image.
        names: class (label) names in output order.
        multilabel: independent labels.
        threshold: multi-label threshold.
        output: the declared output (None: ``"auto"``).
        what: what the images are, for the text ("test images", "checked images").
    """

    model: nn.Module
    device: torch.device
    images: torch.Tensor
    files: list[str]
    labels: torch.Tensor
    probs: torch.Tensor
    predicted: list[int]
    names: list[str]
    multilabel: bool = False
    threshold: float = 0.5
    output: str | None = None
    what: str = "test images"


def _run_pool(ctx: ReportContext) -> ImagePool | str:
    """The test split of a run directory (probabilities from ``metrics.json`` when it has every file)."""
    import torch

    run = ctx.run
    assert run is not None
    try:
        ds = run.dataset("test")
        x_all = ds.images()
    except (SaliencekitError, OSError) as exc:
        return f"Test images not available: {exc}"
    files = [ds.sample(i).relpath for i in range(len(ds))]
    threshold = float(run.info.extra.get("threshold", 0.5))
    preds_by_file = {p["file"]: p for p in (run.metrics or {}).get("predictions", []) if "file" in p}
    if files and all(isinstance(preds_by_file.get(f, {}).get("probabilities"), list) for f in files):
        probs = torch.tensor([preds_by_file[f]["probabilities"] for f in files], dtype=torch.float64)
    else:
        probs = run.predict(x_all).double().cpu() if len(ds) else torch.zeros(0, len(run.class_names))
    if run.multilabel:
        predicted = probs.argmax(1).tolist()
    elif files and all(isinstance(preds_by_file.get(f, {}).get("predicted"), int) for f in files):
        predicted = [int(preds_by_file[f]["predicted"]) for f in files]
    else:
        predicted = (probs[:, 1] >= 0.5).long().tolist() if run.binary else probs.argmax(1).tolist()
    return ImagePool(run.model, run.device, x_all, files, ds.labels(), probs, predicted, list(run.class_names),
                     run.multilabel, threshold, run.info.extra.get("output"))


def _model_file_pool(ctx: ReportContext) -> ImagePool | str:
    """The checked images of a model file's checks, reloaded from its data folder and run through the model by the
    output rule the checks used."""
    import torch

    from saliencekit.methods.outputs import model_outputs

    md = ctx.subject
    if md is None:
        if not ctx.model_block:
            return ("not available: the checks were made from a model and images given in Python "
                    "(run_checks(model=..., images=...)), which the report cannot reopen")
        return f"The model file or its data could not be reopened: {ctx.subject_problem}"
    assert ctx.checks is not None
    by_file = {s_.relpath: i for i, s_ in enumerate(md.index.samples)}
    files = [f for f in dict.fromkeys(r.file for r in ctx.checks.images) if f in by_file]
    missing = [r.file for r in ctx.checks.images if r.file not in by_file]
    if missing:
        return f"{len(set(missing))} checked image(s) are no longer under {md.data_root} (e.g. {missing[0]})"
    if not files:
        return "checks.json lists no checked images"
    ds = md.dataset([by_file[f] for f in files], cache=True)
    x_all = ds.images()
    declared = (ctx.checks.settings.get("output") or {}).get("declared") or md.output or "auto"
    threshold = float((ctx.checks.settings.get("output") or {}).get("threshold") or md.threshold or 0.5)
    device = next((p_.device for p_ in md.model.parameters()), torch.device("cpu"))
    logits, rule = model_outputs(md.model, x_all.to(device), output=declared, threshold=threshold)
    probs = rule.probabilities(logits).double().cpu()
    return ImagePool(md.model, device, x_all, files, ds.labels(), probs, rule.predicted(logits).tolist(),
                     list(md.class_names), rule.multilabel, threshold, declared, "checked images")


@section("explanations", "Explanations")
def gather_explanations(ctx: ReportContext) -> dict[str, Any]:
    """Saliency maps of chosen test images (confident right and wrong predictions of each class); for a model file,
    chosen from the checked images."""
    import torch
    from tqdm.auto import tqdm

    from saliencekit.methods import explain
    from saliencekit.viz.overlay import comparison_figure

    pool = _run_pool(ctx) if ctx.run is not None else _model_file_pool(ctx)
    if isinstance(pool, str):
        return {"problem": pool}
    n_images = ctx.settings.images
    if n_images <= 0 or len(pool.files) == 0:
        return {"none_chosen": True}
    if pool.multilabel:
        return _multilabel_explanations(ctx, pool)
    labels = pool.labels.tolist()
    predicted = pool.predicted
    proba = pool.probs.tolist()
    files = pool.files
    confidence = [pr[k] for pr, k in zip(proba, predicted)]
    chosen = select_images(labels, predicted, confidence, n_images)

    spec, out = _registered_spec(ctx)
    if not spec:
        return {**out, "problem": "No registered method to explain with."}
    x = pool.images[chosen].to(pool.device)
    torch.manual_seed(ctx.settings.seed)
    try:
        with _references(ctx):
            results = explain(pool.model, x, methods=spec, output=pool.output, threshold=pool.threshold)
    except SaliencekitError as exc:
        return {**out, "problem": f"Explaining failed: {exc}"}
    norms = _record_methods(ctx, spec, results)
    names = pool.names
    rows, figures = [], []
    for j, i in enumerate(tqdm(chosen, desc="report: explanation figures", disable=not ctx.progress, leave=False)):
        y, p = labels[i], predicted[i]
        ok = y == p
        badge = Tag("span", "correct" if ok else "wrong", f"badge {'correct' if ok else 'wrong'}")
        rows.append([badge, files[i], names[y], names[p], " / ".join(f"{n} {float(v):.3f}"
                                                                     for n, v in zip(names, proba[i]))])
        fig = comparison_figure(pool.images[i], {lbl: e.maps[j] for lbl, e in results.items()}, normalization=norms)
        title = f"{files[i]}: true {names[y]}, predicted {names[p]} ({'correct' if ok else 'wrong'})"
        figures.append((badge, embed_figure(fig, f"saliency maps of {files[i]}", title)))
    return {**out, "count": len(chosen), "what": pool.what,
            "table": Table(["", "file", "true class", "predicted", "probabilities"], rows), "figures": figures}


def _references(ctx: ReportContext) -> Any:
    """The reference scope of the explanation figures: the SHAP family's baselines are the run's training images,
    chosen with the check's seed as the check chose them (read only if a method draws from them); none for a model
    file, as in its check."""
    from saliencekit.methods.references import reference_scope, training_references

    if ctx.run is None:  # a model file: the check offered no reference images either
        return reference_scope(None)
    check_seed = (ctx.checks.settings or {}).get("seed", ctx.settings.seed) if ctx.checks is not None else 0
    return reference_scope(training_references(ctx.run, seed=int(check_seed)))


def _registered_spec(ctx: ReportContext) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The methods to explain with (registered ones) and the section data naming those skipped."""
    from saliencekit.methods import list_methods

    spec = _method_spec(ctx.settings.methods, ctx.checks)
    registered = set(list_methods())
    out: dict[str, Any] = {"skipped": [(lbl, s["method"]) for lbl, s in spec.items() if s["method"] not in registered]}
    return {lbl: s for lbl, s in spec.items() if s["method"] in registered}, out


def _record_methods(ctx: ReportContext, spec: Mapping[str, Mapping[str, Any]],
                    results: Mapping[str, Any]) -> dict[str, str]:
    """Each method's display normalisation; records the methods' parameters for the reproducibility section."""
    from saliencekit.methods.normalize import display_normalization

    norms = {lbl: display_normalization(spec[lbl]["method"]) for lbl in results}  # registered: checked by the caller
    ctx.method_params = {lbl: {"method": e.method, **e.params, "display_normalization": norms[lbl]}
                         for lbl, e in results.items()}
    return norms


def _multilabel_explanations(ctx: ReportContext, pool: ImagePool) -> dict[str, Any]:
    """Saliency maps of chosen images of a multi-label model, one row of maps per explained label.

    Each image is explained for its positive labels (sigmoid >= the threshold), most probable first, at most
    ``settings.labels_per_image``, or for its most probable label when none is positive. The images are chosen as
    :func:`select_images` does, with an image's rarest true label as its class and "every label right" as correct.
    """
    import torch
    from tqdm.auto import tqdm

    from saliencekit.data.folder import rarest_label_strata
    from saliencekit.methods import explain
    from saliencekit.methods.outputs import OutputRule
    from saliencekit.viz.overlay import comparison_figure

    names, probs, threshold = pool.names, pool.probs, pool.threshold
    truth = pool.labels > 0.5
    files = pool.files
    rule = OutputRule(multilabel=True, from_probabilities=True, threshold=threshold)
    positive = rule.positives(probs)
    targets, counts = rule.default_targets(probs, ctx.settings.labels_per_image)
    exact = (positive == truth).all(1).tolist()
    confidence = [float(probs[i, t[0]]) for i, t in enumerate(targets)]
    strata = rarest_label_strata(truth.numpy())
    chosen = select_images(strata, strata, confidence, ctx.settings.images, correct=exact)

    spec, out = _registered_spec(ctx)
    if not spec:
        return {**out, "problem": "No registered method to explain with."}
    pairs = [(i, c) for i in chosen for c in targets[i]]
    x = pool.images[[i for i, _ in pairs]].to(pool.device)
    torch.manual_seed(ctx.settings.seed)
    try:
        with _references(ctx):
            results = explain(pool.model, x, methods=spec, target=[c for _, c in pairs],
                              output=pool.output or "multilabel", threshold=threshold)
    except SaliencekitError as exc:
        return {**out, "problem": f"Explaining failed: {exc}"}
    norms = _record_methods(ctx, spec, results)

    def listed(labels: Sequence[int], i: int) -> str:
        return ", ".join(f"{names[c]} {float(probs[i, c]):.2f}" for c in labels) if labels else "none"

    rows, figures = [], []
    for i in tqdm(chosen, desc="report: explanation figures", disable=not ctx.progress, leave=False):
        ok = bool(exact[i])
        badge = Tag("span", "all labels right" if ok else "some wrong", f"badge {'correct' if ok else 'wrong'}")
        true = [names[c] for c in torch.nonzero(truth[i]).flatten().tolist()]
        pos = [c for c in targets[i] if positive[i, c]] if counts[i] else []
        more = max(0, counts[i] - len(targets[i]))
        rows.append([badge, files[i], ", ".join(true) or "none", listed(pos, i) if counts[i] else "none",
                     ", ".join(names[c] for c in targets[i]) + (f" (+{more} more positive)" if more else "")])
        own = [r for r, (j, _) in enumerate(pairs) if j == i]
        blocks = [{lbl: e.maps[r] for lbl, e in results.items()} for r in own]
        titles = [f"explaining {names[pairs[r][1]]} (p={float(probs[i, pairs[r][1]]):.2f}"
                  f"{'' if positive[i, pairs[r][1]] else f', below {threshold:g}'})" for r in own]
        title = f"{files[i]}: true {', '.join(true) or 'none'}; predicted {', '.join(names[c] for c in pos) or 'none'}"
        fig = comparison_figure(pool.images[i], blocks, title=title, row_titles=titles, normalization=norms)
        figures.append((badge, embed_figure(fig, f"saliency maps of {files[i]}", title)))
    return {**out, "multilabel": True, "threshold": f"{threshold:g}", "count": len(chosen), "what": pool.what,
            "labels_per_image": ctx.settings.labels_per_image,
            "table": Table(["", "file", "true labels", "predicted positive (probability)", "explained"], rows),
            "figures": figures}


@section("trust", "Trust checks")
def gather_trust(ctx: ReportContext) -> dict[str, Any]:
    """Each registered check's subsection, from its ``checks.json`` entry (its plug-in's gather and partial)."""
    from saliencekit.trust.checks import list_checks

    if ctx.checks is None:
        return ctx.not_computed("no checks.json found")
    env = environment()
    tools = TrustTools(ctx)
    skipped = ctx.checks.skipped
    parts = []
    for check in list_checks():
        entry = ctx.checks.checks.get(check.name)
        part: dict[str, Any] = {"id": check.anchor, "title": check.title}
        if isinstance(entry, Mapping):
            try:  # a malformed entry must not sink the report
                part["body"] = env.get_template(f"check/{check.name}").make_module(check.gather(entry, tools))
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                part["problem"] = f"{type(exc).__name__}: {exc}"
        elif check.name in skipped:
            part["skipped"] = skipped[check.name] or "skipped"
        else:
            part.update(ctx.not_computed(f"{check.name} is not in checks.json"))
        parts.append(part)
    known = {c.name for c in list_checks()}
    rows = ctx.checks.settings.get("rows")
    images = ctx.checks.settings.get("images") if rows is not None else len(ctx.checks.images)
    return {"images": images, "rows": rows, "what": ctx.image_kind, "path": str(ctx.checks_path), "parts": parts,
            "unknown": [name for name in ctx.checks.checks if name not in known]}


@section("reproducibility", "Reproducibility")
def gather_reproducibility(ctx: ReportContext) -> dict[str, Any]:
    """Versions, seeds, the methods and settings of the explanations and checks, the commands and the files."""
    from saliencekit._versions import library_versions

    run = ctx.run
    cfg = run.config if run is not None else {}
    checks = ctx.checks
    now = library_versions()
    trained = cfg.get("versions") or {}
    checked = {"saliencekit": checks.saliencekit_version} if checks else {}
    names = list(dict.fromkeys([*now, *trained]))
    settings = checks.settings if checks else {}
    seeds = {"training (split, initialisation, batches)": cfg.get("seed"),
             "checks": settings.get("seed") if checks else None,
             "report (noise of sampling methods; the image choice is deterministic)": ctx.settings.seed}
    out: dict[str, Any] = {
        "versions": Table(["package", "this report", "training", "checks"],
                          [[n, now.get(n, ""), trained.get(n, ""), checked.get(n, "") or ""] for n in names]),
        "seeds": key_values({k: ("n/a" if v is None else v) for k, v in seeds.items()}),
        "explained": Table(["label", "method", "parameters"],
                           [[lbl, p.get("method", lbl), code({k: v for k, v in p.items() if k != "method"})]
                            for lbl, p in ctx.method_params.items()]) if ctx.method_params else None,
        "checked": None, "check_settings": None, "check_parameters": None,
    }
    if checks:
        if checks.methods:
            out["checked"] = Table(["label", "method", "options"],
                                   [[lbl, v.get("method", lbl), code(v.get("options", {}))]
                                    for lbl, v in checks.methods.items()])
        if settings:
            out["check_settings"] = key_values(settings)
        params = {}
        for key, c in checks.checks.items():
            if isinstance(c, Mapping):
                p = {k: v for k, v in c.items() if k not in ("methods", "figures", "null", "matrices", "ranking")
                     and (isinstance(v, str | int | float | bool) or (isinstance(v, list) and len(v) <= 30
                                                                        and all(isinstance(s, str) for s in v)))}
                casc = c.get("cascading")
                if isinstance(casc, Mapping) and casc.get("steps"):
                    p["cascading steps"] = casc["steps"]
                if p:
                    params[key] = p
        if params:
            out["check_parameters"] = key_values(params)
    cmds = {"train": cfg.get("command"), "check": checks.command if checks else None, "report": ctx.command}
    out["commands"] = [(k, v) for k, v in cmds.items() if v]
    if run is not None:
        files = {"run directory": str(run.path.resolve()), "data folder": str(run.data_root)}
    else:
        m = ctx.model_block
        md = ctx.subject
        files = {"model file": str(md.path) if md is not None else m.get("file", "none (a model given in Python)"),
                 "data folder": str(md.data_root) if md is not None else m.get("data", "none")}
    out["files"] = key_values({**files, "checks file": str(ctx.checks_path) if ctx.checks_path else "none"})
    return out


#: The ``id`` of every section, in page order.
SECTION_IDS = tuple(SECTIONS)
SECTION_TITLES = {sid: s.title for sid, s in SECTIONS.items()}

__all__ = ["SECTIONS", "SECTION_IDS", "SECTION_TITLES", "ReportContext", "Section", "TrustTools", "gather_warning",
           "section", "select_images", "verdict_columns"]
