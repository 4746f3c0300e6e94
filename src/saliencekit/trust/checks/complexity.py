"""Sparseness, complexity (entropy) and max-sensitivity of each method's maps as a check.

The metrics are the pure functions of :mod:`saliencekit.trust.complexity`; this check runs them for every
method (max-sensitivity recomputes the maps of noisy copies), draws their bars, adds sparseness to the summary
and shows them in the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from saliencekit.trust.checks import register_check
from saliencekit.trust.checks.base import Check, CheckContext, Column, mean_value, rank

SPARSENESS = Column("sparseness", "Sparseness", optional=True,
                    sentence="Sparseness: Gini index of the map (higher = fewer, stronger pixels).")
MAX_SENSITIVITY = Column("max_sensitivity", "Max-sensitivity", higher_is_better=False)
#: the metrics of the check's own table: key, heading
TABLE_COLUMNS = (("sparseness", "sparseness (Gini, higher = sparser)"), ("complexity", "complexity (entropy)"),
                 ("max_sensitivity", "max-sensitivity (lower = more stable)"))


@register_check
class Complexity(Check):
    """How concentrated the maps are, and how much they move under small input noise."""

    name = "complexity"
    title = "Sparseness and stability"
    order = 70
    recomputes_maps = True
    columns = (SPARSENESS,)

    def run(self, ctx: CheckContext) -> dict[str, Any]:
        import torch
        from tqdm.auto import tqdm

        from saliencekit.methods.specs import engine_specs, parse_methods
        from saliencekit.trust import figures as F
        from saliencekit.trust._explaining import compute_maps, summarize
        from saliencekit.trust.complexity_metrics import complexity, max_sensitivity, sparseness

        s = ctx.settings
        methods: dict[str, Any] = {}
        for label, maps in tqdm(ctx.maps.items(), desc="complexity", disable=not ctx.progress, leave=False):
            spec = engine_specs({label: ctx.specs[label]})

            def fn(x: torch.Tensor, _spec: dict[str, Any] = spec, _label: str = label) -> torch.Tensor:
                return compute_maps(ctx.model, x, parse_methods(_spec), ctx.preds, ctx.layer,
                                    ctx.settings.batch_size)[_label]

            methods[label] = {
                "sparseness": summarize(sparseness(maps), ctx.seed),
                "complexity": summarize(complexity(maps), ctx.seed),
                "max_sensitivity": summarize(max_sensitivity(fn, ctx.images, radius=s.sensitivity_radius,
                                                             samples=s.sensitivity_samples, generator=ctx.seed,
                                                             base_maps=maps),
                                             ctx.seed),
                "figures": [],
            }
        figs: list[str] = []
        ctx.save_figure(F.plot_metric_bars(methods, ["sparseness", "complexity", "max_sensitivity"],
                                           "Complexity and robustness (mean, 95% CI)"), "complexity/metrics.png", figs)
        return {"methods": methods,
                "ranking": rank({lb: mean_value(m, MAX_SENSITIVITY.key) for lb, m in methods.items()},
                                MAX_SENSITIVITY.higher_is_better),
                "ranking_by": "max-sensitivity (lower is more robust)",
                "settings": {"samples": s.sensitivity_samples, "radius": s.sensitivity_radius},
                "figures": figs}

    def gather(self, entry: Mapping[str, Any], report: Any) -> dict[str, Any]:
        methods = {label: v or {} for label, v in (entry.get("methods") or {}).items()}
        return {"table": report.method_table(methods, TABLE_COLUMNS),
                "figures": report.figures(entry.get("figures"), "complexity")}
