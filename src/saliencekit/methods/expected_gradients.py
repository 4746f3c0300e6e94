"""Expected gradients (Erion et al. 2021) and GradientSHAP (Lundberg & Lee 2017; captum's GradientShap).

Both estimate ``E_{x' ~ D, a ~ U(0, 1)} [(x - x') * dS/dx(x' + a (x - x'))]``: integrated gradients averaged over
baselines ``x'`` drawn from a reference distribution ``D`` (:mod:`saliencekit.methods.references`), the integral
and the expectation estimated together by ``samples`` random (baseline, point on the path) draws. Its sum
approaches ``S(x) - E[S(x')]``; the gap of the estimate is reported per image. GradientSHAP also adds Gaussian
noise to the input first (SmoothGrad's noise; captum's ``stdevs``): with ``noise=0`` the two are one method.

Draws (one seeded generator on the input's device, ``torch.Generator(device).manual_seed(seed)``, the same draws
for every image of a batch, so an image's map does not depend on its batch), in this order:

1. the baselines: ``pick = torch.randint(K, (samples,))`` indices into the K reference images, or, for
   ``baselines="uniform"``, ``u = torch.rand((samples, C, H, W))`` and ``x'_ij = min(x_i) + u_j (max(x_i) -
   min(x_i))``;
2. the points on the path: ``a = torch.rand(samples)``;
3. GradientSHAP with ``noise > 0`` only: ``eps = torch.randn((samples, C, H, W))``, ``x~_ij = x_i + sigma_i eps_j``
   with ``sigma_i = noise * (max(x_i) - min(x_i))`` (else ``x~ = x``).

Sample ``j`` of image ``i`` contributes ``(x~_ij - x'_ij) * dS/dx(x'_ij + a_j (x~_ij - x'_ij)) / samples`` (captum's
formula: the noisy input enters both the point and the difference).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from saliencekit import _layout
from saliencekit.errors import InputError
from saliencekit.methods._batching import BatchSize, run_in_chunks
from saliencekit.methods._option_checks import check_number, check_positive_int, check_seed
from saliencekit.methods._precision import Precision
from saliencekit.methods.gradient import PixelGradientMethod, input_gradient, rows_target
from saliencekit.methods.references import REFERENCE_CHOICES, check_references, current_references
from saliencekit.methods.registry import register_method
from saliencekit.methods.targets import ResolvedTarget

Baselines = str | torch.Tensor


def _check_baselines(baselines: object) -> Baselines:
    if isinstance(baselines, torch.Tensor):
        return check_references(baselines)
    if isinstance(baselines, str) and baselines in REFERENCE_CHOICES:
        return baselines
    raise InputError(f"baselines must be one of {', '.join(REFERENCE_CHOICES)} or a (K, C, H, W) tensor of reference "
                     f"images (e.g. training images), got {baselines!r}")


def resolve_baselines(baselines: Baselines) -> tuple[torch.Tensor | None, str]:
    """The reference images to draw from (None: uniform noise) and where they come from.

    Raises:
        InputError: ``"training"`` outside a run's :func:`~saliencekit.methods.references.reference_scope`.
    """
    if isinstance(baselines, torch.Tensor):
        return baselines, f"{baselines.shape[0]} given reference images"
    if baselines == "uniform":
        return None, "uniform noise"
    refs = current_references()
    if refs is None:
        if baselines == "training":
            raise InputError("baselines='training' needs the reference images of a run: explain or check a run "
                             "directory (saliencekit explain RUN ..., saliencekit check RUN), open "
                             "reference_scope(training_references(run)) in Python, or pass a (K, C, H, W) tensor of "
                             "reference images as baselines=")
        return None, "uniform noise (no reference images offered)"
    return refs.images(), refs.source


class _ExpectedGradientsBase(PixelGradientMethod):
    """Shared machinery of expected gradients and GradientSHAP (the module docstring defines both)."""

    multiplies_by_inputs = True
    batches_itself = True
    has_noise: ClassVar[bool] = False

    @classmethod
    def expected_input_invariance(cls, options: Mapping[str, Any]) -> bool | None:
        """Invariant with "uniform" baselines (they move with the shift), not with fixed reference images (a tensor,
        "training", or "auto" inside a run's reference scope)."""
        baselines = options.get("baselines", "auto")
        if isinstance(baselines, torch.Tensor) or baselines == "training":
            return False
        if baselines == "uniform":
            return True
        if baselines == "auto":
            return current_references() is None
        return None

    @classmethod
    def passes_per_image(cls, options: Mapping[str, Any]) -> float | None:
        """A forward and backward pass (3 forward passes) per draw (``samples``, default 50), and a forward pass of
        each drawn baseline."""
        from saliencekit.methods.registry import method_options

        samples = options.get("samples", method_options(cls.name)["samples"])
        return 4.0 * samples if isinstance(samples, int) else None

    def __init__(
        self,
        model: nn.Module,
        *,
        baselines: Baselines,
        samples: int,
        noise: float,
        seed: int | None,
        reduce: str,
        batch_size: BatchSize,
        precision: Precision,
    ):
        super().__init__(model, reduce=reduce, batch_size=batch_size, precision=precision)
        self.baselines = _check_baselines(baselines)
        self.samples = check_positive_int(samples, "samples")
        self.noise = check_number(noise, "noise", what=" (a fraction of the image's value range)")
        self.seed = check_seed(seed)
        params: dict[str, Any] = {"baselines": baselines, "samples": samples, "seed": seed}
        if self.has_noise:
            params["noise"] = noise
        self._store_params(**params)

    def draws(self, inputs: torch.Tensor, references: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The draws of the module docstring: baseline draws (picks (samples,) or uniform (samples, C, H, W)), path
        points ``a`` (samples,) and noise (samples, C, H, W) or None."""
        gen = torch.Generator(device=inputs.device)
        gen.manual_seed(self.seed if self.seed is not None else int(torch.seed() % 2**63))
        shape = (self.samples, *inputs.shape[1:])
        if references is None:
            base = torch.rand(shape, generator=gen, device=inputs.device, dtype=inputs.dtype)
        else:
            base = torch.randint(int(references.shape[0]), (self.samples,), generator=gen, device=inputs.device)
        alpha = torch.rand(self.samples, generator=gen, device=inputs.device, dtype=inputs.dtype)
        eps = None
        if self.has_noise and self.noise > 0:
            eps = torch.randn(shape, generator=gen, device=inputs.device, dtype=inputs.dtype)
        return base, alpha, eps

    def _attributions(
        self, inputs: torch.Tensor, target: ResolvedTarget
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        n = inputs.shape[0]
        references, source = resolve_baselines(self.baselines)
        if references is not None:
            references = references.to(device=inputs.device, dtype=inputs.dtype)
            if references.shape[1:] != inputs.shape[1:]:
                raise InputError(f"the reference images have shape (C, H, W) = {tuple(references.shape[1:])}, the "
                                 f"images {tuple(inputs.shape[1:])}: give reference images preprocessed like the "
                                 "images (the run's own training images are)")
        self._store_params(references=source)
        picks, alpha, eps = self.draws(inputs, references)
        flat = inputs.flatten(1)
        lo = flat.amin(1).view(-1, 1, 1, 1)
        span = flat.amax(1).view(-1, 1, 1, 1) - lo
        total = torch.zeros_like(inputs)
        # Row r of the stacked batch is image r % n at sample r // n (block-major, as targets expect).

        def baseline_rows(img: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
            if references is None:
                return lo[img] + picks[j] * span[img]
            return references[picks[j]]

        def chunk(start: int, stop: int) -> None:
            rows = torch.arange(start, stop, device=inputs.device)
            img, j = rows % n, rows // n
            base = baseline_rows(img, j)
            x = inputs[img] if eps is None else inputs[img] + self.noise * span[img] * eps[j]
            diff = x - base
            point = base + alpha[j].view(-1, 1, 1, 1) * diff
            with self._autocast(inputs.device):
                grad, _ = input_gradient(self.model, point, rows_target(target, start, stop))
            total.index_add_(0, img, diff * grad.to(inputs.dtype))

        run_in_chunks(chunk, self.samples * n, self.batch_size, self.model, inputs, backward=True)
        attributions = total / self.samples
        scores, base_scores = self._scores(inputs, target, references, picks, lo, span)
        gap = attributions.flatten(1).sum(1) - (scores - base_scores)
        return attributions, scores, {"completeness_gap": gap, "baseline_scores": base_scores}

    def _scores(self, inputs: torch.Tensor, target: ResolvedTarget, references: torch.Tensor | None,
                picks: torch.Tensor, lo: torch.Tensor, span: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``S(x)`` and the mean of ``S(x'_ij)`` over the drawn baselines, per image."""
        n = inputs.shape[0]
        with torch.inference_mode():
            scores = target.score(_layout.forward(self.model, inputs)).to(inputs.dtype)
            base_scores = torch.zeros(n, dtype=inputs.dtype, device=inputs.device)
            if references is not None:  # the drawn references are shared by every image: one pass each
                used, counts = picks.unique(return_counts=True)
                out = _layout.forward(self.model, references[used])
                for k in range(int(used.shape[0])):
                    rows = out[k : k + 1].expand(n, *out.shape[1:])
                    base_scores += counts[k].to(inputs.dtype) * target.score(rows).to(inputs.dtype)
            else:
                for j in range(self.samples):
                    base = lo + picks[j] * span
                    base_scores += target.score(_layout.forward(self.model, base)).to(inputs.dtype)
        return scores.clone(), (base_scores / self.samples).clone()


@register_method("expected_gradients")
class ExpectedGradients(_ExpectedGradientsBase):
    """Expected gradients (Erion et al. 2021): integrated gradients averaged over baselines drawn from the training
    images, ``E_{x', a}[(x - x') * dS/dx(x' + a (x - x'))]`` estimated by ``samples`` draws (module docstring).

    ``extras``: ``completeness_gap`` = ``sum(attr) - (S(x) - mean_j S(x'_j))`` over the drawn baselines (it shrinks as
    ``samples`` grows), ``baseline_scores`` ``mean_j S(x'_j)``; ``params["references"]`` says where the baselines
    came from.

    Args:
        model: the classifier (never modified).
        baselines: "auto" (default: the reference images offered by the enclosing run, e.g. ``saliencekit explain
            RUN`` / ``saliencekit check RUN``: 64 training images; "uniform" when none are offered), "training" (the
            run's reference images; an error outside a run), "uniform" (``min + u (max - min)`` per image, ``u``
            uniform noise), or a (K, C, H, W) tensor of reference images preprocessed like the inputs.
        samples: number of (baseline, path point) draws (default 50).
        seed: seed of the draws (on the input's device); None draws a fresh seed.
        reduce: channel reduction of the (N, C, H, W) attributions.
        batch_size: interpolated images per forward/backward pass, or "auto".
        precision: "fp32", "bf16" or "fp16" for the gradient passes.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    >>> refs = torch.randn(5, 1, 4, 4)
    >>> e = ExpectedGradients(net, baselines=refs, samples=8).attribute(torch.randn(2, 1, 4, 4))
    >>> e.maps.shape, bool(e.extras["completeness_gap"].abs().max() < 1e-4)  # linear model: exact for any draw
    (torch.Size([2, 4, 4]), True)
    """

    description = ("Expected gradients: integrated gradients averaged over baselines drawn from the training images "
                   "(Erion 2021).")

    def __init__(
        self,
        model: nn.Module,
        *,
        baselines: Baselines = "auto",
        samples: int = 50,
        seed: int | None = 0,
        reduce: str = "sum",
        batch_size: BatchSize = "auto",
        precision: Precision = "fp32",
    ):
        super().__init__(model, baselines=baselines, samples=samples, noise=0.0, seed=seed, reduce=reduce,
                         batch_size=batch_size, precision=precision)


@register_method("gradient_shap")
class GradientShap(_ExpectedGradientsBase):
    """GradientSHAP (Lundberg & Lee 2017; captum's ``GradientShap``): expected gradients of a noisy input.

    ``E_{x', a, eps}[(x~ - x') * dS/dx(x' + a (x~ - x'))]`` with ``x~ = x + sigma eps`` (module docstring), estimated
    by ``samples`` draws; ``noise=0`` gives :class:`ExpectedGradients` exactly (same draws). Captum's ``stdevs`` is
    an absolute std shared by the batch; here the std is ``noise * (max(x) - min(x))`` per image, as SmoothGrad's.

    Args:
        model: the classifier (never modified).
        baselines: as :class:`ExpectedGradients` ("auto", "training", "uniform" or a tensor of reference images).
        samples: number of (baseline, path point, noise) draws (default 50).
        noise: noise std as a fraction of each image's value range (default 0.1; 0: no noise).
        seed: seed of the draws (on the input's device); None draws a fresh seed.
        reduce: channel reduction of the (N, C, H, W) attributions.
        batch_size: noisy interpolated images per forward/backward pass, or "auto".
        precision: "fp32", "bf16" or "fp16" for the gradient passes.

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 1))
    >>> GradientShap(net, baselines="uniform", samples=4).attribute(torch.randn(2, 1, 4, 4)).maps.shape
    torch.Size([2, 4, 4])
    """

    description = ("GradientSHAP: expected gradients of a noisy input over baselines drawn from a reference set "
                   "(Lundberg 2017).")
    has_noise = True

    def __init__(
        self,
        model: nn.Module,
        *,
        baselines: Baselines = "auto",
        samples: int = 50,
        noise: float = 0.1,
        seed: int | None = 0,
        reduce: str = "sum",
        batch_size: BatchSize = "auto",
        precision: Precision = "fp32",
    ):
        super().__init__(model, baselines=baselines, samples=samples, noise=noise, seed=seed, reduce=reduce,
                         batch_size=batch_size, precision=precision)


__all__ = ["ExpectedGradients", "GradientShap", "resolve_baselines"]
