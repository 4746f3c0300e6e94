"""The method contract: one entry point, ``attribute(inputs, target) -> Explanation``.

Every saliency method is a small subclass of :class:`Method`, registered by name (see
:mod:`saliencekit.methods.registry`). Capabilities are class attributes that generic code and
tests read. Methods that can share forward/backward passes with others of the same family
declare a :meth:`Method.share_key` and implement :meth:`Method.attribute_shared`.
"""

from __future__ import annotations

import abc
import contextlib
import functools
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from saliencekit import _layout
from saliencekit._model_input import model_failures
from saliencekit.errors import InputError
from saliencekit.methods.outputs import check_output_option, output_scope
from saliencekit.methods.targets import ResolvedTarget, as_target, predicted_classes


@dataclass
class Explanation:
    """The result of one method on a batch of images.

    Attributes:
        method: registry name of the method.
        maps: raw saliency, float tensor (N, H, W) at input resolution on the input's device.
            Not normalised: see :func:`saliencekit.methods.normalize.normalize`.
        attributions: the unreduced attribution (N, C, H, W) for pixel-space methods, else None.
        layer_maps: CAM maps at the layer's resolution (N, h, w), else None.
        scores: the explained score ``S`` (N,) at the input.
        targets: the explained class per image (N,), -1 for a callable target.
        predictions: the model's predicted class per image (N,).
        params: the method's options (JSON-friendly), including the layer name for layer methods.
        extras: method-specific tensors, e.g. ``completeness_gap`` for integrated gradients.

    >>> e = Explanation("demo", torch.zeros(2, 4, 4), scores=torch.zeros(2), targets=torch.zeros(2),
    ...                 predictions=torch.zeros(2))
    >>> e.maps.shape
    torch.Size([2, 4, 4])
    """

    method: str
    maps: torch.Tensor
    attributions: torch.Tensor | None = None
    layer_maps: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    predictions: torch.Tensor | None = None
    params: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Methods may compute in channels-last layout (see _layout); results are always plain row-major.
        self.maps = self.maps.contiguous()
        if self.attributions is not None:
            self.attributions = self.attributions.contiguous()
        if self.layer_maps is not None:
            self.layer_maps = self.layer_maps.contiguous()

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    def normalized(self, how: str = "minmax", **kwargs: Any) -> torch.Tensor:
        """The maps normalised for display (see :func:`saliencekit.methods.normalize.normalize`).

        ``how="auto"`` is what ``saliencekit explain`` and the report draw: the method's declared
        ``display_normalization`` (percentile for gradient and backprop maps, min-max for CAM and perturbation
        maps; :func:`saliencekit.methods.normalize.display_normalization`).
        """
        from saliencekit.methods.normalize import display_normalization, normalize

        return normalize(self.maps, display_normalization(self.method, how), **kwargs)

    def plot(self, images: Any = None, index: int | slice | Sequence[int] | None = None, normalization: str = "auto",
             class_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """The maps drawn over their images, with a colour bar, one panel per image (a grid for several images).

        Args:
            images: the explained images (N, C, H, W); None draws the maps alone.
            index: which images (an int, a slice or a list; default all).
            normalization: ``"auto"`` (the display ``saliencekit explain`` uses for this method) or a
                normalisation of :func:`saliencekit.methods.normalize.normalize`.
            class_names: class names for the panel titles.
            **kwargs: ``labels`` (true classes, shown in the titles), ``max_columns``, ``alpha``, ``cmap``, ``title`` of
                :func:`saliencekit.viz.inline.explanation_figure`.

        Returns:
            A matplotlib ``Figure`` (shown inline in a notebook; saved with ``fig.savefig(path)``).
        """
        from saliencekit.viz.inline import explanation_figure

        return explanation_figure(self, images, index=index, normalization=normalization, class_names=class_names,
                                  **kwargs)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        # Jupyter: the figure drawn once, as PNG and inside the HTML (the first few images, maps alone).
        from saliencekit.viz.inline import INLINE_IMAGES, explanation_html, figure_png

        png = figure_png(self.plot(index=slice(0, INLINE_IMAGES)))
        return {"text/html": explanation_html(self, png), "image/png": png, "text/plain": repr(self)}

    def _repr_png_(self) -> bytes:
        """PNG of :meth:`plot` of the first few maps (maps alone), for notebook front ends."""
        from saliencekit.viz.inline import INLINE_IMAGES, figure_png

        return figure_png(self.plot(index=slice(0, INLINE_IMAGES)))

    def _repr_html_(self) -> str:
        """A line about the explanation, its images' targets and scores, and the figure, for notebooks."""
        from saliencekit.viz.inline import explanation_html

        return explanation_html(self)

    def __repr__(self) -> str:
        n, shape = len(self), "x".join(str(s) for s in self.maps.shape[1:])
        layer = self.params.get("layer")
        where = f", layer={layer!r}" if isinstance(layer, str) and layer else ""
        return f"Explanation({self.method!r}, {n} map{'s' if n != 1 else ''} of {shape}{where})"

    def to(self, device: torch.device | str) -> Explanation:
        """A copy with every tensor moved to ``device``."""

        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Explanation(
            self.method, mv(self.maps), mv(self.attributions), mv(self.layer_maps), mv(self.scores),
            mv(self.targets), mv(self.predictions), dict(self.params),
            {k: v.to(device) for k, v in self.extras.items()},
        )

    def select(self, index: int | slice | Sequence[int]) -> Explanation:
        """The explanation of a subset of the images."""
        if isinstance(index, int):
            index = [index]

        def sel(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index]

        return Explanation(
            self.method, sel(self.maps), sel(self.attributions), sel(self.layer_maps), sel(self.scores),
            sel(self.targets), sel(self.predictions), dict(self.params),
            {k: (v[index] if v.ndim and v.shape[0] == len(self) else v) for k, v in self.extras.items()},
        )


def reduce_channels(attributions: torch.Tensor, how: str = "sum") -> torch.Tensor:
    """Reduce (N, C, H, W) to (N, H, W): ``"sum"`` (signed, the default), ``"abs_sum"``,
    ``"max_abs"`` (max over channels of the absolute value, Simonyan's display) or ``"mean"``."""
    if how == "sum":
        return attributions.sum(1)
    if how == "abs_sum":
        return attributions.abs().sum(1)
    if how == "max_abs":
        return attributions.abs().amax(1)
    if how == "mean":
        return attributions.mean(1)
    raise InputError(f"unknown channel reduction {how!r}; valid: sum, abs_sum, max_abs, mean")


def expected_channels(model: nn.Module) -> int | None:
    """Input channels of the model's first convolution or linear layer, when it has one."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Conv3d):
            return m.in_channels
        if isinstance(m, nn.Linear):
            return None
    return None


def check_inputs(model: nn.Module, inputs: object) -> torch.Tensor:
    """Validate a batch of images; return it unchanged.

    Raises:
        InputError: not a tensor, not 4-D (N, C, H, W), empty, not floating point, NaN/inf values,
            or a channel count different from the model's first convolution.
    """
    if not isinstance(inputs, torch.Tensor):
        raise InputError(f"inputs must be a torch.Tensor of shape (N, C, H, W), got {type(inputs).__name__}")
    if inputs.ndim != 4:
        hint = " (add a batch dimension: x[None])" if inputs.ndim == 3 else ""
        raise InputError(f"inputs must have shape (N, C, H, W), got {tuple(inputs.shape)}{hint}")
    if inputs.shape[0] == 0:
        raise InputError("empty batch: inputs have shape (0, ...); pass at least one image")
    if not inputs.is_floating_point():
        raise InputError(f"inputs must be floating point (preprocessed images), got dtype {inputs.dtype}; "
                         "convert with .float() and apply the model's preprocessing")
    # One pass: NaN and infinities show in the extremes (isfinite over every pixel costs ~20x more).
    if inputs.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(inputs))).all()):
        finite = torch.isfinite(inputs).flatten(1).all(1)
        bad = torch.nonzero(~finite).flatten().tolist()
        raise InputError(f"inputs contain NaN or infinite values (image(s) {bad[:10]}); clean the images first")
    c = expected_channels(model)
    if c is not None and inputs.shape[1] != c:
        raise InputError(f"the model expects {c}-channel images, got {inputs.shape[1]} channels "
                         f"(inputs shape {tuple(inputs.shape)})")
    return inputs


@contextlib.contextmanager
def preserve_model(model: nn.Module) -> Iterator[None]:
    """Restore every parameter's ``requires_grad`` flag and ``.grad`` reference after the block."""
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for p, flag, grad in saved:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
            if p.grad is not grad:
                p.grad = grad


class Method(abc.ABC):
    """Base class of every saliency method.

    Subclasses set the capability flags, take their options as keyword arguments of ``__init__``
    (with defaults), store them with :meth:`_store_params`, and implement :meth:`attribute`.

    Every :meth:`attribute` (and :meth:`attribute_shared`) runs inside
    :func:`~saliencekit.methods.outputs.output_scope`: the model's final Sigmoid/Softmax module, if any, is
    bypassed for the call and targets are read by the model's output rule (``output`` and ``threshold``
    attributes, set by :func:`~saliencekit.methods.registry.create_method`; None inherits the enclosing call's).

    Args:
        model: the classifier; never modified.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    family: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = False
    multiplies_by_inputs: ClassVar[bool] = False
    needs_layer: ClassVar[bool] = False
    satisfies_completeness: ClassVar[bool] = False
    works_on_torchscript: ClassVar[bool] = True
    #: Whether the method reads a transformer's attention (models without attention are refused by name).
    needs_attention: ClassVar[bool] = False
    #: How the CLI, the report and ``Explanation.normalized("auto")`` scale the maps for display: "percentile" for
    #: signed pixel-level maps (Smilkov et al.'s display), "minmax" for the others (see docs/methods.md).
    display_normalization: ClassVar[str] = "minmax"
    #: Whether the maps should stay the same under the compensated input shift of Kindermans et al. 2017 (the
    #: ``input_invariance`` check); None: no stated expectation. Options can change it: see
    #: :meth:`expected_input_invariance`.
    input_shift_invariant: ClassVar[bool | None] = None
    output: str | None = None
    threshold: float | None = None

    @classmethod
    def expected_input_invariance(cls, options: Mapping[str, Any]) -> bool | None:
        """The expectation of :attr:`input_shift_invariant` for a method built with ``options``."""
        return cls.input_shift_invariant

    @classmethod
    def passes_per_image(cls, options: Mapping[str, Any]) -> float | None:
        """About how many forward passes (a forward and backward pass counts as 3) explaining one image costs with
        ``options``, for methods whose cost the options alone fix and make large (sampling methods: ``samples``);
        None otherwise. ``saliencekit check`` reads it to keep the checks that recompute maps affordable."""
        return None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "attribute" in cls.__dict__:
            cls.attribute = _in_output_scope(cls.__dict__["attribute"])  # type: ignore[method-assign]
        shared = cls.__dict__.get("attribute_shared")
        if isinstance(shared, classmethod):
            cls.attribute_shared = classmethod(_shared_in_output_scope(shared.__func__))  # type: ignore[assignment]

    def set_output(self, output: str | None = None, threshold: float | None = None) -> Method:
        """Declare how the model's outputs are read (see :mod:`saliencekit.methods.outputs`); returns ``self``."""
        if output is not None or threshold is not None:
            check_output_option(output or "auto", 0.5 if threshold is None else threshold)
        self.output, self.threshold = output, threshold
        return self

    def __init__(self, model: nn.Module):
        from saliencekit.models._keras import as_classifier, is_keras_model

        if is_keras_model(model):  # a Keras 3 model (torch backend): explained through its (N, C, H, W) adapter
            model = as_classifier(model)
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module or a Keras 3 model, got {type(model).__name__}")
        self.model = model
        self._params: dict[str, Any] = {}

    def _store_params(self, **params: Any) -> None:
        self._params.update(params)

    @property
    def params(self) -> dict[str, Any]:
        """The method's options, JSON-friendly."""
        return {k: _jsonable(v) for k, v in self._params.items()}

    @abc.abstractmethod
    def attribute(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        """Explain ``target`` for a batch ``inputs`` (N, C, H, W); returns an :class:`Explanation`."""

    def share_key(self) -> Hashable | None:
        """Methods whose keys are equal (and not None) are computed together by :meth:`attribute_shared`."""
        return None

    @classmethod
    def attribute_shared(cls, methods: Sequence[Method], inputs: torch.Tensor, target: Any = None) -> list[Explanation]:
        """Compute several methods with equal :meth:`share_key` at once (default: one by one)."""
        return [m.attribute(inputs, target) for m in methods]

    # -- helpers for subclasses --------------------------------------------------------------

    def _resolve(self, inputs: torch.Tensor, target: Any) -> tuple[torch.Tensor, ResolvedTarget, torch.Tensor]:
        """Validate inputs and resolve the target with one clean forward pass.

        Returns:
            The clean output (N, K), the resolved target and the predicted classes.
        """
        check_inputs(self.model, inputs)
        with torch.inference_mode():
            output = _layout.forward(self.model, inputs)
        resolved = as_target(target).resolve(output)
        return output, resolved, predicted_classes(output)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.__class__.__name__}({opts})"


def _example(inputs: object) -> torch.Tensor | None:
    return inputs[:1] if isinstance(inputs, torch.Tensor) and inputs.ndim >= 1 and inputs.shape[0] else None


def _in_output_scope(attribute: Any) -> Any:
    @functools.wraps(attribute)
    def wrapped(self: Method, inputs: torch.Tensor, target: Any = None) -> Explanation:
        example = _example(inputs)
        if example is None:  # let the method's own input check say what is wrong
            return attribute(self, inputs, target)
        with model_failures(self.model, example), output_scope(self.model, self.output, self.threshold, example):
            return attribute(self, inputs, target)

    return wrapped


def _shared_in_output_scope(attribute_shared: Any) -> Any:
    @functools.wraps(attribute_shared)
    def wrapped(cls: type[Method], methods: Sequence[Method], inputs: torch.Tensor, target: Any = None
                ) -> list[Explanation]:
        example = _example(inputs)
        if example is None or not methods:
            return attribute_shared(cls, methods, inputs, target)
        first = methods[0]
        with model_failures(first.model, example), output_scope(first.model, first.output, first.threshold, example):
            return attribute_shared(cls, methods, inputs, target)

    return wrapped


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return f"tensor{tuple(v.shape)}"
    if isinstance(v, nn.Module):
        return v.__class__.__name__
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return repr(v)
