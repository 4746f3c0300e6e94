"""Reference images: the distribution the SHAP-family methods draw their baselines from.

Expected gradients (Erion et al. 2021) and GradientSHAP (Lundberg & Lee 2017) explain ``S(x)`` against baselines
drawn from a *reference distribution*, in the papers the training images. A method takes them as its ``baselines``
option: a (K, C, H, W) tensor, ``"uniform"`` (noise images, no data needed), ``"training"`` (the reference images
offered by the enclosing run) or ``"auto"`` (the default: the run's reference images when a run offers them, else
``"uniform"``).

A run offers reference images through :func:`reference_scope`. ``saliencekit explain RUN ...`` and ``saliencekit
check RUN`` (``run_checks(run)``) open one with :func:`training_references`: ``count`` (64) training images of the
run's split, picked with a fixed seed and loaded on first use, so commands whose methods take no references never
read them. In Python::

    run = sk.load_run("runs/effusion")
    with reference_scope(training_references(run)):
        maps = sk.explain(run.model, images, ["expected_gradients"])

or pass the images directly: ``create_method("expected_gradients", model, baselines=train_images)``.

Every model explained inside one scope (the model checked, its randomised copies, the random-label model of the data
randomisation check) draws from the same reference images, so the checks compare like with like.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from saliencekit.errors import InputError

if TYPE_CHECKING:
    from saliencekit.run import Run

#: Training images a run offers by default (:func:`training_references`).
REFERENCE_COUNT = 64
#: The ``baselines`` names every SHAP-family method takes (besides a tensor).
REFERENCE_CHOICES = ("auto", "training", "uniform")


class ReferenceSet:
    """Reference images offered to the methods of a scope, loaded on first use.

    Args:
        images: a (K, C, H, W) tensor, or a function returning one (called once, on first use).
        source: what the images are, for the explanations' ``params`` (e.g. "64 training images of runs/x").
    """

    def __init__(self, images: torch.Tensor | Callable[[], torch.Tensor], source: str):
        self._load = images if callable(images) else None
        self._images = None if callable(images) else check_references(images)
        self.source = source

    def images(self) -> torch.Tensor:
        """The (K, C, H, W) images."""
        if self._images is None:
            assert self._load is not None
            self._images = check_references(self._load())
        return self._images

    def __repr__(self) -> str:
        return f"ReferenceSet({self.source!r})"


_CURRENT: contextvars.ContextVar[ReferenceSet | None] = contextvars.ContextVar("saliencekit_references", default=None)


def check_references(images: object) -> torch.Tensor:
    """Validate a tensor of reference images: floating point, (K, C, H, W) with K >= 1, finite."""
    if not isinstance(images, torch.Tensor):
        raise InputError(f"reference images must be a (K, C, H, W) tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[0] < 1 or not images.is_floating_point():
        raise InputError(f"reference images must be a floating point (K, C, H, W) tensor with K >= 1, got shape "
                         f"{tuple(images.shape)} and dtype {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise InputError("the reference images contain NaN or infinite values")
    return images


@contextlib.contextmanager
def reference_scope(references: ReferenceSet | torch.Tensor | None, source: str = "reference images"
                    ) -> Iterator[ReferenceSet | None]:
    """Offer reference images to every method run in the block (``baselines="auto"`` or ``"training"``).

    ``None`` offers none (the block then runs as outside any scope). Scopes nest; the innermost wins.

    >>> with reference_scope(torch.zeros(3, 1, 4, 4), "three black images") as refs:
    ...     current_references() is refs, refs.images().shape[0]
    (True, 3)
    >>> current_references() is None
    True
    """
    refs = references if references is None or isinstance(references, ReferenceSet) else ReferenceSet(references,
                                                                                                        source)
    token = _CURRENT.set(refs)
    try:
        yield refs
    finally:
        _CURRENT.reset(token)


def current_references() -> ReferenceSet | None:
    """The reference images of the innermost :func:`reference_scope`, or None."""
    return _CURRENT.get()


def _pick(n: int, count: int, seed: int) -> list[int]:
    """``min(count, n)`` of ``range(n)`` chosen with ``seed``, in increasing order."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[: min(count, n)].sort().values.tolist()


def sample_references(images: torch.Tensor, count: int = REFERENCE_COUNT, seed: int = 0) -> torch.Tensor:
    """``count`` of the (N, C, H, W) ``images`` (all when there are fewer), chosen with ``seed`` as
    :func:`training_references` chooses them.

    >>> sample_references(torch.arange(10.0).view(10, 1, 1, 1), count=3, seed=0).flatten().tolist()
    [1.0, 4.0, 7.0]
    """
    return check_references(images)[_pick(int(images.shape[0]), count, seed)]


def training_references(run: Run, count: int = REFERENCE_COUNT, seed: int = 0) -> ReferenceSet:
    """``count`` training images of a run (all of them when it has fewer), picked with ``seed``, loaded on first use.

    Args:
        run: an open run directory (:func:`saliencekit.load_run`).
        count: how many images.
        seed: seeds the choice among the training images.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InputError(f"count must be a positive number of images, got {count!r}")

    def load() -> torch.Tensor:
        train = run.dataset("train")
        n = len(train)
        if n == 0:
            raise InputError(f"{getattr(run, 'path', 'the run')} has no training images to draw reference images "
                             "from; pass a tensor of reference images as baselines=, or baselines='uniform'")
        images = torch.stack([train.image(i) for i in _pick(n, count, seed)])
        device = getattr(run, "device", None)
        return images.to(device) if device is not None else images

    return ReferenceSet(load, f"up to {count} training images of {getattr(run, 'path', 'the run')} (seed {seed})")


__all__ = ["REFERENCE_CHOICES", "REFERENCE_COUNT", "ReferenceSet", "check_references", "current_references",
           "reference_scope", "sample_references", "training_references"]
