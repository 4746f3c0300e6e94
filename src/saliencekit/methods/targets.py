"""What to explain: the score ``S`` whose saliency is computed (METHODS.md, "Targets").

- Multi-class (softmax) model: ``S`` is the logit of the chosen class.
- Single-output binary (sigmoid) model: class 1 is ``S = z`` and class 0 is ``S = -z``, ``z`` the logit.
- Default: the predicted class. Any callable ``output -> (N,)`` may be used instead.

A :class:`Target` is resolved once on the clean input (fixing the class of every image), and
the resulting :class:`ResolvedTarget` then scores any batch of outputs, including the stacked
outputs of multi-pass methods (integrated gradients, SmoothGrad, Score-CAM), where the rows are
``k`` blocks of the ``N`` images (block-major: rows ``j*N .. j*N+N-1`` belong to pass ``j``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from saliencekit.errors import InputError

TargetLike = "int | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | Target | None"


def num_classes_of(output: torch.Tensor) -> int:
    """Number of classes a model output stands for (a single logit means 2 classes)."""
    k = output.shape[1] if output.ndim == 2 else 1
    return 2 if k == 1 else k


def predicted_classes(output: torch.Tensor) -> torch.Tensor:
    """Predicted class per row: ``z > 0`` for a single logit, else the arg-max."""
    output = _as_2d(output)
    if output.shape[1] == 1:
        return (output[:, 0] > 0).long()
    return output.argmax(dim=1)


def class_scores(output: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``S`` per row for given classes (classes tiled over the row blocks of ``output``)."""
    output = _as_2d(output)
    classes = _tile(classes.to(output.device), output.shape[0])
    if output.shape[1] == 1:
        z = output[:, 0]
        return torch.where(classes == 1, z, -z)
    return output.gather(1, classes[:, None])[:, 0]


def class_probabilities(output: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Probability of the given classes: ``sigmoid(S)`` for a single logit, softmax otherwise."""
    output = _as_2d(output)
    if output.shape[1] == 1:
        return torch.sigmoid(class_scores(output, classes))
    classes = _tile(classes.to(output.device), output.shape[0])
    logits = output if output.dtype == torch.float64 else output.float()
    return torch.softmax(logits, dim=1).gather(1, classes[:, None])[:, 0]


def _as_2d(output: torch.Tensor) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise InputError(f"the model must return a tensor of logits, got {type(output).__name__}")
    if output.ndim == 1:
        return output[:, None]
    if output.ndim != 2:
        raise InputError(f"the model must return logits of shape (N, classes) or (N,), got {tuple(output.shape)}")
    return output


def _tile(values: torch.Tensor, rows: int) -> torch.Tensor:
    n = values.shape[0]
    if rows == n:
        return values
    if n == 0 or rows % n:
        raise InputError(f"cannot tile {n} targets over {rows} output rows")
    return values.repeat(rows // n)


@dataclass
class ResolvedTarget:
    """A target fixed for a batch of ``n`` images: classes (or a score function)."""

    n: int
    classes: torch.Tensor | None = None
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    def score(self, output: torch.Tensor) -> torch.Tensor:
        """The explained score ``S`` per row of ``output`` (rows may be ``k`` blocks of ``n``)."""
        if self.fn is not None:
            s = self.fn(output)
            if not isinstance(s, torch.Tensor) or s.ndim != 1 or s.shape[0] != output.shape[0]:
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise InputError(f"a target function must return one score per image, shape ({output.shape[0]},); "
                                 f"got {got}")
            return s
        assert self.classes is not None
        return class_scores(output, self.classes)

    def probability(self, output: torch.Tensor) -> torch.Tensor:
        """Probability of the explained class (for callables: sigmoid of the score)."""
        if self.fn is not None:
            return torch.sigmoid(self.score(output))
        assert self.classes is not None
        return class_probabilities(output, self.classes)

    def class_indices(self) -> torch.Tensor:
        """The classes as a (n,) tensor; -1 where a callable target defines the score."""
        if self.classes is None:
            return torch.full((self.n,), -1, dtype=torch.long)
        return self.classes.detach().cpu()

    def subset(self, index: slice | torch.Tensor) -> ResolvedTarget:
        """The same target for a subset of the images (for per-chunk computation)."""
        if self.classes is None:
            n = len(range(self.n)[index]) if isinstance(index, slice) else int(index.numel())
            return ResolvedTarget(n, None, self.fn)
        classes = self.classes[index]
        return ResolvedTarget(int(classes.shape[0]), classes, None)


class Target(abc.ABC):
    """What to explain. Subclasses turn a clean model output into a :class:`ResolvedTarget`."""

    @abc.abstractmethod
    def resolve(self, output: torch.Tensor) -> ResolvedTarget:
        """Fix the target for the images whose clean output is ``output`` (N, K)."""


class PredictedClass(Target):
    """The model's predicted class for each image (the default).

    >>> t = PredictedClass().resolve(torch.tensor([[2.0], [-1.0]]))
    >>> t.classes.tolist(), t.score(torch.tensor([[2.0], [-1.0]])).tolist()
    ([1, 0], [2.0, 1.0])
    """

    def resolve(self, output: torch.Tensor) -> ResolvedTarget:
        classes = predicted_classes(output)
        return ResolvedTarget(int(classes.shape[0]), classes)


class ClassTarget(Target):
    """A fixed class index for every image, or one index per image.

    >>> ClassTarget(0).resolve(torch.tensor([[3.0]])).score(torch.tensor([[3.0]])).tolist()
    [-3.0]
    """

    def __init__(self, index: int | Sequence[int] | torch.Tensor):
        self.index = index

    def resolve(self, output: torch.Tensor) -> ResolvedTarget:
        output = _as_2d(output)
        n, k = output.shape[0], num_classes_of(output)
        idx = torch.as_tensor(self.index, dtype=torch.long, device=output.device)
        if idx.ndim == 0:
            idx = idx.expand(n).clone()
        if idx.ndim != 1 or idx.shape[0] != n:
            raise InputError(f"target must be one class index or one per image ({n} images), got shape "
                             f"{tuple(idx.shape)}")
        bad = idx[(idx < 0) | (idx >= k)]
        if bad.numel():
            kind = "a single-logit binary model (class 1 = logit, class 0 = minus logit)" if output.shape[1] == 1 \
                else f"a model with {k} classes"
            raise InputError(f"target class {int(bad[0])} is out of range for {kind}; valid: 0..{k - 1}")
        return ResolvedTarget(n, idx)


class FunctionTarget(Target):
    """Any callable ``output (N, K) -> scores (N,)``.

    >>> FunctionTarget(lambda out: out.sum(1)).resolve(torch.ones(2, 3)).score(torch.ones(2, 3)).tolist()
    [3.0, 3.0]
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def resolve(self, output: torch.Tensor) -> ResolvedTarget:
        return ResolvedTarget(int(output.shape[0]), None, self.fn)


def as_target(target: object) -> Target:
    """Turn what a user passes as ``target`` into a :class:`Target`.

    ``None`` -> predicted class; an int, a list of ints or an integer tensor -> :class:`ClassTarget`;
    a callable -> :class:`FunctionTarget`; a :class:`Target` is returned unchanged.
    """
    if target is None:
        return PredictedClass()
    if isinstance(target, Target):
        return target
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.is_complex():
            raise InputError(f"a target tensor must hold integer class indices, got dtype {target.dtype}")
        return ClassTarget(target)
    if isinstance(target, bool):
        raise InputError("target must be a class index, a list of indices or a callable; got a bool")
    if isinstance(target, int):
        return ClassTarget(target)
    if isinstance(target, Sequence) and not isinstance(target, str) and all(isinstance(t, int) for t in target):
        return ClassTarget(list(target))
    if callable(target):
        return FunctionTarget(target)
    raise InputError(
        f"target must be None (predicted class), a class index, a list of indices, or a callable "
        f"output -> (N,) scores; got {target!r}"
    )
