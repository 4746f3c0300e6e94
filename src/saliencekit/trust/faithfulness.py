"""Faithfulness of saliency maps: deletion / insertion curves (Petsiuk et al. 2018) and ROAD (Rong et al. 2022).

All functions take the model, the inputs (N, C, H, W), their maps (N, H, W) and ``targets=``, which says what
the model returns and which class each image is scored by:

- **The classifier** (the usual case): ``model`` returns logits (B, K), or one logit (B,) / (B, 1) for a binary
  sigmoid model, and ``targets`` is None (each image's predicted class), a class index for every image, one class
  index per image (a sequence or an integer tensor), a :class:`~saliencekit.methods.targets.Target` or a callable
  ``logits -> (N,)`` scores, resolved on the clean images as the saliency methods resolve their targets. Each
  perturbed copy is scored with the probability of its own image's class. An ``nn.Module`` needs no ``targets``
  (default None); it runs in eval mode (restored afterwards) and by its output rule (a final Sigmoid / Softmax
  module is read as the methods read it: :mod:`saliencekit.methods.outputs`).
- **A probability function**: ``targets="explained"`` says that ``model`` already returns the probability (B,)
  of the explained class of each image.

A plain function without ``targets=`` is refused: its output could be either. Perturbed copies are evaluated in
batches of ``batch_size`` under ``torch.inference_mode()`` on the inputs' device.

>>> import torch
>>> x = torch.rand(2, 1, 8, 8)
>>> maps = torch.zeros(2, 8, 8); maps[:, 3, 3] = 1
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
>>> deletion_curve(net, x, maps, steps=4).scores.shape  # each image's predicted class
torch.Size([2, 5])
>>> deletion_curve(net, x, maps, steps=4, targets=[0, 2]).scores.shape  # image 0: class 0, image 1: class 2
torch.Size([2, 5])
>>> score = lambda b: torch.sigmoid(b[:, 0, 3, 3] * 10)
>>> deletion_curve(score, x, maps, steps=4, targets="explained").auc.shape
torch.Size([2])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saliencekit.baselines import DEFAULT_BLUR_SIGMA, make_baseline
from saliencekit.errors import InputError, UnknownNameError
from saliencekit.trust._imputation import noisy_linear_impute
from saliencekit.trust._ops import as_inputs, as_maps, make_generator

ModelScore = Callable[[Tensor], Tensor]
EXPLAINED = "explained"  # targets="explained": the model function already returns the explained class's probability


class _Unset:
    def __repr__(self) -> str:
        return "<None for an nn.Module; required for a function>"


UNSET: object = _Unset()  # targets= not given
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class CurveResult:
    """A perturbation curve per image.

    Attributes:
        kind: ``"deletion"``, ``"insertion"``, ``"road_morf"`` or ``"road_lerf"``.
        fractions: (S,) share of pixels removed / inserted at each point.
        scores: (N, S) probability of the explained class at each point.
        auc: (N,) area under each curve by the trapezoid rule over ``fractions`` (for deletion and insertion
            the fractions run from 0 to 1, so this is the area on [0, 1]).

    >>> r = CurveResult("deletion", torch.tensor([0.0, 1.0]), torch.tensor([[1.0, 0.0]]), torch.tensor([0.5]))
    >>> r.to_dict()["auc"]
    [0.5]
    """

    kind: str
    fractions: Tensor
    scores: Tensor
    auc: Tensor

    def to_dict(self) -> dict:
        """JSON-friendly copy (lists of floats)."""
        return {"kind": self.kind, "fractions": self.fractions.tolist(), "scores": self.scores.tolist(),
                "auc": self.auc.tolist()}


def _check(inputs: Tensor, maps: Tensor) -> tuple[Tensor, Tensor]:
    inputs = as_inputs(inputs)
    maps = as_maps(maps)
    if maps.shape[0] != inputs.shape[0] or maps.shape[-2:] != inputs.shape[-2:]:
        raise InputError(f"maps must have shape (N, H, W) matching inputs (N, C, H, W), got maps {tuple(maps.shape)} "
                         f"and inputs {tuple(inputs.shape)}; upsample the maps to the input size first")
    return inputs, maps.to(inputs.device)


def salience_ranks(maps: Tensor, descending: bool = True) -> Tensor:
    """Rank of every pixel of every map (0 = most salient when ``descending``); ties by pixel index.

    Returns:
        (N, H*W) long.
    """
    flat = maps.reshape(maps.shape[0], -1)
    order = torch.sort(flat, dim=1, descending=descending, stable=True).indices
    n, p = flat.shape
    return torch.empty_like(order).scatter_(1, order, torch.arange(p, device=flat.device).expand(n, p))


def _scores(model_score: ModelScore, batch: Tensor) -> Tensor:
    out = model_score(batch)
    if not isinstance(out, Tensor) or out.shape != (batch.shape[0],):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(f"model_score must return one probability per image, shape ({batch.shape[0]},), got {shape}")
    return out.to(torch.float64)


RowScorer = Callable[[Tensor, Tensor], Tensor]


def _row_scorer(model: ModelScore, inputs: Tensor, targets: object, batch_size: int) -> RowScorer:
    """``(batch, image index of each row) -> probability (B,) of each row's explained class``.

    ``targets="explained"``: ``model`` returns that probability itself. Anything else is resolved once on the
    clean inputs by :func:`saliencekit.methods.targets.as_target` (None: the predicted class), and ``model`` is
    the classifier whose logits are turned into the probability of each row's class.
    """
    if targets is UNSET:
        if not isinstance(model, nn.Module):
            raise InputError(
                "the model is a function, so say what it returns: targets='explained' when it returns the probability "
                "(B,) of each image's explained class; targets=None (the predicted class), a class index, one index "
                "per image or a Target when it returns logits (B, classes)")
        targets = None
    if isinstance(targets, str):
        if targets != EXPLAINED:
            raise InputError(f"targets must be {EXPLAINED!r} (the model returns the explained class's "
                             "probability), None (the predicted class), a class index, one index per image, or a "
                             f"target object; got {targets!r}")
        return lambda batch, img: _scores(model, batch)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    from saliencekit.methods.targets import as_target

    with torch.inference_mode():
        clean = torch.cat([_logits(model, inputs[lo:lo + batch_size])
                           for lo in range(0, inputs.shape[0], batch_size)])
    resolved = as_target(targets).resolve(clean)

    def score(batch: Tensor, img: Tensor) -> Tensor:
        out = _logits(model, batch)
        return resolved.subset(img.to(clean.device)).probability(out).to(torch.float64)

    return score


def _logits(model: ModelScore, batch: Tensor) -> Tensor:
    out = model(batch)
    if not isinstance(out, Tensor) or out.ndim not in (1, 2) or out.shape[0] != batch.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(f"with targets= other than 'explained', the model must be the classifier, returning logits "
                         f"of shape ({batch.shape[0]}, classes) or ({batch.shape[0]},); got {shape}")
    return out


@contextlib.contextmanager
def _model_scope(model: ModelScore, inputs: Tensor, targets: object) -> Iterator[None]:
    """A classifier module runs in eval mode and by its output rule for the block (both restored after)."""
    if not isinstance(model, nn.Module) or isinstance(targets, str):
        yield
        return
    from saliencekit.methods._capture import eval_mode
    from saliencekit.methods.outputs import output_scope

    with eval_mode(model), output_scope(model, example=inputs[:1]):
        yield


def _curve(kind: str, score: RowScorer, start: Tensor, end: Tensor, maps: Tensor, steps: int,
           batch_size: int, progress: bool) -> CurveResult:
    """Move pixels from ``start`` to ``end`` from most to least salient in ``steps`` equal steps."""
    if steps < 1:
        raise InputError(f"{kind} curve needs steps >= 1, got {steps}")
    n, _, h, w = start.shape
    ranks = salience_ranks(maps)  # (N, P)
    fractions = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    counts = torch.round(fractions * h * w).long().to(start.device)  # pixels moved at each step

    def perturbed(img: Tensor, step: Tensor, first_job: int) -> Tensor:
        moved = (ranks[img] < counts[step].unsqueeze(1)).view(-1, 1, h, w)
        return torch.where(moved, end[img], start[img])

    scores = _score_jobs(score, perturbed, n, steps + 1, start.device, batch_size, kind, progress)
    fractions = fractions.to(start.device)
    return CurveResult(kind, fractions, scores, torch.trapezoid(scores, fractions, dim=1))


def _score_jobs(score: RowScorer, perturbed: Callable[[Tensor, Tensor, int], Tensor], n: int, points: int,
                device: torch.device, batch_size: int, desc: str, progress: bool) -> Tensor:
    """Scores (N, points) of every (image, point) job, image-major, in batches of ``batch_size`` jobs.

    ``perturbed(img, point, first_job)`` builds the batch of the jobs ``first_job ..`` (their image and point
    indices given), which ``score`` rates under ``torch.inference_mode()``.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    jobs = [(i, s) for i in range(n) for s in range(points)]
    scores = torch.empty(n, points, dtype=torch.float64, device=device)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=desc, unit="img")
    try:
        with torch.inference_mode():
            for lo in range(0, len(jobs), batch_size):
                chunk = jobs[lo:lo + batch_size]
                img = torch.tensor([j[0] for j in chunk], device=device)
                step = torch.tensor([j[1] for j in chunk], device=device)
                scores[img, step] = score(perturbed(img, step, lo), img)
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return scores


def deletion_curve(model: ModelScore, inputs: Tensor, maps: Tensor, steps: int = 50,
                   baseline: str | Tensor | float = "zero", batch_size: int = 64,
                   blur_sigma: float = DEFAULT_BLUR_SIGMA, progress: bool = False,
                   targets: object = UNSET) -> CurveResult:
    """Deletion curve (Petsiuk et al. 2018): replace pixels by the baseline from most to least salient.

    At step ``s`` of ``steps`` the ``round(s / steps * H * W)`` most salient pixels (highest map value; ties by
    pixel index) are replaced in every channel, so the curve starts at the image and ends at the baseline.
    Lower area = more faithful map.

    Args:
        model: the classifier (batch (B, C, H, W) -> logits), or with ``targets="explained"`` a function
            batch -> probability (B,) of each image's explained class.
        inputs: (N, C, H, W).
        maps: (N, H, W) at the input's resolution.
        steps: number of equal steps (the curve has ``steps + 1`` points).
        baseline: ``"zero"`` (default), ``"mean"``, ``"blur"`` / ``"blurred"``, any other name of
            :func:`saliencekit.baselines.make_baseline`, a number or a tensor broadcastable to the inputs.
        batch_size: perturbed images per call of ``model``.
        blur_sigma: blur std in pixels for the ``"blur"`` baseline (kernel radius ``int(4 sigma + 0.5)``, mirrored
            edges; Petsiuk et al. also blur with sigma 5).
        progress: show a progress bar.
        targets: for the classifier, None (each image's predicted class; the default for an ``nn.Module``), a
            class index for every image, one class index per image (a sequence or an integer tensor), a
            :class:`~saliencekit.methods.targets.Target` or a callable ``logits -> (N,)`` scores (probability:
            their sigmoid), resolved as for the saliency methods; ``"explained"`` when ``model`` returns the
            explained class's probability itself. Required when ``model`` is a plain function.

    Returns:
        :class:`CurveResult` with kind ``"deletion"``.
    """
    inputs, maps = _check(inputs, maps)
    with _model_scope(model, inputs, targets):
        score = _row_scorer(model, inputs, targets, batch_size)
        return _curve("deletion", score, inputs, make_baseline(inputs, baseline, blur_sigma=blur_sigma), maps,
                      steps, batch_size, progress)


def insertion_curve(model: ModelScore, inputs: Tensor, maps: Tensor, steps: int = 50,
                    baseline: str | Tensor | float = "blur", batch_size: int = 64,
                    blur_sigma: float = DEFAULT_BLUR_SIGMA, progress: bool = False,
                    targets: object = UNSET) -> CurveResult:
    """Insertion curve (Petsiuk et al. 2018): start from the blurred image, insert original pixels, most salient first.

    Arguments (``targets`` included) as :func:`deletion_curve`; the default start is the ``"blur"`` baseline.
    Higher area = more faithful map.

    Returns:
        :class:`CurveResult` with kind ``"insertion"``.
    """
    inputs, maps = _check(inputs, maps)
    with _model_scope(model, inputs, targets):
        score = _row_scorer(model, inputs, targets, batch_size)
        return _curve("insertion", score, make_baseline(inputs, baseline, blur_sigma=blur_sigma), inputs, maps,
                      steps, batch_size, progress)


def road(model: ModelScore, inputs: Tensor, maps: Tensor, fractions: Sequence[float] = ROAD_FRACTIONS,
         order: str = "morf", noise: float = 0.01, generator: torch.Generator | int | None = None,
         batch_size: int = 64, progress: bool = False, targets: object = UNSET) -> CurveResult:
    """ROAD (Rong et al. 2022): remove a share of pixels and impute them by noisy linear imputation.

    For each fraction ``f`` the ``round(f * H * W)`` most (``order="morf"``) or least (``"lerf"``) salient
    pixels are removed and filled jointly by the weighted mean of their 8 neighbours plus Gaussian noise (see
    :mod:`saliencekit.trust._imputation`), so the removal itself leaks no shape. A faithful map makes the
    probability fall fast with MoRF (low area) and slowly with LeRF (high area).

    Arguments ``model``, ``inputs``, ``maps``, ``progress`` and ``targets`` as :func:`deletion_curve`.

    Args:
        fractions: shares of pixels removed, each in [0, 1].
        order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
        noise: std of the imputation noise, in input units.
        generator: torch.Generator or seed for the noise (None: seed 0). Each (image, fraction) gets its own noise
            stream derived from it, so the scores do not depend on ``batch_size`` or the device.
        batch_size: images imputed and scored together.

    Returns:
        :class:`CurveResult` with kind ``"road_morf"`` / ``"road_lerf"``; ``auc`` is the trapezoid area over the
        given fractions (not rescaled to [0, 1]).
    """
    inputs, maps = _check(inputs, maps)
    if order not in ("morf", "lerf"):
        raise UnknownNameError("ROAD order", order, ["morf", "lerf"])
    fr = torch.as_tensor(list(fractions), dtype=torch.float64)
    if fr.numel() == 0 or bool(((fr < 0) | (fr > 1)).any()):
        raise InputError(f"road fractions must be a non-empty list of shares in [0, 1], got {list(fractions)}")
    with _model_scope(model, inputs, targets):
        score = _row_scorer(model, inputs, targets, batch_size)
        gen = make_generator(generator)
        base = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())
        n, _, h, w = inputs.shape
        ranks = salience_ranks(maps, descending=(order == "morf"))
        counts = torch.round(fr * h * w).long().to(inputs.device)

        def perturbed(img: Tensor, step: Tensor, first_job: int) -> Tensor:
            removed = (ranks[img] < counts[step].unsqueeze(1)).view(-1, h, w)
            batch = noisy_linear_impute(inputs[img], removed, noise=0.0)
            if noise > 0:
                # one noise draw per (image, fraction), seeded from the job's index: the result does not depend on
                # batch_size
                eps = torch.stack([torch.randn(inputs.shape[1:], generator=torch.Generator().manual_seed(base + j),
                                               dtype=torch.float64) for j in range(first_job, first_job + len(img))])
                eps = eps.to(inputs.device, batch.dtype)
                batch = torch.where(removed.unsqueeze(1), batch + noise * eps, batch)
            return batch

        scores = _score_jobs(score, perturbed, n, fr.numel(), inputs.device, batch_size, f"road {order}", progress)
        fr = fr.to(inputs.device)
        auc = torch.trapezoid(scores, fr, dim=1) if fr.numel() > 1 else scores[:, 0].clone()
        return CurveResult(f"road_{order}", fr, scores, auc)
