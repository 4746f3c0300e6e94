"""Run the trust checks over a run directory (or a model and images) and build ``checks.json``.

:func:`run_checks` computes each chosen method's maps once, runs the selected checks, draws the figures
and returns the plain-data dict documented in ``docs/checks_json.md`` (written to ``OUT/checks.json`` when
``out_dir`` is given). The faithfulness, localisation and complexity runners here are thin loops over the
pure metric functions of :mod:`saliencekit.trust`.

>>> result = run_checks("runs/cxr", methods=["gradient", "gradcam"], out_dir="runs/cxr/checks")  # doctest: +SKIP
>>> result["summary"]["recommended"]  # doctest: +SKIP
['gradcam']
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from saliencekit import _atomic, _layout
from saliencekit._filenames import safe_filename
from saliencekit._threads import torch_threads
from saliencekit.errors import InputError, UnknownNameError
from saliencekit.methods.specs import MethodSpecs, default_methods, engine_specs, parse_methods
from saliencekit.trust._explaining import compute_maps, mean_of, predicted, summarize

CHECKS = ("model_randomization", "data_randomization", "input_invariance", "agreement", "faithfulness",
          "localization", "complexity")
SHORTCUT_MASK = "shortcut"
SHORTCUT_FACTOR = 3.0  # a map "relies on the marker" when its mass share there is >= 3x the marker's area share


def slug(label: str) -> str:
    """A file-name-safe version of a method label (``gradcam++`` -> ``gradcampp``)."""
    return safe_filename(label, plus="p")


@dataclass
class CheckSettings:
    """Tunable costs of the checks (the defaults suit a CPU and 32 images of 256x256).

    Attributes:
        shift: constant of the input-shift check.
        deletion_steps: steps of the deletion / insertion curves.
        road_fractions: shares of pixels removed by ROAD.
        pointing_tolerance: pointing-game tolerance in pixels at 256 pixels a side; scaled to the image size.
        sensitivity_samples: noise draws of max-sensitivity.
        sensitivity_radius: noise bound of max-sensitivity, relative to the image's value range.
        random_label_images: training images used to fit the random-label model.
        random_label_epochs: most epochs of random-label training.
        random_label_accuracy: stop once the random-label model fits this share of its training labels.
        topk: share of pixels of the top-k overlap.
        batch_size: images per engine call.
        similarity_metrics: measures of the randomisation checks (HOG is the slowest).
        randomization_modes: which model-randomisation modes to run: ``"cascading"`` (always; the verdict is
            taken from it) and optionally ``"independent"``; each step recomputes every method's maps.
        costly_images: use only the first ``costly_images`` of the checked images (they are interleaved by
            class, so the subset stays balanced) in the checks of ``costly_checks`` (None: all images).
        costly_checks: the checks the ``costly_images`` cap applies to (by default those that recompute
            maps: on randomised models, shifted inputs, or noisy inputs for max-sensitivity).
    """

    shift: float = 1.0
    deletion_steps: int = 20
    road_fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    pointing_tolerance: float = 15.0
    sensitivity_samples: int = 5
    sensitivity_radius: float = 0.02
    random_label_images: int = 128
    random_label_epochs: int = 40
    random_label_accuracy: float = 0.95
    topk: float = 0.1
    batch_size: int = 16
    similarity_metrics: tuple[str, ...] = ("spearman_abs", "spearman", "ssim", "hog")
    randomization_modes: tuple[str, ...] = ("cascading", "independent")
    costly_images: int | None = None
    costly_checks: tuple[str, ...] = ("model_randomization", "data_randomization", "input_invariance", "complexity")
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for mode in self.randomization_modes:
            if mode not in ("cascading", "independent"):
                raise UnknownNameError("randomisation mode", mode, ["cascading", "independent"])
        if "cascading" not in self.randomization_modes:
            raise InputError(f"randomization_modes must include 'cascading' (the verdict is taken from it), "
                             f"got {tuple(self.randomization_modes)}")
        if self.costly_images is not None and self.costly_images < 2:
            raise InputError(f"costly_images must be at least 2 (the null level compares different images) or None,"
                             f" got {self.costly_images}")
        for c in self.costly_checks:
            if c not in CHECKS:
                raise UnknownNameError("check", c, CHECKS)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "extra"}
        for k in ("road_fractions", "similarity_metrics", "randomization_modes", "costly_checks"):
            d[k] = list(d[k])
        return {**d, **self.extra}


@dataclass
class _Context:
    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor | None
    preds: torch.Tensor
    probs: torch.Tensor
    specs: dict[str, dict[str, Any]]
    maps: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    layer: str | None
    seed: int
    settings: CheckSettings
    out_dir: Path | None
    figures: bool
    progress: bool
    train_data: tuple[torch.Tensor, torch.Tensor] | None = None
    random_model: nn.Module | None = None
    num_classes: int = 2
    factory: Callable[[], nn.Module] | None = None
    train_config: dict[str, Any] = field(default_factory=dict)


def _save(ctx: _Context, fig: Any, rel: str, into: list[str]) -> None:
    try:
        if ctx.figures and ctx.out_dir is not None:
            _atomic.save_figure(fig, ctx.out_dir / rel)
            into.append(rel)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


# ------------------------------------------------------------------------------------------------ checks


def _check_model_randomization(ctx: _Context) -> dict[str, Any]:
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
        _save(ctx, F.plot_randomization_curves(res), f"model_randomization/{mode}_curves.png", figs)
        for label in ctx.specs:
            mfigs: list[str] = []
            if mode == "cascading":
                _save(ctx, F.plot_randomization_strip(res, label), f"model_randomization/strip_{slug(label)}.png",
                      mfigs)
                _save(ctx, F.plot_method_curves(res, label), f"model_randomization/curves_{slug(label)}.png", mfigs)
            d["methods"][label]["figures"] = mfigs
        if mode == "cascading":
            _save(ctx, F.plot_randomization_strip(res), "model_randomization/strip.png", figs)
        out[mode] = d
    out["figures"] = figs
    if "cascading" in out:
        out["ranking"] = _rank({lb: out["cascading"]["methods"][lb].get("value") for lb in ctx.specs}, False)
    else:
        out["ranking"] = []
    return out


def _check_data_randomization(ctx: _Context) -> dict[str, Any]:
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
                             metrics=list(s.similarity_metrics), batch_size=s.batch_size)
    d = res.to_dict()
    figs: list[str] = []
    _save(ctx, F.plot_data_randomization(res), "data_randomization/maps.png", figs)
    for label in ctx.specs:
        d["methods"][label]["figures"] = []
    d["figures"] = figs
    d["ranking"] = _rank({lb: d["methods"][lb]["value"] for lb in ctx.specs}, False)
    return d


def _check_input_invariance(ctx: _Context) -> dict[str, Any]:
    from saliencekit.trust import figures as F
    from saliencekit.trust.invariance import input_invariance

    res = input_invariance(ctx.model, ctx.images, ctx.specs, shift=ctx.settings.shift, target=ctx.preds,
                           layer=ctx.layer, batch_size=ctx.settings.batch_size, seed=ctx.seed)
    d = res.to_dict()
    figs: list[str] = []
    _save(ctx, F.plot_invariance_maps(res), "input_invariance/maps.png", figs)
    for part in ("compensated", "uncompensated"):
        for label in ctx.specs:
            d[part]["methods"][label]["figures"] = list(figs)
    d["figures"] = figs
    return d


def _check_agreement(ctx: _Context) -> dict[str, Any]:
    from saliencekit.trust import figures as F
    from saliencekit.trust.method_agreement import agreement

    res = agreement(ctx.maps, topk=ctx.settings.topk, seed=ctx.seed)
    d = res.to_dict()
    figs: list[str] = []
    _save(ctx, F.plot_agreement(res), "agreement/matrix.png", figs)
    d["figures"] = figs
    return d


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


def _check_faithfulness(ctx: _Context) -> dict[str, Any]:
    from saliencekit.trust import figures as F

    s = ctx.settings
    methods: dict[str, Any] = {}
    all_curves: dict[str, Any] = {}
    figs: list[str] = []
    for label in tqdm(ctx.specs, desc="faithfulness", disable=not ctx.progress, leave=False):
        curves = faithfulness_curves(ctx.model, ctx.images, ctx.maps[label], ctx.preds, s.deletion_steps,
                                     s.road_fractions, ctx.seed, batch_size=max(s.batch_size, 32))
        all_curves[label] = curves
        mfigs: list[str] = []
        _save(ctx, F.plot_faithfulness_curves({label: curves}, title=f"Faithfulness of {label}"),
              f"faithfulness/curves_{slug(label)}.png", mfigs)
        methods[label] = {f"{k}_auc": summarize(c.auc, ctx.seed) for k, c in curves.items()}
        methods[label]["curves"] = {k: {"fractions": c.fractions.tolist(),
                                        "mean": [mean_of(col) for col in c.scores.T]} for k, c in curves.items()}
        methods[label]["figures"] = mfigs
    _save(ctx, F.plot_faithfulness_curves(all_curves, kinds=["deletion", "insertion"]), "faithfulness/curves.png",
          figs)
    score = {lb: _get_mean(m, "insertion_auc") - _get_mean(m, "deletion_auc") for lb, m in methods.items()}
    return {"methods": methods, "ranking": _rank(score, True),
            "ranking_by": "insertion AUC - deletion AUC (higher is better)",
            "settings": {"deletion_steps": s.deletion_steps, "deletion_baseline": "zero",
                         "insertion_baseline": "blur", "road_fractions": list(s.road_fractions),
                         "target": "predicted class", "pixel_order": "map value, highest first (signed maps as is)"},
            "figures": figs}


def _get_mean(d: Mapping[str, Any], key: str) -> float:
    v = d.get(key, {}) or {}
    m = v.get("mean") if isinstance(v, Mapping) else v
    return float("nan") if m is None else float(m)


def _rank(scores: Mapping[str, float | None], higher_is_better: bool) -> list[str]:
    from saliencekit.trust.stats import rank_methods

    clean = {k: (None if v is None or not math.isfinite(float(v)) else float(v)) for k, v in scores.items()}
    return rank_methods(clean, higher_is_better=higher_is_better)


def _check_localization(ctx: _Context) -> dict[str, Any]:
    from saliencekit.trust import figures as F
    from saliencekit.trust.localization import (
        energy_pointing_game,
        mask_share,
        pointing_game,
        relevance_mass,
        relevance_rank,
    )

    kind = _lesion_kind(ctx.masks)
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
    _save(ctx, F.plot_metric_bars({lb: methods[lb] for lb in methods},
                                  ["pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank"],
                                  f"Localisation against the {kind!r} masks (mean, 95% CI)"),
          "localization/metrics.png", figs)
    out = {"mask": kind, "pointing_tolerance_pixels": tol,
           "mask_area_share": summarize(_area_share(masks), ctx.seed),
           "methods": methods,
           "ranking": _rank({lb: _get_mean(m, "relevance_mass") for lb, m in methods.items()}, True),
           "ranking_by": "relevance mass (higher is better)", "figures": figs}
    if shortcut is not None:
        out["shortcut_area_share"] = summarize(_area_share(shortcut), ctx.seed)
    return out


def _area_share(masks: torch.Tensor) -> torch.Tensor:
    m = (masks > 0.5).flatten(1).double()
    share = m.mean(1)
    return torch.where(m.sum(1) > 0, share, torch.full_like(share, math.nan))


def _check_complexity(ctx: _Context) -> dict[str, Any]:
    from saliencekit.trust import figures as F
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
    _save(ctx, F.plot_metric_bars(methods, ["sparseness", "complexity", "max_sensitivity"],
                                  "Complexity and robustness (mean, 95% CI)"), "complexity/metrics.png", figs)
    return {"methods": methods,
            "ranking": _rank({lb: _get_mean(m, "max_sensitivity") for lb, m in methods.items()}, False),
            "ranking_by": "max-sensitivity (lower is more robust)",
            "settings": {"samples": s.sensitivity_samples, "radius": s.sensitivity_radius},
            "figures": figs}


_RUNNERS: dict[str, Callable[[_Context], dict[str, Any]]] = {
    "model_randomization": _check_model_randomization,
    "data_randomization": _check_data_randomization,
    "input_invariance": _check_input_invariance,
    "agreement": _check_agreement,
    "faithfulness": _check_faithfulness,
    "localization": _check_localization,
    "complexity": _check_complexity,
}


def _lesion_kind(masks: Mapping[str, torch.Tensor]) -> str | None:
    for kind in ("lesion", *sorted(masks)):
        if kind != SHORTCUT_MASK and kind in masks and bool((masks[kind] > 0.5).flatten(1).any(1).any()):
            return kind
    return None


# ---------------------------------------------------------------------------------------------- summary


def _summary(checks: Mapping[str, Any], specs: Mapping[str, Any], masks: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    methods: dict[str, dict[str, Any]] = {}
    for label in specs:
        m: dict[str, Any] = {}
        if "model_randomization" in checks and "cascading" in checks["model_randomization"]:
            m["model_randomization"] = checks["model_randomization"]["cascading"]["methods"][label].get("passed")
        if "data_randomization" in checks:
            m["data_randomization"] = checks["data_randomization"]["methods"][label].get("passed")
        if "input_invariance" in checks:
            m["input_invariance"] = checks["input_invariance"]["compensated"]["methods"][label]["invariant"]
        if "faithfulness" in checks:
            f = checks["faithfulness"]["methods"][label]
            m["deletion_auc"] = _get_mean(f, "deletion_auc")
            m["insertion_auc"] = _get_mean(f, "insertion_auc")
        if "localization" in checks:
            loc = checks["localization"]["methods"][label]
            m["relevance_mass"] = _get_mean(loc, "relevance_mass")
            m["pointing_game"] = _get_mean(loc, "pointing_game")
            if loc.get("shortcut_share"):
                m["shortcut_share"] = _get_mean(loc, "shortcut_share")
        if "complexity" in checks:
            m["sparseness"] = _get_mean(checks["complexity"]["methods"][label], "sparseness")
        methods[label] = m

    sane = [lb for lb, m in methods.items()
            if m.get("model_randomization") is not False and m.get("data_randomization") is not False]

    def quality(lb: str) -> float:
        m = methods[lb]
        if "relevance_mass" in m and math.isfinite(m["relevance_mass"]):
            return m["relevance_mass"]
        if "insertion_auc" in m:
            return m["insertion_auc"] - m["deletion_auc"]
        return 0.0

    recommended = sorted(sane, key=lambda lb: -quality(lb) if math.isfinite(quality(lb)) else math.inf)
    reasons: dict[str, str] = {}
    for lb in recommended:
        m = methods[lb]
        bits = []
        if m.get("model_randomization"):
            bits.append("its maps vanish when the weights are randomised")
        if m.get("data_randomization"):
            bits.append("differ from a random-label model's")
        if "relevance_mass" in m and math.isfinite(m["relevance_mass"]):
            bits.append(f"puts {m['relevance_mass']:.0%} of its mass on the lesion")
        if "insertion_auc" in m:
            bits.append(f"insertion AUC {m['insertion_auc']:.2f}, deletion AUC {m['deletion_auc']:.2f}")
        reasons[lb] = ("Passes the sanity checks that were run: " + "; ".join(bits) + ".") if bits else \
            "No sanity check failed (none was run)."
    not_recommended = {lb: "; ".join(
        f"failed {c.replace('_', ' ')}" for c in ("model_randomization", "data_randomization")
        if methods[lb].get(c) is False) for lb in methods if lb not in sane}
    out: dict[str, Any] = {"methods": methods, "recommended": recommended, "reasons": reasons,
                           "not_recommended": not_recommended,
                           "recommendation_rule": "methods that fail no randomisation check, best first by relevance "
                                                  "mass (when masks exist) else insertion AUC - deletion AUC"}
    out["shortcut"] = _shortcut_summary(checks, methods, recommended, masks)
    return out


def _shortcut_summary(checks: Mapping[str, Any], methods: Mapping[str, Any], recommended: Sequence[str],
                      masks: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    sc = masks.get(SHORTCUT_MASK)
    present = sc is not None and bool((sc > 0.5).flatten(1).any(1).any())
    if not present:
        return {"present_in_data": False, "detected": None, "marker_share": None, "lesion_share": None,
                "evidence": "no shortcut masks in the data"}
    loc = checks.get("localization")
    if loc is None:
        return {"present_in_data": True, "detected": None, "marker_share": None, "lesion_share": None,
                "evidence": "the localisation check was not run"}
    sane = [lb for lb in recommended if loc["methods"][lb].get("shortcut_share")]
    candidates = sane or [lb for lb in methods if loc["methods"][lb].get("shortcut_share")]
    if not candidates:
        return {"present_in_data": True, "detected": None, "marker_share": None, "lesion_share": None,
                "evidence": "no map could be compared with the marker masks"}
    by_method = {lb: _get_mean(loc["methods"][lb], "shortcut_share") for lb in candidates}
    lb = max(candidates, key=lambda k: by_method[k] if math.isfinite(by_method[k]) else -1.0)
    marker = by_method[lb]
    lesion = _get_mean(loc["methods"][lb], "lesion_share")
    area = _get_mean(loc, "shortcut_area_share")
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


# ----------------------------------------------------------------------------------------------- driver


def _subset(ctx: _Context, n: int) -> _Context:
    """The context restricted to its first ``n`` images (the checked images are interleaved by class)."""
    return dataclasses.replace(
        ctx, images=ctx.images[:n], labels=None if ctx.labels is None else ctx.labels[:n], preds=ctx.preds[:n],
        probs=ctx.probs[:n], maps={k: v[:n] for k, v in ctx.maps.items()},
        masks={k: v[:n] for k, v in ctx.masks.items()})


def _pick(labels: torch.Tensor | None, n_total: int, n: int, seed: int) -> torch.Tensor:
    """``n`` indices, classes interleaved (balanced), order reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_total, generator=gen)
    if labels is None:
        return perm[:n]
    by_class = [perm[labels[perm] == c] for c in torch.unique(labels).tolist()]
    order = [int(g[i]) for i in range(max(len(g) for g in by_class)) for g in by_class if i < len(g)]
    return torch.tensor(order[:n], dtype=torch.long)


def run_checks(
    run: Any = None,
    *,
    model: nn.Module | None = None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    files: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    train_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    random_model: nn.Module | None = None,
    methods: MethodSpecs | None = None,
    checks: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    n_images: int = 32,
    seed: int = 0,
    device: str | torch.device = "auto",
    layer: str | None = None,
    settings: CheckSettings | None = None,
    figures: bool = True,
    progress: bool = True,
    command: str | None = None,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Run the trust checks and return (and, with ``out_dir``, write) the ``checks.json`` dict.

    Either ``run`` (a run directory path or a :class:`saliencekit.run.Run`: its test images, masks,
    training images and model are used) or ``model`` + ``images`` (+ optional ``labels``, ``masks``,
    ``train_data`` or ``random_model`` for data randomisation).

    Args:
        run: run directory or Run.
        model: the classifier (never modified) when no run is given.
        images: (N, C, H, W) preprocessed images when no run is given.
        labels: true labels (N,), optional.
        masks: kind -> (N, H, W) ground-truth masks (``"lesion"``; ``"shortcut"`` for a planted marker).
        files: a name per image for the JSON.
        class_names: class names in label order.
        train_data: (images, labels) to fit the random-label model on (data randomisation).
        random_model: an already trained random-label model (data randomisation).
        methods: names or ``{label: {"method": name, **options}}`` (default :func:`default_methods`).
        checks: names from :data:`CHECKS` (default: every check that applies).
        out_dir: where to write ``checks.json`` and the figures (None: nothing is written).
        n_images: how many images (balanced over classes, chosen with ``seed``).
        seed: seeds the image choice, randomisation, nulls, bootstrap and noise.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... (for a run directory; a given model stays where it is).
        layer: CAM layer (default: the engine's choice).
        settings: costs of the checks (:class:`CheckSettings`).
        figures: draw the figures (needs ``out_dir``).
        progress: show progress bars.
        command: the command line recorded in the JSON.
        num_threads: CPU threads for torch during the checks (None: torch's default); the previous count is
            restored afterwards.

    Raises:
        UnknownNameError: an unknown check or method name.
        InputError: neither a run nor a model and images, a check that cannot run (e.g. localization
            asked for without masks), or ``num_threads`` not a positive integer.
    """
    with torch_threads(num_threads):
        return _run_checks(run, model=model, images=images, labels=labels, masks=masks, files=files,
                           class_names=class_names, train_data=train_data, random_model=random_model, methods=methods,
                           checks=checks, out_dir=out_dir, n_images=n_images, seed=seed, device=device, layer=layer,
                           settings=settings, figures=figures, progress=progress, command=command)


def _run_checks(
    run: Any,
    *,
    model: nn.Module | None,
    images: torch.Tensor | None,
    labels: torch.Tensor | None,
    masks: Mapping[str, torch.Tensor] | None,
    files: Sequence[str] | None,
    class_names: Sequence[str] | None,
    train_data: tuple[torch.Tensor, torch.Tensor] | None,
    random_model: nn.Module | None,
    methods: MethodSpecs | None,
    checks: Sequence[str] | None,
    out_dir: str | Path | None,
    n_images: int,
    seed: int,
    device: str | torch.device,
    layer: str | None,
    settings: CheckSettings | None,
    figures: bool,
    progress: bool,
    command: str | None,
) -> dict[str, Any]:
    """:func:`run_checks` under its thread count."""
    from saliencekit import __version__
    from saliencekit.methods.targets import class_probabilities

    settings = settings or CheckSettings()
    if n_images < 2:
        raise InputError(f"n_images must be at least 2 (the null level compares different images), got {n_images}")
    if checks is not None:
        for c in checks:
            if c not in CHECKS:
                raise UnknownNameError("check", c, CHECKS)
    specs = parse_methods(methods if methods is not None else default_methods())
    masks = dict(masks or {})
    run_dir = None
    factory: Callable[[], nn.Module] | None = None
    train_config: dict[str, Any] = {}
    if run is not None:
        from saliencekit.device import resolve_device
        from saliencekit.run import Run, load_run

        if not isinstance(run, Run):
            run = load_run(run, device=resolve_device(str(device)))
        run_dir = str(Path(run.path).resolve())
        model = run.model
        info = run.info

        def factory() -> nn.Module:
            # The same architecture with dropout off (when the factory has that option), so that the random-label
            # model can memorise its labels in an affordable number of epochs; dropout has no weights.
            from saliencekit import models

            try:
                return models.create(info.arch, **{**info.arch_kwargs, "dropout": 0.0})
            except TypeError:
                return models.create(info.arch, **info.arch_kwargs)

        train_config = dict(run.config.get("config", {}))
        test = run.dataset("test")
        all_labels = test.labels()
        pick = _pick(all_labels, len(test), min(n_images, len(test)), seed).tolist()
        images = torch.stack([test.image(i) for i in pick]).to(run.device)
        labels = all_labels[pick]
        files = [test.sample(i).relpath for i in pick]
        class_names = list(run.class_names)
        for kind in run.index.mask_kinds:
            masks[kind] = torch.stack([test.mask(i, kind) for i in pick]) > 0.5
        wanted = checks is None or "data_randomization" in checks
        if train_data is None and random_model is None and wanted:
            tr = run.dataset("train")
            train_data = (tr.images(), tr.labels())
    if model is None or images is None:
        raise InputError("run_checks needs a run directory (or Run), or both model= and images=")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise InputError(f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if run is None and images.shape[0] > n_images:
        pick_t = _pick(labels, images.shape[0], n_images, seed)
        images = images[pick_t]
        labels = labels[pick_t] if labels is not None else None
        masks = {k: v[pick_t] for k, v in masks.items()}
        files = [files[i] for i in pick_t.tolist()] if files is not None else None
    param = next(model.parameters(), None)
    if param is not None:
        images = images.to(param.device)
    masks = {k: (v > 0.5).cpu() for k, v in masks.items()}

    logits, preds = predicted(model, images)
    probs = class_probabilities(logits, preds)
    num_classes = 2 if logits.shape[1] == 1 else logits.shape[1]

    skipped: dict[str, str] = {}
    applicable = {
        "model_randomization": None,
        "data_randomization": None if (train_data is not None or random_model is not None)
        else "no training images (give a run directory, train_data= or random_model=)",
        "input_invariance": None,
        "agreement": None if len(specs) >= 2 else "needs at least two methods",
        "faithfulness": None,
        "localization": None if _lesion_kind(masks) is not None else "no ground-truth masks for these images",
        "complexity": None,
    }
    chosen = list(checks) if checks is not None else list(CHECKS)
    todo = []
    for c in chosen:
        if applicable[c] is None:
            todo.append(c)
        else:
            skipped[c] = applicable[c]  # type: ignore[assignment]
    out_path = Path(out_dir) if out_dir is not None else None
    ctx = _Context(model=model, images=images, labels=labels, preds=preds, probs=probs, specs=specs, maps={},
                   masks=masks, layer=layer, seed=seed, settings=settings, out_dir=out_path, figures=figures,
                   progress=progress, train_data=train_data, random_model=random_model, num_classes=num_classes,
                   factory=factory, train_config=train_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ctx.maps = compute_maps(model, images, specs, preds, layer, settings.batch_size, progress, desc="maps")
        results: dict[str, Any] = {}
        bar = tqdm(todo, desc="checks", disable=not progress)
        for name in bar:
            bar.set_postfix(check=name, refresh=True)
            t0 = time.perf_counter()
            cap = settings.costly_images
            sub = ctx
            if cap is not None and name in settings.costly_checks and cap < images.shape[0]:
                sub = _subset(ctx, cap)
            try:
                results[name] = _RUNNERS[name](sub)
                results[name]["images"] = int(sub.images.shape[0])
            except InputError as exc:  # a check that cannot apply to this model (e.g. no Conv2d/Linear first layer)
                skipped[name] = f"could not run: {exc}"
                continue
            results[name]["seconds"] = round(time.perf_counter() - t0, 3)

    image_rows = []
    for i in range(images.shape[0]):
        y = None if labels is None else int(labels[i])
        image_rows.append({
            "file": files[i] if files is not None else f"image_{i}",
            "label": y,
            "label_name": class_names[y] if (class_names is not None and y is not None) else None,
            "prediction": int(preds[i]),
            "prediction_name": class_names[int(preds[i])] if class_names is not None else None,
            "probability": float(probs[i]),
        })
    result = {
        "saliencekit_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command or "",
        "run_dir": run_dir,
        "settings": {"images": int(images.shape[0]), "seed": seed, "device": str(images.device),
                     "num_threads": torch.get_num_threads(),
                     "checks": [c for c in todo if c in results],
                     "skipped": skipped, "layer": layer, **settings.to_dict()},
        "methods": {lb: {"method": s["method"], "options": dict(s["options"])} for lb, s in specs.items()},
        "images": image_rows,
        "checks": results,
    }
    result["summary"] = _summary(results, specs, masks)
    if out_path is not None:
        _atomic.write_json(out_path / "checks.json", result)
    return result


__all__ = ["CHECKS", "CheckSettings", "default_methods", "faithfulness_curves", "run_checks"]
