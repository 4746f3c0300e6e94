"""Modified backward passes at the level of the torch functions a model calls (LRP, DeepLIFT).

LRP and DeepLIFT replace the backward pass of some operations (a convolution, a ReLU, a residual
addition) by a rule. Module hooks cannot reach operations written inside ``forward`` (``out += identity``
in a ResNet block, ``F.relu`` and ``F.adaptive_avg_pool2d`` in a DenseNet), and zennit reaches them by
rewriting the model's ``forward`` for the duration of the call. Neither is needed here: during one
forward pass a :class:`torch.overrides.TorchFunctionMode` (thread-local, gone when the block ends) sees
every torch function the model calls, with its arguments. For each call that depends on the explained
input, a :class:`Rules` object may return the call's output through a custom autograd function whose
backward is the rule; every other call keeps its ordinary gradient (reshapes, concatenations, padding
and max-pooling in LRP, every linear operation in DeepLIFT). Nothing is put on the model: no hook, no
changed attribute, no module swapped, no torch function replaced.

What the mode tracks while the forward pass runs:

- which tensors depend on the explained input (weights, buffers and constants do not), so that a rule
  applies only to the input's path and an addition ``x + bias`` is not mistaken for a residual sum;
- whether a parameterised layer (convolution or linear) lies between the input and a tensor: the
  "first layer" of an LRP composite is a layer whose input does not have one;
- the outputs of convolutions and linear layers, so that a batch norm applied directly to one can be
  folded into it for the rule (canonisation) without changing any parameter of the model;
- which module owns a layer's weight (by identity), so that rules can be chosen by module name or type;
- which operations without a rule the relevance really flowed through (:attr:`PropagationMode.unruled`, counted
  in the backward pass, so an operation whose result the model discards is not reported).

The functions are recognised by identity (``F.conv2d``, ``torch.Tensor.add_``, ...); the tables below are
the one list. Calls with in-place semantics (``relu_``, ``+=``) stay in place: the custom function marks
the tensor it modifies, and keeps a copy of the old value where its rule needs it. A rule that needs a
tensor which the model later modified in place raises instead of computing with the new value.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from saliencekit import _layout
from saliencekit.errors import InputError

T = torch.Tensor

# ------------------------------------------------------------------------------- the one list of functions

#: Convolutions and linear layers: ``f(input, weight, bias, *rest)``.
CONVOLUTIONS = (F.conv1d, F.conv2d, F.conv3d)
TRANSPOSED_CONVOLUTIONS = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
LINEAR = (F.linear,)
BATCH_NORM = (F.batch_norm,)
#: Element-wise activations (relevance passes them unchanged in LRP; DeepLIFT's rescale rule).
ACTIVATIONS = (
    F.relu, torch.relu, T.relu, F.relu_, T.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.elu, F.elu_, F.selu,
    F.celu, F.gelu, F.silu, F.mish, F.softplus, F.hardtanh, F.hardtanh_, F.hardswish, F.hardsigmoid,
    F.logsigmoid, F.tanhshrink, F.softsign, torch.sigmoid, T.sigmoid, T.sigmoid_, F.sigmoid, torch.tanh, T.tanh,
    T.tanh_, F.tanh, torch.clamp, T.clamp, T.clamp_, torch.clamp_min, T.clamp_min, T.clamp_min_,
)
MAX_POOLS = (
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.max_pool1d_with_indices, F.max_pool2d_with_indices,
    F.max_pool3d_with_indices, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.adaptive_max_pool1d_with_indices, F.adaptive_max_pool2d_with_indices, F.adaptive_max_pool3d_with_indices,
    torch.max_pool1d, torch.max_pool2d, torch.max_pool3d,
)
#: Sums with non-negative weights: average pooling, means and sums over dimensions.
SUM_POOLS = (
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    torch.mean, T.mean, torch.sum, T.sum,
)
#: Additions and subtractions (of two input-dependent tensors: residual connections).
SUMS = (torch.add, T.add, T.add_, T.__add__, T.__radd__, T.__iadd__, torch.sub, T.sub, T.sub_, T.__sub__,
        T.__isub__)
#: Products and quotients (of an input-dependent tensor by a constant: a scaling).
SCALINGS = (torch.mul, T.mul, T.mul_, T.__mul__, T.__rmul__, T.__imul__, torch.div, T.div, T.div_,
            T.__truediv__, T.__itruediv__)
#: Operations with weights or a non-linear mixing of positions that no rule here covers: their plain
#: gradient carries the relevance, which the methods report as a warning.
UNRULED = (
    F.layer_norm, F.group_norm, F.instance_norm, F.local_response_norm, torch.matmul, T.matmul, T.__matmul__,
    torch.mm, T.mm, torch.bmm, T.bmm, torch.addmm, torch.einsum, torch.baddbmm, F.softmax, T.softmax,
    torch.softmax, F.log_softmax, F.scaled_dot_product_attention, F.multi_head_attention_forward, F.embedding,
)

_IN_PLACE = frozenset({F.relu_, T.relu_, F.leaky_relu_, F.elu_, F.hardtanh_, T.sigmoid_, T.tanh_, T.clamp_,
                       T.clamp_min_, T.add_, T.__iadd__, T.sub_, T.__isub__, T.mul_, T.__imul__, T.div_,
                       T.__itruediv__, T.__setitem__})


def _table(*groups: tuple[tuple[Callable[..., Any], ...], str]) -> dict[Callable[..., Any], str]:
    out: dict[Callable[..., Any], str] = {}
    for funcs, kind in groups:
        for f in funcs:
            out.setdefault(f, kind)
    return out


KINDS: dict[Callable[..., Any], str] = _table(
    (CONVOLUTIONS, "conv"), (TRANSPOSED_CONVOLUTIONS, "conv_transpose"), (LINEAR, "linear"),
    (BATCH_NORM, "batch_norm"), (ACTIVATIONS, "activation"), (MAX_POOLS, "max_pool"), (SUM_POOLS, "sum_pool"),
    (SUMS, "sum"), (SCALINGS, "scaling"), (UNRULED, "unruled"),
)
LAYER_KINDS = ("conv", "conv_transpose", "linear")

_INDEPENDENT, _RAW, _DEEP = 0, 1, 2  # how a tensor depends on the input (RAW: no layer in between)


def is_in_place(func: Callable[..., Any], kwargs: dict[str, Any]) -> bool:
    """Whether the call modifies its first argument (``relu_``, ``+=``, ``F.relu(x, inplace=True)``)."""
    return func in _IN_PLACE or bool(kwargs.get("inplace", False))


# ------------------------------------------------------------------------------------------------- calls


@dataclass
class Call:
    """One intercepted call of a torch function on the input's path.

    Attributes:
        func: the function (e.g. ``F.conv2d``); ``kind`` its entry in :data:`KINDS`.
        args, kwargs: its arguments.
        dependent: which tensor arguments depend on the input (flattened in argument order).
        raw: True when no convolution or linear layer lies between the input and every dependent argument.
        owner: ``(name, module)`` of the module whose parameter is the call's weight, else None.
    """

    func: Callable[..., Any]
    kind: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    raw: bool
    owner: tuple[str, nn.Module] | None = None
    mode: PropagationMode | None = field(default=None, repr=False)

    @property
    def in_place(self) -> bool:
        return is_in_place(self.func, self.kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The function called with other arguments (the same keyword arguments unless given)."""
        return self.func(*args, **{**self.kwargs, **kwargs})

    def layer_parts(self) -> tuple[T, T, T | None, Callable[[T, T, T | None], T]]:
        """``(input, weight, bias, op)`` of a convolution or linear call, ``op(x, w, b)`` the same call with
        other input and parameters."""
        args, kw = list(self.args), dict(self.kwargs)
        x = args.pop(0) if args else kw.pop("input")
        w = args.pop(0) if args else kw.pop("weight")
        b = args.pop(0) if args else kw.pop("bias", None)
        func = self.func

        def op(x_: T, w_: T, b_: T | None) -> T:
            return func(x_, w_, b_, *args, **kw)

        return x, w, b, op


# ---------------------------------------------------------------------------------- the rule function


class Node:
    """A rule for one call: :meth:`compute` gives the call's value (forward), :meth:`backward` what flows back.

    ``inputs`` are the input-dependent tensors the rule sends something back to; for an in-place call
    the first of them is the tensor the call modifies.
    """

    in_place: bool = False

    def compute(self, *inputs: T) -> T:
        raise NotImplementedError

    def backward(self, grad: T) -> Sequence[T | None]:
        raise NotImplementedError


class _RuleFunction(torch.autograd.Function):
    """``node.compute(*inputs)`` forward, ``node.backward(grad)`` backward."""

    @staticmethod
    def forward(ctx: Any, node: Node, *inputs: T) -> T:
        out = node.compute(*inputs)
        if node.in_place:
            ctx.mark_dirty(inputs[0])
        ctx.node = node
        return out

    @staticmethod
    def backward(ctx: Any, grad: T) -> tuple[Any, ...]:
        node: Node = ctx.node
        ctx.node = None  # free what the rule kept (inputs, parameters) as soon as it has run
        return (None, *node.backward(grad))


def apply_node(node: Node, *inputs: T) -> T:
    """The call's output, whose backward is the node's rule."""
    return _RuleFunction.apply(node, *inputs)


class Saved:
    """A tensor a rule needs in its backward pass; raises there if the model modified it in place since."""

    def __init__(self, t: T, what: str):
        self.t, self.version, self.what = t, t._version, what

    def get(self) -> T:
        if self.t._version != self.version:
            raise InputError(f"the model modified the {self.what} in place after the rule read it, so its value is "
                             "gone; use out-of-place operations there (e.g. ReLU(inplace=False))")
        return self.t.detach()


def stabilize(z: T, epsilon: float) -> T:
    """``z + epsilon * sign(z)``, with sign(0) = +1 (zennit's stabiliser)."""
    return torch.where(z < 0, z - epsilon, z + epsilon)


def sum_to(t: T, shape: torch.Size) -> T:
    """``t`` summed over the dimensions that broadcasting added to a tensor of ``shape``."""
    return t if t.shape == shape else t.sum_to_size(shape)


def vjps(outputs: Sequence[T], inputs: Sequence[T], grads: Sequence[T]) -> tuple[T, ...]:
    """Vector-Jacobian products (runs inside a backward pass, so it enables grad itself)."""
    return torch.autograd.grad(list(outputs), list(inputs), list(grads))


# ------------------------------------------------------------------------------------------ rule sets


class Rules:
    """What a method does with each intercepted call; :meth:`handle` returns the output or None (plain gradient)."""

    def handle(self, call: Call) -> Any:
        return None

    def unruled(self, call: Call) -> bool:
        """Whether a call without a rule deserves a warning (its gradient is not what the method defines)."""
        if call.kind == "unruled":
            return True
        if call.kind == "scaling":  # a product of two input-dependent tensors (gating, attention)
            return sum(isinstance(a, T) and call.mode is not None and call.mode.depends(a) for a in call.args) > 1
        return False


class PropagationMode(TorchFunctionMode):
    """The torch-function mode of one forward pass (see the module docstring)."""

    def __init__(self, model: nn.Module, rules: Rules):
        super().__init__()
        self.rules = rules
        self._state: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._layer_outputs: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.unruled: Counter[str] = Counter()
        owners: dict[int, tuple[str, nn.Module]] = {}
        for name, module in model.named_modules():
            for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                owners.setdefault(id(t), (name, module))
        self._owners = owners

    # -- tracking ---------------------------------------------------------------------------------------

    def mark_input(self, x: T) -> None:
        self._state[x] = _RAW

    def depends(self, t: Any) -> bool:
        return isinstance(t, T) and self._state.get(t, _INDEPENDENT) != _INDEPENDENT

    def layer_output(self, t: T) -> tuple[Call, int] | None:
        """The layer call that produced ``t`` and ``t``'s version then, if ``t`` is one's output."""
        return self._layer_outputs.get(t)

    def owner(self, t: Any) -> tuple[str, nn.Module] | None:
        return self._owners.get(id(t)) if isinstance(t, T) else None

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        leaves, _ = tree_flatten((args, kwargs))
        state = max((self._state.get(t, _INDEPENDENT) for t in leaves if isinstance(t, T)), default=_INDEPENDENT)
        if state == _INDEPENDENT:
            return func(*args, **kwargs)
        kind = KINDS.get(func, "")
        out = None
        if kind:
            first = args[0] if args else kwargs.get("input")
            if kind in LAYER_KINDS and not self.depends(first):
                kind = "unruled"  # the weight depends on the input (a dynamic layer): no rule covers it
            call = Call(func, kind, args, kwargs, raw=state == _RAW, mode=self)
            if kind in LAYER_KINDS or kind == "batch_norm":
                weight = args[1] if len(args) > 1 else kwargs.get("weight", kwargs.get("running_mean"))
                call.owner = self.owner(weight)
            out = self.rules.handle(call) if kind != "unruled" else None
            if out is None and self.rules.unruled(call):
                out = _counted(func(*args, **kwargs), getattr(func, "__name__", str(func)), self.unruled,
                               is_in_place(func, kwargs))
        if out is None:
            out = func(*args, **kwargs)
        new_state = _DEEP if kind in LAYER_KINDS else state
        outs, _ = tree_flatten(out)
        for t in outs:
            if isinstance(t, T):
                self._state[t] = max(new_state, self._state.get(t, _INDEPENDENT))
        if is_in_place(func, kwargs) and args and isinstance(args[0], T):
            self._state[args[0]] = max(new_state, self._state.get(args[0], _INDEPENDENT))
        if kind in LAYER_KINDS and isinstance(out, T):
            self._layer_outputs[out] = (call, out._version)
        return out


class _Count(torch.autograd.Function):
    """Identity forward; counts the backward passes through it (relevance that really flowed through an operation)."""

    @staticmethod
    def forward(ctx: Any, x: T, name: str, counts: Counter[str]) -> T:
        ctx.name, ctx.counts = name, counts
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: T) -> tuple[T, None, None]:
        ctx.counts[ctx.name] += 1
        return grad, None, None


def _counted(out: Any, name: str, counts: Counter[str], in_place: bool) -> Any:
    """``out`` with every differentiable tensor in it passed through :class:`_Count` (the output of a final
    activation that the output rule bypasses, say, is never differentiated, so it is never reported)."""
    if in_place:
        counts[name] += 1
        return out
    if isinstance(out, T):
        return _Count.apply(out, name, counts) if out.requires_grad else out
    if isinstance(out, tuple | list):
        return type(out)(_counted(o, name, counts, False) for o in out)
    return out


@contextlib.contextmanager
def propagation(model: nn.Module, x: T, rules: Rules) -> Iterator[PropagationMode]:
    """Run the block (one forward pass of ``model`` on ``x``) with ``rules`` applied to the input's path."""
    mode = PropagationMode(model, rules)
    mode.mark_input(x)
    with mode:
        yield mode


def forward(model: nn.Module, x: T) -> Any:
    """``model(x)`` in the layout :mod:`saliencekit._layout` chose; call inside :func:`propagation`, after
    :func:`decide_layout` (whose trial forward must not run under the mode)."""
    if _layout.uses_channels_last(model, x):
        return model(x.to(memory_format=torch.channels_last))
    return model(x)


def decide_layout(model: nn.Module, x: T) -> None:
    """Let :mod:`saliencekit._layout` run its once-per-model trial before a propagation pass."""
    _layout.uses_channels_last(model, x)


def refuse_torchscript(model: nn.Module, method: str) -> None:
    """The methods built on this module follow the torch functions a model calls in Python; TorchScript hides them."""
    if isinstance(model, torch.jit.ScriptModule):
        raise InputError(f"{method} follows the torch functions a model calls in Python; a TorchScript model hides "
                         "them: load the model as an nn.Module (a run directory or a torch.save(model) file)")


def unruled_message(method: str, counts: Counter[str]) -> str:
    """The warning for operations on the input's path that no rule of ``method`` covers."""
    ops = ", ".join(f"{name} (x{n})" if n > 1 else name for name, n in sorted(counts.items()))
    return (f"{method}: operations without a {method} rule carry the relevance by their plain gradient: {ops}; "
            "the map is not what the method defines there (see the conservation gap in extras)")


__all__ = [
    "KINDS", "LAYER_KINDS", "Call", "Node", "PropagationMode", "Rules", "Saved", "apply_node", "decide_layout",
    "forward", "propagation", "refuse_torchscript", "stabilize", "sum_to", "unruled_message", "vjps",
]
