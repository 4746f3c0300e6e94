"""Sanity checks by randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

- **Model parameter randomisation**: on a deep copy of the model, re-initialise the layers from the
  output down to the input, cumulatively (*cascading*) or one at a time (*independent*); after every
  step recompute each method's maps and compare them with the original maps (Spearman of absolute
  values, signed Spearman, SSIM, HOG correlation). A method whose maps hardly change while the
  network it explains has been destroyed cannot be explaining that network.
- **Data randomisation**: the same architecture trained on permuted labels (so it can only memorise);
  its maps on the same images are compared with the true model's.

"Layers" are the modules that own parameters (convolutions, linear layers); a batch-norm (or other
normalisation) module is grouped with the layer before it. A layer is re-initialised with its own
``reset_parameters()`` (PyTorch's default initialisation) under a seeded RNG; modules without that
method get a normal(0, 0.01) init of their parameters.

**Verdict** (cascading, and data randomisation): three levels, *passes* / *partly* / *fails*, from two
readings (signed and absolute Spearman) of how much of the image-specific similarity survives once the top half of
the layers is random, measured against a reference level (the larger of the smoothed-noise null and the
similarity between the original maps of *other* images). Two controls go through the same steps: an edge detector
of the input must fail, a random map keyed by the model's weights must pass; if either does not, the check gives
no verdict. The rule, its edge cases and its rationale are in docs/checks.md ("Model parameter randomisation").
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from saliencekit.errors import InputError
from saliencekit.trust._explaining import (
    MethodSpecs,
    compute_maps,
    mean_of,
    normalize_specs,
    predicted,
    summarize,
    to_list,
)

METRICS = ("spearman_abs", "spearman", "ssim", "hog")
READINGS = ("spearman", "spearman_abs")
"""The verdict's two readings: signed and absolute Spearman (always computed, whatever ``metrics`` says)."""
READING_NAMES = {"spearman": "signed", "spearman_abs": "|map|"}
PASS_METRIC = "spearman_abs"
"""The measure whose similarity is written as a verdict's ``value`` (and ranks the methods)."""
RETAINED_LIMIT = 0.5
"""A reading is destroyed when at most this share of its image-specific similarity survives."""
SHARED_LIMIT = 0.95
"""No verdict when the reference level reaches this: maps of different images are nearly identical."""
LEVELS = ("passes", "partly", "fails")
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


@dataclass
class Reading:
    """One reading (signed or absolute Spearman) of a randomisation verdict; see docs/checks.md.

    Attributes:
        metric: ``"spearman"`` or ``"spearman_abs"``.
        similarity: mean similarity between the original and the randomised maps (constant randomised maps
            counted at the reference level).
        noise: the smoothed-noise null (mean).
        other_images: mean similarity between the original maps of different images (NaN when unknown).
        reference: ``max(noise, other_images)``.
        retained: ``(similarity - reference) / (1 - reference)``, summarised over the images (mean, CI).
        threshold: the similarity at which ``retained`` reaches :data:`RETAINED_LIMIT`.
        destroyed: ``retained <= RETAINED_LIMIT``; None when the reading gives no decision.
    """

    metric: str
    similarity: float
    noise: float
    other_images: float
    reference: float
    retained: dict[str, Any]
    threshold: float
    destroyed: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "similarity": _f(self.similarity), "noise": _f(self.noise),
                "other_images": _f(self.other_images), "reference": _f(self.reference),
                "reference_from": "other_images" if _f(self.other_images) is not None
                and self.other_images >= self.noise else "noise",
                "retained": self.retained, "threshold": _f(self.threshold), "destroyed": self.destroyed}


def _f(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


@dataclass
class Verdict:
    """A randomisation verdict: ``level`` (passes / partly / fails, None for no verdict) with a one-line reason.

    ``passed`` is True only for *passes* (None without a verdict); ``value`` / ``threshold`` are the absolute
    reading's similarity and its threshold (NaN without them).
    """

    level: str | None
    reason: str
    readings: dict[str, Reading] = field(default_factory=dict)
    borderline: bool = False

    @property
    def passed(self) -> bool | None:
        return None if self.level is None else self.level == "passes"

    @property
    def value(self) -> float:
        r = self.readings.get(PASS_METRIC)
        return r.similarity if r is not None else float("nan")

    @property
    def threshold(self) -> float:
        r = self.readings.get(PASS_METRIC)
        return r.threshold if r is not None else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "passed": self.passed, "reason": self.reason, "value": _f(self.value),
                "threshold": _f(self.threshold), "borderline": self.borderline,
                "readings": {k: r.to_dict() for k, r in self.readings.items()}}


def parameter_layers(model: nn.Module) -> list[list[str]]:
    """Groups of module names to randomise together, input first.

    Every module owning parameters directly is a layer; a normalisation module joins the group of
    the layer registered before it (a conv + batch-norm pair is one step).

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    >>> parameter_layers(net)
    [['0', '1'], ['4']]
    """
    groups: list[list[str]] = []
    for name, module in model.named_modules():
        if not name or not any(True for _ in module.parameters(recurse=False)):
            continue
        if isinstance(module, _NORM_TYPES) and groups:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


def randomize_layers(model: nn.Module, names: Sequence[str], seed: int = 0) -> None:
    """Re-initialise the parameters of the named modules of ``model`` IN PLACE (use it on a copy).

    Batch-norm running statistics are reset too. Each module gets its own seed derived from ``seed``
    and its name, so the result does not depend on the order of calls.
    """
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            raise InputError(f"no module named {name!r} in {model.__class__.__name__}; "
                             f"layers: {', '.join(n for g in parameter_layers(model) for n in g)}")
        module = modules[name]
        gen_seed = (seed * 1_000_003 + sum(ord(c) * 31**i for i, c in enumerate(name))) % (2**31)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(gen_seed)
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                for p in module.parameters(recurse=False):
                    p.normal_(0.0, 0.01)
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()


def _similarities(orig: dict[str, torch.Tensor], new: dict[str, torch.Tensor],
                  metrics: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    from saliencekit.trust.similarity import similarity_all

    return {label: {k: v.cpu().numpy() for k, v in similarity_all(orig[label], new[label], metrics).items()}
            for label in orig}


def _constant(maps: torch.Tensor) -> np.ndarray:
    """(N,) bool: maps without any variation (e.g. a Grad-CAM map that the ReLU turned to all zeros)."""
    flat = maps.reshape(maps.shape[0], -1)
    return (flat.amax(1) == flat.amin(1)).cpu().numpy()


def _with_readings(metrics: Sequence[str]) -> list[str]:
    """``metrics`` plus the verdict's readings (signed and absolute Spearman) where missing."""
    return list(dict.fromkeys([*metrics, *READINGS]))


def judge(similarity: Mapping[str, np.ndarray], constant: np.ndarray, noise: Mapping[str, np.ndarray],
          other_images: Mapping[str, np.ndarray], what: str, depends: str = "the weights",
          seed: int = 0) -> Verdict:
    """The three-level randomisation verdict of one method (docs/checks.md, "Model parameter randomisation").

    Args:
        similarity: reading (``"spearman"``, ``"spearman_abs"``) -> per-image similarity (N,) between the original
            and the randomised maps (NaN where undefined).
        constant: (N,) bool, the randomised map of that image is constant (its NaN similarity then counts at the
            reference level: nothing of the original map is left).
        noise: reading -> similarities of unrelated smoothed-noise maps (the noise null).
        other_images: reading -> similarities between the original maps of different images (may be empty).
        what: what was randomised, for the reason (e.g. "the top 5 of 10 layers (down to features.conv6)").
        depends: what the maps depend on when they pass, for the reason.
        seed: seed of the bootstrap interval of the retained shares.

    Returns:
        A :class:`Verdict`: *passes* when both readings are destroyed (at most :data:`RETAINED_LIMIT` of the
        image-specific similarity retained), *partly* when one is, *fails* when neither is; no verdict (level None)
        when a reading cannot be computed or its reference level reaches :data:`SHARED_LIMIT`.
    """
    readings: dict[str, Reading] = {}
    problems: list[str] = []
    n_const = 0
    borderline = False
    for metric in READINGS:
        noise_m = mean_of(noise[metric])
        other = mean_of(other_images[metric]) if metric in other_images else float("nan")
        ref = max(noise_m, other) if math.isfinite(other) else noise_m
        vals = np.asarray(similarity[metric], dtype=np.float64).copy()
        fill = np.isnan(vals) & np.asarray(constant, dtype=bool)
        n_const = max(n_const, int(fill.sum()))
        vals[fill] = ref
        mean_s = mean_of(vals)
        ok_ref = math.isfinite(ref) and ref < SHARED_LIMIT
        retained_vals = (vals - ref) / (1.0 - ref) if ok_ref else np.full_like(vals, np.nan)
        retained = summarize(retained_vals, seed)
        threshold = ref + RETAINED_LIMIT * (1.0 - ref) if ok_ref else float("nan")
        destroyed: bool | None = None
        if not math.isfinite(mean_s):
            problems.append(f"no {READING_NAMES[metric]} similarity could be computed (every original map is "
                            "constant)")
        elif not ok_ref:
            problems.append(f"the maps of different images are nearly identical ({READING_NAMES[metric]} reference "
                            f"level {ref:.2f} >= {SHARED_LIMIT}), so image-specific content cannot be told apart")
        else:
            destroyed = bool(retained["mean"] <= RETAINED_LIMIT)
            lo, hi = retained["ci_low"], retained["ci_high"]
            if lo is not None and hi is not None and lo < hi and lo <= RETAINED_LIMIT <= hi:
                borderline = True
        readings[metric] = Reading(metric, mean_s, noise_m, other, ref, retained, threshold, destroyed)
    if problems:
        return Verdict(None, "no verdict: " + "; ".join(problems), readings)
    sg, ab = readings["spearman"], readings["spearman_abs"]
    kept = (f"the maps keep {_share(sg.retained['mean'])} (signed) and {_share(ab.retained['mean'])} (|map|) of their "
            f"image-specific similarity (Spearman {sg.similarity:.2f} / {ab.similarity:.2f}; reference levels "
            f"{sg.reference:.2f} / {ab.reference:.2f}; destroyed at <= {RETAINED_LIMIT:.0%} kept)")
    if sg.destroyed and ab.destroyed:
        level, end = "passes", f"the maps depend on {depends}"
    elif sg.destroyed:
        level, end = "partly", (f"the sign pattern depends on {depends}, but the magnitudes mostly survive (they "
                                "trace the input)")
    elif ab.destroyed:
        level, end = "partly", f"the magnitudes depend on {depends}, but the sign pattern mostly survives"
    else:
        level, end = "fails", f"the maps barely depend on {depends}"
    reason = f"{level}: after randomising {what} {kept}: {end}"
    if n_const:
        reason += f" ({n_const} constant randomised map(s) counted at the reference level)"
    if borderline:
        n = max(int(r.retained["n"]) for r in readings.values())
        reason += (f"; borderline: the 95% interval of a retained share contains {RETAINED_LIMIT:.0%} at {n} "
                   "images")
    return Verdict(level, reason, readings, borderline)


def _share(retained: float) -> str:
    """A retained share for a reason: negative values (below the reference level) read as 0%."""
    return f"{max(0.0, retained):.0%}"


def judge_controls(verdicts: Mapping[str, Verdict]) -> tuple[bool, str]:
    """Whether the controls came out as expected (negative fails, positive passes), with a sentence."""
    from saliencekit.trust._controls import EXPECTED

    bad = [f"{label} {'gave no verdict' if v.level is None else v.level} (expected: {EXPECTED[label]})"
           for label, v in verdicts.items() if v.level != EXPECTED[label]]
    if bad:
        return False, "the controls did not come out as expected: " + "; ".join(bad)
    return True, "controls as expected: " + ", ".join(f"{label} {v.level}" for label, v in verdicts.items())


def _withhold(verdict: Verdict, controls_reason: str) -> Verdict:
    """The verdict replaced by 'no verdict' because the controls failed (its readings kept)."""
    would = verdict.level or "no verdict"
    return Verdict(None, f"no verdict: {controls_reason} (the maps alone would read: {would})", verdict.readings,
                   verdict.borderline)


def null_levels(shape: tuple[int, int], n: int, seed: int = 0,
                metrics: Sequence[str] = METRICS) -> dict[str, np.ndarray]:
    """Similarity between ``n`` pairs of unrelated random maps (the level a destroyed map should fall to).

    Deterministic in its arguments, so it is computed once per (shape, n, seed, metrics) and reused (the
    cascading, independent and data randomisation checks share it); the caller gets its own copies.
    """
    cached = _null_levels_cached((int(shape[0]), int(shape[1])), max(n, 8), seed, tuple(metrics))
    return {k: v.copy() for k, v in cached.items()}


@functools.lru_cache(maxsize=8)
def _null_levels_cached(shape: tuple[int, int], n: int, seed: int, metrics: tuple[str, ...]) -> dict[str, np.ndarray]:
    from saliencekit.trust.similarity import null_level

    return {k: v.cpu().numpy() for k, v in null_level(shape, n=n, generator=seed, metrics=metrics).items()}


def image_null_levels(maps: Mapping[str, torch.Tensor], metrics: Sequence[str] = METRICS,
                      image_index: torch.Tensor | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per method: similarity between the original maps of different images (image ``i`` vs ``i - 1``; with
    ``image_index``, the image of each map, vs the nearest earlier map of another image)."""
    from saliencekit.trust.similarity import null_level_from_maps

    distinct = None if image_index is None else len(set(image_index.tolist()))
    return {label: {k: v.cpu().numpy() for k, v in null_level_from_maps(m, metrics, image_index).items()}
            for label, m in maps.items() if m.shape[0] >= 2 and (distinct is None or distinct >= 2)}


@dataclass
class RandomizationResult:
    """Result of a model-parameter randomisation check.

    Attributes:
        mode: ``"cascading"`` or ``"independent"``.
        steps: cascading: ``["original", top layer, ...]`` (layers randomised cumulatively, output first);
            independent: the layer randomised alone at each step.
        layers: the module names randomised at each step (after ``"original"`` for cascading).
        methods: label -> ``{"method": name, "options": {...}}``.
        metrics: similarity measures.
        similarity: label -> metric -> array (steps, N) of per-image similarity with the original maps.
        null: metric -> per-pair similarity of unrelated random maps.
        null_images: label -> metric -> similarity between the original maps of different images.
        verdicts: label -> :class:`Verdict` (cascading only; level None for every method when the controls did
            not come out as expected).
        controls: control label (``control_edges``, ``control_random``) -> reading -> array (steps, N).
        control_null_images: control label -> reading -> similarity between its maps of different images.
        control_verdicts: control label -> :class:`Verdict` (cascading only).
        controls_ok: whether the controls came out as expected (None for the independent mode).
        controls_reason: one sentence on the controls.
        strip: label -> array (steps, k, H, W) of the maps of the first ``k`` images at every step.
        strip_images: the first ``k`` images (k, C, H, W) for display.
        half_step: index into ``steps`` where the top half of the layers is randomised.

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 2))
    >>> res = model_randomization(net, torch.randn(4, 1, 16, 16), ["gradient"], metrics=["spearman_abs"],
    ...                           progress=False)
    >>> res.steps
    ['original', '3', '0']
    """

    mode: str
    steps: list[str]
    layers: list[list[str]]
    methods: dict[str, dict[str, Any]]
    metrics: list[str]
    similarity: dict[str, dict[str, np.ndarray]]
    null: dict[str, np.ndarray]
    null_images: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    controls: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    control_null_images: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    control_verdicts: dict[str, Verdict] = field(default_factory=dict)
    controls_ok: bool | None = None
    controls_reason: str = ""
    strip: dict[str, np.ndarray] = field(default_factory=dict)
    strip_images: np.ndarray | None = None
    half_step: int = 0
    seed: int = 0

    def curve(self, label: str, metric: str = PASS_METRIC) -> np.ndarray:
        """Mean similarity per step (NaN-skipping)."""
        return np.array([mean_of(row) for row in self.similarity[label][metric]])

    def curve_ci(self, label: str, metric: str = PASS_METRIC) -> list[list[float]]:
        """95% bootstrap CI per step."""
        out = []
        for row in self.similarity[label][metric]:
            s = summarize(row, seed=self.seed)
            out.append([s["ci_low"], s["ci_high"]])
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the checks.json layout (figures are added by the runner)."""
        methods = {}
        for label in self.methods:
            entry: dict[str, Any] = {
                "curves": {m: to_list(self.curve(label, m)) for m in self.metrics},
                "curves_ci": {m: self.curve_ci(label, m) for m in self.metrics},
                "values": {m: [to_list(row) for row in self.similarity[label][m]] for m in self.metrics},
            }
            if label in self.null_images:
                entry["null_images"] = {m: summarize(v, self.seed) for m, v in self.null_images[label].items()}
            if label in self.verdicts:
                entry.update(self.verdicts[label].to_dict())
            methods[label] = entry
        out: dict[str, Any] = {
            "steps": list(self.steps),
            "layers": [list(g) for g in self.layers],
            "null": {m: summarize(v, self.seed) for m, v in self.null.items()},
            "methods": methods,
        }
        out["controls"] = _controls_dict(self.controls, self.control_null_images, self.control_verdicts, self.seed,
                                         curves=True)
        if self.mode == "cascading":
            out["half_step"] = self.half_step
            out["controls_ok"] = self.controls_ok
            out["controls_reason"] = self.controls_reason
            out["retained_limit"] = RETAINED_LIMIT
            out["pass_rule"] = rule_text(f"at step {self.half_step} ({self.steps[self.half_step]!r}, top half of the "
                                         "layers randomised)")
        return out


def rule_text(where: str) -> str:
    """The verdict rule in one paragraph (checks.json ``pass_rule``)."""
    return (f"{where}, for the signed and the |map| Spearman reading: retained = (similarity - reference) / "
            "(1 - reference), reference = max(smoothed-noise null, similarity between the original maps of other "
            f"images); a reading is destroyed when retained <= {RETAINED_LIMIT}; passes when both readings are "
            "destroyed, partly when one is, fails when neither is; no verdict when the controls (control_edges must "
            "fail, control_random must pass) do not come out as expected (docs/checks.md)")


def _controls_dict(controls: Mapping[str, Mapping[str, np.ndarray]], null_images: Mapping[str, Mapping[str, Any]],
                   verdicts: Mapping[str, Verdict], seed: int, curves: bool) -> dict[str, Any]:
    from saliencekit.trust._controls import DESCRIPTION, EXPECTED

    out: dict[str, Any] = {}
    for label, sims in controls.items():
        entry: dict[str, Any] = {"description": DESCRIPTION[label], "expected": EXPECTED[label]}
        if curves:
            entry["curves"] = {m: [mean_of(row) for row in v] for m, v in sims.items()}
        else:
            entry["similarity"] = {m: summarize(v, seed) for m, v in sims.items()}
        if label in null_images:
            entry["null_images"] = {m: summarize(v, seed) for m, v in null_images[label].items()}
        if label in verdicts:
            entry.update(verdicts[label].to_dict())
            entry["as_expected"] = verdicts[label].level == EXPECTED[label]
        out[label] = entry
    return out


def _judge_all(similarity: Mapping[str, Mapping[str, np.ndarray]], constant: Mapping[str, np.ndarray],
               null: Mapping[str, np.ndarray], null_images: Mapping[str, Mapping[str, np.ndarray]],
               control_similarity: Mapping[str, Mapping[str, np.ndarray]],
               control_null_images: Mapping[str, Mapping[str, np.ndarray]], what: str, depends: str,
               seed: int) -> tuple[dict[str, Verdict], dict[str, Verdict], bool, str]:
    """Verdicts of the methods and of the controls; the methods' are withheld when the controls fail."""
    n = len(next(iter(constant.values()))) if constant else 0
    controls = {label: judge(sims, np.zeros(n, dtype=bool), null, control_null_images.get(label, {}), what,
                             depends, seed)
                for label, sims in control_similarity.items()}
    ok, reason = judge_controls(controls)
    verdicts = {}
    for label, sims in similarity.items():
        v = judge(sims, constant[label], null, null_images.get(label, {}), what, depends, seed)
        verdicts[label] = v if ok else _withhold(v, reason)
    return verdicts, controls, ok, reason


def model_randomization(
    model: nn.Module,
    images: torch.Tensor,
    methods: MethodSpecs,
    *,
    mode: str = "cascading",
    target: torch.Tensor | None = None,
    layer: str | None = None,
    layers: Sequence[Sequence[str]] | None = None,
    metrics: Sequence[str] = METRICS,
    seed: int = 0,
    original_maps: Mapping[str, torch.Tensor] | None = None,
    strip_images: int = 3,
    batch_size: int = 16,
    progress: bool = True,
    image_index: torch.Tensor | None = None,
) -> RandomizationResult:
    """Model parameter randomisation test, cascading or independent, on a deep copy of ``model``.

    Args:
        model: the trained classifier; never modified (the check works on ``copy.deepcopy(model)``).
        images: (N, C, H, W) preprocessed images on the model's device.
        methods: method names or ``{label: {"method": name, **options}}``.
        mode: ``"cascading"`` (cumulative, output layer first) or ``"independent"`` (one layer at a time).
        target: classes to explain (N,); default the original model's predictions, kept fixed for every
            randomised model so the same class is explained throughout.
        layer: CAM layer name (default: the engine's choice, resolved on each copy).
        layers: groups of module names to randomise, input first (default :func:`parameter_layers`).
        metrics: similarity measures (see :func:`saliencekit.trust.similarity.similarity_all`).
        seed: seeds the re-initialisation and the null level.
        original_maps: the maps of the unmodified model, when already computed.
        strip_images: how many images to keep the maps of at every step (for the strip figure).
        batch_size: images per engine call.
        progress: show a progress bar over the steps.
        image_index: the image each row of ``images`` is (N,), when an image comes several times (a multi-label
            image explained for several labels), so that the other-image reference compares different images.

    Returns:
        A :class:`RandomizationResult`.
    """
    if mode not in ("cascading", "independent"):
        raise InputError(f"unknown randomisation mode {mode!r}; valid: cascading, independent")
    from saliencekit.trust._controls import control_maps

    specs = normalize_specs(methods)
    metrics = _with_readings(metrics)
    if target is None:
        _, target = predicted(model, images)
    groups = [list(g) for g in (layers if layers is not None else parameter_layers(model))]
    if not groups:
        raise InputError(f"{model.__class__.__name__} has no layers with parameters to randomise")
    if original_maps is None:
        original_maps = compute_maps(model, images, specs, target, layer, batch_size)
    orig = {label: original_maps[label] for label in specs}
    orig_controls = control_maps(model, images)
    k = min(strip_images, images.shape[0])
    strip = {label: [orig[label][:k].numpy()] for label in specs} if mode == "cascading" else {}

    top_first = list(reversed(groups))
    similarity: dict[str, dict[str, list[np.ndarray]]] = {label: {m: [] for m in metrics} for label in specs}
    control_sims: dict[str, dict[str, list[np.ndarray]]] = {label: {m: [] for m in READINGS}
                                                           for label in orig_controls}
    constant: dict[str, list[np.ndarray]] = {label: [] for label in specs}
    if mode == "cascading":
        for label in specs:
            for m in metrics:
                similarity[label][m].append(_similarities({label: orig[label]}, {label: orig[label]},
                                                          [m])[label][m])
            constant[label].append(_constant(orig[label]))
        for label, sims in _similarities(orig_controls, orig_controls, READINGS).items():
            for m in READINGS:
                control_sims[label][m].append(sims[m])
        steps = ["original"] + [g[0] for g in top_first]
    else:
        steps = [g[0] for g in top_first]

    work = copy.deepcopy(model)
    bar = tqdm(top_first, desc=f"{mode} randomisation", disable=not progress, leave=False)
    for group in bar:
        bar.set_postfix(layer=group[0], refresh=False)
        if mode == "independent":
            work = copy.deepcopy(model)
        randomize_layers(work, group, seed)
        maps = compute_maps(work, images, specs, target, layer, batch_size)
        sims = _similarities(orig, maps, metrics)
        for label in specs:
            for m in metrics:
                similarity[label][m].append(sims[label][m])
            constant[label].append(_constant(maps[label]))
            if mode == "cascading":
                strip[label].append(maps[label][:k].numpy())
        for label, csims in _similarities(orig_controls, control_maps(work, images), READINGS).items():
            for m in READINGS:
                control_sims[label][m].append(csims[m])
    del work

    shape = tuple(images.shape[-2:])
    result = RandomizationResult(
        mode=mode, steps=steps, layers=[[], *top_first] if mode == "cascading" else top_first,
        methods=specs, metrics=metrics,
        similarity={label: {m: np.stack(v) for m, v in d.items()} for label, d in similarity.items()},
        null=null_levels(shape, images.shape[0], seed, metrics),
        null_images=image_null_levels(orig, metrics, image_index),
        controls={label: {m: np.stack(v) for m, v in d.items()} for label, d in control_sims.items()},
        control_null_images=image_null_levels(orig_controls, READINGS, image_index),
        strip={label: np.stack(v) for label, v in strip.items()},
        strip_images=images[:k].detach().cpu().numpy(),
        half_step=math.ceil(len(groups) / 2) if mode == "cascading" else 0,
        seed=seed,
    )
    if mode == "cascading":
        half = result.half_step
        what = f"the top {half} of {len(groups)} layers (down to {steps[half]})"
        result.verdicts, result.control_verdicts, result.controls_ok, result.controls_reason = _judge_all(
            {label: {m: result.similarity[label][m][half] for m in READINGS} for label in specs},
            {label: constant[label][half] for label in specs}, result.null, result.null_images,
            {label: {m: v[half] for m, v in d.items()} for label, d in result.controls.items()},
            result.control_null_images, what, "the weights", seed)
    return result


# --------------------------------------------------------------------------------- data randomisation


@dataclass
class DataRandomizationResult:
    """Maps of a model trained on permuted labels compared with the true model's maps.

    Attributes:
        methods: label -> spec.
        metrics: similarity measures.
        similarity: label -> metric -> per-image similarity (N,).
        null: metric -> per-pair similarity of unrelated random maps.
        verdicts: label -> :class:`Verdict` (level None for every method when the controls did not come out as
            expected).
        null_images: label -> metric -> similarity between the true model's maps of different images.
        controls: control label -> reading -> per-image similarity (N,) between its maps for the two models.
        control_null_images: control label -> reading -> similarity between its maps of different images.
        control_verdicts: control label -> :class:`Verdict`.
        controls_ok: whether the controls came out as expected.
        controls_reason: one sentence on the controls.
        train_accuracy: the random-label model's accuracy on its (permuted) training labels.
        epochs: epochs it was trained for.
        maps_true / maps_random: label -> maps (k, H, W) of the first images (for the figure).
        images: the first ``k`` images (k, C, H, W).
        training: extra facts about the random-label training (images, seconds, ...).
    """

    methods: dict[str, dict[str, Any]]
    metrics: list[str]
    similarity: dict[str, dict[str, np.ndarray]]
    null: dict[str, np.ndarray]
    verdicts: dict[str, Verdict]
    null_images: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    controls: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    control_null_images: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    control_verdicts: dict[str, Verdict] = field(default_factory=dict)
    controls_ok: bool | None = None
    controls_reason: str = ""
    train_accuracy: float | None = None
    epochs: int | None = None
    maps_true: dict[str, np.ndarray] = field(default_factory=dict)
    maps_random: dict[str, np.ndarray] = field(default_factory=dict)
    images: np.ndarray | None = None
    training: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        methods = {}
        for label in self.methods:
            methods[label] = {"similarity": {m: summarize(v, self.seed) for m, v in self.similarity[label].items()}}
            if label in self.null_images:
                methods[label]["null_images"] = {m: summarize(v, self.seed) for m, v in self.null_images[label].items()}
            if label in self.verdicts:
                methods[label].update(self.verdicts[label].to_dict())
        return {
            "random_model_train_accuracy": self.train_accuracy,
            "epochs": self.epochs,
            "training": dict(self.training),
            "metrics": list(self.metrics),
            "null": {m: summarize(v, self.seed) for m, v in self.null.items()},
            "methods": methods,
            "controls": _controls_dict(self.controls, self.control_null_images, self.control_verdicts, self.seed,
                                       curves=False),
            "controls_ok": self.controls_ok,
            "controls_reason": self.controls_reason,
            "retained_limit": RETAINED_LIMIT,
            "pass_rule": rule_text("between the true and the random-label model's maps"),
        }


def train_on_permuted_labels(
    model: nn.Module,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    *,
    num_classes: int | None = None,
    epochs: int = 150,
    target_accuracy: float = 0.95,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    factory: Callable[[], nn.Module] | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a fresh copy of ``model``'s architecture on randomly permuted labels until it fits them.

    The copy is built by ``factory`` (e.g. the model registry, so it gets the same initialisation as the
    true model) or else is a deep copy of ``model`` with every layer of :func:`parameter_layers`
    re-initialised; the labels are permuted with
    ``seed``, and the training loop of :func:`saliencekit.train.fit.fit_model` (Adam, cross-entropy / BCE
    on the logit, no augmentation, best epoch by training loss) runs in rounds of 5 epochs until the
    training accuracy reaches ``target_accuracy`` or ``epochs`` have run. Multi-label labels (``(N, L)``
    0/1 rows) are shuffled as whole rows and fit with BCE per label; their accuracy is the share of label
    decisions that are right.

    Returns:
        The random-label model (eval mode) and facts: ``train_accuracy``, ``epochs``, ``images``,
        ``label_agreement`` (share of permuted labels, or of label decisions, equal to the true ones).
    """
    from saliencekit.train.fit import TrainConfig, evaluate_loss, fit_model, loss_function

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    multilabel = train_labels.ndim == 2  # multi-hot rows: each image's whole row of labels moves with the shuffle
    k = num_classes or (train_labels.shape[1] if multilabel else max(2, int(train_labels.max()) + 1))
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(train_labels.shape[0], generator=gen)
    y = train_labels.cpu()[perm].float() if multilabel else train_labels.cpu()[perm].long()
    x = train_images.detach().cpu()
    if factory is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            rnd = factory().to(device)
    else:
        rnd = copy.deepcopy(model)
        randomize_layers(rnd, [n for g in parameter_layers(rnd) for n in g], seed + 1)
    rnd.train()
    empty_x, empty_y = x[:0], y[:0]
    done, acc = 0, 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while done < epochs:
            n = min(5, epochs - done)
            cfg = TrainConfig(epochs=n, batch_size=batch_size, lr=lr, seed=seed + done, device=str(device))
            fit_model(rnd, x, y, empty_x, empty_y, cfg, device, k, progress=progress)
            done += n
            _, acc = evaluate_loss(rnd, x, y, loss_function(k, multilabel=multilabel), 64, device)
            if acc >= target_accuracy:
                break
    rnd.eval()
    for p in rnd.parameters():
        p.requires_grad_(True)
    facts = {"train_accuracy": float(acc), "epochs": done, "images": int(x.shape[0]),
             "label_agreement": float((y == train_labels.cpu().to(y.dtype)).float().mean()),
             "target_accuracy": target_accuracy}
    return rnd, facts


def data_randomization(
    model: nn.Module,
    random_model: nn.Module,
    images: torch.Tensor,
    methods: MethodSpecs,
    *,
    target: torch.Tensor | None = None,
    layer: str | None = None,
    metrics: Sequence[str] = METRICS,
    seed: int = 0,
    original_maps: Mapping[str, torch.Tensor] | None = None,
    training: Mapping[str, Any] | None = None,
    keep_images: int = 3,
    batch_size: int = 16,
    image_index: torch.Tensor | None = None,
) -> DataRandomizationResult:
    """Compare the maps of the true model with those of a model trained on permuted labels.

    Args:
        model: the trained classifier (never modified).
        random_model: the same architecture trained on permuted labels (see :func:`train_on_permuted_labels`).
        images: (N, C, H, W) test images.
        methods: names or ``{label: {"method": name, **options}}``.
        target: classes to explain (default: each model's own prediction, as Adebayo et al.).
        layer: CAM layer name.
        metrics: similarity measures.
        seed: seeds the null level.
        original_maps: the true model's maps when already computed (with the same target).
        training: facts from :func:`train_on_permuted_labels` (accuracy, epochs).
        keep_images: maps of the first images kept for the figure.
        batch_size: images per engine call.
        image_index: the image each row of ``images`` is (see :func:`model_randomization`).
    """
    from saliencekit.trust._controls import control_maps

    specs = normalize_specs(methods)
    metrics = _with_readings(metrics)
    if original_maps is None:
        original_maps = compute_maps(model, images, specs, target, layer, batch_size)
    orig = {label: original_maps[label] for label in specs}
    rnd_maps = compute_maps(random_model, images, specs, target, layer, batch_size)
    sims = _similarities(orig, rnd_maps, metrics)
    null = null_levels(tuple(images.shape[-2:]), images.shape[0], seed, metrics)
    null_images = image_null_levels(orig, metrics, image_index)
    orig_controls = control_maps(model, images)
    control_sims = _similarities(orig_controls, control_maps(random_model, images), READINGS)
    control_null = image_null_levels(orig_controls, READINGS, image_index)
    training = dict(training or {})
    acc = training.get("train_accuracy")
    fit_note = "" if acc is None else f"; random-label model fits its training labels to {acc:.0%}"
    if acc is not None and acc < float(training.get("target_accuracy", 0.9)):
        fit_note += " (it did not memorise them: a weak test, close to comparing with an untrained network)"
    verdicts, control_verdicts, ok, controls_reason = _judge_all(
        {label: {m: sims[label][m] for m in READINGS} for label in specs},
        {label: _constant(rnd_maps[label]) for label in specs}, null, null_images, control_sims, control_null,
        "the labels (model trained on permuted labels)", "what the model learned", seed)
    for v in verdicts.values():
        v.reason += fit_note
    k = min(keep_images, images.shape[0])
    return DataRandomizationResult(
        methods=specs, metrics=metrics, similarity=sims, null=null, verdicts=verdicts, null_images=null_images,
        controls=control_sims, control_null_images=control_null, control_verdicts=control_verdicts,
        controls_ok=ok, controls_reason=controls_reason,
        train_accuracy=acc, epochs=training.get("epochs"),
        maps_true={label: orig[label][:k].numpy() for label in specs},
        maps_random={label: rnd_maps[label][:k].numpy() for label in specs},
        images=images[:k].detach().cpu().numpy(), training=training, seed=seed,
    )
