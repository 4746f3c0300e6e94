"""Input invariance (a constant input shift with and without first-layer compensation, Kindermans et al. 2017)
as a check.

The computation is :func:`saliencekit.trust.invariance.input_invariance`; this module runs it for the runner,
draws its figure, puts its verdict into the summary and shows it in the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from saliencekit.trust.checks import register_check
from saliencekit.trust.checks.base import Check, CheckContext, Column, method_figures


@register_check
class InputInvariance(Check):
    """Adding a constant to every pixel, compensated in the first layer, must leave the map unchanged."""

    name = "input_invariance"
    title = "Input invariance"
    order = 30
    recomputes_maps = True
    columns = (Column("input_invariance", "Input invari\u00adance", kind="verdict",
                      sentence="Input invariance (Kindermans et al. 2017): adding a constant to every pixel, "
                               "compensated in the first layer so the model computes the same function, must leave "
                               "the map unchanged."),)

    def run(self, ctx: CheckContext) -> dict[str, Any]:
        from saliencekit.trust import figures as F
        from saliencekit.trust.invariance import input_invariance

        res = input_invariance(ctx.model, ctx.images, ctx.specs, shift=ctx.settings.shift, target=ctx.preds,
                               layer=ctx.layer, batch_size=ctx.settings.batch_size, seed=ctx.seed)
        d = res.to_dict()
        figs: list[str] = []
        ctx.save_figure(F.plot_invariance_maps(res), "input_invariance/maps.png", figs)
        for part in ("compensated", "uncompensated"):
            for label in ctx.specs:
                d[part]["methods"][label]["figures"] = list(figs)
        d["figures"] = figs
        return d

    def summary_row(self, entry: Mapping[str, Any], label: str) -> dict[str, Any]:
        return {"input_invariance": entry["compensated"]["methods"][label]["invariant"]}

    def gather(self, entry: Mapping[str, Any], report: Any) -> dict[str, Any]:
        comp = entry.get("compensated") or {}
        unc = entry.get("uncompensated") or {}
        info = {"constant shift added to every input": entry.get("shift"),
                "model output change (compensated)": comp.get("output_max_abs_change"),
                "predictions changed (uncompensated)": unc.get("prediction_changed_fraction"),
                "largest probability change (uncompensated)": unc.get("probability_max_abs_change")}
        methods = {label: v or {} for label, v in (comp.get("methods") or {}).items()}
        metrics = list(dict.fromkeys(k for v in methods.values() for k in v.get("similarity") or {}))
        rows = [[label, report.verdict(v.get("invariant"), "invariant", "not invariant"),
                 *(report.summary((v.get("similarity") or {}).get(k)) for k in metrics),
                 report.summary(v.get("max_abs_change"))] for label, v in methods.items()]
        return {
            "info": report.key_values({k: v for k, v in info.items() if v is not None}),
            "table": report.table(["method", "verdict", *metrics, "largest map change"], rows,
                                  range(2, 3 + len(metrics))) if rows else None,
            "figures": report.figures(entry.get("figures"), "input invariance",
                                      method_figures(entry, "compensated", "uncompensated")),
        }
