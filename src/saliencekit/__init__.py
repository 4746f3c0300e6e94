"""saliencekit: train image classifiers, explain them with saliency maps, check which maps to trust.

>>> import saliencekit as sk
>>> "gradcam" in sk.list_methods()  # doctest: +SKIP
True
"""

from __future__ import annotations

from saliencekit._lazy import lazy_attributes

__version__ = "0.1.0"

# The method engine is imported lazily so that ``import saliencekit`` stays cheap for the CLI.
_LAZY = {
    "list_methods": "saliencekit.methods",
    "create_method": "saliencekit.methods",
    "explain": "saliencekit.methods",
    "Explanation": "saliencekit.methods",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


__all__ = ["Explanation", "__version__", "create_method", "explain", "list_methods"]
