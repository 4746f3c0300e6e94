"""``explain(model, images, methods)``: several methods at once, sharing passes where they can."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from saliencekit.methods.base import Explanation, Method, check_inputs
from saliencekit.methods.registry import create_method, method_class


def build_methods(
    model: nn.Module, methods: Sequence[str] | Mapping[str, Mapping[str, Any]], **common: Any
) -> dict[str, Method]:
    """Create methods from any method spec (:func:`saliencekit.methods.specs.parse_methods`).

    A dict label may differ from the method name when the options say which method it is:
    ``{"ig_white": {"method": "integrated_gradients", "baseline": "white"}}``. ``common`` options
    (e.g. ``layer``) are given to each method that accepts them.
    """
    from saliencekit.methods.registry import method_options
    from saliencekit.methods.specs import parse_methods

    specs = parse_methods(methods, validate=False)  # create_method below names an unknown method or option
    built: dict[str, Method] = {}
    for label, spec in specs.items():
        name, opts = spec["method"], dict(spec["options"])
        valid = method_options(name)
        for key, value in common.items():
            if key in valid and key not in opts and value is not None:
                opts[key] = value
        built[label] = create_method(name, model, **opts)
    return built


def explain(
    model: nn.Module,
    images: torch.Tensor,
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("gradient",),
    target: Any = None,
    layer: str | nn.Module | None = None,
    **common: Any,
) -> dict[str, Explanation]:
    """Explain ``images`` with several methods; methods that can share passes share them.

    Args:
        model: the classifier (never modified).
        images: preprocessed batch (N, C, H, W).
        methods: names (``["gradcam++", "scorecam"]``) or ``{label: {option: value}}``.
        target: None (predicted class), a class index, one index per image, or a callable.
        layer: layer for CAM methods (default: the last convolutional stage).
        **common: options passed to every method that takes them (e.g. ``batch_size``, ``precision``).

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
    built = build_methods(model, methods, layer=layer, **common)
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
