"""Model randomisation (cascading and independent layer re-initialisation, Adebayo et al. 2018) as a check.

The computation is :func:`saliencekit.trust.randomization.model_randomization`; this module runs it for the runner,
draws its figures, puts its verdict into the summary and shows it in the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from saliencekit._filenames import safe_filename
from saliencekit.trust.checks import register_check
from saliencekit.trust.checks.base import Check, CheckContext, Column, method_figures, rank


@register_check
class ModelRandomization(Check):
    """The map must change when the model's weights are re-initialised layer by layer."""

    name = "model_randomization"
    title = "Model randomisation (cascading)"
    order = 10
    recomputes_maps = True
    evidence_rank = 10
    columns = (Column("model_randomization", "Model random\u00adisation", kind="verdict", vetoes=True,
                      sentence="Model randomisation (Adebayo et al. 2018): the map must change when the model's "
                               "weights are re-initialised layer by layer, or it does not depend on what the model "
                               "learned."),)

    def run(self, ctx: CheckContext) -> dict[str, Any]:
        from saliencekit.trust import figures as F
        from saliencekit.trust.randomization import model_randomization

        metrics = list(ctx.settings.similarity_metrics)
        out: dict[str, Any] = {"metrics": metrics}
        figs: list[str] = []
        for mode in ("cascading", "independent"):
            if mode not in ctx.settings.randomization_modes:
                continue
            res = model_randomization(ctx.model, ctx.images, ctx.specs, mode=mode, target=ctx.preds, layer=ctx.layer,
                                      seed=ctx.seed, original_maps=ctx.maps, batch_size=ctx.settings.batch_size,
                                      metrics=metrics, progress=ctx.progress)
            d = res.to_dict()
            ctx.save_figure(F.plot_randomization_curves(res), f"model_randomization/{mode}_curves.png", figs)
            for label in ctx.specs:
                mfigs: list[str] = []
                if mode == "cascading":
                    name = safe_filename(label, plus="p")
                    ctx.save_figure(F.plot_randomization_strip(res, label), f"model_randomization/strip_{name}.png",
                                    mfigs)
                    ctx.save_figure(F.plot_method_curves(res, label), f"model_randomization/curves_{name}.png", mfigs)
                d["methods"][label]["figures"] = mfigs
            if mode == "cascading":
                ctx.save_figure(F.plot_randomization_strip(res), "model_randomization/strip.png", figs)
            out[mode] = d
        out["figures"] = figs
        if "cascading" in out:
            out["ranking"] = rank({lb: out["cascading"]["methods"][lb].get("value") for lb in ctx.specs}, False)
        else:
            out["ranking"] = []
        return out

    def summary_row(self, entry: Mapping[str, Any], label: str) -> dict[str, Any]:
        if "cascading" not in entry:
            return {}
        return {"model_randomization": entry["cascading"]["methods"][label].get("passed")}

    def evidence(self, row: Mapping[str, Any]) -> str | None:
        return "its maps vanish when the weights are randomised" if row.get("model_randomization") else None

    def gather(self, entry: Mapping[str, Any], report: Any) -> dict[str, Any]:
        casc = entry.get("cascading") or {}
        metrics = entry.get("metrics") or []
        null = casc.get("null") or {}
        methods = {label: v or {} for label, v in (casc.get("methods") or {}).items()}
        if any("value" in v for v in methods.values()):
            # the verdict's own number: the similarity at the decision step against the pass threshold
            rows = [[label, report.verdict(v.get("passed")), report.num(v.get("value")), report.num(v.get("threshold")),
                     v.get("reason", "")] for label, v in methods.items()]
            table = report.table(["method", "verdict", "similarity", "pass if at most", "reason"], rows, (2, 3))
            finals = None
        else:
            rows = []
            for label, v in methods.items():
                curves = v.get("curves") or {}
                last = [report.num(curves[k][-1]) if curves.get(k) else "n/a" for k in metrics]
                rows.append([label, report.verdict(v.get("passed")), *last, v.get("reason", "")])
            if null and rows:
                rows.append([report.tag("em", "two unrelated random maps"), "",
                             *(report.num(null.get(k)) for k in metrics), "the level a passing method falls to"])
            table = None
            finals = report.table(["method", "verdict", *metrics, "reason"], rows,
                                  range(2, 2 + len(metrics))) if rows else None
        return {
            "steps": casc.get("steps") or [],
            "pass_rule": casc.get("pass_rule") if table is not None else None,
            "table": table,
            "finals": finals,
            "null": {k: report.summary(v) for k, v in null.items()},
            "figures": report.figures(entry.get("figures"), "model randomisation", method_figures(casc)),
            "independent": len((entry.get("independent") or {}).get("methods") or {}),
        }
