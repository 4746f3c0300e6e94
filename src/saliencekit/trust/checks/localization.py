"""Localisation against ground-truth masks (pointing game, relevance mass and rank) as a check, and the shortcut
finding of the summary (how much map mass sits on a planted marker).

The metrics are the pure functions of :mod:`saliencekit.trust.localization`; this check runs them for every
method, draws their bars, adds them to the summary and shows them in the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from saliencekit.trust.checks import register_check
from saliencekit.trust.checks.base import (
    SHORTCUT_MASK,
    Check,
    CheckContext,
    Column,
    area_share,
    mean_value,
    method_figures,
    rank,
)

if TYPE_CHECKING:
    import torch

#: a map "relies on the marker" when its mass share there is >= 3x the marker's area share
SHORTCUT_FACTOR = 3.0
RELEVANCE_MASS = Column("relevance_mass", "Relevance mass", higher_is_better=True,
                        sentence="Relevance mass: the share of the map's positive mass inside the ground-truth lesion "
                                 "mask.")
POINTING_GAME = Column("pointing_game", "Pointing game", higher_is_better=True,
                       sentence="Pointing game: the share of images whose map maximum falls inside the lesion mask.")
MARKER_MASS = Column("shortcut_share", "Marker mass", higher_is_better=False, optional=True,
                     sentence="Marker mass: the share of the map's mass on the planted shortcut marker (images with "
                              "one).")
#: the metrics of the check's own table: key, heading
TABLE_COLUMNS = (("pointing_game", "pointing game"), ("energy_pointing_game", "energy pointing game"),
                 ("relevance_mass", "relevance mass"), ("relevance_rank", "relevance rank"),
                 ("shortcut_share", "mass on the shortcut marker"))


@register_check
class Localization(Check):
    """Whether the maps fall on the lesion (and how much of them falls on a planted marker)."""

    name = "localization"
    title = "Localisation"
    order = 60
    needs = ("masks",)
    evidence_rank = 30
    columns = (RELEVANCE_MASS, POINTING_GAME, MARKER_MASS)

    def run(self, ctx: CheckContext) -> dict[str, Any]:
        from saliencekit.trust import figures as F
        from saliencekit.trust._explaining import summarize
        from saliencekit.trust.localization import (
            energy_pointing_game,
            mask_share,
            pointing_game,
            relevance_mass,
            relevance_rank,
        )

        kind = ctx.lesion_kind
        assert kind is not None
        masks = ctx.masks[kind]
        shortcut = ctx.masks.get(SHORTCUT_MASK)
        h, w = ctx.images.shape[-2:]
        tol = ctx.settings.pointing_tolerance * min(h, w) / 256
        methods: dict[str, Any] = {}
        for label, maps in ctx.maps.items():
            entry = {
                "pointing_game": summarize(pointing_game(maps, masks, tolerance=tol), ctx.seed),
                "energy_pointing_game": summarize(energy_pointing_game(maps, masks), ctx.seed),
                "relevance_mass": summarize(relevance_mass(maps, masks), ctx.seed),
                "relevance_rank": summarize(relevance_rank(maps, masks), ctx.seed),
                "lesion_share": summarize(mask_share(maps, masks), ctx.seed),
                "shortcut_share": None,
                "figures": [],
            }
            if shortcut is not None and bool(shortcut.flatten(1).any(1).any()):
                entry["shortcut_share"] = summarize(mask_share(maps, shortcut), ctx.seed)
            methods[label] = entry
        figs: list[str] = []
        bars = ["pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank"]
        ctx.save_figure(F.plot_metric_bars({lb: methods[lb] for lb in methods}, bars,
                                           f"Localisation against the {kind!r} masks (mean, 95% CI)"),
                        "localization/metrics.png", figs)
        out = {"mask": kind, "pointing_tolerance_pixels": tol,
               "mask_area_share": summarize(area_share(masks), ctx.seed),
               "methods": methods,
               "ranking": rank({lb: mean_value(m, RELEVANCE_MASS.key) for lb, m in methods.items()},
                               RELEVANCE_MASS.higher_is_better),
               "ranking_by": "relevance mass (higher is better)", "figures": figs}
        if shortcut is not None:
            out["shortcut_area_share"] = summarize(area_share(shortcut), ctx.seed)
        return out

    def evidence(self, row: Mapping[str, Any]) -> str | None:
        if RELEVANCE_MASS.key in row and math.isfinite(row[RELEVANCE_MASS.key]):
            return f"puts {row[RELEVANCE_MASS.key]:.0%} of its mass on the lesion"
        return None

    def quality(self, row: Mapping[str, Any]) -> float | None:
        if RELEVANCE_MASS.key in row and math.isfinite(row[RELEVANCE_MASS.key]):
            return row[RELEVANCE_MASS.key]
        return None

    def summary_extra(self, results: Mapping[str, Any], methods: Mapping[str, Mapping[str, Any]],
                      recommended: Sequence[str], masks: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return {"shortcut": shortcut_finding(results.get(self.name), methods, recommended, masks)}

    def gather(self, entry: Mapping[str, Any], report: Any) -> dict[str, Any]:
        methods = {label: v or {} for label, v in (entry.get("methods") or {}).items()}
        cols = [(k, t) for k, t in TABLE_COLUMNS if any(v.get(k) is not None for v in methods.values())]
        return {
            "mask": entry.get("mask", "lesion"),
            "table": report.method_table(methods, cols) if methods else None,
            "ranking": entry.get("ranking") or [],
            "figures": report.figures(entry.get("figures"), "localisation", method_figures(entry)),
        }


def shortcut_finding(loc: Mapping[str, Any] | None, methods: Mapping[str, Any], recommended: Sequence[str],
                     masks: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``summary.shortcut``: whether the maps put far more mass on a planted marker than its area explains.

    Args:
        loc: the localisation check's entry (None when it did not run).
        methods: the summary rows (``summary.methods``).
        recommended: the recommended methods (the finding uses them when there are any).
        masks: the checked images' masks (``"shortcut"``: the marker).
    """
    sc = masks.get(SHORTCUT_MASK)
    present = sc is not None and bool((sc > 0.5).flatten(1).any(1).any())
    if not present:
        return {"present_in_data": False, "detected": None, "marker_share": None, "lesion_share": None,
                "evidence": "no shortcut masks in the data"}
    if loc is None:
        return {"present_in_data": True, "detected": None, "marker_share": None, "lesion_share": None,
                "evidence": "the localisation check was not run"}
    sane = [lb for lb in recommended if loc["methods"][lb].get("shortcut_share")]
    candidates = sane or [lb for lb in methods if loc["methods"][lb].get("shortcut_share")]
    if not candidates:
        return {"present_in_data": True, "detected": None, "marker_share": None, "lesion_share": None,
                "evidence": "no map could be compared with the marker masks"}
    by_method = {lb: mean_value(loc["methods"][lb], "shortcut_share") for lb in candidates}
    lb = max(candidates, key=lambda k: by_method[k] if math.isfinite(by_method[k]) else -1.0)
    marker = by_method[lb]
    lesion = mean_value(loc["methods"][lb], "lesion_share")
    area = mean_value(loc, "shortcut_area_share")
    detected = bool(math.isfinite(marker) and math.isfinite(area) and marker >= SHORTCUT_FACTOR * area)
    evidence = (f"{lb} puts {marker:.0%} of its map mass on the marker, which covers {area:.1%} of the image "
                f"({marker / area if area > 0 else float('inf'):.1f}x its area share; lesion share {lesion:.0%}); "
                + ("the model appears to use the marker" if detected else "no sign that the model uses the marker"))
    if not sane:
        evidence += " (no method passed the sanity checks, so the maps themselves are doubtful)"
    return {"present_in_data": True, "detected": detected, "method": lb, "marker_share": marker,
            "lesion_share": lesion, "marker_area_share": area, "marker_share_by_method": by_method,
            "rule": f"detected when the map mass share on the marker (images with a marker) is >= "
                    f"{SHORTCUT_FACTOR:g}x the marker's area share, for the recommended method with the largest "
                    "marker share (all methods when none is recommended)",
            "evidence": evidence}
