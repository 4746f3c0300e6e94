"""Figures of training and evaluation: loss/accuracy curves, confusion matrix, ROC curve.

Each function returns a ``matplotlib.figure.Figure`` (no pyplot state, nothing to close); save it
with :func:`saliencekit._atomic.save_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from saliencekit._figure import Figure


def plot_history(history: dict[str, Any], title: str | None = None) -> Figure:
    """Loss and accuracy per epoch (train and validation), the best epoch marked.

    Args:
        history: ``{"epochs": [{"epoch", "train_loss", "train_acc", "val_loss", "val_acc"}, ...],
            "best_epoch": int}`` as in ``history.json``.
        title: optional figure title.
    """
    rows = history.get("epochs", [])
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        for part, style in (("train", "-o"), ("val", "-s")):
            values = [r.get(f"{part}_{key}") for r in rows]
            values = [np.nan if v is None else v for v in values]
            ax.plot(epochs, values, style, ms=3, label="training" if part == "train" else "validation")
        best = history.get("best_epoch")
        if best is not None:
            ax.axvline(best, color="grey", ls=":", lw=1, label=f"best epoch ({best})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if key == "acc":
            ax.set_ylim(-0.02, 1.02)
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 15 else epochs[:: max(1, len(epochs) // 10)])
        ax.legend(fontsize=8)
    axes[0].set_title("Loss")
    axes[1].set_title("Accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# Beyond these many classes the confusion matrix drops its cell numbers, then its tick labels, and the ROC figure its
# legend, so that the figures keep a readable size up to saliencekit.limits.MAX_CLASSES (the numbers are in the JSON).
ANNOTATED_CLASSES = 12
LABELLED_CLASSES = 40


def plot_confusion(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str | None = None) -> Figure:
    """Confusion matrix (rows true class, columns predicted) with counts and row fractions (the counts for up to
    :data:`ANNOTATED_CLASSES` classes, the class names for up to :data:`LABELLED_CLASSES`; at most 12 inches wide)."""
    cm = np.asarray(matrix, dtype=float)
    k = len(class_names)
    row = cm.sum(1, keepdims=True)
    frac = np.divide(cm, row, out=np.zeros_like(cm), where=row > 0)
    cell = min(1.1, 10.0 / max(k, 1))
    fig = Figure(figsize=(1.6 + cell * k + (1.2 if k > ANNOTATED_CLASSES else 0), 1.3 + 0.9 * cell * k +
                          (1.2 if k > ANNOTATED_CLASSES else 0)))
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    if k <= ANNOTATED_CLASSES:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(cm[i, j])}\n{frac[i, j]:.0%}", ha="center", va="center", fontsize=9,
                        color="white" if frac[i, j] > 0.6 else "black")
    if k <= LABELLED_CLASSES:
        size = 10 if k <= ANNOTATED_CLASSES else 6
        ax.set_xticks(range(k), class_names, rotation=30 if k > 3 else 0, fontsize=size,
                      ha="right" if k > 3 else "center")
        ax.set_yticks(range(k), class_names, fontsize=size)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    else:
        ax.set_xlabel(f"predicted (class index, {k} classes: see metrics.json)")
        ax.set_ylabel("true (class index)")
    ax.set_title(title or "Confusion matrix")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fig.tight_layout()
    return fig


def plot_roc(metrics: dict[str, Any], title: str | None = None) -> Figure:
    """ROC curve(s) from a metrics dict (its ``roc_curves`` and ``per_class`` AUCs)."""
    fig = Figure(figsize=(4.4, 4.2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    for name, curve in metrics.get("roc_curves", {}).items():
        auc = metrics.get("per_class", {}).get(name, {}).get("auc")
        label = name if auc is None or auc != auc else f"{name} (AUC {auc:.3f})"
        ax.plot(curve["fpr"], curve["tpr"], lw=2 if len(metrics["roc_curves"]) <= ANNOTATED_CLASSES else 0.5,
                label=label, drawstyle="default")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title or "ROC")
    ax.grid(alpha=0.3)
    if len(metrics.get("roc_curves", {})) <= ANNOTATED_CLASSES:
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.98, 0.02, f"{len(metrics['roc_curves'])} classes, one vs rest; AUCs in metrics.json",
                ha="right", va="bottom", fontsize=7, transform=ax.transAxes)
    fig.tight_layout()
    return fig
