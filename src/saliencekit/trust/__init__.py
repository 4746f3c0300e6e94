"""saliencekit.trust: checks of which saliency maps to trust, and the metrics they are built from.

The names below are loaded lazily (on first use), so ``import saliencekit.trust`` stays cheap.

>>> from saliencekit import trust
>>> "relevance_mass" in trust.__all__
True
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module (under saliencekit.trust) that defines it
_LAZY: dict[str, str] = {
    # similarity
    "SIMILARITY_METRICS": "similarity",
    "spearman": "similarity",
    "pearson": "similarity",
    "ssim": "similarity",
    "hog_correlation": "similarity",
    "topk_iou": "similarity",
    "similarity_all": "similarity",
    "minmax_normalize": "similarity",
    "random_maps": "similarity",
    "null_level": "similarity",
    "null_level_from_maps": "similarity",
    # localization
    "pointing_game": "localization",
    "energy_pointing_game": "localization",
    "relevance_mass": "localization",
    "relevance_rank": "localization",
    "mask_share": "localization",
    # complexity and robustness
    "sparseness": "complexity",
    "complexity": "complexity",
    "max_sensitivity": "complexity",
    # faithfulness
    "CurveResult": "faithfulness",
    "deletion_curve": "faithfulness",
    "insertion_curve": "faithfulness",
    "road": "faithfulness",
    "make_baseline": "faithfulness",
    "noisy_linear_impute": "_imputation",
    # statistics
    "bootstrap_ci": "stats",
    "summarize": "stats",
    "rank_methods": "stats",
}



def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)

# ``complexity`` names both a submodule and its function. Importing the submodule would bind the package
# attribute to the module, so it is imported here once and the name rebound to the function (this imports torch).
from saliencekit.trust.complexity import complexity  # noqa: E402, F401
