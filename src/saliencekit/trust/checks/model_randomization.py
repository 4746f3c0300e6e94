"""Model randomisation (cascading and independent layer re-initialisation, Adebayo et al. 2018) as a check.

The computation is :func:`saliencekit.trust.randomization.model_randomization`; this module runs it for the runner,
draws its figures, puts its verdict into the summary and shows it in the report.
"""

from __future__ import annotations

import math
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
                                      metrics=metrics, progress=ctx.progress, image_index=ctx.image_index)
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
        return {"model_randomization": summary_level(entry["cascading"]["methods"][label])}

    def evidence(self, row: Mapping[str, Any]) -> str | None:
        level = row.get("model_randomization")
        if level == "passes":
            return "its maps change when the weights are randomised (signed and |map|)"
        if level == "partly":
            return ("its maps only partly change when the weights are randomised (one reading of the map survives: "
                    "see the model randomisation section)")
        return None

    def gather(self, entry: Mapping[str, Any], report: Any) -> dict[str, Any]:
        casc = entry.get("cascading") or {}
        metrics = entry.get("metrics") or []
        null = casc.get("null") or {}
        methods = {label: v or {} for label, v in (casc.get("methods") or {}).items()}
        if any("readings" in v for v in methods.values()):
            table, controls = verdict_tables(methods, casc.get("controls") or {}, report)
            finals = None
        else:  # a checks.json written before the three-level rule
            table, controls = None, None
            rows = []
            for label, v in methods.items():
                curves = v.get("curves") or {}
                last = [report.num(curves[k][-1]) if curves.get(k) else "n/a" for k in metrics]
                rows.append([label, report.verdict(v.get("passed")), *last, v.get("reason", "")])
            finals = report.table(["method", "verdict", *metrics, "reason"], rows,
                                  range(2, 2 + len(metrics))) if rows else None
        steps = casc.get("steps") or []
        half = casc.get("half_step")
        return {
            "steps": steps,
            "half_step": steps[half] if isinstance(half, int) and 0 <= half < len(steps) else None,
            "pass_rule": casc.get("pass_rule") if table is not None else None,
            "table": table,
            "controls": controls,
            "controls_ok": casc.get("controls_ok"),
            "controls_reason": casc.get("controls_reason"),
            "finals": finals,
            "null": {k: report.summary(v) for k, v in null.items()},
            "figures": report.figures(entry.get("figures"), "model randomisation", method_figures(casc)),
            "independent": len((entry.get("independent") or {}).get("methods") or {}),
        }


#: CSS class of each verdict level in the check's own tables
LEVEL_CSS = {"passes": "verdict-pass", "partly": "verdict-partly", "fails": "verdict-fail"}


def summary_level(entry: Mapping[str, Any]) -> str | bool | None:
    """The summary value of a randomisation verdict: its level, ``"no verdict"`` when it has none, or the old
    boolean ``passed`` for a checks.json written before the three-level rule."""
    if "level" not in entry:
        return entry.get("passed")
    return entry["level"] or "no verdict"


def _level(report: Any, level: str | None) -> Any:
    return report.tag("span", level or "no verdict", LEVEL_CSS.get(level or "", ""))


def _reading(report: Any, r: Mapping[str, Any] | None) -> str:
    """``similarity (reference) -> retained`` of one reading."""
    if not r:
        return "n/a"
    def two(v: Any) -> str:
        return "n/a" if not isinstance(v, int | float) or not math.isfinite(v) else f"{v:.2f}"

    kept = (r.get("retained") or {}).get("mean")
    share = "n/a" if kept is None else f"{max(0.0, kept):.0%}"
    return f"{two(r.get('similarity'))} (ref. {two(r.get('reference'))}): {share} kept"


def verdict_tables(methods: Mapping[str, Mapping[str, Any]], controls: Mapping[str, Mapping[str, Any]],
                   report: Any) -> tuple[Any, Any]:
    """The verdict table (level, the two readings, reason) and the controls' table of a randomisation check."""
    rows = [[label, _level(report, v.get("level")), _reading(report, (v.get("readings") or {}).get("spearman")),
             _reading(report, (v.get("readings") or {}).get("spearman_abs")), v.get("reason", "")]
            for label, v in methods.items()]
    table = report.table(["method", "verdict", "signed Spearman", "|map| Spearman", "reason"], rows)
    crow = [[label, c.get("description", ""), c.get("expected", ""), _level(report, c.get("level")),
             report.verdict(c.get("as_expected"), "yes", "NO")] for label, c in controls.items()]
    return table, (report.table(["control", "what", "expected", "result", "as expected"], crow) if crow else None)
