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
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from saliencekit._model_input import model_failures
from saliencekit._options import with_options
from saliencekit._threads import torch_threads
from saliencekit.errors import InputError
from saliencekit.methods.specs import default_methods, parse_methods
from saliencekit.trust._explaining import compute_maps, predicted
from saliencekit.trust.checks import check_names, get_check, list_checks
from saliencekit.trust.checks.base import CheckContext
from saliencekit.trust.checks.faithfulness import faithfulness_curves
from saliencekit.trust.results import CheckResults, build_summary, image_rows
from saliencekit.trust.settings import CheckSettings


def __getattr__(name: str) -> Any:
    if name == "CHECKS":  # the registered check names (a check module may be added at any time)
        return tuple(check_names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    training images and model are used) or ``model`` + ``images`` (+ optional ``labels``, ``masks``,
    ``train_data`` or ``random_model`` for data randomisation).

    Args:
        run: run directory or Run.
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


def _run_factory(info: Any) -> Callable[[], nn.Module]:
    def factory() -> nn.Module:
        # The same architecture with dropout off (when the factory has that option), so that the random-label
        # model can memorise its labels in an affordable number of epochs; dropout has no weights.
        from saliencekit import models

        try:
            return models.create(info.arch, **{**info.arch_kwargs, "dropout": 0.0})
        except TypeError:
            return models.create(info.arch, **info.arch_kwargs)

    return factory


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
    if run is not None:
        from saliencekit.device import resolve_device
        from saliencekit.run import Run, load_run

        if not isinstance(run, Run):
            run = load_run(run, device=resolve_device(str(s.device)))
        run_dir = str(Path(run.path).resolve())
        if getattr(run, "multilabel", False):
            raise InputError(f"{run_dir} is a multi-label run (one sigmoid per label); the trust checks do not take "
                             "multi-label runs yet. Explain its labels with `saliencekit explain RUN IMAGES --target "
                             "LABEL`, or train one finding against the rest (train --labels CSV --finding NAME) "
                             "and check that run")
        model = run.model
        factory = _run_factory(run.info)
        train_config = dict(run.config.get("config", {}))
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
    declared = s.output if (s.output != "auto" or run is None) else run.info.extra.get("output", "auto")
    threshold = s.threshold if (s.output != "auto" or run is None) else run.info.extra.get("threshold", s.threshold)
    rule = scope.enter_context(output_scope(model, declared, threshold, images[:1]))

    logits, preds = predicted(model, images)
    probs = class_probabilities(logits, preds)
    out_path = Path(out_dir) if out_dir is not None else None
    ctx = CheckContext(model=model, images=images, labels=labels, preds=preds, probs=probs, specs=specs, maps={},
                       masks=masks, layer=s.layer, seed=s.seed, settings=s, out_dir=out_path, figures=s.figures,
                       progress=progress, train_data=train_data, random_model=random_model,
                       num_classes=rule.num_classes(logits), factory=factory,
                       train_config=train_config)
    skipped: dict[str, str] = {}
    todo = []
    for check in chosen:
        reason = check.applies(ctx)
        if reason is None:
            todo.append(check)
        else:
            skipped[check.name] = reason
    results: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        ctx.maps = compute_maps(model, images, specs, preds, s.layer, s.batch_size, progress, desc="maps")
        bar = tqdm(todo, desc="checks", disable=not progress)
        for check in bar:
            bar.set_postfix(check=check.name, refresh=True)
            t0 = time.perf_counter()
            sub = ctx
            if s.costly_images is not None and check.name in s.costly_checks and s.costly_images < images.shape[0]:
                sub = ctx.subset(s.costly_images)
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
        settings={"images": int(images.shape[0]), "seed": s.seed, "device": str(images.device),
                  "num_threads": torch.get_num_threads(), "checks": [c.name for c in todo if c.name in results],
                  "skipped": skipped, "layer": s.layer, "output": rule.describe(), **s.to_dict()},
        methods={lb: {"method": spec["method"], "options": dict(spec["options"])} for lb, spec in specs.items()},
        images=image_rows(files, labels, preds, probs, class_names),
        checks=results,
        summary=build_summary(results, specs, masks),
    )
    if out_path is not None:
        result.write(out_path / "checks.json")
    return result


__all__ = ["CHECKS", "CheckSettings", "default_methods", "faithfulness_curves", "run_checks"]  # noqa: F822
