"""Class probabilities of a classifier: the one rule that turns its logits into probabilities.

A one-logit model (a binary classifier trained with a sigmoid) gives ``[1 - sigmoid(z), sigmoid(z)]``;
more logits give their softmax; a multi-label model (one sigmoid per label) gives each logit's sigmoid.
"""

from __future__ import annotations

import torch
from torch import nn

from saliencekit import _layout


@torch.inference_mode()
def predict_proba(
    model: nn.Module, images: torch.Tensor, batch_size: int = 64, device: str | torch.device | None = None,
    multilabel: bool = False,
) -> torch.Tensor:
    """Class probabilities ``(N, num_classes)`` (on CPU) of a model in eval mode (per-label probabilities
    ``(N, num_labels)`` with ``multilabel``).

    The model's training mode is restored afterwards.

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
    >>> predict_proba(net, torch.zeros(3, 1, 2, 2)).shape
    torch.Size([3, 2])
    """
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = []
        for start in range(0, len(images), batch_size):
            logits = _layout.forward(model, images[start : start + batch_size].to(device)).float().cpu()
            out.append(logits_to_proba(logits, multilabel=multilabel))
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 2)


def logits_to_proba(logits: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """``(N, 1)`` logits -> ``(N, 2)`` sigmoid probabilities; ``(N, C)`` -> softmax; multi-label: the sigmoid of
    each logit.

    >>> logits_to_proba(torch.tensor([[0.0]])).tolist()
    [[0.5, 0.5]]
    """
    if multilabel:
        return torch.sigmoid(logits.reshape(len(logits), -1))
    if logits.ndim == 1 or logits.shape[1] == 1:
        p = torch.sigmoid(logits.reshape(-1))
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)
