"""The one list of method names (timm-style registry).

>>> from saliencekit.methods import list_methods
>>> "gradient" in list_methods()
True
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from saliencekit.errors import InputError, UnknownNameError
from saliencekit.methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type[Method])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`Method` subclass under ``name`` (a duplicate is an error)."""

    def deco(cls: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"method name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"{cls!r} is not a Method subclass")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtin_methods() -> None:
    # Importing the modules registers their classes.
    from saliencekit.methods import _builtin  # noqa: F401


def list_methods(family: str | None = None) -> list[str]:
    """Registered method names, in registration order (optionally of one family)."""
    _load_builtin_methods()
    return [n for n, c in _REGISTRY.items() if family is None or c.family == family]


def method_class(name: str) -> type[Method]:
    """The class registered under ``name``."""
    _load_builtin_methods()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("method", name, list(_REGISTRY)) from None


def method_options(name: str) -> dict[str, Any]:
    """Keyword options of a method with their defaults (``inspect.Parameter.empty`` when required)."""
    sig = inspect.signature(method_class(name).__init__)
    return {p.name: p.default for p in list(sig.parameters.values())[2:] if p.kind is p.KEYWORD_ONLY
            or p.kind is p.POSITIONAL_OR_KEYWORD}


def create_method(name: str, model: nn.Module, output: str | None = None, threshold: float | None = None,
                  **options: Any) -> Method:
    """Build the method registered under ``name`` for ``model``.

    Args:
        name: a registered method name.
        model: the classifier (never modified).
        output: how the model's outputs are read, one of :data:`saliencekit.methods.outputs.OUTPUTS`
            (None: the enclosing call's declaration, by default ``"auto"``).
        threshold: probability at or above which a label is positive (multi-label models; None: 0.5).
        **options: the method's options (see :func:`method_options`).

    Raises:
        UnknownNameError: no such method (the message lists the registered names), or an unknown ``output``.
        InputError: an option the method does not take (the message lists the valid options).
    """
    cls = method_class(name)
    valid = method_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InputError(f"method {name!r} has no option(s) {unknown}; valid options: "
                         f"{', '.join([*valid, 'output', 'threshold'])}")
    return cls(model, **options).set_output(output, threshold)
