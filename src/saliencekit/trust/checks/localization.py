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
        per_row: dict[str, dict[str, Any]] = {}
        for label, maps in ctx.maps.items():
            values = {"pointing_game": pointing_game(maps, masks, tolerance=tol),
                      "energy_pointing_game": energy_pointing_game(maps, masks),
                      "relevance_mass": relevance_mass(maps, masks), "relevance_rank": relevance_rank(maps, masks)}
            per_row[label] = values
            entry = {
                **{k: summarize(v, ctx.seed) for k, v in values.items()},
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
        by_label = ctx.by_explained_label(per_row)
        if by_label is not None:
            out["by_label"] = by_label
        cam = cam_layers(ctx, masks, tol, kind)
        if cam is not None:
            out["cam_layers"] = cam
        return out

    def evidence(self, row: Mapping[str, Any]) -> str | None:
        if RELEVANCE_MASS.key in row and math.isfinite(row[RELEVANCE_MASS.key]):
            return f"puts {row[RELEVANCE_MASS.key]:.0%} of its mass on the lesion"
        return None

    def quality(self, row: Mapping[str, Any]) -> float | None:
        if RELEVANCE_MASS.key in row and math.isfinite(row[RELEVANCE_MASS.key]):
            return row[RELEVANCE_MASS.key]
        return None

    def caveat(self, entry: Mapping[str, Any], label: str, methods: Mapping[str, Mapping[str, Any]]) -> str | None:
        scores = {lb: float(m[RELEVANCE_MASS.key]) for lb, m in methods.items()
                  if isinstance(m.get(RELEVANCE_MASS.key), int | float) and math.isfinite(m[RELEVANCE_MASS.key])}
        if label not in scores:
            return None
        mine = scores[label]
        area = mean_value(entry, "mask_area_share")
        notes = []
        if len(scores) >= 2 and mine <= min(scores.values()):
            best = max(scores, key=scores.__getitem__)
            notes.append(f"it localises worst of the {len(scores)} methods checked (relevance mass {mine:.0%}, "
                         f"{best} {scores[best]:.0%})")
        if math.isfinite(area) and mine < area:
            notes.append(f"it puts less of its mass on the {entry.get('mask', 'lesion')} ({mine:.1%}) than a uniform "
                         f"map would (the mask covers {area:.1%} of the image)")
        if not notes:
            return None
        cam = entry.get("cam_layers") or {}
        if label in (cam.get("cam_methods") or []) and cam.get("advice"):
            notes.append(cam["advice_short"])
        return "; ".join(notes)

    def summary_extra(self, results: Mapping[str, Any], methods: Mapping[str, Mapping[str, Any]],
                      recommended: Sequence[str], masks: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return {"shortcut": shortcut_finding(results.get(self.name), methods, recommended, masks)}

    def gather(self, entry: Mapping[str, Any], report: Any) -> dict[str, Any]:
        methods = {label: v or {} for label, v in (entry.get("methods") or {}).items()}
        cols = [(k, t) for k, t in TABLE_COLUMNS if any(v.get(k) is not None for v in methods.values())]
        cam = entry.get("cam_layers") or {}
        cam_table = None
        if cam.get("layers"):
            scanned = cam.get("scan_methods") or []
            head = ["layer", "size", *(f"{m} {k}" for m in scanned for k in ("pointing game", "relevance mass"))]
            rows = []
            for layer, v in cam["layers"].items():
                name = f"{layer} (used)" if layer == cam.get("used") else layer
                rows.append([name, "x".join(str(d) for d in v.get("size") or []),
                             *(report.summary(((v.get("methods") or {}).get(m) or {}).get(k))
                               for m in scanned for k in ("pointing_game", "relevance_mass"))])
            cam_table = report.table(head, rows, range(2, len(head)))
        return {
            "mask": entry.get("mask", "lesion"),
            "cam_used": cam.get("used"),
            "cam_used_size": "x".join(str(d) for d in cam.get("used_size") or []),
            "cam_methods": cam.get("cam_methods") or [],
            "cam_table": cam_table,
            "cam_advice": cam.get("advice"),
            "table": report.method_table(methods, cols) if methods else None,
            "by_label": report.by_label_table(entry.get("by_label"), [c for c in cols if c[0] != "shortcut_share"]),
            "ranking": entry.get("ranking") or [],
            "figures": report.figures(entry.get("figures"), "localisation", method_figures(entry)),
        }


#: the CAM methods computed at every candidate layer by the localisation check (one forward and backward per layer)
SCAN_METHODS = ("gradcam", "layercam")
#: advice to change the CAM layer when another layer's relevance mass is at least this many times the used one's ...
ADVICE_FACTOR = 1.5
#: ... and higher by at least this much (absolute)
ADVICE_MARGIN = 0.02


def cam_layers(ctx: CheckContext, masks: torch.Tensor, tolerance: float, kind: str) -> dict[str, Any] | None:
    """Which layer the CAM methods used, and how Grad-CAM and LayerCAM localise at every candidate layer.

    Returns None when no CAM method is checked (or the model has no layer to take one at). ``advice`` is a sentence
    when some scanned method at some layer has a mean relevance mass at least :data:`ADVICE_FACTOR` times that of
    Grad-CAM at the used layer and :data:`ADVICE_MARGIN` higher, naming the best (method, layer); else None.
    """
    from saliencekit.errors import SaliencekitError
    from saliencekit.methods.cam import layer_for
    from saliencekit.methods.registry import method_class
    from saliencekit.trust._explaining import summarize
    from saliencekit.trust.localization import cam_layer_scan, cam_stages, output_sizes

    cams = [lb for lb, spec in ctx.specs.items() if getattr(method_class(spec["method"]), "needs_layer", False)]
    if not cams:
        return None
    example = ctx.images[:1]
    try:
        used = layer_for(ctx.model, ctx.layer, example).name
        stages = cam_stages(ctx.model, example)
    except SaliencekitError:
        return None
    sizes = {**dict(stages), **output_sizes(ctx.model, [used], example)}
    layers = [n for n, hw in stages if hw[0] * hw[1] > 1]
    if used not in layers:
        layers.append(used)
    scan = cam_layer_scan(ctx.model, ctx.images, masks, SCAN_METHODS, target=ctx.preds, tolerance=tolerance,
                          layers=layers, batch_size=ctx.settings.batch_size)
    table = {layer: {"size": list(sizes.get(layer, ())),
                     "methods": {m: {k: summarize(v, ctx.seed) for k, v in vals.items()} for m, vals in per.items()}}
             for layer, per in scan.items()}

    def rm(layer: str, m: str) -> float:
        v = table[layer]["methods"][m]["relevance_mass"]["mean"]
        return -math.inf if v is None else float(v)

    def pg(layer: str, m: str) -> float:
        v = table[layer]["methods"][m]["pointing_game"]["mean"]
        return math.nan if v is None else float(v)

    best = {m: max(layers, key=lambda lay, m=m: rm(lay, m)) for m in SCAN_METHODS}
    top_m = max(SCAN_METHODS, key=lambda m: rm(best[m], m))
    top_layer = best[top_m]
    base = rm(used, SCAN_METHODS[0])
    advice = short = None
    if math.isfinite(rm(top_layer, top_m)) and (top_layer, top_m) != (used, SCAN_METHODS[0]) and (
            not math.isfinite(base) or rm(top_layer, top_m) >= max(ADVICE_FACTOR * base, base + ADVICE_MARGIN)):
        size = "x".join(str(d) for d in table[top_layer]["size"])
        used_size = "x".join(str(d) for d in table[used]["size"])
        base_text = "no positive mass" if not math.isfinite(base) else f"{base:.0%} of its positive mass"
        advice = (f"The CAM methods ({', '.join(cams)}) are taken at {used} ({used_size}), where Grad-CAM puts "
                  f"{base_text} on the {kind} (pointing game {pg(used, SCAN_METHODS[0]):.2f}); {top_m} at "
                  f"{top_layer} ({size}) puts {rm(top_layer, top_m):.0%} there (pointing game "
                  f"{pg(top_layer, top_m):.2f}). To use it: --layer {top_layer}")
        if top_m not in {spec["method"] for spec in ctx.specs.values()}:
            advice += f" and add {top_m} to --methods"
        short = f"{top_m} at layer {top_layer} ({size}) localises better ({rm(top_layer, top_m):.0%})"
    return {"used": used, "used_size": list(sizes.get(used, ())), "cam_methods": cams,
            "scan_methods": list(SCAN_METHODS), "layers": table, "best": best, "advice": advice,
            "advice_short": short,
            "rule": f"advice when a scanned method's relevance mass at some layer is >= {ADVICE_FACTOR:g}x Grad-CAM's "
                    f"at the used layer and >= {ADVICE_MARGIN:g} higher"}


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
