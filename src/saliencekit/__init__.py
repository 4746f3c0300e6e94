"""saliencekit: train image classifiers, explain them with saliency maps, check which maps to trust.

>>> import saliencekit as sk
>>> "gradcam" in sk.list_methods()  # doctest: +SKIP
True
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# The method engine is imported lazily so that ``import saliencekit`` stays cheap for the CLI.
_LAZY = {
    "list_methods": "saliencekit.methods",
    "create_method": "saliencekit.methods",
    "explain": "saliencekit.methods",
    "Explanation": "saliencekit.methods",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'saliencekit' has no attribute {name!r}")


__all__ = ["Explanation", "__version__", "create_method", "explain", "list_methods"]
