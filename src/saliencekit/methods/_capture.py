"""The one place where hooks are put on a model, and always taken off (zennit's way).

``capture(model, layers, relu_rule)`` registers:

- forward hooks on the chosen layers that record their outputs (the activations ``A``); the hook
  hands the rest of the network a clone, so an in-place operation after the layer (an in-place
  ReLU) can neither change the recorded activation nor break the gradient taken with respect to it;
- optionally a backward rule on every ``nn.ReLU`` module (or every ReLU site a model adapter declares with
  ``relu_sites()``, as :class:`~saliencekit.models.KerasClassifier` does): ``"guided"`` (guided backprop: pass the
  gradient only where the forward input was positive and the incoming gradient is positive) or
  ``"deconv"`` (DeconvNet: pass ``relu(incoming gradient)``, ignoring the forward mask). Guided
  backprop clips the gradient with a hook on each ReLU output tensor (the ReLU's own backward then
  applies the forward mask); DeconvNet replaces the ReLU's output by a custom autograd function of
  the same value. Never by swapping modules or patching ``torch`` functions.
  Functional ReLUs (``F.relu`` / ``torch.relu`` called inside ``forward``) cannot be reached without
  patching torch, so they keep their ordinary gradient; :func:`count_relu_modules` lets callers warn.

Every handle is removed in ``finally``; the model's train/eval flags are restored; exceptions
propagate unchanged.

The second half of the module chooses the layer a CAM explains at and reads its output as an (N, C, h, w)
feature map, whatever layout the layer hands over (see the comment above :class:`FeatureReader`).
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from saliencekit.errors import InputError, UnknownNameError

ReluRule = Literal["guided", "deconv"]
_RULES = ("guided", "deconv")
# While set, the hooks of every open capture do nothing: the layer-discovery pass, which may run inside a capture
# (a named layer's reader is settled from its output), sees the model's own forward pass.
_PAUSED: contextvars.ContextVar[bool] = contextvars.ContextVar("saliencekit_capture_paused", default=False)


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
        #: every recorded output of every captured layer, in call order (only with ``capture(..., all_calls=True)``)
        self.history: list[tuple[nn.Module, torch.Tensor]] = []
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
        self.history.clear()


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
    all_calls: bool = False,
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
        all_calls: also keep the output of every call of every captured layer in :attr:`Capture.history`
            (a module called several times in one forward pass).

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
        if _PAUSED.get():
            return None
        if not isinstance(output, torch.Tensor):
            raise InputError(f"layer {module.__class__.__name__} returns {type(output).__name__}, not a tensor; "
                             "choose a layer whose output is a feature map")
        cap.calls[id(module)] = cap.calls.get(id(module), 0) + 1
        if leaf:
            output = output.detach().requires_grad_(True)
        cap.activations[id(module)] = output
        if all_calls:
            cap.history.append((module, output))
        return output.clone()

    def guided_post(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if _PAUSED.get():
            return
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
        if _PAUSED.get():
            return
        module_inputs[id(module)] = inputs[0].clone() if getattr(module, "inplace", False) else inputs[0]

    def deconv_post(module: nn.Module, _inputs: Any, _output: Any) -> torch.Tensor | None:
        if _PAUSED.get():
            return None
        return _DeconvReLU.apply(module_inputs.pop(id(module)), cap._switch)

    module_inputs: dict[int, torch.Tensor] = {}
    with eval_mode(model, eval):
        try:
            # Rule hooks first: a captured layer that is itself an nn.ReLU then records the rule's output.
            if relu_rule is not None:
                for m, fused in relu_sites(model):
                    if relu_rule == "guided":
                        handles.append(m.register_forward_hook(guided_post))
                    elif not fused:  # DeconvNet needs the ReLU's input, which a fused activation never shows
                        handles.append(m.register_forward_pre_hook(deconv_pre))
                        handles.append(m.register_forward_hook(deconv_post))
            for layer in layers:
                handles.append(layer.register_forward_hook(record))
            yield cap
        finally:
            for h in handles:
                h.remove()
            module_inputs.clear()


@contextlib.contextmanager
def substitute_output(model: nn.Module, layer: nn.Module, value: Callable[[], torch.Tensor],
                      eval: bool = True) -> Iterator[None]:
    """For the block, every call of ``layer`` returns ``value()`` instead of its own output (the rest of the network
    runs on it; Ablation-CAM's zeroed channels). The hook comes off and the modes are restored on exit.

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    >>> with substitute_output(net, net[0], lambda: -torch.ones(1, 2, 3, 3)):
    ...     bool((net(torch.ones(1, 1, 5, 5)) == 0).all())
    True
    >>> len(net[0]._forward_hooks)
    0
    """

    def replace(_module: nn.Module, _inputs: Any, _output: Any) -> torch.Tensor | None:
        return None if _PAUSED.get() else value()

    with eval_mode(model, eval):
        handle = layer.register_forward_hook(replace)
        try:
            yield
        finally:
            handle.remove()


# ----------------------------------------------------------------------------------------- layers
#
# A CAM needs a feature map (N, C, h, w). Layers hand theirs over in three layouts, and one reader per layer turns
# the raw output into that map (the same reader is applied to the output's gradient: every reader is a pure
# rearrangement, so the gradient of the map is the map of the gradient):
#
# - "nchw": a PyTorch feature map, as it is;
# - "nhwc": channels-last maps (Keras layers, Swin stages), permuted;
# - "tokens": (N, T, D) tokens of a vision transformer: the prefix tokens (class, distillation, register tokens:
#   T minus the patch count, at the start as timm and torchvision put them) are dropped and the patch tokens laid
#   out on their (gh, gw) grid; the grid is the spatial size of the last image-like map before the tokens (the
#   patch embedding's output);
# - or a callable given as ``reshape=`` (like pytorch-grad-cam's reshape_transform) for any other layout.
#
# A 4-D output is image-like when its two spatial sizes keep the input's aspect ratio (h/H ~ w/W, at most the
# input size): attention heads (N, heads, tokens, dim) and q/k norms are not, and neither is anything computed
# inside an attention module or with a batch dimension other than the input's (Swin's windows). The automatic
# layer is the last image-like layer; a token layer counts only when the explained output depends on its patch
# tokens (after the last attention block a ViT reads only its class token, and a CAM there would be zero).


FeatureReshape = Callable[[torch.Tensor], torch.Tensor]
ReshapeSpec = str | FeatureReshape | None
RESHAPES = ("nchw", "nhwc", "tokens")
_MAX_PREFIX_TOKENS = 16


@dataclass(frozen=True)
class FeatureReader:
    """How a layer's raw output becomes an (N, C, h, w) feature map.

    Attributes:
        layout: ``"nchw"``, ``"nhwc"``, ``"tokens"``, ``"custom"`` (a ``reshape=`` callable), or ``"auto"`` (a named
            layer's, decided from its output by :func:`settle`).
        grid: ``(gh, gw)`` of the patch tokens (tokens only).
        prefix: tokens dropped at the start (class, distillation, register tokens; tokens only).
        fn: the ``reshape=`` callable (custom only).

    >>> FeatureReader("tokens", grid=(2, 2), prefix=1)(torch.zeros(3, 5, 8)).shape
    torch.Size([3, 8, 2, 2])
    """

    layout: str
    grid: tuple[int, int] | None = None
    prefix: int = 0
    fn: FeatureReshape | None = None

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if self.layout == "nchw":
            return t
        if self.layout == "nhwc":
            return t.permute(0, 3, 1, 2)
        if self.layout == "tokens":
            assert self.grid is not None
            gh, gw = self.grid
            return t[:, self.prefix:].reshape(t.shape[0], gh, gw, t.shape[-1]).permute(0, 3, 1, 2)
        if self.fn is None:
            raise AssertionError("an 'auto' reader is settled before it reads (methods._capture.settle)")
        out = self.fn(t)
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != t.shape[0]:
            raise InputError(f"reshape= must turn the layer output {tuple(t.shape)} into (N, C, h, w); it returned "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        return out

    def describe(self) -> str:
        """A few words for messages and ``params``."""
        if self.layout == "tokens" and self.grid is not None:
            return f"tokens on a {self.grid[0]}x{self.grid[1]} grid, {self.prefix} prefix token(s) dropped"
        return {"nchw": "NCHW", "nhwc": "channels-last (NHWC)", "custom": "reshape= callable"}.get(self.layout,
                                                                                               self.layout)


@dataclass(frozen=True)
class FeatureLayer:
    """A layer to explain at: the module, its dotted name and the reader of its output."""

    module: nn.Module
    name: str
    reader: FeatureReader


@dataclass
class _Seen:
    """One module output seen in the discovery pass."""

    name: str
    shape: tuple[int, ...]
    value: tuple[int, int]  # (id, version) of the output tensor: modules handing on one value share it
    depth: int
    in_attention: bool
    declared: str | None  # layout the model declares for the module (Keras layers)
    reader: FeatureReader | None = None
    reason: str = ""


@dataclass
class _Discovery:
    """What one forward pass of one image shows about every module's output."""

    seen: dict[str, _Seen]
    order: list[str]  # names in the order their forward passes finished
    reused: set[str]
    candidates: list[str]  # image-like layers, automatic-choice rules applied, in order


def count_relu_modules(model: nn.Module, rule: ReluRule | None = None) -> int:
    """Number of places where a ReLU backward rule can act (``nn.ReLU`` modules, or the sites an adapter such as
    :class:`~saliencekit.models.KerasClassifier` declares; DeconvNet cannot use ReLUs fused into a layer)."""
    return sum(1 for _, fused in relu_sites(model) if not (fused and rule == "deconv"))


def relu_sites(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """``(module, fused)`` for every ReLU the rules can reach: the model's ``relu_sites()`` when it declares them,
    else every ``nn.ReLU`` module (not fused)."""
    declared = getattr(model, "relu_sites", None)
    if callable(declared):
        return list(declared())
    return [(m, False) for m in model.modules() if isinstance(m, nn.ReLU)]


def module_name(model: nn.Module, layer: nn.Module) -> str:
    """Dotted name of ``layer`` inside ``model`` (``""`` for the model itself)."""
    for name, m in model.named_modules():
        if m is layer:
            return name
    raise InputError(f"layer {layer.__class__.__name__} is not a submodule of the model")


def check_reshape_option(reshape: object) -> ReshapeSpec:
    """Validate a ``reshape`` option: None (automatic), ``"nchw"``, ``"nhwc"``, ``"tokens"`` or a callable."""
    if reshape is None or callable(reshape) or reshape in RESHAPES:
        return reshape  # type: ignore[return-value]
    raise InputError(f"reshape must be None (read the layer's layout automatically), one of {', '.join(RESHAPES)}, "
                     f"or a callable turning the layer output into (N, C, h, w); got {reshape!r}")


def _image_like(h: int, w: int, height: int, width: int) -> bool:
    """Whether an (h, w) map keeps the input's aspect ratio (one downsampling factor for both axes; 1 x 1 counts)."""
    if h < 1 or w < 1 or h > height + 2 or w > width + 2:
        return False
    rh, rw = h / height, w / width
    return abs(rh - rw) <= 0.1 * max(rh, rw) + 1.5 / min(height, width)


def _attention_modules(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if n and "attention" in type(m).__name__.lower()}


def _inside(name: str, parents: set[str]) -> bool:
    return any(name.startswith(p + ".") for p in parents)


def _discover(model: nn.Module, example: torch.Tensor) -> _Discovery:
    """One forward (and one backward, for token layers) pass of one image, every module's output recorded."""
    names = {id(m): n for n, m in model.named_modules() if n}
    attention = _attention_modules(model)
    layout_of = getattr(model, "activation_layout", None)
    calls: dict[int, int] = {}
    seen: dict[str, _Seen] = {}
    order: list[str] = []
    outputs: dict[str, torch.Tensor] = {}  # also keeps the tensors alive: ids are only unique while they live
    handles = []

    def hook(module: nn.Module, _i: Any, out: Any) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
        if not isinstance(out, torch.Tensor) or isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
            return
        name = names[id(module)]
        declared = layout_of(module) if callable(layout_of) else None
        outputs[name] = out
        seen[name] = _Seen(name, tuple(out.shape), (id(out), out._version), name.count("."),
                           _inside(name, attention), declared)
        order.append(name)

    height, width = example.shape[-2:]
    paused = _PAUSED.set(True)  # an open capture (a named layer settled inside it) must not cut this pass's graph
    try:
        for m in model.modules():
            if id(m) in names:
                handles.append(m.register_forward_hook(hook))
        # Grad on (for the token layers' dependency below), through a non-leaf copy of the input; no parameter
        # gradient is accumulated (autograd.grad). No inference_mode: inference tensors have no version counter.
        with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
            x = example[:1].detach().clone().requires_grad_(True)
            output = model(x.clone())
    finally:
        _PAUSED.reset(paused)
        for h in handles:
            h.remove()
    reused = {n for n, m in model.named_modules() if calls.get(id(m), 0) > 1}
    grids: list[tuple[int, int]] = []
    for name in order:
        item = seen[name]
        item.reader, item.reason = _read(item, grids, height, width)
        if item.reader is not None and item.reader.layout in ("nchw", "nhwc") and _positions(item) > 1:
            grid = tuple(item.reader(torch.empty(item.shape, device="meta")).shape[-2:])
            if grid not in grids:
                grids.append(grid)  # type: ignore[arg-type]
    candidates = _candidates(seen, order, reused, outputs, output)
    return _Discovery(seen, order, reused, candidates)


def _read(item: _Seen, grids: list[tuple[int, int]], height: int, width: int) -> tuple[FeatureReader | None, str]:
    """The reader of one output, or None and the reason it is not image-like."""
    shape = item.shape
    if shape[0] != 1:
        return None, (f"its batch dimension is {shape[0]} for one input image (windows or heads folded into the "
                      "batch, as inside Swin's window attention)")
    if len(shape) == 4:
        nchw, nhwc = _image_like(shape[2], shape[3], height, width), _image_like(shape[1], shape[2], height, width)
        if item.declared == "nhwc":
            nchw = False
        if item.declared == "nchw":
            nhwc = False
        if nchw:
            return FeatureReader("nchw"), ""
        if nhwc:
            return FeatureReader("nhwc"), ""
        return None, (f"neither {shape[2]}x{shape[3]} (as N, C, H, W) nor {shape[1]}x{shape[2]} (as N, H, W, C) "
                      f"keeps the {height}x{width} input's aspect ratio: it is not an image-like feature map "
                      "(attention heads x tokens x dimensions look like this)")
    if len(shape) == 3:
        tokens = shape[1]
        for gh, gw in reversed(grids):
            prefix = tokens - gh * gw
            if 0 <= prefix <= _MAX_PREFIX_TOKENS:
                return FeatureReader("tokens", grid=(gh, gw), prefix=prefix), ""
        known = ", ".join(f"{gh}x{gw}" for gh, gw in grids) or "none"
        return None, (f"its {tokens} tokens fit no patch grid seen before it (grids: {known}) with up to "
                      f"{_MAX_PREFIX_TOKENS} prefix tokens; pass reshape= (a callable returning (N, C, h, w))")
    return None, f"it has {len(shape)} dimensions, not a spatial feature map (N, C, H, W) or tokens (N, T, D)"


def _positions(item: _Seen) -> int:
    """Spatial positions of a readable output (a 1 x 1 map makes a constant CAM: never chosen automatically)."""
    assert item.reader is not None
    if item.reader.layout == "tokens" and item.reader.grid is not None:
        return item.reader.grid[0] * item.reader.grid[1]
    h, w = item.reader(torch.empty(item.shape, device="meta")).shape[-2:]
    return int(h * w)


def _candidates(seen: dict[str, _Seen], order: list[str], reused: set[str], outputs: dict[str, torch.Tensor],
                output: Any) -> list[str]:
    """Image-like layers for the automatic choice, in order: one per shared value (the innermost), none inside
    attention, none called twice, token layers only where the output depends on their patch tokens."""
    best: dict[tuple[int, int], tuple[str, int]] = {}
    for name in order:
        item = seen[name]
        if item.reader is None or name in reused or item.in_attention or _positions(item) <= 1:
            continue
        if item.value not in best or item.depth > best[item.value][1]:
            best[item.value] = (name, item.depth)
    keep = {name for name, _ in best.values()}
    tokens = [n for n in keep if seen[n].reader.layout == "tokens"]  # type: ignore[union-attr]
    if tokens and isinstance(output, torch.Tensor) and output.requires_grad:
        weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(0)).to(output)
        grads = torch.autograd.grad((output * weights).sum(), [outputs[n] for n in tokens], allow_unused=True)
        for n, g in zip(tokens, grads):
            prefix = seen[n].reader.prefix  # type: ignore[union-attr]
            if g is None or not bool(g[:, prefix:].ne(0).any()):
                keep.discard(n)
                seen[n].reason = ("the output does not depend on its patch tokens (after the last attention block "
                                  "the model reads only its class token); choose a layer before the last attention")
    out: list[str] = []
    for name in order:
        if name in keep and name not in out:
            out.append(name)
    return out


_DISCOVERIES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], _Discovery]] = weakref.WeakKeyDictionary()


def discover(model: nn.Module, example: torch.Tensor) -> _Discovery:
    """:func:`_discover`, remembered per model, module structure and input shape."""
    key = (tuple(example.shape[1:]), example.dtype, example.device,
           tuple((n, id(m)) for n, m in model.named_modules()))
    known = _DISCOVERIES.get(model, {})
    if key not in known:
        if len(known) >= 8:
            known.clear()
        known[key] = _discover(model, example)
        _DISCOVERIES[model] = known
    return known[key]


def spatial_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the modules whose output is an image-like feature map (NCHW or channels-last, with more than one
    position) or a ViT's patch tokens, in the order their forward passes finish, from one forward pass of one image.

    Modules called more than once (a ReLU reused inside a residual block), adaptive pooling layers and anything
    inside an attention module are left out. Where several modules hand on the very same value (a container
    returning its last child's output, or in-place operations writing into one tensor), the innermost module that
    finished after the value's last in-place change stands for them all.
    """
    return list(discover(model, example).candidates)


def resolve_feature_layer(model: nn.Module, layer: str | nn.Module | None, example: torch.Tensor,
                          reshape: ReshapeSpec = None) -> FeatureLayer:
    """The layer to explain at and the reader of its output.

    Args:
        model: the network.
        layer: None (the last image-like layer: the last convolutional stage of a CNN, the last token layer a ViT's
            output depends on spatially), a dotted module name (a Keras layer's name for a Keras model), or a module
            of the model.
        example: an input batch (one image of it is run to see the outputs' shapes).
        reshape: None (the layout is read from the output's shape and the model), ``"nchw"``, ``"nhwc"``,
            ``"tokens"``, or a callable turning the layer's output into (N, C, h, w).

    Raises:
        InputError: the model has no image-like layer, the named layer's output is not image-like (the message
            says why), or a module is not part of the model.
        UnknownNameError: a name is not a module of the model (the message lists candidates).
    """
    reshape = check_reshape_option(reshape)
    if isinstance(model, torch.jit.ScriptModule):
        raise InputError("layer methods (CAMs) need forward hooks, which TorchScript models do not support; "
                         "use a gradient-family method, or load the model as an nn.Module")
    modules = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        name = module_name(model, layer)  # raises when foreign
    elif layer is None:
        found = discover(model, example)
        if not found.candidates:
            raise InputError(
                f"{model.__class__.__name__} has no layer with a spatial feature map (N, C, H, W) or patch tokens, so "
                "CAM methods cannot be used; use a gradient-family or perturbation method instead"
            )
        name = found.candidates[-1]
    elif not isinstance(layer, str):
        raise InputError(f"layer must be a module name, a module or None, got {type(layer).__name__}")
    else:
        name = layer
        if name not in modules or name == "":
            try:
                valid = spatial_layers(model, example)
            except Exception:
                valid = [n for n in modules if n]
            raise UnknownNameError("layer", name, valid[-12:])
    if layer is None or reshape is not None:
        return FeatureLayer(modules[name], name, _reader_for(model, name, example, reshape))
    return FeatureLayer(modules[name], name, FeatureReader("auto"))  # decided from the output (see settle)


def settle(model: nn.Module, layer: FeatureLayer, raw: torch.Tensor, inputs: torch.Tensor) -> FeatureLayer:
    """``layer`` with its reader decided, for a named layer whose reader waited for its output: an image-like 4-D
    output is read as it is (or channels-last where the model declares it or only that reading is image-like) with
    no extra forward pass; anything else goes through the discovery pass, which reads tokens or says why not."""
    if layer.reader.layout != "auto":
        return layer
    name = layer.name
    declared = getattr(model, "activation_layout", None)
    declared = declared(layer.module) if callable(declared) else None
    if raw.ndim == 4 and raw.shape[0] == inputs.shape[0] and not _inside(name, _attention_modules(model)):
        item = _Seen(name, (1, *raw.shape[1:]), (0, 0), 0, False, declared)
        reader, _ = _read(item, [], *inputs.shape[-2:])
        if reader is not None:
            return FeatureLayer(layer.module, name, reader)
    return FeatureLayer(layer.module, name, _reader_for(model, name, inputs, None))


def _reader_for(model: nn.Module, name: str, example: torch.Tensor, reshape: ReshapeSpec) -> FeatureReader:
    if callable(reshape):
        return FeatureReader("custom", fn=reshape)
    found = discover(model, example)
    item = found.seen.get(name)
    if item is None:
        raise InputError(f"layer {name!r} was not called in the forward pass, or returns no tensor; choose a layer "
                         f"the model uses, e.g. {', '.join(found.candidates[-3:]) or 'a convolution'}")
    if reshape == "nchw" or reshape == "nhwc":
        if len(item.shape) != 4:
            raise InputError(f"reshape={reshape!r} needs a 4-D output; layer {name!r} outputs {item.shape}")
        return FeatureReader(reshape)
    if reshape == "tokens" and (item.reader is None or item.reader.layout != "tokens"):
        raise InputError(f"layer {name!r} outputs {item.shape}, which cannot be read as patch tokens: {item.reason}")
    if item.in_attention and len(item.shape) == 4:
        raise InputError(f"layer {name!r} is inside an attention module; its output {item.shape} holds attention "
                         "heads, not an image-like feature map; choose a token layer, e.g. "
                         f"{', '.join(found.candidates[-2:])}, or pass reshape=")
    if item.reader is None:
        raise InputError(f"layer {name!r} outputs {item.shape}, which CAM methods cannot use: {item.reason}; "
                         f"image-like layers: {', '.join(found.candidates[-4:]) or '(none)'}")
    if name in found.seen and item.reader.layout == "tokens" and name not in found.candidates \
            and "does not depend" in item.reason:
        raise InputError(f"layer {name!r}: {item.reason}, e.g. {', '.join(found.candidates[-2:])}")
    return item.reader


def resolve_layer(model: nn.Module, layer: str | nn.Module | None, example: torch.Tensor) -> nn.Module:
    """The module to explain at (see :func:`resolve_feature_layer`)."""
    return resolve_feature_layer(model, layer, example).module
