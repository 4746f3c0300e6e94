"""Integrated gradients (Sundararajan, Taly & Yan 2017).

``IG(x) = (x - x') * integral_0^1 dS/dx(x' + a (x - x')) da``, the integral approximated by a
quadrature rule with ``steps`` nodes ``a_k`` and weights ``w_k`` (Eq. 3 of the paper is the
right Riemann sum). Completeness: ``sum(IG) ~= S(x) - S(x')``; the gap is reported per image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from saliencekit import _layout
from saliencekit.baselines import check_baseline, make_baseline
from saliencekit.errors import InputError
from saliencekit.methods._batching import BatchSize, run_in_chunks
from saliencekit.methods._precision import Precision
from saliencekit.methods.gradient import PixelGradientMethod, input_gradient, rows_target
from saliencekit.methods.registry import register_method
from saliencekit.methods.targets import ResolvedTarget

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gauss_legendre")
_RULE_ALIASES = {"left": "riemann_left", "right": "riemann_right", "middle": "riemann_middle",
                 "trapezoid": "riemann_trapezoid", "gausslegendre": "gauss_legendre",
                 "gauss-legendre": "gauss_legendre"}


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``a_k`` in [0, 1] and weights ``w_k`` (summing to 1) of a rule with ``steps`` nodes.

    - ``riemann_left``: ``a_k = k / m``, k = 0..m-1; ``riemann_right``: k = 1..m;
      ``riemann_middle``: ``(k + 1/2) / m``; all with weights ``1/m``.
    - ``riemann_trapezoid``: ``m`` nodes ``k / (m - 1)`` (both ends), weights ``1/(m-1)``, halved at the
      ends (m >= 2).
    - ``gauss_legendre``: ``numpy.polynomial.legendre.leggauss(m)`` mapped from [-1, 1] to [0, 1].

    >>> quadrature("riemann_trapezoid", 3)[1].tolist()
    [0.25, 0.5, 0.25]
    """
    m = steps
    k = np.arange(m, dtype=np.float64)
    if rule == "riemann_left":
        return k / m, np.full(m, 1.0 / m)
    if rule == "riemann_right":
        return (k + 1) / m, np.full(m, 1.0 / m)
    if rule == "riemann_middle":
        return (k + 0.5) / m, np.full(m, 1.0 / m)
    if rule == "riemann_trapezoid":
        if m < 2:
            raise InputError("rule 'riemann_trapezoid' needs steps >= 2")
        w = np.full(m, 1.0 / (m - 1))
        w[0] = w[-1] = 0.5 / (m - 1)
        return k / (m - 1), w
    if rule == "gauss_legendre":
        t, w = np.polynomial.legendre.leggauss(m)
        return (t + 1) / 2, w / 2
    raise InputError(f"unknown integration rule {rule!r}; valid: {', '.join(RULES)}")


def blur_radius(sigma: float) -> int:
    """Integrated gradients' blur kernel half-width for std ``sigma``: ``ceil(3 sigma)``, at least 1."""
    return max(1, math.ceil(3 * sigma))


@register_method("integrated_gradients")
class IntegratedGradients(PixelGradientMethod):
    """Integrated gradients (Sundararajan et al. 2017, Eq. 1 / Eq. 3).

    All ``steps x N`` interpolated images run in large batches (``batch_size``). The explanation's
    extras hold ``completeness_gap`` = ``sum(IG) - (S(x) - S(x'))`` per image, ``baseline_scores``
    ``S(x')`` and ``baselines`` ``x'``.

    Args:
        model: the classifier.
        steps: number of quadrature nodes (default 50).
        rule: "gauss_legendre" (default, as captum; exact for polynomial paths of degree < 2*steps),
            "riemann_left", "riemann_right", "riemann_middle" or "riemann_trapezoid" (short forms
            "left", "right", "middle", "trapezoid" are accepted).
        baseline: "black" (default: each image's minimum value after preprocessing), "zero", "white", "mean",
            "uniform", "blurred" (or "blur"), a number, or a tensor broadcastable to the inputs
            (:func:`saliencekit.baselines.make_baseline`).
        blur_sigma: std in pixels of the Gaussian for the "blurred" baseline (default 5); the kernel's radius is
            ``ceil(3 blur_sigma)`` and the edges are replicated (:func:`blur_radius`).
        seed: seed of the "uniform" baseline.
        reduce: channel reduction of the (N, C, H, W) attributions.
        batch_size: interpolated images per pass, or "auto".
        precision: "fp32", "bf16" or "fp16" for the gradient passes (scores for the gap stay fp32).

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
    >>> e = IntegratedGradients(net, steps=8, baseline="zero").attribute(torch.ones(1, 1, 2, 2))
    >>> bool(e.extras["completeness_gap"].abs().max() < 1e-5)
    True
    """

    description = "Integrated gradients from a baseline; reports the completeness gap (Sundararajan 2017)."
    multiplies_by_inputs = True
    satisfies_completeness = True
    batches_itself = True

    @classmethod
    def expected_input_invariance(cls, options: Mapping[str, Any]) -> bool | None:
        """Invariant from the "black" baseline (it moves with the shift), not from "zero" (it does not); other
        baselines: no stated expectation."""
        baseline = options.get("baseline", "black")
        return {"black": True, "zero": False}.get(baseline) if isinstance(baseline, str) else None

    def __init__(
        self,
        model: nn.Module,
        *,
        steps: int = 50,
        rule: str = "gauss_legendre",
        baseline: str | float | torch.Tensor = "black",
        blur_sigma: float = 5.0,
        seed: int | None = 0,
        reduce: str = "sum",
        batch_size: BatchSize = "auto",
        precision: Precision = "fp32",
    ):
        super().__init__(model, reduce=reduce, batch_size=batch_size, precision=precision)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"steps must be a positive int, got {steps!r}")
        rule = _RULE_ALIASES.get(rule, rule) if isinstance(rule, str) else rule
        self.nodes, self.weights = quadrature(rule, steps)  # validates the rule
        check_baseline(baseline)
        if not isinstance(blur_sigma, int | float) or blur_sigma < 0:
            raise InputError(f"blur_sigma must be a number >= 0, got {blur_sigma!r}")
        self.steps, self.rule, self.baseline, self.blur_sigma, self.seed = steps, rule, baseline, blur_sigma, seed
        self._store_params(steps=steps, rule=rule, baseline=baseline, blur_sigma=blur_sigma, seed=seed)

    def _attributions(
        self, inputs: torch.Tensor, target: ResolvedTarget
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        n = inputs.shape[0]
        base = make_baseline(inputs, self.baseline, seed=self.seed, blur_sigma=self.blur_sigma,
                             blur_radius=blur_radius(self.blur_sigma), blur_padding="replicate")
        delta = inputs - base
        nodes = torch.as_tensor(self.nodes, dtype=inputs.dtype, device=inputs.device)
        weights = torch.as_tensor(self.weights, dtype=inputs.dtype, device=inputs.device)
        total = torch.zeros_like(inputs)
        # Row r of the stacked batch is image r % n at node r // n (block-major, as targets expect).

        def chunk(start: int, stop: int) -> None:
            rows = torch.arange(start, stop, device=inputs.device)
            img, step = rows % n, rows // n
            path = base[img] + nodes[step].view(-1, 1, 1, 1) * delta[img]
            with self._autocast(inputs.device):
                grad, _ = input_gradient(self.model, path, rows_target(target, start, stop))
            total.index_add_(0, img, grad.to(inputs.dtype) * weights[step].view(-1, 1, 1, 1))

        run_in_chunks(chunk, self.steps * n, self.batch_size, self.model, inputs, backward=True)
        attributions = delta * total
        with torch.inference_mode():
            both = _layout.forward(self.model, torch.cat([inputs, base]))
            scores_all = target.score(both).to(inputs.dtype)
        scores, base_scores = scores_all[:n].clone(), scores_all[n:].clone()
        gap = attributions.flatten(1).sum(1) - (scores - base_scores)
        return attributions, scores, {"completeness_gap": gap, "baseline_scores": base_scores, "baselines": base}
