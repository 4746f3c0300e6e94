"""Class probabilities of a classifier, by the one rule that reads its outputs (:mod:`saliencekit.methods.outputs`).

A one-logit model (a binary classifier trained with a sigmoid) gives ``[1 - sigmoid(z), sigmoid(z)]``;
more logits give their softmax; a multi-label model (one sigmoid per label) gives each logit's sigmoid.
"""

from __future__ import annotations

import torch
from torch import nn


def predict_proba(
    model: nn.Module, images: torch.Tensor, batch_size: int = 64, device: str | torch.device | None = None,
    multilabel: bool = False, output: str | None = None, threshold: float | None = None,
) -> torch.Tensor:
    """Class probabilities ``(N, num_classes)`` (on CPU) of a model in eval mode (per-label probabilities
    ``(N, num_labels)`` for a multi-label model), by the model's output rule
    (:mod:`saliencekit.methods.outputs`: a final Sigmoid/Softmax module is bypassed and its logits turned into the
    same probabilities; declared probabilities are returned as they are).

    The model's training mode is restored afterwards.

    Args:
        model: the classifier.
        images: (N, C, H, W) preprocessed images.
        batch_size: images per forward pass.
        device: where to run the model (default: where its parameters are).
        multilabel: the model has one sigmoid logit per label (the same as ``output="multilabel"``).
        output: what the model returns (:data:`~saliencekit.methods.outputs.OUTPUTS`; default ``"auto"``).
        threshold: multi-label threshold (does not change the probabilities).

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
    >>> predict_proba(net, torch.zeros(3, 1, 2, 2)).shape
    torch.Size([3, 2])
    """
    from saliencekit.methods.outputs import model_outputs

    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else images.device
    if len(images) == 0:
        return torch.zeros(0, 2)
    if multilabel and output is None:
        output = "multilabel"
    logits, rule = model_outputs(model, images, batch_size, output=output, threshold=threshold, device=device)
    return rule.probabilities(logits.float()).cpu()


def logits_to_proba(logits: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """``(N, 1)`` logits -> ``(N, 2)`` sigmoid probabilities; ``(N, C)`` -> softmax; multi-label: the sigmoid of
    each logit (:meth:`saliencekit.methods.outputs.OutputRule.probabilities`).

    >>> logits_to_proba(torch.tensor([[0.0]])).tolist()
    [[0.5, 0.5]]
    """
    from saliencekit.methods.outputs import OutputRule

    return OutputRule(multilabel=multilabel).probabilities(logits)
