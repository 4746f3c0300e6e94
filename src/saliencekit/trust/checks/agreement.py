"""Agreement between methods (rank correlation, SSIM, top-k overlap of their maps) as a check.

The computation is :func:`saliencekit.trust.agreement.agreement`; this module runs it for the runner, draws its
figure and shows it in the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from saliencekit.trust.checks import register_check
from saliencekit.trust.checks.base import Check, CheckContext


@register_check
class Agreement(Check):
    """How similar the maps of different methods are on the same images."""

    name = "agreement"
    title = "Agreement between methods"
    order = 40
    needs = ("two_methods",)

    def run(self, ctx: CheckContext) -> dict[str, Any]:
        from saliencekit.trust import figures as F
        from saliencekit.trust.method_agreement import agreement

        res = agreement(ctx.maps, topk=ctx.settings.topk, seed=ctx.seed)
        d = res.to_dict()
        figs: list[str] = []
        ctx.save_figure(F.plot_agreement(res), "agreement/matrix.png", figs)
        d["figures"] = figs
        return d

    def gather(self, entry: Mapping[str, Any], report: Any) -> dict[str, Any]:
        names = [str(m) for m in entry.get("methods") or []]
        matrices = {}
        for metric, mat in (entry.get("matrices") or {}).items():
            if isinstance(mat, list) and len(mat) == len(names):
                rows = [[a, *(report.num(v, 2) for v in row)] for a, row in zip(names, mat)]
                matrices[metric] = report.table(["", *names], rows, range(1, len(names) + 1))
        return {"matrices": matrices, "figures": report.figures(entry.get("figures"), "agreement")}
