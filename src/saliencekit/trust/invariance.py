"""Input-shift invariance (Kindermans et al. 2017, "The (Un)reliability of Saliency Methods").

**Compensated shift.** Every input is shifted by a constant ``m`` (``x' = x + m``) and the first layer's
bias is moved so that the network computes exactly the same function: ``b' = b - W m`` summed over the
kernel (``b'_o = b_o - m * sum_{c,i,j} W_{o,c,i,j}`` for a convolution, ``b'_o = b_o - m * sum_j W_{o,j}``
for a linear layer). The outputs, and every gradient with respect to the input, are then identical, so a
method whose maps change is reacting to something the model ignores.

Zero padding would break the equivalence at the image border (the padded zeros are not shifted), so for a
first convolution with ``padding_mode="zeros"`` and non-zero padding the compensated copy pads the shifted
input *explicitly with the value m* (a forward pre-hook on the copy with ``F.pad(x, ..., value=m)``, the
convolution's own padding set to 0): the border then sees ``0 + m`` exactly as the interior sees ``x + m``.
Reflect / replicate / circular padding shift with the input and need nothing. Both networks are evaluated
in float64 by default, so "identical" means equal to ~1e-12.

**Uncompensated shift** ("brighten the image", as a user would): the original model on ``x + m``.
Predictions may stay while maps change; reported as measured. Note that ``m`` is added to the *model
input*: with saliencekit's per-image standardisation a brightness change of the raw file is removed by the
preprocessing itself.

Expected (docs/methods.md; declared by each method class as ``input_shift_invariant``, see
:meth:`saliencekit.methods.Method.expected_input_invariance`): gradient, SmoothGrad of the gradient, guided
backprop, DeconvNet and integrated gradients with the black baseline (the minimum input value, which shifts with
the input) are invariant; gradient x input and integrated gradients with a zero baseline are not.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from saliencekit.errors import InputError
from saliencekit.trust._explaining import MethodSpecs, compute_maps, mean_of, normalize_specs, predicted, summarize

DEFAULT_SHIFT = 1.0
INVARIANCE_TOLERANCE = 1e-6  # largest relative change (max |a - b| / max |a|) still called "identical"
METRICS = ("spearman", "ssim")


def first_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The first module (in registration order) that owns parameters: the layer that sees the input."""
    for name, module in model.named_modules():
        if name and any(True for _ in module.parameters(recurse=False)):
            return name, module
    raise InputError(f"{model.__class__.__name__} has no layer with parameters to compensate")


def _same_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """F.pad amounts (left, right, top, bottom) equivalent to the convolution's zero padding."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        pads = []
        for d, k in zip(conv.dilation, conv.kernel_size):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return (left, right, top, bottom)
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


def compensated_copy(model: nn.Module, shift: float) -> nn.Module:
    """A deep copy of ``model`` that computes on ``x + shift`` what ``model`` computes on ``x``.

    The first layer must be a ``Conv2d`` or ``Linear`` (a missing bias is added). See the module docstring
    for the border handling of zero-padded convolutions.

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 1)).double()
    >>> x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    >>> torch.allclose(compensated_copy(net, 0.7)(x + 0.7), net(x))
    True
    """
    work = copy.deepcopy(model)
    name, layer = first_layer(work)
    m = float(shift)
    with torch.no_grad():
        if isinstance(layer, nn.Conv2d):
            per_out = layer.weight.sum(dim=(1, 2, 3))  # (out, in/groups, kh, kw): every weight an output sees
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros(layer.out_channels, dtype=layer.weight.dtype,
                                                      device=layer.weight.device))
            layer.bias.sub_(m * per_out)
            pads = _same_padding(layer)
            if layer.padding_mode == "zeros" and any(pads):
                layer.padding = (0, 0)

                def pad_with_shift(_module: nn.Module, inputs: tuple[Any, ...]) -> tuple[torch.Tensor]:
                    return (F.pad(inputs[0], pads, mode="constant", value=m),)

                layer.register_forward_pre_hook(pad_with_shift)
        elif isinstance(layer, nn.Linear):
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros(layer.out_features, dtype=layer.weight.dtype,
                                                      device=layer.weight.device))
            layer.bias.sub_(m * layer.weight.sum(dim=1))
        else:
            raise InputError(f"the first layer {name!r} of {model.__class__.__name__} is a "
                             f"{layer.__class__.__name__}; the compensated shift needs a Conv2d or Linear first layer")
    return work


def expected_invariance(spec: Mapping[str, Any]) -> bool | None:
    """What docs/methods.md expects of a method under the compensated shift (None: no stated expectation).

    Read from the method class (:meth:`saliencekit.methods.Method.expected_input_invariance`, which sees the
    options, e.g. the baseline of integrated gradients); a name that is not registered has no expectation.
    """
    from saliencekit.methods import list_methods, method_class

    name, opts = spec["method"], spec.get("options", {})
    return method_class(name).expected_input_invariance(opts) if name in list_methods() else None


@dataclass
class InvarianceResult:
    """Result of the input-shift check.

    Attributes:
        shift: the constant added to every input value.
        methods: label -> spec.
        output_max_abs_change: largest |f'(x + m) - f(x)| over images and logits (compensated).
        compensated: label -> ``{"spearman": (N,), "ssim": (N,), "max_abs_change": (N,), "relative_change": (N,)}``.
        uncompensated: the same for the original model on ``x + m``.
        prediction_changed: (N,) bool, uncompensated.
        probability_change: (N,) |p(x + m) - p(x)| of the originally predicted class, uncompensated.
        maps: ``{"original" | "compensated" | "uncompensated": label -> (k, H, W)}`` for the figure.
        images: the first ``k`` images (k, C, H, W).
    """

    shift: float
    methods: dict[str, dict[str, Any]]
    output_max_abs_change: float
    compensated: dict[str, dict[str, np.ndarray]]
    uncompensated: dict[str, dict[str, np.ndarray]]
    prediction_changed: np.ndarray
    probability_change: np.ndarray
    uncompensated_output_max_abs_change: float = float("nan")
    maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    images: np.ndarray | None = None
    dtype: str = "float64"
    tolerance: float = INVARIANCE_TOLERANCE
    seed: int = 0

    def invariant(self, label: str) -> bool:
        """Whether the method's maps stayed identical (mean relative change within the tolerance)."""
        rel = self.compensated[label]["relative_change"]
        return bool(np.nanmax(rel) <= self.tolerance) if np.isfinite(rel).any() else False

    def to_dict(self) -> dict[str, Any]:
        def block(values: Mapping[str, np.ndarray]) -> dict[str, Any]:
            return {
                "similarity": {m: summarize(values[m], self.seed) for m in METRICS},
                "max_abs_change": summarize(values["max_abs_change"], self.seed),
                "relative_change": summarize(values["relative_change"], self.seed),
            }

        comp = {}
        for label, spec in self.methods.items():
            inv = self.invariant(label)
            exp = expected_invariance(spec)
            rel = float(np.nanmax(self.compensated[label]["relative_change"]))
            comp[label] = {**block(self.compensated[label]), "invariant": inv, "expected_invariant": exp,
                           "as_expected": None if exp is None else inv == exp,
                           "reason": (f"maps {'identical' if inv else 'changed'} under the compensated shift "
                                      f"(largest relative change {rel:.1e}, tolerance {self.tolerance:.0e})"
                                      + ("" if exp is None else
                                         f"; docs/methods.md expects it {'' if exp else 'not '}to be invariant"))}
        unc = {label: {**block(self.uncompensated[label]),
                       "reason": (f"on the brightened input the maps keep Spearman "
                                  f"{mean_of(self.uncompensated[label]['spearman']):.2f} with the originals")}
               for label in self.methods}
        return {
            "shift": self.shift,
            "dtype": self.dtype,
            "tolerance": self.tolerance,
            "compensated": {"output_max_abs_change": self.output_max_abs_change, "methods": comp},
            "uncompensated": {
                "prediction_changed_fraction": float(np.mean(self.prediction_changed)),
                "probability_max_abs_change": float(np.max(self.probability_change)),
                "probability_change": summarize(self.probability_change, self.seed),
                "output_max_abs_change": self.uncompensated_output_max_abs_change,
                "methods": unc,
            },
        }


def _compare(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, dict[str, np.ndarray]]:
    from saliencekit.trust.similarity import similarity_all

    out = {}
    for label in a:
        x, y = a[label], b[label]
        sims = {k: v.cpu().numpy() for k, v in similarity_all(x, y, METRICS).items()}
        diff = (x - y).abs().flatten(1).amax(1)
        scale = x.abs().flatten(1).amax(1)
        rel = torch.where(scale > 0, diff / scale.clamp_min(1e-300), torch.where(diff > 0, torch.inf, 0.0))
        out[label] = {**sims, "max_abs_change": diff.numpy(), "relative_change": rel.numpy()}
    return out


def input_invariance(
    model: nn.Module,
    images: torch.Tensor,
    methods: MethodSpecs,
    *,
    shift: float = DEFAULT_SHIFT,
    target: torch.Tensor | None = None,
    layer: str | None = None,
    dtype: torch.dtype | None = torch.float64,
    tolerance: float = INVARIANCE_TOLERANCE,
    keep_images: int = 3,
    batch_size: int = 16,
    seed: int = 0,
) -> InvarianceResult:
    """Compensated and uncompensated input-shift check (Kindermans et al. 2017).

    Args:
        model: the classifier (never modified: the check works on deep copies).
        images: (N, C, H, W) preprocessed images.
        methods: names or ``{label: {"method": name, **options}}``; e.g. integrated gradients with
            ``baseline="black"`` and ``baseline="zero"`` side by side.
        shift: the constant ``m`` added to every input value.
        target: classes to explain (default: the model's predictions on the unshifted images, kept fixed).
        layer: CAM layer name.
        dtype: evaluate copies of the model and images in this dtype (float64 makes "identical" exact to
            ~1e-12); None keeps the model's own dtype.
        tolerance: largest relative map change (max |a - b| / max |a|, per image) still called invariant.
        keep_images: maps of the first images kept for the figure.
        batch_size: images per engine call.
        seed: seeds the bootstrap of the summaries.
    """
    specs = normalize_specs(methods)
    base = copy.deepcopy(model)
    x = images.detach()
    if dtype is not None:
        base = base.to(dtype)
        x = x.to(dtype)
    comp_model = compensated_copy(base, shift)
    shifted = x + shift
    logits, preds = predicted(base, x)
    if target is None:
        target = preds
    comp_logits, _ = predicted(comp_model, shifted)
    unc_logits, unc_preds = predicted(base, shifted)

    from saliencekit.methods.outputs import output_scope

    with output_scope(base, example=x[:1]) as rule:  # the model's output rule (inherits run_checks' declaration)
        p0 = rule.class_probabilities(logits, preds)
        p1 = rule.class_probabilities(unc_logits, preds)
    orig = compute_maps(base, x, specs, target, layer, batch_size)
    comp = compute_maps(comp_model, shifted, specs, target, layer, batch_size)
    unc = compute_maps(base, shifted, specs, target, layer, batch_size)
    k = min(keep_images, images.shape[0])
    return InvarianceResult(
        shift=float(shift), methods=specs,
        output_max_abs_change=float((comp_logits - logits).abs().max()),
        compensated=_compare(orig, comp), uncompensated=_compare(orig, unc),
        prediction_changed=(unc_preds != preds).cpu().numpy(),
        probability_change=(p1 - p0).abs().double().cpu().numpy(),
        uncompensated_output_max_abs_change=float((unc_logits - logits).abs().max()),
        maps={"original": {lb: v[:k].numpy() for lb, v in orig.items()},
              "compensated": {lb: v[:k].numpy() for lb, v in comp.items()},
              "uncompensated": {lb: v[:k].numpy() for lb, v in unc.items()}},
        images=images[:k].detach().cpu().float().numpy(),
        dtype=str(dtype).replace("torch.", "") if dtype is not None else str(images.dtype).replace("torch.", ""),
        tolerance=tolerance, seed=seed,
    )


__all__: Sequence[str] = ["InvarianceResult", "compensated_copy", "expected_invariance", "first_layer",
                          "input_invariance"]
