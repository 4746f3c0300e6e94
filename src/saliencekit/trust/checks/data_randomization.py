"""Data randomisation (the same network trained on permuted labels) as a check.

The computation is :func:`saliencekit.trust.randomization.data_randomization` (and
:func:`~saliencekit.trust.randomization.train_on_permuted_labels` for the random-label model); this module runs
it for the runner, draws its figure, puts its verdict into the summary and shows it in the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from saliencekit.trust.checks import register_check
from saliencekit.trust.checks.base import Check, CheckContext, Column, method_figures, rank
from saliencekit.trust.checks.model_randomization import summary_level, verdict_tables


@register_check
class DataRandomization(Check):
    """The map must differ from that of the same network trained on shuffled labels."""

    name = "data_randomization"
    title = "Data randomisation"
    order = 20
    needs = ("train_data",)
    recomputes_maps = True
    evidence_rank = 20
    columns = (Column("data_randomization", "Data random\u00adisation", kind="verdict", vetoes=True,
                      sentence="Data randomisation: the map must differ from that of the same network trained on "
                               "shuffled labels, or it does not depend on the labels."),)

    def run(self, ctx: CheckContext) -> dict[str, Any]:
        import torch

        from saliencekit.trust import figures as F
        from saliencekit.trust.randomization import data_randomization, train_on_permuted_labels

        s = ctx.settings
        training: dict[str, Any] = {}
        rnd = ctx.random_model
        if rnd is None:
            assert ctx.train_data is not None
            x, y = ctx.train_data
            gen = torch.Generator().manual_seed(ctx.seed)
            keep = torch.randperm(x.shape[0], generator=gen)[: s.random_label_images]
            dev = ctx.images.device
            rnd, training = train_on_permuted_labels(
                ctx.model, x[keep].to(dev), y[keep], num_classes=ctx.num_classes, epochs=s.random_label_epochs,
                target_accuracy=s.random_label_accuracy, seed=ctx.seed, factory=ctx.factory,
                lr=float(ctx.train_config.get("lr", 1e-3)), batch_size=int(ctx.train_config.get("batch_size", 32)),
                progress=ctx.progress)
        res = data_randomization(ctx.model, rnd, ctx.images, ctx.specs, target=ctx.preds, layer=ctx.layer,
                                 seed=ctx.seed, original_maps=ctx.maps, training=training,
                                 metrics=list(s.similarity_metrics), batch_size=s.batch_size,
                                 image_index=ctx.image_index)
        d = res.to_dict()
        figs: list[str] = []
        ctx.save_figure(F.plot_data_randomization(res), "data_randomization/maps.png", figs)
        for label in ctx.specs:
            d["methods"][label]["figures"] = []
        d["figures"] = figs
        d["ranking"] = rank({lb: d["methods"][lb]["value"] for lb in ctx.specs}, False)
        return d

    def summary_row(self, entry: Mapping[str, Any], label: str) -> dict[str, Any]:
        return {"data_randomization": summary_level(entry["methods"][label])}

    def evidence(self, row: Mapping[str, Any]) -> str | None:
        level = row.get("data_randomization")
        if level == "passes":
            return "differ from a random-label model's"
        if level == "partly":
            return "only partly differ from a random-label model's"
        return None

    def gather(self, entry: Mapping[str, Any], report: Any) -> dict[str, Any]:
        training = entry.get("training") if isinstance(entry.get("training"), Mapping) else {}
        info = {"random-label model's training accuracy (on its permuted labels)":
                entry.get("random_model_train_accuracy"),
                "its target training accuracy": training.get("target_accuracy"),
                "epochs": entry.get("epochs"), "training images": training.get("images"),
                "share of permuted labels equal to the true ones": training.get("label_agreement")}
        methods = {label: v or {} for label, v in (entry.get("methods") or {}).items()}
        if any("readings" in v for v in methods.values()):
            table, controls = verdict_tables(methods, entry.get("controls") or {}, report)
        else:  # a checks.json written before the three-level rule
            metrics = list(dict.fromkeys(k for v in methods.values() for k in v.get("similarity") or {}))
            rows = [[label, report.verdict(v.get("passed")), *(report.num((v.get("similarity") or {}).get(k))
                                                               for k in metrics), v.get("reason", "")]
                    for label, v in methods.items()]
            table = report.table(["method", "verdict", *metrics, "reason"], rows,
                                 range(2, 2 + len(metrics))) if rows else None
            controls = None
        acc, target = entry.get("random_model_train_accuracy"), training.get("target_accuracy")
        return {
            "info": report.key_values({k: v for k, v in info.items() if v is not None}),
            "memorised": None if acc is None or target is None else acc >= target,
            "pass_rule": entry.get("pass_rule"),
            "table": table,
            "controls": controls,
            "controls_ok": entry.get("controls_ok"),
            "controls_reason": entry.get("controls_reason"),
            "null": {k: report.summary(v) for k, v in (entry.get("null") or {}).items()},
            "figures": report.figures(entry.get("figures"), "data randomisation", method_figures(entry)),
        }
