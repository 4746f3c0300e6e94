"""Reference images ("baselines"): where integrated gradients starts its path and what the faithfulness metrics
put in place of removed pixels. One factory for both, so a name means the same image everywhere.

Names (``BASELINES``): ``"black"`` and ``"white"`` (each image's own minimum / maximum after preprocessing, so not
the numbers 0 and 1), ``"zero"``, ``"mean"`` (each image's per-channel mean), ``"uniform"`` (seeded uniform noise
between each image's minimum and maximum) and ``"blurred"`` (the image under a Gaussian blur); ``"blur"`` is
accepted as another spelling of ``"blurred"``. A number or a tensor broadcastable to the inputs is used as given.

The blur is :func:`saliencekit._filters.gaussian_blur`. Its default kernel is scipy.ndimage's (radius
``int(4 sigma + 0.5)``, mirrored edges), used by the deletion / insertion curves. Integrated gradients keeps
its own documented kernel (radius ``ceil(3 sigma)``, at least 1, replicated edges) through ``blur_radius`` and
``blur_padding``, so that its maps are the ones its tests and earlier runs pinned; see ``docs/methods.md``.

>>> import torch
>>> x = torch.arange(8.0).view(2, 1, 2, 2)
>>> make_baseline(x, "black")[:, 0, 0, 0].tolist()
[0.0, 4.0]
>>> torch.equal(make_baseline(x, "blur", blur_sigma=1.0), make_baseline(x, "blurred", blur_sigma=1.0))
True
"""

from __future__ import annotations

import torch

from saliencekit._filters import gaussian_blur
from saliencekit.errors import InputError, UnknownChoiceError

BASELINES = ("black", "zero", "white", "mean", "uniform", "blurred")
ALIASES = {"blur": "blurred"}
CONSTANT_BASELINES = ("black", "zero", "white", "mean")
DEFAULT_BLUR_SIGMA = 5.0  # Petsiuk et al.'s insertion blur (kernel 11, sigma 5); integrated gradients' default too

Baseline = str | float | torch.Tensor


def baseline_name(baseline: str) -> str:
    """The canonical name of a baseline spelling (``"blur"`` -> ``"blurred"``).

    Raises:
        UnknownChoiceError: not a baseline name (an :class:`~saliencekit.errors.UnknownNameError` and an
            :class:`~saliencekit.errors.InputError`); the message lists the valid ones.
    """
    name = ALIASES.get(baseline, baseline)
    if name not in BASELINES:
        raise UnknownChoiceError("baseline", baseline, [*BASELINES, *ALIASES, "<number>", "<tensor>"])
    return name


def check_baseline(baseline: object) -> Baseline:
    """``baseline`` when it is a baseline name, a number or a tensor; else a one-line error naming it."""
    if isinstance(baseline, str):
        baseline_name(baseline)
        return baseline
    if isinstance(baseline, bool) or not isinstance(baseline, int | float | torch.Tensor):
        raise InputError(f"baseline must be a name ({', '.join(BASELINES)}), a number or a tensor, "
                         f"got {type(baseline).__name__}")
    return baseline


def make_baseline(
    inputs: torch.Tensor,
    baseline: Baseline,
    *,
    seed: int | None = 0,
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
    blur_radius: int | None = None,
    blur_padding: str = "reflect",
) -> torch.Tensor:
    """The baseline ``x'`` (N, C, H, W) of each image of ``inputs``, on the inputs' device and in their dtype.

    Args:
        inputs: images (N, C, H, W).
        baseline: a name (see the module docstring), a number, or a tensor broadcastable to the inputs
            (e.g. (C, H, W)).
        seed: seed of ``"uniform"`` (one draw of shape (C, H, W), shared by all images; None: unseeded).
        blur_sigma: std in pixels of the Gaussian of ``"blurred"``.
        blur_radius: its kernel half-width (default ``int(4 * blur_sigma + 0.5)``).
        blur_padding: its edge handling: ``"reflect"`` (default), ``"replicate"`` or ``"constant"``.

    Raises:
        InputError: a tensor that does not broadcast or holds NaN / infinity, or a value of another type.
        UnknownChoiceError: an unknown name.
    """
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise InputError(f"inputs must be a tensor of shape (N, C, H, W), got {shape}")
    baseline = check_baseline(baseline)
    if isinstance(baseline, torch.Tensor):
        try:
            b = torch.broadcast_to(baseline.to(device=inputs.device, dtype=inputs.dtype), inputs.shape)
        except RuntimeError:
            raise InputError(f"a baseline tensor must broadcast to the inputs' shape {tuple(inputs.shape)}, "
                             f"got {tuple(baseline.shape)}") from None
        if not torch.isfinite(b).all():
            raise InputError("the baseline tensor contains NaN or infinite values")
        return b.clone()
    if not isinstance(baseline, str) or baseline_name(baseline) in CONSTANT_BASELINES:
        return constant_baseline(inputs, baseline).expand_as(inputs).clone()
    if baseline_name(baseline) == "blurred":
        return gaussian_blur(inputs, blur_sigma, blur_radius, blur_padding)
    lo, hi = constant_baseline(inputs, "black"), constant_baseline(inputs, "white")  # "uniform"
    gen = torch.Generator(device=inputs.device)
    gen.manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
    u = torch.rand(inputs.shape[1:], generator=gen, device=inputs.device, dtype=inputs.dtype)
    return lo + u * (hi - lo)


def constant_baseline(inputs: torch.Tensor, baseline: str | float) -> torch.Tensor:
    """A baseline that is constant over each image's pixels, in its smallest broadcastable shape.

    ``"zero"`` and a number: (1, 1, 1, 1); ``"mean"``: (N, C, 1, 1); ``"black"`` / ``"white"``: (N, 1, 1, 1).
    The perturbation methods fill with these without materialising a full image per fill;
    :func:`make_baseline` expands them.

    Raises:
        InputError: a name of a baseline that is not constant (e.g. "blurred").
    """
    if isinstance(baseline, int | float) and not isinstance(baseline, bool):
        return torch.full((1, 1, 1, 1), float(baseline), dtype=inputs.dtype, device=inputs.device)
    if not isinstance(baseline, str):
        raise InputError(f"a constant baseline is a name or a number, got {type(baseline).__name__}")
    name = baseline_name(baseline)
    if name == "zero":
        return torch.zeros((1, 1, 1, 1), dtype=inputs.dtype, device=inputs.device)
    if name == "mean":
        return inputs.mean(dim=(2, 3), keepdim=True)
    if name in ("black", "white"):
        flat = inputs.flatten(1)
        return (flat.amin(1) if name == "black" else flat.amax(1)).view(inputs.shape[0], 1, 1, 1)
    raise InputError(f"baseline {baseline!r} is not constant over the image; constant ones: "
                     f"{', '.join(CONSTANT_BASELINES)} or a number")
