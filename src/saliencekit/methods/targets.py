"""What to explain: the score ``S`` whose saliency is computed (docs/methods.md, "The explained score S").

- Multi-class (softmax) model: ``S`` is the logit of the chosen class.
- Single-output binary (sigmoid) model: class 1 is ``S = z`` and class 0 is ``S = -z``, ``z`` the logit.
- Multi-label model: ``S`` is the logit of the chosen label.
- Default: the predicted class (for a multi-label model the most probable label). Any callable
  ``output -> (N,)`` may be used instead.

How outputs are read (logits or probabilities, exclusive classes or independent labels, a final activation
bypassed) is the model's :class:`~saliencekit.methods.outputs.OutputRule`; a target uses the rule active when it
is resolved (:func:`~saliencekit.methods.outputs.output_scope`, entered by every method).

A :class:`Target` is resolved once on the clean input (fixing the class of every image), and
the resulting :class:`ResolvedTarget` then scores any batch of outputs, including the stacked
outputs of multi-pass methods (integrated gradients, SmoothGrad, Score-CAM), where the rows are
``k`` blocks of the ``N`` images (block-major: rows ``j*N .. j*N+N-1`` belong to pass ``j``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from saliencekit.errors import InputError
from saliencekit.methods.outputs import OutputRule, as_rows, current_rule, warn_if_probabilities

TargetLike = "int | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | Target | None"


def num_classes_of(output: torch.Tensor, rule: OutputRule | None = None) -> int:
    """Number of classes a model output stands for (a single binary logit means 2 classes; see
    :meth:`~saliencekit.methods.outputs.OutputRule.num_classes`). ``rule`` defaults to :func:`current_rule`."""
    return (rule or current_rule()).num_classes(output)


def predicted_classes(output: torch.Tensor, rule: OutputRule | None = None) -> torch.Tensor:
    """Predicted class per row: ``z > 0`` for a single binary logit, else the most probable class (for
    multi-label outputs the most probable label). ``rule`` defaults to :func:`current_rule`."""
    return (rule or current_rule()).predicted(output)


def class_scores(output: torch.Tensor, classes: torch.Tensor, rule: OutputRule | None = None) -> torch.Tensor:
    """``S`` per row for given classes (classes tiled over the row blocks of ``output``)."""
    return (rule or current_rule()).scores(output, classes)


def class_probabilities(output: torch.Tensor, classes: torch.Tensor, rule: OutputRule | None = None) -> torch.Tensor:
    """Probability of the given classes: ``sigmoid(S)`` for a single logit or per label (multi-label), softmax
    over exclusive classes. ``rule`` defaults to :func:`current_rule`."""
    return (rule or current_rule()).class_probabilities(output, classes)


@dataclass
class ResolvedTarget:
    """A target fixed for a batch of ``n`` images: classes (or a score function)."""

    n: int
    classes: torch.Tensor | None = None
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    pending: Target | None = None
    predictions: torch.Tensor | None = None
    rule: OutputRule = field(default_factory=current_rule)

    @classmethod
    def deferred(cls, target: Target, n: int) -> ResolvedTarget:
        """A target resolved by the first output it scores (its rows must be the ``n`` clean images).

        Single-pass methods use it to fix the target (e.g. the predicted class) from the very forward
        pass whose graph they differentiate, instead of paying for a separate clean forward pass.
        """
        return cls(n, pending=target)

    def score(self, output: torch.Tensor) -> torch.Tensor:
        """The explained score ``S`` per row of ``output`` (rows may be ``k`` blocks of ``n``)."""
        if self.pending is not None:
            clean = as_rows(output).detach()
            if clean.shape[0] != self.n:
                raise InputError(f"a deferred target must first score the {self.n} clean images, got {clean.shape[0]}")
            resolved = self.pending.resolve(clean)
            self.classes, self.fn, self.pending = resolved.classes, resolved.fn, None
            self.predictions = self.rule.predicted(clean)
        if self.fn is not None:
            s = self.fn(output)
            if not isinstance(s, torch.Tensor) or s.ndim != 1 or s.shape[0] != output.shape[0]:
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise InputError(f"a target function must return one score per image, shape ({output.shape[0]},); "
                                 f"got {got}")
            return s
        assert self.classes is not None
        return self.rule.scores(output, self.classes)

    def probability(self, output: torch.Tensor) -> torch.Tensor:
        """Probability of the explained class (for callables: sigmoid of the score)."""
        if self.fn is not None:
            return torch.sigmoid(self.score(output))
        assert self.classes is not None
        return self.rule.class_probabilities(output, self.classes)

    def class_indices(self) -> torch.Tensor:
        """The classes as a (n,) tensor; -1 where a callable target defines the score."""
        if self.classes is None:
            return torch.full((self.n,), -1, dtype=torch.long)
        return self.classes.detach().cpu()

    def subset(self, index: slice | torch.Tensor) -> ResolvedTarget:
        """The same target for a subset of the images (for per-chunk computation)."""
        if self.classes is None:
            n = len(range(self.n)[index]) if isinstance(index, slice) else int(index.numel())
            return ResolvedTarget(n, None, self.fn, rule=self.rule)
        classes = self.classes[index]
        return ResolvedTarget(int(classes.shape[0]), classes, None, rule=self.rule)


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
        rule = current_rule()
        warn_if_probabilities(output, rule)
        classes = rule.predicted(output)
        return ResolvedTarget(int(classes.shape[0]), classes, rule=rule)


class ClassTarget(Target):
    """A fixed class index for every image, or one index per image.

    >>> ClassTarget(0).resolve(torch.tensor([[3.0]])).score(torch.tensor([[3.0]])).tolist()
    [-3.0]
    """

    def __init__(self, index: int | Sequence[int] | torch.Tensor):
        self.index = index

    def resolve(self, output: torch.Tensor) -> ResolvedTarget:
        output = as_rows(output)
        rule = current_rule()
        warn_if_probabilities(output, rule)
        n, k = output.shape[0], rule.num_classes(output)
        idx = torch.as_tensor(self.index, dtype=torch.long, device=output.device)
        if idx.ndim == 0:
            idx = idx.expand(n).clone()
        if idx.ndim != 1 or idx.shape[0] != n:
            raise InputError(f"target must be one class index or one per image ({n} images), got shape "
                             f"{tuple(idx.shape)}")
        bad = idx[(idx < 0) | (idx >= k)]
        if bad.numel():
            if rule.multilabel:
                kind = f"a multi-label model with {k} label(s)"
            elif output.shape[1] == 1:
                kind = "a single-logit binary model (class 1 = logit, class 0 = minus logit)"
            else:
                kind = f"a model with {k} classes"
            raise InputError(f"target class {int(bad[0])} is out of range for {kind}; valid: 0..{k - 1}")
        return ResolvedTarget(n, idx, rule=rule)


class FunctionTarget(Target):
    """Any callable ``output (N, K) -> scores (N,)``.

    >>> FunctionTarget(lambda out: out.sum(1)).resolve(torch.ones(2, 3)).score(torch.ones(2, 3)).tolist()
    [3.0, 3.0]
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def resolve(self, output: torch.Tensor) -> ResolvedTarget:
        return ResolvedTarget(int(output.shape[0]), None, self.fn, rule=current_rule())


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
