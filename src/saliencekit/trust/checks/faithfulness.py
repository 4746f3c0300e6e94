"""Faithfulness (deletion, insertion and ROAD curves of each method's maps) as a check.

The metrics are the pure functions of :mod:`saliencekit.trust.faithfulness`; :func:`faithfulness_curves` runs them
for one method's maps, the check runs that for every method, draws the curves, adds the AUCs to the summary and
shows them in the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from saliencekit._filenames import safe_filename
from saliencekit.trust.checks import register_check
from saliencekit.trust.checks.base import Check, CheckContext, Column, mean_value, method_figures, rank

DELETION = Column("deletion_auc", "Deletion AUC", higher_is_better=False,
                  sentence="Deletion AUC: the target probability while the most salient pixels are removed first; "
                           "lower means the map found pixels the model needs.")
INSERTION = Column("insertion_auc", "Insertion AUC", higher_is_better=True,
                   sentence="Insertion AUC: the probability while the most salient pixels are put back first; higher "
                            "is better.")
#: the AUCs of the check's own table: key, heading
if TYPE_CHECKING:
    import torch
    from torch import nn

TABLE_COLUMNS = (("deletion_auc", "deletion AUC (lower better)"), ("insertion_auc", "insertion AUC (higher better)"),
                 ("road_morf_auc", "ROAD MoRF AUC (lower better)"), ("road_lerf_auc", "ROAD LeRF AUC (higher better)"))


def faithfulness_curves(model: nn.Module, images: torch.Tensor, maps: torch.Tensor,
                        target: torch.Tensor | Sequence[int] | int | None,
                        steps: int = 20, road_fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
                        seed: int = 0, batch_size: int = 64) -> dict[str, Any]:
    """Deletion, insertion and ROAD (MoRF, LeRF) curves of one method's maps, the explained class per image.

    Every perturbed copy is scored with the probability of its own image's class (``targets=`` of the metric
    functions), in eval mode.

    Args:
        model: the classifier.
        images: (N, C, H, W).
        maps: (N, H, W).
        target: the explained class per image (N,), one class for all, or None (the predicted class).
        steps: deletion / insertion steps.
        road_fractions: shares of pixels removed by ROAD.
        seed: seed of the ROAD noise.
        batch_size: perturbed images per forward pass.

    Returns:
        kind -> :class:`~saliencekit.trust.faithfulness.CurveResult` over all images.
    """
    import torch

    from saliencekit import _layout
    from saliencekit.methods._capture import eval_mode
    from saliencekit.trust.faithfulness import CurveResult, deletion_curve, insertion_curve, road

    def logits(batch: torch.Tensor) -> torch.Tensor:
        with eval_mode(model), torch.inference_mode():
            return _layout.forward(model, batch)

    maps = maps.to(images.device)
    if isinstance(target, torch.Tensor):
        target = target.to(images.device)
    common = {"batch_size": batch_size, "targets": target}
    curves = {
        "deletion": deletion_curve(logits, images, maps, steps=steps, **common),
        "insertion": insertion_curve(logits, images, maps, steps=steps, **common),
        "road_morf": road(logits, images, maps, road_fractions, order="morf", generator=seed, **common),
        "road_lerf": road(logits, images, maps, road_fractions, order="lerf", generator=seed, **common),
    }
    return {kind: CurveResult(kind, c.fractions.cpu(), c.scores.cpu(), c.auc.cpu()) for kind, c in curves.items()}


@register_check
class Faithfulness(Check):
    """Removing the most salient pixels first must hurt the prediction; putting them back first must restore it."""

    name = "faithfulness"
    title = "Faithfulness (deletion / insertion)"
    order = 50
    evidence_rank = 40
    columns = (DELETION, INSERTION)

    def run(self, ctx: CheckContext) -> dict[str, Any]:
        from tqdm.auto import tqdm

        from saliencekit.trust import figures as F
        from saliencekit.trust._explaining import mean_of, summarize

        s = ctx.settings
        methods: dict[str, Any] = {}
        per_row: dict[str, dict[str, Any]] = {}
        all_curves: dict[str, Any] = {}
        figs: list[str] = []
        for label in tqdm(ctx.specs, desc="faithfulness", disable=not ctx.progress, leave=False):
            curves = faithfulness_curves(ctx.model, ctx.images, ctx.maps[label], ctx.preds, s.deletion_steps,
                                         s.road_fractions, ctx.seed, batch_size=max(s.batch_size, 32))
            all_curves[label] = curves
            mfigs: list[str] = []
            ctx.save_figure(F.plot_faithfulness_curves({label: curves}, title=f"Faithfulness of {label}"),
                            f"faithfulness/curves_{safe_filename(label, plus='p')}.png", mfigs)
            methods[label] = {f"{k}_auc": summarize(c.auc, ctx.seed) for k, c in curves.items()}
            per_row[label] = {f"{k}_auc": c.auc for k, c in curves.items()}
            methods[label]["curves"] = {k: {"fractions": c.fractions.tolist(),
                                            "mean": [mean_of(col) for col in c.scores.T]} for k, c in curves.items()}
            methods[label]["figures"] = mfigs
        ctx.save_figure(F.plot_faithfulness_curves(all_curves, kinds=["deletion", "insertion"]),
                        "faithfulness/curves.png", figs)
        score = {lb: mean_value(m, INSERTION.key) - mean_value(m, DELETION.key) for lb, m in methods.items()}
        extra = {}
        by_label = ctx.by_explained_label(per_row)
        if by_label is not None:
            extra["by_label"] = by_label
        return {"methods": methods, **extra, "ranking": rank(score, INSERTION.higher_is_better),
                "ranking_by": "insertion AUC - deletion AUC (higher is better)",
                "settings": {"deletion_steps": s.deletion_steps, "deletion_baseline": "zero",
                             "insertion_baseline": "blur", "road_fractions": list(s.road_fractions),
                             "target": "explained label (each row's)" if ctx.multilabel else "predicted class",
                             "pixel_order": "map value, highest first (signed maps as is)"},
                "figures": figs}

    def evidence(self, row: Mapping[str, Any]) -> str | None:
        if INSERTION.key not in row:
            return None
        return f"insertion AUC {row[INSERTION.key]:.2f}, deletion AUC {row[DELETION.key]:.2f}"

    def quality(self, row: Mapping[str, Any]) -> float | None:
        return row[INSERTION.key] - row[DELETION.key] if INSERTION.key in row else None

    def gather(self, entry: Mapping[str, Any], report: Any) -> dict[str, Any]:
        methods = {label: v or {} for label, v in (entry.get("methods") or {}).items()}
        cols = [(k, t) for k, t in TABLE_COLUMNS if any(k in v for v in methods.values())]
        return {
            "table": report.method_table(methods, cols) if methods else None,
            "by_label": report.by_label_table(entry.get("by_label"), cols),
            "ranking": entry.get("ranking") or [],
            "figures": report.figures(entry.get("figures"), "faithfulness", method_figures(entry)),
        }
