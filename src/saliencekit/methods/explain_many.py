"""``explain(model, images, methods)``: several methods at once, sharing passes where they can."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from saliencekit.errors import InputError
from saliencekit.methods.base import Explanation, Method, check_inputs
from saliencekit.methods.registry import create_method, method_class


def build_methods(
    model: nn.Module, methods: Sequence[str] | Mapping[str, Mapping[str, Any]], **common: Any
) -> dict[str, Method]:
    """Create methods from any method spec (:func:`saliencekit.methods.specs.parse_methods`).

    A dict label may differ from the method name when the options say which method it is:
    ``{"ig_white": {"method": "integrated_gradients", "baseline": "white"}}``. ``common`` options
    (e.g. ``layer``) are given to each method that accepts them; ``output`` and ``threshold`` to every method.

    Raises:
        InputError: a common option (not None, other than ``layer``) that none of the methods takes: the message
            lists the options they take and, when other methods take it, which.
    """
    from saliencekit.methods.registry import list_methods, method_options
    from saliencekit.methods.specs import parse_methods

    specs = parse_methods(methods, validate=False)  # create_method below names an unknown method or option
    output, threshold = common.pop("output", None), common.pop("threshold", None)
    taken = {spec["method"]: method_options(spec["method"]) for spec in specs.values()}
    # ``layer`` is explain's own argument, passed on to the layer methods among those given (the checks pass it
    # along with any subset of methods); any other option must be taken by at least one method.
    unused = sorted(k for k, v in common.items()
                    if v is not None and k != "layer" and not any(k in t for t in taken.values()))
    if unused:
        chosen = ", ".join(taken)
        options = ", ".join(sorted({k for t in taken.values() for k in t} | {"output", "threshold"}))
        elsewhere = {k: [n for n in list_methods() if k in method_options(n)] for k in unused}
        hint = "".join(f"; {k!r} is an option of {', '.join(ns)}" for k, ns in elsewhere.items() if ns)
        raise InputError(f"unknown option(s) {unused} for the methods {chosen}{hint}; "
                         f"valid options: {options} (and explain's target, layer)")
    built: dict[str, Method] = {}
    for label, spec in specs.items():
        name, opts = spec["method"], dict(spec["options"])
        valid = taken[name]
        for key, value in common.items():
            if key in valid and key not in opts and value is not None:
                opts[key] = value
        built[label] = create_method(name, model, output=opts.pop("output", output),
                                     threshold=opts.pop("threshold", threshold), **opts)
    return built


def explain(
    model: nn.Module,
    images: torch.Tensor,
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("gradient",),
    target: Any = None,
    layer: str | nn.Module | None = None,
    output: str | None = None,
    threshold: float | None = None,
    **common: Any,
) -> dict[str, Explanation]:
    """Explain ``images`` with several methods; methods that can share passes share them.

    Args:
        model: the classifier (never modified).
        images: preprocessed batch (N, C, H, W).
        methods: names (``["gradcam++", "scorecam"]``) or ``{label: {option: value}}``.
        target: None (predicted class; for a multi-label model the most probable label), a class index, one
            index per image, or a callable.
        layer: layer for CAM methods (default: the last convolutional stage).
        output: what the model returns: ``"auto"`` (default: a final Sigmoid/Softmax module is detected and
            bypassed), ``"logits"``, ``"probabilities"``, ``"multilabel"`` or ``"multilabel_probabilities"``
            (see :mod:`saliencekit.methods.outputs`).
        threshold: probability at or above which a label is positive (multi-label models; default 0.5).
        **common: options passed to every method that takes them (e.g. ``batch_size``, ``precision``); an
            option none of the methods takes is an error.

    Returns:
        ``label -> Explanation``, in the order the methods were given.

    >>> import saliencekit as sk
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 1))
    >>> out = sk.explain(net, torch.randn(2, 1, 8, 8), methods=["gradient"])
    >>> out["gradient"].maps.shape
    torch.Size([2, 8, 8])
    """
    check_inputs(model, images)
    built = build_methods(model, methods, layer=layer, output=output, threshold=threshold, **common)
    groups: dict[Any, list[str]] = {}
    for label, m in built.items():
        key = m.share_key()
        group = (type(m).attribute_shared.__func__, key) if key is not None else ("alone", label)  # type: ignore[attr-defined]
        groups.setdefault(group, []).append(label)
    results: dict[str, Explanation] = {}
    for labels in groups.values():
        ms = [built[label] for label in labels]
        outs = type(ms[0]).attribute_shared(ms, images, target) if len(ms) > 1 else [ms[0].attribute(images, target)]
        for label, e in zip(labels, outs):
            results[label] = e
    return {label: results[label] for label in built}


__all__ = ["build_methods", "explain", "method_class"]
