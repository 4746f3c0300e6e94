"""DeepLIFT with the rescale rule (Shrikumar, Greenside & Kundaje 2017) and DeepLIFT-SHAP (Lundberg & Lee 2017).

DeepLIFT explains the difference ``S(x) - S(x')`` between the input and a baseline ``x'``. Both run
through the network as one batch; the backward pass multiplies the incoming multiplier of every
element-wise non-linearity by ``(f(x) - f(x')) / (x - x')`` instead of ``f'(x)`` (the rescale rule,
Sec. 3.5.1; the gradient where ``|x - x'| < eps``), and linear operations (convolutions, linear layers,
batch norm in eval mode, pooling averages, sums, concatenations) pass it by their gradient (Sec. 3.3).
Max-pooling follows captum's rule: the output difference ``max(y, y') - y'`` is sent to the input's
maximum and ``y - max(y, y')`` to the baseline's, each divided by the input difference there. The
attribution is ``(x - x') * m(x)`` and sums to ``S(x) - S(x')`` (summation-to-delta, Eq. 1); the gap is
reported per image.

``deeplift_shap`` averages DeepLIFT over a distribution of baselines (DeepSHAP, Lundberg & Lee 2017,
Sec. 4.2; captum's DeepLiftShap): its sum is ``S(x) - mean_k S(x'_k)``.

Differences from captum (``captum.attr.DeepLift`` / ``DeepLiftShap``), which applies its rules at modules:
non-linearities called as functions (``F.relu`` in ``forward``) and non-linearity modules used twice (the
ReLU of a torchvision ResNet block) get the rescale rule here; captum gives the first the plain gradient
and refuses the second. Every element-wise activation gets the rescale rule (captum: ReLU, ELU,
LeakyReLU, Sigmoid, Tanh, Softplus). Where max-pooling windows overlap (a ResNet stem), the multipliers of
one input position are summed here; captum's ``max_unpool`` keeps one of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from saliencekit.baselines import BASELINES, Baseline, baseline_name, check_baseline, make_baseline
from saliencekit.errors import InputError
from saliencekit.methods._batching import BatchSize, run_in_chunks
from saliencekit.methods._propagation import (
    MAX_POOLS,
    Call,
    Node,
    Rules,
    Saved,
    apply_node,
    decide_layout,
    forward,
    propagation,
    refuse_torchscript,
    unruled_message,
    vjps,
)
from saliencekit.methods.gradient import PixelGradientMethod, rows_target
from saliencekit.methods.integrated import blur_radius
from saliencekit.methods.registry import register_method
from saliencekit.methods.targets import ResolvedTarget

Tensor = torch.Tensor


def _halves(t: Tensor, n: int, what: str) -> tuple[Tensor, Tensor]:
    if t.shape[0] != 2 * n:
        raise InputError(f"deeplift runs the images and their baselines as one batch of {2 * n}, but a {what} got "
                         f"{t.shape[0]} rows; the model must keep the batch dimension first")
    return t[:n], t[n:]


def _with_input(call: Call, x: Tensor) -> tuple[Any, list[Any], dict[str, Any]]:
    """The call's function (out of place), arguments and keyword arguments with ``x`` as its input."""
    args = list(call.args)
    kwargs = {k: v for k, v in call.kwargs.items() if k != "inplace"}
    if args:
        args[0] = x
    else:
        kwargs["input"] = x
    return _OUT_OF_PLACE.get(call.func, call.func), args, kwargs


class _RescaleNode(Node):
    """An element-wise non-linearity: multiplier ``(f(x) - f(x')) / (x - x')``; the gradient where ``|x - x'| < eps``"""

    def __init__(self, call: Call, x: Tensor, n: int, eps: float):
        self.call, self.n, self.eps, self.in_place = call, n, eps, call.in_place
        self.x = Saved(x.clone() if self.in_place else x, "input of a non-linearity")

    def compute(self, *inputs: Tensor) -> Tensor:
        return self.call.run(*self.call.args)

    def backward(self, grad: Tensor) -> tuple[Tensor]:
        # Only the images' rows matter (the baselines' scores are not differentiated): their multipliers, zeros for
        # the baselines' rows.
        x = self.x.get()
        xa, xb = _halves(x, self.n, "non-linearity")
        ga = grad[: self.n]
        func, args, kwargs = _with_input(self.call, xa.detach().requires_grad_(True))
        with torch.enable_grad():
            ya = func(*args, **kwargs)
            (plain,) = vjps([ya], [args[0] if args else kwargs["input"]], [ga])
        func, args, kwargs = _with_input(self.call, xb)
        yb = func(*args, **kwargs)
        dx = xa - xb
        m = torch.where(dx.abs() < self.eps, plain, ga * (ya.detach() - yb) / dx)
        return (torch.cat([m, torch.zeros_like(m)]),)


_F = torch.nn.functional
_OUT_OF_PLACE = {
    torch.relu_: torch.relu, torch.Tensor.relu_: torch.relu, _F.relu_: torch.relu, _F.leaky_relu_: _F.leaky_relu,
    _F.elu_: _F.elu, _F.hardtanh_: _F.hardtanh, torch.Tensor.sigmoid_: torch.sigmoid, torch.Tensor.tanh_: torch.tanh,
    torch.Tensor.clamp_: torch.clamp, torch.Tensor.clamp_min_: torch.clamp_min,
}
_WITH_INDICES = (_F.max_pool1d_with_indices, _F.max_pool2d_with_indices, _F.max_pool3d_with_indices,
                 _F.adaptive_max_pool1d_with_indices, _F.adaptive_max_pool2d_with_indices,
                 _F.adaptive_max_pool3d_with_indices)
_WITHOUT_INDICES = {torch.max_pool1d: _F.max_pool1d_with_indices, torch.max_pool2d: _F.max_pool2d_with_indices,
                    torch.max_pool3d: _F.max_pool3d_with_indices}
assert all(f in MAX_POOLS for f in (*_WITH_INDICES, *_WITHOUT_INDICES))


def _pool_with_indices(call: Call, x: Tensor) -> tuple[Tensor, Tensor]:
    func, args, kwargs = _with_input(call, x)
    if func in _WITHOUT_INDICES:
        func = _WITHOUT_INDICES[func]
    elif func not in _WITH_INDICES:
        kwargs["return_indices"] = True
    out, indices = func(*args, **kwargs)
    return out, indices


class _MaxPoolNode(Node):
    """Max-pooling (captum's rule; multipliers summed where windows overlap)."""

    def __init__(self, call: Call, x: Tensor, n: int, eps: float):
        self.call, self.n, self.eps = call, n, eps
        self.x = Saved(x, "input of a max-pooling")
        self.indices: Tensor | None = None

    def compute(self, *inputs: Tensor) -> Tensor:
        out, self.indices = _pool_with_indices(self.call, inputs[0])
        return out

    def backward(self, grad: Tensor) -> tuple[Tensor]:
        x = self.x.get()
        assert self.indices is not None
        n = self.n
        flat = x.flatten(2)
        idx = self.indices.flatten(2)
        y = flat.gather(2, idx)  # the pooled values (the model may have changed its copy of the output in place)
        (xa, xb), (ya, yb) = _halves(flat, n, "max-pooling"), _halves(y, n, "max-pooling")
        ia, ib = _halves(idx, n, "max-pooling")
        ga = grad[:n].reshape(ya.shape)
        top = torch.maximum(ya, yb)
        # captum's maxpool rule: max(y, y') - y' to the input's maximum, y - max(y, y') to the baseline's
        delta = torch.zeros_like(xa).scatter_add_(2, ia, ga * (top - yb)).scatter_add_(2, ib, ga * (ya - top))
        plain = torch.zeros_like(xa).scatter_add_(2, ia, ga)
        dx = xa - xb
        m = torch.where(dx.abs() < self.eps, plain, delta / dx).view(x[:n].shape)
        return (torch.cat([m, torch.zeros_like(m)]),)


class _DeepLiftRules(Rules):
    """Rescale rule at element-wise non-linearities and max-pooling; the gradient elsewhere."""

    def __init__(self, n: int, eps: float):
        self.n, self.eps = n, eps

    def handle(self, call: Call) -> Tensor | None:
        if call.kind == "activation":
            x = call.args[0] if call.args else call.kwargs["input"]
            return apply_node(_RescaleNode(call, x, self.n, self.eps), x)
        if call.kind == "max_pool":
            x = call.args[0] if call.args else call.kwargs["input"]
            node = _MaxPoolNode(call, x, self.n, self.eps)
            out = apply_node(node, x)
            wants_indices = call.func in _WITH_INDICES or bool(call.kwargs.get("return_indices", False))
            return (out, node.indices) if wants_indices else out
        return None


def deeplift_pass(
    model: nn.Module, inputs: Tensor, baselines: Tensor, target: ResolvedTarget, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """DeepLIFT of ``inputs`` against ``baselines`` (one baseline per image) in one forward and backward pass.

    Returns:
        The attributions ``(x - x') * m`` (N, C, H, W), ``S(x)`` and ``S(x')``.
    """
    n = inputs.shape[0]
    both = torch.cat([inputs, baselines.to(inputs.dtype)])
    decide_layout(model, both)
    with torch.inference_mode(False), torch.enable_grad():
        xx = both.detach().requires_grad_(True)
        with propagation(model, xx, _DeepLiftRules(n, eps)) as mode:
            output = forward(model, xx)
        if not isinstance(output, Tensor):
            raise InputError(f"the model must return a tensor of logits, got {type(output).__name__}")
        out_x, out_b = output[:n], output[n:]
        s_x = target.score(out_x)  # first: a deferred target resolves on the clean images
        s_b = target.score(out_b)
        if output.grad_fn is None:
            raise InputError("the model's output does not depend on its input through operations deeplift can follow")
        (g,) = torch.autograd.grad(s_x.sum(), out_x, retain_graph=True)
        if target.classes is not None:
            # S is read from one column, possibly through a non-linearity (the log-odds of a probability output):
            # its rescale multiplier (S(x) - S(x')) / (y - y') there, the gradient where y - y' is below eps
            dy = (out_x - out_b).detach()
            ds = (s_x - s_b).detach().reshape(-1, *([1] * (dy.ndim - 1)))
            rescaled = torch.where(dy.abs() < eps, g, ds / torch.where(dy == 0, torch.ones_like(dy), dy))
            g = torch.where(g != 0, rescaled, g)
        (g,) = torch.autograd.grad(out_x, xx, g)
    if mode.unruled:
        warnings.warn(unruled_message("deeplift", mode.unruled), UserWarning, stacklevel=4)
    attributions = (inputs - baselines) * g[:n]
    return attributions.to(inputs.dtype), s_x.detach().to(inputs.dtype), s_b.detach().to(inputs.dtype)


def _check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps >= 0:
        raise InputError(f"eps must be a number >= 0, got {eps!r}")
    return float(eps)


def _baseline(inputs: Tensor, baseline: Baseline, seed: int | None, blur_sigma: float) -> Tensor:
    """Integrated gradients' baselines (its blur kernel included), from the one baseline factory."""
    return make_baseline(inputs, baseline, seed=seed, blur_sigma=blur_sigma, blur_radius=blur_radius(blur_sigma),
                         blur_padding="replicate")


def _moves_with_the_shift(baseline: object) -> bool | None:
    """Whether a baseline shifts with the input (Kindermans et al.'s compensated shift): the ones computed from the
    image do, zero, numbers and fixed tensors do not."""
    if isinstance(baseline, str):
        return baseline_name(baseline) != "zero"
    if isinstance(baseline, int | float | Tensor) and not isinstance(baseline, bool):
        return False
    return None


def _check_blur_sigma(blur_sigma: object) -> float:
    if not isinstance(blur_sigma, int | float) or isinstance(blur_sigma, bool) or blur_sigma < 0:
        raise InputError(f"blur_sigma must be a number >= 0, got {blur_sigma!r}")
    return float(blur_sigma)


@register_method("deeplift")
class DeepLift(PixelGradientMethod):
    """DeepLIFT, rescale rule (Shrikumar et al. 2017, Sec. 3.5.1), against one baseline per image.

    The extras hold ``completeness_gap`` = ``sum(attr) - (S(x) - S(x'))`` per image (summation-to-delta,
    Eq. 1: zero up to rounding for networks of linear operations, element-wise activations and
    max-pooling), ``baseline_scores`` ``S(x')`` and ``baselines`` ``x'``. See the module docstring for the
    rules and the differences from captum.

    Args:
        model: the classifier (never modified).
        baseline: "black" (default: each image's minimum value after preprocessing), "zero", "white",
            "uniform", "blurred", a number, or a tensor broadcastable to the inputs (as integrated gradients).
        blur_sigma: std in pixels of the Gaussian for the "blurred" baseline (default 5).
        seed: seed of the "uniform" baseline.
        eps: below this input difference a non-linearity uses its gradient (default 1e-10, captum's).
        reduce: channel reduction of the (N, C, H, W) attributions.
        batch_size: images per pass (each runs with its baseline: twice the rows), or "auto".

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 1))
    >>> e = DeepLift(net, baseline="zero").attribute(torch.randn(1, 1, 4, 4), target=1)
    >>> bool(e.extras["completeness_gap"].abs().max() < 1e-5)
    True
    """

    description = "DeepLIFT, rescale rule, from a baseline; reports the summation-to-delta gap (Shrikumar 2017)."
    family = "backprop"
    multiplies_by_inputs = True
    satisfies_completeness = True
    works_on_torchscript = False
    input_shift_invariant = True  # with the default baseline, "black"

    @classmethod
    def expected_input_invariance(cls, options: Mapping[str, Any]) -> bool | None:
        """Invariant from a baseline computed from the image (black, white, mean, uniform, blurred: it moves with
        the shift, so every difference stays), not from zero, a number or a fixed tensor."""
        return _moves_with_the_shift(options.get("baseline", "black"))

    def __init__(
        self,
        model: nn.Module,
        *,
        baseline: str | float | Tensor = "black",
        blur_sigma: float = 5.0,
        seed: int | None = 0,
        eps: float = 1e-10,
        reduce: str = "sum",
        batch_size: BatchSize = "auto",
    ):
        super().__init__(model, reduce=reduce, batch_size=batch_size)
        refuse_torchscript(model, "deeplift")
        self.baseline = check_baseline(baseline)
        self.blur_sigma, self.seed, self.eps = _check_blur_sigma(blur_sigma), seed, _check_eps(eps)
        self._store_params(baseline=baseline, blur_sigma=blur_sigma, seed=seed, eps=eps)

    def _attributions(self, inputs: Tensor, target: ResolvedTarget) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        base = _baseline(inputs, self.baseline, self.seed, self.blur_sigma)
        attr, s_x, s_b = deeplift_pass(self.model, inputs, base, target, self.eps)
        gap = attr.flatten(1).sum(1) - (s_x - s_b)
        return attr, s_x, {"completeness_gap": gap, "baseline_scores": s_b, "baselines": base}


DISTRIBUTIONS = ("uniform",)


@register_method("deeplift_shap")
class DeepLiftShap(PixelGradientMethod):
    """DeepLIFT-SHAP: DeepLIFT averaged over a distribution of baselines (Lundberg & Lee 2017, Sec. 4.2).

    ``attr(x) = mean_k (x - x'_k) * m(x; x'_k)``; the extras hold ``completeness_gap`` =
    ``sum(attr) - (S(x) - mean_k S(x'_k))`` and ``baseline_scores`` ``mean_k S(x'_k)`` per image.

    Args:
        model: the classifier (never modified).
        baselines: the distribution: "uniform" (default: ``samples`` images of uniform noise between each
            image's minimum and maximum, one seeded draw shared by every image), a list of integrated
            gradients' baselines (e.g. ``["black", "white", "blurred"]``), or a tensor (K, C, H, W) of
            reference images (e.g. training images) shared by every image, as captum's DeepLiftShap.
        samples: number of "uniform" baselines (default 8).
        blur_sigma: std in pixels of the Gaussian for a "blurred" baseline in the list.
        seed: seed of the uniform draws.
        eps: below this input difference a non-linearity uses its gradient (default 1e-10).
        reduce: channel reduction of the (N, C, H, W) attributions.
        batch_size: image-baseline pairs per pass (each runs as two rows), or "auto".

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 1))
    >>> DeepLiftShap(net, samples=3).attribute(torch.randn(2, 1, 4, 4)).maps.shape
    torch.Size([2, 4, 4])
    """

    description = "DeepLIFT-SHAP: DeepLIFT averaged over a distribution of baselines (Lundberg 2017)."
    family = "backprop"
    multiplies_by_inputs = True
    satisfies_completeness = True
    works_on_torchscript = False
    batches_itself = True
    input_shift_invariant = True  # with the default distribution, "uniform"

    @classmethod
    def expected_input_invariance(cls, options: Mapping[str, Any]) -> bool | None:
        """Invariant when every baseline moves with the shift ("uniform" and image-computed names), not with fixed
        reference images."""
        baselines = options.get("baselines", "uniform")
        if isinstance(baselines, str | Tensor):
            return _moves_with_the_shift(baselines)
        answers = {_moves_with_the_shift(b) for b in baselines} if isinstance(baselines, Sequence) else {None}
        return answers.pop() if len(answers) == 1 else (False if False in answers else None)

    def __init__(
        self,
        model: nn.Module,
        *,
        baselines: str | Sequence[str | float] | Tensor = "uniform",
        samples: int = 8,
        blur_sigma: float = 5.0,
        seed: int | None = 0,
        eps: float = 1e-10,
        reduce: str = "sum",
        batch_size: BatchSize = "auto",
    ):
        super().__init__(model, reduce=reduce, batch_size=batch_size)
        refuse_torchscript(model, "deeplift_shap")
        if isinstance(baselines, Tensor):
            if baselines.ndim != 4 or baselines.shape[0] < 1 or not baselines.is_floating_point():
                raise InputError(f"a baselines tensor must be floating point of shape (K, C, H, W), got "
                                 f"{tuple(baselines.shape)} {baselines.dtype}")
            if not torch.isfinite(baselines).all():
                raise InputError("the baselines tensor contains NaN or infinite values")
        elif isinstance(baselines, str):
            if baselines not in DISTRIBUTIONS:
                raise InputError(f"unknown baseline distribution {baselines!r}; valid: {', '.join(DISTRIBUTIONS)}, a "
                                 f"list of baselines ({', '.join(BASELINES)}, numbers) or a (K, C, H, W) tensor")
        elif isinstance(baselines, Sequence) and baselines:
            for b in baselines:
                if isinstance(b, Tensor):
                    raise InputError("give tensor baselines as one (K, C, H, W) tensor, not in a list")
                check_baseline(b)
        else:
            raise InputError(f"baselines must be 'uniform', a non-empty list of baselines or a (K, C, H, W) tensor, "
                             f"got {baselines!r}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise InputError(f"samples must be a positive int, got {samples!r}")
        self.baselines = baselines if isinstance(baselines, str | Tensor) else list(baselines)
        self.samples, self.seed, self.eps = samples, seed, _check_eps(eps)
        self.blur_sigma = _check_blur_sigma(blur_sigma)
        self._store_params(baselines=self.baselines, samples=samples, blur_sigma=blur_sigma, seed=seed, eps=eps)

    def _count(self) -> int:
        if isinstance(self.baselines, Tensor):
            return int(self.baselines.shape[0])
        if isinstance(self.baselines, str):
            return self.samples
        return len(self.baselines)

    def _distribution(self, inputs: Tensor) -> Tensor:
        """The baselines (K, N, C, H, W) of every image."""
        if isinstance(self.baselines, Tensor):
            ref = self.baselines.to(device=inputs.device, dtype=inputs.dtype)
            if ref.shape[1:] != inputs.shape[1:]:
                raise InputError(f"baselines of shape {tuple(ref.shape)} do not match the images' (C, H, W) "
                                 f"{tuple(inputs.shape[1:])}")
            return ref[:, None].expand(-1, *inputs.shape).clone()
        if isinstance(self.baselines, str):  # "uniform"
            gen = torch.Generator(device=inputs.device)
            gen.manual_seed(self.seed if self.seed is not None else int(torch.seed() % 2**63))
            u = torch.rand((self.samples, *inputs.shape[1:]), generator=gen, device=inputs.device, dtype=inputs.dtype)
            flat = inputs.flatten(1)
            lo = flat.amin(1).view(1, -1, 1, 1, 1)
            hi = flat.amax(1).view(1, -1, 1, 1, 1)
            return lo + u[:, None] * (hi - lo)
        return torch.stack([_baseline(inputs, b, self.seed, self.blur_sigma) for b in self.baselines])

    def _attributions(self, inputs: Tensor, target: ResolvedTarget) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        n = inputs.shape[0]
        k = self._count()
        dist = self._distribution(inputs)
        total = torch.zeros_like(inputs)
        scores = torch.zeros(n, dtype=inputs.dtype, device=inputs.device)
        base_scores = torch.zeros_like(scores)

        # Row r of the stacked batch is image r % n against baseline r // n (block-major, as targets expect).
        def chunk(start: int, stop: int) -> None:
            rows = torch.arange(start, stop, device=inputs.device)
            img, j = rows % n, rows // n
            attr, s_x, s_b = deeplift_pass(self.model, inputs[img], dist[j, img], rows_target(target, start, stop),
                                           self.eps)
            total.index_add_(0, img, attr)
            scores[img] = s_x
            base_scores.index_add_(0, img, s_b)

        run_in_chunks(chunk, k * n, self.batch_size, self.model, inputs, backward=True)
        attributions = total / k
        base_scores = base_scores / k
        gap = attributions.flatten(1).sum(1) - (scores - base_scores)
        return attributions, scores, {"completeness_gap": gap, "baseline_scores": base_scores}


__all__ = ["DeepLift", "DeepLiftShap", "deeplift_pass"]
