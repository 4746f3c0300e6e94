"""The trust checks, one plug-in module each; this package finds and registers them.

Every public module of this package (a name without a leading underscore, other than ``base``) defines one
:class:`~saliencekit.trust.checks.base.Check` subclass decorated with :func:`register_check`; the modules are
imported on the first call of :func:`list_checks` or :func:`get_check`. The runner
(:func:`saliencekit.trust.run_checks`), its summary and the report loop over :func:`list_checks`, so a new check is
one new module (plus its template partial in ``templates/`` and its tests) and nothing else.

>>> from saliencekit.trust.checks import list_checks
>>> [c.name for c in list_checks()][:3]
['model_randomization', 'data_randomization', 'input_invariance']
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TypeVar

from saliencekit.errors import UnknownNameError
from saliencekit.trust.checks.base import Check

_REGISTRY: dict[str, Check] = {}
_LOADED = False
C = TypeVar("C", bound=type[Check])


def register_check(cls: C) -> C:
    """Class decorator: register one instance of a :class:`Check` subclass under its ``name`` (a duplicate name is
    an error)."""
    if not (isinstance(cls, type) and issubclass(cls, Check)):
        raise TypeError(f"{cls!r} is not a Check subclass")
    if not cls.name or not cls.title:
        raise ValueError(f"{cls.__qualname__} must set the class attributes name and title")
    if cls.name in _REGISTRY:
        raise ValueError(f"check name {cls.name!r} is already registered by {type(_REGISTRY[cls.name]).__qualname__}")
    _REGISTRY[cls.name] = cls()
    return cls


def unregister_check(name: str) -> None:
    """Remove a registered check (for tests that register a temporary one)."""
    _REGISTRY.pop(name, None)


def _load_builtin_checks() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def list_checks() -> list[Check]:
    """The registered checks in run and page order (by ``order``, then name)."""
    _load_builtin_checks()
    return sorted(_REGISTRY.values(), key=lambda c: (c.order, c.name))


def check_names() -> list[str]:
    """The names of :func:`list_checks`."""
    return [c.name for c in list_checks()]


def get_check(name: str) -> Check:
    """The check registered under ``name``.

    Raises:
        UnknownNameError: no such check (the message lists the registered names).
    """
    _load_builtin_checks()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("check", name, check_names()) from None


__all__ = ["Check", "check_names", "get_check", "list_checks", "register_check", "unregister_check"]
