"""Shared machinery of LIME and KernelSHAP: superpixel coalitions, their forward passes, weighted linear fits.

A *coalition* ``z`` of image ``i`` is a binary vector over its ``M_i`` superpixels (:mod:`.superpixels`): the image
with the superpixels where ``z = 1`` kept and the others replaced by the fill, ``x * z[L] + fill * (1 - z[L])``
(``L`` the labels). Each method draws its coalitions per image from a generator seeded with ``seed`` (the same draws
for every image with the same number of superpixels, so an image's map does not depend on its batch), scores them
with one forward pass each, batched like Score-CAM's masked passes (:mod:`._job_passes`), fits a weighted linear
model of the scores on ``z`` in float64, and paints each superpixel with its coefficient.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from saliencekit import _layout
from saliencekit.errors import InputError
from saliencekit.methods._batching import BatchSize, check_batch_size
from saliencekit.methods._capture import eval_mode
from saliencekit.methods._job_passes import job_scores
from saliencekit.methods._option_checks import check_number, check_positive_int, check_seed
from saliencekit.methods._precision import Precision, check_precision
from saliencekit.methods.base import Explanation, Method, preserve_model
from saliencekit.methods.perturbation import FILLS, SCORES, fill_values
from saliencekit.methods.superpixels import Segments, check_segments, segment
from saliencekit.methods.targets import ResolvedTarget


class CoalitionMethod(Method):
    """Base of LIME and KernelSHAP: subclasses draw the coalitions (:meth:`coalitions`) and fit them (:meth:`fit`).

    Args:
        model: the classifier (never modified).
        segments: "grid" (default, needs nothing), "slic" (scikit-image: ``pip install saliencekit[superpixels]``)
            or an integer tensor of labels (H, W) or (N, H, W) (see :mod:`saliencekit.methods.superpixels`).
        grid: cells of the "grid" segmentation, an int or (rows, columns) (default 8: 64 superpixels).
        n_segments: SLIC's target number of superpixels (default 50).
        compactness: SLIC's compactness on the image scaled to [0, 1] (default 0.1).
        samples: coalitions scored per image.
        seed: seed of the coalitions (one generator per image, seeded alike); None draws a fresh seed.
        fill: value of the switched-off superpixels: "zero" (default, as captum's baseline 0), "mean" (each image's
            per-channel mean), "black" (each image's minimum) or a number.
        score: "logit" (default: the explained score ``S``) or "probability" of the explained class.
        batch_size: coalitions per forward pass, or "auto".
        precision: "fp32", "bf16" or "fp16" (autocast for the passes).
        progress: show a progress bar over the passes.
    """

    family = "perturbation"
    works_on_torchscript = True

    @classmethod
    def expected_input_invariance(cls, options: Mapping[str, Any]) -> bool | None:
        """Invariant when the fill moves with the shift ("mean", "black": the compensated model then sees the same
        coalitions), not with a fixed value ("zero" or a number)."""
        fill = options.get("fill", "zero")
        if isinstance(fill, str):
            return {"mean": True, "black": True, "zero": False}.get(fill)
        return False if isinstance(fill, int | float) else None

    @classmethod
    def passes_per_image(cls, options: Mapping[str, Any]) -> float | None:
        """One forward pass per coalition (``samples``, default 500), plus the all-fill image for KernelSHAP."""
        from saliencekit.methods.registry import method_options

        samples = options.get("samples", method_options(cls.name)["samples"])
        return float(samples) + (1.0 if cls.needs_empty else 0.0) if isinstance(samples, int) else None

    def __init__(
        self,
        model: nn.Module,
        *,
        segments: Segments,
        grid: int | tuple[int, int],
        n_segments: int,
        compactness: float,
        samples: int,
        seed: int | None,
        fill: str | float,
        score: str,
        batch_size: BatchSize,
        precision: Precision,
        progress: bool,
    ):
        super().__init__(model)
        self.segments, self.grid = check_segments(segments, grid)
        self.n_segments = check_positive_int(n_segments, "n_segments")
        self.compactness = check_number(compactness, "compactness", strict=True)
        self.samples = check_positive_int(samples, "samples")
        self.seed = check_seed(seed)
        if not (isinstance(fill, int | float) and not isinstance(fill, bool)) and fill not in FILLS:
            raise InputError(f"unknown fill {fill!r}; valid: {', '.join(FILLS)} or a number")
        self.fill = fill
        if score not in SCORES:
            raise InputError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        self.score = score
        self.batch_size = check_batch_size(batch_size)
        self.precision = check_precision(precision)
        self.progress = bool(progress)
        self._store_params(segments=segments, grid=grid, n_segments=n_segments, compactness=compactness,
                           samples=samples, seed=seed, fill=fill, score=score, batch_size=batch_size,
                           precision=precision)

    # -- what subclasses define ------------------------------------------------------------------------

    def coalitions(self, m: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The coalitions (S, m) bool of one image with ``m`` superpixels and their regression weights (S,)."""
        raise NotImplementedError

    def fit(self, z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, full: float, empty: float
            ) -> tuple[torch.Tensor, float, dict[str, float]]:
        """Coefficients (m,), intercept and scalar extras from coalitions ``z`` (S, m) float64, their scores ``y``,
        weights, and the scores of the whole image (``full``) and of the all-fill image (``empty``)."""
        raise NotImplementedError

    #: whether :meth:`fit` needs the score of the all-fill image (one more pass per image)
    needs_empty: bool = False

    # -- the shared computation ------------------------------------------------------------------------

    def _generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed if self.seed is not None else int(torch.seed() % 2**63))
        return g

    def attribute(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        with preserve_model(self.model), eval_mode(self.model):
            output, resolved, predictions = self._resolve(inputs, target)
            labels = segment(inputs, self.segments, self.grid, self.n_segments, self.compactness)
            maps, extras = self._maps(inputs, output, resolved, labels)
        return Explanation(
            method=self.name, maps=maps, scores=resolved.score(output).to(inputs.dtype).clone(),
            targets=resolved.class_indices().to(inputs.device), predictions=predictions, params=self.params,
            extras=extras,
        )

    def _maps(self, inputs: torch.Tensor, output: torch.Tensor, target: ResolvedTarget, labels: torch.Tensor
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = inputs.shape[0]
        counts = [int(lab.max()) + 1 for lab in labels]
        seed = self.seed if self.seed is not None else int(torch.seed() % 2**63)
        drawn = []
        for m in counts:
            g = torch.Generator()
            g.manual_seed(seed)
            drawn.append(self.coalitions(m, g))
        extra = 1 if self.needs_empty else 0  # job 0 of each image: the all-fill image
        rows = [z.shape[0] + extra for z, _w in drawn]
        width = max(counts)
        z_all = torch.zeros((n, max(rows), width), dtype=torch.bool)
        for i, (z, _w) in enumerate(drawn):
            z_all[i, extra:extra + z.shape[0], : z.shape[1]] = z
        selected = torch.arange(max(rows))[None, :] < torch.tensor(rows)[:, None]
        z_dev = z_all.to(inputs.device)
        flat_labels = labels.flatten(1)
        fill = fill_values(inputs, self.fill).to(inputs.dtype)

        def forward_jobs(img: torch.Tensor, job: torch.Tensor) -> torch.Tensor:
            keep = torch.gather(z_dev[img, job], 1, flat_labels[img]).view(-1, 1, *inputs.shape[-2:])
            f = fill.expand(n, *fill.shape[1:])[img] if fill.shape[0] == n else fill
            return _layout.forward(self.model, torch.where(keep, inputs[img], f))

        scores = job_scores(self.model, inputs, selected.to(inputs.device), target, forward_jobs,
                            batch_size=self.batch_size, precision=self.precision, progress=self.progress,
                            desc=f"{self.name} passes", probability=self.score == "probability")
        clean = (target.probability(output) if self.score == "probability" else target.score(output))
        coefficients = torch.full((n, width), float("nan"), dtype=torch.float64)
        intercepts = torch.zeros(n, dtype=torch.float64)
        scalars: dict[str, list[float]] = {}
        for i, (z, w) in enumerate(drawn):
            y = scores[i].double().cpu()
            empty = float(y[0]) if extra else float("nan")
            coef, intercept, more = self.fit(z.double(), y[extra:rows[i]], w.double(), float(clean[i]), empty)
            coefficients[i, : counts[i]] = coef
            intercepts[i] = intercept
            for key, value in more.items():
                scalars.setdefault(key, []).append(value)
        coef_dev = coefficients.to(inputs.device, inputs.dtype)
        maps = torch.gather(coef_dev.nan_to_num(0.0), 1, flat_labels).view(n, *inputs.shape[-2:])
        extras = {"segments": labels, "coefficients": coef_dev, "intercept": intercepts.to(inputs.device, inputs.dtype)}
        for key, values in scalars.items():
            extras[key] = torch.tensor(values, dtype=inputs.dtype, device=inputs.device)
        return maps, extras


def weighted_ridge(z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, alpha: float
                   ) -> tuple[torch.Tensor, float, float]:
    """Weighted ridge regression with an unpenalised intercept, as ``sklearn.linear_model.Ridge(alpha)`` fit with
    ``sample_weight``: minimise ``sum_s w_s (y_s - z_s . b - c)^2 + alpha |b|^2``. Centred by the weighted means,
    ``(Zc^T W Zc + alpha I) b = Zc^T W yc`` and ``c = mean_w(y) - mean_w(z) . b`` (least squares, minimum norm, when
    ``alpha = 0``).

    Returns:
        The coefficients (m,), the intercept ``c`` and the weighted R^2 of the fit (LIME's ``score``; 1 when ``y`` is
        constant and fitted exactly).
    """
    total = weights.sum()
    w = weights / total
    zm = (w[:, None] * z).sum(0)
    ym = float((w * y).sum())
    zc, yc = z - zm, y - ym
    sw = w.sqrt()
    a, b = sw[:, None] * zc, sw * yc
    if alpha > 0:  # the normal equations of the normalised weights: the penalty divides by their total
        eye = torch.eye(z.shape[1], dtype=z.dtype)
        coef = torch.linalg.solve(a.T @ a + (alpha / float(total)) * eye, a.T @ b)
    else:
        coef = torch.linalg.lstsq(a, b[:, None], driver="gelsd").solution[:, 0]
    intercept = ym - float(zm @ coef)
    resid = y - (z @ coef + intercept)
    ss_res = float((w * resid.pow(2)).sum())
    ss_tot = float((w * yc.pow(2)).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return coef, intercept, r2


__all__ = ["CoalitionMethod", "weighted_ridge"]
