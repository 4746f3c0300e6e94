"""Evaluation: accuracy, ROC AUC, sensitivity, specificity and the confusion matrix.

For a binary (one-logit) model the positive class is class 1 (``class_names[1]``): sensitivity is
its recall and specificity the recall of class 0. With more classes, sensitivity and specificity
are one-vs-rest averages over classes (macro) and the AUC is the macro one-vs-rest AUC.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.stats import rankdata

from saliencekit import _atomic
from saliencekit._filenames import safe_filename
from saliencekit.errors import DataError
from saliencekit.predict import predict_proba

if TYPE_CHECKING:
    from saliencekit.run import Run


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney U) formula; ties count one half.

    ``labels`` are 1 for positives and 0 for negatives. NaN when either class is absent.

    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> dict[str, list[float]]:
    """ROC curve points (false and true positive rates, from (0, 0) to (1, 1)) at every distinct threshold."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.array([], dtype=int)
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return {
        "fpr": [0.0, *(fps / n_neg).tolist()],
        "tpr": [0.0, *(tps / n_pos).tolist()],
        "thresholds": [float("inf"), *s[distinct].tolist()],
    }


def confusion_matrix(labels: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """``(n, n)`` counts; rows are true classes, columns predicted classes."""
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=int), np.asarray(predicted, dtype=int)), 1)
    return cm


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def compute_metrics(
    labels: Sequence[int] | np.ndarray,
    proba: np.ndarray | torch.Tensor,
    class_names: Sequence[str],
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Metrics of class probabilities against true labels.

    Args:
        labels: true class indices ``(N,)``.
        proba: class probabilities ``(N, C)``.
        class_names: the ``C`` class names.
        threshold: for two classes, class 1 is predicted when its probability is >= threshold.

    Returns:
        ``n``, ``accuracy``, ``roc_auc``, ``sensitivity``, ``specificity``, ``confusion_matrix``
        (rows true, columns predicted), ``class_names``, ``per_class`` (n, sensitivity, specificity, auc),
        ``roc_curves`` (class name -> curve: the positive class only for two classes), and for two
        classes ``positive_class`` and ``threshold``.
    """
    y = np.asarray(labels, dtype=int)
    p = np.asarray(proba, dtype=np.float64)
    k = len(class_names)
    if p.ndim != 2 or p.shape[1] != k or len(p) != len(y):
        raise ValueError(f"proba must have shape (N={len(y)}, {k}), got {p.shape}")
    if k == 2:
        pred = (p[:, 1] >= threshold).astype(int)
    else:
        pred = p.argmax(1)
    cm = confusion_matrix(y, pred, k)
    per_class: dict[str, dict[str, float]] = {}
    for c, name in enumerate(class_names):
        tp = cm[c, c]
        fn = cm[c].sum() - tp
        fp = cm[:, c].sum() - tp
        tn = cm.sum() - tp - fn - fp
        per_class[name] = {
            "n": int(cm[c].sum()), "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "auc": roc_auc(y == c, p[:, c]),
        }
    out: dict[str, Any] = {"n": len(y), "class_names": list(class_names), "accuracy": _ratio(np.trace(cm), cm.sum())}
    if k == 2:
        pos = class_names[1]
        out.update(
            positive_class=pos, threshold=threshold, roc_auc=per_class[pos]["auc"],
            sensitivity=per_class[pos]["sensitivity"], specificity=per_class[pos]["specificity"],
        )
        out["roc_curves"] = {pos: roc_curve(y == 1, p[:, 1])}
    else:
        out.update(
            roc_auc=float(np.nanmean([v["auc"] for v in per_class.values()])) if len(y) else float("nan"),
            sensitivity=float(np.nanmean([v["sensitivity"] for v in per_class.values()])),
            specificity=float(np.nanmean([v["specificity"] for v in per_class.values()])),
        )
        out["roc_curves"] = {name: roc_curve(y == c, p[:, c]) for c, name in enumerate(class_names)}
    out["confusion_matrix"] = cm.tolist()
    out["per_class"] = per_class
    return out


def compute_multilabel_metrics(
    targets: np.ndarray | torch.Tensor,
    proba: np.ndarray | torch.Tensor,
    label_names: Sequence[str],
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Metrics of per-label probabilities against 0/1 targets (multi-label).

    Args:
        targets: ``(N, L)`` 0/1 targets.
        proba: ``(N, L)`` per-label probabilities (sigmoids).
        label_names: the ``L`` label names.
        threshold: a label is predicted when its probability is >= threshold.

    Returns:
        ``n``, ``multilabel`` (True), ``class_names`` (the labels), ``threshold``, ``per_class`` (per label:
        ``positives``, ``auc``, ``sensitivity``, ``specificity``, ``accuracy``), ``roc_auc`` (mean of the labels'
        AUCs, those with both outcomes), ``sensitivity`` and ``specificity`` (means), ``accuracy`` (share of the
        N x L decisions that are right) and ``exact_match`` (share of images with every label right), and
        ``roc_curves`` (label -> curve).
    """
    y = np.asarray(targets, dtype=np.float64) > 0.5
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape != y.shape or p.shape[1] != len(label_names):
        raise ValueError(f"proba and targets must both have shape (N, {len(label_names)}), got {p.shape}, {y.shape}")
    pred = p >= threshold
    per_class: dict[str, dict[str, float]] = {}
    for k, name in enumerate(label_names):
        tp = int((pred[:, k] & y[:, k]).sum())
        tn = int((~pred[:, k] & ~y[:, k]).sum())
        pos, neg = int(y[:, k].sum()), int((~y[:, k]).sum())
        per_class[name] = {"positives": pos, "auc": roc_auc(y[:, k], p[:, k]), "sensitivity": _ratio(tp, pos),
                           "specificity": _ratio(tn, neg), "accuracy": _ratio(tp + tn, len(y))}

    def mean(key: str) -> float:
        values = [v[key] for v in per_class.values() if v[key] == v[key]]
        return float(np.mean(values)) if values else float("nan")

    return {
        "n": len(y), "multilabel": True, "class_names": list(label_names), "threshold": threshold,
        "accuracy": float((pred == y).mean()) if y.size else float("nan"),
        "exact_match": float((pred == y).all(1).mean()) if len(y) else float("nan"),
        "roc_auc": mean("auc"), "sensitivity": mean("sensitivity"), "specificity": mean("specificity"),
        "per_class": per_class,
        "roc_curves": {name: roc_curve(y[:, k], p[:, k]) for k, name in enumerate(label_names)},
    }


def format_metrics(metrics: dict[str, Any]) -> str:
    """A plain-text table of a metrics dict (as returned by :func:`evaluate`)."""

    def f(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and v != v) else f"{v:.3f}"

    names = metrics["class_names"]
    title = f"{metrics.get('split', 'test')} set: {metrics.get('data', '')}".rstrip(": ")
    if metrics.get("multilabel"):
        width = max(8, *(len(n) for n in names)) + 2
        lines = [title, f"  images       {metrics['n']}   ({len(names)} labels, each predicted when its sigmoid "
                        f">= {metrics['threshold']:g})",
                 f"  mean ROC AUC {f(metrics['roc_auc'])}",
                 f"  accuracy     {f(metrics['accuracy'])}   (share of label decisions right)",
                 f"  exact match  {f(metrics['exact_match'])}   (images with every label right)", "",
                 "  " + f"{'label':<{width}}{'positives':>10}{'AUC':>8}{'sens.':>8}{'spec.':>8}"]
        for name in names:
            v = metrics["per_class"][name]
            lines.append("  " + f"{name:<{width}}{v['positives']:>10}{f(v['auc']):>8}{f(v['sensitivity']):>8}"
                                f"{f(v['specificity']):>8}")
        return "\n".join(lines)
    lines = [title, f"  images       {metrics['n']}", f"  accuracy     {f(metrics['accuracy'])}",
             f"  ROC AUC      {f(metrics['roc_auc'])}"]
    if len(names) == 2:
        pos = metrics.get("positive_class", names[1])
        lines += [f"  sensitivity  {f(metrics['sensitivity'])}   (recall of {pos})",
                  f"  specificity  {f(metrics['specificity'])}   (recall of {names[0]})"]
    else:
        lines += [f"  sensitivity  {f(metrics['sensitivity'])}   (mean one-vs-rest)",
                  f"  specificity  {f(metrics['specificity'])}   (mean one-vs-rest)"]
    width = max(8, *(len(n) for n in names)) + 2
    lines += ["", "  confusion matrix (rows: true class, columns: predicted)",
              "  " + " " * width + "".join(f"{n:>{width}}" for n in names)]
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append("  " + f"{name:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def evaluate(
    run_or_path: Run | str | Path,
    data: str | Path | None = None,
    device: str | torch.device = "cpu",
    write: bool = True,
    progress: bool = False,
    labels: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate a run on its test split, or on every image of another folder.

    Args:
        run_or_path: a :class:`~saliencekit.run.Run` or a run directory.
        data: another folder with the same class sub-folders (for a run trained from a label CSV: the folder
            its images are under); default: the run's test split.
        device: where to run the model when a path is given.
        write: save ``metrics.json``, ``confusion.png`` and ``roc.png`` in the run directory
            (``metrics_<folder>.json`` etc. for ``data``).
        progress: show a progress bar while loading images.
        labels: with ``data``, for a run trained from a label CSV: the CSV of that folder's images (default: the
            run's CSV).

    Returns:
        The metrics (see :func:`compute_metrics`) plus ``split``, ``data`` and ``predictions``
        (per file: ``file``, ``label``, ``predicted``, ``probabilities``).
    """
    from saliencekit.data.folder import ImageFolderDataset, check_images, scan_folder
    from saliencekit.data.labels import read_labels
    from saliencekit.run import CONFUSION, METRICS, ROC, Run, load_run

    run = run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path, device=device)
    if data is None:
        ds = run.dataset("test")
        split, root = "test", run.data_root
        names = (METRICS, CONFUSION, ROC)
    else:
        root = Path(data)
        spec = run.labels
        if labels is not None and spec is None:
            raise DataError(f"{run.path} was trained on class sub-folders, not a label CSV; evaluate it on a folder "
                            "with the same class sub-folders (without --labels)")
        if spec is not None:
            listed = read_labels(root, spec if labels is None else dataclasses.replace(spec, csv=str(labels)))
            if list(listed.classes) != run.class_names:
                raise DataError(f"the labels of {root} give the classes {listed.classes}; the model was trained on "
                                f"{run.class_names}")
        else:
            listed = scan_folder(root, classes=run.class_names)
        index = check_images(listed, progress=progress)
        ds = ImageFolderDataset(index, run.preprocessing, cache=True, progress=progress)
        split = "folder"
        slug = safe_filename(root.resolve().name, empty="data")
        names = (f"metrics_{slug}.json", f"confusion_{slug}.png", f"roc_{slug}.png")
    proba = predict_proba(run.model, ds.images(), device=run.device, multilabel=run.multilabel)
    truth = ds.labels().numpy()
    if run.multilabel:
        threshold = float(run.info.extra.get("threshold", 0.5))
        metrics = {"split": split, "data": str(Path(root).resolve()),
                   **compute_multilabel_metrics(truth, proba, run.class_names, threshold)}
        metrics["predictions"] = [
            {"file": ds.sample(i).relpath, "labels": [int(v) for v in truth[i]],
             "predicted": [int(v >= threshold) for v in proba[i]],
             "probabilities": [round(float(v), 6) for v in proba[i]]}
            for i in range(len(ds))
        ]
    else:
        metrics = {"split": split, "data": str(Path(root).resolve()),
                   **compute_metrics(truth, proba, run.class_names)}
        pred = (proba[:, 1] >= metrics["threshold"]).long() if run.binary else proba.argmax(1)
        metrics["predictions"] = [
            {"file": ds.sample(i).relpath, "label": int(truth[i]), "predicted": int(pred[i]),
             "probabilities": [round(float(v), 6) for v in proba[i]]}
            for i in range(len(ds))
        ]
    if write:
        from saliencekit.viz.training import plot_confusion, plot_roc

        _atomic.write_json(run.path / names[0], metrics)
        if not run.multilabel:  # a multi-label run has per-label sensitivity/specificity instead
            fig = plot_confusion(metrics["confusion_matrix"], run.class_names, title=f"Confusion matrix ({split})")
            _atomic.save_figure(fig, run.path / names[1])
        fig = plot_roc(metrics, title=f"ROC ({split})")
        _atomic.save_figure(fig, run.path / names[2])
        if data is None:
            run.metrics = metrics
    return metrics
