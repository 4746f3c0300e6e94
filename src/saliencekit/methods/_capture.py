"""The one place where hooks are put on a model, and always taken off (zennit's way).

``capture(model, layers, relu_rule)`` registers:

- forward hooks on the chosen layers that record their outputs (the activations ``A``); the hook
  hands the rest of the network a clone, so an in-place operation after the layer (an in-place
  ReLU) can neither change the recorded activation nor break the gradient taken with respect to it;
- optionally a backward rule on every ``nn.ReLU`` module: ``"guided"`` (guided backprop: pass the
  gradient only where the forward input was positive and the incoming gradient is positive) or
  ``"deconv"`` (DeconvNet: pass ``relu(incoming gradient)``, ignoring the forward mask). Guided
  backprop clips the gradient with a hook on each ReLU output tensor (the ReLU's own backward then
  applies the forward mask); DeconvNet replaces the ReLU's output by a custom autograd function of
  the same value. Never by swapping modules or patching ``torch`` functions.
  Functional ReLUs (``F.relu`` / ``torch.relu`` called inside ``forward``) cannot be reached without
  patching torch, so they keep their ordinary gradient; :func:`count_relu_modules` lets callers warn.

Every handle is removed in ``finally``; the model's train/eval flags are restored; exceptions
propagate unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn

from saliencekit.errors import InputError, UnknownNameError

ReluRule = Literal["guided", "deconv"]
_RULES = ("guided", "deconv")


class _RuleSwitch:
    """Whether the ReLU rule is applied in a backward pass (``False``: the plain ReLU gradient)."""

    def __init__(self) -> None:
        self.active = True


class _DeconvReLU(torch.autograd.Function):
    """``relu(x)`` forward; backward passes ``relu(grad)`` whatever the forward input was."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, switch: _RuleSwitch) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.switch = switch
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if not ctx.switch.active:
            (x,) = ctx.saved_tensors
            return grad * (x > 0).to(grad.dtype), None
        return grad.clamp_min(0), None




class Capture:
    """What a :func:`capture` context records: the latest output of each captured layer, and how
    often each captured layer was called since the last :meth:`clear`."""

    def __init__(self, layers: Sequence[nn.Module]):
        self.layers = list(layers)
        self.activations: dict[int, torch.Tensor] = {}
        self.calls: dict[int, int] = {}
        self._switch = _RuleSwitch()

    def activation(self, layer: nn.Module) -> torch.Tensor:
        """The output the layer produced in the latest forward pass."""
        try:
            return self.activations[id(layer)]
        except KeyError:
            raise InputError(
                f"layer {layer.__class__.__name__} was not called in the forward pass; choose a layer the model uses"
            ) from None

    @contextlib.contextmanager
    def plain_relu(self) -> Iterator[None]:
        """Backward passes run inside this block use the ordinary ReLU gradient instead of the rule
        (guided backprop and Grad-CAM share one forward pass this way)."""
        saved = self._switch.active
        self._switch.active = False
        try:
            yield
        finally:
            self._switch.active = saved

    def clear(self) -> None:
        self.activations.clear()
        self.calls.clear()


def count_relu_modules(model: nn.Module) -> int:
    """Number of ``nn.ReLU`` modules (the ones a backward rule can reach)."""
    return sum(isinstance(m, nn.ReLU) for m in model.modules())


@contextlib.contextmanager
def eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Put every module in eval mode for the block and restore each module's own flag after."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        if enabled:
            model.eval()
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


@contextlib.contextmanager
def capture(
    model: nn.Module,
    layers: Sequence[nn.Module] = (),
    relu_rule: ReluRule | None = None,
    eval: bool = True,
    leaf: bool = False,
) -> Iterator[Capture]:
    """Record layer outputs and/or apply a ReLU backward rule for the duration of the block.

    Args:
        model: the network (not modified: hooks and mode are restored on exit).
        layers: modules whose outputs are recorded.
        relu_rule: ``None``, ``"guided"`` or ``"deconv"``.
        eval: run the block in eval mode (dropout off, batch-norm statistics frozen).
        leaf: record each layer output as a detached leaf that requires grad (the network goes on
            with a clone of it): ``autograd.grad(score, activation)`` then works even when nothing
            before the layer requires grad, and never walks back past the layer.

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    >>> with capture(net, [net[0]]) as cap:
    ...     _ = net(torch.ones(1, 1, 5, 5))
    >>> cap.activation(net[0]).shape, len(net[0]._forward_hooks)
    (torch.Size([1, 2, 3, 3]), 0)
    """
    if relu_rule is not None and relu_rule not in _RULES:
        raise UnknownNameError("ReLU rule", str(relu_rule), _RULES)
    cap = Capture(layers)
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def record(module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            raise InputError(f"layer {module.__class__.__name__} returns {type(output).__name__}, not a tensor; "
                             "choose a layer whose output is a feature map")
        cap.calls[id(module)] = cap.calls.get(id(module), 0) + 1
        if leaf:
            output = output.detach().requires_grad_(True)
        cap.activations[id(module)] = output
        return output.clone()

    def guided_post(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        # Guided backprop = the ReLU's own backward (forward mask x > 0) applied to relu(incoming
        # gradient): a hook on the output tensor clips the gradient before it enters the ReLU's
        # backward. No copy of the activation, no custom function; the hook lives on this forward
        # pass's tensor, not on the model.
        if output.requires_grad:
            switch = cap._switch
            output.register_hook(lambda grad: grad.clamp_min(0) if switch.active else grad)

    def deconv_pre(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        # DeconvNet ignores the forward mask, so the ReLU's own backward must be bypassed: keep the
        # pre-activation (an in-place ReLU overwrites it) and hand the network a rule output.
        module_inputs[id(module)] = inputs[0].clone() if getattr(module, "inplace", False) else inputs[0]

    def deconv_post(module: nn.Module, _inputs: Any, _output: Any) -> torch.Tensor:
        return _DeconvReLU.apply(module_inputs.pop(id(module)), cap._switch)

    module_inputs: dict[int, torch.Tensor] = {}
    with eval_mode(model, eval):
        try:
            # Rule hooks first: a captured layer that is itself an nn.ReLU then records the rule's output.
            if relu_rule is not None:
                for m in model.modules():
                    if not isinstance(m, nn.ReLU):
                        continue
                    if relu_rule == "guided":
                        handles.append(m.register_forward_hook(guided_post))
                    else:
                        handles.append(m.register_forward_pre_hook(deconv_pre))
                        handles.append(m.register_forward_hook(deconv_post))
            for layer in layers:
                handles.append(layer.register_forward_hook(record))
            yield cap
        finally:
            for h in handles:
                h.remove()
            module_inputs.clear()


# ----------------------------------------------------------------------------------------- layers


def module_name(model: nn.Module, layer: nn.Module) -> str:
    """Dotted name of ``layer`` inside ``model`` (``""`` for the model itself)."""
    for name, m in model.named_modules():
        if m is layer:
            return name
    raise InputError(f"layer {layer.__class__.__name__} is not a submodule of the model")


def spatial_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the modules whose output is a spatial feature map (N, C, H, W) with H*W > 1,
    in the order their forward passes finish, from one forward pass of one image.

    Modules called more than once (a ReLU reused inside a residual block) and adaptive pooling
    layers are left out. Where several modules hand on the very same value (a container returning
    its last child's output, or in-place operations writing into one tensor), the innermost
    module that finished after the value's last in-place change stands for them all.
    """
    names = {id(m): n for n, m in model.named_modules() if n}
    calls: dict[int, int] = {}
    order: list[tuple[str, tuple[int, int], int]] = []  # (name, (id, version) of the output, depth)
    keep_alive: list[torch.Tensor] = []  # ids are only unique while the tensors live
    handles = []

    def hook(module: nn.Module, _i: Any, out: Any) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
        if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
            return
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[2] * out.shape[3] > 1:
            name = names[id(module)]
            keep_alive.append(out)
            order.append((name, (id(out), out._version), name.count(".")))

    try:
        for m in model.modules():
            if id(m) in names:
                handles.append(m.register_forward_hook(hook))
        # no_grad rather than inference_mode: inference tensors have no version counter.
        with eval_mode(model), torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    keep_alive.clear()
    reused = {n for n, m in model.named_modules() if calls.get(id(m), 0) > 1}
    best: dict[tuple[int, int], tuple[str, int]] = {}
    for name, value, depth in order:
        if name in reused:
            continue
        if value not in best or depth > best[value][1]:
            best[value] = (name, depth)
    keep = {name for name, _ in best.values()}
    out: list[str] = []
    for name, _, _ in order:
        if name in keep and name not in out:
            out.append(name)
    return out


def resolve_layer(model: nn.Module, layer: str | nn.Module | None, example: torch.Tensor) -> nn.Module:
    """The module to explain at: ``None`` -> the last spatial feature map of the network
    (the last convolutional stage), a dotted module name, or a module of the model.

    Raises:
        InputError: the model has no convolutional feature map, or a module is not part of the model.
        UnknownNameError: a name is not a module of the model (the message lists candidates).
    """
    if isinstance(layer, nn.Module):
        module_name(model, layer)  # raises when foreign
        return layer
    if isinstance(model, torch.jit.ScriptModule):
        raise InputError("layer methods (CAMs) need forward hooks, which TorchScript models do not support; "
                         "use a gradient-family method, or load the model as an nn.Module")
    modules = dict(model.named_modules())
    if layer is None:
        candidates = spatial_layers(model, example)
        if not candidates:
            raise InputError(
                f"{model.__class__.__name__} has no layer with a spatial feature map (N, C, H, W), so CAM methods "
                "cannot be used; use a gradient-family or perturbation method instead"
            )
        return modules[candidates[-1]]
    if not isinstance(layer, str):
        raise InputError(f"layer must be a module name, a module or None, got {type(layer).__name__}")
    if layer not in modules or layer == "":
        try:
            valid = spatial_layers(model, example)
        except Exception:
            valid = [n for n in modules if n]
        raise UnknownNameError("layer", layer, valid[-12:])
    return modules[layer]
