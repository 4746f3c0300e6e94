"""saliencekit: train image classifiers, explain them with saliency maps, check which maps to trust.

>>> import saliencekit as sk
>>> "gradcam" in sk.list_methods()  # doctest: +SKIP
True
"""

from __future__ import annotations

from saliencekit._lazy import lazy_attributes

__version__ = "0.1.0"

# The method engine, the checks and the report are imported lazily so that ``import saliencekit`` stays cheap for
# the CLI.
_LAZY = {
    "list_methods": "saliencekit.methods",
    "create_method": "saliencekit.methods",
    "explain": "saliencekit.methods",
    "Explanation": "saliencekit.methods",
    "load_run": "saliencekit.run",
    "run_checks": "saliencekit.trust.runner",
    "CheckSettings": "saliencekit.trust.settings",
    "load_checks": "saliencekit.trust.results",
    "build_report": "saliencekit.viz.report",
    "compare": "saliencekit.viz.inline",
    "load_model": "saliencekit.models",
    "audit": "saliencekit.audit",
    "run_audit": "saliencekit.audit",
    "open_model_data": "saliencekit.model_data",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


__all__ = ["CheckSettings", "Explanation", "__version__", "audit", "build_report", "compare", "create_method",
           "explain", "list_methods", "load_checks", "load_model", "load_run", "open_model_data",
           "run_audit", "run_checks"]
