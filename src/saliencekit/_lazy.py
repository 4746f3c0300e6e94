"""Names a package exports without importing their modules until first use (so ``import saliencekit`` stays cheap)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(module_name: str, table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module's ``__getattr__`` and ``__dir__`` for the names of ``table`` (name -> defining module's full name).

    A name is imported from its module on first use and then kept as an ordinary attribute of the package.

    >>> getattr_, dir_ = lazy_attributes("saliencekit", {"list_methods": "saliencekit.methods"})
    >>> callable(getattr_("list_methods")) and "list_methods" in dir_()
    True
    """
    module = sys.modules[module_name]

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        imported = importlib.import_module(table[name])
        # a subpackage listed under its own name (``"audit": "saliencekit.audit"``) is the value itself
        value = imported if table[name] == f"{module_name}.{name}" else getattr(imported, name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(table))

    return __getattr__, __dir__
