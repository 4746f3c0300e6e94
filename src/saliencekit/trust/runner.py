"""Run the trust checks over a run directory (or a model and images) and build ``checks.json``.

:func:`run_checks` computes each chosen method's maps once, runs every registered check
(:mod:`saliencekit.trust.checks`) that is chosen and applies, and returns a
:class:`~saliencekit.trust.results.CheckResults`: ``to_json()`` is the ``checks.json`` content documented in
``docs/checks_json.md``, written to ``OUT/checks.json`` when ``out_dir`` is given. What to check and how is one
:class:`~saliencekit.trust.settings.CheckSettings`; the command line fills its options from the fields' defaults
and help.

>>> result = run_checks("runs/cxr", methods=["gradient", "gradcam"], out_dir="runs/cxr/checks")  # doctest: +SKIP
>>> result.summary.recommended  # doctest: +SKIP
['gradcam']
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from saliencekit._model_input import model_failures
from saliencekit._options import with_options
from saliencekit._threads import torch_threads
from saliencekit.errors import InputError
from saliencekit.methods.references import (
    REFERENCE_COUNT,
    ReferenceSet,
    reference_scope,
    sample_references,
    training_references,
)
from saliencekit.methods.specs import default_methods, parse_methods
from saliencekit.model_data import ModelData, architecture_factory
from saliencekit.trust._explaining import compute_maps, predicted
from saliencekit.trust.checks import check_names, get_check, list_checks
from saliencekit.trust.checks.base import CheckContext
from saliencekit.trust.checks.faithfulness import faithfulness_curves
from saliencekit.trust.results import CheckResults, build_summary, image_rows, label_rows
from saliencekit.trust.settings import CheckSettings


def __getattr__(name: str) -> Any:
    if name == "CHECKS":  # the registered check names (a check module may be added at any time)
        return tuple(check_names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _strata(labels: torch.Tensor | None) -> torch.Tensor | None:
    """One stratum per image for balanced picking: its class, or for multi-label rows (N, L) its rarest positive
    label (:func:`saliencekit.data.folder.rarest_label_strata`, as the data's split does)."""
    if labels is None or labels.ndim == 1:
        return labels
    from saliencekit.data.folder import rarest_label_strata

    return torch.tensor(rarest_label_strata(labels.detach().cpu().numpy()), dtype=torch.long)


def _costly_images(s: CheckSettings, specs: Mapping[str, Mapping[str, Any]]) -> tuple[int | None, dict[str, float]]:
    """The image cap of the checks that recompute maps, and the methods costing more than ``s.costly_passes`` forward
    passes per image (which set the cap to ``s.costly_method_images`` when ``s.costly_images`` is None)."""
    from saliencekit.methods.registry import method_class

    costly = {}
    for label, spec in specs.items():
        passes = method_class(spec["method"]).passes_per_image(spec["options"])
        if passes is not None and passes > s.costly_passes:
            costly[label] = passes
    if s.costly_images is not None or not costly:
        return s.costly_images, costly
    return s.costly_method_images, costly


def _pick(labels: torch.Tensor | None, n_total: int, n: int, seed: int) -> torch.Tensor:
    """``n`` indices, classes interleaved (balanced), order reproducible from ``seed``; multi-label rows (N, L)
    are balanced over their rarest positive label (:func:`_strata`)."""
    labels = _strata(labels)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_total, generator=gen)
    if labels is None:
        return perm[:n]
    by_class = [perm[labels[perm] == c] for c in torch.unique(labels).tolist()]
    order = [int(g[i]) for i in range(max(len(g) for g in by_class)) for g in by_class if i < len(g)]
    return torch.tensor(order[:n], dtype=torch.long)


def run_checks(
    run: Any = None,
    settings: CheckSettings | None = None,
    *,
    model: nn.Module | None = None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    files: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    train_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    random_model: nn.Module | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    command: str | None = None,
    **options: Any,
) -> CheckResults:
    """Run the trust checks and return (and, with ``out_dir``, write) the results.

    Either ``run`` (a run directory path or a :class:`saliencekit.run.Run`: its test images, masks,
    training images and model are used; or a model file with its data, :func:`saliencekit.open_model_data`: the
    images are picked from the data folder, and data randomisation trains on other images of it when the model's
    architecture can be rebuilt) or ``model`` + ``images`` (+ optional ``labels``, ``masks``, ``train_data`` or
    ``random_model`` for data randomisation).

    A multi-label model (its rule: a final Sigmoid over several outputs, ``output="multilabel"``, a multi-label run)
    is checked once per explained label of each image (its positive labels, at most ``labels_per_image``); see
    docs/checks_json.md, "Multi-label models". A model that fails on the images raises one
    :class:`~saliencekit.errors.InputError` naming the input it runs on.

    >>> import torch, saliencekit as sk
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    >>> images, labels = torch.randn(6, 1, 16, 16), torch.tensor([0, 1, 0, 1, 0, 1])
    >>> result = sk.run_checks(model=net, images=images, labels=labels, methods=["gradient", "gradcam"],
    ...                        checks=["model_randomization", "faithfulness"], randomization_modes=("cascading",),
    ...                        progress=False)
    >>> sorted(result.checks), len(result.images)
    (['faithfulness', 'model_randomization'], 6)

    Args:
        run: run directory, Run, or :class:`~saliencekit.model_data.ModelData`.
        settings: what to check and how (:class:`CheckSettings`; default: its defaults).
        model: the classifier (never modified) when no run is given.
        images: (N, C, H, W) preprocessed images when no run is given.
        labels: true labels (N,), optional.
        masks: kind -> (N, H, W) ground-truth masks (``"lesion"``; ``"shortcut"`` for a planted marker).
        files: a name per image for the JSON.
        class_names: class names in label order.
        train_data: (images, labels) to fit the random-label model on (data randomisation).
        random_model: an already trained random-label model (data randomisation).
        out_dir: where to write ``checks.json`` and the figures (None: nothing is written).
        progress: show progress bars.
        command: the command line recorded in the JSON.
        **options: fields of :class:`CheckSettings` that replace those of ``settings`` (``methods=``,
            ``checks=``, ``n_images=``, ``seed=``, ``num_threads=``...).

    Returns:
        The results (:class:`~saliencekit.trust.results.CheckResults`; ``to_json()`` is ``checks.json``).

    Raises:
        TypeError: an option that is not a field of :class:`CheckSettings`.
        UnknownNameError: an unknown check or method name.
        InputError: neither a run nor a model and images, a check that cannot run (e.g. localization
            asked for without masks), or ``num_threads`` not a positive integer.
    """
    settings = with_options(CheckSettings, settings, options, "run_checks")
    with torch_threads(settings.num_threads), contextlib.ExitStack() as scope:
        return _run_checks(run, settings, scope, model=model, images=images, labels=labels, masks=masks, files=files,
                           class_names=class_names, train_data=train_data, random_model=random_model, out_dir=out_dir,
                           progress=progress, command=command)


def _run_checks(
    run: Any,
    settings: CheckSettings,
    scope: contextlib.ExitStack,
    *,
    model: nn.Module | None,
    images: torch.Tensor | None,
    labels: torch.Tensor | None,
    masks: Mapping[str, torch.Tensor] | None,
    files: Sequence[str] | None,
    class_names: Sequence[str] | None,
    train_data: tuple[torch.Tensor, torch.Tensor] | None,
    random_model: nn.Module | None,
    out_dir: str | Path | None,
    progress: bool,
    command: str | None,
) -> CheckResults:
    """:func:`run_checks` under its thread count; ``scope`` holds the model's output scope once it is entered."""
    from saliencekit import __version__
    from saliencekit.methods.outputs import output_scope
    from saliencekit.methods.targets import class_probabilities

    s = settings
    chosen = [get_check(c) for c in s.checks] if s.checks is not None else list_checks()
    specs = parse_methods(s.methods if s.methods is not None else default_methods())
    masks = dict(masks or {})
    run_dir = None
    factory: Callable[[], nn.Module] | None = None
    train_config: dict[str, Any] = {}
    declared, threshold = s.output, s.threshold
    no_train_data: str | None = None  # why data randomisation has no training images (a model file)
    model_block: dict[str, Any] | None = None
    if isinstance(run, ModelData):
        model, images, labels, files, class_names, picked_masks, train_data, factory, no_train_data = _from_model_data(
            run, s, chosen, train_data, random_model)
        masks.update(picked_masks)
        model_block = run.to_json()
        if s.output == "auto":
            declared, threshold = run.output or "auto", run.threshold if run.threshold is not None else s.threshold
    elif run is not None:
        from saliencekit.device import resolve_device
        from saliencekit.run import Run, load_run

        if not isinstance(run, Run):
            run = load_run(run, device=resolve_device(str(s.device)))
        run_dir = str(Path(run.path).resolve())
        model = run.model
        factory = architecture_factory(run.info.arch, run.info.arch_kwargs)
        train_config = dict(run.config.get("config", {}))
        if s.output == "auto":
            declared, threshold = run.info.extra.get("output", "auto"), run.info.extra.get("threshold", s.threshold)
        test = run.dataset("test")
        all_labels = test.labels()
        pick = _pick(all_labels, len(test), min(s.n_images, len(test)), s.seed).tolist()
        images = torch.stack([test.image(i) for i in pick]).to(run.device)
        labels = all_labels[pick]
        files = [test.sample(i).relpath for i in pick]
        class_names = list(run.class_names)
        for kind in run.index.mask_kinds:
            masks[kind] = torch.stack([test.mask(i, kind) for i in pick]) > 0.5
        wanted = any("train_data" in c.needs for c in chosen)
        if train_data is None and random_model is None and wanted:
            tr = run.dataset("train")
            train_data = (tr.images(), tr.labels())
    if model is None or images is None:
        raise InputError("run_checks needs a run directory (or Run), or both model= and images=")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise InputError(f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if run is None and images.shape[0] > s.n_images:
        pick_t = _pick(labels, images.shape[0], s.n_images, s.seed)
        images = images[pick_t]
        labels = labels[pick_t] if labels is not None else None
        masks = {k: v[pick_t] for k, v in masks.items()}
        files = [files[i] for i in pick_t.tolist()] if files is not None else None
    param = next(model.parameters(), None)
    if param is not None:
        images = images.to(param.device)
    masks = {k: (v > 0.5).cpu() for k, v in masks.items()}
    # A model that fails on these images (wrong channels or size) is named in one line, chained from its error;
    # entered before the output scope, so that the scope's hook is off when the model is probed.
    scope.enter_context(model_failures(model, images[:1]))
    # Every forward pass of the model in the checks reads its outputs by one rule (a final Sigmoid/Softmax bypassed).
    rule = scope.enter_context(output_scope(model, declared, threshold, images[:1]))

    logits, preds = predicted(model, images)
    n_classes = rule.num_classes(logits)
    names = list(class_names) if class_names is not None else None
    if names is not None and len(names) != n_classes:
        kind = "labels" if rule.multilabel else "classes"
        raise InputError(f"{len(names)} class names for a model with {n_classes} {kind} (its outputs have "
                         f"{logits.shape[1]} column(s)); give one name per {kind[:-1]}, in output order")
    _check_labels(labels, rule.multilabel, n_classes)
    rows = None
    if rule.multilabel:
        rows = _label_rows(rule, logits, s.labels_per_image)
        which = rows.image
        images, logits = images[which.to(images.device)], logits[which.to(logits.device)]
        preds = rows.label.to(logits.device)
        labels = labels[which] if labels is not None else None
        masks = _row_masks(masks, rows, names)
        if train_data is not None and train_data[1].ndim != 2:
            raise InputError("train_data labels must be (N, L) 0/1 rows for a multi-label model, got shape "
                             f"{tuple(train_data[1].shape)}")
    probs = class_probabilities(logits, preds)
    out_path = Path(out_dir) if out_dir is not None else None
    ctx = CheckContext(model=model, images=images, labels=labels, preds=preds, probs=probs, specs=specs, maps={},
                       masks=masks, layer=s.layer, seed=s.seed, settings=s, out_dir=out_path, figures=s.figures,
                       progress=progress, train_data=train_data, random_model=random_model,
                       num_classes=n_classes, factory=factory, train_config=train_config,
                       multilabel=rule.multilabel, image_index=None if rows is None else rows.image,
                       class_names=names)
    skipped: dict[str, str] = {}
    todo = []
    for check in chosen:
        reason = check.applies(ctx)
        if reason is None:
            todo.append(check)
        else:
            skipped[check.name] = no_train_data if (no_train_data and "train_data" in check.needs) else reason
    results: dict[str, Any] = {}
    # The SHAP family's baselines ("auto"/"training"): the run's training images, the same for every model checked. A
    # model file's data folder is not training data: it offers none ("auto" draws uniform baselines), as its report.
    if isinstance(run, ModelData):
        references = None
    elif run is not None:
        references = training_references(run, seed=s.seed)
    elif train_data is not None:
        references = ReferenceSet(lambda: sample_references(train_data[0], seed=s.seed),
                                  f"up to {REFERENCE_COUNT} training images of train_data (seed {s.seed})")
    else:
        references = None
    costly_images, costly_methods = _costly_images(s, specs)
    with torch.random.fork_rng(devices=[]), reference_scope(references):
        torch.manual_seed(s.seed)
        ctx.maps = compute_maps(model, images, specs, preds, s.layer, s.batch_size, progress, desc="maps")
        bar = tqdm(todo, desc="checks", disable=not progress)
        for check in bar:
            bar.set_postfix(check=check.name, refresh=True)
            t0 = time.perf_counter()
            sub = ctx
            if costly_images is not None and check.name in s.costly_checks and costly_images < images.shape[0]:
                sub = ctx.subset(costly_images)
            try:
                entry = check.run(sub)
            except InputError as exc:  # a check that cannot apply to this model (e.g. no Conv2d/Linear first layer)
                skipped[check.name] = f"could not run: {exc}"
                continue
            entry["images"] = int(sub.images.shape[0])
            entry["seconds"] = round(time.perf_counter() - t0, 3)
            results[check.name] = entry

    result = CheckResults(
        saliencekit_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        command=command or "",
        run_dir=run_dir,
        model=model_block,
        settings={"images": int(images.shape[0]) if rows is None else rows.n_images, "seed": s.seed,
                  "device": str(images.device), "num_threads": torch.get_num_threads(),
                  "checks": [c.name for c in todo if c.name in results], "skipped": skipped, "layer": s.layer,
                  "output": rule.describe(), **({} if rows is None else rows.describe(s.labels_per_image)),
                  **s.to_dict(), "costly_images": costly_images, "costly_methods": costly_methods},
        methods={lb: {"method": spec["method"], "options": dict(spec["options"])} for lb, spec in specs.items()},
        images=image_rows(files, labels, preds, probs, names) if rows is None else
        label_rows(files, labels, rows, probs, names),
        checks=results,
        summary=build_summary(results, specs, masks),
    )
    if out_path is not None:
        result.write(out_path / "checks.json")
    return result


def _from_model_data(md: ModelData, s: CheckSettings, chosen: Sequence[Any],
                     train_data: tuple[torch.Tensor, torch.Tensor] | None, random_model: nn.Module | None) -> tuple[
        nn.Module, torch.Tensor, torch.Tensor, list[str], list[str], dict[str, torch.Tensor],
        tuple[torch.Tensor, torch.Tensor] | None, Callable[[], nn.Module] | None, str | None]:
    """The checked images of a model file's data (``n_images``, balanced over the classes or rarest labels) and the
    training images of data randomisation: up to ``random_label_images`` *other* images of the data, when the
    model's architecture can be rebuilt (else the reason it cannot)."""
    everything = md.dataset()
    all_labels = everything.labels()
    n = len(everything)
    pick = _pick(all_labels, n, min(s.n_images, n), s.seed).tolist()
    ds = md.dataset(pick, cache=True)
    param = next(md.model.parameters(), None)
    images = ds.images().to(param.device) if param is not None else ds.images()
    masks = {kind: torch.stack([ds.mask(i, kind) for i in range(len(ds))]) > 0.5 for kind in md.index.mask_kinds}
    files = [ds.sample(i).relpath for i in range(len(ds))]
    factory, reason = md.random_label_factory()
    if train_data is None and random_model is None and reason is None and any("train_data" in c.needs
                                                                               for c in chosen):
        chosen_set = set(pick)
        rest = [i for i in torch.randperm(n, generator=torch.Generator().manual_seed(s.seed + 1)).tolist()
                if i not in chosen_set][: s.random_label_images]
        rest_labels = all_labels[rest]
        why = "it is trained on images that are not checked; give a larger data folder or fewer --images"
        if len(rest) < 2:
            reason = (f"the data has {len(rest)} image(s) besides the {len(pick)} checked: too few to train a "
                      f"random-label model on ({why})")
        elif rest_labels.ndim == 1 and len(set(rest_labels.tolist())) < 2:
            reason = (f"the {len(rest)} images besides the {len(pick)} checked are all of one class: shuffling their "
                      f"labels changes nothing ({why})")
        if reason is None:
            train_data = (md.dataset(rest, cache=True).images(), rest_labels)
    return md.model, images, all_labels[pick], files, list(md.class_names), masks, train_data, factory, reason


def _check_labels(labels: torch.Tensor | None, multilabel: bool, n_classes: int) -> None:
    """True labels must fit the model: one class per image, or (N, L) 0/1 rows for a multi-label model."""
    if labels is None:
        return
    if multilabel and (labels.ndim != 2 or labels.shape[1] != n_classes):
        raise InputError(f"labels of a multi-label model with {n_classes} labels must be (N, {n_classes}) 0/1 rows "
                         f"(1 where a label is present), got shape {tuple(labels.shape)}")
    if not multilabel and labels.ndim != 1:
        raise InputError(f"labels of shape {tuple(labels.shape)} look like multi-label rows, but the model's outputs "
                         "are read as exclusive classes; declare output='multilabel' (CLI --output multilabel) for a "
                         "model with one sigmoid per label, or give one class index per image")


@dataclass(frozen=True)
class _LabelRows:
    """The (image, label) rows of a multi-label check: rows label rank by label rank (every image's most probable
    label first), so that neighbouring rows are of different images."""

    image: torch.Tensor  # (R,) image index of each row
    label: torch.Tensor  # (R,) explained label of each row
    positives: list[list[int]]  # per image: its positive labels, most probable first
    n_images: int

    def explained(self, i: int) -> list[int]:
        return [int(c) for c, g in zip(self.label.tolist(), self.image.tolist()) if g == i]

    def describe(self, limit: int) -> dict[str, Any]:
        skipped = sum(max(0, len(p) - limit) for p in self.positives)
        return {"rows": int(self.image.shape[0]), "labels_per_image": limit, "positive_not_explained": skipped,
                "rows_rule": "each image explained for its positive labels (probability >= threshold), most probable "
                             f"first, at most {limit}; the most probable label when none is positive"}


def _label_rows(rule: Any, logits: torch.Tensor, limit: int) -> _LabelRows:
    """The rows of a multi-label check: each image's default targets (:meth:`OutputRule.default_targets`)."""
    targets, _ = rule.default_targets(logits, limit)
    positives, _ = rule.default_targets(logits, logits.shape[1])
    counts = rule.positives(logits).sum(1).tolist()
    positives = [p if n else [] for p, n in zip(positives, counts)]
    pairs = [(i, t[r]) for r in range(max(len(t) for t in targets)) for i, t in enumerate(targets) if r < len(t)]
    return _LabelRows(torch.tensor([i for i, _ in pairs], dtype=torch.long),
                      torch.tensor([c for _, c in pairs], dtype=torch.long), positives, len(targets))


def _row_masks(masks: Mapping[str, torch.Tensor], rows: _LabelRows,
               names: Sequence[str] | None) -> dict[str, torch.Tensor]:
    """The masks of every row: each image's masks repeated, and a mask kind named after a label (e.g.
    ``masks={"Effusion": ...}``) used as the ``lesion`` mask of the rows that explain that label (the image's
    ``lesion`` mask, or none, for the other rows)."""
    own = [k for k in masks if names is not None and k in names]
    out = {k: v[rows.image] for k, v in masks.items() if k not in own}
    if own:
        assert names is not None
        first = masks[own[0]]
        lesion = out.get("lesion", torch.zeros((rows.image.shape[0], *first.shape[1:]), dtype=torch.bool)).clone()
        for r, (i, c) in enumerate(zip(rows.image.tolist(), rows.label.tolist())):
            if names[c] in own:
                lesion[r] = masks[names[c]][i]
        out["lesion"] = lesion
    return out


__all__ = ["CHECKS", "CheckSettings", "default_methods", "faithfulness_curves", "run_checks"]  # noqa: F822
