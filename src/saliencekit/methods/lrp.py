"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2017, 2019), zennit's rules and composites.

The explained score ``S`` is handed back from the output layer as relevance (``R = S`` at the explained
logit) and redistributed layer by layer down to the pixels. A rule says how a layer redistributes the
relevance ``R_k`` of its outputs to its inputs; a composite says which rule each layer gets. The
definitions follow zennit 0.5 (Anders et al. 2021), the published reference: ``c_jk = x_j w_jk`` is input
``j``'s contribution to output ``k`` of a convolution or linear layer, ``b_k`` its bias, ``z_k = sum_j c_jk +
b_k``, and the stabiliser adds ``eps * sign(z)`` (sign(0) = +1) to every denominator:

- ``epsilon``:     ``R_j = sum_k c_jk / (z_k + eps) R_k``                                 (Bach 2015, Eq. 58)
- ``zplus`` = ``alpha1beta0``: ``R_j = sum_k c_jk^+ / (sum_j c_jk^+ + b_k^+) R_k``           (Montavon 2017)
- ``alpha2beta1`` (alpha - beta = 1): ``alpha * [c^+ share] - beta * [c^- share]``,
  the negative share ``c_jk^- / (sum_j c_jk^- + b_k^-)``                                  (Bach 2015, Eq. 60)
- ``gamma``: ``R_j = sum_k (c_jk + gamma c_jk^+) / (z_k + gamma z_k^+) R_k`` where ``z_k > 0``, with ``^-``
  where ``z_k < 0`` (zennit's generalised gamma; Montavon 2019, Eq. 5 for positive inputs)
- ``flat``:    ``R_j = sum_k 1 / (#inputs of k) R_k`` (Lapuschkin 2019)
- ``wsquare``: ``R_j = sum_k w_jk^2 / sum_j w_jk^2 R_k`` (Montavon 2017; without the bias, as the paper)
- ``zbox``:    ``R_j = sum_k (c_jk - l_j w_jk^+ - h_j w_jk^-) / sum_j (...) R_k`` with bounds ``l <= x <= h``
  (Montavon 2017, the z^B rule; for the first layer).

Everything else: element-wise activations pass relevance unchanged, average pooling and means share it in
proportion to their inputs (zennit's ``Norm``), a sum of two input-dependent tensors (a residual connection)
shares it in proportion to the two contributions, a concatenation hands each part its own slice, max-pooling
routes it to the maximum, a product with a constant passes it unchanged. Batch norm directly after a
convolution or linear layer is folded into that layer for the rule (canonisation: ``w' = w * s``,
``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``), computed from the parameters without
changing them; any other batch norm passes relevance unchanged (zennit's rule for batch norm).

The operations are reached through :mod:`saliencekit.methods._propagation` (no hooks, no change to the model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from saliencekit.errors import InputError, UnknownNameError
from saliencekit.methods._batching import BatchSize
from saliencekit.methods._propagation import (
    Call,
    Node,
    Rules,
    Saved,
    apply_node,
    decide_layout,
    forward,
    propagation,
    refuse_torchscript,
    stabilize,
    sum_to,
    unruled_message,
    vjps,
)
from saliencekit.methods.gradient import PixelGradientMethod
from saliencekit.methods.registry import register_method
from saliencekit.methods.targets import ResolvedTarget

Tensor = torch.Tensor
Op = Any  # op(x, w, b) -> z: the layer's own call with other input and parameters


# -------------------------------------------------------------------------------------------------- rules


class Rule:
    """A rule for convolutions and linear layers: relevance ``r`` at the outputs -> relevance at the inputs."""

    name: ClassVar[str] = ""

    def relevance(self, op: Op, x: Tensor, w: Tensor, b: Tensor | None, r: Tensor) -> Tensor:
        """Relevance at the input ``x`` of ``z = op(x, w, b)`` given relevance ``r`` at ``z``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _pos(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(min=0)


def _neg(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(max=0)


def _leaf(t: Tensor) -> Tensor:
    return t.detach().requires_grad_(True)


def _has_negative(x: Tensor) -> bool:
    """Whether the layer's input has negative values (none after a ReLU: the x- terms of a rule are then zero)."""
    return bool((x < 0).any())


def _sum(a: Tensor, b: Tensor | None) -> Tensor:
    return a if b is None else a + b


@dataclass(repr=False)
class Epsilon(Rule):
    """LRP-epsilon: ``R_j = sum_k x_j w_jk / (z_k + epsilon sign(z_k)) R_k`` (epsilon=0: LRP-0)."""

    epsilon: float = 1e-6
    name: ClassVar[str] = "epsilon"

    def relevance(self, op: Op, x: Tensor, w: Tensor, b: Tensor | None, r: Tensor) -> Tensor:
        with torch.enable_grad():
            xl = _leaf(x)
            z = op(xl, w, b)
            (c,) = vjps([z], [xl], [r / stabilize(z, self.epsilon)])
        return x * c


@dataclass(repr=False)
class AlphaBeta(Rule):
    """LRP-alpha-beta: ``alpha`` times the positive contributions' share minus ``beta`` times the negative ones'
    (alpha - beta = 1). ``AlphaBeta(1, 0)`` is the z-plus rule."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6
    name: ClassVar[str] = "alpha_beta"

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1) > 1e-12:
            raise InputError(f"the alpha-beta rule needs alpha, beta >= 0 and alpha - beta = 1, got "
                             f"alpha={self.alpha}, beta={self.beta}")

    def relevance(self, op: Op, x: Tensor, w: Tensor, b: Tensor | None, r: Tensor) -> Tensor:
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        negative = _has_negative(x)
        with torch.enable_grad():
            xp, xn = _leaf(x.clamp(min=0)), _leaf(x.clamp(max=0))
            # positive contributions: x+ w+ and x- w- (and b+); negative: x+ w- and x- w+ (and b-)
            # (after a ReLU x- is zero: its terms are left out, half the work)
            zp = _sum(op(xp, wp, _pos(b)), op(xn, wn, None) if negative else None)
            outs, grads = [zp], [self.alpha * r / stabilize(zp, self.stabilizer)]
            if self.beta:
                zn = _sum(op(xp, wn, _neg(b)), op(xn, wp, None) if negative else None)
                outs, grads = [zp, zn], [grads[0], -self.beta * r / stabilize(zn, self.stabilizer)]
            # one objective sum_i <outs_i, grads_i>: its gradient with respect to x+ and x-
            cs = vjps(outs, [xp, xn] if negative else [xp], grads)
        return xp.detach() * cs[0] + (xn.detach() * cs[1] if negative else 0)


@dataclass(repr=False)
class ZPlus(AlphaBeta):
    """LRP-z+ (Montavon 2017): the positive contributions' share, ``AlphaBeta(alpha=1, beta=0)``."""

    alpha: float = 1.0
    beta: float = 0.0
    stabilizer: float = 1e-6
    name: ClassVar[str] = "zplus"


@dataclass(repr=False)
class Gamma(Rule):
    """LRP-gamma (zennit's generalised form): positive contributions favoured by ``gamma`` where ``z > 0``,
    negative ones where ``z < 0``."""

    gamma: float = 0.25
    stabilizer: float = 1e-6
    name: ClassVar[str] = "gamma"

    def relevance(self, op: Op, x: Tensor, w: Tensor, b: Tensor | None, r: Tensor) -> Tensor:
        g = self.gamma
        w_up, w_dn = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
        b_up = None if b is None else b + g * b.clamp(min=0)
        b_dn = None if b is None else b + g * b.clamp(max=0)
        negative = _has_negative(x)
        with torch.enable_grad():
            xp, xn = _leaf(x.clamp(min=0)), _leaf(x.clamp(max=0))
            # (c + gamma c+) = (w + gamma w+) x+ + (w + gamma w-) x-; (c + gamma c-) the other way round
            up = _sum(op(xp, w_up, b_up), op(xn, w_dn, None) if negative else None)
            dn = _sum(op(xp, w_dn, b_dn), op(xn, w_up, None) if negative else None)
            z = op(x, w, b).detach()
            sp = (z > 0).to(r.dtype) * r / stabilize(up, self.stabilizer)
            sn = (z < 0).to(r.dtype) * r / stabilize(dn, self.stabilizer)
            cs = vjps([up, dn], [xp, xn] if negative else [xp], [sp, sn])
        return xp.detach() * cs[0] + (xn.detach() * cs[1] if negative else 0)


@dataclass(repr=False)
class Flat(Rule):
    """LRP-flat (Lapuschkin 2019): every input of an output's receptive field gets an equal share."""

    stabilizer: float = 1e-6
    name: ClassVar[str] = "flat"

    def _weights(self, w: Tensor) -> Tensor:
        return torch.ones_like(w)

    def relevance(self, op: Op, x: Tensor, w: Tensor, b: Tensor | None, r: Tensor) -> Tensor:
        with torch.enable_grad():
            ones = _leaf(torch.ones_like(x))
            z = op(ones, self._weights(w), None)
            (c,) = vjps([z], [ones], [r / stabilize(z, self.stabilizer)])
        return c


@dataclass(repr=False)
class WSquare(Flat):
    """LRP-w^2 (Montavon 2017): shares in proportion to the squared weights (bias left out, as in the paper)."""

    stabilizer: float = 1e-6
    name: ClassVar[str] = "wsquare"

    def _weights(self, w: Tensor) -> Tensor:
        return w * w


@dataclass(repr=False)
class ZBox(Rule):
    """LRP-z^B (Montavon 2017) for inputs bounded by ``low <= x <= high``.

    Args:
        low, high: the bounds (numbers or tensors broadcastable to the layer's input); None: each image's
            minimum / maximum over the layer's input.
    """

    low: float | Tensor | None = None
    high: float | Tensor | None = None
    stabilizer: float = 1e-6
    name: ClassVar[str] = "zbox"

    def _bound(self, value: float | Tensor | None, x: Tensor, kind: str) -> Tensor:
        if value is None:
            flat = x.flatten(1)
            v = flat.amin(1) if kind == "low" else flat.amax(1)
            return v.view(-1, *([1] * (x.ndim - 1))).expand_as(x)
        try:
            return torch.broadcast_to(torch.as_tensor(value, dtype=x.dtype, device=x.device), x.shape)
        except RuntimeError:
            shape = tuple(value.shape) if isinstance(value, Tensor) else ()
            raise InputError(f"zbox bound {kind} of shape {shape} does not broadcast to the first layer's input "
                             f"{tuple(x.shape)}") from None

    def relevance(self, op: Op, x: Tensor, w: Tensor, b: Tensor | None, r: Tensor) -> Tensor:
        low, high = self._bound(self.low, x, "low"), self._bound(self.high, x, "high")
        with torch.enable_grad():
            xl, ll, hl = _leaf(x), _leaf(low), _leaf(high)
            # the biases cancel: (b) - (b+) - (b-) = 0
            parts = [op(xl, w, None), op(ll, w.clamp(min=0), None), op(hl, w.clamp(max=0), None)]
            s = r / stabilize(parts[0] - parts[1] - parts[2], self.stabilizer)
            c = vjps(parts, [xl, ll, hl], [s, s, s])
        return x * c[0] - low * c[1] - high * c[2]


RULE_NAMES = ("epsilon", "zplus", "alpha1beta0", "alpha2beta1", "gamma", "flat", "wsquare", "zbox")


def make_rule(spec: str | Rule, *, epsilon: float = 1e-6, gamma: float = 0.25, stabilizer: float = 1e-6,
              low: float | Tensor | None = None, high: float | Tensor | None = None) -> Rule:
    """A rule from its name (with the method's epsilon / gamma / stabilizer / bounds) or a :class:`Rule`.

    >>> make_rule("gamma", gamma=0.5)
    Gamma(gamma=0.5, stabilizer=1e-06)
    """
    if isinstance(spec, Rule):
        return spec
    if spec == "epsilon":
        return Epsilon(epsilon)
    if spec in ("zplus", "alpha1beta0"):
        return ZPlus(stabilizer=stabilizer)
    if spec == "alpha2beta1":
        return AlphaBeta(2.0, 1.0, stabilizer)
    if spec == "gamma":
        return Gamma(gamma, stabilizer)
    if spec == "flat":
        return Flat(stabilizer)
    if spec == "wsquare":
        return WSquare(stabilizer)
    if spec == "zbox":
        return ZBox(low, high, stabilizer)
    raise UnknownNameError("LRP rule", str(spec), RULE_NAMES)


# --------------------------------------------------------------------------------------------- composites


@dataclass(frozen=True)
class Composite:
    """Which rule each layer gets: ``conv`` for (transposed) convolutions, ``linear`` for linear layers, and
    ``first`` for the first layer (one whose input no convolution or linear layer precedes) of the kinds
    ``first_kinds``."""

    conv: str
    linear: str
    first: str | None = None
    first_kinds: tuple[str, ...] = ()


#: zennit's composites (zennit.composites), plus ``epsilon`` everywhere.
COMPOSITES: dict[str, Composite] = {
    "epsilon_plus": Composite("zplus", "epsilon"),
    "epsilon_plus_flat": Composite("zplus", "epsilon", "flat", ("conv", "conv_transpose", "linear")),
    "epsilon_gamma_box": Composite("gamma", "epsilon", "zbox", ("conv", "conv_transpose")),
    "epsilon_alpha2_beta1": Composite("alpha2beta1", "epsilon"),
    "epsilon": Composite("epsilon", "epsilon"),
}

RuleMap = Mapping[str | type, str | Rule]


def _check_rule_map(model: nn.Module, rules: RuleMap | None) -> tuple[dict[str, Any], list[tuple[type, Any]]]:
    """Split a user mapping into module names and module types (a string naming no module but a module class
    of the model counts as that class)."""
    by_name: dict[str, Any] = {}
    by_type: list[tuple[type, Any]] = []
    if rules is None:
        return by_name, by_type
    if not isinstance(rules, Mapping):
        raise InputError(f"rules must map module names or types to rule names, got {type(rules).__name__}")
    names = {n for n, _ in model.named_modules() if n}
    classes = {type(m).__name__: type(m) for m in model.modules()}
    for key, value in rules.items():
        if not isinstance(value, Rule) and value not in RULE_NAMES:
            raise UnknownNameError("LRP rule", str(value), RULE_NAMES)
        if isinstance(key, type):
            by_type.append((key, value))
        elif isinstance(key, str) and key in names:
            by_name[key] = value
        elif isinstance(key, str) and key in classes:
            by_type.append((classes[key], value))
        else:
            valid = sorted(names)[:20] + sorted(classes)
            raise UnknownNameError("module name or type in rules", str(key), valid)
    return by_name, by_type


# ------------------------------------------------------------------------------------------------- nodes


class _LayerNode(Node):
    """A convolution or linear layer (or one with a folded batch norm): the call's value forward, the rule back."""

    def __init__(self, rule: Rule, op: Op, x: Tensor, w: Tensor, b: Tensor | None, value: Any):
        self.rule, self.op, self.w, self.b = rule, op, w.detach(), None if b is None else b.detach()
        self.x = Saved(x, "input of a convolution or linear layer")
        self.value = value

    def compute(self, *inputs: Tensor) -> Tensor:
        return self.value()

    def backward(self, grad: Tensor) -> tuple[Tensor]:
        return (self.rule.relevance(self.op, self.x.get(), self.w, self.b, grad),)


class _PassNode(Node):
    """Relevance passes unchanged (summed over broadcast dimensions): activations, scalings, batch norm."""

    def __init__(self, call: Call, shape: torch.Size):
        self.call, self.shape, self.in_place = call, shape, call.in_place

    def compute(self, *inputs: Tensor) -> Tensor:
        return self.call.run(*self.call.args)

    def backward(self, grad: Tensor) -> tuple[Tensor]:
        return (sum_to(grad, self.shape),)


class _ShareNode(Node):
    """Relevance shared in proportion to each input's contribution (zennit's Norm: ``R_i = x_i * d z/d x_i *
    R / z``): average pooling, means, sums, and additions of input-dependent tensors."""

    def __init__(self, call: Call, positions: list[int], stabilizer: float):
        self.call, self.positions, self.stabilizer, self.in_place = call, positions, stabilizer, call.in_place
        leaves, self.spec = tree_flatten((call.args, call.kwargs))
        self.leaves = leaves
        # an in-place call overwrites its first argument: keep the old value
        self.saved = [Saved(leaves[i].clone() if (self.in_place and k == 0) else leaves[i], "input of a sum")
                      for k, i in enumerate(positions)]

    def compute(self, *inputs: Tensor) -> Tensor:
        return self.call.run(*self.call.args)

    def _recompute(self, xs: list[Tensor]) -> Tensor:
        leaves = list(self.leaves)
        for i, x in zip(self.positions, xs):
            leaves[i] = x
        args, kwargs = tree_unflatten(leaves, self.spec)
        func = self.call.func
        if self.in_place:  # the same value, out of place
            func = {torch.Tensor.add_: torch.add, torch.Tensor.__iadd__: torch.add, torch.Tensor.sub_: torch.sub,
                    torch.Tensor.__isub__: torch.sub}[func]
        return func(*args, **kwargs)

    def backward(self, grad: Tensor) -> list[Tensor]:
        xs = [s.get() for s in self.saved]
        with torch.enable_grad():
            leaves = [_leaf(x) for x in xs]
            z = self._recompute(leaves)
            cs = vjps([z], leaves, [grad / stabilize(z, self.stabilizer)])
        return [x * c for x, c in zip(xs, cs)]


# ---------------------------------------------------------------------------------------------- the rules


class _LRPRules(Rules):
    """Chooses a rule for each layer call (user names > first layer > user types > composite)."""

    def __init__(self, composite: Composite, by_name: dict[str, Any], by_type: list[tuple[type, Any]],
                 rule_kw: dict[str, Any], canonize: bool, ignore_bias: bool):
        self.composite, self.by_name, self.by_type = composite, by_name, by_type
        self.rule_kw, self.canonize, self.ignore_bias = rule_kw, canonize, ignore_bias
        self.stabilizer = float(rule_kw["stabilizer"])

    def rule_for(self, call: Call, kind: str) -> Rule:
        name, module = call.owner if call.owner is not None else ("", None)
        if name and self.by_name:
            parts = name.split(".")
            for k in range(len(parts), 0, -1):  # the most specific name (a module or one containing it)
                spec = self.by_name.get(".".join(parts[:k]))
                if spec is not None:
                    return make_rule(spec, **self.rule_kw)
        c = self.composite
        if c.first is not None and call.raw and kind in c.first_kinds:
            return make_rule(c.first, **self.rule_kw)
        if module is not None:
            for cls, spec in self.by_type:
                if isinstance(module, cls):
                    return make_rule(spec, **self.rule_kw)
        return make_rule(c.linear if kind == "linear" else c.conv, **self.rule_kw)

    def handle(self, call: Call) -> Tensor | None:
        kind = call.kind
        if kind in ("conv", "conv_transpose", "linear"):
            x, w, b, op = call.layer_parts()
            rule = self.rule_for(call, kind)
            return apply_node(_LayerNode(rule, op, x, w, None if self.ignore_bias else b, lambda: call.run(*call.args)),
                              x)
        if kind == "batch_norm":
            return self._batch_norm(call)
        if kind == "activation":
            x = call.args[0] if call.args else call.kwargs["input"]
            return apply_node(_PassNode(call, x.shape), x)
        if kind in ("sum_pool", "sum"):
            leaves, _ = tree_flatten((call.args, call.kwargs))
            positions = [i for i, t in enumerate(leaves) if call.mode is not None and call.mode.depends(t)]
            if kind == "sum" and len(positions) < 2:
                return None  # x + constant: the plain gradient passes relevance unchanged
            if kind == "sum" and not all(leaves[i].is_floating_point() for i in positions):
                return None
            return apply_node(_ShareNode(call, positions, self.stabilizer), *[leaves[i] for i in positions])
        if kind == "scaling":
            return self._scaling(call)
        return None

    def _scaling(self, call: Call) -> Tensor | None:
        """``x * c`` or ``x / c``, ``c`` constant: relevance passes unchanged (the epsilon rule of a diagonal layer)."""
        assert call.mode is not None
        a = call.args[0] if call.args else None
        other = call.args[1] if len(call.args) > 1 else call.kwargs.get("other")
        dep_a, dep_o = call.mode.depends(a), call.mode.depends(other)
        divides = call.func in (torch.div, torch.Tensor.div, torch.Tensor.div_, torch.Tensor.__truediv__,
                                torch.Tensor.__itruediv__)
        if dep_a and not dep_o:
            x = a
        elif dep_o and not dep_a and not divides:
            if call.in_place:
                return None
            x = other
        else:
            return None
        if call.kwargs.get("rounding_mode") is not None:
            return None
        return apply_node(_PassNode(call, x.shape), x)

    def _batch_norm(self, call: Call) -> Tensor | None:
        assert call.mode is not None
        args = list(call.args)
        names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
        p = {k: (args[i] if i < len(args) else call.kwargs.get(k)) for i, k in enumerate(names)}
        x = p["input"]
        frozen = not p["training"] and p["running_mean"] is not None and p["running_var"] is not None
        source = call.mode.layer_output(x) if (self.canonize and frozen) else None
        if source is not None and x._version == source[1] and source[0].kind in ("conv", "linear"):
            layer = source[0]
            xin, w, b, op = layer.layer_parts()
            eps = 1e-5 if p["eps"] is None else float(p["eps"])
            scale = torch.rsqrt(p["running_var"].detach() + eps)
            if p["weight"] is not None:
                scale = scale * p["weight"].detach()
            shift = -p["running_mean"].detach() * scale
            if b is not None and not self.ignore_bias:
                shift = shift + b.detach() * scale
            if p["bias"] is not None:
                shift = shift + p["bias"].detach()
            w_folded = w.detach() * scale.view(-1, *([1] * (w.ndim - 1)))
            rule = self.rule_for(layer, layer.kind)
            bias = None if self.ignore_bias else shift
            return apply_node(_LayerNode(rule, op, xin, w_folded, bias, lambda: call.run(*call.args)), xin)
        return apply_node(_PassNode(call, x.shape), x)


# ---------------------------------------------------------------------------------------------- the method


@register_method("lrp")
class LRP(PixelGradientMethod):
    """Layer-wise relevance propagation (Bach et al. 2015) with zennit's rules and composites (Anders et al. 2021).

    The explained score ``S`` starts as the relevance of the output it is read from (the class logit, ``-z`` for
    class 0 of a single-logit model, the log-odds for a probability output; for a callable target
    ``output * dS/doutput``) and is redistributed to the pixels layer by layer; the map is the relevance of
    each input value. Conservation: with the ``epsilon`` composite, a small epsilon and ``ignore_bias=True``
    the relevance sums to ``S``; the explanation's extras hold ``conservation_gap`` = ``sum(R) - S`` per image
    for every setting (biases, the z+ and gamma rules' denominators and a large epsilon absorb relevance).
    Rules and their equations: see the module docstring.

    Args:
        model: the classifier (never modified: batch norm is folded on copies of the parameters).
        composite: which rule each layer gets: "epsilon_plus" (default: z+ for convolutions, epsilon for
            linear layers), "epsilon_plus_flat" (flat for the first layer), "epsilon_gamma_box" (z^B for the
            first convolution, gamma for the others), "epsilon_alpha2_beta1" or "epsilon" (everywhere).
        rules: a mapping of module names (a container's name covers the layers inside it) or module types (a
            class, or a class name such as "Conv2d") to rule names ("epsilon", "zplus", "alpha1beta0",
            "alpha2beta1", "gamma", "flat", "wsquare", "zbox") or :class:`Rule` objects; names win over the
            composite's first-layer rule, which wins over types, which win over the composite.
        epsilon: epsilon of the epsilon rule (default 1e-6, zennit's).
        gamma: gamma of the gamma rule (default 0.25).
        stabilizer: epsilon added to the denominators of the other rules (default 1e-6).
        low, high: bounds of the z^B rule's input: numbers or tensors broadcastable to the first layer's input;
            None (default): each image's minimum and maximum.
        canonize: fold batch norm into the convolution or linear layer right before it (default True).
        ignore_bias: leave the layers' biases out of the rules (zennit's ``zero_params=["bias"]``).
        reduce: channel reduction of the (N, C, H, W) relevance: "sum", "abs_sum", "max_abs", "mean".
        batch_size: images per pass, or "auto".

    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 1)).double()
    >>> lrp = LRP(net, composite="epsilon", epsilon=1e-12, stabilizer=1e-12, ignore_bias=True)
    >>> e = lrp.attribute(torch.rand(1, 1, 4, 4, dtype=torch.float64), target=1)
    >>> bool(e.extras["conservation_gap"].abs() < 1e-9 * e.scores.abs())
    True
    """

    description = "Layer-wise relevance propagation, zennit's rules and composites; reports the conservation gap " \
                  "(Bach 2015, Montavon 2019)."
    family = "backprop"
    multiplies_by_inputs = True
    works_on_torchscript = False
    input_shift_invariant = False  # the default composite's z+ first layer weighs the input values

    @classmethod
    def expected_input_invariance(cls, options: Mapping[str, Any]) -> bool | None:
        """Not invariant when the first layer's rule weighs the input values themselves (epsilon, z+, alpha-beta:
        ``R ~ x * c``, like gradient x input; Kindermans et al. 2017); no stated expectation for the flat and z^B
        first layers (invariant inside the image, not where a compensated copy pads the border) or user rules."""
        if options.get("rules"):
            return None
        composite = options.get("composite", "epsilon_plus")
        return False if composite in ("epsilon_plus", "epsilon_alpha2_beta1", "epsilon") else None

    def __init__(
        self,
        model: nn.Module,
        *,
        composite: str = "epsilon_plus",
        rules: RuleMap | None = None,
        epsilon: float = 1e-6,
        gamma: float = 0.25,
        stabilizer: float = 1e-6,
        low: float | Tensor | None = None,
        high: float | Tensor | None = None,
        canonize: bool = True,
        ignore_bias: bool = False,
        reduce: str = "sum",
        batch_size: BatchSize = "auto",
    ):
        super().__init__(model, reduce=reduce, batch_size=batch_size)
        refuse_torchscript(model, "lrp")
        if hasattr(self.model, "keras_model"):  # a KerasClassifier: Keras' ops (Dense as matmul...) have no rules yet
            raise InputError("lrp does not support Keras models yet (its rules follow PyTorch's layer functions; on "
                             "Keras' ops its maps differ from the same weights in PyTorch); use gradient-family "
                             "methods, the CAMs or deeplift, or copy the weights into a PyTorch model")
        if composite not in COMPOSITES:
            raise UnknownNameError("LRP composite", str(composite), list(COMPOSITES))
        for key, value in (("epsilon", epsilon), ("gamma", gamma), ("stabilizer", stabilizer)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise InputError(f"{key} must be a number >= 0, got {value!r}")
        for key, value in (("low", low), ("high", high)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float | Tensor)):
                raise InputError(f"{key} must be None (each image's bound), a number or a tensor, got {value!r}")
        if not isinstance(canonize, bool) or not isinstance(ignore_bias, bool):
            raise InputError("canonize and ignore_bias must be True or False")
        self.by_name, self.by_type = _check_rule_map(model, rules)
        self.composite = composite
        self.rule_kw = {"epsilon": float(epsilon), "gamma": float(gamma), "stabilizer": float(stabilizer),
                        "low": low, "high": high}
        self.canonize, self.ignore_bias = canonize, ignore_bias
        self._store_params(composite=composite, rules=None if rules is None else
                           {(k if isinstance(k, str) else k.__name__): (v if isinstance(v, str) else repr(v))
                            for k, v in rules.items()},
                           epsilon=epsilon, gamma=gamma, stabilizer=stabilizer, low=low, high=high,
                           canonize=canonize, ignore_bias=ignore_bias)

    def _rules(self) -> _LRPRules:
        return _LRPRules(COMPOSITES[self.composite], self.by_name, self.by_type, self.rule_kw, self.canonize,
                         self.ignore_bias)

    def _attributions(
        self, inputs: Tensor, target: ResolvedTarget
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        relevance, scores, unruled = lrp_relevance(self.model, inputs, target, self._rules())
        if unruled:
            import warnings

            warnings.warn(unruled_message("lrp", unruled), UserWarning, stacklevel=4)
        gap = relevance.flatten(1).sum(1) - scores
        return relevance, scores, {"conservation_gap": gap}


def initial_relevance(output: Tensor, grad: Tensor, scores: Tensor, target: ResolvedTarget) -> Tensor:
    """The relevance the explained output starts with: ``S`` at the column a class target reads ``S`` from (the
    logit, ``-z`` for class 0 of one binary logit, the log-odds of a probability output), else
    ``output * dS/doutput`` (a callable target; ``S`` itself when it is linear in the outputs without offset)."""
    if target.classes is None:
        return output * grad
    s = scores.reshape(-1, *([1] * (grad.ndim - 1))).to(grad.dtype)
    return torch.where(grad != 0, s.expand_as(grad), torch.zeros_like(grad))


def lrp_relevance(model: nn.Module, inputs: Tensor, target: ResolvedTarget, rules: Rules) -> tuple[Tensor, Tensor, Any]:
    """One forward pass under ``rules`` and the relevance pass back to the input.

    Returns:
        The relevance (N, C, H, W), the scores ``S`` (N,) and the counts of operations without a rule.
    """
    decide_layout(model, inputs)
    with torch.inference_mode(False), torch.enable_grad():
        x = inputs.detach().clone().requires_grad_(True)
        with propagation(model, x, rules) as mode:
            output = forward(model, x)
        scores = target.score(output)
        if not isinstance(output, Tensor) or output.grad_fn is None:
            raise InputError("the model's output does not depend on its input through operations lrp can follow")
        (g,) = torch.autograd.grad(scores.sum(), output, retain_graph=True)
        relevance_out = initial_relevance(output.detach(), g, scores.detach(), target)
        (relevance,) = torch.autograd.grad(output, x, relevance_out)
    return relevance.to(inputs.dtype), scores.detach().to(inputs.dtype), mode.unruled


__all__ = [
    "COMPOSITES", "LRP", "RULE_NAMES", "AlphaBeta", "Composite", "Epsilon", "Flat", "Gamma", "Rule", "WSquare",
    "ZBox", "ZPlus", "initial_relevance", "lrp_relevance", "make_rule",
]
