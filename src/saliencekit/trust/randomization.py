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

**Verdict** (cascading): let ``s`` be the mean Spearman rank correlation of absolute values between
the original maps and the maps once the top half of the layers (``ceil(L / 2)``, from the output
down) are randomised, and ``null`` the mean of the same measure between unrelated random maps
(smoothed noise, see :func:`saliencekit.trust.similarity.null_level`). The method passes when
``s <= null + margin`` (``margin`` = :data:`PASS_MARGIN` = 0.3 by default). The data-randomisation
verdict applies the same rule to the random-label model's maps. An image whose new map is constant (e.g. a
Grad-CAM map that the ReLU turned to all zeros) has an undefined Spearman correlation; for the verdict it
counts as 0 (nothing of the original map is left), while the reported curves skip it.
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
PASS_METRIC = "spearman_abs"
PASS_MARGIN = 0.3
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


@dataclass
class Verdict:
    """Whether a method passed a randomisation check, with a one-line reason."""

    passed: bool
    reason: str
    value: float = float("nan")
    threshold: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"passed": bool(self.passed), "reason": self.reason, "value": self.value, "threshold": self.threshold}


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


def _verdict_values(values: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """Per-image similarities for the verdict: an undefined (NaN) similarity because the new map is constant
    counts as 0 (a constant map keeps none of the original's structure)."""
    return np.where(np.isnan(values) & constant, 0.0, values)


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


def image_null_levels(maps: Mapping[str, torch.Tensor],
                      metrics: Sequence[str] = METRICS) -> dict[str, dict[str, np.ndarray]]:
    """Per method: similarity between the original maps of different images (image ``i`` vs ``i - 1``)."""
    from saliencekit.trust.similarity import null_level_from_maps

    return {label: {k: v.cpu().numpy() for k, v in null_level_from_maps(m, metrics).items()}
            for label, m in maps.items() if m.shape[0] >= 2}


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
        verdicts: label -> :class:`Verdict` (cascading only).
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
        if self.mode == "cascading":
            out["half_step"] = self.half_step
            out["pass_rule"] = (f"passes when the mean {PASS_METRIC} at step {self.half_step} "
                                f"({self.steps[self.half_step]!r}, top half of the layers randomised) is at most "
                                f"the random-map null mean + {PASS_MARGIN}")
        return out


def _verdict(curve: np.ndarray, half: int, null_mean: float, steps: Sequence[str], what: str,
             depends: str = "the weights") -> Verdict:
    value = float(curve[half])
    threshold = null_mean + PASS_MARGIN
    if not math.isfinite(value):
        return Verdict(False, f"no similarity could be computed after randomising {what} (constant maps)",
                       value, threshold)
    if value <= threshold:
        return Verdict(True, f"{PASS_METRIC} fell to {value:.2f} after randomising {what} "
                             f"(null {null_mean:.2f}, pass <= {threshold:.2f}): the maps depend on {depends}",
                       value, threshold)
    return Verdict(False, f"{PASS_METRIC} stays at {value:.2f} after randomising {what} "
                          f"(null {null_mean:.2f}, pass <= {threshold:.2f}): the maps barely depend on {depends}",
                   value, threshold)


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

    Returns:
        A :class:`RandomizationResult`.
    """
    if mode not in ("cascading", "independent"):
        raise InputError(f"unknown randomisation mode {mode!r}; valid: cascading, independent")
    specs = normalize_specs(methods)
    metrics = list(metrics)
    if target is None:
        _, target = predicted(model, images)
    groups = [list(g) for g in (layers if layers is not None else parameter_layers(model))]
    if not groups:
        raise InputError(f"{model.__class__.__name__} has no layers with parameters to randomise")
    if original_maps is None:
        original_maps = compute_maps(model, images, specs, target, layer, batch_size)
    orig = {label: original_maps[label] for label in specs}
    k = min(strip_images, images.shape[0])
    strip = {label: [orig[label][:k].numpy()] for label in specs} if mode == "cascading" else {}

    top_first = list(reversed(groups))
    similarity: dict[str, dict[str, list[np.ndarray]]] = {label: {m: [] for m in metrics} for label in specs}
    constant: dict[str, list[np.ndarray]] = {label: [] for label in specs}
    if mode == "cascading":
        for label in specs:
            for m in metrics:
                similarity[label][m].append(_similarities({label: orig[label]}, {label: orig[label]},
                                                          [m])[label][m])
            constant[label].append(_constant(orig[label]))
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
    del work

    shape = tuple(images.shape[-2:])
    result = RandomizationResult(
        mode=mode, steps=steps, layers=[[], *top_first] if mode == "cascading" else top_first,
        methods=specs, metrics=metrics,
        similarity={label: {m: np.stack(v) for m, v in d.items()} for label, d in similarity.items()},
        null=null_levels(shape, images.shape[0], seed, metrics),
        null_images=image_null_levels(orig, metrics),
        strip={label: np.stack(v) for label, v in strip.items()},
        strip_images=images[:k].detach().cpu().numpy(),
        half_step=math.ceil(len(groups) / 2) if mode == "cascading" else 0,
        seed=seed,
    )
    if mode == "cascading" and PASS_METRIC in metrics:
        null_mean = mean_of(result.null[PASS_METRIC])
        half = result.half_step
        what = f"the top {half} of {len(groups)} layers (down to {steps[half]})"
        for label in specs:
            row = _verdict_values(result.similarity[label][PASS_METRIC][half], constant[label][half])
            result.verdicts[label] = _verdict(np.array([mean_of(row)]), 0, null_mean, steps, what)
            n_const = int(constant[label][half].sum())
            if n_const:
                result.verdicts[label].reason += f" ({n_const} constant map(s) counted as similarity 0)"
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
        verdicts: label -> :class:`Verdict`.
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
            methods[label] = {"similarity": {m: summarize(v, self.seed) for m, v in self.similarity[label].items()},
                              **self.verdicts[label].to_dict()}
        return {
            "random_model_train_accuracy": self.train_accuracy,
            "epochs": self.epochs,
            "training": dict(self.training),
            "metrics": list(self.metrics),
            "null": {m: summarize(v, self.seed) for m, v in self.null.items()},
            "methods": methods,
            "pass_rule": f"passes when the mean {PASS_METRIC} between the true and the random-label model's maps is "
                         f"at most the random-map null mean + {PASS_MARGIN}",
        }


def train_on_permuted_labels(
    model: nn.Module,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    *,
    num_classes: int | None = None,
    epochs: int = 40,
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
    training accuracy reaches ``target_accuracy`` or ``epochs`` have run.

    Returns:
        The random-label model (eval mode) and facts: ``train_accuracy``, ``epochs``, ``images``,
        ``label_agreement`` (share of permuted labels equal to the true ones).
    """
    from saliencekit.train.fit import TrainConfig, evaluate_loss, fit_model, loss_function

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    k = num_classes or max(2, int(train_labels.max()) + 1)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(train_labels.shape[0], generator=gen)
    y = train_labels.cpu()[perm].long()
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
            _, acc = evaluate_loss(rnd, x, y, loss_function(k), 64, device)
            if acc >= target_accuracy:
                break
    rnd.eval()
    for p in rnd.parameters():
        p.requires_grad_(True)
    facts = {"train_accuracy": float(acc), "epochs": done, "images": int(x.shape[0]),
             "label_agreement": float((y == train_labels.cpu().long()).float().mean()),
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
    """
    specs = normalize_specs(methods)
    metrics = list(metrics)
    if original_maps is None:
        original_maps = compute_maps(model, images, specs, target, layer, batch_size)
    orig = {label: original_maps[label] for label in specs}
    rnd_maps = compute_maps(random_model, images, specs, target, layer, batch_size)
    sims = _similarities(orig, rnd_maps, metrics)
    null = null_levels(tuple(images.shape[-2:]), images.shape[0], seed, metrics)
    training = dict(training or {})
    acc = training.get("train_accuracy")
    fit_note = "" if acc is None else f"; random-label model fits its training labels to {acc:.0%}"
    if acc is not None and acc < float(training.get("target_accuracy", 0.9)):
        fit_note += " (it did not memorise them: a weak test, close to comparing with an untrained network)"
    verdicts = {}
    null_mean = mean_of(null[PASS_METRIC]) if PASS_METRIC in null else float("nan")
    for label in specs:
        if PASS_METRIC not in sims[label]:
            continue
        const = _constant(rnd_maps[label])
        v = _verdict(np.array([mean_of(_verdict_values(sims[label][PASS_METRIC], const))]), 0, null_mean, ["random"],
                     "the labels (model trained on permuted labels)", "what the model learned")
        v.reason += fit_note
        verdicts[label] = v
    k = min(keep_images, images.shape[0])
    return DataRandomizationResult(
        methods=specs, metrics=metrics, similarity=sims, null=null, verdicts=verdicts,
        train_accuracy=acc, epochs=training.get("epochs"),
        maps_true={label: orig[label][:k].numpy() for label in specs},
        maps_random={label: rnd_maps[label][:k].numpy() for label in specs},
        images=images[:k].detach().cpu().numpy(), training=training, seed=seed,
    )
