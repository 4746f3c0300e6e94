"""``checks.json`` as typed objects: what :func:`saliencekit.trust.run_checks` returns and writes, and what the
report reads back. This module is the one place that knows the file's top-level layout (``docs/checks_json.md``);
each check's own entry under ``checks`` is written and read by its plug-in (:mod:`saliencekit.trust.checks`).

>>> results = load_checks("runs/cxr/checks")  # doctest: +SKIP
>>> results.summary.recommended  # doctest: +SKIP
['gradcam']
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saliencekit.errors import DataError

#: The layout version of ``checks.json`` (docs/checks_json.md, "Versions"). 2: randomisation verdicts have three levels
#: (``level``, ``readings``, ``controls``) and ``summary.methods`` holds the level strings.
SCHEMA_VERSION = 2
#: ``summary.recommendation_rule``
RECOMMENDATION_RULE = ("methods that fail no randomisation check (a 'partly' verdict is no failure; its reason says "
                       "so), best first by relevance mass (when masks exist) else insertion AUC - deletion AUC")


def _mapping(v: Any) -> dict[str, Any]:
    return dict(v) if isinstance(v, Mapping) else {}


@dataclass
class ImageRow:
    """One checked image (``images[i]``); for a multi-label model one (image, explained label) row.

    Attributes:
        file: the image's file (or ``image_<i>``).
        label: true class (None: unknown, or a multi-label row: see ``true_labels``).
        label_name: its name.
        prediction: the explained class: the predicted class, or a multi-label row's label.
        prediction_name: its name.
        probability: its probability (a per-label sigmoid for multi-label models).
        image: multi-label rows: the index of the image among the checked images (rows of one image share it).
        true_labels: multi-label rows: the image's true labels (None: unknown).
        positive_labels: multi-label rows: the labels predicted positive for the image, most probable first.
        explained_positive: multi-label rows: whether the explained label is predicted positive (False: the image
            has no positive label and its most probable one is explained).
    """

    file: str
    label: int | None = None
    label_name: str | None = None
    prediction: int | None = None
    prediction_name: str | None = None
    probability: float | None = None
    image: int | None = None
    true_labels: list[str] | None = None
    positive_labels: list[str] | None = None
    explained_positive: bool | None = None

    _MULTILABEL = ("image", "true_labels", "positive_labels", "explained_positive")

    def to_json(self) -> dict[str, Any]:
        d = {"file": self.file, "label": self.label, "label_name": self.label_name, "prediction": self.prediction,
             "prediction_name": self.prediction_name, "probability": self.probability}
        if self.image is not None:
            d.update({k: getattr(self, k) for k in self._MULTILABEL})
        return d

    @classmethod
    def from_json(cls, d: Any) -> ImageRow:
        d = _mapping(d)
        return cls(str(d.get("file", "")), d.get("label"), d.get("label_name"), d.get("prediction"),
                   d.get("prediction_name"), d.get("probability"), d.get("image"), d.get("true_labels"),
                   d.get("positive_labels"), d.get("explained_positive"))


@dataclass
class Summary:
    """``summary``: per-method columns of every check, the recommendation and what the checks add (``extra``,
    e.g. ``shortcut``).

    Attributes:
        methods: label -> column key -> value (see each check's ``columns``).
        recommended: labels, best first.
        reasons: label -> why it is recommended.
        not_recommended: label -> the checks it failed.
        recommendation_rule: the rule in words.
        extra: keys added by checks (``shortcut``: the planted-marker finding).
    """

    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    recommended: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    not_recommended: dict[str, str] = field(default_factory=dict)
    recommendation_rule: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shortcut(self) -> dict[str, Any]:
        """The planted-marker finding (empty when absent)."""
        return _mapping(self.extra.get("shortcut"))

    def to_json(self) -> dict[str, Any]:
        return {"methods": self.methods, "recommended": self.recommended, "reasons": self.reasons,
                "not_recommended": self.not_recommended, "recommendation_rule": self.recommendation_rule,
                **self.extra}

    @classmethod
    def from_json(cls, d: Any) -> Summary:
        d = _mapping(d)
        known = ("methods", "recommended", "reasons", "not_recommended", "recommendation_rule")
        return cls({str(k): _mapping(v) for k, v in _mapping(d.get("methods")).items()},
                   [str(m) for m in d.get("recommended") or []],
                   {str(k): str(v) for k, v in _mapping(d.get("reasons")).items()},
                   {str(k): str(v) for k, v in _mapping(d.get("not_recommended")).items()},
                   str(d.get("recommendation_rule") or ""), {k: v for k, v in d.items() if k not in known})


@dataclass
class CheckResults:
    """Everything one run of the checks produced, in the ``checks.json`` layout.

    ``results["summary"]`` (item access by a top-level key) gives the JSON form of that part, as the plain dict
    that ``run_checks`` used to return did.

    Attributes:
        settings: ``settings`` (images, seed, device, threads, checks run, skipped checks, layer and the costs).
        methods: label -> ``{"method": name, "options": {...}}``.
        images: the checked images.
        checks: check name -> its entry (written by the check's plug-in).
        summary: the per-method summary and the recommendation.
        saliencekit_version: the version that wrote it.
        created: UTC time stamp.
        command: the command line (or empty).
        run_dir: the run directory checked (None for a model and images).
        model: for a model file checked on a data folder (``check --model-file``): how to reopen both
            (:meth:`saliencekit.model_data.ModelData.to_json`); else None.
        schema_version: the layout version of ``checks.json`` (docs/checks_json.md; files without one are 1).
    """

    settings: dict[str, Any]
    methods: dict[str, dict[str, Any]]
    images: list[ImageRow]
    checks: dict[str, dict[str, Any]]
    summary: Summary
    saliencekit_version: str = ""
    created: str = ""
    command: str = ""
    run_dir: str | None = None
    model: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def skipped(self) -> dict[str, str]:
        """Check name -> why it was skipped (``settings.skipped``; the list form of older files is accepted)."""
        s = self.settings.get("skipped") or {}
        if isinstance(s, Mapping):
            return {str(k): str(v) for k, v in s.items()}
        out = {}
        for item in s if isinstance(s, list) else []:
            if isinstance(item, Mapping):
                out[str(item.get("check", item.get("name", "?")))] = str(item.get("reason", ""))
            else:
                out[str(item)] = ""
        return out

    def overview(self) -> list[str]:
        """A few lines for the console: each method's verdicts, the recommended methods and the skipped checks."""
        from saliencekit.trust.checks import list_checks

        columns = [c for check in list_checks() for c in check.columns if c.kind == "verdict"]
        lines = []
        for label, row in self.summary.methods.items():
            cells = [(c.key, c.cell(row[c.key])) for c in columns if row.get(c.key) is not None]
            flags = [f"{key}={cell.text.upper() if cell.css == 'fail' else cell.text}" for key, cell in cells]
            lines.append(f"  {label:<24} {' '.join(flags)}")
        lines.append(f"recommended: {', '.join(self.summary.recommended) or '(none)'}")
        lines += [f"skipped {name}: {reason}" for name, reason in self.skipped.items()]
        return lines

    def verdicts(self) -> dict[str, dict[str, Any]]:
        """Each method's verdicts: label -> column key -> :class:`~saliencekit.trust.checks.base.Cell` (its text,
        e.g. ``passes`` / ``fails`` / ``not run``, and CSS class), for every verdict column of the registered checks
        that some method has a value in. What a notebook shows for the results (:meth:`_repr_html_`)."""
        from saliencekit.trust.checks import list_checks
        from saliencekit.trust.checks.base import value_of

        present = {k for row in self.summary.methods.values() for k, v in row.items() if v is not None}
        columns = [c for check in list_checks() for c in check.columns if c.kind == "verdict" and c.key in present]
        return {label: {c.key: c.cell(value_of(row.get(c.key))) for c in columns}
                for label, row in self.summary.methods.items()}

    def __repr__(self) -> str:
        # short: the dataclass's own repr would print every per-image number (the notebook shows _repr_html_)
        n, images = len(self.summary.methods), self.settings.get("images", len(self.images))
        recommended = ", ".join(self.summary.recommended) or "none"
        return f"CheckResults({n} method{'s' if n != 1 else ''}, {images} images; recommended: {recommended})"

    def _repr_html_(self) -> str:
        """The verdict table (methods x checks), the recommended methods and the skipped checks, for notebooks."""
        from saliencekit.viz.inline import verdict_table_html

        return verdict_table_html(self)

    def to_json(self) -> dict[str, Any]:
        """The ``checks.json`` content (NaN is written as null by the JSON writer)."""
        return {"schema_version": self.schema_version,
                "saliencekit_version": self.saliencekit_version, "created": self.created, "command": self.command,
                "run_dir": self.run_dir, **({} if self.model is None else {"model": self.model}),
                "settings": self.settings, "methods": self.methods,
                "images": [r.to_json() for r in self.images], "checks": self.checks, "summary": self.summary.to_json()}

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def write(self, path: str | Path) -> Path:
        """Write ``checks.json`` atomically (a folder: ``folder/checks.json``)."""
        from saliencekit import _atomic

        path = Path(path)
        return _atomic.write_json(path / "checks.json" if path.suffix != ".json" else path, self.to_json())

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckResults:
        """Read the JSON content back; missing or malformed parts become empty (the report says what is missing)."""
        return cls(
            settings=_mapping(data.get("settings")),
            methods={str(k): _mapping(v) for k, v in _mapping(data.get("methods")).items()},
            images=[ImageRow.from_json(r) for r in data.get("images") or [] if isinstance(r, Mapping)],
            checks={str(k): v for k, v in _mapping(data.get("checks")).items()},
            summary=Summary.from_json(data.get("summary")),
            saliencekit_version=str(data.get("saliencekit_version") or ""),
            created=str(data.get("created") or ""),
            command=str(data.get("command") or ""),
            run_dir=data.get("run_dir"),
            model=_mapping(data.get("model")) or None,
            schema_version=int(data.get("schema_version") or 1),
        )


def load_checks(path: str | Path) -> CheckResults:
    """Read a ``checks.json`` (or the one in a folder).

    Raises:
        DataError: the file is missing or is not a JSON object; the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checks.json"
    if not path.is_file():
        raise DataError(f"checks file not found: {path} (written by `saliencekit check RUN --out DIR`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read checks file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"checks file {path} does not hold a JSON object (see docs/checks_json.md)")
    return CheckResults.from_json(data)


def build_summary(results: Mapping[str, Any], labels: Iterable[str], masks: Mapping[str, torch.Tensor]) -> Summary:
    """The summary of the checks' entries: every check's columns per method, the methods no check vetoes ranked by
    the quality of the first check (by ``evidence_rank``) that gives one, their reasons, and the checks' extras."""
    from saliencekit.trust.checks import list_checks

    checks = list_checks()
    methods: dict[str, dict[str, Any]] = {}
    for label in labels:
        row: dict[str, Any] = {}
        for check in checks:
            if check.name in results:
                row.update(check.summary_row(results[check.name], label))
        methods[label] = row
    vetoes = {lb: [v for check in checks if (v := check.veto(row))] for lb, row in methods.items()}
    sane = [lb for lb in methods if not vetoes[lb]]
    by_evidence = sorted(checks, key=lambda c: (c.evidence_rank, c.order, c.name))

    def quality(lb: str) -> float:
        for check in by_evidence:
            q = check.quality(methods[lb])
            if q is not None:
                return q
        return 0.0

    recommended = sorted(sane, key=lambda lb: -quality(lb) if math.isfinite(quality(lb)) else math.inf)
    reasons: dict[str, str] = {}
    for lb in recommended:
        bits = [b for check in by_evidence if (b := check.evidence(methods[lb]))]
        reasons[lb] = ("Passes the sanity checks that were run: " + "; ".join(bits) + ".") if bits else \
            "No sanity check failed (none was run)."
        cautions = [c for check in by_evidence if check.name in results
                    and (c := check.caveat(results[check.name], lb, methods))]
        if cautions:
            reasons[lb] += " But " + "; ".join(cautions) + "."
    summary = Summary(methods, recommended, reasons, {lb: "; ".join(vetoes[lb]) for lb in methods if lb not in sane},
                      RECOMMENDATION_RULE)
    for check in checks:
        summary.extra.update(check.summary_extra(results, methods, recommended, masks))
    return summary


def image_rows(files: Sequence[str] | None, labels: torch.Tensor | None, preds: torch.Tensor, probs: torch.Tensor,
               class_names: Sequence[str] | None) -> list[ImageRow]:
    """The ``images`` rows of the checked images."""
    rows = []
    for i in range(preds.shape[0]):
        y = None if labels is None else int(labels[i])
        rows.append(ImageRow(
            file=files[i] if files is not None else f"image_{i}", label=y,
            label_name=class_names[y] if (class_names is not None and y is not None) else None,
            prediction=int(preds[i]), prediction_name=class_names[int(preds[i])] if class_names is not None else None,
            probability=float(probs[i])))
    return rows


def label_rows(files: Sequence[str] | None, labels: torch.Tensor | None, rows: Any, probs: torch.Tensor,
               class_names: Sequence[str] | None) -> list[ImageRow]:
    """The ``images`` rows of a multi-label check: one per (image, explained label).

    Args:
        files: a name per checked image.
        labels: (R, L) true 0/1 rows of the checked rows, or None.
        rows: the runner's (image, label) rows (``image``, ``label`` (R,), ``positives`` per image).
        probs: (R,) probability of each row's label.
        class_names: the label names.
    """

    def name(c: int) -> str:
        return class_names[c] if class_names is not None else f"class_{c}"

    out = []
    for r, (i, c) in enumerate(zip(rows.image.tolist(), rows.label.tolist())):
        true = None if labels is None else [name(k) for k in torch.nonzero(labels[r] > 0.5).flatten().tolist()]
        positive = [name(k) for k in rows.positives[i]]
        out.append(ImageRow(file=files[i] if files is not None else f"image_{i}", prediction=int(c),
                            prediction_name=name(int(c)), probability=float(probs[r]), image=int(i),
                            true_labels=true, positive_labels=positive, explained_positive=int(c) in rows.positives[i]))
    return out


__all__ = ["RECOMMENDATION_RULE", "SCHEMA_VERSION", "CheckResults", "ImageRow", "Summary", "build_summary",
           "image_rows", "label_rows", "load_checks"]
