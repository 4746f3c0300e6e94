"""Training and evaluation of classifiers on folder datasets.

>>> from saliencekit.train import TrainConfig, train, evaluate
>>> run = train("data/cxr", "runs/cxr", TrainConfig(epochs=10))  # doctest: +SKIP
>>> print(format_metrics(evaluate(run)))  # doctest: +SKIP
"""

from saliencekit.train.evaluate import compute_metrics, evaluate, format_metrics, roc_auc, roc_curve
from saliencekit.train.fit import TrainConfig, fit_model, train

__all__ = ["TrainConfig", "compute_metrics", "evaluate", "fit_model", "format_metrics", "roc_auc", "roc_curve", "train"]
