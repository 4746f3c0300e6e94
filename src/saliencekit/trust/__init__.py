"""saliencekit.trust: checks of which saliency maps to trust, and the metrics they are built from.

The names below are loaded lazily (on first use), so ``import saliencekit.trust`` stays cheap.

>>> from saliencekit import trust
>>> "relevance_mass" in trust.__all__
True
"""

from __future__ import annotations

from saliencekit._lazy import lazy_attributes

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
    "sparseness": "complexity_metrics",
    "complexity": "complexity_metrics",
    "max_sensitivity": "complexity_metrics",
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
    # checks (runners)
    "CHECKS": "runner",
    "CheckSettings": "settings",
    "CheckResults": "results",
    "load_checks": "results",
    "list_checks": "checks",
    "get_check": "checks",
    "register_check": "checks",
    "run_checks": "runner",
    "default_methods": "runner",
    "faithfulness_curves": "runner",
    "model_randomization": "randomization",
    "data_randomization": "randomization",
    "train_on_permuted_labels": "randomization",
    "parameter_layers": "randomization",
    "randomize_layers": "randomization",
    "RandomizationResult": "randomization",
    "DataRandomizationResult": "randomization",
    "Verdict": "randomization",
    "input_invariance": "invariance",
    "compensated_copy": "invariance",
    "InvarianceResult": "invariance",
    "agreement": "method_agreement",
    "AgreementResult": "method_agreement",
}

__getattr__, __dir__ = lazy_attributes(__name__, {name: f"{__name__}.{module}" for name, module in _LAZY.items()})


__all__ = sorted(_LAZY)
